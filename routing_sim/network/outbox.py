"""The sending half of the transport: an outbox of message batches, flushed in canonical
order (by ready time, then message id), where each message gets its fate (lost,
duplicated, never sent because its sender is down) and its arrival time from the
:class:`~routing_sim.Network` and, with contention, from its sender's NIC queue. What
leaves is queued for delivery: on the pending heap (window and instant modes) or on the
per-message agenda. :class:`~routing_sim.transport.Transport` adds the delivering half.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import numpy as np
import simpy

from .conditions import Network, nic_queue
from .deliveries import Deliveries, Timers, concat, merge
from .messages import Fate, Kind
from .timers import retransmission_timer
from .wave_times import constant, uniform

__all__ = ["END_OF_INSTANT", "END_RANK", "TIMER_RANK", "Outbox"]

# per_message mode: the rank of an agenda entry within its instant. Messages rank by
# 2 · message id + copy, retry timers after every message, the end of the instant last.
TIMER_RANK = 2**61
END_RANK = 2**62
END_OF_INSTANT = None


def _unattached(_: Deliveries | Timers) -> None:
    raise RuntimeError("no token nodes are attached to this transport")


class Outbox:
    """Sends message batches: their fates and arrival times, then onto the delivery queues."""

    def __init__(self, env: simpy.Environment, network: Network, route_latency: np.ndarray,
                 nbytes: dict[Kind, int], endpoints: Callable[[Kind, np.ndarray], tuple],
                 down: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 record: Callable[[Deliveries, np.ndarray | None], None],
                 mode: str = "window") -> None:
        self.env = env
        self.network = network
        self.route_latency = route_latency                             # (R,)
        self._uniform_latency = constant(route_latency) if route_latency.strides == (0,) \
            else float(route_latency[0]) if len(route_latency) and (
                route_latency == route_latency[0]).all() else None
        self.n_routes = len(route_latency)
        self.nbytes = nbytes
        self.mode = mode
        self.events = 0
        self.on_deliver: Callable[[Deliveries], None] = _unattached
        self.on_timer: Callable[[Timers], None] = _unattached
        self.on_step_end: Callable[[], None] | None = None
        self._endpoints = endpoints     # kind, routes -> (sender node ids, receiver node ids)
        self._down = down               # node ids, times -> inside a crash window?
        self._record = record           # (batch, fate or None for all delivered)
        self.timer = retransmission_timer(network, route_latency, nbytes, endpoints)
        self.timeout = self.timer.timeout
        self._answers_in_time = self.timeout >= network.slowest_round_trip(
            float(route_latency.max(initial=network.latency)), max(nbytes.values()))
        self.timed: frozenset[Kind] = frozenset()     # request kinds whose sends arm timers
        self.order_free = False         # do the nodes' handlers commute? (see _whole_waves)
        self.min_delay = network.min_delay(route_latency, min(nbytes.values()))  # transit
        self._min_latency = network.min_delay(route_latency, 0)
        self._min_size = min(nbytes.values()) / network.bandwidth if network.bandwidth else 0.0
        self._windowed = mode == "window"
        self._pending: list[tuple[float, int, Deliveries | Timers]] = []
        self._order = itertools.count()
        self._outbox: list[Deliveries] = []
        self._flush_scheduled = False
        self._agenda: list[tuple[float, int, int, Deliveries | Timers | None]] = []  # per_message
        self._instant = 0.0
        self._window_end = -np.inf
        self._inclusive = False
        self._whole = False             # this window takes every message up to a timer
        self._timers_wait = False       # ... and leaves the timers for after them
        self._egress_free: dict[int, float] = {}
        self._ingress_free: dict[int, float] = {}

    # ----------------------------------------------------------------- sending

    def send(self, kind: Kind, routes: np.ndarray, ready: np.ndarray | float,
             attempt: np.ndarray | int = 0) -> None:
        """Queue one message of ``kind`` per route, leaving at ``ready`` (flushed later).

        ``ready`` is a time or one per route; ``attempt`` the retry number (or one per route).
        """
        if len(routes) == 0:
            return
        ready = uniform(float(ready), len(routes)) if np.ndim(ready) == 0 else \
            np.asarray(ready, np.float64)
        attempts = None if np.ndim(attempt) == 0 and attempt == 0 else \
            np.broadcast_to(np.asarray(attempt, np.int64), routes.shape)
        self._outbox.append(Deliveries(kind, routes, ready, ready, attempts,
                                       n_routes=self.n_routes))
        self._end_step_later()

    def _end_step_later(self) -> None:
        """per_message mode: end the current instant once all its events are handled."""
        if self.mode == "per_message" and not self._flush_scheduled:
            self._flush_scheduled = True
            self._schedule(END_OF_INSTANT, self._instant, END_RANK)

    def _arm(self, batch: Deliveries, leave: np.ndarray) -> None:
        """Start retry timers for requests that left their NICs at ``leave``."""
        due = self.timer.due(np.broadcast_to(np.asarray(leave, np.float64), batch.routes.shape),
                             batch.attempt)
        routes, attempts = batch.routes, batch.attempt
        if self.mode == "per_message":
            for index in range(len(routes)):
                single = Timers(batch.kind, routes[index:index + 1], attempts[index:index + 1],
                                due[index:index + 1])
                self._schedule(single, due[index], TIMER_RANK + int(routes[index]))
        else:
            order = np.argsort(due, kind="stable")
            timers = Timers(batch.kind, routes[order], attempts[order], due[order])
            heapq.heappush(self._pending, (timers.due[0], next(self._order), timers))

    def flush(self) -> None:
        """Decide the fate and arrival time of everything in the outbox, in canonical order.

        Canonical order is by ready time, then message id, across all kinds: the order a
        sender's NIC serves its queue in.
        """
        if not self._outbox:
            return
        parts, self._outbox = self._outbox, []
        if self.network.contention:
            # One NIC queue per sender across kinds: serve them together, in canonical order.
            self._contend(parts)
            return
        for part in parts:
            self._transmit(part)

    def _transmit(self, batch: Deliveries, leave: np.ndarray | None = None) -> None:
        """Fate, duplicates and arrival times of one kind's sends; then enqueue them."""
        network = self.network
        ids = batch.ids if network.randomised else None
        fate = None
        if network.crashes or network.loss > 0:
            fate = np.full(len(batch), Fate.DELIVERED, dtype=np.int8)
            if network.crashes:
                senders, _ = self._endpoints(batch.kind, batch.routes)
                fate[self._down(senders, batch.sent)] = Fate.SENDER_DOWN
            if network.loss > 0:
                assert ids is not None                                 # loss is random
                fate[(fate == Fate.DELIVERED) & network.lost(ids)] = Fate.LOST
        base = self._uniform_latency if self._uniform_latency is not None else \
            self.route_latency[batch.routes]
        start = batch.sent if leave is None else leave
        if batch.kind in self.timed and len(batch):
            self._arm(batch, start)
        # With contention the sender's NIC already spent the size time.
        delay = network.delays(ids, base, self.nbytes[batch.kind], sized=leave is None)
        one = constant(start)
        batch.arrive = uniform(one + float(delay), len(batch)) if one is not None and \
            np.ndim(delay) == 0 else start + delay
        if fate is not None and (fate != Fate.DELIVERED).any():
            gone = fate != Fate.DELIVERED
            lost = batch.take(gone)
            lost.arrive = np.full(len(lost), np.nan)
            self._record(lost, fate[gone])
            batch = batch.take(~gone)
        batch.received = not network.contention
        if network.duplicate > 0:
            twins = network.duplicated(batch.ids)
            if twins.any():
                copies = batch.take(twins)
                copies.arrive = copies.arrive + network.duplicate_lag(copies.ids)
                copies.copy = np.ones(len(copies), np.int8)
                batch = merge(batch.kind, [batch, copies])
        batch = batch.sorted()
        if len(batch):
            if batch.arrive[0] < self._window_end and not self._whole:
                raise AssertionError("lookahead violated: a message would arrive inside the "
                                     "window that sent it")
            self._enqueue(batch)

    def _contend(self, parts: list[Deliveries]) -> None:
        """With contention: each sender's NIC serves all kinds first come first served."""
        merged, kinds, ids, senders, sizes = self._nic_view(parts, 0)
        order = np.lexsort((ids, merged.sent))
        merged, kinds, senders, sizes = merged.take(order), kinds[order], senders[order], \
            sizes[order]
        sending = np.ones(len(kinds), bool)
        if self.network.crashes:
            sending = ~self._down(senders, merged.sent)
        leave = nic_queue(self._egress_free, senders, merged.sent, sizes / self.network.bandwidth,
                          sending, start_based=True)
        for kind in map(Kind, np.unique(kinds)):
            mine = kinds == kind
            part = merged.take(mine)
            part.kind = kind
            self._transmit(part, leave[mine])

    def _nic_view(self, parts: list[Deliveries], end: int) -> tuple:
        """All kinds' messages in one batch, with each one's kind, id, NIC and size.

        ``end`` picks the NIC: 0 the sender's, 1 the receiver's.
        """
        kinds = np.concatenate([np.full(len(p), int(p.kind)) for p in parts])
        merged = concat(Kind.QUERY, parts)
        ids = np.concatenate([p.ids for p in parts])
        nodes = np.empty(len(kinds), np.int64)
        sizes = np.empty(len(kinds))
        for kind in map(Kind, np.unique(kinds)):
            mine = kinds == kind
            nodes[mine] = self._endpoints(kind, merged.routes[mine])[end]
            sizes[mine] = self.nbytes[kind]
        return merged, kinds, ids, nodes, sizes

    def _enqueue(self, batch: Deliveries) -> None:
        if self.mode == "per_message":
            ids, copies = batch.ids, batch.copies
            for index in range(len(batch)):
                self._schedule(batch.take(slice(index, index + 1)), batch.arrive[index],
                               int(ids[index]) * 2 + int(copies[index]))
        else:
            heapq.heappush(self._pending, (batch.arrive[0], next(self._order), batch))

    def _schedule(self, item: Deliveries | Timers | None, time: float, rank: int) -> None:
        """per_message mode: put one message, timer or end of instant on the agenda."""
        heapq.heappush(self._agenda, (float(time), rank, next(self._order), item))
