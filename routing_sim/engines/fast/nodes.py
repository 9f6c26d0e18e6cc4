"""Requests retried like RPCs, and receivers that answer each request once.

When the network can lose messages, a sender that has no answer ``timeout`` after
sending a request (QUERY, PULL; in the backward pass GRAD_OUTPUT, GRAD_SCORE) resends
it, up to ``retries`` times, and then gives the route up. Receivers are idempotent: a key
node answers each request id once; a query node counts the first answer per route and
ignores copies. :class:`TokenNodes` holds this machinery for every protocol (two-phase,
online, backward); what a node does with an answer lives in the protocol modules.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...network.deliveries import Deliveries, Timers
from ...network.messages import Kind
from ...network.transport import Transport
from ...network.wave_times import shifted
from ...network.waves import WaveTransport
from ...routes.problem import Problem
from ...routes.table import RouteTable

__all__ = ["TokenNodes"]


class TokenNodes:
    """Retries, idempotent receivers and give-ups shared by every protocol.

    Subclasses name their request kinds in ``REQUESTS`` (each answered by the kind that
    follows it), map each kind to its handler in ``handlers``, and say, in
    ``answer_times`` and ``give_up``, when a request was answered and what happens when a
    route is given up.
    """

    REQUESTS: tuple[Kind, ...] = ()

    def __init__(self, problem: Problem, routes: RouteTable,
                 transport: Transport | WaveTransport) -> None:
        self.problem, self.routes, self.transport = problem, routes, transport
        network = transport.network
        n_routes = len(routes)
        self.dead = np.zeros(n_routes, dtype=np.int8)                  # (R,) phase it died in
        self.retransmissions = {kind: 0 for kind in self.REQUESTS}
        self.ignored = 0                                               # copies and late answers
        self.handlers: dict[Kind, Callable[[Deliveries], None]] = {}
        self.dead_routes = np.zeros(routes.n_nodes, dtype=np.int64)    # (G·L,) per node
        self.processing = network.processing
        self._retrying = network.faulty
        self._retries = network.retries
        # Copies and repeated answers exist only with duplication or retries.
        self._dedupe = network.duplicate > 0 or network.faulty
        self._answered = {kind: np.zeros(n_routes if self._dedupe else 0, np.int64)
                          for kind in self.REQUESTS}                   # bit a: attempt a answered
        transport.on_deliver, transport.on_timer = self.deliver, self.on_timer
        transport.timed = frozenset(self.REQUESTS) if self._retrying else frozenset()

    def deliver(self, batch: Deliveries) -> None:
        self.handlers[batch.kind](batch)

    def detach(self) -> None:
        """Let go of the transport once the run is over.

        The nodes' handlers are their own bound methods and the transport calls back into
        the nodes: a reference cycle that only Python's cycle collector would free, holding
        the run's per-route state for as long as it waits (it counts objects, not bytes).
        Breaking it frees a dropped Run at once.
        """
        self.handlers.clear()
        self.transport.detach()

    def on_timer(self, timers: Timers) -> None:
        """A request's timer fired: resend if its answer is not in, or give the route up."""
        answer_time = self.answer_times()[timers.kind]
        assert answer_time is not None, "a network that loses messages keeps answer times"
        waiting = ~(answer_time[timers.routes] <= timers.due) & (self.dead[timers.routes] == 0)
        routes, attempts, due = (x[waiting] for x in (timers.routes, timers.attempts, timers.due))
        again = attempts < self._retries
        self.retransmissions[timers.kind] += int(again.sum())
        self.request(timers.kind, routes[again], due[again], attempts[again] + 1)
        lost, when = routes[~again], due[~again]
        np.add.at(self.dead_routes, self.routes.query_node[lost], 1)
        self.give_up(timers.kind, lost, when)

    def answer(self, kind: Kind, batch: Deliveries) -> None:
        """Key node j: reply once to every request id it has not answered before."""
        if not self._dedupe:
            self.transport.send(kind, batch.routes, shifted(batch.arrive, self.processing), 0)
            return
        fresh = self._fresh_requests(batch)
        self.transport.send(kind, batch.routes[fresh], batch.arrive[fresh] + self.processing,
                            batch.attempt[fresh])

    def request(self, kind: Kind, routes: np.ndarray, ready: np.ndarray | float,
                attempt: np.ndarray | int) -> None:
        """Send requests; on a network that can lose them, the transport arms their retry
        timers when they leave their NICs (:mod:`routing_sim.network.timers`)."""
        self.transport.send(kind, routes, ready, attempt)

    def _fresh_requests(self, batch: Deliveries) -> np.ndarray:
        """Key-node idempotence: which deliveries are requests not answered before."""
        answered = self._answered[batch.kind]
        bits = np.left_shift(np.int64(1), batch.attempt)
        fresh = (answered[batch.routes] & bits) == 0
        _, first = np.unique(batch.ids, return_index=True)
        once = np.zeros(len(batch), dtype=bool)
        once[first] = True
        fresh &= once
        np.bitwise_or.at(answered, batch.routes[fresh], bits[fresh])
        self.ignored += len(batch) - int(fresh.sum())
        return fresh

    def first_answers(self, batch: Deliveries, first_time: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Query-node idempotence: the first answer per live route counts, copies do not.

        Records each counted answer's arrival in ``first_time`` (kept only where copies or
        retries can bring a second answer) and returns the counted (routes, arrival times).
        """
        if not self._dedupe:               # no copy, no retry: every answer is the first
            return batch.routes, batch.arrive
        assert first_time is not None, "copies and retries keep first arrival times"
        new = np.isnan(first_time[batch.routes]) & (self.dead[batch.routes] == 0)
        _, first = np.unique(batch.routes, return_index=True)
        once = np.zeros(len(batch), dtype=bool)
        once[first] = True
        new &= once
        self.ignored += len(batch) - int(new.sum())
        routes, times = batch.routes[new], batch.arrive[new]
        first_time[routes] = times
        return routes, times

    def phase(self, kind: Kind) -> int:
        """The phase a request of ``kind`` opens, counted from 1 in ``REQUESTS`` order: what
        ``dead`` records for a route given up on it (forward: QUERY 1, PULL 2)."""
        return self.REQUESTS.index(kind) + 1

    def answer_times(self) -> dict[Kind, np.ndarray | None]:
        """Per request kind: when each route's answer first arrived (NaN: not yet)."""
        raise NotImplementedError

    def give_up(self, kind: Kind, routes: np.ndarray, times: np.ndarray) -> None:
        """No answer after every retry: mark the routes dead and settle without them."""
        raise NotImplementedError
