"""Delivery of message batches on a SimPy environment: timing, faults, retries' timers.

The protocol hands the transport batches of sends (numpy arrays of route ids and ready
times). Sends wait in an outbox that is flushed in canonical order, by ready time and then
message id; the flush decides each message's fate (lost, duplicated, never sent because
its sender is down) and its arrival time, from the :class:`~routing_sim.Network` and, with
contention, from each sender's NIC queue. Arrivals then go through the receiver's NIC queue
(with contention) and the receiver's crash windows, and are handed to the protocol.

Three delivery modes, identical in what they deliver and when:

``"per_message"``
    One SimPy event per message (ties at one instant in message-id order): the plain
    design, and the baseline the tests hold the others equal to.
``"instant"``
    One SimPy event per simulated instant with arrivals.
``"window"`` (default)
    One SimPy event per lookahead window ``[t, t + d)``, where ``d`` is the smallest
    possible transit time (and retry timeout). Nothing sent inside a window can arrive
    inside it, so handling the window's messages together, each at its own arrival time,
    cannot change what happens: conservative synchronisation, as in parallel
    discrete-event simulation.
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

__all__ = ["DELIVERY_MODES", "Deliveries", "Fate", "Timers", "Transport"]

DELIVERY_MODES = ("window", "instant", "per_message")
_TIMER_PRIORITY = 2**61      # per_message mode: timers after the messages of an instant
_FLUSH_PRIORITY = 2**62      # ... and the outbox flush after both


class Fate:
    """What became of a transmission (the trace's ``fate`` column)."""

    DELIVERED, LOST, SENDER_DOWN, RECEIVER_DOWN = range(4)
    NAMES = ("delivered", "lost", "sender down", "receiver down")


@dataclass
class Deliveries:
    """Messages of one kind (or due timers), sorted by arrival time, then message id."""

    kind: Kind
    routes: np.ndarray   # (m,) route ids
    ids: np.ndarray      # (m,) message ids: (attempt · R + route) · 4 + kind
    sent: np.ndarray     # (m,) send times
    arrive: np.ndarray   # (m,) arrival (or timer) times
    copy: np.ndarray     # (m,) 0 for the original, 1 for a network duplicate
    received: bool = True   # False: the head has arrived, the receiver NIC is still to come
    n_routes: int = 1       # R, to read the attempt back out of a message id

    def __len__(self) -> int:
        return len(self.routes)

    def take(self, index) -> Deliveries:
        return Deliveries(self.kind, self.routes[index], self.ids[index], self.sent[index],
                          self.arrive[index], self.copy[index], self.received, self.n_routes)

    @property
    def attempt(self) -> np.ndarray:
        return self.ids // (len(Kind) * self.n_routes)


@dataclass
class Timers:
    """Retry timers of one request kind that are due: ``(route, attempt, time)``."""

    kind: Kind
    routes: np.ndarray
    attempts: np.ndarray
    due: np.ndarray


class Transport:
    """Sends message batches and delivers them on a SimPy clock."""

    def __init__(self, env: simpy.Environment, network: Network, route_latency: np.ndarray,
                 nbytes: dict[Kind, int], endpoints: Callable[[Kind, np.ndarray], tuple],
                 down: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 record: Callable[..., None], mode: str = "window") -> None:
        self.env = env
        self.network = network
        self.route_latency = route_latency                             # (R,)
        self.n_routes = len(route_latency)
        self.nbytes = nbytes
        self.mode = mode
        self.events = 0
        self.on_deliver: Callable[[Deliveries], None] | None = None
        self.on_timer: Callable[[Timers], None] | None = None
        self.on_step_end: Callable[[], None] | None = None
        self._endpoints = endpoints     # kind, routes -> (sender node ids, receiver node ids)
        self._down = down               # node ids, times -> inside a crash window?
        self._record = record
        self.timeout = network.round_trip_timeout(
            float(route_latency.max(initial=network.latency)), max(nbytes.values()))
        lookahead = network.min_delay(route_latency, min(nbytes.values()))
        if network.faulty:
            lookahead = min(lookahead, self.timeout)
        self._lookahead = lookahead if mode == "window" else 0.0
        self._pending: list[tuple[float, int, object]] = []
        self._order = itertools.count()
        self._outbox: list[tuple[Kind, np.ndarray, np.ndarray, np.ndarray]] = []
        self._flush_scheduled = False
        self._window_end = -np.inf
        self._inclusive = False
        self._egress_free: dict[int, float] = {}
        self._ingress_free: dict[int, float] = {}

    # ----------------------------------------------------------------- sending

    def send(self, kind: Kind, routes: np.ndarray, ready: np.ndarray, attempt=0) -> None:
        """Queue one message of ``kind`` per route, leaving at ``ready`` (flushed later)."""
        if len(routes) == 0:
            return
        attempts = np.broadcast_to(np.asarray(attempt, dtype=np.int64), routes.shape)
        self._outbox.append((kind, routes.astype(np.int64), np.asarray(ready, np.float64),
                             attempts))
        self._end_step_later()

    def _end_step_later(self) -> None:
        """per_message mode: end the current instant once all its events are handled."""
        if self.mode == "per_message" and not self._flush_scheduled:
            self._flush_scheduled = True
            event = simpy.events.Event(self.env)
            event.callbacks.append(lambda _: self.end_step())
            event._ok, event._value = True, None
            self.env.schedule(event, priority=_FLUSH_PRIORITY, delay=0)

    def end_step(self) -> None:
        """After a delivery step: let the nodes apply ordered updates, then flush sends."""
        self._flush_scheduled = False
        if self.on_step_end is not None:
            self.on_step_end()
        self.flush()

    def arm(self, kind: Kind, routes: np.ndarray, attempts: np.ndarray, sent: np.ndarray
            ) -> None:
        """Start retry timers for requests just sent: they fire ``timeout`` later."""
        if len(routes) == 0:
            return
        due = sent + self.timeout
        timers = Timers(kind, routes, attempts, due)
        if self.mode == "per_message":
            for index in range(len(routes)):
                single = Timers(kind, routes[index:index + 1], attempts[index:index + 1],
                                due[index:index + 1])
                self._schedule(single, due[index], _TIMER_PRIORITY + int(routes[index]))
        else:
            order = np.argsort(due, kind="stable")
            sorted_timers = Timers(kind, routes[order], attempts[order], due[order])
            heapq.heappush(self._pending, (due[order[0]], next(self._order), sorted_timers))

    def flush(self) -> None:
        """Decide the fate and arrival time of everything in the outbox, in canonical order.

        Canonical order is by ready time, then message id, across all kinds: it is the
        order a sender's NIC serves its queue in.
        """
        if not self._outbox:
            return
        parts, self._outbox = self._outbox, []
        kinds = np.concatenate([np.full(len(p[1]), int(p[0]), np.int64) for p in parts])
        routes = np.concatenate([p[1] for p in parts])
        ready = np.concatenate([p[2] for p in parts])
        attempts = np.concatenate([p[3] for p in parts])
        ids = (attempts * self.n_routes + routes) * len(Kind) + kinds
        order = np.lexsort((ids, ready))
        kinds, routes, ready, ids = kinds[order], routes[order], ready[order], ids[order]
        network = self.network
        senders = np.empty(len(routes), np.int64)
        sizes = np.empty(len(routes))
        for kind in map(Kind, np.unique(kinds)):
            mine = kinds == kind
            senders[mine] = self._endpoints(kind, routes[mine])[0]
            sizes[mine] = self.nbytes[kind]
        fate = np.full(len(routes), Fate.DELIVERED, dtype=np.int8)
        if network.crashes:
            fate[self._down(senders, ready)] = Fate.SENDER_DOWN
        fate[(fate == Fate.DELIVERED) & network.lost(ids)] = Fate.LOST
        arrive = ready + network.delays(ids, self.route_latency[routes], sizes)
        if network.contention:
            # The sender's NIC serialises: the size time is spent there, after any queue.
            leave = self._queue(self._egress_free, senders, ready, sizes,
                                fate == Fate.DELIVERED, start_based=True)
            arrive += leave - ready - sizes / network.bandwidth
        for kind in map(Kind, np.unique(kinds)):
            mine = kinds == kind
            self._dispatch(kind, routes[mine], ids[mine], ready[mine], arrive[mine], fate[mine])

    def _dispatch(self, kind: Kind, routes: np.ndarray, ids: np.ndarray, ready: np.ndarray,
                  arrive: np.ndarray, fate: np.ndarray) -> None:
        """Log what never left or got lost; duplicate and enqueue the rest."""
        network = self.network
        gone = fate != Fate.DELIVERED
        if gone.any():
            self._record(kind, routes[gone], ids[gone], ready[gone],
                         np.full(int(gone.sum()), np.nan), np.zeros(int(gone.sum()), np.int8),
                         fate[gone])
        alive = ~gone
        batch = Deliveries(kind, routes[alive], ids[alive], ready[alive], arrive[alive],
                           np.zeros(int(alive.sum()), np.int8),
                           received=not network.contention, n_routes=self.n_routes)
        twins = network.duplicated(batch.ids)
        parts = [batch]
        if twins.any():
            copies = batch.take(twins)
            copies.arrive = copies.arrive + network.duplicate_lag(copies.ids)
            copies.copy = np.ones(len(copies), np.int8)
            parts.append(copies)
        batch = _merge(kind, parts, force_sort=True)
        if len(batch):
            if batch.arrive[0] < self._window_end:
                raise AssertionError("lookahead violated: a message would arrive inside the "
                                     "window that sent it")
            self._enqueue(batch)

    def _enqueue(self, batch: Deliveries) -> None:
        if self.mode == "per_message":
            for index in range(len(batch)):
                self._schedule(batch.take(slice(index, index + 1)), batch.arrive[index],
                               int(batch.ids[index]) * 2 + int(batch.copy[index]))
        else:
            heapq.heappush(self._pending, (batch.arrive[0], next(self._order), batch))

    def _schedule(self, item, time: float, priority: int) -> None:
        event = simpy.events.Event(self.env)
        event._ok, event._value = True, item
        event.callbacks.append(self._on_event)
        self.env.schedule(event, priority=priority, delay=max(time - self.env.now, 0.0))

    # ----------------------------------------------------------------- delivering

    def run(self):
        """The SimPy process that delivers pending batches, window by window."""
        self.flush()
        while self._pending:
            start = self._pending[0][0]
            # A window may not run past a timer: messages up to its due time come first.
            first_timer = min((item.due[0] for _, _, item in self._pending
                               if isinstance(item, Timers)), default=np.inf)
            if self._lookahead > 0 and first_timer >= start + self._lookahead:
                self._window_end, self._inclusive = start + self._lookahead, False
            else:
                self._window_end, self._inclusive = min(first_timer, start) \
                    if self._lookahead == 0 else first_timer, True
            yield self.env.timeout(max(start - self.env.now, 0.0))
            self.events += 1
            messages, timers = self._collect()
            ready: dict[Kind, list[Deliveries]] = {}
            for batch in [m for m in messages if m.received] + self._receive(
                    [m for m in messages if not m.received]):
                ready.setdefault(batch.kind, []).append(batch)
            for kind, parts in sorted(ready.items()):
                self._deliver(_merge(kind, parts, force_sort=len(parts) > 1))
            for due in timers:
                self.on_timer(due)
            self.end_step()
        self._window_end = -np.inf

    def _on_event(self, event: simpy.events.Event) -> None:
        self.events += 1
        self._end_step_later()
        if isinstance(event.value, Timers):
            self.on_timer(event.value)
            return
        batch = event.value
        if not batch.received:
            batch = (self._receive([batch]) or [batch.take(slice(0, 0))])[0]
        if len(batch):
            self._deliver(batch)

    def _receive(self, batches: list[Deliveries]) -> list[Deliveries]:
        """Receiver NICs (with contention), first come first served across all kinds.

        Returns, per kind, what is fully received within the current step; the rest is
        queued again for the time its last byte is in.
        """
        if not batches:
            return []
        kinds = np.concatenate([np.full(len(b), int(b.kind)) for b in batches])
        merged = Deliveries(Kind.QUERY, *(np.concatenate([getattr(b, name) for b in batches])
                                          for name in ("routes", "ids", "sent", "arrive", "copy")),
                            False, batches[0].n_routes)
        receivers = np.empty(len(kinds), np.int64)
        sizes = np.empty(len(kinds))
        for kind in map(Kind, np.unique(kinds)):
            mine = kinds == kind
            receivers[mine] = self._endpoints(kind, merged.routes[mine])[1]
            sizes[mine] = self.nbytes[kind]
        order = np.lexsort((merged.copy, merged.ids, merged.arrive, receivers))
        merged, kinds = merged.take(order), kinds[order]
        merged.arrive = self._queue(self._ingress_free, receivers[order], merged.arrive,
                                    sizes[order], np.ones(len(kinds), bool), start_based=False)
        received = []
        for kind in map(Kind, np.unique(kinds)):
            mine = merged.take(kinds == kind)
            mine.kind, mine.received = kind, True
            mine = mine.take(np.lexsort((mine.copy, mine.ids, mine.arrive)))
            due_now = self._inside(mine.arrive) if self.mode != "per_message" else \
                mine.arrive <= self.env.now
            if not due_now.all():
                self._enqueue(mine.take(~due_now))
            if due_now.any():
                received.append(mine.take(due_now))
        return received

    def _deliver(self, batch: Deliveries) -> None:
        """Receiver side: crash windows, the log, then the protocol."""
        if self.network.crashes:
            _, receivers = self._endpoints(batch.kind, batch.routes)
            down = self._down(receivers, batch.arrive)
            if down.any():
                dropped = batch.take(down)
                self._record(batch.kind, dropped.routes, dropped.ids, dropped.sent,
                             dropped.arrive, dropped.copy,
                             np.full(len(dropped), Fate.RECEIVER_DOWN, np.int8))
                batch = batch.take(~down)
        self._record(batch.kind, batch.routes, batch.ids, batch.sent, batch.arrive, batch.copy,
                     np.full(len(batch), Fate.DELIVERED, np.int8))
        if len(batch):
            self.on_deliver(batch)

    def _inside(self, times: np.ndarray) -> np.ndarray:
        return times <= self._window_end if self._inclusive else times < self._window_end

    def _collect(self) -> tuple[list[Deliveries], list[Timers]]:
        """Pop every pending message and timer of the current window."""
        taken: dict[tuple, list[Deliveries]] = {}
        timers: dict[Kind, list[Timers]] = {}
        side = "right" if self._inclusive else "left"
        while self._pending and self._inside(np.array([self._pending[0][0]]))[0]:
            _, _, item = heapq.heappop(self._pending)
            times = item.due if isinstance(item, Timers) else item.arrive
            cut = int(np.searchsorted(times, self._window_end, side=side))
            if isinstance(item, Timers):
                head = Timers(item.kind, item.routes[:cut], item.attempts[:cut], item.due[:cut])
                rest = Timers(item.kind, item.routes[cut:], item.attempts[cut:], item.due[cut:])
                timers.setdefault(item.kind, []).append(head)
            else:
                head, rest = item.take(slice(0, cut)), item.take(slice(cut, None))
                taken.setdefault((item.kind, item.received), []).append(head)
            if cut < len(times):
                heapq.heappush(self._pending, (times[cut], next(self._order), rest))
        messages = [_merge(kind, parts) for (kind, _), parts in sorted(taken.items())]
        due = [Timers(kind, *(np.concatenate([getattr(p, f) for p in parts])
                              for f in ("routes", "attempts", "due")))
               for kind, parts in sorted(timers.items())]
        return messages, due

    def _queue(self, free: dict[int, float], nodes: np.ndarray, times: np.ndarray,
               sizes: np.ndarray, uses_nic: np.ndarray, start_based: bool) -> np.ndarray:
        """First-come-first-served NIC; each message holds it for size / bandwidth.

        Sending (``start_based``): a message can start at its ready time and leaves when
        its last byte is out. Receiving: a message whose last byte arrives at ``t`` is
        received at ``t`` unless the NIC is still busy with the previous one.
        """
        bandwidth = self.network.bandwidth
        done = times.copy()
        for index in np.flatnonzero(uses_nic):
            node, busy = int(nodes[index]), float(sizes[index]) / bandwidth
            previous = free.get(node, -np.inf)
            if start_based:
                finish = max(float(times[index]), previous) + busy
            else:
                finish = max(float(times[index]), previous + busy)
            free[node] = finish
            done[index] = finish
        return done


def _merge(kind: Kind, parts: list[Deliveries], force_sort: bool = False) -> Deliveries:
    if len(parts) == 1 and not force_sort:
        return parts[0]
    merged = Deliveries(kind, *(np.concatenate([getattr(p, name) for p in parts])
                                for name in ("routes", "ids", "sent", "arrive", "copy")),
                        parts[0].received, parts[0].n_routes)
    return merged.take(np.lexsort((merged.copy, merged.ids, merged.arrive)))
