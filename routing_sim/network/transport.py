"""Delivery of message batches on a SimPy environment: timing, faults, retries' timers.

The protocol hands the transport batches of sends (numpy arrays of route ids and ready
times). Sends wait in an outbox that is flushed in canonical order, by ready time and then
message id; the flush decides each message's fate (lost, duplicated, never sent because
its sender is down) and its arrival time, from the :class:`~routing_sim.Network` and, with
contention, from each sender's NIC queue. Arrivals then go through the receiver's NIC queue
(with contention) and the receiver's crash windows, and are handed to the protocol. The
sending half (the outbox and its flush) is :class:`~routing_sim.outbox.Outbox`; this
module delivers.

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
from collections.abc import Generator
from typing import Any, Literal

import numpy as np
import simpy

from ..options import DELIVERY_MODES
from .conditions import nic_queue
from .deliveries import Deliveries, Timers, merge
from .messages import Fate, Kind
from .outbox import END_OF_INSTANT, Outbox

__all__ = ["DELIVERY_MODES", "Transport"]


class Transport(Outbox):
    """Sends message batches and delivers them on a SimPy clock."""

    def end_step(self) -> None:
        """After a delivery step: let the nodes apply ordered updates, then flush sends."""
        self._flush_scheduled = False
        if self.on_step_end is not None:
            self.on_step_end()
        self.flush()

    # ----------------------------------------------------------------- delivering

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
                first_message = min((item.arrive[0] for _, _, item in self._pending
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
            for kind, parts in sorted(ready.items()):
                self._deliver(merge(kind, parts))
            for due in timers:
                self.on_timer(due)
            self.end_step()
        self._window_end, self._whole = -np.inf, False

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

    def horizon(self) -> float:
        """No delivery still to come can be earlier than this (inf: nothing can come
        earlier than what was handled, as inside lookahead windows and instants).

        Whole-wave windows hand over messages out of time order across windows; what is
        pending or about to be sent bounds what a later window can bring.
        """
        if not self._whole:
            return np.inf
        first = self._pending[0][0] if self._pending else np.inf
        return min([first] + [float(part.sent.min()) for part in self._outbox if len(part)])

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
        while self._pending and self._inside(np.array([self._pending[0][0]]))[0]:
            entry = heapq.heappop(self._pending)
            item = entry[2]
            if self._timers_wait and isinstance(item, Timers):
                waiting.append(entry)
                continue
            times = item.due if isinstance(item, Timers) else item.arrive
            cut = len(times) if times[-1] < self._window_end or (
                self._inclusive and times[-1] == self._window_end) else \
                int(np.searchsorted(times, self._window_end, side=side))
            rest: Deliveries | Timers
            if isinstance(item, Timers):
                rest = Timers(item.kind, item.routes[cut:], item.attempts[cut:], item.due[cut:])
                timers.setdefault(item.kind, []).append(
                    Timers(item.kind, item.routes[:cut], item.attempts[:cut], item.due[:cut]))
            else:
                rest = item.take(slice(cut, None))
                taken.setdefault((item.kind, item.received), []).append(
                    item.take(slice(0, cut)))
            if cut < len(times):
                heapq.heappush(self._pending, (times[cut], next(self._order), rest))
        for entry in waiting:
            heapq.heappush(self._pending, entry)
        self._timers_wait = False
        messages = [merge(kind, parts) for (kind, _), parts in sorted(taken.items())]
        due = [Timers(kind, *(np.concatenate([getattr(p, f) for p in parts])
                              for f in ("routes", "attempts", "due")))
               for kind, parts in sorted(timers.items())]
        return messages, due
