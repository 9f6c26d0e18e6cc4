"""The route table: every allowed route ``j -> i`` of every routing group, as flat arrays.

Routes are numbered in canonical order: by query node ``u = g · L + i``, then by key
index ``j``. A query node's routes are the slice ``indptr[u]:indptr[u + 1]``, already
in source order, which is the order the numerics kernels need.

"Node" has three numberings; every module uses these names for them (``g`` is the
routing group, i.e. batch element and head; ``L`` query and ``S`` key tokens per group):

==============  =======================================  ================================
name            id                                       what is indexed by it
==============  =======================================  ================================
query node u    ``g · L + i``                            ``RouteTable.query_node``,
                                                         ``indptr``, ForwardState's
                                                         ``(G·L,)`` arrays, outputs, dQ
key node        ``g · S + j``                            the backward pass's ``key_node``,
                                                         dK and dV rows
physical node   self-attention: ``g · L + t`` (token     ``asker``, ``answerer``, crash
                t asks and answers there); cross:        windows, NIC queues,
                ``g · (L + S) + i`` for query token i,   ``Stats.node_bytes``
                ``g · (L + S) + L + j`` for key token j
==============  =======================================  ================================

``span`` is the number of physical nodes per group (``L``, or ``L + S`` in cross-attention).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from .route_set import concat_ranges, key_runs

if TYPE_CHECKING:
    from ..network.conditions import Crash
    from ..network.messages import Kind

__all__ = ["RouteTable", "one_run_per_row"]


class RouteTable:
    """Allowed routes of ``G`` groups of ``L`` query and ``S`` key tokens.

    Examples
    --------
    >>> table = RouteTable(np.array([[[True, False], [True, True]]]))
    >>> table.query_node.tolist(), table.key_index.tolist(), table.indptr.tolist()
    ([0, 1, 1], [0, 0, 1], [0, 1, 3])
    """

    def __init__(self, allowed: np.ndarray, self_attention: bool = True) -> None:
        groups, n_queries, n_keys = allowed.shape                      # (G, L, S)
        # Physical nodes: in self-attention token t asks and answers on one node; in
        # cross-attention the key tokens are nodes of their own, after the query tokens.
        self.self_attention = self_attention and n_queries == n_keys
        self.span = n_queries if self.self_attention else n_queries + n_keys
        index_type = np.int32 if groups * (n_queries + n_keys) < 2**31 else np.int64
        self.n_groups, self.n_queries, self.n_keys = groups, n_queries, n_keys
        self.index_type = index_type
        # One mask for every group (a view of stride 0 across them): read one group's.
        shared = groups > 1 and allowed.strides[0] == 0
        mask = allowed[0] if shared else allowed.reshape(groups * n_queries, n_keys)
        # One value broadcast over the whole mask (every stride 0): read it once.
        self.full = bool(mask.flat[0] if mask.size and not any(mask.strides) else mask.all())
        self._query_node = self._key_index = None
        self.runs: np.ndarray | None = None
        # Full attention: every row holds every key, so the index arrays follow from the
        # shape; they are built only if something asks for them.
        if self.full:
            self.indptr = np.arange(groups * n_queries + 1, dtype=np.int64) * n_keys
        else:
            counts = np.count_nonzero(mask, axis=1)                        # (G·L,) or (L,)
            # Causal, padding, windows: each row's first key says it all; the key of
            # every route (R,) is built only if something asks for it.
            self.runs = one_run_per_row(mask, counts)
            if shared:
                counts = np.tile(counts, groups)                           # (G·L,)
                self.runs = None if self.runs is None else np.tile(self.runs, groups)
            self.indptr = np.concatenate(([0], np.cumsum(counts)))     # (G·L + 1,)
            if self.runs is None:
                rows = allowed.reshape(groups * n_queries, n_keys) if shared else mask
                query_node, key_index = np.nonzero(rows)                   # rows (G·L, S)
                self._query_node = query_node.astype(index_type)       # (R,) u = g·L + i
                self._key_index = key_index.astype(index_type)         # (R,) j
        self._asker: np.ndarray | None = None
        self._answerer: np.ndarray | None = None
        self._every: np.ndarray | None = None
        self._per_node: np.ndarray | None = None
        self._key_runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_csr(cls, indptr: np.ndarray, key_index: np.ndarray | None, n_groups: int,
                 n_queries: int, n_keys: int, self_attention: bool = True,
                 known_runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                 ) -> RouteTable:
        """The table of a sparse route set: ``indptr (G·L + 1,)`` and ``key_index (R,)``
        (None: every key), never an ``L × S`` array; ``known_runs``, its :meth:`key_runs`
        when the route set knows them.

        Examples
        --------
        >>> table = RouteTable.from_csr(np.array([0, 1, 3]), np.array([0, 0, 1]), 1, 2, 2)
        >>> table.query_node.tolist(), len(table), table.full
        ([0, 1, 1], 3, False)
        """
        table = cls.__new__(cls)
        table.self_attention = self_attention and n_queries == n_keys
        table.span = n_queries if table.self_attention else n_queries + n_keys
        table.n_groups, table.n_queries, table.n_keys = n_groups, n_queries, n_keys
        table.index_type = np.int32 if n_groups * (n_queries + n_keys) < 2**31 else np.int64
        table.indptr = np.asarray(indptr, dtype=np.int64)              # (G·L + 1,)
        table.runs = None
        table.full = key_index is None or len(key_index) == n_groups * n_queries * n_keys
        table._key_index = None if table.full else np.asarray(key_index).astype(
            table.index_type, copy=False)                              # (R,) j
        table._query_node = None                                       # built on first use
        table._asker = table._answerer = table._every = table._per_node = None
        table._key_runs = None if table.full else known_runs
        return table

    @property
    def query_node(self) -> np.ndarray:
        """``(R,)``: the query node ``u = g·L + i`` of every route."""
        if self._query_node is None:
            self._query_node = np.repeat(np.arange(self.n_nodes, dtype=self.index_type),
                                         np.diff(self.indptr))
        return self._query_node

    @property
    def key_index(self) -> np.ndarray:
        """``(R,)``: the key token ``j`` of every route."""
        if self._key_index is None and self.runs is not None:          # one run a row
            self._key_index = concat_ranges(self.runs, self.runs + self.routes_per_node(),
                                            self.index_type)
        elif self._key_index is None:
            self._key_index = np.tile(np.arange(self.n_keys, dtype=self.index_type),
                                      self.n_nodes)
        return self._key_index

    @property
    def asker(self) -> np.ndarray:
        """Physical node id of every route's query token (built on first use)."""
        if self._asker is None:
            group, token = np.divmod(self.query_node, self.n_queries)
            self._asker = (group * self.span + token).astype(self.index_type)
        return self._asker

    @property
    def answerer(self) -> np.ndarray:
        """Physical node id of every route's key token (built on first use)."""
        if self._answerer is None:
            offset = 0 if self.self_attention else self.n_queries
            group = self.query_node // self.n_queries
            self._answerer = (group * self.span + offset + self.key_index).astype(
                self.index_type)
        return self._answerer

    def __len__(self) -> int:
        return int(self.indptr[-1])

    @property
    def n_nodes(self) -> int:
        """Number of query nodes, ``G · L``."""
        return self.n_groups * self.n_queries

    def routes_per_node(self) -> np.ndarray:
        """``(G·L,)`` routes of every query node (read-only: a run asks for it often)."""
        if self._per_node is None:
            self._per_node = np.diff(self.indptr)                      # (G·L,)
            self._per_node.flags.writeable = False
        return self._per_node

    def empty_nodes(self, scores: np.ndarray) -> np.ndarray:
        """``(G·L,)`` bool: nodes with no route, or whose every route a score_mod removed
        (its score ``scores[r]`` is -inf): the rows ``empty_rows`` applies to."""
        removed = np.isneginf(scores)                                  # (R,)
        if not removed.any():
            return self.routes_per_node() == 0
        return np.bincount(self.query_node[~removed], minlength=self.n_nodes) == 0

    def group(self, routes: np.ndarray) -> np.ndarray:
        return self.query_node[routes] // self.n_queries

    def query_token(self, routes: np.ndarray) -> np.ndarray:
        return self.query_node[routes] % self.n_queries

    def endpoints(self, kind: Kind, routes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Physical (sender, receiver) node ids of one message of ``kind`` on each route."""
        asker, answerer = self.asker[routes], self.answerer[routes]
        return (asker, answerer) if kind.to_key else (answerer, asker)

    def crash_filter(self, crashes: Iterable[Crash]
                     ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """``down(nodes, times)``: which (node, time) pairs fall in one of ``crashes``."""
        windows = []
        for crash in crashes:
            local = set()
            if crash.side in ("query", "both"):
                local.add(crash.token)
            if crash.side in ("key", "both"):
                local.add(crash.token + (0 if self.self_attention else self.n_queries))
            windows.append((np.array(sorted(local)), crash.start, crash.end))

        def down(nodes: np.ndarray, times: np.ndarray) -> np.ndarray:
            local = nodes % self.span
            hit = np.zeros(len(nodes), dtype=bool)
            for targets, start, end in windows:
                hit |= np.isin(local, targets) & (times >= start) & (times < end)
            return hit

        return down

    def route_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Per physical node: how many routes it asks on, and how many it answers on."""
        size = self.n_groups * self.span
        asking = np.zeros(size, np.int64)
        group, token = np.divmod(np.arange(self.n_nodes), self.n_queries)
        asking[group * self.span + token] = self.routes_per_node()
        answering = np.zeros(size, np.int64)
        offset = 0 if self.self_attention else self.n_queries
        if self.full:                             # every query of a group asks every key
            answering.reshape(self.n_groups, self.span)[:, offset:offset + self.n_keys] = \
                self.n_queries
            return asking, answering
        # Runs of keys (one a row, or those the tiles found): +1 where one opens, -1 after.
        runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if self.runs is not None:                                      # (first key, length,
            runs = self.runs, self.routes_per_node(), np.arange(self.n_nodes)  # node) a row
        elif self._key_runs is not None:
            first, length, node = self._key_runs
            runs = self.key_index[first], length, node
        if runs is not None:
            width = self.n_keys + 1                                    # a group's key j, and S
            start = runs[2] // self.n_queries * width + runs[0]        # (runs,)
            stop = start + runs[1]                                     # (runs,) empty: = start
            size_of = self.n_groups * width
            steps = np.bincount(start, minlength=size_of) - np.bincount(stop, minlength=size_of)
            answering.reshape(self.n_groups, self.span)[:, offset:offset + self.n_keys] = \
                np.cumsum(steps.reshape(self.n_groups, width), axis=1)[:, :-1]
            return asking, answering
        chunk = 2**20                             # bincount in pieces: no (R,) int64 copy
        for g in range(self.n_groups):            # one group's routes are one slice
            first, last = self.indptr[g * self.n_queries], self.indptr[(g + 1) * self.n_queries]
            start = g * self.span + offset
            for at in range(int(first), int(last), chunk):
                answering[start:start + self.n_keys] += np.bincount(
                    self.key_index[at:min(at + chunk, last)], minlength=self.n_keys)
        return asking, answering

    def key_runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(first route, length, query node)`` of every run of consecutive keys within a
        row (kept: the sparse tiles are cut from them, and :meth:`route_counts` then counts
        a run at a time).

        Examples
        --------
        >>> table = RouteTable(np.array([[[True, False, True], [True, True, False]]]))
        >>> [part.tolist() for part in table.key_runs()]
        [[0, 1, 2], [1, 1, 2], [0, 0, 1]]
        """
        if self._key_runs is None:
            self._key_runs = key_runs(self.indptr, self.key_index)
        return self._key_runs

    def forget_key_runs(self) -> None:
        """Let :meth:`key_runs` go (scattered keys: about one run a route)."""
        self._key_runs = None

    def every_route(self) -> np.ndarray:
        """``arange(R)``: the route ids of a whole wave (kept: the waves share it, and the
        engines read ``routes is table.every_route()`` as "every route, in order", so it is
        read-only)."""
        if self._every is None:
            self._every = np.arange(len(self), dtype=self.index_type)
            self._every.flags.writeable = False
        return self._every

    def routes_of(self, nodes: np.ndarray) -> np.ndarray:
        """All route ids of the given query nodes, node by node, each in source order."""
        if len(nodes) and nodes[-1] - nodes[0] == len(nodes) - 1:     # consecutive nodes
            first, last = self.indptr[nodes[0]], self.indptr[nodes[-1] + 1]
            if first == 0 and last == len(self):
                return self.every_route()
            return np.arange(first, last, dtype=self.index_type)
        return concat_ranges(self.indptr[nodes], self.indptr[nodes + 1])


def one_run_per_row(rows: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
    """Each row's first allowed key when every row's allowed keys are one run of
    consecutive keys (or none), else None: ``(G·L,)`` from ``rows (G·L, S)`` bool."""
    first = rows.argmax(axis=1)                                        # (G·L,) 0 if none
    last = rows.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)            # (G·L,)
    busy = counts > 0
    if (last[busy] - first[busy] + 1 != counts[busy]).any():
        return None
    return first
