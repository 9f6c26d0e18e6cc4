"""The token node: what it does when each kind of message arrives.

Two-phase (the default), for every route ``j -> i``::

    i --QUERY q_i--> j        i asks: "this is what I am looking for"
    i <--SCORE s_ij-- j       j answers with how well its key matches (k_j never leaves j)
    i: barrier, softmax       once every score is in, i splits its budget: shares w_i·
    i --PULL w_ij--> j        i asks for the value, telling j its share
    i <--VALUE v_j-- j        j sends its payload
    i: weighted pull          once every value is in: o_i = Σ_j w_ij v_j, in source order

Online (``softmax="online"``): no barrier. A SCORE is answered at once with a PULL, and each
arriving (score, value) pair updates i's running max m, normaliser l and accumulator o,
rescaling by exp(m_old - m_new): the FlashAttention algebra. Output o / l.

Requests (QUERY, PULL) are retried like RPCs when the network can lose them: a sender
that has no answer ``timeout`` after sending resends, up to ``retries`` times. Receivers
are idempotent: a key node answers each request id once; a query node counts the first
answer per route and ignores copies. Handlers take whole batches of deliveries and act
on each message at its own arrival time. A node's arithmetic runs once per node, over its
route list in source order (:mod:`routing_sim.numerics`), so no schedule changes a bit of
the two-phase result.
"""

from __future__ import annotations

import numpy as np

from .inputs import Problem
from .messages import Kind
from .errors import NumericalError
from .numerics import (Kernels, exact_pull, exact_shares, exact_unnormalised, routing_budget,
                       scale_scores, weighted_pull)
from .routes import RouteTable
from .transport import Deliveries, Timers, Transport, constant, shifted

__all__ = ["OnlineNodes", "TokenNodes", "TwoPhaseNodes", "top_routes"]

SCORE_PHASE, VALUE_PHASE = 1, 2


class TokenNodes:
    """What every protocol shares: requests retried like RPCs, idempotent receivers, and
    counting arrivals per query node. Subclasses name their request kinds (each answered
    by the kind that follows it) and say what happens when a route is given up."""

    REQUESTS: tuple[Kind, ...] = ()

    def __init__(self, problem: Problem, routes: RouteTable, transport: Transport) -> None:
        self.problem, self.routes, self.transport = problem, routes, transport
        network = transport.network
        n_routes = len(routes)
        self.dead = np.zeros(n_routes, dtype=np.int8)                  # (R,) phase it died in
        self.retransmissions = {kind: 0 for kind in self.REQUESTS}
        self.ignored = 0                                               # copies and late answers
        self._retrying = network.faulty
        self._retries = network.retries
        # Copies and repeated answers exist only with duplication or retries.
        self._dedupe = network.duplicate > 0 or network.faulty
        self._answered = {kind: np.zeros(n_routes if self._dedupe else 0, np.int64)
                          for kind in self.REQUESTS}                   # bit a: attempt a answered
        self._dead_routes = np.zeros(routes.n_nodes, dtype=np.int64)   # (G·L,) per node
        self._processing = network.processing
        transport.on_deliver, transport.on_timer = self.deliver, self.on_timer

    def deliver(self, batch: Deliveries) -> None:
        self._handlers[batch.kind](batch)

    def on_timer(self, timers: Timers) -> None:
        """A request's timer fired: resend if its answer is not in, or give the route up."""
        answer_time = self._answer_times()[timers.kind]
        waiting = ~(answer_time[timers.routes] <= timers.due) & (self.dead[timers.routes] == 0)
        routes, attempts, due = (x[waiting] for x in (timers.routes, timers.attempts, timers.due))
        again = attempts < self._retries
        self.retransmissions[timers.kind] += int(again.sum())
        self._request(timers.kind, routes[again], due[again], attempts[again] + 1)
        lost, when = routes[~again], due[~again]
        np.add.at(self._dead_routes, self.routes.query_node[lost], 1)
        self._give_up(timers.kind, lost, when)

    def _answer(self, kind: Kind, batch: Deliveries) -> None:
        """Key node j: reply once to every request id it has not answered before."""
        if not self._dedupe:
            self.transport.send(kind, batch.routes, shifted(batch.arrive, self._processing), 0)
            return
        fresh = self._fresh_requests(batch)
        self.transport.send(kind, batch.routes[fresh], batch.arrive[fresh] + self._processing,
                            batch.attempt[fresh])

    def _request(self, kind: Kind, routes: np.ndarray, ready: np.ndarray, attempt) -> None:
        self.transport.send(kind, routes, ready, attempt)
        if self._retrying:
            self.transport.arm(kind, routes, np.broadcast_to(np.asarray(attempt, np.int64),
                                                             routes.shape), ready)

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

    def _first_answers(self, batch: Deliveries, first_time: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Query-node idempotence: the first answer per live route counts, copies do not."""
        if not self._dedupe:
            if first_time is not None:
                one = constant(batch.arrive)
                if one is not None and len(batch) == len(first_time):  # every route, in order
                    first_time[:] = one
                else:
                    first_time[batch.routes] = batch.arrive
            return batch.routes, batch.arrive
        new = np.isnan(first_time[batch.routes]) & (self.dead[batch.routes] == 0)
        _, first = np.unique(batch.routes, return_index=True)
        once = np.zeros(len(batch), dtype=bool)
        once[first] = True
        new &= once
        self.ignored += len(batch) - int(new.sum())
        routes, times = batch.routes[new], batch.arrive[new]
        first_time[routes] = times
        return routes, times

    def _settle(self, routes: np.ndarray, times: np.ndarray, settled: np.ndarray,
                needed: np.ndarray, latest: np.ndarray) -> np.ndarray:
        """Count settled routes per query node; return nodes whose last one just settled."""
        if len(routes) == len(self.routes):   # every route once (a whole wave)
            counts, nodes = self._needed, None
        else:
            nodes = self.routes.query_node[routes]
            counts = np.bincount(nodes, minlength=len(settled))        # (G·L,)
        touched = np.flatnonzero(counts)
        settled[touched] += counts[touched]
        one = constant(times)
        if one is not None or (len(times) and times.min() == times.max()):  # one instant
            latest[touched] = np.fmax(latest[touched], times[0])
        else:
            np.fmax.at(latest, self.routes.query_node[routes] if nodes is None else nodes, times)
        return touched[settled[touched] == needed[touched]]

    def _answer_times(self) -> dict[Kind, np.ndarray]:
        raise NotImplementedError

    def _give_up(self, kind: Kind, routes: np.ndarray, times: np.ndarray) -> None:
        raise NotImplementedError

class TwoPhaseNodes(TokenNodes):
    """The state and handlers of every token node in a run, vectorised over nodes.

    Per route: the score and share once known, when its SCORE and VALUE first arrived,
    and whether it died (no answer after every retry). Per query node: how many routes
    are settled in each phase, the barrier time and the time its output was complete.
    """

    REQUESTS = (Kind.QUERY, Kind.PULL)

    def __init__(self, problem: Problem, routes: RouteTable, transport: Transport,
                 kernels: Kernels, on_missing: str = "strict", top_k: int | None = None) -> None:
        super().__init__(problem, routes, transport)
        self.kernels = kernels
        self.on_missing = on_missing
        n_routes, n_nodes, dtype = len(routes), routes.n_nodes, problem.dtype
        score_type = np.float64 if kernels.exact else dtype
        self.scores = np.zeros(n_routes, dtype=score_type)             # (R,) s_ij (high part)
        self.score_low = np.zeros(n_routes) if kernels.exact else None  # (R,) exact: low part
        if kernels.exact:        # exact mode keeps e = exp(s - m) per route and l per node
            self._e_high, self._e_low = np.zeros(n_routes), np.zeros(n_routes)
            self._l_high, self._l_low = np.zeros(routes.n_nodes), np.zeros(routes.n_nodes)
        self.shares = np.zeros(n_routes, dtype=dtype)                  # (R,) w_ij after dropout
        faulty = transport.network.faulty
        # First SCORE arrival per route: only retries and copies need it (idempotence).
        self.score_time = np.full(n_routes, np.nan) if faulty or \
            transport.network.duplicate > 0 else None                 # (R,)
        self.value_time = np.full(n_routes, np.nan)                    # (R,) first VALUE in
        self.would_have = np.full(n_routes, np.nan) if faulty else None  # (R,) dead's share
        self.output = np.zeros((n_nodes, problem.shape[4]), dtype=dtype)  # (G·L, Ev)
        self.top_k = top_k             # hard routing: pull only the top_k scores
        self.chosen = np.ones(n_routes, dtype=bool) if top_k else None  # (R,) routes kept
        self.barrier_time = np.full(n_nodes, -np.inf)                  # (G·L,)
        self.done_time = np.full(n_nodes, np.nan)                      # (G·L,)
        self.failed = np.zeros(n_nodes, dtype=bool)                    # strict: gave up
        self._needed = routes.routes_per_node()                        # (G·L,)
        self._kept = None if problem.keep is None else problem.keep.reshape(
            n_nodes, -1)[routes.query_node, routes.key_index]          # (R,) bool
        self._values_needed = self._needed if self._kept is None else np.bincount(
            routes.query_node[self._kept], minlength=n_nodes)
        self._scores_settled = np.zeros(n_nodes, dtype=np.int64)
        self._values_settled = np.zeros(n_nodes, dtype=np.int64)
        self._dropout_scale = problem.dtype.type(1.0 / (1.0 - problem.dropout_p))
        self._handlers = {Kind.QUERY: self.on_query, Kind.SCORE: self.on_score,
                          Kind.PULL: self.on_pull, Kind.VALUE: self.on_value}

    # ----------------------------------------------------------------- protocol

    def start(self) -> None:
        """At time 0 every query node sends a QUERY on each of its routes."""
        every_route = np.arange(len(self.routes), dtype=self.routes.index_type)
        self._request(Kind.QUERY, every_route, 0.0, 0)

    def on_query(self, batch: Deliveries) -> None:
        """Key node j: answer each query with its match score, as soon as it arrives."""
        self._answer(Kind.SCORE, batch)

    def on_score(self, batch: Deliveries) -> None:
        """Query node i: when the last score is in, allocate the budget and send PULLs."""
        routes, times = self._first_answers(batch, self.score_time)
        self._settle_scores(routes, times)

    def on_pull(self, batch: Deliveries) -> None:
        """Key node j: send the value to whoever pulls it."""
        self._answer(Kind.VALUE, batch)

    def on_value(self, batch: Deliveries) -> None:
        """Query node i: when the last value is in, add the shares up."""
        routes, times = self._first_answers(batch, self.value_time)
        self._settle_values(routes, times)

    def _answer_times(self) -> dict[Kind, np.ndarray]:
        return {Kind.QUERY: self.score_time, Kind.PULL: self.value_time}

    def _give_up(self, kind: Kind, routes: np.ndarray, times: np.ndarray) -> None:
        """No answer after every retry: the route is dead; its node settles without it."""
        if kind == Kind.QUERY:
            self.dead[routes] = SCORE_PHASE
            self._settle_scores(routes, times)
        else:
            self.dead[routes] = VALUE_PHASE
            self._settle_values(routes, times)

    # ----------------------------------------------------------------- bookkeeping

    def _settle_scores(self, routes: np.ndarray, times: np.ndarray) -> None:
        ready = self._settle(routes, times, self._scores_settled, self._needed,
                             self.barrier_time)
        if not len(ready):
            return
        whole = ready[self._dead_routes[ready] == 0]
        pulls = [self._allocate_whole(whole)] if len(whole) else []
        pulls += [self._allocate(int(node)) for node in ready[self._dead_routes[ready] > 0]]
        pulls = np.concatenate(pulls) if pulls else np.zeros(0, np.int64)
        barrier = self.barrier_time[ready]
        if barrier.min() == barrier.max():                             # one instant
            ready_at = barrier[0] + self._processing
        else:
            ready_at = self.barrier_time[self.routes.query_node[pulls]] + self._processing
        self._request(Kind.PULL, pulls, ready_at, 0)
        no_values = ready[(self._values_needed[ready] == 0) & ~self.failed[ready]]
        self.done_time[no_values] = self.barrier_time[no_values] + self._processing

    def _settle_values(self, routes: np.ndarray, times: np.ndarray) -> None:
        ready = self._settle(routes, times, self._values_settled, self._values_needed,
                             self.done_time)
        if self.kernels.exact:
            for node in ready:
                self._aggregate(int(node))
            return
        whole = ready[self._dead_routes[ready] == 0]
        self._pull_whole(whole)
        for node in ready[self._dead_routes[ready] > 0]:
            self._aggregate(int(node))

    # ----------------------------------------------------------------- arithmetic

    def _allocate_whole(self, nodes: np.ndarray) -> np.ndarray:
        """Barrier passed for nodes that lost no route: scores, then shares. Returns PULLs.

        Each node's scores are one product over its own keys; the softmax then runs on
        rows of equal length stacked together, which computes each row exactly as alone.
        """
        if self.kernels.exact and self.top_k:
            return np.concatenate([self._allocate(int(node)) for node in nodes])
        routes, problem = self.routes, self.problem
        indptr, scores = routes.indptr, self.scores
        n_queries, n_keys = routes.n_queries, routes.n_keys
        if self.kernels.exact:
            for node in nodes.tolist():
                self._node_scores(node)
        else:
            with np.errstate(over="ignore", invalid="ignore"):    # overflow reported below
                for node in nodes.tolist():                            # one product per node
                    start, stop = indptr[node], indptr[node + 1]
                    group, token = divmod(node, n_queries)
                    keys = problem.key[group] if stop - start == n_keys else \
                        self._gather(problem.key[group], routes.key_index[start:stop])
                    scores[start:stop] = keys @ problem.query[group, token]
        for count in np.unique(self._needed[nodes]).tolist():
            chosen = nodes[self._needed[nodes] == count]
            span = self._routes_block(chosen)
            block = scores[span].reshape(len(chosen), count)           # (nodes, routes)
            if self.kernels.exact:
                if not isinstance(span, slice):          # scattered nodes: one at a time
                    for node in chosen.tolist():
                        _, _, own = self._node(node)
                        self.shares[own] = self._budget(node, np.ones(count, dtype=bool))
                    continue
                low = self.score_low[span].reshape(block.shape)
                shares = self._exact_shares(chosen, span, slice(None),
                                            exact_unnormalised(block, low), True)
                if self._kept is not None:
                    shares *= self._kept[span].reshape(shares.shape) * self._dropout_scale
                self.shares[span] = shares.reshape(-1)
                continue
            bias = None if problem.bias is None else problem.bias.reshape(
                -1, n_keys)[routes.query_node[span], routes.key_index[span]].reshape(block.shape)
            block = scale_scores(block, problem.scale, bias)
            scores[span] = block.reshape(-1)
            if not np.isfinite(block).all():
                raise NumericalError(f"a score overflowed to {block[~np.isfinite(block)][0]}; "
                                     "scale the inputs down")
            if self.top_k:
                pick = top_routes(block, self.top_k)
                self.chosen[span] = pick.reshape(-1)
                block = np.where(pick, block, -np.inf)
            shares = self.kernels.budget(block, None)
            if self._kept is not None:
                shares *= self._kept[span].reshape(shares.shape) * self._dropout_scale
            self.shares[span] = shares.reshape(-1)
        pulls = routes.routes_of(nodes)
        if self.top_k:
            pulls = pulls[self.chosen[pulls]]
        if self._kept is not None:
            pulls = pulls[self._kept[pulls]]
        if self.top_k or self._kept is not None:
            self._values_needed[nodes] = np.bincount(routes.query_node[pulls],
                                                     minlength=routes.n_nodes)[nodes]
        return pulls

    def _routes_block(self, nodes: np.ndarray):
        """The route ids of these nodes: a slice when they are consecutive, else an array."""
        if nodes[-1] - nodes[0] == len(nodes) - 1:
            return slice(self.routes.indptr[nodes[0]], self.routes.indptr[nodes[-1] + 1])
        return self.routes.routes_of(nodes)

    def _pull_whole(self, nodes: np.ndarray) -> None:
        """o_i = Σ_j w_ij v_j for nodes whose values all came: one product per node."""
        routes, value, shares = self.routes, self.problem.value, self.shares
        indptr, n_queries, n_keys = routes.indptr, routes.n_queries, routes.n_keys
        for node in nodes.tolist():
            start, stop = indptr[node], indptr[node + 1]
            weights = shares[start:stop]
            if self._kept is None and stop - start == n_keys:         # every key: no gather
                self.output[node] = weighted_pull(weights, value[node // n_queries])
                continue
            pulled = routes.key_index[start:stop]
            if self._kept is not None:
                kept = self._kept[start:stop]
                pulled, weights = pulled[kept], weights[kept]
            self.output[node] = weighted_pull(weights,
                                              self._gather(value[node // n_queries], pulled))
        self.done_time[nodes] += self._processing

    def _node(self, node: int) -> tuple[int, int, slice]:
        group, token = divmod(node, self.routes.n_queries)
        return group, token, slice(self.routes.indptr[node], self.routes.indptr[node + 1])

    def _gather(self, rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The rows of ``rows`` (one group's keys or values) for these key indices."""
        if len(keys) and keys[-1] - keys[0] == len(keys) - 1:
            return rows[keys[0]:keys[-1] + 1]                          # contiguous: a view
        return rows[keys]

    def _node_scores(self, node: int) -> None:
        """Every score of one query node, in source order (the key nodes' answers)."""
        problem = self.problem
        group, token, span = self._node(node)
        keys = self.routes.key_index[span]
        bias = None if problem.bias is None else problem.bias[group, token, keys]
        high, low = self.kernels.scores(self._gather(problem.key[group], keys),
                                        problem.query[group, token], problem.scale, bias)
        self.scores[span] = high
        if low is not None:
            self.score_low[span] = low

    def _scores_of(self, span: slice, routes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(high, low) scores of some of a node's routes (a mask over its span)."""
        low = None if self.score_low is None else self.score_low[span][routes]
        return self.scores[span][routes], low

    def _budget(self, node: int, alive: np.ndarray, remember: bool = True) -> np.ndarray:
        """Shares (after dropout) of a node's live routes; 0 for the dead ones.

        With hard routing only the ``top_k`` best live routes get a share. ``remember``
        keeps what the pull will need (the chosen routes; exact mode's e and l).
        """
        _, _, span = self._node(node)
        shares = np.zeros(span.stop - span.start, dtype=self.problem.dtype)
        if self.top_k and alive.any():
            pick = np.zeros_like(alive)
            pick[np.flatnonzero(alive)[top_routes(self.scores[span][alive][None],
                                                  self.top_k)[0]]] = True
            if remember:
                self.chosen[span] = pick
            alive = pick
        if alive.any():
            if self.kernels.exact:
                unnormalised = exact_unnormalised(*self._scores_of(span, alive))
                shares[alive] = self._exact_shares(node, span, alive, unnormalised, remember)
            else:
                shares[alive] = routing_budget(self.scores[span][alive])
        if self._kept is not None:
            shares *= self._kept[span] * self._dropout_scale
        return shares

    def _exact_shares(self, nodes, span, routes, unnormalised, remember: bool) -> np.ndarray:
        """Exact mode: shares e / l, rounded once; keep e and l for the weighted pull."""
        e_high, e_low, l_high, l_low = unnormalised
        if remember:
            self._e_high[span][routes] = e_high.reshape(-1)
            self._e_low[span][routes] = e_low.reshape(-1)
            self._l_high[nodes], self._l_low[nodes] = l_high, l_low
        return exact_shares(e_high, e_low, l_high, l_low)

    def _allocate(self, node: int) -> np.ndarray:
        """Barrier passed: scores -> shares. Returns the routes to PULL on."""
        _, _, span = self._node(node)
        self._node_scores(node)
        alive = self.dead[span] == 0
        if not alive.all():
            self._note_would_have(node)
            if self.on_missing == "strict":
                self.failed[node] = True
                return np.zeros(0, np.int64)
        self.shares[span] = self._budget(node, alive)
        pull = alive if self.chosen is None else alive & self.chosen[span]
        pull = pull if self._kept is None else pull & self._kept[span]
        self._values_needed[node] = int(pull.sum())
        return np.flatnonzero(pull) + span.start

    def _note_would_have(self, node: int) -> None:
        """The shares a node's dead routes would have had had every answer come in."""
        _, _, span = self._node(node)
        full = self._budget(node, np.ones(span.stop - span.start, dtype=bool), remember=False)
        lost = self.dead[span] != 0
        self.would_have[span][lost] = full[lost]

    def _aggregate(self, node: int) -> None:
        """o_i = Σ_j w_ij v_j over the values node i pulled, in source order."""
        group, _, span = self._node(node)
        if (self.dead[span] == VALUE_PHASE).any():
            self._note_would_have(node)
            if self.on_missing == "strict":
                self.failed[node] = True
                self.done_time[node] = np.nan
                return
            self.shares[span] = self._budget(node, self.dead[span] == 0)
        pulled = ~np.isnan(self.value_time[span])
        values = self._gather(self.problem.value[group], self.routes.key_index[span][pulled])
        if self.kernels.exact:
            output = exact_pull(self._e_high[span][pulled], self._e_low[span][pulled],
                                self._l_high[node], self._l_low[node], values)
            if self._kept is not None:
                output = output * self._dropout_scale
        else:
            output = weighted_pull(self.shares[span][pulled], values)
        self.output[node] = output
        self.done_time[node] += self._processing


def top_routes(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of a bool mask: each row's ``k`` highest scores (ties: lower source first).

    Examples
    --------
    >>> top_routes(np.array([[0.1, 0.9, 0.9, 0.3]]), 2).astype(int)
    array([[0, 1, 1, 0]])
    """
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]       # (rows, k)
    pick = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(pick, order, True, axis=-1)
    return pick


class OnlineNodes(TwoPhaseNodes):
    """Streaming softmax: no barrier; each (score, value) pair updates (m, l, o) on arrival.

    Pair updates of one node are applied in arrival order (ties by message id) at the end
    of each delivery step, so the trace's ``rescale`` column holds, for each VALUE, the
    factor exp(m_old - m_new) its arrival applied to the node's state.
    """

    def __init__(self, *args, keep_stream: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        n_nodes, dtype = self.routes.n_nodes, self.problem.dtype
        self.running_max = np.full(n_nodes, -np.inf, dtype=dtype)     # (G·L,) m
        self.normaliser = np.zeros(n_nodes, dtype=dtype)               # (G·L,) l
        self.accumulator = np.zeros_like(self.output)                  # (G·L, Ev) o
        self.rescale = np.full(len(self.routes), np.nan)               # (R,) factor applied
        self.stream: list[tuple[float, int, np.ndarray]] | None = [] if keep_stream else None
        self._scored = np.zeros(n_nodes, dtype=bool)
        self._finished_at = np.full(n_nodes, np.nan)
        self._updates: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._touched: list[np.ndarray] = []
        self.transport.on_step_end = self.apply_updates

    def _settle_scores(self, routes: np.ndarray, times: np.ndarray) -> None:
        """No barrier: PULL each kept route at once; a dropped route updates l alone."""
        for node in np.unique(self.routes.query_node[routes]):
            if not self._scored[node]:
                self._node_scores(int(node))
                self._scored[node] = True
        alive = self.dead[routes] == 0
        kept = alive if self._kept is None else alive & self._kept[routes]
        self._request(Kind.PULL, routes[kept], times[kept] + self._processing, 0)
        dropped = alive & ~kept
        self._updates.append((routes[dropped], times[dropped], np.zeros(int(dropped.sum()), bool)))
        self._settle(routes, times, self._scores_settled, self._needed, self.barrier_time)
        self._settle(routes[~kept], times[~kept], self._values_settled, self._needed,
                     self.done_time)
        self._touched.append(self.routes.query_node[routes])

    def _settle_values(self, routes: np.ndarray, times: np.ndarray) -> None:
        alive = self.dead[routes] == 0
        self._updates.append((routes[alive], times[alive], np.ones(int(alive.sum()), bool)))
        self._settle(routes, times, self._values_settled, self._needed, self.done_time)
        self._touched.append(self.routes.query_node[routes])

    def apply_updates(self) -> None:
        """Apply this step's pair updates, node by node in arrival order, vectorised over nodes."""
        touched = np.unique(np.concatenate(self._touched)) if self._touched else np.zeros(0, int)
        self._touched = []
        if not self._updates:
            self._finish(touched)
            return
        routes, times, has_value = (np.concatenate(part) for part in zip(*self._updates))
        self._updates = []
        nodes = self.routes.query_node[routes]
        order = np.lexsort((routes, times, nodes))
        routes, times, has_value, nodes = routes[order], times[order], has_value[order], \
            nodes[order]
        starts = np.r_[0, np.flatnonzero(np.diff(nodes)) + 1]
        rank = np.arange(len(nodes)) - np.repeat(starts, np.diff(np.r_[starts, len(nodes)]))
        value, groups = self.problem.value, self.routes.group(routes)
        for step in range(int(rank.max(initial=-1)) + 1):
            at = rank == step
            node, route = nodes[at], routes[at]
            score = self.scores[route]
            old_max = self.running_max[node]
            new_max = np.maximum(old_max, score)
            factor = np.exp(old_max - new_max)                          # rescale of (l, o)
            weight = np.exp(score - new_max)
            self.normaliser[node] = factor * self.normaliser[node] + weight
            pulled = weight * has_value[at]
            self.accumulator[node] = (factor[:, None] * self.accumulator[node]
                                      + pulled[:, None] * value[groups[at],
                                                                self.routes.key_index[route]])
            self.running_max[node] = new_max
            self.rescale[route] = factor
            if self.stream is not None:
                for u, t in zip(node.tolist(), times[at].tolist()):
                    self.stream.append((t, u, self.accumulator[u] / self.normaliser[u]))
        self._finish(touched)

    def _finish(self, nodes: np.ndarray) -> None:
        """Nodes with every route settled: output o / l, and the shares for the tables."""
        done = nodes[(self._values_settled[nodes] == self._needed[nodes])
                     & np.isnan(self._finished_at[nodes])]
        for node in done.tolist():
            _, _, span = self._node(node)
            alive = self.dead[span] == 0
            if not alive.all():
                self._note_would_have(node)
                if self.on_missing == "strict":
                    self.failed[node] = True
                    self.done_time[node] = np.nan
                    self._finished_at[node] = -1.0
                    continue
            if alive.any():
                self.output[node] = self.accumulator[node] / self.normaliser[node]
                if self._kept is not None:
                    self.output[node] *= self._dropout_scale
            self.shares[span] = self._budget(node, alive)
            self.done_time[node] += self._processing
            self._finished_at[node] = self.done_time[node]
