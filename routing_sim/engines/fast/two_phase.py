"""The token node of the fast engine: what it does when each kind of message arrives.

New here? Read :mod:`routing_sim.engines.plain` first: the same protocol with one SimPy process
per token node, messages that carry their payloads, and a handler per kind in which the
key node computes its score when the QUERY arrives (``simulate(..., engine="plain")``).
This module is the engine that runs by default; it sends the same messages at the same
times (tests/test_plain.py holds the two logs equal), but evaluates the arithmetic
elsewhere, as said below.

Two-phase (the default), for every route ``j -> i``::

    i --QUERY q_i--> j        i asks: "this is what I am looking for"
    i <--SCORE s_ij-- j       j answers with how well its key matches (k_j never leaves j)
    i: barrier, softmax       once every score is in, i splits its budget: shares w_i·
    i --PULL w_ij--> j        i asks for the value, telling j its share
    i <--VALUE v_j-- j        j sends its payload
    i: weighted pull          once every value is in: o_i = Σ_j w_ij v_j, in source order

Where the fast engine does the arithmetic, and why: deliveries carry route ids, not payloads,
and a key node's handler only schedules its answer. The query node evaluates every score, its
softmax and its weighted pull once its barrier passes (:mod:`routing_sim.engines.fast.barrier`),
as one product over its routes in source order. The numbers a message would carry are the same
(in float mode up to the last bit: a one-row product and the node's whole product may round
differently); computing them in one place, in one order, is what makes the result bit-identical
under every schedule, whatever batches the transport delivers, and lets a node's work be one
vectorised call. Retries and idempotent receivers live in :mod:`routing_sim.engines.fast.nodes`,
the streaming variant (``softmax="online"``) in :mod:`routing_sim.engines.fast.online`.
"""

from __future__ import annotations

import numpy as np

from ...network.deliveries import Deliveries
from ...network.messages import Kind
from ...network.transport import Transport
from ...network.wave_times import constant
from ...network.waves import WaveTransport
from ...numerics.kernels import top_routes
from ...routes.table import RouteTable
from ..setup import Setup
from ..state import SCORE_PHASE, VALUE_PHASE, ForwardState
from .barrier import aggregate, allocate, allocate_whole, pull_whole, tiled_shares
from .exact_whole import exact_pull_whole
from .nodes import TokenNodes

__all__ = ["ForwardNodes", "TwoPhaseNodes", "on_routes", "settle", "top_routes"]


def settle(table: RouteTable, routes: np.ndarray, times: np.ndarray, settled: np.ndarray,
           needed: np.ndarray, latest: np.ndarray) -> np.ndarray:
    """Count settled routes per query node; return nodes whose last one just settled.

    ``latest`` keeps, per node, the time of its latest settled route.
    """
    one = constant(times)
    if len(routes) == len(table) and one is not None:   # a whole wave at one instant
        counts = table.routes_per_node()
        settled += counts
        asked = counts > 0
        np.fmax(latest, one, out=latest, where=asked)
        return np.flatnonzero(asked & (settled == needed))
    if len(routes) == len(table):                 # every route once (a whole wave)
        counts, nodes = table.routes_per_node(), None
    else:
        nodes = table.query_node[routes]
        counts = np.bincount(nodes, minlength=len(settled))            # (G·L,)
    touched = np.flatnonzero(counts)
    settled[touched] += counts[touched]
    if one is not None or (len(times) and times.min() == times.max()):  # one instant
        latest[touched] = np.fmax(latest[touched], times[0])
    elif routes is table.every_route():           # node by node: each node's routes a slice
        latest[touched] = np.fmax(latest[touched],
                                  np.fmax.reduceat(times, table.indptr[touched]))
    else:
        np.fmax.at(latest, table.query_node[routes] if nodes is None else nodes, times)
    return touched[settled[touched] == needed[touched]]


def on_routes(table: RouteTable, routes: np.ndarray, per_node: np.ndarray) -> np.ndarray:
    """``(m,)``: each route's query node's entry of ``per_node (G·L,)``.

    Examples
    --------
    >>> table = RouteTable(np.array([[[True, False], [True, True]]]))
    >>> on_routes(table, table.every_route(), np.array([5.0, 7.0])).tolist()
    [5.0, 7.0, 7.0]
    """
    if routes is table.every_route():             # node by node: repeat, no gather
        return np.repeat(per_node, table.routes_per_node())
    return per_node[table.query_node[routes]]


class ForwardNodes(TokenNodes):
    """The handlers every forward protocol shares; subclasses say how routes settle.

    What the nodes know is :attr:`state` (a :class:`~routing_sim.engines.state.ForwardState`).
    A key node answers at once; a query node counts the first answer per route and hands
    it to ``_settle_scores`` / ``_settle_values``, which the two-phase and online nodes
    define.
    """

    REQUESTS = (Kind.QUERY, Kind.PULL)

    def __init__(self, setup: Setup, transport: Transport | WaveTransport) -> None:
        super().__init__(setup.problem, setup.routes, transport)
        network, routes = setup.network, setup.routes
        self.state = ForwardState(setup.problem, routes, setup.kernels, self.dead,
                                  self.processing, network.on_missing, setup.options.top_k,
                                  network.faulty, network.duplicate > 0)
        self._scores_settled = np.zeros(routes.n_nodes, dtype=np.int64)
        self._values_settled = np.zeros(routes.n_nodes, dtype=np.int64)
        self.handlers = {Kind.QUERY: self.on_query, Kind.SCORE: self.on_score,
                         Kind.PULL: self.on_pull, Kind.VALUE: self.on_value}

    def start(self) -> None:
        """At time 0 every query node sends a QUERY on each of its routes."""
        self.request(Kind.QUERY, self.routes.every_route(), 0.0, 0)

    def on_query(self, batch: Deliveries) -> None:
        """Key node j: answer each query with its match score, as soon as it arrives."""
        self.answer(Kind.SCORE, batch)

    def on_score(self, batch: Deliveries) -> None:
        """Query node i: count each route's first score; settle the scores."""
        routes, times = self.first_answers(batch, self.state.score_time)
        self._settle_scores(routes, times)

    def on_pull(self, batch: Deliveries) -> None:
        """Key node j: send the value to whoever pulls it."""
        self.answer(Kind.VALUE, batch)

    def on_value(self, batch: Deliveries) -> None:
        """Query node i: count each route's first value; settle the values."""
        if self._dedupe:                           # copies and retries: per-route times
            routes, times = self.first_answers(batch, self.state.value_time)
        else:
            routes, times = batch.routes, batch.arrive
            self.state.record_values(routes, times)
        self._settle_values(routes, times)

    def answer_times(self) -> dict[Kind, np.ndarray | None]:
        return {Kind.QUERY: self.state.score_time, Kind.PULL: self.state.value_time}

    def give_up(self, kind: Kind, routes: np.ndarray, times: np.ndarray) -> None:
        """No answer after every retry: the route is dead; its node settles without it."""
        if kind == Kind.QUERY:
            self.dead[routes] = SCORE_PHASE
            self._settle_scores(routes, times)
        else:
            self.dead[routes] = VALUE_PHASE
            self._settle_values(routes, times)

    def _settle_scores(self, routes: np.ndarray, times: np.ndarray) -> None:
        raise NotImplementedError

    def _settle_values(self, routes: np.ndarray, times: np.ndarray) -> None:
        raise NotImplementedError


class TwoPhaseNodes(ForwardNodes):
    """Two-phase softmax: a barrier per query node, then the budget, then the pull."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A barrier counts arrivals and takes the latest time: handling order is free.
        self.transport.order_free = True

    def _settle_scores(self, routes: np.ndarray, times: np.ndarray) -> None:
        """Barrier: nodes whose every score settled allocate their budget and PULL."""
        state = self.state
        ready = settle(self.routes, routes, times, self._scores_settled, state.needed,
                       state.barrier_time)
        if not len(ready):
            return
        if state.fixed_blocks:
            tiled_shares(state)                        # first, before any node's own shares
        whole, lossy = self._by_losses(ready)
        parts = [allocate_whole(state, whole)] if len(whole) else []
        parts += [allocate(state, int(node)) for node in lossy]
        pulls = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else \
            np.zeros(0, np.int64)
        barrier = state.barrier_time[ready]
        if barrier.min() == barrier.max():                             # one instant
            ready_at = barrier[0] + self.processing
        else:
            ready_at = on_routes(self.routes, pulls, state.barrier_time) + self.processing
        self.request(Kind.PULL, pulls, ready_at, 0)
        no_values = ready[(state.values_needed[ready] == 0) & ~state.failed[ready]]
        state.done_time[no_values] = state.barrier_time[no_values] + self.processing
        # Nothing to pull: a zero row (the tile path may have filled it beforehand).
        state.output[no_values] = 0.0

    def _settle_values(self, routes: np.ndarray, times: np.ndarray) -> None:
        """Nodes whose every value settled add their shares up."""
        state = self.state
        ready = settle(self.routes, routes, times, self._values_settled, state.values_needed,
                       state.done_time)
        if state.kernels.exact:
            for node in exact_pull_whole(state, ready[self.dead_routes[ready] == 0]).tolist():
                aggregate(state, node)
            for node in ready[self.dead_routes[ready] > 0].tolist():
                aggregate(state, node)
            return
        whole, lossy = self._by_losses(ready)
        pull_whole(state, whole)
        for node in lossy:
            aggregate(state, int(node))

    def _by_losses(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``nodes`` split into those that lost no route and those that lost some (routes
        are lost only where requests are retried: never on a network without faults)."""
        if not self._retrying:
            return nodes, nodes[:0]
        lost = self.dead_routes[nodes] > 0
        return nodes[~lost], nodes[lost]
