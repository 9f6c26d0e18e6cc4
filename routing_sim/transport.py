"""Delivery of message batches on a SimPy environment.

Messages are sent in batches (numpy arrays of route ids and send times); the transport
computes each message's arrival time from the :class:`~routing_sim.Network` and hands
messages to the protocol when the simulated clock reaches them. Three delivery modes,
identical in what they deliver and when (each message keeps its own timestamps):

``"per_message"``
    One SimPy event per message: the plain design, and the baseline the tests hold the
    others equal to.
``"instant"``
    One SimPy event per simulated instant: every message arriving at that time, at any
    node, is delivered together.
``"window"`` (default)
    One SimPy event per lookahead window ``[t, t + d_min)``, where ``d_min`` is the
    smallest possible transit time. No message sent inside a window can arrive inside
    it, so handling the window's messages together (each at its own arrival time)
    cannot change what happens: this is conservative synchronisation, as in parallel
    discrete-event simulation. With jitter, most arrivals have distinct times, and this
    keeps the cost per message far below one SimPy event.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from .messages import Kind
from .network import Network

__all__ = ["DELIVERY_MODES", "Deliveries", "Transport"]

DELIVERY_MODES = ("window", "instant", "per_message")


@dataclass
class Deliveries:
    """Messages of one kind, sorted by arrival time, then by message id."""

    kind: Kind
    routes: np.ndarray   # (m,) route ids
    ids: np.ndarray      # (m,) message ids
    sent: np.ndarray     # (m,) send times
    arrive: np.ndarray   # (m,) arrival times

    def __len__(self) -> int:
        return len(self.routes)

    def take(self, index) -> Deliveries:
        return Deliveries(self.kind, self.routes[index], self.ids[index], self.sent[index],
                          self.arrive[index])


class Transport:
    """Sends message batches and delivers them on a SimPy clock."""

    def __init__(self, env: simpy.Environment, network: Network, route_latency: np.ndarray,
                 on_send: Callable[[Deliveries], None], mode: str = "window") -> None:
        self.env = env
        self.network = network
        self.route_latency = route_latency                             # (R,)
        self.n_routes = len(route_latency)
        self.mode = mode
        self.events = 0
        self.deliver: Callable[[Deliveries], None] | None = None
        self._on_send = on_send
        self._lookahead = network.min_delay(route_latency) if mode == "window" else 0.0
        self._pending: list[tuple[float, int, Deliveries]] = []
        self._order = itertools.count()
        self._window_end = -np.inf

    def send(self, kind: Kind, routes: np.ndarray, sent: np.ndarray) -> None:
        """Put one message of ``kind`` on each route in ``routes``, sent at ``sent``."""
        if len(routes) == 0:
            return
        ids = routes.astype(np.int64) * len(Kind) + int(kind)
        arrive = sent + self.network.delays(ids, self.route_latency[routes])
        order = np.lexsort((ids, arrive))
        batch = Deliveries(kind, routes[order], ids[order], sent[order], arrive[order])
        if batch.arrive[0] < self._window_end:
            raise AssertionError("lookahead violated: a message would arrive inside the "
                                 "window that sent it")
        self._on_send(batch)
        if self.mode == "per_message":
            for index in range(len(batch)):
                delay = max(batch.arrive[index] - self.env.now, 0.0)
                event = self.env.timeout(delay, batch.take([index]))
                event.callbacks.append(self._on_event)
        else:
            heapq.heappush(self._pending, (batch.arrive[0], next(self._order), batch))

    def run(self):
        """The SimPy process that delivers pending batches, window by window."""
        while self._pending:
            start = self._pending[0][0]
            self._window_end = start + self._lookahead if self._lookahead > 0 else start
            window = self._collect(start)
            yield self.env.timeout(max(start - self.env.now, 0.0))
            self.events += 1
            for batch in window:
                self.deliver(batch)
        self._window_end = -np.inf

    def _on_event(self, event: simpy.events.Event) -> None:
        self.events += 1
        self.deliver(event.value)

    def _collect(self, start: float) -> list[Deliveries]:
        """Pop every pending message of the window starting at ``start``, grouped by kind."""
        taken: dict[Kind, list[Deliveries]] = {}
        inclusive = self._lookahead == 0
        while self._pending and (self._pending[0][0] < self._window_end
                                 or (inclusive and self._pending[0][0] == start)):
            _, _, batch = heapq.heappop(self._pending)
            cut = int(np.searchsorted(batch.arrive, self._window_end,
                                      side="right" if inclusive else "left"))
            taken.setdefault(batch.kind, []).append(batch.take(slice(0, cut)))
            if cut < len(batch):
                rest = batch.take(slice(cut, None))
                heapq.heappush(self._pending, (rest.arrive[0], next(self._order), rest))
        return [_merge(kind, parts) for kind, parts in sorted(taken.items())]


def _merge(kind: Kind, parts: list[Deliveries]) -> Deliveries:
    if len(parts) == 1:
        return parts[0]
    merged = Deliveries(kind, *(np.concatenate([getattr(p, name) for p in parts])
                                for name in ("routes", "ids", "sent", "arrive")))
    return merged.take(np.lexsort((merged.ids, merged.arrive)))
