"""The backward pass's sparse fast path: every gradient of a tiled run in a few products.

When the forward pass took the tile path (:mod:`routing_sim.numerics.tiles`) and lost no route,
the arithmetic inside the backward handlers is a handful of route-proportional products
instead of a Python loop per node::

    dP_ij = dO_i · v_j                       the forward tiles' dots(dO, V)
    dS_ij = w_ij (dP'_ij - Σ_k w_ik dP'_ik + d_lse_i)   segment sums per query node
    dQ_i  = s Σ_j dS'_ij k_j                 the forward tiles' pull(dS', K)
    dV_j  = Σ_i w'_ij dO_i                   tiles over the key-major table: pull(w', dO)
    dK_j  = s Σ_i dS'_ij q_i                 the same tiles: pull(dS', Q)

(``dP'`` is dP through dropout, ``dS'`` dS through score_mod's derivative.) The key-major
table lists each key node's routes by query (a stable sort of the route ids by key node).
A key node read far more often than the mean (an attention sink, a global token) would
make its tile's key union as wide as the sequence, so it is left out of the tiles and
summed alone, a matrix-vector product per chunk of routes.

Like the forward tiles, every product is decided by the route table alone and computed in full
at the first handler that needs it, whatever order the messages come in: the gradients are the
same bits under every schedule. A lost route (``on_missing="degrade"``) carries no share and no
dS, so it adds nothing here; the query and key nodes at its ends then redo their own sums with
the per-node handlers of :mod:`routing_sim.engines.fast.backward`, which also cover what has no
tiles (exact mode, dense route tables).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...numerics.tiles import PANEL_ENTRIES, Tiles
from ...routes.route_set import batch_head
from ..state import ForwardState
from .barrier import gather

__all__ = ["HEAVY", "TiledGradients", "key_major_order"]

HEAVY = 8            # a key node with more than HEAVY x the mean fan-in is summed alone
ROWS_CHUNK = 2**20   # routes per chunk of the softmax Jacobian (bounded temporaries)


def key_major_order(key_node: np.ndarray, n_key_nodes: int) -> np.ndarray:
    """Route ids sorted by key node, in route order within each key node.

    A stable radix sort by 16-bit digits (numpy sorts 16-bit integers by counting):
    measured about twice as fast as ``np.lexsort`` on 17 M routes.

    Examples
    --------
    >>> key_major_order(np.array([2, 0, 1, 0, 70_000]), 70_001).tolist()
    [1, 3, 2, 0, 4]
    """
    order: np.ndarray | None = None
    for shift in range(0, max(int(n_key_nodes - 1).bit_length(), 1), 16):
        nodes = key_node if order is None else key_node[order]
        if shift:
            nodes = np.right_shift(nodes, shift, out=nodes)             # a fresh gather
        step = np.argsort(nodes.astype(np.uint16), kind="stable")      # the low 16 bits
        order = step if order is None else order[step]
    assert order is not None                                           # one pass at least
    return order


class TiledGradients:
    """Every gradient of a tiled forward run, for every node at once.

    Parameters
    ----------
    forward : ForwardState
        A finished forward run that took the tile path.
    upstream : ndarray, shape (G·L, Ev)
        dO.
    by_key, key_indptr : ndarray, shapes (R,) and (G·S + 1,)
        The key-major table: route ids sorted by key node, and each key node's slice.
    slope : callable or None
        score_mod's derivative (``None``: no score_mod).
    """

    def __init__(self, forward: ForwardState, upstream: np.ndarray, by_key: np.ndarray,
                 key_indptr: np.ndarray, slope: Callable | None) -> None:
        assert forward.tiles is not None, "the forward run took the tile path"
        self.forward, self.upstream, self.slope = forward, upstream, slope
        self.tiles = forward.tiles
        self.by_key, self.key_indptr = by_key, key_indptr
        problem, routes = forward.problem, forward.routes
        self.n_groups, self.n_queries, self.n_keys, self.dim, self.value_dim = problem.shape
        self.buffer: np.ndarray | None = None                          # weights, key-major
        fan_in = np.diff(key_indptr)                                   # (G·S,)
        heavy = fan_in > HEAVY * max(len(routes) / max(len(fan_in), 1), 1.0)
        self.heavy = np.flatnonzero(heavy)                             # summed alone
        self.light = by_key if not heavy.any() else by_key[np.repeat(~heavy, fan_in)]
        light_ptr = key_indptr if not heavy.any() else np.concatenate(
            ([0], np.cumsum(np.where(heavy, 0, fan_in))))
        queries = routes.query_node[self.light]                        # (R',) g·L + i
        if self.n_groups > 1:
            np.remainder(queries, self.n_queries, out=queries)         # i, ascending per key
        transposed = Tiles(light_ptr, queries, self.n_keys, self.n_queries,
                           dim=max(self.dim, self.value_dim))
        self.transposed = transposed if transposed.worthwhile() else None  # None: per node

    def scores(self, d_share: np.ndarray, d_score: np.ndarray, d_raw: np.ndarray,
               d_sink: np.ndarray, pulled: np.ndarray, in_softmax: np.ndarray,
               lse_upstream: np.ndarray | None = None) -> None:
        """dP of every pulled route (0 elsewhere), then dS (and dS through score_mod) of
        every route in a softmax (0 elsewhere), and with sinks each node's part of its
        sink's gradient, ``p_sink (d_lse - Σ w dP')``, a chunk of whole query nodes at a
        time (``lse_upstream`` ``(G·L,)``: d_lse, None for 0)."""
        forward, problem, routes = self.forward, self.forward.problem, self.forward.routes
        value = problem.value.reshape(-1, self.value_dim)              # (G·S, Ev)
        self.tiles.dots(self.upstream, value, out=d_share)             # (R,) dO_i · v_j
        if not pulled.all():
            d_share[~pulled] = 0.0
        every = in_softmax.all()
        indptr = routes.indptr
        cuts = np.unique(np.concatenate(
            ([0], np.searchsorted(indptr, np.arange(ROWS_CHUNK, len(routes), ROWS_CHUNK)),
             [routes.n_nodes])))
        for first, last in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            span = slice(int(indptr[first]), int(indptr[last]))
            counts = np.diff(indptr[first:last + 1])                   # (nodes,)
            nodes = np.arange(first, last)[counts > 0]                 # (nodes,) with routes
            counts = counts[counts > 0]
            if not len(counts):
                continue
            starts = np.cumsum(counts) - counts                        # (nodes,) local
            d_prime = d_share[span]
            if forward.kept is None:
                weights = forward.shares[span]                         # w: no dropout
            else:                # w before dropout, as the forward's budget kernel made it
                assert forward.probabilities is not None               # kept with dropout
                weights = forward.probabilities[span]
                d_prime = d_prime * forward.kept[span] * forward.dropout_scale
            through = np.add.reduceat(weights * d_prime, starts)       # (nodes,) Σ w dP'
            if lse_upstream is not None:
                through -= lse_upstream[nodes]                         # Σ w dP' - d_lse
            scores_grad = weights * (d_prime - np.repeat(through, counts))
            if not every:
                scores_grad[~in_softmax[span]] = 0.0
            if forward.sink_shares is not None:
                d_sink[nodes] = -forward.sink_shares[nodes] * through
            d_score[span] = scores_grad
            if self.slope is not None:
                assert forward.raw is not None                         # kept for score_mod
                nodes = routes.query_node[span]
                batch, head = batch_head(nodes // self.n_queries, problem.batch_shape)
                d_raw[span] = scores_grad * self.slope(
                    forward.raw[span], batch, head, nodes % self.n_queries,
                    routes.key_index[span])

    def queries(self, d_query: np.ndarray, d_raw: np.ndarray) -> None:
        """dQ_i = s Σ_j dS'_ij k_j of every query node."""
        key = self.forward.problem.key.reshape(-1, self.dim)           # (G·S, E)
        self.tiles.pull(d_raw, key, out=d_query)
        d_query *= self.forward.problem.scale

    def values(self, d_value: np.ndarray) -> None:
        """dV_j = Σ_i w'_ij dO_i of every key node (w' the pulled shares)."""
        self._key_sums(self.forward.shares, self.upstream, d_value)

    def keys(self, d_key: np.ndarray, d_raw: np.ndarray) -> None:
        """dK_j = s Σ_i dS'_ij q_i of every key node."""
        query = self.forward.problem.query.reshape(-1, self.dim)       # (G·L, E)
        self._key_sums(d_raw, query, d_key)
        d_key *= self.forward.problem.scale

    def _key_sums(self, weights: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[j] = Σ_i weights_ij rows_i`` for every key node ``j``: the light ones by
        the key-major tiles, the heavy ones alone, a chunk of routes at a time."""
        assert self.transposed is not None, "the key side takes the tiles"
        if self.buffer is None or self.buffer.dtype != weights.dtype:
            self.buffer = np.empty(len(self.light), weights.dtype)     # (R',) key-major
        self.transposed.pull(np.take(weights, self.light, out=self.buffer), rows, out=out)
        query_node, step = self.forward.routes.query_node, max(PANEL_ENTRIES // out.shape[1], 1)
        for node in self.heavy.tolist():
            mine = self.by_key[self.key_indptr[node]:self.key_indptr[node + 1]]
            total = np.zeros(out.shape[1], dtype=out.dtype)
            for at in range(0, len(mine), step):
                part = mine[at:at + step]
                total += weights[part] @ gather(rows, query_node[part])
            out[node] = total

