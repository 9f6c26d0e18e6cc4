"""Delivery of message batches on a SimPy environment: timing, faults, retries' timers.

The protocol hands the transport batches of sends (numpy arrays of route ids and ready
times). Sends wait in an outbox that is flushed in canonical order, by ready time and then
message id; the flush decides each message's fate (lost, duplicated, never sent because
its sender is down) and its arrival time, from the :class:`~routing_sim.Network` and, with
contention, from each sender's NIC queue. Arrivals then go through the receiver's NIC queue
(with contention) and the receiver's crash windows, and are handed to the protocol. The
sending half comes first (:class:`Outbox`: the outbox and its flush; what leaves is queued
for delivery, on the pending heap in window and instant modes or on the per-message
agenda), then :class:`Transport`, which adds the delivering half.

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
    discrete-event simulation. When the nodes' handlers commute and there is no retry
    timer and no NIC queue, arrival times are known when messages are sent, and one
    window takes everything pending: one event per wave, even at zero latency.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Generator
from typing import Any, Literal

import numpy as np
import simpy

from ..options import DELIVERY_MODES
from .conditions import Network, nic_queue, whole_waves
from .deliveries import Deliveries, Timers, concat, merge
from .messages import Fate, Kind
from .timers import retransmission_timer
from .wave_times import constant, earliest, uniform

__all__ = ["DELIVERY_MODES", "END_OF_INSTANT", "END_RANK", "Outbox", "TIMER_RANK", "Transport",
           "arrivals", "one_latency", "outgoing"]


# per_message mode: the rank of an agenda entry within its instant. Messages rank by
# 2 · message id + copy, retry timers after every message, the end of the instant last.
TIMER_RANK = 2**61
END_RANK = 2**62
END_OF_INSTANT = None


# Messages whose random delays are drawn at a time (see _drawn_arrivals).
DRAW_SLICE = 2**16


def _scalar(value: np.ndarray | float) -> bool:
    """``np.ndim(value) == 0`` for a number or an array, without numpy's dispatch."""
    return not isinstance(value, np.ndarray) or value.ndim == 0


def unattached(_: Deliveries | Timers) -> None:
    """A transport's callback while no token nodes are attached (before a run, after it).

    Examples
    --------
    >>> unattached(None)
    Traceback (most recent call last):
    ...
    RuntimeError: no token nodes are attached to this transport
    """
    raise RuntimeError("no token nodes are attached to this transport")


def one_latency(route_latency: np.ndarray) -> float | None:
    """The one base latency every route shares, or None when routes differ."""
    if route_latency.strides == (0,):
        return constant(route_latency)
    if len(route_latency) and (route_latency == route_latency[0]).all():
        return float(route_latency[0])
    return None


def outgoing(kind: Kind, routes: np.ndarray, ready: np.ndarray | float,
             attempt: np.ndarray | int, n_routes: int) -> Deliveries:
    """One message of ``kind`` per route, ready to leave at ``ready`` (a time or one per
    route), as a batch whose arrival times are still to be decided."""
    ready = uniform(float(ready), len(routes)) if _scalar(ready) else \
        np.asarray(ready, np.float64)
    attempts = None if _scalar(attempt) and attempt == 0 else \
        np.broadcast_to(np.asarray(attempt, np.int64), routes.shape)
    return Deliveries(kind, routes, ready, ready, attempts, n_routes=n_routes)


def arrivals(network: Network, batch: Deliveries, start: np.ndarray,
             base: np.ndarray | float, nbytes: int, sized: bool = True,
             ids: np.ndarray | None = None) -> np.ndarray:
    """When ``batch``'s messages, leaving at ``start`` over routes of latency ``base``,
    arrive (a zero-stride view when they all leave together and share one delay).

    ``ids``: the batch's message ids, if the caller has them already.
    """
    if network.random_delays:
        return _drawn_arrivals(network, batch, start, base, nbytes, sized, ids)
    delay = network.delays(None, base, nbytes, sized=sized)            # no draw: no ids
    one = constant(start)
    return uniform(one + float(delay), len(start)) if one is not None and _scalar(delay) \
        else start + delay


def _drawn_arrivals(network: Network, batch: Deliveries, start: np.ndarray,
                    base: np.ndarray | float, nbytes: int, sized: bool,
                    ids: np.ndarray | None) -> np.ndarray:
    """:func:`arrivals` with random delays, drawn :data:`DRAW_SLICE` messages at a time:
    the message ids of a slice and its draw's temporaries stay in a core's cache, and the
    only array as long as the wave is its arrival times (a temporary that long is fresh
    memory the kernel faults in)."""
    arrive = np.empty(len(start))                                      # (m,)
    per_route = base if isinstance(base, np.ndarray) and base.ndim else None      # (m,)
    for first in range(0, len(start), DRAW_SLICE):
        part = slice(first, first + DRAW_SLICE)
        delay = network.delays(batch.ids_of(part) if ids is None else ids[part],
                               base if per_route is None else per_route[part], nbytes,
                               sized=sized)
        np.add(start[part], delay, out=arrive[part])
    return arrive


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
        self._uniform_latency = one_latency(route_latency)
        self.n_routes = len(route_latency)
        self.nbytes = nbytes
        self.mode = mode
        self.events = 0
        self.on_deliver: Callable[[Deliveries], None] = unattached
        self.on_timer: Callable[[Timers], None] = unattached
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
        self._outbox.append(outgoing(kind, routes, ready, attempt, self.n_routes))
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
        ids = batch.ids if network.loss > 0 else None  # else drawn a slice at a time
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
        batch.arrive = arrivals(network, batch, start, base, self.nbytes[batch.kind],
                                sized=leave is None, ids=ids)
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
        if len(batch):
            if self.any_order():
                first = earliest(batch.arrive)
            else:
                batch = batch.sorted()
                first = float(batch.arrive[0])
            if first < self._window_end and not self._whole:
                raise AssertionError("lookahead violated: a message would arrive inside the "
                                     "window that sent it")
            self._enqueue(batch, first)

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

    def any_order(self) -> bool:
        """May batches stay in the order they were sent rather than sorted by arrival?

        Yes when every window takes everything pending (:meth:`_whole_waves`)
        and no retry timer or copy exists: each message is then handed over in the one
        window whatever its place in its batch, to handlers that commute, and the trace
        sorts its rows itself. Sorting a wave of a million jittered messages costs more
        than the handlers of it.
        """
        return self._windowed and self.order_free and whole_waves(self.network)

    def _whole_waves(self) -> bool:
        """Can one window take everything pending, each message at its own time?

        Yes when the nodes' handlers do not depend on the order messages are handled in
        (``order_free``: a barrier counts and takes the latest time) and nothing else
        does: no NIC queue (first come first served), and retry timers that never fire
        before an answer that is still on its way (the timeout is at least the slowest
        round trip), so that no route ever has a late answer that a later window could
        hand over before an earlier one. Timers then fire once every message due before
        them is handled, as with one event per message. Copies of a message travel in
        one batch. Arrival times are known when messages are sent, whatever the latency.
        """
        network = self.network
        if not (self._windowed and self.order_free) or network.contention:
            return False
        return not network.faulty or self._answers_in_time

    def _enqueue(self, batch: Deliveries, first: float | None = None) -> None:
        """Queue a batch for delivery; ``first``: its earliest arrival (default: the first
        row's, the batch being sorted)."""
        if self.mode == "per_message":
            ids, copies = batch.ids, batch.copies
            for index in range(len(batch)):
                self._schedule(batch.take(slice(index, index + 1)), batch.arrive[index],
                               int(ids[index]) * 2 + int(copies[index]))
        else:
            heapq.heappush(self._pending, (batch.arrive[0] if first is None else first,
                                           next(self._order), batch))

    def _schedule(self, item: Deliveries | Timers | None, time: float, rank: int) -> None:
        """per_message mode: put one message, timer or end of instant on the agenda."""
        heapq.heappush(self._agenda, (float(time), rank, next(self._order), item))


class Transport(Outbox):
    """Sends message batches and delivers them on a SimPy clock."""

    def end_step(self) -> None:
        """After a delivery step: let the nodes apply ordered updates, then flush sends."""
        self._flush_scheduled = False
        if self.on_step_end is not None:
            self.on_step_end()
        self.flush()

    # ----------------------------------------------------------------- delivering

    def detach(self) -> None:
        """Forget the nodes' callbacks (:meth:`TokenNodes.detach
        <routing_sim.engines.fast.nodes.TokenNodes.detach>`): the run is over."""
        self.on_deliver = self.on_timer = unattached
        self.on_step_end = None

    def run(self) -> Generator[simpy.Event, Any, None]:
        """The SimPy process that delivers pending batches, window by window."""
        if self.mode == "per_message":
            yield from self._run_per_message()
            return
        self.flush()
        while self._pending:
            start = self._pending[0][0]
            # A window may not run past a timer: messages up to its due time come first.
            first_timer = min((item.due[0] for _, _, item in self._pending
                               if isinstance(item, Timers)), default=np.inf)
            # A lookahead below half an ulp of the clock cannot advance it: such a window
            # is one instant, as with zero lookahead.
            self._whole = self._whole_waves()
            if self._whole:      # every message up to the first timer, then the timers
                first_message = min((first for first, _, item in self._pending
                                     if not isinstance(item, Timers)), default=np.inf)
                self._timers_wait = first_message <= first_timer
                # Timers of different routes do not interact: fire all that are due
                # before the next message together, each at its own time.
                self._window_end, self._inclusive = (first_timer, True) if \
                    self._timers_wait else (first_message, False)
            else:
                reach = self._reach(start) if self._windowed else start
                if reach > start and first_timer >= reach:
                    self._window_end, self._inclusive = reach, False
                else:
                    self._window_end, self._inclusive = start if reach == start \
                        else first_timer, True
            yield self.env.timeout(max(start - self.env.now, 0.0))
            self.events += 1
            messages, timers = self._collect()
            ready: dict[Kind, list[Deliveries]] = {}
            for batch in [m for m in messages if m.received] + self._receive(
                    [m for m in messages if not m.received]):
                ready.setdefault(batch.kind, []).append(batch)
            join = concat if self.any_order() else merge
            for kind, parts in sorted(ready.items()):
                self._deliver(join(kind, parts))
            for due in timers:
                self.on_timer(due)
            self.end_step()
        self._window_end, self._whole = -np.inf, False

    def horizon(self) -> float:
        """No delivery still to come can be earlier than this (inf: nothing can come
        earlier than what was handled, as inside lookahead windows and instants).

        Whole-wave windows hand over messages out of time order across windows; what is
        pending or about to be sent bounds what a later window can bring.
        """
        if not self._whole:
            return np.inf
        first = self._pending[0][0] if self._pending else np.inf
        return min([first] + [earliest(part.sent) for part in self._outbox if len(part)])

    def _reach(self, start: float) -> float:
        """The earliest anything sent at or after ``start`` can arrive or time out, rounded
        as arrivals are (so nothing sent inside a window lands inside it)."""
        if self.network.contention:     # it leaves its NIC after its size time, then travels
            reach = (start + self._min_size) + self._min_latency
        else:
            reach = start + self.min_delay
        return min(reach, start + self.timeout) if self.network.faulty else reach

    def _run_per_message(self):
        """The SimPy process of per_message mode: one timeout per agenda entry.

        The agenda is ordered by (time, rank, insertion): at one instant, messages in
        message-id order, then retry timers, then the end of the instant (the flush).
        """
        self.flush()
        while self._agenda:
            time, _, _, item = heapq.heappop(self._agenda)
            yield self.env.timeout(max(time - self.env.now, 0.0))
            self._instant = time
            if item is END_OF_INSTANT:
                self.end_step()
                continue
            self.events += 1
            self._end_step_later()
            self._handle(item)

    def _handle(self, item: Deliveries | Timers) -> None:
        """per_message mode: one message or timer, at its own time."""
        if isinstance(item, Timers):
            self.on_timer(item)
            return
        batch = item
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
        merged, kinds, ids, receivers, sizes = self._nic_view(batches, 1)
        order = np.lexsort((merged.copies, ids, merged.arrive, receivers))
        merged, kinds = merged.take(order), kinds[order]
        merged.arrive = nic_queue(self._ingress_free, receivers[order], merged.arrive,
                                  sizes[order] / self.network.bandwidth,
                                  np.ones(len(kinds), bool), start_based=False)
        received = []
        for kind in map(Kind, np.unique(kinds)):
            mine = merged.take(kinds == kind)
            mine.kind, mine.received = kind, True
            mine = mine.sorted()
            due_now = self._inside(mine.arrive) if self.mode != "per_message" else \
                mine.arrive <= self._instant
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
                self._record(batch.take(down), np.full(int(down.sum()), Fate.RECEIVER_DOWN,
                                                       np.int8))
                batch = batch.take(~down)
        self._record(batch, None)
        if len(batch):
            self.on_deliver(batch)

    def _inside(self, times: np.ndarray) -> np.ndarray:
        return times <= self._window_end if self._inclusive else times < self._window_end

    def _collect(self) -> tuple[list[Deliveries], list[Timers]]:
        """Pop every pending message and timer of the current window."""
        taken: dict[tuple, list[Deliveries]] = {}
        timers: dict[Kind, list[Timers]] = {}
        side: Literal["left", "right"] = "right" if self._inclusive else "left"
        waiting = []
        end, inclusive = self._window_end, self._inclusive
        while self._pending and (self._pending[0][0] <= end if inclusive
                                 else self._pending[0][0] < end):
            entry = heapq.heappop(self._pending)
            item = entry[2]
            if self._timers_wait and isinstance(item, Timers):
                waiting.append(entry)
                continue
            times = item.due if isinstance(item, Timers) else item.arrive
            last = times[-1]
            whole = last < end or (inclusive and last == end)
            cut = len(times) if whole else int(np.searchsorted(times, end, side=side))
            if isinstance(item, Timers):
                timers.setdefault(item.kind, []).append(item if whole else Timers(
                    item.kind, item.routes[:cut], item.attempts[:cut], item.due[:cut]))
                if not whole:
                    rest: Deliveries | Timers = Timers(item.kind, item.routes[cut:],
                                                       item.attempts[cut:], item.due[cut:])
            else:
                taken.setdefault((item.kind, item.received), []).append(
                    item if whole else item.take(slice(0, cut)))
                if not whole:
                    rest = item.take(slice(cut, None))
            if not whole:
                heapq.heappush(self._pending, (times[cut], next(self._order), rest))
        for entry in waiting:
            heapq.heappush(self._pending, entry)
        self._timers_wait = False
        join = concat if self.any_order() else merge
        messages = [join(kind, parts) for (kind, _), parts in sorted(taken.items())]
        due = [Timers(kind, *(np.concatenate([getattr(p, f) for p in parts])
                              for f in ("routes", "attempts", "due")))
               for kind, parts in sorted(timers.items())]
        return messages, due
