"""The backward pass as reverse message passing along the forward pass's routes.

Given the upstream gradient dO (the output's shape), for every route j -> i that carried a
value forward::

    i --GRAD_OUTPUT dO_i--> j     j accumulates dV_j += w'_ij dO_i (w' the pulled share)
    i <--GRAD_SHARE dP_ij-- j     dP_ij = dO_i · v_j, the gradient of i's share for j
    i: softmax Jacobian           once every dP is in: dS_ij = w_ij (dP'_ij - Σ_k w_ik dP'_ik)
    i --GRAD_SCORE dS_ij--> j     for every route in the softmax; j: dK_j += s · dS_ij q_i
    i <--GRAD_KEY s·dS_ij·k_j-- j the key stays at j; i adds these up into dQ_i

A sink (``simulate(..., sinks=...)``) is a route with no key node: its logit is the head's,
known at the query node, so its gradient needs no message. With the Jacobian, node i adds
``-p_sink,i · Σ_k w_ik dP'_ik`` (its share of the budget times what the rest pulled), and
each head's sink gets the sum over its query nodes, in node order.

A loss that reads the log-sum-exp too (``run.backward(d_output, d_lse=...)``) adds no
message kind. ``∂lse_i / ∂s_ij = w_ij`` (the share before dropout, the sink in the
denominator), and query node i holds its shares and its ``d_lse_i`` from the start, so
its Jacobian becomes ``dS_ij = w_ij (dP'_ij - Σ_k w_ik dP'_ik + d_lse_i)`` and the
GRAD_SCORE messages carry that dS to the key nodes as before (the sink's term likewise:
``p_sink,i (d_lse_i - Σ_k w_ik dP'_ik)``). A node that pulled no value (every route
dropped) waits for no GRAD_SHARE: with ``d_lse_i != 0`` it sends its dS at time 0. A
node with no route passes its ``d_lse_i`` to its sink whole (its share is 1), or to
nothing without sinks.

Every sum is taken once per node over its routes in source order (like the forward pass),
so the gradients do not depend on the delivery schedule. Requests (GRAD_OUTPUT,
GRAD_SCORE) are retried on a lossy network like the forward ones; a gradient that still
cannot be delivered raises :class:`~routing_sim.DeliveryError`.

On a sparse run whose forward pass took the tiles, the handlers send the same messages at
the same times but leave the arithmetic to
:class:`~routing_sim.engines.fast.backward_tiles.TiledGradients`: each gradient for every
node at once, in products fixed by the route table, at the first handler that needs it. The nodes at
either end of a route lost forward (degrade) then redo their own sums with the per-node
arithmetic below, which exact mode and dense tables take throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import simpy
from numpy.typing import ArrayLike

from ...errors import DeliveryError, InvalidArgumentError
from ...inputs.mods import derivative
from ...network.conditions import Network
from ...network.deliveries import Deliveries
from ...network.messages import BACKWARD, Kind, payload_bytes
from ...network.transport import Transport
from ...network.wave_times import constant
from ...routes.restrictions import DENSE_LIMIT
from ...routes.route_set import batch_head
from ...trace.log import Trace
from ...trace.stats import Gradients, Stats
from ..memory import check_simulation, run_features
from ..state import ForwardState
from .backward_tiles import TiledGradients, key_major_order
from .barrier import gather, scores_of
from .nodes import TokenNodes

__all__ = ["BackwardNodes", "backward"]

class BackwardNodes(TokenNodes):
    """The state and handlers of every token node during the backward pass."""

    REQUESTS = (Kind.GRAD_OUTPUT, Kind.GRAD_SCORE)

    def __init__(self, forward: ForwardState, upstream: np.ndarray, transport: Transport,
                 lse_upstream: np.ndarray | None = None) -> None:
        super().__init__(forward.problem, forward.routes, transport)
        routes, problem = forward.routes, forward.problem
        groups, n_queries, n_keys, dim, value_dim = problem.shape
        self.forward, self.upstream = forward, upstream                 # (G·L, Ev) dO
        self.lse_upstream = lse_upstream                               # (G·L,) d_lse or None
        self.pulled = ~np.isnan(forward.value_time)                    # (R,) carried a value
        self.in_softmax = forward.dead == 0                            # (R,) had a share
        if forward.chosen is not None:
            self.in_softmax &= forward.chosen
        if forward.raw is not None:                # a route the score_mod removed (-inf)
            self.in_softmax &= ~np.isneginf(forward.scores)
        # A node that pulled nothing (every route dropped) has dS = w · d_lse: it sends no
        # dS unless its d_lse is nonzero, and then at the start (``idle``), as no dP comes.
        every_query = routes.routes_per_node()                         # (G·L,)
        pulls = every_query if self.pulled.all() else np.bincount(
            routes.query_node[self.pulled], minlength=routes.n_nodes)
        idle = (pulls == 0) & (every_query > 0)                        # (G·L,)
        if lse_upstream is not None:
            idle &= lse_upstream != 0
            silent = (pulls == 0) & ~idle                              # (G·L,) no dS at all
        else:
            silent, idle = idle, np.zeros_like(idle)
        if silent.any():
            self.in_softmax &= ~silent[routes.query_node]
        n_routes = len(routes)
        self.d_share = np.zeros(n_routes, problem.dtype)               # (R,) dP_ij
        self.d_score = np.zeros(n_routes, problem.dtype)               # (R,) dS_ij
        self.d_sink = np.zeros(routes.n_nodes, problem.dtype)          # (G·L,) d sink at i
        if lse_upstream is not None and forward.sinks is not None:     # no route: p_sink = 1
            self.d_sink[every_query == 0] = lse_upstream[every_query == 0]
        # With a score_mod, the key and query gradients go through its derivative at the
        # scaled score: dS_ij · mod'(raw_ij) (derivative() refuses a mod without one).
        self.slope = derivative(problem.score_mod)
        self.d_raw = self.d_score if self.slope is None else np.zeros(n_routes, problem.dtype)
        # First arrivals per route: kept only where copies and retries need them.
        first = (lambda: np.full(n_routes, np.nan)) if self._dedupe else (lambda: None)
        self.output_time, self.share_time = first(), first()           # GRAD_OUTPUT at j, ...
        self.score_time, self.key_time = first(), first()              # GRAD_SCORE at j, ...
        self.d_query = np.zeros((groups * n_queries, dim), problem.dtype)
        self.d_key = np.zeros((groups * n_keys, dim), problem.dtype)
        self.d_value = np.zeros((groups * n_keys, value_dim), problem.dtype)
        self.done_time = np.zeros(groups * n_queries)
        # The key nodes' view: routes sorted by (key node, query), with counts to expect.
        self.key_node = routes.key_index if groups == 1 else \
            routes.query_node // n_queries * n_keys + routes.key_index  # (R,) g·S + j
        self.by_key = key_major_order(self.key_node, groups * n_keys)  # (R,) route ids
        every_key = np.bincount(self.key_node, minlength=groups * n_keys)  # (G·S,)
        self.key_indptr = np.concatenate(([0], np.cumsum(every_key)))

        def count(mask: np.ndarray, nodes: np.ndarray, every: np.ndarray) -> np.ndarray:
            return every if mask.all() else np.bincount(nodes[mask], minlength=len(every))

        self._needed = {"shares": count(self.pulled, routes.query_node, every_query),
                        "keys": count(self.in_softmax, routes.query_node, every_query),
                        "outputs": count(self.pulled, self.key_node, every_key),
                        "scores": count(self.in_softmax, self.key_node, every_key)}
        self._every = {"shares": every_query, "keys": every_query, "outputs": every_key,
                       "scores": every_key}
        self._settled = {name: np.zeros_like(needed) for name, needed in self._needed.items()}
        self._latest = {name: np.full(len(needed), -np.inf)
                        for name, needed in self._needed.items()}
        self.handlers = {Kind.GRAD_OUTPUT: self.on_output, Kind.GRAD_SHARE: self.on_share,
                          Kind.GRAD_SCORE: self.on_score, Kind.GRAD_KEY: self.on_key}
        # The sparse fast path (backward_tiles.py) for tiled runs; the nodes with a route
        # lost forward (degrade) then redo their own sums per node, as without tiles.
        self.tiled = None if forward.tiles is None else TiledGradients(
            forward, upstream, self.by_key, self.key_indptr, self.slope)
        dead = np.flatnonzero(forward.dead)                            # (lost routes,)
        self.lost_queries = np.unique(routes.query_node[dead]).tolist()
        self.lost_keys = np.unique(self.key_node[dead]).tolist()
        self._computed: set[str] = set()                               # by the tiles
        # Idle nodes with a Jacobian to run: a route in their softmax, or a sink to feed.
        in_softmax = np.bincount(routes.query_node[self.in_softmax], minlength=routes.n_nodes)
        self.idle = np.flatnonzero(idle & ((in_softmax > 0) | (forward.sinks is not None)))

    def start(self) -> None:
        """At time 0 every query node sends dO_i to the tokens whose values it pulled, and
        a node that pulled nothing but has a d_lse sends its dS."""
        self.request(Kind.GRAD_OUTPUT, np.flatnonzero(self.pulled), 0.0, 0)
        if len(self.idle):
            self._latest["shares"][self.idle] = 0.0
            self._release_scores(self.idle)

    def on_output(self, batch: Deliveries) -> None:
        """Key node j: answer with dP_ij; once every dO is in, dV_j = Σ_i w'_ij dO_i."""
        self.answer(Kind.GRAD_SHARE, batch)
        routes, times = self.first_answers(batch, self.output_time)
        ready = self._count("outputs", self.key_node, routes, times)
        tiled = self.tiled
        whole = None if tiled is None or tiled.transposed is None else \
            partial(tiled.values, self.d_value)
        self._settle(ready, "values", whole, self._value_gradient, self.lost_keys)

    def on_share(self, batch: Deliveries) -> None:
        """Query node i: once every dP is in, apply the softmax Jacobian; send dS."""
        routes, times = self.first_answers(batch, self.share_time)
        ready = self._count("shares", self.routes.query_node, routes, times)
        if len(ready):
            self._release_scores(ready)

    def _release_scores(self, ready: np.ndarray) -> None:
        """Query nodes ``ready`` (every dP in, or none to wait for) apply the Jacobian and
        send dS along the routes of their softmaxes."""
        whole = None if self.tiled is None else partial(
            self.tiled.scores, self.d_share, self.d_score, self.d_raw, self.d_sink, self.pulled,
            self.in_softmax, self.lse_upstream)
        self._settle(ready, "scores", whole, self._jacobian, self.lost_queries)
        sends = self.routes.routes_of(ready)
        if not self.in_softmax.all():
            sends = sends[self.in_softmax[sends]]
        if not len(sends):
            return
        latest = self._latest["shares"]
        ready_at = latest[ready[0]] + self.processing if \
            latest[ready].min() == latest[ready].max() else \
            latest[self.routes.query_node[sends]] + self.processing   # one instant, or each
        self.request(Kind.GRAD_SCORE, sends, ready_at, 0)

    def on_score(self, batch: Deliveries) -> None:
        """Key node j: answer with s·dS_ij·k_j; once every dS is in, dK_j = s Σ_i dS_ij q_i."""
        self.answer(Kind.GRAD_KEY, batch)
        routes, times = self.first_answers(batch, self.score_time)
        ready = self._count("scores", self.key_node, routes, times)
        tiled = self.tiled
        whole = None if tiled is None or tiled.transposed is None else \
            partial(tiled.keys, self.d_key, self.d_raw)
        self._settle(ready, "keys", whole, self._key_gradient, self.lost_keys)

    def on_key(self, batch: Deliveries) -> None:
        """Query node i: once every s·dS_ij·k_j is in, dQ_i is their sum."""
        routes, times = self.first_answers(batch, self.key_time)
        ready = self._count("keys", self.routes.query_node, routes, times)
        self.done_time[ready] = self._latest["keys"][ready]
        whole = None if self.tiled is None else partial(self.tiled.queries, self.d_query,
                                                         self.d_raw)
        self._settle(ready, "queries", whole, self._query_gradient, self.lost_queries)

    def _settle(self, ready: np.ndarray, name: str, whole: Callable[[], None] | None,
                per_node: Callable[[int], None], lost: list[int]) -> None:
        """Nodes that just got every input compute their part: with the tiles (``whole``),
        every node at the first batch that has any, then the nodes at the ends of a lost
        route redo theirs per node; without, each ready node on its own."""
        if whole is None:
            for node in ready.tolist():
                per_node(node)
        elif len(ready) and name not in self._computed:
            self._computed.add(name)
            whole()                                                    # every node, once
            for node in lost:
                per_node(node)

    def _value_gradient(self, node: int) -> None:
        """dV_j = Σ_i w'_ij dO_i for one key node, over the routes that carried a value."""
        routes_in = self._key_routes(node, self.pulled)
        queries = self.routes.query_node[routes_in]
        self.d_value[node] = self.forward.shares[routes_in] @ self.upstream[queries]

    def _key_gradient(self, node: int) -> None:
        """dK_j = s Σ_i dS_ij q_i for one key node, over the routes of the softmaxes."""
        problem = self.problem
        routes_in = self._key_routes(node, self.in_softmax)
        queries = self.routes.query_node[routes_in]
        group = node // self.routes.n_keys
        self.d_key[node] = problem.scale * (
            self.d_raw[routes_in] @ problem.query[group, queries % self.routes.n_queries])

    def _query_gradient(self, node: int) -> None:
        """dQ_i = s Σ_j dS_ij k_j for one query node, over the routes of its softmax."""
        problem = self.problem
        group, _, span = self.forward.span(node)
        mine = self.in_softmax[span]
        keys = self.routes.key_index[span][mine]
        self.d_query[node] = problem.scale * (
            self.d_raw[span][mine] @ gather(problem.key[group], keys))

    def _jacobian(self, node: int) -> None:
        """dS for one query node: w ⊙ (dP' - Σ w dP'), over the routes of its softmax."""
        forward, problem = self.forward, self.problem
        group, _, span = forward.span(node)
        mine, pulled = self.in_softmax[span], self.pulled[span]
        keys = self.routes.key_index[span]
        d_share = np.zeros(len(keys), problem.dtype)
        d_share[pulled] = gather(problem.value[group], keys[pulled]) @ \
            self.upstream[node]                                        # dP_ij = v_j · dO_i
        self.d_share[span] = d_share
        weights = np.zeros(len(keys), problem.dtype)
        sink = None if forward.sinks is None else forward.sinks[node]
        weights[mine], sink_share = forward.kernels.budget(*scores_of(forward, span, mine),
                                                           sink)  # w (no dropout)
        if forward.kept is not None:
            d_share = d_share * forward.kept[span] * forward.dropout_scale
        through = weights @ d_share                                    # Σ_k w_ik dP'_ik
        if self.lse_upstream is not None:
            through -= self.lse_upstream[node]                         # Σ w dP' - d_lse
        self.d_score[span] = weights * (d_share - through)
        if sink_share is not None:
            self.d_sink[node] = -sink_share * through
        if self.slope is not None:
            routes = self.routes
            nodes = routes.query_node[span]
            batch, head = batch_head(nodes // routes.n_queries, problem.batch_shape)
            assert forward.raw is not None                             # kept for score_mod
            self.d_raw[span] = self.d_score[span] * self.slope(
                forward.raw[span], batch, head, nodes % routes.n_queries, keys)

    def _key_routes(self, node: int, mask: np.ndarray) -> np.ndarray:
        routes = self.by_key[self.key_indptr[node]:self.key_indptr[node + 1]]
        return routes[mask[routes]]

    def _count(self, name: str, nodes_of: np.ndarray, routes: np.ndarray, times: np.ndarray
               ) -> np.ndarray:
        """Count first arrivals per node (``nodes_of`` maps a route to its node); return
        the nodes whose last expected one came in."""
        settled, needed, latest = self._settled[name], self._needed[name], self._latest[name]
        nodes = None
        if len(routes) == len(self.routes):                            # every route once
            counts = self._every[name]
        else:
            nodes = nodes_of[routes]
            counts = np.bincount(nodes, minlength=len(settled))
        touched = np.flatnonzero(counts)
        settled[touched] += counts[touched]
        if constant(times) is not None or (len(times) and times.min() == times.max()):
            latest[touched] = np.fmax(latest[touched], times[0])      # one instant
        else:
            np.fmax.at(latest, nodes_of[routes] if nodes is None else nodes, times)
        return touched[settled[touched] == needed[touched]]

    def answer_times(self) -> dict[Kind, np.ndarray | None]:
        return {Kind.GRAD_OUTPUT: self.share_time, Kind.GRAD_SCORE: self.key_time}

    def give_up(self, kind: Kind, routes: np.ndarray, times: np.ndarray) -> None:
        """A gradient message never arrived: the pass fails (see :func:`backward`)."""
        self.dead[routes] = self.phase(kind)


def backward(forward: ForwardState, d_output: ArrayLike, network: Network, delivery: str,
             detail: str, d_lse: ArrayLike | None = None) -> Gradients:
    """Run the backward pass of a finished forward run (see :meth:`Run.backward`)."""
    problem, routes = forward.problem, forward.routes
    upstream = problem.upstream(d_output).reshape(-1, problem.shape[4])
    lse_upstream = problem.upstream_lse(d_lse)                         # (G·L,) or None
    _, _, _, dim, value_dim = problem.shape
    nbytes = {kind: payload_bytes(kind, problem.dtype.itemsize, dim, value_dim)
              for kind in BACKWARD}
    check_simulation(problem.shape, len(routes), trace=detail, itemsize=problem.dtype.itemsize,
                     features=run_features(problem, network, forward.top_k, delivery),
                     transmissions=(1 + network.duplicate) / (1 - network.loss), dense=False,
                     backward=True)
    log = Trace(detail, routes, nbytes)
    env = simpy.Environment()
    assert forward.route_latency is not None, "simulate records the forward route latency"
    transport = Transport(env, network, forward.route_latency, nbytes,
                          routes.endpoints, routes.crash_filter(network.crashes), log.record,
                          delivery)
    nodes = BackwardNodes(forward, upstream, transport, lse_upstream)
    nodes.start()
    env.process(transport.run())
    env.run()
    nodes.detach()
    dead = np.flatnonzero(nodes.dead)
    if dead.size:
        raise DeliveryError(f"{dead.size} gradient messages never delivered after "
                            f"{network.retries} retries; raise Network(retries=...)")
    context = None if forward.context is None else {**forward.context, "node_events": []}
    log.close({Kind.GRAD_SHARE: nodes.d_share, Kind.GRAD_SCORE: nodes.d_score}, None, context)
    per_kind = lambda counts: {kind.name: int(counts[kind]) for kind in BACKWARD}  # noqa: E731
    stats = Stats(messages=per_kind(log.counts),
                  bytes={kind.name: count for kind, count in log.bytes.items()},
                  makespan=float(nodes.done_time.max(initial=0.0)), events=transport.events,
                  delivery=transport.mode, routes=len(routes),
                  retransmitted=per_kind({k: nodes.retransmissions.get(k, 0) for k in BACKWARD}),
                  ignored=nodes.ignored)
    groups, n_queries, n_keys = problem.shape[:3]

    def score() -> np.ndarray:
        if groups * n_queries * n_keys > DENSE_LIMIT:
            raise InvalidArgumentError("grads.score() would be a dense "
                                       f"{(groups, n_queries, n_keys)} array, over "
                                       f"{DENSE_LIMIT:,} entries")
        dense = np.zeros((groups * n_queries, n_keys), problem.dtype)  # (G·L, S)
        dense[routes.query_node, routes.key_index] = nodes.d_score
        return problem.unflatten(dense.reshape(groups, n_queries, n_keys))

    return Gradients(
        query=problem.to_inputs(nodes.d_query.reshape(groups, -1, dim), "query"),
        key=problem.to_inputs(nodes.d_key.reshape(groups, -1, dim), "key"),
        value=problem.to_inputs(nodes.d_value.reshape(groups, -1, value_dim), "value"),
        stats=stats, trace=log, _score=score,
        sinks=None if problem.sinks is None else problem.to_sinks(
            nodes.d_sink.reshape(groups, n_queries).sum(axis=1)))
