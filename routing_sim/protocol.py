"""The token node: what it does when each kind of message arrives (two-phase protocol).

For every route ``j -> i``::

    i --QUERY q_i--> j        i asks: "this is what I am looking for"
    i <--SCORE s_ij-- j       j answers with how well its key matches (k_j never leaves j)
    i: barrier, softmax       once every score is in, i splits its budget: shares w_i·
    i --PULL w_ij--> j        i asks for the value, telling j its share
    i <--VALUE v_j-- j        j sends its payload
    i: weighted pull          once every value is in: o_i = Σ_j w_ij v_j, in source order

Handlers receive whole batches of deliveries (all the messages of one kind that the
transport delivers together) and act on each message at its own arrival time. The
arithmetic of a node runs once per node, over its whole route list in source order
(:mod:`routing_sim.numerics`), so no schedule can change a bit of the result.
"""

from __future__ import annotations

import numpy as np

from .inputs import Problem
from .messages import Kind
from .numerics import match_scores, routing_budget, weighted_pull
from .routes import RouteTable
from .transport import Deliveries, Transport

__all__ = ["TwoPhaseNode"]


class TwoPhaseNode:
    """The state and handlers of every token node in a run, vectorised over nodes.

    Per route it keeps the score and share once known; per query node the count of
    arrived scores and values, the barrier time and the time its output was complete.
    """

    def __init__(self, problem: Problem, routes: RouteTable, transport: Transport) -> None:
        self.problem = problem
        self.routes = routes
        self.transport = transport
        n_nodes, dtype = routes.n_nodes, problem.dtype
        self.scores = np.zeros(len(routes), dtype=dtype)               # (R,) s_ij
        self.shares = np.zeros(len(routes), dtype=dtype)               # (R,) w_ij after dropout
        self.value_arrived = np.full(len(routes), np.nan)              # (R,) when v_j reached i
        self.output = np.zeros((n_nodes, problem.shape[4]), dtype=dtype)  # (G·L, Ev)
        self.barrier_time = np.full(n_nodes, -np.inf)                  # (G·L,)
        self.done_time = np.full(n_nodes, np.nan)                      # (G·L,)
        self._needed = routes.routes_per_node()                        # (G·L,)
        self._scores_in = np.zeros(n_nodes, dtype=np.int64)
        self._values_in = np.zeros(n_nodes, dtype=np.int64)
        self._kept = None if problem.keep is None else problem.keep.reshape(
            n_nodes, -1)[routes.query_node, routes.key_index]          # (R,) bool
        self._values_needed = self._needed if self._kept is None else np.bincount(
            routes.query_node[self._kept], minlength=n_nodes)
        self._handlers = {Kind.QUERY: self.on_query, Kind.SCORE: self.on_score,
                          Kind.PULL: self.on_pull, Kind.VALUE: self.on_value}

    def start(self) -> None:
        """At time 0 every query node sends a QUERY on each of its routes."""
        every_route = np.arange(len(self.routes))
        self.transport.send(Kind.QUERY, every_route, np.zeros(len(every_route)))

    def deliver(self, batch: Deliveries) -> None:
        self._handlers[batch.kind](batch)

    def on_query(self, batch: Deliveries) -> None:
        """Key node j: answer each query with its match score, as soon as it arrives."""
        self.transport.send(Kind.SCORE, batch.routes, batch.arrive)

    def on_score(self, batch: Deliveries) -> None:
        """Query node i: when the last score is in, allocate the budget and send PULLs."""
        ready = self._count_in(batch, self._scores_in, self._needed, self.barrier_time)
        for node in ready:
            self._allocate(int(node))
        pulls = self.routes.routes_of(ready)
        if self._kept is not None:
            pulls = pulls[self._kept[pulls]]
        self.transport.send(Kind.PULL, pulls, self.barrier_time[self.routes.query_node[pulls]])
        nothing_to_pull = ready[self._values_needed[ready] == 0]
        self.done_time[nothing_to_pull] = self.barrier_time[nothing_to_pull]

    def on_pull(self, batch: Deliveries) -> None:
        """Key node j: send the value to whoever pulls it."""
        self.transport.send(Kind.VALUE, batch.routes, batch.arrive)

    def on_value(self, batch: Deliveries) -> None:
        """Query node i: when the last value is in, add the shares up."""
        self.value_arrived[batch.routes] = batch.arrive
        ready = self._count_in(batch, self._values_in, self._values_needed, self.done_time)
        for node in ready:
            self._aggregate(int(node))

    def _count_in(self, batch: Deliveries, arrived: np.ndarray, needed: np.ndarray,
                  latest: np.ndarray) -> np.ndarray:
        """Count arrivals per query node; return the nodes whose last one just came in."""
        nodes = self.routes.query_node[batch.routes]
        counts = np.bincount(nodes, minlength=len(arrived))           # (G·L,)
        touched = np.flatnonzero(counts)
        arrived[touched] += counts[touched]
        np.fmax.at(latest, nodes, batch.arrive)
        return touched[arrived[touched] == needed[touched]]

    def _node(self, node: int) -> tuple[int, int, slice]:
        group, token = divmod(node, self.routes.n_queries)
        return group, token, slice(self.routes.indptr[node], self.routes.indptr[node + 1])

    def _gather(self, rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The rows of ``rows`` (one group's keys or values) for these key indices."""
        if len(keys) and keys[-1] - keys[0] == len(keys) - 1:
            return rows[keys[0]:keys[-1] + 1]                          # contiguous: a view
        return rows[keys]

    def _allocate(self, node: int) -> None:
        """Scores -> stable softmax -> shares (then dropout), for one query node."""
        problem = self.problem
        group, token, span = self._node(node)
        keys = self.routes.key_index[span]
        bias = None if problem.bias is None else problem.bias[group, token, keys]
        scores = match_scores(self._gather(problem.key[group], keys), problem.query[group, token],
                              problem.scale, bias)                     # (n_routes,)
        shares = routing_budget(scores)                                # (n_routes,)
        if self._kept is not None:
            shares *= self._kept[span] * problem.dtype.type(1.0 / (1.0 - problem.dropout_p))
        self.scores[span], self.shares[span] = scores, shares

    def _aggregate(self, node: int) -> None:
        """o_i = Σ_j w_ij v_j over the values node i pulled, in source order."""
        group, _, span = self._node(node)
        keys, shares = self.routes.key_index[span], self.shares[span]
        if self._kept is not None:
            kept = self._kept[span]
            keys, shares = keys[kept], shares[kept]
        self.output[node] = weighted_pull(shares, self._gather(self.problem.value[group], keys))
