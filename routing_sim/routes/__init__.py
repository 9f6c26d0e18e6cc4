"""Which token may pull from which: token graphs, route sets, patterns, the route table.

Read in the order the data goes: :mod:`.graphs` builds token graphs (networkx) and reads
them; :mod:`.route_set` holds sparse route sets (:class:`~routing_sim.RouteSet`), which
:mod:`.patterns` builds; :mod:`.restrictions` evaluates the other restrictions (``mask_mod``,
masks, biases, dropout) on a route set's routes; :mod:`.problem` turns the arguments of
``attention`` and ``simulate`` into one validated :class:`~routing_sim.routes.problem.Problem`;
:mod:`.table` numbers every allowed route for the simulator (:class:`RouteTable`).
"""

from __future__ import annotations

from .route_set import RouteSet

__all__ = ["RouteSet"]
