"""Streaming softmax (``softmax="online"``): no barrier, one update per arriving pair.

A SCORE is answered at once with a PULL, and each arriving (score, value) pair updates
the query node's running max m, normaliser l and accumulator o, rescaling by
exp(m_old - m_new): the FlashAttention algebra. The output is o / l and the row's
log-sum-exp m + log l. Unlike the two-phase result, their last bits may depend on arrival
order. A sink is known at the start: the state begins as (m, l, o) = (sink, 1, 0), a pair
with no value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import repeat
from typing import Literal, NamedTuple

import numpy as np

from ...network.deliveries import arrival_order
from ...network.messages import Kind
from ...network.transport import Transport
from ...network.wave_times import constant, shifted
from ...numerics.kernels import value_shift
from ..setup import Setup
from .backward_tiles import key_major_order
from .barrier import allocate_whole, budget, note_would_have, tiled_shares
from .two_phase import ForwardNodes, settle

__all__ = ["OnlineNodes"]

_COLUMN_BUFFER = 64     # elements: numpy's ufunc buffer for the column-major value update
# A grid goes in bands of steps of about this many pairs: each band's step-major copy of
# the scores and its running maxima stay in cache and reuse the memory the band before
# freed, where one copy of the whole grid (8 MB at n = 1024) faulted in fresh pages.
_BAND = 2**16


def _node_major(nodes: np.ndarray, times: np.ndarray, routes: np.ndarray) -> bool:
    """Are pairs already sorted by (node, arrival, route)? Cheaper to check than to sort."""
    if len(nodes) < 2:
        return True
    node_after, same_node = nodes[1:] > nodes[:-1], nodes[1:] == nodes[:-1]
    later, same_time = times[1:] > times[:-1], times[1:] == times[:-1]
    return bool((node_after | (same_node & (later | (same_time & (routes[1:] > routes[:-1])
                                                     )))).all())



@contextmanager
def _ufunc_buffer(size: int | None) -> Iterator[None]:
    """numpy's ufunc buffer at ``size`` elements inside the block (None: as it is), and the
    caller's size again after it, on numpy 1 and 2 alike."""
    before = np.getbufsize()
    if size is not None:
        np.setbufsize(size)
    try:
        yield
    finally:
        np.setbufsize(before)

def rescale_rows(kept: np.ndarray, factor: np.ndarray, moved: np.ndarray) -> None:
    """``kept *= factor[:, None]`` in place, touching only the rows ``moved`` whose factor
    is not 1 (x · 1 is x, bit for bit: -0.0, inf and NaN included).

    A node's running max moves about ln(n) times in n random scores, so most steps rescale
    a few rows or none; a step where many move multiplies every row (cheaper than a
    gather). Where a gathered row is strided (``kept`` column-major) "many" is fewer: at
    n = 1024, Ev = 64 a pass over every row costs as much as gathering about 32 of them
    column-major, 300 row-major.

    Examples
    --------
    >>> kept = np.array([[1.0, 2.0], [3.0, 4.0], [-0.0, 5.0]])
    >>> factor = np.array([1.0, 0.5, 1.0])
    >>> rescale_rows(kept, factor, np.flatnonzero(factor != 1))
    >>> kept.tolist()
    [[1.0, 2.0], [1.5, 2.0], [-0.0, 5.0]]
    """
    many = len(kept) // (32 if kept.flags.f_contiguous and kept.ndim > 1 and
                         kept.shape[1] > 1 else 4)
    if len(moved) > many:                         # many rows: one pass over them all
        kept *= factor[:, None]
    elif len(moved):                              # (a column-major gather is quicker by
        kept.T[:, moved] *= factor[moved]         # columns of the row-major transpose)


class _Steps(NamedTuple):
    """The steps of an update: step k's pairs are ``bounds[k]:bounds[k + 1]`` of the
    per-pair arrays; it holds some nodes (each once, ascending), which read some rows of
    the (G·S, Ev) values (:meth:`each`)."""

    nodes: np.ndarray                     # a grid: (n,) every step's; else (pairs,)
    rows: np.ndarray                      # a grid: (steps, n); else (pairs,)
    bounds: np.ndarray                    # (steps + 1,)
    one_key: np.ndarray                   # (steps,) do a step's nodes all read one row?
    consecutive: np.ndarray               # (steps,) are a step's nodes a run?
    grid: bool

    @classmethod
    def same_nodes(cls, nodes: np.ndarray, rows: np.ndarray) -> _Steps:
        """A grid: every step holds ``nodes (n,)``; ``rows (steps, n)``, a view (zero
        strides where a step reads one row)."""
        n_steps, width = rows.shape
        one_key = np.ones(n_steps, dtype=bool) if rows.strides[1] == 0 else \
            rows.min(axis=1) == rows.max(axis=1)
        consecutive = np.full(n_steps, nodes[-1] - nodes[0] == width - 1)
        return cls(nodes, rows, np.arange(0, n_steps * width + 1, width), one_key,
                   consecutive, True)

    @classmethod
    def ragged(cls, nodes: np.ndarray, bounds: np.ndarray, rows: np.ndarray) -> _Steps:
        """Steps of any sizes: ``nodes`` and ``rows (pairs,)`` step by step, ``bounds``
        apart."""
        firsts, lasts = bounds[:-1], bounds[1:]
        one_key = (np.minimum.reduceat(rows, firsts) == np.maximum.reduceat(rows, firsts)
                   ) if len(firsts) else firsts.astype(bool)
        consecutive = nodes[lasts - 1] - nodes[firsts] == lasts - firsts - 1
        return cls(nodes, rows, bounds, one_key, consecutive, False)

    def each(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each step's nodes and the value rows they read, ``(n,)`` each."""
        if self.grid:
            return zip(repeat(self.nodes), self.rows)
        return ((self.nodes[first:last], self.rows[first:last]) for first, last in
                zip(self.bounds[:-1].tolist(), self.bounds[1:].tolist()))


class OnlineNodes(ForwardNodes):
    """Streaming softmax: no barrier; each (score, value) pair updates (m, l, o) on arrival.

    Pair updates of one node are applied in arrival order (ties by message id) at the end
    of each delivery step, so the trace's ``rescale`` column holds, for each VALUE, the
    factor exp(m_old - m_new) its arrival applied to the node's state.
    """

    transport: Transport                # streaming needs the general transport's horizon

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
        self.rescale = np.full(len(routes), np.nan) if keep_stream else None  # (R,) factor
        self.stream: list[tuple[float, int, np.ndarray]] | None = [] if keep_stream else None
        self._finished_at = np.full(n_nodes, np.nan)
        self._updates: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._touched = np.zeros(n_nodes, dtype=bool)  # nodes with news since the last step
        self._shared = np.zeros(n_nodes, dtype=bool)   # scores and shares computed
        transport.on_step_end = self.apply_updates
        # Pair updates wait until nothing earlier can still arrive (Transport.horizon), so
        # they apply in arrival order however the transport groups deliveries. Ties at one
        # time keep per-instant order only if no message takes zero time: a transit is
        # positive, or jittered (zero with probability 2^-53).
        self._held: list[np.ndarray] = [np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)]
        transport.order_free = transport.min_delay > 0 or transport.network.jitter > 0

    def _settle_scores(self, routes: np.ndarray, times: np.ndarray) -> None:
        """No barrier: PULL each kept route at once; a dropped route updates l alone.

        Every score of a node (and its shares, for the routing tables) is computed at its
        first SCORE, as two-phase computes them at its barrier: on a sparse run's tiles or a
        full run's row blocks, every node's at once; else each new node's one product, the
        softmax on rows of equal length stacked together. Fixed products, the same bits
        under any schedule."""
        state = self.state
        if state.fixed_blocks:
            if not state.tiled_shares:                 # the first SCORE: every node's at once
                # Each pair brings its own weight, so the shares only tell: where no node
                # can lose a route, and no sink nor dropout rides on the softmax, they wait
                # until something reads them (ForwardState.shares).
                later = not self._retrying and state.sinks is None and state.kept is None
                tiled_shares(state, softmax=not later)
                state.shares_pending = later
                self._shared[:] = True
                if state.spans is not None:            # online pulls on its own: no work
                    state.spans.release()              # array or masks to keep
        else:
            fresh = np.zeros(len(self._shared), dtype=bool)
            fresh[self.routes.query_node[routes]] = True
            fresh &= ~self._shared
            if fresh.any():
                allocate_whole(state, np.flatnonzero(fresh))
                self._shared |= fresh
        settle(self.routes, routes, times, self._scores_settled, state.needed,
               state.barrier_time)
        self._touch(routes)
        if not self._retrying and state.raw is None and state.kept is None:
            self.request(Kind.PULL, routes, shifted(times, self.processing), 0)  # every one
            return
        alive = self.dead[routes] == 0
        if state.raw is not None:        # a route the score_mod removed (-inf): no budget,
            alive &= ~np.isneginf(state.scores[routes])        # no PULL, no (m, l) update
        kept = alive if state.kept is None else alive & state.kept[routes]
        self.request(Kind.PULL, routes[kept], times[kept] + self.processing, 0)
        dropped = alive & ~kept
        self._updates.append((routes[dropped], times[dropped], np.zeros(int(dropped.sum()), bool)))
        settle(self.routes, routes[~kept], times[~kept], self._values_settled, state.needed,
               state.done_time)

    def _settle_values(self, routes: np.ndarray, times: np.ndarray) -> None:
        """Queue each live (score, value) pair's update for the end of the step."""
        live, at = routes, times
        if self._retrying:                             # a route given up pulls nothing
            alive = self.dead[routes] == 0
            live, at = routes[alive], times[alive]
        self._updates.append((live, at, np.ones(len(live), bool)))
        settle(self.routes, routes, times, self._values_settled, self.state.needed,
               self.state.done_time)
        self._touch(routes)

    def apply_updates(self) -> None:
        """Apply the pair updates no later arrival can precede, node by node in arrival
        order, vectorised over nodes; finish nodes with every route settled and applied."""
        parts = self._updates if self._updates and not len(self._held[0]) else \
            [self._held, *self._updates]
        routes, times, has_value = (np.concatenate(part) if len(part) != 1 else
                                    np.asarray(part[0]) for part in zip(*parts))
        self._updates = []
        # No update, no question: the horizon scans every message in flight.
        due = times < (self.transport.horizon() if len(times) else np.inf)
        if not due.all():
            self._held = [routes[~due], times[~due], has_value[~due]]
            routes, times, has_value = routes[due], times[due], has_value[due]
        elif len(self._held[0]):
            self._held = [part[:0] for part in self._held]
        self._touch(routes)
        touched = self._touched
        if len(self._held[0]):                                         # still waiting
            touched[self.routes.query_node[self._held[0]]] = False
        nodes = np.flatnonzero(touched)
        touched[:] = False
        if len(routes):
            self._apply_in_order(routes, times, has_value)
        self._finish(nodes)

    def _touch(self, routes: np.ndarray) -> None:
        """Note the query nodes of ``routes`` as having news (a whole wave: every node that
        has a route, without an (R,) gather; none: nothing, not even the (R,) node table)."""
        if not len(routes):
            return
        if routes is self.routes.every_route():
            self._touched |= self.routes.routes_per_node() > 0
        else:
            self._touched[self.routes.query_node[routes]] = True

    def _apply_in_order(self, routes: np.ndarray, times: np.ndarray, has_value: np.ndarray
                        ) -> None:
        """Each node's pairs in arrival order (ties by route): step k updates every node's
        k-th pair, one vectorised update per step, nodes ascending in it."""
        table = self.routes
        wave = routes is table.every_route() and constant(times) is not None
        if wave and table.full:
            # A full table's whole wave at one instant: each group a grid whose step k
            # reads key k (one value row a step: an outer product); groups share no node,
            # so they go one after another.
            span, n_queries = table.n_queries * table.n_keys, table.n_queries
            for group in range(table.n_groups):
                at = slice(group * span, (group + 1) * span)           # the group's routes
                self._apply_grid(np.arange(group * n_queries, (group + 1) * n_queries),
                                 self.state.scores[at], routes[at], times[at],
                                 has_value[at], None)
            return
        if wave:
            # A whole wave at one instant is node by node in route order already: no
            # gathers, the runs of nodes straight from the table.
            per_node = table.routes_per_node()                         # (G·L,)
            present = np.flatnonzero(per_node)                         # (nodes,)
            starts, counts = table.indptr[present], per_node[present]
            scores, keys = self.state.scores, table.key_index
        else:
            nodes = table.query_node[routes]
            if not _node_major(nodes, times, routes):    # node by node, arrival, route:
                by_arrival = arrival_order(times, routes)  # np.lexsort((routes, times, nodes))
                order = by_arrival[key_major_order(nodes[by_arrival], table.n_nodes)]
                routes, times, has_value, nodes = routes[order], times[order], \
                    has_value[order], nodes[order]
            scores, keys = self.state.scores[routes], table.key_index[routes]   # (pairs,)
            starts = np.r_[0, np.flatnonzero(np.diff(nodes)) + 1]
            counts = np.diff(np.r_[starts, len(nodes)])                # (nodes,) pairs each
            present = nodes[starts]                                    # (nodes,)
        if counts.min() == counts.max():        # as many pairs each: a (steps, nodes) grid
            self._apply_grid(present, scores, routes, times, has_value, keys)
            return
        if wave:                                # (R,): built only for steps of many sizes
            nodes = table.query_node
        rank = np.arange(len(nodes)) - np.repeat(starts, counts)
        order = np.argsort(rank, kind="stable")

        def by_step(pairs: np.ndarray) -> np.ndarray:
            return pairs[order]
        bounds = np.searchsorted(rank[order], np.arange(int(counts.max()) + 1))
        step_nodes = by_step(nodes)
        steps = _Steps.ragged(step_nodes, bounds, by_step(self._value_row(nodes, keys)))
        factors, weights, normalisers = self._scalar_updates(step_nodes, by_step(scores),
                                                             bounds)
        self._fold(steps, by_step, factors, weights, normalisers, routes, times,
                   None if has_value.all() else has_value)

    def _apply_grid(self, nodes: np.ndarray, scores: np.ndarray, routes: np.ndarray,
                    times: np.ndarray, has_value: np.ndarray, keys: np.ndarray | None
                    ) -> None:
        """:meth:`_apply_in_order` for ``nodes`` with as many pairs each, node by node
        (``scores``, ``routes``, ``times``, ``has_value``, ``keys``: per pair; ``keys``
        None: the nodes are one group of a full table)."""
        n_steps = len(scores) // len(nodes)
        rows = self._grid_rows(nodes, n_steps, keys)                   # (steps, nodes)
        every_value = bool(has_value.all())
        band = max(1, _BAND // len(nodes))                             # steps a band
        for first in range(0, n_steps, band):
            last = min(first + band, n_steps)

            def by_step(pairs: np.ndarray, first: int = first, last: int = last
                        ) -> np.ndarray:        # the band's pairs step by step: a copy
                return pairs.reshape(len(nodes), n_steps)[:, first:last].T.copy().ravel()
            factors, weights, normalisers = self._grid_scalars(
                nodes, by_step(scores).reshape(last - first, len(nodes)),
                self.stream is not None)
            self._fold(_Steps.same_nodes(nodes, rows[first:last]), by_step, factors,
                       weights, normalisers, routes, times, None if every_value else has_value)

    def _fold(self, steps: _Steps, by_step: Callable[[np.ndarray], np.ndarray],
              factors: np.ndarray, weights: np.ndarray, normalisers: np.ndarray | None,
              routes: np.ndarray, times: np.ndarray, has_value: np.ndarray | None) -> None:
        """Note the rescale factors, drop the weight of a dropped route, pull the values
        (``by_step``: a per-pair array in the steps' order; ``has_value`` None: every pair
        has one)."""
        if self.rescale is not None:
            self.rescale[by_step(routes)] = factors
        if has_value is not None:                       # a dropped route pulls nothing
            weights *= by_step(has_value)
        self._pull_values(steps, factors, weights, None if self.stream is None or
                          normalisers is None else (by_step(times), normalisers))

    def _value_row(self, nodes: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The row of the (G·S, Ev) values that a pair of query node ``nodes`` and key
        token ``keys`` reads (broadcasting)."""
        table = self.routes
        if table.n_groups == 1:
            return keys
        return nodes // table.n_queries * table.n_keys + keys

    def _grid_rows(self, nodes: np.ndarray, n_steps: int, keys: np.ndarray | None
                   ) -> np.ndarray:
        """The value rows of a grid's steps ``(steps, nodes)``, the same ``nodes`` ascending
        in each, step k reading each node's k-th key (``keys``, node by node; None: the
        nodes are one group of a full table, so step k reads key k: zero strides)."""
        if keys is None:                                # (steps, 1): one row a step
            rows = self._value_row(nodes[:1], np.arange(n_steps)[:, None])
        else:                                           # (steps, nodes): a transposed view
            rows = self._value_row(nodes, keys.reshape(len(nodes), n_steps).T)
        return np.broadcast_to(rows, (n_steps, len(nodes)))

    def _grid_scalars(self, nodes: np.ndarray, scores: np.ndarray, keep_normalisers: bool
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`_scalar_updates` for nodes with as many pairs each: ``scores`` a
        (steps, nodes) grid, a copy this overwrites with the weights; the exps are over the
        grid (elementwise on contiguous arrays: the same bits as step by step). Each node's
        l after each step only when ``keep_normalisers``."""
        top = np.empty((len(scores) + 1, len(nodes)), dtype=scores.dtype)  # (steps + 1, nodes)
        top[0] = self.running_max[nodes]
        for step, score in enumerate(scores):     # the running max, a row at a time
            np.maximum(top[step], score, out=top[step + 1])            # m' = max(m, s)
        self.running_max[nodes] = top[-1]
        scores -= top[1:]                                              # s - m'
        factors = np.subtract(top[:-1], top[1:], out=top[:-1])         # (steps, nodes) m - m'
        moved = np.flatnonzero(factors != 0)    # the max moved (or NaN): exp(0) is 1 exactly
        rescaled = np.exp(factors.flat[moved])                         # (moves,) of (l, o)
        factors.fill(1.0)
        factors.flat[moved] = rescaled
        weights = np.exp(scores, out=scores)                           # (steps, nodes)
        normalisers = np.empty_like(scores) if keep_normalisers else None  # (steps, nodes)
        normaliser = self.normaliser[nodes]                            # (nodes,) l, a copy
        moving = np.zeros(len(scores), dtype=bool)                     # (steps,) some c != 1
        moving[moved // len(nodes)] = True
        for step, some in enumerate(moving.tolist()):
            if some:                                                   # c · l (c = 1: l)
                np.multiply(factors[step], normaliser, out=normaliser)
            normaliser += weights[step]
            if normalisers is not None:
                normalisers[step] = normaliser
        self.normaliser[nodes] = normaliser
        return factors.ravel(), weights.ravel(), None if normalisers is None else \
            normalisers.ravel()

    def _scalar_updates(self, nodes: np.ndarray, scores: np.ndarray, bounds: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The running max m and normaliser l through every step; per pair, the rescale
        exp(m_old - m_new) it applies, its weight exp(s - m_new) and its node's l after
        it."""
        factors, weights, normalisers = (np.empty(len(nodes), dtype=scores.dtype)
                                         for _ in range(3))            # (pairs,) each
        for step in range(len(bounds) - 1):
            at = slice(bounds[step], bounds[step + 1])
            node, score = nodes[at], scores[at]
            old_max = self.running_max[node]
            new_max = np.maximum(old_max, score)
            factor = np.exp(old_max - new_max)                          # rescale of (l, o)
            weight = np.exp(score - new_max)
            normalisers[at] = factor * self.normaliser[node] + weight
            self.normaliser[node] = normalisers[at]
            self.running_max[node] = new_max
            factors[at], weights[at] = factor, weight
        return factors, weights, normalisers

    def _pull_values(self, steps: _Steps, factors: np.ndarray, pulled: np.ndarray,
                     arrivals: tuple[np.ndarray, np.ndarray] | None) -> None:
        """o <- c·o + p·v_j, step by step (each node's pairs in arrival order; per pair, its
        rescale c and weight p, ``steps.bounds`` apart); with a stream kept, each node's
        o / l after the step, at its pair's arrival (``arrivals``: per pair, its time and
        the node's l after it)."""
        values = self.problem.value.reshape(-1, self.problem.value.shape[2])   # (G·S, Ev)
        shifted = bool(self.value_shift.any())      # values near the largest float
        bounds = steps.bounds
        rescaling = np.flatnonzero(factors != 1)                       # (moves,) pair indices
        rescaling_bounds = np.searchsorted(rescaling, bounds)          # (steps + 1,)
        # The layout follows the steps (a copy keeps every bit): where each step's nodes
        # read one key, its shares p·v_j are an outer product, made a column at a time (a
        # run of nodes long) in column-major order; where they read their own keys, the
        # shares are gathered rows, row-major. A small update keeps the layout it finds
        # (the copy would cost more than it saves).
        if len(pulled) >= len(self.accumulator):
            wanted: Literal["C", "F"] = "F" if len(steps.one_key) and steps.one_key.all() \
                else "C"
            self.accumulator = np.asarray(self.accumulator, order=wanted)   # (G·L, Ev)
        order: Literal["C", "F"] = "C" if self.accumulator.flags.c_contiguous else "F"
        # One scratch buffer for every step's shares: a fresh (n, Ev) array each step would
        # fault in new pages every time.
        scratch = np.empty((int(np.diff(bounds).max(initial=0)), values.shape[1]),
                           dtype=values.dtype, order=order)            # (n, Ev)
        # Column-major, numpy's default ufunc buffer (8192 elements) makes it copy the
        # broadcast operands of p · v_j and o · c into buffers spanning several columns
        # (about 3x slower at n = 1024, Ev = 64); a buffer shorter than a column lets each
        # column be one inner loop, with no copy. Elementwise products: the same bits.
        with _ufunc_buffer(_COLUMN_BUFFER if order == "F" else None):
            for (node, rows), first, last, one, in_place, moves, moves_end in zip(
                    steps.each(), bounds[:-1].tolist(), bounds[1:].tolist(),
                    steps.one_key.tolist(), steps.consecutive.tolist(),
                    rescaling_bounds[:-1].tolist(), rescaling_bounds[1:].tolist()):
                at = slice(first, last)
                factor = factors[at]
                if shifted:
                    self._scaled_update(node, rows, factor, pulled[at])
                else:
                    share = scratch[:last - first]                         # (n, Ev)
                    if one:
                        np.multiply.outer(pulled[at], values[rows[0]], out=share)  # p · v_j
                    else:
                        np.take(values, rows, axis=0, out=share)           # v_j
                        share *= pulled[at, None]                           # p · v_j
                    kept = (self.accumulator[node[0]:node[-1] + 1] if in_place
                            else self.accumulator[node])         # (n, Ev) a view, or a gather
                    if moves_end > moves:
                        rescale_rows(kept, factor, rescaling[moves:moves_end] - first)
                    kept += share
                    if not in_place:
                        self.accumulator[node] = kept
                if self.stream is not None and arrivals is not None:
                    for u, t, norm in zip(node.tolist(), arrivals[0][at].tolist(),
                                          arrivals[1][at]):
                        self.stream.append((t, u, np.ldexp(self.accumulator[u] / norm,
                                                           self.shift[u])))

    def _scaled_update(self, node: np.ndarray, value_rows: np.ndarray, factor: np.ndarray,
                       pulled: np.ndarray) -> None:
        """One step with values near the largest float: o and v scaled by exact powers of
        two so that their sum cannot overflow."""
        values = self.problem.value.reshape(-1, self.problem.value.shape[2])   # (G·S, Ev)
        shift = np.maximum(self.shift[node], self.value_shift.reshape(-1)[value_rows])  # (n,)
        kept = np.ldexp(self.accumulator[node], (self.shift[node] - shift)[:, None])
        pair_value = np.ldexp(values[value_rows], -shift[:, None])     # (n, Ev)
        kept *= factor[:, None]
        kept += pulled[:, None] * pair_value
        self.accumulator[node] = kept
        self.shift[node] = shift

    def output_of(self, node: int) -> np.ndarray:
        """The running output ``o / l`` of one node, scaled back by its power of two."""
        return np.ldexp(self.accumulator[node] / self.normaliser[node], self.shift[node])

    def _finish(self, nodes: np.ndarray) -> None:
        """Nodes with every route settled: output o / l, and the shares for the tables."""
        state = self.state
        done = nodes[(self._values_settled[nodes] == state.needed[nodes])
                     & np.isnan(self._finished_at[nodes])]
        whole = self._shared[done] & (self.dead_routes[done] == 0)   # shares in already
        self._finish_whole(done[whole])
        done = done[~whole]
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
        """Nodes that lost no route, their shares already computed: ``o / l``
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
