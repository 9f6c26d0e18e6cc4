"""What a Run hands back about its routes: a token's routing table (:class:`RoutingTable`,
one :class:`Route` a line), the routes that never answered (:class:`DroppedRoute`) and every
route's share (:class:`RouteWeights`). :mod:`routing_sim.run` builds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .times import format_time

__all__ = ["DroppedRoute", "Route", "RouteWeights", "RoutingTable"]


class RouteWeights(NamedTuple):
    """Every route's share, in canonical order (by group, query, then key): four ``(R,)``
    arrays. ``group`` is the flat batch/head index (``np.unravel_index(group,
    batch_shape)`` gives the leading dims back), ``query`` and ``key`` the token rows."""

    group: np.ndarray        # (R,) flat batch/head index
    query: np.ndarray        # (R,) query token row i
    key: np.ndarray          # (R,) key token row j
    share: np.ndarray        # (R,) w_ij after dropout (NaN rows: empty_rows="nan")


@dataclass(frozen=True)
class DroppedRoute:
    """A route whose answer never came (``on_missing="degrade"``)."""

    group: tuple[int, ...]   # batch/head index of the routing group
    query: int               # query token position
    key: int                 # key token position
    phase: str               # "score" (QUERY/SCORE lost) or "value" (PULL/VALUE lost)
    share: float             # the budget share it would have had


@dataclass(frozen=True)
class Route:
    """One line of a routing table: where a share of the budget goes."""

    source: int              # key token position
    label: str | None        # key token text, if the graph has labels
    score: float             # s_ij
    share: float             # w_ij, after dropout
    bytes_pulled: int        # VALUE payload bytes (0 if the route was dropped)
    arrived: float           # when the VALUE arrived (NaN if never pulled)

    @property
    def name(self) -> str:
        return self.label if self.label is not None else f"#{self.source}"


@dataclass(frozen=True, repr=False)
class RoutingTable:
    """Token ``token``'s routing table: its routes sorted by share, largest first.

    ``str(table)`` (and ``repr``, so a REPL shows it) prints one route a line, like
    ``token cat: 0.50 ( 50.0%)  position 1`` (``token #1: ...`` without labels), followed
    by the route's score, the bytes pulled and when the value arrived, and a footer
    (routes, messages, when the output was complete). With sinks, a ``sink:`` line shows
    the share of the budget the head's sink logit took (it pulls no value): the routes'
    shares and ``sink`` add up to 1.
    """

    token: int
    label: str | None
    where: str
    routes: list[Route]
    messages: int
    completed: float
    sink: float | None = None        # the sink's share of the budget (None: no sinks)
    sink_logit: float | None = None  # the head's sink logit

    def __str__(self) -> str:
        who = f"token {self.label!r} (#{self.token})" if self.label else f"token #{self.token}"
        lines = [f"routing table of {who}{self.where}"]
        width = max((len(route.name) for route in self.routes), default=0) + 1
        for route in self.routes:
            pulled = (f"pulled {route.bytes_pulled} B at t={format_time(route.arrived)}"
                      if route.bytes_pulled else "not pulled")
            lines.append(f"  token {route.name + ':':<{width}} {route.share:.2f} "
                         f"({100 * route.share:5.1f}%)  position {route.source:<3} "
                         f"score {route.score:+.3f}   {pulled}")
        if not self.routes:
            lines.append("  (no routes: this token cannot reach any key)")
        if self.sink is not None:
            lines.append(f"  {'sink:':<{width + 6}} {self.sink:.2f} ({100 * self.sink:5.1f}%)  "
                         f"logit {self.sink_logit:+.3f}   pulls no value (budget that goes "
                         "nowhere)")
        lines.append(f"  {len(self.routes)} routes, {self.messages} messages, "
                     f"output complete at t={format_time(self.completed)}")
        total = sum(route.share for route in self.routes) + (self.sink or 0.0)
        if self.routes and abs(total - 1) > 1e-9:
            lines.append(f"  shares sum to {100 * total:.1f}%: dropout scaled the kept routes "
                         "by 1/(1 - p), so each share is right in expectation")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from .replay.notebook import table_html

        return table_html(self)
