"""How a run is shown: printed times, plots (the ``plot`` extra), the offline replay page.

:mod:`.time_format` is how every report prints a simulated time; :mod:`.plots` draws
routing-table heatmaps, the token graph and a message timeline with matplotlib, imported
only when a figure is drawn; :mod:`.replay` writes one self-contained HTML page that
replays a run's messages, and the notebook view. They read a finished
:class:`~routing_sim.Run` (or a context-parallel run, or the backward pass's gradients) by
its public attributes, and import nothing that makes one: the run's own ``to_html`` and
``_repr_html_`` call them.
"""

from __future__ import annotations
