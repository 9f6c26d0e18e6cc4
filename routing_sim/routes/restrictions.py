"""Route restrictions on a sparse route set: one entry per route, never an ``L × S`` array.

When ``graph`` is a :class:`~routing_sim.RouteSet`, a ``mask_mod`` is given, or key spans
(``window_size``, ``cu_seqlens``: :mod:`routing_sim.routes.spans`) bound the routes,
:func:`~routing_sim.routes.problem.prepare` calls :func:`sparse_routes` instead of building the
dense ``(G, L, S)`` mask: the route set of every group, then each other restriction
(``mask_mod``, ``is_causal``, ``attn_mask``) evaluated on its routes only, and the additive
biases (a float ``attn_mask``, ALiBi) and dropout's kept routes (read from the same
draw as the dense path) as per-route arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

from ..errors import DTypeError, InvalidArgumentError, ShapeError
from ..inputs.masks import route_set
from ..inputs.mods import call_mod
from ..inputs.positions import alibi_distance, check_alibi_slopes, query_positions
from ..options import CAUSAL_ALIGNMENTS, CausalAlignment
from .route_set import RouteSet, batch_head
from .spans import KeySpans

__all__ = ["DENSE_LIMIT", "SparseRoutes", "route_coordinates", "sparse_routes"]

DENSE_LIMIT = 2**25   # largest G·L·S routing_sim materialises densely on its own (256 MB)


class SparseRoutes:
    """The routes of every group and their per-route arrays, in canonical order."""

    def __init__(self, routes: RouteSet, bias: np.ndarray | None, keep: np.ndarray | None):
        self.routes = routes    # G groups
        self.bias = bias        # (R,) added to the scores, or None
        self.keep = keep        # (R,) bool: routes dropout keeps, or None


def route_coordinates(routes: RouteSet) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(b, h, q_idx, kv_idx)``, each ``(R,)``, of every route of ``routes``."""
    group, query = np.divmod(routes.query_node, routes.n_queries)
    batch, head = batch_head(group, routes.batch_shape)
    return batch, head, query, routes.indices


def sparse_routes(graph: nx.DiGraph | RouteSet | None, mask_mod: Callable | None,
                  attn_mask: ArrayLike | None, is_causal: bool,
                  causal_alignment: CausalAlignment, batch_shape: tuple[int, ...],
                  n_queries: int, n_keys: int, dtype: np.dtype,
                  alibi_slopes: ArrayLike | None = None, keep: np.ndarray | None = None,
                  alibi_mode: str = "symmetric", spans: KeySpans | None = None
                  ) -> SparseRoutes:
    """Every route restriction, applied route by route (a route exists where all allow it).

    ``spans`` (window and packed sequences, causality folded in) bound every query's keys;
    without a graph they are the base route set, so only their routes are ever built.
    """
    if causal_alignment not in CAUSAL_ALIGNMENTS:
        raise InvalidArgumentError(f"causal_alignment must be one of {CAUSAL_ALIGNMENTS}, "
                                   f"got {causal_alignment!r}")
    if spans is not None and graph is None:
        routes = spans.routes().broadcast_to(batch_shape)
    else:
        routes = _base(graph, mask_mod, batch_shape, n_queries, n_keys)
    if mask_mod is not None and (graph is not None or spans is not None):
        routes = routes.select(_allowed_by(mask_mod, *route_coordinates(routes)))
    if spans is not None and graph is not None:
        _, _, query, key = route_coordinates(routes)
        routes = routes.select(spans.holds(query, key))
    if is_causal and attn_mask is None and spans is None:
        _, _, query, key = route_coordinates(routes)
        routes = routes.select(key <= query_positions(n_queries, n_keys, causal_alignment)[query])
    bias = None
    if attn_mask is not None:
        allowed, mask_bias = route_set(attn_mask, bool(is_causal), causal_alignment, None,
                                       batch_shape, n_queries, n_keys, dtype)
        routes = routes.select(_gather(allowed, routes))
        bias = None if mask_bias is None else _gather(mask_bias, routes).astype(dtype)
    if alibi_slopes is not None:
        query_position, key_position = (
            query_positions(n_queries, n_keys, causal_alignment), np.arange(n_keys)
        ) if spans is None else (spans.query_positions, spans.key_positions)
        alibi = _alibi(alibi_slopes, routes, query_position, key_position, alibi_mode,
                       spans).astype(dtype)
        bias = alibi if bias is None else bias + alibi
    return SparseRoutes(routes, bias, None if keep is None else _gather(keep, routes))


def _base(graph, mask_mod, batch_shape, n_queries: int, n_keys: int) -> RouteSet:
    """The routes of the graph (a RouteSet or a token graph) or of the mask_mod, per group."""
    if graph is None:
        if mask_mod is None:
            return RouteSet.complete(n_queries, n_keys, batch_shape)
        if not callable(mask_mod):
            raise InvalidArgumentError(f"mask_mod must be a function (b, h, q_idx, kv_idx) -> "
                                       f"bool, got {type(mask_mod).__name__}")
        return RouteSet.from_mask_mod(mask_mod, n_queries, n_keys, batch_shape=batch_shape)
    if isinstance(graph, nx.DiGraph):
        graph = RouteSet.from_graph(graph)
    if not isinstance(graph, RouteSet):
        raise InvalidArgumentError(f"graph must be a networkx.DiGraph or a RouteSet, got "
                                   f"{type(graph).__name__}")
    if (graph.n_queries, graph.n_keys) != (n_queries, n_keys):
        raise ShapeError(f"graph has {graph.n_queries} query tokens and {graph.n_keys} key "
                         f"tokens, but the inputs have L = {n_queries} and S = {n_keys}")
    return graph.broadcast_to(batch_shape)


def _allowed_by(mask_mod: Callable, batch, head, query, key) -> np.ndarray:
    if not callable(mask_mod):
        raise InvalidArgumentError(f"mask_mod must be a function (b, h, q_idx, kv_idx) -> "
                                   f"bool, got {type(mask_mod).__name__}")
    allowed = call_mod(mask_mod, batch, head, query, key)
    if allowed.dtype != bool:
        raise DTypeError(f"mask_mod must return a bool array (True = route allowed), got "
                         f"dtype {allowed.dtype}")
    try:
        return np.broadcast_to(allowed, query.shape)
    except ValueError:
        raise ShapeError(f"mask_mod returned shape {allowed.shape} for {len(query)} routes; "
                         "it must work elementwise") from None


def _gather(array: np.ndarray, routes: RouteSet) -> np.ndarray:
    """The entries of a ``(..., L, S)``-broadcastable array at every route (no dense copy)."""
    group, query = np.divmod(routes.query_node, routes.n_queries)
    full = np.broadcast_to(array, (*routes.batch_shape, routes.n_queries, routes.n_keys))
    batch = np.unravel_index(group, routes.batch_shape) if routes.batch_shape else ()
    return full[tuple(batch) + (query, routes.indices)]


def _alibi(slopes, routes: RouteSet, query_position: np.ndarray, key_position: np.ndarray,
           mode: str, spans: KeySpans | None = None) -> np.ndarray:
    """ALiBi's ``slope · alibi_distance`` per route between the tokens' positions ``(L,)``
    and ``(S,)``; slopes ``(H,)`` or ``(B, H)`` (heads are the last batch dim), or with
    packed sequences and inputs ``(H, total, E)`` one row per sequence ``(n_seqs, H)``, as
    FlashAttention's varlen functions take them."""
    group, query = np.divmod(routes.query_node, routes.n_queries)      # (R,) x2
    distance = alibi_distance(query_position[query], key_position[routes.indices], mode)
    per_sequence = _per_sequence_slopes(slopes, routes.batch_shape, spans)
    if per_sequence is not None and spans is not None:                 # (n_seqs, H)
        # Only (H,) or no batch dims read slopes by sequence: the group is the head (or 0).
        return 0.0 + per_sequence[spans.query_sequence[query], group] * distance
    per_group = np.broadcast_to(check_alibi_slopes(slopes, routes.batch_shape),
                                routes.batch_shape).reshape(-1)        # (G,)
    return 0.0 + per_group[group] * distance


def _per_sequence_slopes(slopes, batch_shape: tuple[int, ...], spans: KeySpans | None
                         ) -> np.ndarray | None:
    """Slopes ``(n_seqs, H)`` of packed sequences, or None when they are not that: only
    inputs with no batch dim besides the heads (``(H, total, E)``, FlashAttention's
    ``(total, H, D)``) read a 2-D slope table by sequence; ``(B, H, ...)`` inputs keep
    reading it by batch element."""
    table = np.asarray(slopes, dtype=np.float64)
    if spans is None or table.ndim != 2 or len(batch_shape) > 1:
        return None
    heads = batch_shape[-1] if batch_shape else 1
    if table.shape != (spans.n_sequences, heads):
        if spans.n_sequences < 2:            # not packed: check_alibi_slopes says what fits
            return None
        raise ShapeError(f"alibi_slopes of shape {table.shape} does not fit {spans.n_sequences} "
                         f"packed sequences of {heads} heads: give (H,) or (n_seqs, H) = "
                         f"{(spans.n_sequences, heads)}")
    if not np.isfinite(table).all():
        raise ShapeError(f"alibi_slopes must be finite slopes, got {table.tolist()}")
    return table
