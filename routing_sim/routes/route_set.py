"""Sparse route sets: which key tokens each query token may pull from, one entry per route.

A :class:`RouteSet` holds the routes of ``G`` routing groups (every batch element and
head) of ``L`` query and ``S`` key tokens in compressed sparse rows: query node
``u = g · L + i`` owns the routes ``indptr[u]:indptr[u + 1]``, whose key indices are
strictly ascending (the canonical order every sum is taken in). Memory grows with the
number of routes, never with ``L · S``; a full route set keeps even its key indices
implicit until something asks for them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

from ..errors import DTypeError, InvalidArgumentError, ShapeError
from ..inputs.mods import call_mod
from .graphs import check_count

__all__ = ["RouteSet", "batch_head", "concat_ranges", "from_ranges", "key_runs"]


class RouteSet:
    """The allowed routes of ``G`` groups of ``L`` query and ``S`` key tokens (CSR per group).

    Parameters
    ----------
    indptr : array_like of int, shape (G·L + 1,)
        Query node ``u``'s routes are ``indices[indptr[u]:indptr[u + 1]]``.
    indices : array_like of int, shape (R,)
        The key token of every route; strictly ascending within each query node.
    n_queries, n_keys : int
        ``L`` and ``S``.
    batch_shape : tuple of int
        The leading (batch, head) dims the ``G = prod(batch_shape)`` groups unflatten to.
    cross : bool, optional
        Query and key tokens are different sequences (cross-attention). Defaults to
        ``L != S``.

    Attributes
    ----------
    key_runs : tuple of ndarray, or None
        ``(first route, length, query node)`` of every run of consecutive keys within a
        row (:func:`key_runs`), when the set was built from them (:func:`from_ranges`);
        None otherwise (the simulation then finds them where it needs them).

    Examples
    --------
    >>> routes = RouteSet.from_mask(np.array([[True, False], [True, True]]))
    >>> len(routes), routes.indptr.tolist(), routes.indices.tolist()
    (3, [0, 1, 3], [0, 0, 1])
    >>> routes.routes_per_query().tolist()
    [1, 2]
    """

    def __init__(self, indptr, indices, n_queries: int, n_keys: int,
                 batch_shape: tuple[int, ...] = (), *, cross: bool | None = None) -> None:
        self.n_queries = check_count("n_queries", n_queries)
        self.n_keys = check_count("n_keys", n_keys)
        self.batch_shape = tuple(int(n) for n in batch_shape)
        self.n_groups = math.prod(self.batch_shape)
        self.cross = self.n_queries != self.n_keys if cross is None else bool(cross)
        self.indptr = np.asarray(indptr, dtype=np.int64)               # (G·L + 1,)
        nodes = self.n_groups * self.n_queries
        if self.indptr.shape != (nodes + 1,) or self.indptr[0] != 0 \
                or (np.diff(self.indptr) < 0).any():
            raise ShapeError(f"indptr must be a non-decreasing (G·L + 1,) = ({nodes + 1},) array "
                             f"starting at 0, got shape {self.indptr.shape}")
        self.full = indices is None
        self.key_runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if self.full:
            if not np.array_equal(self.indptr, np.arange(nodes + 1) * self.n_keys):
                raise ShapeError("a full route set (indices=None) has S routes per query")
            self._indices = None
            return
        indices = np.asarray(indices)
        if indices.dtype.kind not in "iu" or indices.shape != (int(self.indptr[-1]),):
            raise ShapeError(f"indices must be an integer array of the {int(self.indptr[-1])} "
                             f"routes indptr counts, got {indices.dtype} {indices.shape}")
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n_keys):
            raise ShapeError(f"key indices must lie in 0 .. {self.n_keys - 1}, got "
                             f"{int(indices.min())} .. {int(indices.max())}")
        self._indices = indices.astype(self.index_type, copy=False)
        if not _ascending(self.indptr, self._indices):
            raise InvalidArgumentError("each query's key indices must be strictly ascending "
                                       "(canonical order, no repeated route)")
        self.full = len(indices) == nodes * self.n_keys

    # ----------------------------------------------------------------- constructors

    @classmethod
    def complete(cls, n_queries: int, n_keys: int, batch_shape: tuple[int, ...] = (),
                 *, cross: bool | None = None) -> RouteSet:
        """Every query reaches every key; the key indices stay implicit.

        Examples
        --------
        >>> len(RouteSet.complete(3, 4, (2,)))
        24
        """
        nodes = math.prod(batch_shape) * check_count("n_queries", n_queries)
        return cls(np.arange(nodes + 1, dtype=np.int64) * check_count("n_keys", n_keys), None,
                   n_queries, n_keys, batch_shape, cross=cross)

    @classmethod
    def from_mask(cls, mask: ArrayLike) -> RouteSet:
        """The routes of a boolean mask ``(..., L, S)`` (True = route allowed).

        Examples
        --------
        >>> RouteSet.from_mask(np.ones((2, 3, 3), dtype=bool)).batch_shape
        (2,)
        """
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.ndim < 2:
            raise ShapeError(f"mask must be a bool array (..., L, S), got dtype {mask.dtype} "
                             f"and shape {mask.shape}")
        *batch_shape, n_queries, n_keys = mask.shape
        if mask.all():
            return cls.complete(n_queries, n_keys, tuple(batch_shape))
        rows, keys = np.nonzero(mask.reshape(-1, n_keys))
        counts = np.bincount(rows, minlength=math.prod(batch_shape) * n_queries)
        return cls(np.concatenate(([0], np.cumsum(counts))), keys, n_queries, n_keys,
                   tuple(batch_shape))

    @classmethod
    def from_graph(cls, graph: nx.DiGraph) -> RouteSet:
        """The routes of a token graph (edge ``j -> i``: query ``i`` may pull from key ``j``).

        Examples
        --------
        >>> from routing_sim import graphs
        >>> RouteSet.from_graph(graphs.causal(3)).indices.tolist()
        [0, 0, 1, 0, 1, 2]
        """
        from .graphs import graph_edges, graph_shape

        n_queries, n_keys = graph_shape(graph)
        queries, keys = graph_edges(graph)                             # (R,), (R,)
        order = np.lexsort((keys, queries))
        counts = np.bincount(queries, minlength=n_queries)
        return cls(np.concatenate(([0], np.cumsum(counts))), keys[order], n_queries, n_keys,
                   cross="n_queries" in graph.graph)

    @classmethod
    def from_mask_mod(cls, mask_mod: Callable, n_queries: int, n_keys: int, *,
                      batch_shape: tuple[int, ...] = (), block_size: int = 128) -> RouteSet:
        """The routes a FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx)`` allows.

        The mod is called once per ``(block_size, chunk)`` tile of each group with
        broadcastable index arrays (``q_idx`` a column, ``kv_idx`` a row), so nothing of
        size ``L · S`` is ever held; it must return a bool array that broadcasts to the
        tile. ``b`` and ``h`` follow :func:`batch_head`.

        Examples
        --------
        >>> causal = lambda b, h, q, kv: kv <= q
        >>> RouteSet.from_mask_mod(causal, 3, 3, block_size=2).indices.tolist()
        [0, 0, 1, 0, 1, 2]
        """
        n_queries, n_keys = check_count("n_queries", n_queries), check_count("n_keys", n_keys)
        block_size = check_count("block_size", block_size)
        if not callable(mask_mod) or block_size == 0:
            raise InvalidArgumentError("from_mask_mod needs a callable mask_mod and "
                                       f"block_size >= 1, got {mask_mod!r}, {block_size}")
        chunk = max(block_size, 2**20 // block_size)                  # key columns per tile
        groups = math.prod(batch_shape)
        counts = np.zeros(groups * n_queries, dtype=np.int64)
        pieces = []
        for group in range(groups):
            batch, head = batch_head(np.array(group), tuple(batch_shape))
            for top in range(0, n_queries, block_size):
                rows = np.arange(top, min(top + block_size, n_queries))[:, None]
                found = [_tile(mask_mod, int(batch), int(head), rows, left,
                               min(left + chunk, n_keys)) for left in range(0, n_keys, chunk)]
                row, key = (np.concatenate(part) for part in zip(*found)) if found else \
                    (np.zeros(0, np.int64),) * 2
                order = np.lexsort((key, row))
                pieces.append(key[order])
                counts[group * n_queries + top:group * n_queries + top + len(rows)] = \
                    np.bincount(row - top, minlength=len(rows))
        indices = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        return cls(np.concatenate(([0], np.cumsum(counts))), indices, n_queries, n_keys,
                   tuple(batch_shape))

    # ----------------------------------------------------------------- views

    @property
    def index_type(self) -> type:
        return np.int32 if max(self.n_keys, self.n_groups * self.n_queries) < 2**31 else np.int64

    @property
    def indices(self) -> np.ndarray:
        """``(R,)``: the key token of every route, in canonical order."""
        if self._indices is None:
            self._indices = np.tile(np.arange(self.n_keys, dtype=self.index_type),
                                    self.n_groups * self.n_queries)
        return self._indices

    @property
    def query_node(self) -> np.ndarray:
        """``(R,)``: the query node ``u = g · L + i`` of every route (built on each call)."""
        return np.repeat(np.arange(self.n_groups * self.n_queries, dtype=self.index_type),
                         np.diff(self.indptr))

    def __len__(self) -> int:
        return int(self.indptr[-1])

    def __repr__(self) -> str:
        groups = f", batch_shape={self.batch_shape}" if self.batch_shape else ""
        return (f"RouteSet(n_queries={self.n_queries}, n_keys={self.n_keys}{groups}, "
                f"routes={len(self):,})")

    def routes_per_query(self) -> np.ndarray:
        """Fan-in of every query token, shape ``(*batch_shape, L)``."""
        return np.diff(self.indptr).reshape(*self.batch_shape, self.n_queries)

    def to_mask(self) -> np.ndarray:
        """The dense bool mask ``(*batch_shape, L, S)``: O(L · S) memory, for small sets."""
        mask = np.zeros((self.n_groups * self.n_queries, self.n_keys), dtype=bool)
        mask[self.query_node, self.indices] = True
        return mask.reshape(*self.batch_shape, self.n_queries, self.n_keys)

    def to_networkx(self, group: int = 0, *, labels: Sequence[str] | None = None,
                    key_labels: Sequence[str] | None = None) -> nx.DiGraph:
        """The token graph of one group (edge ``j -> i`` per route), numbered as in
        :mod:`routing_sim.graphs`.

        Examples
        --------
        >>> sorted(RouteSet.from_mask(np.tril(np.ones((2, 2), bool))).to_networkx().edges())
        [(0, 0), (0, 1), (1, 1)]
        """
        from .graphs import from_routes

        if isinstance(group, bool) or not isinstance(group, (int, np.integer)) \
                or not 0 <= group < self.n_groups:
            raise InvalidArgumentError(f"group must be an integer in 0 .. {self.n_groups - 1}, "
                                       f"got {group!r}")
        first, last = group * self.n_queries, (group + 1) * self.n_queries
        span = slice(self.indptr[first], self.indptr[last])
        queries = np.repeat(np.arange(self.n_queries), np.diff(self.indptr[first:last + 1]))
        return from_routes(self.n_queries, self.n_keys, queries, self.indices[span],
                           cross=self.cross, labels=labels, key_labels=key_labels)

    # ----------------------------------------------------------------- algebra

    def broadcast_to(self, batch_shape: tuple[int, ...]) -> RouteSet:
        """The same routes in every group of ``batch_shape`` (from one group, or unchanged)."""
        batch_shape = tuple(batch_shape)
        if self.batch_shape == batch_shape:
            return self
        if self.n_groups != 1:
            raise ShapeError(f"a route set of batch shape {self.batch_shape} does not "
                             f"broadcast to {batch_shape}")
        groups = math.prod(batch_shape)
        if groups == 1:                                # one group either way: share the arrays
            same = copy.copy(self)
            same.batch_shape = batch_shape
            return same
        if self.full:
            return RouteSet.complete(self.n_queries, self.n_keys, batch_shape, cross=self.cross)
        group = np.arange(groups, dtype=np.int64)[:, None]             # (groups, 1)
        offsets = group * len(self)
        indptr = np.concatenate(([0], (self.indptr[1:][None, :] + offsets).reshape(-1)))
        tiled = RouteSet(indptr, np.tile(self.indices, groups), self.n_queries, self.n_keys,
                         batch_shape, cross=self.cross)
        if self.key_runs is not None:                  # each group's runs, moved along
            first, length, node = self.key_runs
            tiled.key_runs = ((first + offsets).reshape(-1), np.tile(length, groups),
                              (node + group * self.n_queries).reshape(-1))
        return tiled

    def select(self, keep: np.ndarray) -> RouteSet:
        """The routes where ``keep (R,)`` is True (a route exists only where all allow it)."""
        if keep.all():
            return self
        kept_before = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))  # (R + 1,)
        return RouteSet(kept_before[self.indptr], self.indices[keep],
                        self.n_queries, self.n_keys, self.batch_shape, cross=self.cross)


def from_ranges(n_queries: int, n_keys: int, starts: np.ndarray, stops: np.ndarray
                ) -> RouteSet:
    """A one-group route set whose row ``i`` is the key ranges ``starts[i, k]:stops[i, k]``.

    Each row's ranges must be ascending and disjoint; empty ones (stop <= start) are
    skipped. Builds the set in O(L · ranges + routes), and its :attr:`~RouteSet.key_runs` from
    the ranges (a range that ends where the next one begins joins it in one run).

    Examples
    --------
    >>> routes = from_ranges(2, 5, np.array([[0, 3], [1, 1]]), np.array([[1, 5], [3, 0]]))
    >>> routes.indices
    array([0, 3, 4, 1, 2], dtype=int32)
    >>> [part.tolist() for part in routes.key_runs]      # (first route, length, row)
    [[0, 1, 3], [1, 2, 2], [0, 0, 1]]
    """
    starts = np.clip(starts, 0, n_keys).astype(np.int64)              # (L, k)
    stops = np.clip(np.maximum(stops, starts), 0, n_keys)              # (L, k)
    lengths = stops - starts                                           # (L, k)
    counts = lengths.sum(axis=1)                                       # (L,)
    indices = concat_ranges(starts.reshape(-1), stops.reshape(-1),
                            np.int32 if max(n_queries, n_keys) < 2**31 else np.int64)
    routes = RouteSet(np.concatenate(([0], np.cumsum(counts))), indices, n_queries, n_keys)
    if not routes.full:
        live = lengths > 0                                             # (L, k)
        row, first = np.nonzero(live)[0], np.cumsum(lengths[live]) - lengths[live]  # (m,)
        opens = np.ones(len(row), dtype=bool)          # a range opens a run unless it goes on
        opens[1:] = (row[1:] != row[:-1]) | (starts[live][1:] != stops[live][:-1])  # the last
        runs = first[opens]
        routes.key_runs = runs, np.diff(np.append(runs, len(indices))), row[opens]
    return routes


def batch_head(groups: np.ndarray, batch_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """FlexAttention's ``(b, h)`` of routing groups: ``h`` indexes the last batch dim (the
    heads), ``b`` the others flattened; inputs without batch dims have ``b = h = 0``.

    Examples
    --------
    >>> [x.tolist() for x in batch_head(np.arange(6), (2, 3))]
    [[0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]]
    """
    heads = batch_shape[-1] if batch_shape else 1
    return np.divmod(groups, heads)


def _tile(mask_mod: Callable, batch: int, head: int, rows: np.ndarray, left: int, right: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """The (row, key) pairs a mask_mod allows in one tile of rows x keys left:right."""
    keys = np.arange(left, right)[None, :]
    allowed = call_mod(mask_mod, batch, head, rows, keys)
    if allowed.dtype != bool:
        raise DTypeError(f"mask_mod must return a bool array (True = route allowed), "
                         f"got dtype {allowed.dtype}")
    try:
        allowed = np.broadcast_to(allowed, (len(rows), right - left))
    except ValueError:
        raise ShapeError(f"mask_mod returned shape {allowed.shape}, which does not broadcast "
                         f"to the tile of q_idx {rows.shape} and kv_idx {keys.shape}") from None
    row, key = np.nonzero(allowed)
    return row + int(rows[0, 0]), key + left


def _ascending(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """Strictly ascending keys within every row, checked in pieces (small temporaries)."""
    chunk = 2**20
    for at in range(1, len(indices), chunk):
        falls = np.flatnonzero(np.diff(indices[at - 1:at + chunk]) <= 0) + at  # (k,) routes
        if len(falls):
            where = np.searchsorted(indptr, falls)
            if not (indptr[np.minimum(where, len(indptr) - 1)] == falls).all():
                return False                          # a fall that does not start a row
    return True


def concat_ranges(starts: np.ndarray, stops: np.ndarray, dtype: type = np.int64
                  ) -> np.ndarray:
    """``concatenate([arange(a, b) for a, b in zip(starts, stops)])`` without the loop.

    One array of the result's size, in ``dtype``, and no larger temporary: it holds the
    step from each entry to the next (1 inside a range, a jump where one begins) and is
    summed up in place.

    Examples
    --------
    >>> concat_ranges(np.array([0, 5, 9, 3]), np.array([2, 8, 9, 4])).tolist()
    [0, 1, 5, 6, 7, 3]
    >>> concat_ranges(np.array([4]), np.array([4]), np.int32).dtype
    dtype('int32')
    """
    lengths = stops - starts                                           # (k,)
    keep = lengths > 0
    if not keep.all():                                                 # skip empty ranges
        starts, stops, lengths = starts[keep], stops[keep], lengths[keep]
    steps: np.ndarray = np.ones(int(lengths.sum()), dtype=dtype)       # (total,)
    if len(steps):
        begins = np.cumsum(lengths[:-1])                               # (k - 1,) 2nd range on
        steps[0] = starts[0]
        steps[begins] = starts[1:] - (stops[:-1] - 1)                  # from the last entry
        np.add.accumulate(steps, out=steps)
    return steps


def key_runs(indptr: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(first route, length, query node)`` of every run of consecutive keys within one
    row of a route table (``indptr (G·L + 1,)``, ``keys (R,)``), runs in route order.

    Examples
    --------
    >>> [part.tolist() for part in key_runs(np.array([0, 3, 3, 5]), np.array([0, 1, 4, 4, 5]))]
    [[0, 2, 3], [2, 1, 2], [0, 0, 2]]
    """
    opens = np.zeros(len(keys), dtype=bool)                            # (R,) a run starts here
    opens[:1] = True
    chunk = 2**20
    for at in range(1, len(keys), chunk):                              # in pieces: small temps
        np.not_equal(np.diff(keys[at - 1:at + chunk]), 1, out=opens[at:at + chunk])
    busy = np.flatnonzero(np.diff(indptr) > 0)                         # rows with routes
    opens[indptr[busy]] = True                                         # rows start runs
    first = np.flatnonzero(opens)                                      # (runs,) sorted
    row_first = np.searchsorted(first, indptr[busy])                   # each row's first run
    run_row = np.zeros(len(first), dtype=np.int64)
    run_row[row_first[1:]] = 1
    return first, np.diff(np.append(first, len(keys))), busy[np.cumsum(run_row)]
