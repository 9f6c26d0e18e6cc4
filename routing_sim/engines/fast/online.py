"""Streaming softmax (``softmax="online"``): no barrier, one update per arriving pair.

A SCORE is answered at once with a PULL, and each arriving (score, value) pair updates
the query node's running max m, normaliser l and accumulator o, rescaling by
exp(m_old - m_new): the FlashAttention algebra. The output is o / l and the row's
log-sum-exp m + log l. Unlike the two-phase result, their last bits may depend on arrival
order. A sink is known at the start: the state begins as (m, l, o) = (sink, 1, 0), a pair
with no value.
"""

from __future__ import annotations

import numpy as np

from ...network.messages import Kind
from ...network.transport import Transport
from ...numerics.kernels import value_shift
from ..setup import Setup
from .barrier import budget, node_scores, note_would_have, tiled_shares
from .two_phase import ForwardNodes, settle

__all__ = ["OnlineNodes"]


class OnlineNodes(ForwardNodes):
    """Streaming softmax: no barrier; each (score, value) pair updates (m, l, o) on arrival.

    Pair updates of one node are applied in arrival order (ties by message id) at the end
    of each delivery step, so the trace's ``rescale`` column holds, for each VALUE, the
    factor exp(m_old - m_new) its arrival applied to the node's state.
    """

    def __init__(self, setup: Setup, transport: Transport) -> None:
        super().__init__(setup, transport)
        routes, keep_stream = setup.routes, setup.keep_stream
        n_nodes, dtype = routes.n_nodes, setup.problem.dtype
        self.running_max = np.full(n_nodes, -np.inf, dtype=dtype)     # (G·L,) m
        self.normaliser = np.zeros(n_nodes, dtype=dtype)               # (G·L,) l
        if self.state.sinks is not None:       # the sink is in before any pair: exp(0) = 1
            self.running_max[:] = self.state.sinks
            self.normaliser[:] = 1
        self.accumulator = np.zeros_like(self.state.output)            # (G·L, Ev) o · 2^-shift
        self.shift = np.zeros(n_nodes, dtype=np.int64)                 # (G·L,) exponent of o
        self.value_shift = value_shift(self.problem.value)              # (G, S) per value row
        self.rescale = np.full(len(routes), np.nan)                    # (R,) factor applied
        self.stream: list[tuple[float, int, np.ndarray]] | None = [] if keep_stream else None
        self._scored = np.zeros(n_nodes, dtype=bool)
        self._finished_at = np.full(n_nodes, np.nan)
        self._updates: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._touched: list[np.ndarray] = []
        transport.on_step_end = self.apply_updates
        # Pair updates wait until nothing earlier can still arrive (Transport.horizon), so
        # they apply in arrival order however the transport groups deliveries. Ties at one
        # time keep per-instant order only if no message takes zero time: a transit is
        # positive, or jittered (zero with probability 2^-53).
        self._held: list[np.ndarray] = [np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)]
        transport.order_free = transport.min_delay > 0 or transport.network.jitter > 0

    def _settle_scores(self, routes: np.ndarray, times: np.ndarray) -> None:
        """No barrier: PULL each kept route at once; a dropped route updates l alone.

        On a sparse run's tiles, or a full run's row blocks, every score (and its share, for
        the routing tables) is computed at the first SCORE, as in two-phase: fixed products,
        any schedule."""
        state = self.state
        if state.fixed_blocks:
            tiled_shares(state)
        else:
            for node in np.unique(self.routes.query_node[routes]):
                if not self._scored[node]:
                    node_scores(state, int(node))
                    self._scored[node] = True
        alive = self.dead[routes] == 0
        if state.raw is not None:        # a route the score_mod removed (-inf): no budget,
            alive &= ~np.isneginf(state.scores[routes])        # no PULL, no (m, l) update
        kept = alive if state.kept is None else alive & state.kept[routes]
        self.request(Kind.PULL, routes[kept], times[kept] + self.processing, 0)
        dropped = alive & ~kept
        self._updates.append((routes[dropped], times[dropped], np.zeros(int(dropped.sum()), bool)))
        settle(self.routes, routes, times, self._scores_settled, state.needed,
               state.barrier_time)
        settle(self.routes, routes[~kept], times[~kept], self._values_settled, state.needed,
               state.done_time)
        self._touched.append(self.routes.query_node[routes])

    def _settle_values(self, routes: np.ndarray, times: np.ndarray) -> None:
        """Queue each live (score, value) pair's update for the end of the step."""
        alive = self.dead[routes] == 0
        self._updates.append((routes[alive], times[alive], np.ones(int(alive.sum()), bool)))
        settle(self.routes, routes, times, self._values_settled, self.state.needed,
               self.state.done_time)
        self._touched.append(self.routes.query_node[routes])

    def apply_updates(self) -> None:
        """Apply the pair updates no later arrival can precede, node by node in arrival
        order, vectorised over nodes; finish nodes with every route settled and applied."""
        touched = np.unique(np.concatenate(self._touched)) if self._touched else np.zeros(0, int)
        self._touched = []
        routes, times, has_value = (np.concatenate(part) for part in zip(self._held,
                                                                         *self._updates))
        self._updates = []
        due = times < self.transport.horizon()
        self._held = [routes[~due], times[~due], has_value[~due]]
        routes, times, has_value = routes[due], times[due], has_value[due]
        waiting = np.unique(self.routes.query_node[self._held[0]])
        touched = np.setdiff1d(np.union1d(touched, self.routes.query_node[routes]), waiting)
        if not len(routes):
            self._finish(touched)
            return
        nodes = self.routes.query_node[routes]
        order = np.lexsort((routes, times, nodes))
        routes, times, has_value, nodes = routes[order], times[order], has_value[order], \
            nodes[order]
        starts = np.r_[0, np.flatnonzero(np.diff(nodes)) + 1]
        rank = np.arange(len(nodes)) - np.repeat(starts, np.diff(np.r_[starts, len(nodes)]))
        # Step k updates every node's k-th pair: one slice per step, nodes ascending in it.
        by_step = np.argsort(rank, kind="stable")
        routes, times, has_value, nodes = routes[by_step], times[by_step], \
            has_value[by_step], nodes[by_step]
        bounds = np.searchsorted(rank[by_step], np.arange(int(rank.max(initial=-1)) + 2))
        value, groups, scores = self.problem.value, self.routes.group(routes), self.state.scores
        for step in range(len(bounds) - 1):
            at = slice(bounds[step], bounds[step + 1])
            node, route = nodes[at], routes[at]
            score = scores[route]
            old_max = self.running_max[node]
            new_max = np.maximum(old_max, score)
            factor = np.exp(old_max - new_max)                          # rescale of (l, o)
            weight = np.exp(score - new_max)
            self.normaliser[node] = factor * self.normaliser[node] + weight
            pulled = weight * has_value[at]
            key = groups[at], self.routes.key_index[route]
            pair_value = value[key]                                      # (n, Ev)
            shift = np.maximum(self.shift[node], self.value_shift[key])  # (n,)
            # Consecutive nodes (a window's steps): update the rows in place, no gather.
            rows = slice(node[0], node[-1] + 1) if node[-1] - node[0] == len(node) - 1 \
                else node
            kept = self.accumulator[rows]                # (n, Ev): a view for a slice
            if shift.any():                     # values near the largest float: scale exactly
                kept = np.ldexp(kept, (self.shift[node] - shift)[:, None])
                pair_value = np.ldexp(pair_value, -shift[:, None])
            kept *= factor[:, None]
            kept += pulled[:, None] * pair_value
            if not np.may_share_memory(kept, self.accumulator):        # a copy: write back
                self.accumulator[rows] = kept
            self.shift[node] = shift
            self.running_max[node] = new_max
            self.rescale[route] = factor
            if self.stream is not None:
                for u, t in zip(node.tolist(), times[at].tolist()):
                    self.stream.append((t, u, self.output_of(u)))
        self._finish(touched)

    def output_of(self, node: int) -> np.ndarray:
        """The running output ``o / l`` of one node, scaled back by its power of two."""
        return np.ldexp(self.accumulator[node] / self.normaliser[node], self.shift[node])

    def _finish(self, nodes: np.ndarray) -> None:
        """Nodes with every route settled: output o / l, and the shares for the tables."""
        state = self.state
        done = nodes[(self._values_settled[nodes] == state.needed[nodes])
                     & np.isnan(self._finished_at[nodes])]
        if state.tiled_shares:                 # shares in already: whole nodes at once
            whole = done[self.dead_routes[done] == 0]
            done = done[self.dead_routes[done] > 0]
            self._finish_whole(whole)
        for node in done.tolist():
            _, _, span = state.span(node)
            alive = self.dead[span] == 0
            if not alive.all():
                note_would_have(state, node)
                if state.on_missing == "strict":
                    state.failed[node] = True
                    state.done_time[node] = np.nan
                    self._finished_at[node] = -1.0
                    continue
            if self.normaliser[node] > 0:             # some route took a share
                state.output[node] = self.output_of(node)
                if state.kept is not None:
                    state.output[node] *= state.dropout_scale
            state.shares[span] = budget(state, node, alive)
            self._note_lse(np.array([node]))
            state.done_time[node] += self.processing
            self._finished_at[node] = state.done_time[node]

    def _finish_whole(self, nodes: np.ndarray) -> None:
        """Nodes that lost no route, their shares already computed (tiles): ``o / l``
        row by row, as :meth:`output_of` computes it for one node."""
        state = self.state
        rows = nodes[self.normaliser[nodes] > 0]                       # a node without
        state.output[rows] = np.ldexp(self.accumulator[rows]           # live routes keeps 0
                                      / self.normaliser[rows][:, None],
                                      self.shift[rows][:, None])
        if state.kept is not None:
            state.output[rows] *= state.dropout_scale
        self._note_lse(nodes)
        state.done_time[nodes] += self.processing
        self._finished_at[nodes] = state.done_time[nodes]

    def _note_lse(self, nodes: np.ndarray) -> None:
        """The log-sum-exp ``m + log l`` of finished nodes, from their streaming state (a
        node no pair reached keeps the barrier's: -inf, or its sink's logit)."""
        rows = nodes[self.normaliser[nodes] > 0]
        self.state.lse[rows] = self.running_max[rows] + np.log(self.normaliser[rows])
