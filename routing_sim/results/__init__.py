"""What a simulation hands back: the Run, its routing tables, and the backward pass on it.

:mod:`.run` holds :class:`~routing_sim.Run` (output, weights, routing tables, trace,
stats; ``run.backward`` and ``run.to_html`` call the backward engine and the replay page)
and what it reports about routes (:class:`~routing_sim.RoutingTable`,
:class:`~routing_sim.Route`, :class:`~routing_sim.DroppedRoute`).
"""

from __future__ import annotations

from .run import DroppedRoute, Route, RoutingTable, Run

__all__ = ["DroppedRoute", "Route", "RoutingTable", "Run"]
