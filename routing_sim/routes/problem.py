"""Checks and normalises the arguments shared by :func:`attention` and :func:`simulate`.

Both entry points call :func:`prepare` first, so they accept and reject exactly the same
inputs, and the engines below them work on one flat form: ``G`` independent routing
groups (every batch element and head), each with ``L`` query and ``S`` key tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

from ..errors import DTypeError, InvalidArgumentError, ShapeError
from ..inputs.arrays import as_numpy
from ..inputs.masks import Window, check_cu_seqlens, check_window_size, route_set
from ..inputs.positions import (
    RotaryEmbedding,
    alibi_bias,
    as_rotary,
    check_alibi_mode,
    check_alibi_slopes,
    rotary_positions,
)
from ..inputs.sinks import group_sinks
from ..options import CAUSAL_ALIGNMENTS, EMPTY_ROWS, CausalAlignment, EmptyRows, check_choice
from .graphs import graph_mask
from .restrictions import DENSE_LIMIT, SparseRoutes, sparse_routes
from .route_set import RouteSet
from .spans import key_spans

__all__ = ["EMPTY_ROWS", "Problem", "prepare"]



@dataclass(frozen=True)
class Problem:
    """Validated attention inputs, flattened to ``G`` routing groups."""

    query: np.ndarray        # (G, L, E)
    key: np.ndarray          # (G, S, E)
    value: np.ndarray        # (G, S, Ev)
    allowed: np.ndarray | None  # (G, L, S) bool: which routes exist (None: see sparse)
    bias: np.ndarray | None  # (G, L, S) added to scores, or None
    keep: np.ndarray | None  # (G, L, S) bool: routes dropout keeps, or None
    dropout_p: float
    scale: float
    batch_shape: tuple[int, ...]
    empty_rows: str
    origin: dict | None = None  # input shapes, GQA group size and rotation: for gradients
    sparse: SparseRoutes | None = None  # per-route form (then allowed/bias/keep are None)
    score_mod: Callable | None = None   # FlexAttention score_mod, applied before bias
    sinks: np.ndarray | None = None     # (G,) each group's sink logit, or None

    @property
    def dense_allowed(self) -> np.ndarray:
        """``allowed`` of the dense form ``(G, L, S)``; the sparse form has none."""
        if self.allowed is None:
            raise TypeError("a sparse problem has no dense allowed mask: use .sparse")
        return self.allowed

    @property
    def sparse_form(self) -> SparseRoutes:
        """``sparse`` of the per-route form; the dense form has none."""
        if self.sparse is None:
            raise TypeError("a dense problem has no per-route form: use .allowed")
        return self.sparse

    def to_inputs(self, grad: np.ndarray, which: str) -> np.ndarray:
        """Carry a gradient ``(G, T, F)`` back to the caller's ``query``/``key``/``value``.

        Undoes, in reverse, what :func:`prepare` did: broadcasting over batch dims, the
        GQA repeat of key/value heads, and the rotary rotation of queries and keys.
        """
        origin = self.origin
        assert origin is not None, "prepare() records where the inputs came from"
        grad = grad.reshape(*self.batch_shape, *grad.shape[1:])
        rotary = origin["rotary"]
        if rotary is not None and which != "value":
            grad = rotary.rotate(grad, origin[f"{which}_positions"], transpose=True)
        shape = origin[f"{which}_shape"]
        group = origin["kv_group"] if which != "query" else 1
        if group > 1:
            repeated = (*shape[:-3], shape[-3] * group, *shape[-2:])
            grad = _unbroadcast(grad, repeated)
            grad = grad.reshape(*shape[:-3], shape[-3], group, *shape[-2:]).sum(axis=-3)
        return _unbroadcast(grad, shape)

    def to_sinks(self, grad: np.ndarray) -> np.ndarray:
        """Carry the sinks' gradient ``(G,)`` back to the caller's ``sinks``: (H,) or (1,)."""
        assert self.origin is not None, "prepare() records where the inputs came from"
        shape = self.origin["sinks_shape"]
        return _unbroadcast(grad.reshape(self.batch_shape or (1,)), shape)

    @property
    def dtype(self) -> np.dtype:
        return self.query.dtype

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``(G, L, S, E, Ev)``."""
        groups, n_queries, dim = self.query.shape
        return groups, n_queries, self.key.shape[1], dim, self.value.shape[2]

    def upstream(self, d_output: ArrayLike) -> np.ndarray:
        """The upstream gradient, checked against the output's shape, flattened to groups."""
        groups, n_queries, _, _, value_dim = self.shape
        upstream = self._gradient("d_output", d_output, (*self.batch_shape, n_queries, value_dim),
                                  "the output's shape")
        return upstream.reshape(groups, n_queries, value_dim)

    def upstream_lse(self, d_lse: ArrayLike | None) -> np.ndarray | None:
        """The log-sum-exp's upstream gradient ``(..., L)``, checked against the lse's
        shape, flattened to ``(G·L,)`` (None stays None: the loss does not read the lse)."""
        if d_lse is None:
            return None
        groups, n_queries = self.shape[:2]
        gradient = self._gradient("d_lse", d_lse, (*self.batch_shape, n_queries),
                                  "the log-sum-exp's shape")
        return gradient.reshape(groups * n_queries)

    def _gradient(self, name: str, value: ArrayLike, expected: tuple[int, ...],
                  what: str) -> np.ndarray:
        """An upstream gradient checked (``expected``, ``what`` names that shape; finite
        real numbers) and cast to the problem's dtype."""
        gradient = as_numpy(name, value)
        if gradient.shape != expected:
            raise ShapeError(f"{name} must have {what} {expected}, got {gradient.shape}")
        if gradient.dtype.kind not in "fiu" or not np.isfinite(gradient).all():
            raise InvalidArgumentError(f"{name} must hold finite real numbers")
        return gradient.astype(self.dtype)

    def per_route(self, name: str, query_node: Callable[[], np.ndarray],
                  key_index: Callable[[], np.ndarray]) -> np.ndarray | None:
        """``bias`` or ``keep`` of every route ``(R,)`` in canonical order, or None.

        ``query_node`` and ``key_index`` are callables giving the routes' ``(R,)`` query
        nodes and key indices (asked for only when a dense array must be gathered).
        """
        if self.sparse is not None:
            return getattr(self.sparse, name)
        dense = getattr(self, name)                                    # (G, L, S) or None
        if dense is None:
            return None
        flat = dense.reshape(-1, dense.shape[-1])                      # (G·L, S)
        nodes, keys = query_node(), key_index()
        if len(nodes) == flat.size:                                    # every route
            return flat.reshape(-1)
        return flat[nodes, keys]

    def unflatten(self, array: np.ndarray) -> np.ndarray:
        """Give a ``(G, ...)`` array the caller's leading batch dims back."""
        return array.reshape(*self.batch_shape, *array.shape[1:])


def prepare(query: ArrayLike, key: ArrayLike, value: ArrayLike,
            attn_mask: ArrayLike | None = None, dropout_p: float = 0.0, is_causal: bool = False,
            scale: float | None = None, enable_gqa: bool = False, *,
            causal_alignment: CausalAlignment = "top_left", empty_rows: EmptyRows = "zero",
            dropout_mask: ArrayLike | None = None, seed: int | None = 0,
            graph: nx.DiGraph | RouteSet | None = None, alibi_slopes: ArrayLike | None = None,
            alibi_mode: str = "symmetric", rope: RotaryEmbedding | float | None = None,
            mask_mod: Callable | None = None, score_mod: Callable | None = None,
            sinks: ArrayLike | None = None, position_ids: ArrayLike | None = None,
            key_position_ids: ArrayLike | None = None, window_size: Window | None = None,
            cu_seqlens_q: ArrayLike | None = None, cu_seqlens_k: ArrayLike | None = None
            ) -> Problem:
    """Validate the public arguments and flatten them into a :class:`Problem`.

    A RouteSet ``graph``, a ``mask_mod``, a ``window_size`` or packed sequences
    (``cu_seqlens_q``/``cu_seqlens_k``) give the sparse form (``problem.sparse``: one entry
    per route); otherwise the route set is a dense ``(G, L, S)`` mask.
    """
    query, key, value = (as_float_array(name, x) for name, x in
                         (("query", query), ("key", key), ("value", value)))
    dtypes = {query.dtype, key.dtype, value.dtype}
    if len(dtypes) > 1:
        raise DTypeError(f"query, key and value must share one dtype, got {query.dtype}, "
                         f"{key.dtype} and {value.dtype}")
    n_queries, dim = query.shape[-2:]
    n_keys, key_dim = key.shape[-2:]
    if key_dim != dim:
        raise ShapeError(f"query has E = {dim} features but key has {key_dim}; query (..., L, E) "
                         f"and key (..., S, E) must match in E (query {query.shape}, "
                         f"key {key.shape})")
    if value.shape[-2] != n_keys:
        raise ShapeError(f"key has S = {n_keys} tokens but value has {value.shape[-2]}; key "
                         f"(..., S, E) and value (..., S, Ev) must match in S (key {key.shape}, "
                         f"value {value.shape})")
    if dim == 0:
        raise ShapeError(f"query and key need at least one feature (E >= 1), got shapes "
                         f"{query.shape} and {key.shape}")
    origin = {"query_shape": query.shape, "key_shape": key.shape, "value_shape": value.shape,
              "kv_group": query.shape[-3] // key.shape[-3] if enable_gqa else 1}
    key, value = _share_kv_heads(query, key, value, enable_gqa)
    batch_shape = _broadcast("the batch dims of query, key and value",
                             query.shape[:-2], key.shape[:-2], value.shape[:-2])
    check_choice("empty_rows", empty_rows, EMPTY_ROWS)
    if not isinstance(is_causal, (bool, np.bool_)):
        raise InvalidArgumentError(f"is_causal must be True or False, got {is_causal!r}")
    scale = resolve_scale(scale, dim)
    check_alibi_mode(alibi_mode)
    if score_mod is not None and not callable(score_mod):
        raise InvalidArgumentError(f"score_mod must be a function (score, b, h, q_idx, kv_idx) "
                                   f"-> score, got {type(score_mod).__name__}")
    scores_shape = (*batch_shape, n_queries, n_keys)
    check_choice("causal_alignment", causal_alignment, CAUSAL_ALIGNMENTS)
    window = None if window_size is None else check_window_size(window_size)
    sequences = check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, n_queries, n_keys)
    spans = None if window is None and sequences is None else \
        key_spans(n_queries, n_keys, window, sequences, bool(is_causal), causal_alignment)
    if isinstance(graph, RouteSet) or mask_mod is not None or spans is not None:
        if dropout_mask is None and dropout_p and math.prod(scores_shape) > DENSE_LIMIT:
            raise InvalidArgumentError(f"dropout_p > 0 on scores of shape {scores_shape} draws "
                                       f"a dense mask of over {DENSE_LIMIT:,} entries; pass "
                                       "dropout_mask (bool, broadcastable) instead")
        keep = _dropout_keep(dropout_p, dropout_mask, seed, scores_shape)
        sparse = sparse_routes(graph, mask_mod, attn_mask, bool(is_causal), causal_alignment,
                               batch_shape, n_queries, n_keys, query.dtype, alibi_slopes, keep,
                               alibi_mode, spans)
        allowed = bias = keep = None
    else:
        sparse = None
        allowed, bias = route_set(attn_mask, bool(is_causal), causal_alignment,
                                  None if graph is None else graph_mask(graph, n_queries, n_keys),
                                  batch_shape, n_queries, n_keys, query.dtype)
    if alibi_slopes is not None and sparse is None:
        alibi = _alibi(alibi_slopes, scores_shape, causal_alignment, alibi_mode
                       ).astype(query.dtype)
        bias = alibi if bias is None else bias + alibi
    rotary = as_rotary(rope)
    # Packed sequences each start at 0: RoPE's default positions are within a sequence.
    defaults = None if spans is None else (spans.query_positions, spans.key_positions)
    at_query, at_key = rotary_positions(rotary, position_ids, key_position_ids, batch_shape,
                                        n_queries, n_keys, causal_alignment,
                                        defaults)              # (..., L), (..., S)
    origin.update(rotary=rotary, query_positions=at_query, key_positions=at_key)
    if rotary is not None:
        query = rotary.rotate(query, at_query)
        key = rotary.rotate(key, at_key)
    if sparse is None:
        keep = _dropout_keep(dropout_p, dropout_mask, seed, scores_shape)
    groups = math.prod(batch_shape)
    per_group = None
    if sinks is not None:
        given, per_group = group_sinks(sinks, batch_shape, query.dtype)        # (H,), (G,)
        origin["sinks_shape"] = given.shape

    def flat(array: np.ndarray, tail: tuple[int, ...]) -> np.ndarray:
        shape = (*batch_shape, *tail)
        whole = array if array.shape == shape else np.broadcast_to(array, shape)
        return np.ascontiguousarray(whole).reshape(groups, *tail)

    def shared(mask: np.ndarray) -> np.ndarray:
        """``flat`` of the route mask, but one ``(L, S)`` mask for every group stays one: a
        read-only view (stride 0 across groups), read once rather than copied ``G`` times."""
        if mask.ndim >= 2 and all(size == 1 for size in mask.shape[:-2]):
            return np.broadcast_to(mask.reshape(mask.shape[-2:]), (groups, n_queries, n_keys))
        return flat(mask, (n_queries, n_keys))

    return Problem(
        query=flat(query, (n_queries, dim)),
        key=flat(key, (n_keys, dim)),
        value=flat(value, (n_keys, value.shape[-1])),
        allowed=None if allowed is None else shared(allowed),
        bias=None if bias is None else flat(bias, (n_queries, n_keys)),
        keep=None if keep is None else flat(keep, (n_queries, n_keys)),
        dropout_p=float(dropout_p),
        scale=scale,
        batch_shape=batch_shape,
        empty_rows=empty_rows,
        origin=origin,
        sparse=sparse,
        score_mod=score_mod,
        sinks=per_group,
    )


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a gradient over the dims that broadcasting added or stretched."""
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(axis for axis, size in enumerate(shape)
                      if size == 1 and grad.shape[axis] != 1)
    return grad.sum(axis=stretched, keepdims=True) if stretched else grad


def _alibi(slopes: ArrayLike, scores_shape: tuple[int, ...], alignment: CausalAlignment,
           mode: str) -> np.ndarray:
    """ALiBi biases shaped to broadcast over ``(..., H, L, S)``: heads are the last batch
    dim, slopes ``(H,)`` or ``(B, H)``."""
    *batch_shape, n_queries, n_keys = scores_shape
    checked = check_alibi_slopes(slopes, tuple(batch_shape))           # (), (H,) or (B, H)
    return alibi_bias(checked, n_queries, n_keys, alignment, mode)     # (..., L, S)


def as_float_array(name: str, x: ArrayLike) -> np.ndarray:
    try:
        array = as_numpy(name, x)
    except DTypeError:                   # already says what to do (a tensor needing grad)
        raise
    except (TypeError, ValueError) as error:
        raise DTypeError(f"{name} must be a numeric array, got {type(x).__name__}: {error}"
                         ) from None
    if array.dtype.kind in "iu":
        array = array.astype(np.float64)
    if array.dtype not in (np.float32, np.float64):
        raise DTypeError(f"{name} must hold float32 or float64 numbers (integers are converted "
                         f"to float64), got dtype {array.dtype}")
    if array.ndim < 2:
        raise ShapeError(f"{name} must have at least 2 dims (..., tokens, features), got shape "
                         f"{array.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        finite = bool(np.isfinite(array.sum()))  # one pass, no temporary: inf, nan carry
    if not finite and not np.isfinite(array).all():   # (or finite numbers summed past it)
        bad = tuple(int(b) for b in np.argwhere(~np.isfinite(array))[0])
        raise InvalidArgumentError(f"{name} holds {array[bad]} at index {bad}; attention inputs "
                                   "must be finite (mask routes with attn_mask instead)")
    return array


def _share_kv_heads(query: np.ndarray, key: np.ndarray, value: np.ndarray, enable_gqa: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Grouped-query attention: query head ``h`` reads key/value head ``h // (Hq / Hkv)``."""
    if not enable_gqa:
        return key, value
    if query.ndim < 3 or key.ndim < 3 or value.ndim < 3:
        raise ShapeError(f"enable_gqa=True needs a head dim (..., H, L, E); got query "
                         f"{query.shape}, key {key.shape}, value {value.shape}")
    query_heads, key_heads, value_heads = query.shape[-3], key.shape[-3], value.shape[-3]
    if key_heads != value_heads:
        raise ShapeError(f"key has {key_heads} heads but value has {value_heads}")
    if key_heads == 0 or query_heads % key_heads:
        raise ShapeError(f"enable_gqa=True needs the query heads ({query_heads}) to be a "
                         f"multiple of the key/value heads ({key_heads})")
    group_size = query_heads // key_heads
    return np.repeat(key, group_size, axis=-3), np.repeat(value, group_size, axis=-3)


def _broadcast(what: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    if all(shape == shapes[0] for shape in shapes):
        return tuple(shapes[0])
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"{what} do not broadcast: {', '.join(map(str, shapes))}") from None


def resolve_scale(scale: float | None, dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise InvalidArgumentError(f"scale must be a real number, got {scale!r}")
    if not math.isfinite(scale):
        raise InvalidArgumentError(f"scale must be finite, got {scale!r}")
    return float(scale)


def _dropout_keep(dropout_p: float, dropout_mask, seed: int | None,
                  shape: tuple[int, ...]) -> np.ndarray | None:
    """Which routes survive dropout: the given mask, or a seeded draw, or None (no dropout)."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float, np.floating)) \
            or not 0.0 <= dropout_p < 1.0:
        raise InvalidArgumentError(f"dropout_p must be a probability in [0, 1), got {dropout_p!r}")
    if dropout_mask is not None:
        keep = as_numpy("dropout_mask", dropout_mask)
        if keep.dtype != bool:
            raise DTypeError(f"dropout_mask must be bool (True = route kept), got dtype "
                             f"{keep.dtype}")
        if _broadcast("dropout_mask and the scores", keep.shape, shape) != shape:
            raise ShapeError(f"dropout_mask of shape {keep.shape} does not broadcast to the "
                             f"scores' shape {shape} (..., L, S)")
        return keep
    if dropout_p == 0.0:
        return None
    return np.random.default_rng(seed).random(shape) >= dropout_p
