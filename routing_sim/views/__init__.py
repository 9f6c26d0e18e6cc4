"""Pictures of a run: plots (the ``plot`` extra) and the offline replay page.

:mod:`.plots` draws routing-table heatmaps, the token graph and a message timeline with
matplotlib, imported only when a figure is drawn; :mod:`.replay` writes one self-contained
HTML page that replays a run's messages, and the notebook view. Both read a finished
:class:`~routing_sim.Run` (or a context-parallel run) and import nothing that runs one.
"""

from __future__ import annotations
