"""What a run recorded: the message log, its exporters, its totals.

:mod:`.log` keeps every message as a row of compact arrays, or only totals
(:class:`~routing_sim.Trace`); :mod:`.exports` writes it as Perfetto JSON, Mermaid, JSON
Lines or CSV; :mod:`.stats` sums it up (:class:`~routing_sim.Stats`, and the backward
pass's :class:`~routing_sim.trace.stats.Gradients`, which carries its own Stats and trace).
"""

from __future__ import annotations

from .log import Trace
from .stats import Stats

__all__ = ["Stats", "Trace"]
