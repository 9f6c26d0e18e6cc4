"""What the token nodes of a forward run know: one public record, per route and per node.

The two-phase and online handlers write it, the barrier arithmetic
(:mod:`routing_sim.engines.fast.barrier`) reads and writes it, and the backward pass
(:mod:`routing_sim.engines.fast.backward`) reads it when the forward run is over. Route arrays are
indexed by route id (canonical order, see :mod:`routing_sim.routes.table`); node arrays by
query node ``u = g · L + i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..network.wave_times import constant, uniform
from ..numerics.kernels import Kernels
from ..numerics.tiles import RowBlocks, SpanBlocks, Tiles
from ..routes.problem import Problem
from ..routes.table import RouteTable

__all__ = ["ExactParts", "ForwardState", "SCORE_PHASE", "VALUE_PHASE"]

SCORE_PHASE, VALUE_PHASE = 1, 2     # ForwardState.dead: QUERY/SCORE lost, or PULL/VALUE lost


@dataclass
class ExactParts:
    """What exact mode keeps besides the float state: each score's low part, and the
    budget's numerators e = exp(s - m) and normaliser l = Σ e as double-doubles
    (high + low), which the weighted pull divides by once."""

    score_low: np.ndarray                # (R,)
    e_high: np.ndarray                   # (R,)
    e_low: np.ndarray                    # (R,)
    l_high: np.ndarray                   # (G·L,)
    l_low: np.ndarray                    # (G·L,)

    @classmethod
    def zeros(cls, n_routes: int, n_nodes: int) -> ExactParts:
        return cls(np.zeros(n_routes), np.zeros(n_routes), np.zeros(n_routes),
                   np.zeros(n_nodes), np.zeros(n_nodes))


@dataclass
class ForwardState:
    """Every token node's state in one run, vectorised over routes and nodes."""

    problem: Problem
    routes: RouteTable
    kernels: Kernels
    dead: np.ndarray                     # (R,) 0, or the phase the route died in
    processing: float                    # a node's compute time per step
    on_missing: str = "strict"
    top_k: int | None = None             # hard routing: pull only the top_k scores
    faulty: bool = False                 # retries possible: keep what idempotence needs
    duplicates: bool = False             # network copies possible
    scores: np.ndarray = field(init=False)          # (R,) s_ij (exact: high part)
    exact: ExactParts | None = field(init=False)    # exact mode only
    _shares: np.ndarray = field(init=False, repr=False)  # (R,) :attr:`shares`
    probabilities: np.ndarray | None = field(init=False)  # (R,) dropout: w_ij before it
    score_time: np.ndarray | None = field(init=False)  # (R,) first SCORE in (idempotence)
    value_time: np.ndarray = field(init=False)      # (R,) first VALUE in, NaN if none;
    #                                                 zero-stride while one instant (or none)
    would_have: np.ndarray | None = field(init=False)  # (R,) a dead route's full share
    chosen: np.ndarray | None = field(init=False)   # (R,) hard routing: routes kept
    kept: np.ndarray | None = field(init=False)     # (R,) dropout: routes kept
    bias: np.ndarray | None = field(init=False)     # (R,) added to the scores, or None
    raw: np.ndarray | None = field(init=False)      # (R,) score_mod: q·k·scale before it
    sinks: np.ndarray | None = field(init=False)    # (G·L,) each node's sink logit, or None
    sink_shares: np.ndarray | None = field(init=False)  # (G·L,) the sink's share of a budget
    lse: np.ndarray = field(init=False)             # (G·L,) log Σ exp(s) of each softmax
    dropout_scale: np.generic = field(init=False)   # 1 / (1 - p) in the inputs' dtype
    needed: np.ndarray = field(init=False)          # (G·L,) routes per node
    values_needed: np.ndarray = field(init=False)   # (G·L,) VALUEs a node waits for
    output: np.ndarray = field(init=False)          # (G·L, Ev) o_i
    barrier_time: np.ndarray = field(init=False)    # (G·L,) last SCORE settled
    done_time: np.ndarray = field(init=False)       # (G·L,) output complete
    failed: np.ndarray = field(init=False)          # (G·L,) strict: gave up
    tiles: Tiles | None = None                      # sparse fast path (see tiles.py)
    rows: RowBlocks | None = None                   # full table fast path (tiles.py)
    spans: SpanBlocks | None = None                 # dense mask, one key run a row (tiles.py)
    tiled_shares: bool = False                      # every route's share is in (fixed blocks)
    tiled_output: bool = False                      # every node's pull is in (fixed blocks)
    shares_pending: bool = False                    # fixed blocks' shares put off till read
    filling_shares: bool = False                    # ... and being computed now
    context: dict | None = None                     # names and events for the exporters
    route_latency: np.ndarray | None = None         # (R,) base latency the run used

    def __post_init__(self) -> None:
        problem, routes, exact = self.problem, self.routes, self.kernels.exact
        n_routes, n_nodes, dtype = len(routes), routes.n_nodes, problem.dtype
        self.scores = np.zeros(n_routes, dtype=np.float64 if exact else dtype)
        self.exact = ExactParts.zeros(n_routes, n_nodes) if exact else None
        self._shares = np.zeros(n_routes, dtype=dtype)
        self.score_time = np.full(n_routes, np.nan) if self.faulty or self.duplicates else None
        self.value_time = np.full(n_routes, np.nan) if self.faulty or self.duplicates else \
            uniform(np.nan, n_routes)                                  # no VALUE yet
        self.would_have = np.full(n_routes, np.nan) if self.faulty else None
        self.chosen = np.ones(n_routes, dtype=bool) if self.top_k else None
        where = (lambda: routes.query_node, lambda: routes.key_index)
        self.kept = problem.per_route("keep", *where)                  # (R,) bool or None
        self.bias = problem.per_route("bias", *where)                  # (R,) or None
        self.raw = None if problem.score_mod is None else np.zeros(n_routes, dtype=dtype)
        self.sinks = None if problem.sinks is None else np.repeat(problem.sinks, routes.n_queries)
        # A node with no route (or none left) gives the sink its whole budget.
        self.sink_shares = None if self.sinks is None else np.ones(n_nodes, dtype=dtype)
        self.lse = self.no_route_lse(np.arange(n_nodes))
        self.dropout_scale = dtype.type(1.0 / (1.0 - problem.dropout_p))
        self.probabilities = None if self.kept is None else np.zeros(n_routes, dtype=dtype)
        self.needed = routes.routes_per_node()
        self.values_needed = self.needed.copy() if self.kept is None else np.bincount(
            routes.query_node[self.kept], minlength=n_nodes)
        self.output = np.zeros((n_nodes, problem.shape[4]), dtype=dtype)
        self.barrier_time = np.full(n_nodes, -np.inf)
        self.done_time = np.full(n_nodes, np.nan)
        self.failed = np.zeros(n_nodes, dtype=bool)

    @property
    def shares(self) -> np.ndarray:
        """``(R,)`` w_ij after dropout: each route's share of its node's budget.

        A run whose nodes do not pull with them (online softmax: each pair's weight is its
        own) puts the fixed blocks' shares off (:attr:`shares_pending`); the first read
        runs the softmax of the scores the run kept on the barrier's blocks
        (:func:`~routing_sim.engines.fast.barrier.pending_shares`), so they have the bits
        they would have had at the barrier.
        """
        if self.shares_pending:                  # the arithmetic lives with the barrier's
            from .fast.barrier import pending_shares
            pending_shares(self)
        return self._shares

    @property
    def fixed_blocks(self) -> bool:
        """Whether every node's products come from fixed blocks (the sparse tiles, a full
        table's row blocks or a dense mask's span blocks), all computed at the first
        barrier."""
        return self.tiles is not None or self.rows is not None or self.spans is not None

    def record_values(self, routes: np.ndarray, times: np.ndarray) -> None:
        """Record the first VALUE of each of ``routes``, arrived at ``times``. A whole wave
        at one instant keeps :attr:`value_time` a zero-stride view (no per-route array: a
        long context's wave is tens of millions of routes); a whole wave in canonical order is
        one copy; otherwise it becomes an array.

        Examples
        --------
        >>> from routing_sim.network.wave_times import uniform
        >>> times = uniform(np.nan, 3)
        >>> from routing_sim.routes.table import RouteTable
        >>> state = ForwardState.__new__(ForwardState)
        >>> state.routes = RouteTable(np.array([[[True, True], [True, False]]]))
        >>> state.value_time = times
        >>> state.record_values(np.array([2, 0, 1]), uniform(4.0, 3))
        >>> state.value_time.tolist(), state.value_time.strides
        ([4.0, 4.0, 4.0], (0,))
        >>> state.value_time = times
        >>> state.record_values(np.array([1]), np.array([2.0]))
        >>> state.value_time.tolist()
        [nan, 2.0, nan]
        >>> state.value_time = times
        >>> state.record_values(state.routes.every_route(), np.array([1.0, 2.0, 3.0]))
        >>> state.value_time.tolist(), state.value_time.flags.writeable
        ([1.0, 2.0, 3.0], True)
        """
        first = len(routes) == len(self.value_time) and \
            constant(self.value_time) is not None and bool(np.isnan(self.value_time[0]))
        one = constant(times)
        if first and one is not None:                                  # every route, at once
            self.value_time = uniform(one, len(routes))
        elif first and routes is self.routes.every_route():            # in canonical order:
            self.value_time = np.array(times, dtype=np.float64)        # a copy, not a scatter
        else:
            if not self.value_time.flags.writeable:
                self.value_time = np.array(self.value_time)            # (R,) its own now
            self.value_time[routes] = times

    def no_route_lse(self, nodes: np.ndarray | int) -> np.ndarray:
        """The log-sum-exp of nodes whose softmax has no live route: their sink's logit
        (its term alone), or -inf."""
        if self.sinks is None:
            return np.full(np.shape(nodes), -np.inf, dtype=self.problem.dtype)
        return self.sinks[nodes].astype(self.problem.dtype)

    def span(self, node: int) -> tuple[int, int, slice]:
        """``(group, token, routes)`` of one query node: its routes are one slice."""
        group, token = divmod(node, self.routes.n_queries)
        return group, token, slice(self.routes.indptr[node], self.routes.indptr[node + 1])
