"""One place that turns ``attn_mask``, ``is_causal`` and a token graph's mask into a route set.

The route set is a boolean array ``allowed (..., L, S)`` (True = query ``i`` may pull from
key ``j``) and an optional additive ``bias (..., L, S)``. Everything that can block a
route (a False in a bool mask, a ``-inf`` in a float mask, causality, a missing graph
edge) ends up as a False in ``allowed``; a route exists only if every source allows it.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import numpy as np
from numpy.typing import ArrayLike

from ..errors import DTypeError, InvalidArgumentError, MaskWarning, ShapeError, warn_caller
from ..options import CAUSAL_ALIGNMENTS, CausalAlignment
from .arrays import as_numpy

__all__ = ["CAUSAL_ALIGNMENTS", "Window", "causal_mask", "check_additive", "check_cu_seqlens",
           "check_window_size", "checked_upstream", "mask_routes", "mha_route_mask",
           "padding_mask", "route_set"]

Window = tuple[int | None, int | None]   # (left, right); None: unbounded on that side



def causal_mask(n_queries: int, n_keys: int, alignment: str = "top_left") -> np.ndarray:
    """Boolean ``(L, S)`` causal mask.

    ``"top_left"`` (PyTorch's ``is_causal``) allows ``j <= i``; ``"bottom_right"`` (the
    KV-cache convention: the last query sees every key) allows ``j <= i + S - L``.

    Examples
    --------
    >>> causal_mask(2, 3).astype(int)
    array([[1, 0, 0],
           [1, 1, 0]])
    >>> causal_mask(2, 3, "bottom_right").astype(int)
    array([[1, 1, 0],
           [1, 1, 1]])
    """
    if alignment not in CAUSAL_ALIGNMENTS:
        raise InvalidArgumentError(f"causal_alignment must be one of {CAUSAL_ALIGNMENTS}, "
                                   f"got {alignment!r}")
    offset = 0 if alignment == "top_left" else n_keys - n_queries
    return np.arange(n_keys) <= np.arange(n_queries)[:, None] + offset   # (L, S) j <= i + k


def padding_mask(lengths: ArrayLike, n_keys: int) -> np.ndarray:
    """SDPA-style bool mask ``(N, 1, 1, S)`` for a batch of padded key sequences.

    ``lengths[n]`` keys of sequence ``n`` are real (True = route allowed); broadcast over
    heads and queries.

    Examples
    --------
    >>> padding_mask([2, 3], 3)[:, 0, 0].astype(int)
    array([[1, 1, 0],
           [1, 1, 1]])
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or (lengths < 0).any() \
            or (lengths > n_keys).any():
        raise InvalidArgumentError(f"lengths must be a 1-D array of integers in 0 .. {n_keys}, "
                                   f"got {lengths.tolist()}")
    return (np.arange(n_keys)[None, :] < lengths[:, None])[:, None, None, :]


def check_additive(name: str, mask: np.ndarray) -> None:
    """Warn (:class:`~routing_sim.MaskWarning`) when a float mask holds only 0s and 1s.

    A float mask is added to the scores, as in PyTorch, so such a mask blocks nothing
    and lifts the 1-routes by one: almost always a bool mask written as floats. A float
    mask of zeros alone is a no-op bias, not this trap, so it passes quietly.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     check_additive("attn_mask", np.tril(np.ones((2, 2))))
    >>> caught[0].category.__name__, "bool" in str(caught[0].message)
    ('MaskWarning', True)
    """
    if mask.dtype.kind != "f" or not mask.size:
        return
    ones = mask == 1
    if ones.any() and (ones | (mask == 0)).all():
        warn_caller(f"{name} is a float mask of only 0s and 1s, so it is ADDED to the scores "
                    "(as in PyTorch): 0 blocks nothing and 1 lifts a score by one. For a mask "
                    f"of allowed routes pass it as bool ({name}.astype(bool)); to block routes "
                    "with a float mask put -inf (or a large negative number) on them; to keep "
                    "this 0/1 bias, silence the warning with warnings.filterwarnings(\"ignore\", "
                    "category=routing_sim.MaskWarning)", MaskWarning)


@contextmanager
def checked_upstream() -> Iterator[None]:
    """No MaskWarning inside: the caller checked its users' masks under their own names
    (``nn.MultiheadAttention``'s ``attn_mask``, ``key_padding_mask``) and passes on a mask
    built from them, which would otherwise warn a second time under another name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaskWarning)
        yield


def mask_routes(mask: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """An ``attn_mask``'s ``(allowed, bias)``: a bool mask is the allowed routes (no bias);
    a float mask blocks its ``-inf`` entries and adds the rest (``bias`` in ``dtype``, 0
    where blocked). Refused: NaN or +inf in a float mask, and any other dtype. A float mask
    of only 0s and 1s warns (:func:`check_additive`).

    Examples
    --------
    >>> allowed, bias = mask_routes(np.array([0.5, -np.inf]), np.dtype(np.float64))
    >>> allowed.tolist(), bias.tolist()
    ([True, False], [0.5, 0.0])
    """
    if mask.dtype == bool:
        return mask, None
    if not np.issubdtype(mask.dtype, np.floating):
        raise DTypeError(f"attn_mask must be bool (True = route allowed) or floating "
                         f"(added to the scores), got dtype {mask.dtype}")
    if np.isnan(mask).any() or np.isposinf(mask).any():
        bad = np.argwhere(np.isnan(mask) | np.isposinf(mask))[0]
        raise InvalidArgumentError(f"attn_mask has {mask[tuple(bad)]} at index "
                                   f"{tuple(int(b) for b in bad)}; a float mask may hold "
                                   "finite values and -inf only")
    check_additive("attn_mask", mask)
    allowed = ~np.isneginf(mask)
    return allowed, np.where(allowed, mask, 0).astype(dtype)


def route_set(attn_mask: ArrayLike | None, is_causal: bool, causal_alignment: CausalAlignment,
              graph_mask: np.ndarray | None,
              batch_shape: tuple[int, ...], n_queries: int, n_keys: int, dtype: np.dtype
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Combine every route restriction into ``(allowed, bias)``.

    ``graph_mask`` is a token graph's ``(L, S)`` route mask
    (:func:`routing_sim.routes.graphs.graph_mask`), or None for no graph.

    Returns
    -------
    allowed : ndarray of bool, broadcastable to ``(*batch_shape, L, S)``
    bias : ndarray of ``dtype`` with the same broadcast shape, or None
        The finite part of a float mask (blocked entries hold 0).
    """
    target = (*batch_shape, n_queries, n_keys)
    allowed = np.ones((1, 1), dtype=bool)                              # every route (broadcasts)
    bias = None
    if attn_mask is not None:
        if is_causal:
            raise InvalidArgumentError("pass either attn_mask or is_causal=True, not both "
                                       "(as in PyTorch's scaled_dot_product_attention); "
                                       "build the causal part into the mask instead")
        mask = as_numpy("attn_mask", attn_mask)
        if mask.shape != target and _broadcast_shape(mask.shape, target) != target:
            raise ShapeError(f"attn_mask of shape {mask.shape} does not broadcast to the "
                             f"scores' shape {target} (..., L, S)")
        allowed, bias = mask_routes(mask, dtype)
    elif is_causal:
        allowed = causal_mask(n_queries, n_keys, causal_alignment)
    if causal_alignment not in CAUSAL_ALIGNMENTS:
        raise InvalidArgumentError(f"causal_alignment must be one of {CAUSAL_ALIGNMENTS}, "
                                   f"got {causal_alignment!r}")
    if graph_mask is not None:
        allowed = allowed & graph_mask
    return allowed, bias


def check_window_size(window_size: object) -> Window | None:
    """FlashAttention's ``window_size=(left, right)``, checked: ``(left, right)`` with None
    for an unbounded side (given as ``-1`` or None), or None when both sides are unbounded.

    Examples
    --------
    >>> check_window_size((4, 0)), check_window_size((-1, None)), check_window_size([2, -1])
    ((4, 0), None, (2, None))
    """
    if isinstance(window_size, (str, bytes)) or not isinstance(window_size, Collection) \
            or len(window_size) != 2:
        raise InvalidArgumentError(f"window_size must be a pair (left, right) of integers "
                                   f"(-1 or None: unbounded on that side), got {window_size!r}")
    sides: list[int | None] = []
    for side in window_size:
        if side is None:
            sides.append(None)
            continue
        if isinstance(side, (bool, np.bool_)) or not isinstance(side, (int, np.integer)) \
                or side < -1:
            raise InvalidArgumentError(f"window_size must be a pair (left, right) of integers "
                                       f">= -1 (-1 or None: unbounded on that side), got "
                                       f"{window_size!r}")
        sides.append(None if side == -1 else int(side))
    left, right = sides
    return None if left is None and right is None else (left, right)


def check_cu_seqlens(cu_seqlens_q: ArrayLike | None, cu_seqlens_k: ArrayLike | None,
                     n_queries: int, n_keys: int) -> tuple[np.ndarray, np.ndarray] | None:
    """FlashAttention's varlen offsets, checked: packed sequence ``b`` is query rows
    ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` and key rows ``cu_seqlens_k[b]:cu_seqlens_k[b +
    1]``. Returns both as int64 arrays ``(B + 1,)``, or None when neither is given.

    Examples
    --------
    >>> [c.tolist() for c in check_cu_seqlens([0, 2, 5], [0, 3, 4], 5, 4)]
    [[0, 2, 5], [0, 3, 4]]
    """
    if cu_seqlens_q is None and cu_seqlens_k is None:
        return None
    if cu_seqlens_q is None or cu_seqlens_k is None:
        given, missing = ("cu_seqlens_q", "cu_seqlens_k") if cu_seqlens_k is None else \
            ("cu_seqlens_k", "cu_seqlens_q")
        raise InvalidArgumentError(f"{given} was given without {missing}: packed sequences "
                                   "need both (pass the same offsets twice for self-attention)")
    checked = []
    for name, offsets, total, axis in (("cu_seqlens_q", cu_seqlens_q, n_queries, "L"),
                                       ("cu_seqlens_k", cu_seqlens_k, n_keys, "S")):
        array = as_numpy(name, offsets)
        if array.ndim != 1 or array.dtype.kind not in "iu" or len(array) == 0:
            raise InvalidArgumentError(f"{name} must be a 1-D integer array (batch + 1,) of "
                                       f"offsets, got dtype {array.dtype} and shape "
                                       f"{array.shape}")
        array = array.astype(np.int64)
        if array[0] != 0:
            raise InvalidArgumentError(f"{name} must start at 0, got {array.tolist()}")
        falls = np.flatnonzero(np.diff(array) < 0)
        if falls.size:
            at = int(falls[0])
            raise InvalidArgumentError(f"{name} must be non-decreasing, got {array.tolist()} "
                                       f"({array[at]} then {array[at + 1]} at index {at})")
        if array[-1] != total:
            raise InvalidArgumentError(f"{name} must end at the packed length {axis} = {total}, "
                                       f"got {array.tolist()}")
        checked.append(array)
    queries, keys = checked
    if len(queries) != len(keys):
        raise InvalidArgumentError(f"cu_seqlens_q has {len(queries) - 1} sequences but "
                                   f"cu_seqlens_k has {len(keys) - 1}; they must describe the "
                                   "same sequences")
    return queries, keys


def mha_route_mask(attn_mask: ArrayLike | None, key_padding_mask: ArrayLike | None,
                   is_causal: bool, n_heads: int, n_batch: int,
                   n_queries: int, n_keys: int, n_routes: int, batched: bool
                   ) -> np.ndarray | None:
    """One SDPA-style mask ``(N, H, L, S')`` from ``nn.MultiheadAttention``'s masks.

    MHA's bool masks mean True = blocked; the result means True = route allowed (or is
    an additive float mask). ``n_routes - n_keys`` extra keys (``bias_k``, the
    zero-attention token) are always reachable.

    Examples
    --------
    >>> mha_route_mask(None, np.array([[False, True]]), False, 1, 1, 1, 2, 3, True).astype(int)
    array([[[[1, 0, 1]]]])
    """
    H = n_heads
    blocked, names = [], []                                        # float (-inf) or bool
    if attn_mask is not None:
        mask = as_numpy("attn_mask", attn_mask)
        if mask.shape == (n_queries, n_keys):
            mask = mask[None, None]
        elif mask.shape == (n_batch * H, n_queries, n_keys):
            mask = mask.reshape(n_batch, H, n_queries, n_keys)
        else:
            raise ShapeError(f"attn_mask must be (L, S) = {(n_queries, n_keys)} or "
                             f"(N*num_heads, L, S) = {(n_batch * H, n_queries, n_keys)}, "
                             f"got {mask.shape}")
        blocked.append(mask)
        names.append("attn_mask")
    elif is_causal:
        blocked.append(np.triu(np.ones((n_queries, n_keys), dtype=bool), k=1)[None, None])
        names.append("is_causal")
    if key_padding_mask is not None:
        padded = as_numpy("key_padding_mask", key_padding_mask)
        expected = (n_batch, n_keys) if batched else (n_keys,)
        if padded.shape != expected:
            raise ShapeError(f"key_padding_mask must have shape {expected} (batch, S), got "
                             f"{padded.shape}")
        blocked.append(padded.reshape(n_batch, 1, 1, n_keys))
        names.append("key_padding_mask")
    if not blocked:
        return None
    for name, mask in zip(names, blocked):
        if mask.dtype != bool and not np.issubdtype(mask.dtype, np.floating):
            raise InvalidArgumentError(f"MHA masks must be bool (True = blocked) or float "
                                       f"(added), got dtype {mask.dtype}")
        check_additive(name, mask)
    extra = n_routes - n_keys        # bias_k / zero-attention tokens: always reachable
    if all(mask.dtype == bool for mask in blocked):
        allowed = ~np.logical_or.reduce(np.broadcast_arrays(*blocked))
        return np.pad(allowed, [(0, 0)] * 3 + [(0, extra)], constant_values=True)
    bias = sum(np.where(mask, -np.inf, 0.0) if mask.dtype == bool else mask.astype(float)
               for mask in blocked)
    return np.pad(bias, [(0, 0)] * 3 + [(0, extra)], constant_values=0.0)


def _broadcast_shape(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        return None
