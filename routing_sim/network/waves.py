"""Delivery without SimPy, wave by wave, where nothing can depend on the order of handling.

On a network that never loses nor copies a message and has no NIC queue, and with
handlers that commute (a two-phase barrier counts arrivals and keeps the latest time),
the window transport (:mod:`.transport`) takes everything pending in one SimPy event per
wave: QUERY, SCORE, PULL, VALUE. :class:`WaveTransport` does exactly that with no clock,
no heap and no retry machinery: it decides each message's arrival time when it is sent
(latency, bandwidth, jitter: the same :func:`~.transport.arrivals`), then hands a wave's
messages to the nodes kind by kind, as the window transport does. The messages, their times,
the log and the event count are those of ``delivery="window"``; a decoding step, one query
node per head, spends a fraction of the time on delivering them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .conditions import Network, whole_waves
from .deliveries import Deliveries, Timers, concat
from .messages import Kind
from .transport import arrivals, one_latency, outgoing, unattached

__all__ = ["WaveTransport"]


class WaveTransport:
    """Delivers whole waves of messages, one after the other, on a fault-free network.

    The nodes attach to it as to a :class:`~.transport.Transport` (``on_deliver``,
    ``send``, ``order_free``); :meth:`run` delivers until nothing is left to send.

    Examples
    --------
    >>> log = []
    >>> wire = WaveTransport(Network(latency=2.0), np.full(3, 2.0), {Kind.QUERY: 8},
    ...                      lambda batch, fate: None)
    >>> wire.on_deliver = lambda batch: log.append((batch.kind.name, batch.arrive.tolist()))
    >>> wire.order_free = True
    >>> wire.send(Kind.QUERY, np.arange(3), 0.5)
    >>> wire.run()
    >>> log, wire.events
    ([('QUERY', [2.5, 2.5, 2.5])], 1)
    """

    mode = "window"                     # the delivery mode whose events it reproduces
    timed: frozenset[Kind] = frozenset()    # no retry timers: nothing is lost

    def __init__(self, network: Network, route_latency: np.ndarray, nbytes: dict[Kind, int],
                 record: Callable[[Deliveries, np.ndarray | None], None]) -> None:
        if not whole_waves(network):
            raise ValueError(f"{network!r} may lose, copy or queue messages; use Transport")
        self.network = network
        self.route_latency = route_latency                             # (R,)
        self.nbytes = nbytes
        self.events = 0
        self.order_free = False         # do the nodes' handlers commute? (run needs it)
        self.on_deliver: Callable[[Deliveries], None] = unattached
        self.on_timer: Callable[[Timers], None] = unattached
        self._record = record
        self._latency = one_latency(route_latency)
        self._outbox: list[Deliveries] = []

    def send(self, kind: Kind, routes: np.ndarray, ready: np.ndarray | float,
             attempt: np.ndarray | int = 0) -> None:
        """Send one message of ``kind`` per route, leaving at ``ready`` (a time or one per
        route); it arrives in the next wave."""
        if len(routes) == 0:
            return
        batch = outgoing(kind, routes, ready, attempt, len(self.route_latency))
        network = self.network
        base = self._latency if self._latency is not None else self.route_latency[routes]
        batch.arrive = arrivals(network, batch, batch.sent, base, self.nbytes[kind])
        self._outbox.append(batch)

    def detach(self) -> None:
        """Forget the nodes' callbacks: the run is over (as :meth:`Transport.detach
        <routing_sim.network.transport.Transport.detach>`)."""
        self.on_deliver = self.on_timer = unattached

    def run(self) -> None:
        """Deliver wave after wave (one event each), every kind in turn, till all is quiet."""
        if not self.order_free:
            raise RuntimeError("whole waves need handlers that commute (order_free)")
        while self._outbox:
            wave, self._outbox = self._outbox, []
            self.events += 1
            for kind in sorted({batch.kind for batch in wave}):
                batch = concat(kind, [part for part in wave if part.kind == kind])
                self._record(batch, None)
                self.on_deliver(batch)
