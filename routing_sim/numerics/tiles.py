"""Fixed tiles of query nodes: the sparse fast path's dot products and weighted pulls.

A sparse route set's rows are mostly runs of consecutive keys (a window, sinks, blocks),
and neighbouring query tokens read overlapping runs. :class:`Tiles` cuts the query nodes
of each group into tiles of ``T`` consecutive nodes; a tile's *key union* ``U`` is the
merge of its rows' runs. One dense product ``Q_tile @ K_Uᵀ`` (``T × |U|``) then holds
every score of the tile, and one product ``W_tile @ V_U`` (``W_tile`` the shares scattered
into ``T × |U|``) every output row: BLAS work in place of per-route Python. Tiles of one
shape go through one batched ``np.matmul`` a panel at a time, so memory stays at a panel
of blocks.

The partition depends on the route table alone, never on the delivery schedule, and the
simulator computes every tile in the same products whatever order the barriers pass in:
that keeps the fast path bit-identical under every schedule (see docs/design.md).
"""

from __future__ import annotations

import numpy as np

from ..routes.route_set import concat_ranges, key_runs
from .regular_panels import RegularPanel

__all__ = ["BLOCK_ENTRIES", "PANEL_ENTRIES", "RaggedRows", "RowBlocks", "SpanBlocks", "Tiles",
           "tile_size"]

PANEL_ENTRIES = 2**21    # entries of a batch's blocks or gathered keys (16 MB of float64)
REGULAR_ENTRIES = 2**18  # the same for a regular panel (2 MB: its copies stay in cache)
BLOCK_ENTRIES = 2**22    # entries of a full table's row block (32 MB of float64)
ROW_BLOCK_ROWS = 2       # one query row a group (a decoding step): the per-node path, whose
#                          stacked softmax covers every group in one call, costs less
MAX_WASTE = 4.0          # tile blocks may hold at most this many entries per route
SPAN_WASTE = 1.25        # SpanBlocks: block entries per route it accepts
CALL_ROUTES = 2**16      # RaggedRows: routes of padding copies one numpy call is worth
SPREAD = 1.25            # a ragged block's rows: fan-ins within this factor of each other
SPAN_PART_ENTRIES = 2**16  # SpanBlocks: entries of a block's rows worked on at once (512 KB
#                            of float64: its passes stay in L2)
COPY_WIDTH = 64          # tiles wider than this many keys copy their keys contiguous (measured
#                          to pay off); the regular path lays them out the same: same bits


def tile_size(indptr: np.ndarray) -> int:
    """Query nodes per tile: about the mean fan-in, a power of two in 8 .. 32.

    At most 32 so that one tile's product (``T × |U| × E``, about 0.3 M multiply-adds for a
    window of 128) stays below the size where OpenBLAS splits a product across threads:
    a panel is thousands of such products in a row, and split ones cost up to 40 times as
    much wall time on a machine whose cores are busy (measured: docs/design.md).

    Examples
    --------
    >>> tile_size(np.arange(0, 1321, 132)), tile_size(np.arange(0, 201, 20))
    (32, 16)
    """
    nodes = max(len(indptr) - 1, 1)
    mean = max((indptr[-1] - indptr[0]) / nodes, 1.0)
    return int(2 ** np.clip(np.round(np.log2(mean)), 3, 5))


class Tiles:
    """Tiles of ``size`` consecutive query nodes of one group and their key unions.

    Parameters
    ----------
    indptr : ndarray, shape (G·L + 1,)
        A route table's rows (query node ``u`` owns routes ``indptr[u]:indptr[u + 1]``).
    keys : ndarray, shape (R,)
        Every route's key index, ascending within each row.
    n_queries, n_keys : int
        ``L`` and ``S``; the key rows of group ``g`` are ``g · S + j``.
    size : int, optional
        Query nodes per tile (default :func:`tile_size`).
    dim : int
        The widest feature size (``max(E, Ev)``): batches are cut so that neither the
        blocks nor the gathered keys and values pass :data:`PANEL_ENTRIES` entries.
    runs : tuple of ndarray, optional
        The table's runs of consecutive keys, :func:`~routing_sim.routes.route_set.key_runs`
        (found here when not given).

    Examples
    --------
    >>> indptr, keys = np.array([0, 1, 3, 5]), np.array([0, 0, 1, 1, 2])
    >>> tiles = Tiles(indptr, keys, 3, 3, size=2)
    >>> q = k = np.eye(3)
    >>> tiles.dots(q, k).tolist()                       # q_i · k_j of every route
    [1.0, 0.0, 1.0, 0.0, 1.0]
    >>> tiles.pull(np.ones(5), np.eye(3)).tolist()      # Σ_j w_ij v_j of every row
    [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    """

    def __init__(self, indptr: np.ndarray, keys: np.ndarray, n_queries: int, n_keys: int,
                 size: int | None = None, dim: int = 64,
                 runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        self.size = tile_size(indptr) if size is None else int(size)
        self.dim = int(dim)                                            # widest of E, Ev
        self.n_nodes, self.n_routes = len(indptr) - 1, int(indptr[-1])
        self.n_queries, self.n_keys = n_queries, n_keys
        per_group = -(-n_queries // self.size)                        # tiles per group
        groups = self.n_nodes // max(n_queries, 1)
        first = (np.arange(groups)[:, None] * n_queries
                 + np.minimum(np.arange(per_group) * self.size, n_queries)[None, :])
        self.first = first.reshape(-1)                                 # (tiles,) first node
        self.rows = np.minimum(self.first + self.size,
                               np.repeat(np.arange(1, groups + 1) * n_queries, per_group)
                               ) - self.first                         # (tiles,) nodes in it
        self.route_start = indptr[self.first]                          # (tiles,)
        self.route_stop = indptr[self.first + self.rows]
        runs = key_runs(indptr, keys) if runs is None else runs
        run_node = runs[2]                                             # (runs,)
        run_tile = (run_node // max(n_queries, 1)) * per_group + \
            (run_node % max(n_queries, 1)) // self.size
        self.union_start, self.union_stop, self.union_tile, run_interval, column0 = _unions(
            keys[runs[0]], runs[1], run_tile, len(self.first), n_keys)
        self.width = np.bincount(self.union_tile, self.union_stop - self.union_start,
                                 minlength=len(self.first)).astype(np.int64)  # (tiles,) |U|
        self.entries = int((self.rows * self.width).sum())
        self.panels, rank = self._panels()
        # Each route's slot in its panel's blocks: rank·T·|U| + row·|U| + column, where
        # column = key + (the run's interval offset - the interval's first key).
        shift = (rank[run_tile] * self.rows[run_tile] * self.width[run_tile]
                 + (run_node - self.first[run_tile]) * self.width[run_tile]
                 + column0[run_interval] - self.union_start[run_interval])  # (runs,)
        self.keys = keys                                               # (R,) the table's
        self.run_first, self.run_length, self.run_shift = runs[0], runs[1], shift  # (runs,)
        self.tile_runs = np.searchsorted(runs[0], np.stack([self.route_start,
                                                            self.route_stop]))  # (2, tiles)
        self.regular = self._cut_regular()

    def _slots(self, tiles: np.ndarray, routes: np.ndarray | slice) -> np.ndarray:
        """Each route's slot in its panel's blocks: ``rank·T·|U| + row·|U| + column``,
        with ``column = key + shift`` per run (built a panel at a time: no (R,) array)."""
        runs: slice | np.ndarray
        if isinstance(routes, slice):
            runs = slice(int(self.tile_runs[0, tiles[0]]), int(self.tile_runs[1, tiles[-1]]))
        else:
            runs = concat_ranges(self.tile_runs[0, tiles], self.tile_runs[1, tiles])
        return self.keys[routes] + np.repeat(self.run_shift[runs], self.run_length[runs])

    @property
    def waste(self) -> float:
        """Block entries per route: 1 is a perfect fit."""
        return self.entries / max(self.n_routes, 1)

    def worthwhile(self) -> bool:
        return self.n_routes > 0 and self.waste <= MAX_WASTE

    def _panels(self) -> tuple[list[tuple[np.ndarray, int, int]], np.ndarray]:
        """``(tiles, T, |U|)`` batches of one shape, at most PANEL_ENTRIES a batch, and each
        tile's rank in its batch."""
        panels, rank = [], np.zeros(len(self.first), dtype=np.int64)
        shapes = self.rows * (self.width.max(initial=0) + 1) + self.width
        order = np.argsort(shapes, kind="stable")
        bounds = np.flatnonzero(np.diff(shapes[order])) + 1
        for same in np.split(order, bounds):
            if not len(same) or self.width[same[0]] == 0:
                continue
            rows, width = int(self.rows[same[0]]), int(self.width[same[0]])
            step = max(1, PANEL_ENTRIES // (width * max(rows, self.dim)))  # block, keys
            for at in range(0, len(same), step):
                panels.append((same[at:at + step], rows, width))
                rank[same[at:at + step]] = np.arange(len(same[at:at + step]))
        return panels, rank

    def _cut_regular(self) -> list[RegularPanel | None]:
        """Each panel's :class:`RegularPanel` (None: the general path). A panel whose every
        group's tiles are regular is cut into those groups and into batches of at most
        :data:`REGULAR_ENTRIES` (the buffers stay in cache; each tile's product is the same
        gemm call whatever batch it is in, so the same bits)."""
        panels: list[tuple[np.ndarray, int, int]] = []
        regular: list[RegularPanel | None] = []
        for tiles, rows, width in self.panels:
            group = self.first[tiles] // max(self.n_queries, 1)
            parts = np.split(tiles, np.flatnonzero(np.diff(group)) + 1)   # one group each
            found = [self._regular(part, rows, width) for part in parts]
            if any(whole is None for whole in found):   # the general path, the whole panel
                panels.append((tiles, rows, width))
                regular.append(None)
                continue
            step = max(1, REGULAR_ENTRIES // (width * max(rows, self.dim)))
            for part, whole in zip(parts, found):
                assert whole is not None
                for at in range(0, len(part), step):
                    panels.append((part[at:at + step], rows, width))
                    regular.append(whole.part(at, min(at + step, len(part))))
        self.panels = panels
        return regular

    def _regular(self, tiles: np.ndarray, rows: int, width: int) -> RegularPanel | None:
        """The panel as a :class:`RegularPanel` when its tiles are consecutive tiles of one
        group that repeat the first one, shifted (a window, a band), else None."""
        n = len(tiles)
        if n < 2 or (np.diff(tiles) != 1).any() or \
                self.first[tiles[0]] // max(self.n_queries, 1) != \
                (self.first[tiles[-1]] + rows - 1) // max(self.n_queries, 1):
            return None
        if (self.route_stop[tiles] - self.route_start[tiles]
                != self.route_stop[tiles[0]] - self.route_start[tiles[0]]).any():
            return None
        rank = np.arange(n)[:, None]                                   # (n, 1)
        # The key unions: the same intervals in every tile, each moved a fixed step.
        lo, hi = np.searchsorted(self.union_tile, [tiles[0], tiles[-1] + 1])
        if (hi - lo) % n:
            return None
        start = self.union_start[lo:hi].reshape(n, -1)                 # (n, intervals)
        length = self.union_stop[lo:hi].reshape(n, -1) - start
        step = start[1] - start[0]
        if (self.union_tile[lo:hi].reshape(n, -1) != tiles[:, None]).any() or \
                (length != length[0]).any() or (step < 0).any() or \
                (start != start[0] + rank * step).any():
            return None
        # The routes: the same block entries in every tile, moved rank·T·|U|.
        first_run, stop_run = self.tile_runs[0, tiles], self.tile_runs[1, tiles]
        if (stop_run - first_run != stop_run[0] - first_run[0]).any():
            return None
        runs = slice(int(first_run[0]), int(stop_run[-1]))
        run_length = self.run_length[runs].reshape(n, -1)              # (n, runs a tile)
        entry = (self.keys[self.run_first[runs]] + self.run_shift[runs]).reshape(n, -1) \
            - rank * rows * width
        if (run_length != run_length[0]).any() or (entry != entry[0]).any():
            return None
        routes = slice(int(self.route_start[tiles[0]]), int(self.route_stop[tiles[0]]))
        base = self.first[tiles[0]] // max(self.n_queries, 1) * self.n_keys   # g · S
        column = np.cumsum(length[0]) - length[0]
        intervals = [(int(c), int(size), int(base + s), int(d))
                     for c, size, s, d in zip(column, length[0], start[0], step)]
        entries = self._slots(tiles[:1], routes) % (rows * width)      # row·|U| + column
        return RegularPanel(entries, intervals, n)

    def _panel(self, tiles: np.ndarray, rows: int, width: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | slice]:
        """``(nodes (n, T), key rows (n, |U|), routes)`` of one panel."""
        nodes = self.first[tiles][:, None] + np.arange(rows)           # (n, T)
        mine = np.isin(self.union_tile, tiles) if len(tiles) < len(self.first) else \
            np.ones(len(self.union_tile), bool)
        group = np.repeat(self.first[tiles] // max(self.n_queries, 1), width)
        key_rows = (concat_ranges(self.union_start[mine], self.union_stop[mine])
                    + group * self.n_keys).reshape(len(tiles), width)  # (n, |U|) g·S + j
        routes: np.ndarray | slice
        if (np.diff(tiles) == 1).all():                                # consecutive tiles
            routes = slice(int(self.route_start[tiles[0]]), int(self.route_stop[tiles[-1]]))
        else:
            routes = concat_ranges(self.route_start[tiles], self.route_stop[tiles])
        return nodes, key_rows, routes

    def dots(self, query: np.ndarray, key: np.ndarray, out: np.ndarray | None = None
             ) -> np.ndarray:
        """``q_u · k_j`` of every route (unscaled), for ``query (G·L, E)``, ``key (G·S, E)``."""
        out = np.zeros(self.n_routes, dtype=query.dtype) if out is None else out  # (R,)
        scratch = Scratch()                            # one call's: calls may run at once
        for (tiles, rows, width), regular in zip(self.panels, self.regular):
            if regular is not None:
                self._regular_dots(query, key, tiles, rows, width, regular, out, scratch)
                continue
            nodes, key_rows, routes = self._panel(tiles, rows, width)
            keys_t = key[key_rows].transpose(0, 2, 1)                  # (n, E, |U|)
            if width > COPY_WIDTH:
                keys_t = np.ascontiguousarray(keys_t)
            block = np.matmul(query[nodes], keys_t)                    # (n, T, |U|)
            out[routes] = block.reshape(-1)[self._slots(tiles, routes)]
        return out

    def pull(self, shares: np.ndarray, value: np.ndarray, out: np.ndarray | None = None
             ) -> np.ndarray:
        """``Σ_j w_uj v_j`` of every query node, for ``shares (R,)``, ``value (G·S, Ev)``;
        rows of nodes without routes keep what ``out`` holds."""
        if out is None:
            out = np.zeros((self.n_nodes, value.shape[1]), dtype=value.dtype)  # (G·L, Ev)
        scratch = Scratch()
        for (tiles, rows, width), regular in zip(self.panels, self.regular):
            if regular is not None:
                self._regular_pull(shares, value, tiles, rows, width, regular, out, scratch)
                continue
            nodes, key_rows, routes = self._panel(tiles, rows, width)
            weights = np.zeros(len(tiles) * rows * width, dtype=value.dtype)
            weights[self._slots(tiles, routes)] = shares[routes]
            weights_t = weights.reshape(len(tiles), rows, width)          # (n, T, |U|)
            rows_out = nodes.reshape(-1)
            if rows_out[-1] - rows_out[0] == len(rows_out) - 1:       # consecutive: in place
                np.matmul(weights_t, value[key_rows], out=out[rows_out[0]:rows_out[-1] + 1]
                          .reshape(len(tiles), rows, value.shape[1]))
            else:
                out[rows_out] = np.matmul(weights_t, value[key_rows]).reshape(-1, value.shape[1])
        return out

    def _regular_dots(self, query: np.ndarray, key: np.ndarray, tiles: np.ndarray, rows: int,
                      width: int, regular: RegularPanel, out: np.ndarray, scratch: Scratch
                      ) -> None:
        """:meth:`dots` of a regular panel: the same operands in the same layout, built by
        strided copies (so the same bits), and the routes taken by one pattern."""
        n, dim = len(tiles), key.shape[1]
        first = int(self.first[tiles[0]])
        queries = np.ascontiguousarray(query[first:first + n * rows]
                                       ).reshape(n, rows, dim)        # (n, T, E) as query[nodes]
        if width > COPY_WIDTH:                         # the layout dots() copies into
            keys_t = regular.gather_transposed(key, scratch.take("keys", (n, dim, width),
                                                                 key.dtype))  # (n, E, |U|)
        else:
            keys_t = regular.gather(key, scratch.take("keys", (n, width, dim), key.dtype)
                                    ).transpose(0, 2, 1)               # (n, E, |U|)
        dtype = np.result_type(query, key)
        block = np.matmul(queries, keys_t, out=scratch.take("block", (n, rows, width), dtype))
        routes = slice(int(self.route_start[tiles[0]]), int(self.route_stop[tiles[-1]]))
        regular.take(block, out[routes])

    def _regular_pull(self, shares: np.ndarray, value: np.ndarray, tiles: np.ndarray,
                      rows: int, width: int, regular: RegularPanel, out: np.ndarray,
                      scratch: Scratch) -> None:
        """:meth:`pull` of a regular panel: the same weights and values as the general
        path, built by one pattern and strided copies (so the same bits)."""
        n = len(tiles)
        first = int(self.first[tiles[0]])
        routes = slice(int(self.route_start[tiles[0]]), int(self.route_stop[tiles[-1]]))
        weights = regular.scatter(shares[routes], scratch.take(
            "block", (n, rows * width), value.dtype), scratch.slots(regular, rows * width)
        ).reshape(n, rows, width)                                      # (n, T, |U|)
        values = regular.gather(value, scratch.take("keys", (n, width, value.shape[1]),
                                                    value.dtype))      # (n, |U|, Ev)
        np.matmul(weights, values,
                  out=out[first:first + n * rows].reshape(n, rows, value.shape[1]))


class RowBlocks:
    """Blocks of consecutive query nodes of a full route table (every node reads every key).

    On a full table node ``u = g · L + i`` owns routes ``u · S .. (u + 1) · S``, one per key
    in order, so the scores of a block of a group's rows are one row-major ``(rows, S)``
    matrix: ``Q_block @ K_gᵀ`` writes straight into the route array, and ``W_block @ V_g``
    is every output row of the block. A block holds at most :data:`BLOCK_ENTRIES` routes
    (at least one row), which bounds the temporaries of the softmax that follows each
    product; blocks are few and large, since each is a product OpenBLAS splits across
    threads. They depend on the table's shape alone, never on the delivery schedule.

    Parameters
    ----------
    n_groups, n_queries, n_keys : int
        ``G``, ``L`` and ``S`` of the table.
    entries : int, optional
        Routes per block (rounded down to whole rows, at least one).

    Examples
    --------
    >>> blocks = RowBlocks(2, 3, 4, entries=8)
    >>> blocks.blocks                                  # (group, first row, stop row)
    [(0, 0, 2), (0, 2, 3), (1, 0, 2), (1, 2, 3)]
    >>> q = k = np.eye(4)[None, :3]                     # (G=1, L=3, E=4), keys (1, 3, 4)
    >>> blocks = RowBlocks(1, 3, 3)
    >>> scores = np.zeros(9)
    >>> blocks.dots(q, k, *blocks.blocks[0], out=scores).tolist()     # the block (rows, S)
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    >>> scores.tolist()                                # written in place: q_i · k_j by route
    [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    >>> blocks.pull(scores, np.arange(6.0).reshape(1, 3, 2), 0, 0, 3,
    ...             out=np.zeros((3, 2))).tolist()
    [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    """

    def __init__(self, n_groups: int, n_queries: int, n_keys: int,
                 entries: int = BLOCK_ENTRIES) -> None:
        self.n_queries, self.n_keys = n_queries, n_keys
        rows = max(1, min(n_queries, entries // max(n_keys, 1)))        # rows per block
        self.blocks = [(group, first, min(first + rows, n_queries))
                       for group in range(n_groups) for first in range(0, n_queries, rows)]

    def routes(self, group: int, first: int, stop: int) -> slice:
        """The route ids of rows ``first:stop`` of ``group``: one slice."""
        start = (group * self.n_queries + first) * self.n_keys
        return slice(start, start + (stop - first) * self.n_keys)

    def dots(self, query: np.ndarray, key: np.ndarray, group: int, first: int, stop: int,
             out: np.ndarray) -> np.ndarray:
        """``q_i · k_j`` (unscaled) of one block's routes into ``out (R,)``, for ``query
        (G, L, E)`` and ``key (G, S, E)``; returns the block ``(rows, S)``."""
        block = out[self.routes(group, first, stop)].reshape(stop - first, self.n_keys)
        return np.matmul(query[group, first:stop], key[group].T, out=block)  # (rows, S)

    def pull(self, shares: np.ndarray, value: np.ndarray, group: int, first: int, stop: int,
             out: np.ndarray) -> np.ndarray:
        """``Σ_j w_ij v_j`` of one block's rows into ``out (G·L, Ev)``, for ``shares (R,)``
        and ``value (G, S, Ev)``; returns the rows ``(rows, Ev)``."""
        weights = shares[self.routes(group, first, stop)].reshape(stop - first, self.n_keys)
        nodes = slice(group * self.n_queries + first, group * self.n_queries + stop)
        return np.matmul(weights, value[group], out=out[nodes])       # (rows, Ev)


class SpanBlocks:
    """Blocks of consecutive query nodes of a table whose every row is one run of keys.

    A dense causal or padding mask gives each query one interval of keys, and neighbouring
    queries nearly the same one. A block of ``T`` consecutive nodes of one group then reads
    the keys ``lo:hi`` (the union of its rows' intervals): one product ``Q_block @
    K[lo:hi]ᵀ`` holds every score of the block, key-aligned, and row ``r``'s routes are
    its columns ``first_r - lo .. first_r - lo + count_r`` in source order, so a boolean
    mask moves them to and from the route array (consecutive nodes own one slice of it).
    ``T`` is the largest power of two (up to ``L``) whose blocks hold at most
    :data:`SPAN_WASTE` entries per route, and a block at most :data:`BLOCK_ENTRIES`: a
    causal triangle of 2,048 rows takes 8 blocks of 256 per group, products large enough
    for OpenBLAS's threads. The blocks depend on the table alone, never on the delivery
    schedule.

    Examples
    --------
    >>> causal = np.tril(np.ones((4, 4), dtype=bool))            # one group, L = S = 4
    >>> indptr = np.concatenate(([0], np.cumsum(causal.sum(axis=1))))
    >>> spans = SpanBlocks.of(indptr, np.nonzero(causal)[1], 4)
    >>> spans.size, spans.blocks                               # (first node, stop, lo, hi)
    (4, [(0, 4, 0, 4)])
    >>> spans.masks(*spans.blocks[0])[0].astype(int).tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    >>> q = k = np.eye(4)
    >>> spans.dots(q, k, *spans.blocks[0]).tolist() == np.eye(4).tolist()  # (rows, hi - lo)
    True
    >>> SpanBlocks.of(np.array([0, 2]), np.array([0, 2]), 1) is None   # keys 0 and 2
    True
    """

    def __init__(self, indptr: np.ndarray, first: np.ndarray, n_queries: int,
                 n_keys: int, size: int) -> None:
        self.indptr, self.first, self.size = indptr, first, size
        self.n_queries, self.n_keys = n_queries, n_keys
        self._geometries: dict[tuple[int, bytes, bytes],
                               tuple[np.ndarray, np.ndarray | None]] = {}
        counts = np.diff(indptr)                                       # (G·L,)
        self.blocks: list[tuple[int, int, int, int]] = []
        for start in range(0, len(counts), n_queries):                 # one group at a time
            for at in range(start, start + n_queries, size):
                stop = min(at + size, start + n_queries)
                busy = counts[at:stop] > 0
                if not busy.any():
                    continue
                lo = int(first[at:stop][busy].min())
                hi = int((first[at:stop] + counts[at:stop])[busy].max())
                rows = max(1, BLOCK_ENTRIES // (hi - lo))              # cap one block's size
                for part in range(at, stop, rows):
                    self.blocks.append((part, min(part + rows, stop), lo, hi))
        self._work: np.ndarray | None = None

    @classmethod
    def of(cls, indptr: np.ndarray, keys: np.ndarray, n_queries: int,
           n_keys: int | None = None) -> SpanBlocks | None:
        """The blocks of a table (``indptr (G·L + 1,)``, ``keys (R,)``), or None when some
        row is not one run of consecutive keys."""
        n_keys = int(keys.max(initial=-1)) + 1 if n_keys is None else n_keys
        counts = np.diff(indptr)                                       # (G·L,)
        busy = counts > 0
        first = np.zeros(len(counts), dtype=np.int64)
        first[busy] = keys[indptr[:-1][busy]]                          # each row's lowest key
        if len(keys) == 0 or n_queries == 0 or \
                (keys[indptr[1:][busy] - 1] - first[busy] + 1 != counts[busy]).any():
            return None                                                # a row with a gap
        return cls.of_runs(indptr, first, n_queries, n_keys)

    @classmethod
    def of_runs(cls, indptr: np.ndarray, first: np.ndarray, n_queries: int,
                n_keys: int) -> SpanBlocks | None:
        """The blocks of a table whose row ``u`` is the keys ``first[u] .. first[u] +
        count - 1`` (``first (G·L,)``, any value for a row with no route), or None when it
        has no route."""
        counts = np.diff(indptr)                                       # (G·L,)
        busy = counts > 0
        first = np.where(busy, first, 0).astype(np.int64, copy=False)
        routes = int(indptr[-1])
        if routes == 0 or n_queries == 0:
            return None
        end = first + counts
        groups, size = len(counts) // n_queries, 8
        while 2 * size <= n_queries:                                   # the largest T that fits
            bigger = 2 * size
            pad = -(-n_queries // bigger) * bigger - n_queries
            low = np.pad(np.where(busy, first, n_keys).reshape(groups, n_queries),
                         ((0, 0), (0, pad)), constant_values=n_keys)
            high = np.pad(np.where(busy, end, 0).reshape(groups, n_queries),
                          ((0, 0), (0, pad)), constant_values=0)
            width = np.maximum(high.reshape(groups, -1, bigger).max(axis=2)
                               - low.reshape(groups, -1, bigger).min(axis=2), 0)  # (G, tiles)
            rows = np.minimum(bigger, n_queries - np.arange(width.shape[1]) * bigger)
            if (width * rows).sum() > SPAN_WASTE * routes:
                break
            size = bigger
        return cls(indptr, first, n_queries, n_keys, min(size, n_queries))

    def routes(self, first: int, stop: int) -> slice:
        """The route ids of nodes ``first:stop``: one slice."""
        return slice(int(self.indptr[first]), int(self.indptr[stop]))

    def masks(self, first: int, stop: int, lo: int, hi: int
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """A block's ``(filled, padding)``, ``(rows, hi - lo)`` bool each: where its entries
        are routes, and where they are not (None when every entry is one). Built once per
        geometry, read-only (a causal mask's blocks repeat in every group)."""
        start = self.first[first:stop] - lo                            # (rows,) first column
        count = np.diff(self.indptr[first:stop + 1])                   # (rows,)
        geometry = (hi - lo, start.tobytes(), count.tobytes())
        masks = self._geometries.get(geometry)
        if masks is None:
            column = np.arange(hi - lo)                                # (hi - lo,) key j - lo
            filled = (column >= start[:, None]) & (column < (start + count)[:, None])
            padding = None if filled.all() else ~filled
            for mask in (filled, padding):
                if mask is not None:
                    mask.flags.writeable = False
            masks = self._geometries[geometry] = (filled, padding)
        return masks

    def work(self, first: int, stop: int, lo: int, hi: int, dtype: np.dtype) -> np.ndarray:
        """A block's ``(rows, hi - lo)`` work array (contents undefined): one array for
        every block, of the largest's size, made on first use and kept until
        :meth:`release` (the softmax's products and the pull's weights take turns in it,
        so its pages fault once)."""
        if self._work is None or self._work.dtype != dtype:
            largest = max((end - start) * (top - bottom)
                          for start, end, bottom, top in self.blocks)
            self._work = np.empty(largest, dtype=dtype)
        return self._work[:(stop - first) * (hi - lo)].reshape(stop - first, hi - lo)

    def release(self) -> None:
        """Let the work array and the masks go (the run keeps its blocks, not their
        work)."""
        self._work = None
        self._geometries.clear()

    def parts(self, first: int, stop: int, lo: int, hi: int) -> list[tuple[int, int]]:
        """A block's rows in parts of at most :data:`SPAN_PART_ENTRIES` entries (at least
        one row): ``[(first node, stop), ...]``, for its row-wise work."""
        rows = max(1, SPAN_PART_ENTRIES // (hi - lo))
        return [(part, min(part + rows, stop)) for part in range(first, stop, rows)]

    def dots(self, query: np.ndarray, key: np.ndarray, first: int, stop: int, lo: int,
             hi: int, out: np.ndarray | None = None) -> np.ndarray:
        """``q_u · k_j`` (unscaled) of a block, for ``query (G·L, E)`` and ``key (G·S, E)``:
        ``(rows, hi - lo)``, key-aligned (into ``out`` when given)."""
        base = first // self.n_queries * self.n_keys                   # g · S
        return np.matmul(query[first:stop], key[base + lo:base + hi].T, out=out)

    def pull(self, weights: np.ndarray, value: np.ndarray, first: int, stop: int, lo: int,
             hi: int, out: np.ndarray) -> np.ndarray:
        """``Σ_j w_uj v_j`` of a block's rows into ``out (G·L, Ev)``, for its key-aligned
        ``weights (rows, hi - lo)`` (0 off the routes) and ``value (G·S, Ev)``."""
        base = first // self.n_queries * self.n_keys                   # g · S
        return np.matmul(weights, value[base + lo:base + hi], out=out[first:stop])


class RaggedRows:
    """Blocks of consecutive query nodes of similar fan-in, each a padded ``(rows, width)``
    matrix: the row-wise work (softmax) of a route table whose rows differ in length.

    Node ``u``'s routes are ``indptr[u]:indptr[u + 1]``, so a block of consecutive nodes
    owns one slice of the route array. Row ``r`` of the block holds its node's routes in
    columns ``0 .. count - 1`` (source order) and padding after them; ``width`` is the
    block's longest row. A block holds nodes whose fan-ins lie in one band
    ``[SPREAD^b, SPREAD^(b+1))``, so padding stays below a quarter of a block, and at most
    :data:`PANEL_ENTRIES` entries (at least one row). A causal triangle of ``L`` rows is
    about ``log(L) / log(SPREAD)`` blocks per group; nodes without routes are in none. The
    blocks depend on the table alone, never on the delivery schedule.

    Parameters
    ----------
    indptr : ndarray, shape (G·L + 1,)
        A route table's rows.
    entries : int, optional
        Padded entries per block (rounded down to whole rows, at least one).

    Examples
    --------
    >>> ragged = RaggedRows(np.array([0, 1, 3, 3, 13, 24]))  # fan-ins 1, 2, 0, 10, 11
    >>> ragged.blocks                                         # (first node, stop, width)
    [(0, 1, 1), (1, 2, 2), (3, 5, 11)]
    >>> filled = ragged.filled(*ragged.blocks[2])              # (2, 11): routes, then padding
    >>> filled.sum(axis=1).tolist(), ragged.routes(3, 5)
    ([10, 11], slice(3, 24, None))
    """

    def __init__(self, indptr: np.ndarray, entries: int = PANEL_ENTRIES) -> None:
        self.indptr = indptr
        counts = np.diff(indptr)                                       # (G·L,) fan-in
        band = np.full(len(counts), -1, dtype=np.int64)                # -1: no route
        busy = counts > 0
        band[busy] = np.floor(np.log(counts[busy]) / np.log(SPREAD)).astype(np.int64)
        starts = np.flatnonzero(np.diff(band, prepend=-2) != 0)        # (runs,) of one band
        stops = np.append(starts[1:], len(counts))
        self.blocks: list[tuple[int, int, int]] = []
        for first, stop in zip(starts.tolist(), stops.tolist()):
            if band[first] < 0:
                continue
            widest = int(counts[first:stop].max())
            rows = max(1, entries // widest)
            for at in range(first, stop, rows):
                end = min(at + rows, stop)
                self.blocks.append((at, end, int(counts[at:end].max())))

    def worthwhile(self) -> bool:
        """Whether the blocks beat stacking the rows of each distinct fan-in: every call
        they save is worth :data:`CALL_ROUTES` routes of the copies padding costs (a
        window's rows, nearly all of one fan-in, stay stacked; a causal triangle's 2,048
        fan-ins become a few dozen blocks)."""
        counts = np.diff(self.indptr)
        saved = np.count_nonzero(np.bincount(counts)[1:]) - len(self.blocks)  # fan-ins
        return saved * CALL_ROUTES > int(self.indptr[-1] - self.indptr[0])

    def routes(self, first: int, stop: int) -> slice:
        """The route ids of nodes ``first:stop``: one slice."""
        return slice(int(self.indptr[first]), int(self.indptr[stop]))

    def filled(self, first: int, stop: int, width: int) -> np.ndarray:
        """``(rows, width)`` bool: where a block's entries are routes (not padding)."""
        counts = np.diff(self.indptr[first:stop + 1])                  # (rows,)
        return np.arange(width) < counts[:, None]


class Scratch:
    """Work arrays reused from batch to batch of one call (no fresh pages a batch), grown
    as needed, at least :data:`REGULAR_ENTRIES` entries each.

    Examples
    --------
    >>> scratch = Scratch()
    >>> first = scratch.take("block", (2, 3), np.dtype(np.float64))
    >>> scratch.take("block", (3, 2), np.dtype(np.float64)).base is first.base
    True
    """

    def __init__(self) -> None:
        self.held: dict[str, np.ndarray] = {}
        self.held_slots: tuple[np.ndarray, int, np.ndarray] | None = None

    def slots(self, panel: RegularPanel, entries: int) -> np.ndarray:
        """``panel.slots(entries)``, kept while the next panels share its pattern (the
        batches of one group: the first is the largest, and the others' slots are the
        first ones of its)."""
        size = panel.tiles * len(panel.pattern)
        held = self.held_slots
        if held is None or held[0] is not panel.pattern or held[1] != entries or \
                len(held[2]) < size:
            held = self.held_slots = (panel.pattern, entries, panel.slots(entries))
        return held[2][:size]

    def take(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A ``shape`` array of ``dtype`` (its contents undefined), reusing ``name``'s."""
        size = int(np.prod(shape))
        held = self.held.get(name)
        if held is None or held.dtype != dtype or held.size < size:
            held = self.held[name] = np.empty(max(size, REGULAR_ENTRIES), dtype=dtype)
        return held[:size].reshape(shape)


def _unions(run_start: np.ndarray, run_length: np.ndarray, run_tile: np.ndarray,
            n_tiles: int, n_keys: int) -> tuple[np.ndarray, ...]:
    """Merge every tile's runs into its key union: intervals of keys, sorted by tile.

    Returns ``(start, stop, tile)`` of the intervals, each run's interval and each
    interval's first column in its tile's union.
    """
    if not len(run_start):                                             # no route at all
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    span = n_keys + 1                                                  # keeps tiles apart
    lo = run_tile.astype(np.int64) * span + run_start                  # (runs,) by tile, key
    order = np.argsort(lo, kind="stable")
    lo = lo[order]
    hi = lo + run_length[order]
    reach = np.maximum.accumulate(hi) if len(hi) else hi
    opens = np.ones(len(lo), dtype=bool)
    opens[1:] = lo[1:] > reach[:-1]
    closes = np.append(np.flatnonzero(opens)[1:] - 1, len(lo) - 1)
    start, stop = lo[opens], reach[closes]
    tile = start // span
    start, stop = start - tile * span, stop - tile * span
    run_interval = np.empty(len(order), dtype=np.int64)
    run_interval[order] = np.cumsum(opens) - 1
    length = stop - start
    offset = np.cumsum(length) - length                                # in all unions together
    first = np.minimum(np.searchsorted(tile, np.arange(n_tiles)), max(len(start) - 1, 0))
    column0 = offset - offset[first][tile] if len(start) else offset
    return start, stop, tile, run_interval, column0
