"""FlashAttention's ``flash_attn_with_kvcache`` in matrix form: a (paged) KV cache.

A cache holds each sequence's keys and values in FlashAttention's layout: a row of
``(batch_size_cache, seqlen_cache, H_kv, D)`` per sequence, or fixed-size pages of
``(num_blocks, page_size, H_kv, D)`` that ``block_table`` strings together (pages may be
shared between sequences). :class:`CacheLayout` checks and addresses it: which storage slot
serves a sequence's key ``s``, appending new keys in place, gathering a sequence's keys.
:func:`attention_with_kvcache` gathers each sequence's live keys (from its left padding to
its length) and calls :func:`~routing_sim.attention` on them, once per sequence: no softmax
arithmetic of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import DTypeError, InvalidArgumentError, ShapeError
from ..inputs.arrays import as_numpy
from ..inputs.masks import Window, check_window_size
from ..inputs.positions import RotaryEmbedding, check_alibi_slopes
from ..inputs.sinks import group_sinks
from ..options import Numerics
from .matrix import attention

__all__ = ["CacheLayout", "attention_with_kvcache", "check_new_tokens", "check_tokens",
           "query_slots", "rotary_tables", "rotate_round"]


def _indices(name: str, values: ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    """An integer array of exactly ``shape``, as int64."""
    array = as_numpy(name, values)
    if array.dtype.kind not in "iu":
        raise DTypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.shape != shape:
        raise ShapeError(f"{name} must have shape {shape}, got {array.shape}")
    return array.astype(np.int64)


def check_tokens(name: str, x: ArrayLike) -> np.ndarray:
    """A 4-D floating array in FlashAttention's layout (batch, seqlen, heads, headdim)."""
    array = as_numpy(name, x)
    if array.ndim != 4:
        raise ShapeError(f"{name} must be 4-D (batch, seqlen, heads, headdim), got shape "
                         f"{array.shape}")
    if array.dtype.kind != "f":
        raise DTypeError(f"{name} must be floating point, got dtype {array.dtype}")
    return array


@dataclass(frozen=True)
class CacheLayout:
    """Where each sequence's keys live in a FlashAttention-layout cache, checked.

    Sequence ``b``'s key ``s`` (its ``s``-th slot, counted from 0 including left padding)
    lives in ``k_cache[rows[b], s]`` for a contiguous cache, or in
    ``k_cache[block_table[b, s // page_size], s % page_size]`` for a paged one.

    Attributes
    ----------
    k_cache, v_cache : ndarray
        The caches themselves (views of what the caller passed: writes go to them).
    rows : ndarray of int, shape (B,)
        The cache row of each sequence (``cache_batch_idx``); unused with pages.
    block_table : ndarray of int, shape (B, max_blocks), or None
        The pages of each sequence, in order.
    capacity : int
        How many keys a sequence can hold: ``seqlen_cache``, or ``max_blocks * page_size``.
    """

    k_cache: np.ndarray
    v_cache: np.ndarray
    rows: np.ndarray
    block_table: np.ndarray | None
    capacity: int

    @classmethod
    def check(cls, k_cache: ArrayLike, v_cache: ArrayLike, n_batch: int, heads: int | None,
              head_dim: int | None, cache_batch_idx: ArrayLike | None = None,
              block_table: ArrayLike | None = None) -> CacheLayout:
        """Check the caches against ``n_batch`` sequences of ``heads`` query heads of
        ``head_dim`` features (errors name the argument; None: not known yet), and address
        them.

        Examples
        --------
        >>> pages = np.zeros((4, 2, 1, 3))                 # 4 pages of 2 slots
        >>> layout = CacheLayout.check(pages, pages, 1, 1, 3, block_table=[[2, 0]])
        >>> layout.capacity, layout.slots(0, 1, 4)         # slots 1..3: (page, offset)
        (4, (array([2, 0, 0]), array([1, 0, 1])))
        """
        keys, values = check_tokens("k_cache", k_cache), check_tokens("v_cache", v_cache)
        if keys.shape[:3] != values.shape[:3]:
            raise ShapeError(f"k_cache and v_cache must agree on (blocks or batch, slots, "
                             f"heads), got {keys.shape} and {values.shape}")
        n_rows, seqlen, kv_heads, key_dim = keys.shape
        heads = kv_heads if heads is None else heads           # None: the queries come later
        if head_dim is not None and key_dim != head_dim:
            raise ShapeError(f"k_cache has headdim {key_dim} but q has {head_dim}")
        if kv_heads == 0 or heads % kv_heads:
            raise ShapeError(f"q's {heads} heads must be a multiple of the caches' {kv_heads} "
                             "heads (grouped-query attention)")
        if block_table is None:
            if cache_batch_idx is None:
                if n_rows != n_batch:
                    raise ShapeError(f"k_cache holds {n_rows} sequences but q has batch "
                                     f"{n_batch}; give cache_batch_idx to pick cache rows")
                rows = np.arange(n_batch)
            else:
                rows = _indices("cache_batch_idx", cache_batch_idx, (n_batch,))
                _check_range("cache_batch_idx", rows, n_rows, "k_cache's batch_size_cache")
            return cls(keys, values, rows, None, seqlen)
        if cache_batch_idx is not None:
            raise InvalidArgumentError("cache_batch_idx and block_table do not combine (as in "
                                       "FlashAttention): a paged cache picks its pages with "
                                       "block_table alone")
        table = as_numpy("block_table", block_table)
        if table.ndim != 2 or table.shape[0] != n_batch:
            raise ShapeError(f"block_table must have shape (batch, max_blocks) with batch = "
                             f"{n_batch}, got {table.shape}")
        table = _indices("block_table", table, table.shape)
        return cls(keys, values, np.arange(n_batch), table, table.shape[1] * seqlen)

    def sequences(self, cache_seqlens: ArrayLike | int | None,
                  cache_leftpad: ArrayLike | None, n_new: int
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Each sequence's length and left padding ``(B,)``, checked: room for ``n_new``
        more keys, ``0 <= cache_leftpad <= cache_seqlens``, and the pages they reach."""
        n_batch = len(self.rows)
        lengths = _cache_seqlens(cache_seqlens, n_batch, self.capacity, n_new)
        leftpad = np.zeros(n_batch, np.int64) if cache_leftpad is None else \
            _indices("cache_leftpad", cache_leftpad, (n_batch,))
        if ((leftpad < 0) | (leftpad > lengths)).any():
            b = int(np.flatnonzero((leftpad < 0) | (leftpad > lengths))[0])
            raise InvalidArgumentError(f"cache_leftpad[{b}] = {leftpad[b]} must lie in 0.."
                                       f"cache_seqlens[{b}] = {lengths[b]}")
        self.check_pages(lengths + n_new)
        return lengths, leftpad

    def check_pages(self, lengths: np.ndarray) -> None:
        """Refuse a block_table whose pages, as far as each sequence reaches, lie past the
        cache (entries past a sequence's length are never read)."""
        if self.block_table is None:
            return
        page_size, n_pages = self.k_cache.shape[1], self.k_cache.shape[0]
        for b, length in enumerate(lengths):
            used = self.block_table[b, : -(-int(length) // page_size)]
            _check_range(f"block_table[{b}]", used, n_pages, "k_cache's num_blocks")

    def slots(self, b: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(row or page, slot)`` index arrays of sequence ``b``'s keys ``start:stop``."""
        positions = np.arange(start, stop)                             # (n,)
        if self.block_table is None:
            return np.full_like(positions, self.rows[b]), positions
        page_size = self.k_cache.shape[1]
        return self.block_table[b, positions // page_size], positions % page_size

    def gather(self, b: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Sequence ``b``'s keys and values ``start:stop``, as ``(H_kv, n, D)``."""
        where = self.slots(b, start, stop)
        return (self.k_cache[where].transpose(1, 0, 2),                # (H_kv, n, D)
                self.v_cache[where].transpose(1, 0, 2))                # (H_kv, n, Dv)

    def write(self, b: int, start: int, keys: np.ndarray, values: np.ndarray) -> None:
        """Store ``keys (n, H_kv, D)`` and ``values`` as sequence ``b``'s keys from ``start``
        on, in place."""
        where = self.slots(b, start, start + keys.shape[0])
        self.k_cache[where] = keys
        self.v_cache[where] = values


def _check_range(name: str, indices: np.ndarray, size: int, what: str) -> None:
    bad = (indices < 0) | (indices >= size)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(f"{name} points past the cache: entry {at} is "
                                   f"{int(indices[at])}, but {what} is {size}")


def attention_with_kvcache(
        q: ArrayLike, k_cache: ArrayLike, v_cache: ArrayLike, k: ArrayLike | None = None,
        v: ArrayLike | None = None, *, cache_seqlens: ArrayLike | int | None = None,
        cache_batch_idx: ArrayLike | None = None, cache_leftpad: ArrayLike | None = None,
        block_table: ArrayLike | None = None, causal: bool = False,
        window_size: Window = (-1, -1), softcap: float = 0.0,
        alibi_slopes: ArrayLike | None = None, sinks: ArrayLike | None = None,
        rotary_cos: ArrayLike | None = None, rotary_sin: ArrayLike | None = None,
        rotary_interleaved: bool = True, softmax_scale: float | None = None,
        return_lse: bool = False, numerics: Numerics = "float"
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Attention of new queries over a KV cache, as FlashAttention's ``flash_attn_with_kvcache``.

    Sequence ``b`` of the batch sees its cached keys from slot ``cache_leftpad[b]`` up to
    ``cache_seqlens[b]``, then the new keys ``k[b]`` (appended there first, in place). With
    ``n_b`` such keys and ``Lq`` queries, query ``i`` sits at ``i + n_b - Lq`` among them:
    ``causal``, ``window_size`` and ALiBi are aligned bottom-right against each sequence's own
    length, as FlashAttention aligns them. Each sequence is one :func:`~routing_sim.attention`
    call on its gathered keys, so every argument means what it means there.

    Parameters
    ----------
    q : array_like, shape (B, Lq, H, D)
        The new queries.
    k_cache, v_cache : ndarray, shape (B_cache, S_cache, H_kv, D) or (blocks, page_size, H_kv, D)
        The cache: one row per sequence, or pages addressed by ``block_table``. With ``k``
        and ``v`` they are written **in place** (a numpy array, or a CPU tensor whose memory
        ``np.asarray`` shares, is changed, as FlashAttention changes its cache). ``v_cache``
        may have its own headdim ``Dv``.
    k, v : array_like, shape (B, L_new, H_kv, D) and (B, L_new, H_kv, Dv), optional
        New keys and values, written into sequence ``b``'s slots ``cache_seqlens[b]`` onward
        (rotated first with ``rotary_cos``), before the attention reads them. Both or
        neither; the caches' dtype.
    cache_seqlens : int or array_like of int, shape (B,), optional
        Each sequence's length in the cache before the new keys, counted from slot 0 (left
        padding included). Default: the whole cache (``S_cache``, or ``max_blocks ·
        page_size``). With the new keys it must fit in the cache.
    cache_batch_idx : array_like of int, shape (B,), optional
        The cache row of each sequence (default ``0..B-1``, and ``B_cache == B``). Not with
        ``block_table``.
    cache_leftpad : array_like of int, shape (B,), optional
        Where each sequence starts in its cache: slots before it are padding, never
        attended (``0 <= cache_leftpad[b] <= cache_seqlens[b]``).
    block_table : array_like of int, shape (B, max_blocks), optional
        A paged cache: sequence ``b``'s slot ``s`` is page ``block_table[b, s // page_size]``,
        offset ``s % page_size``. Pages may be shared between sequences (appending into a
        shared page changes it for all of them). Only the entries a sequence reaches are read
        and checked.
    causal : bool
        Query ``i`` attends to keys up to its own position (bottom-right). A query with no
        key gets zeros.
    window_size : (int, int)
        Local attention ``(left, right)``: keys ``p - left .. p + right`` of query ``i`` at
        ``p = i + n_b - Lq``; ``-1`` is unbounded.
    softcap : float
        ``cap · tanh(s / cap)`` on the scaled scores; ``0.0`` is off.
    alibi_slopes : array_like, shape (H,) or (B, H), optional
        ALiBi: ``-slope · |p - j|`` added to the scores (``j`` counted from the left pad).
    sinks : array_like, shape (H,), optional
        One sink logit per head, in every row's softmax denominator (gpt-oss's ``s_aux``).
    rotary_cos, rotary_sin : array_like, shape (seqlen_ro, rotary_dim / 2), optional
        RoPE tables: the new keys turn by the rows of their slots ``cache_seqlens[b] + t``;
        the queries by ``cache_seqlens[b] + i`` with ``causal`` or a window, else all by
        ``cache_seqlens[b]`` (FlashAttention's rule). Features past ``rotary_dim`` pass
        unchanged. Only with ``k`` and ``v`` (cached keys were rotated when appended).
    rotary_interleaved : bool
        Pairs ``(0, 1), (2, 3), ...`` (GPT-J) if True, else ``(d, d + rotary_dim / 2)``
        (GPT-NeoX).
    softmax_scale : float, optional
        Score scale, ``1 / sqrt(D)`` by default.
    return_lse : bool
        Also return each row's log-sum-exp (FlashAttention's ``softmax_lse``), ``-inf`` for a
        row with no key (its sink's logit with sinks).
    numerics : {"float", "exact"}
        As in :func:`~routing_sim.attention` (exact mode: no ``softcap``).

    Returns
    -------
    out : ndarray, shape (B, Lq, H, Dv)
    lse : ndarray, shape (B, H, Lq)
        Only with ``return_lse=True``.

    Raises
    ------
    ShapeError
        Arrays of the wrong shape (each named), heads that do not group.
    DTypeError
        Non-floating tensors, integer arguments that are not integers, ``k``/``v`` of
        another dtype than the caches.
    InvalidArgumentError
        ``cache_seqlens`` (with the new keys) beyond the cache, ``cache_leftpad`` outside
        ``0..cache_seqlens``, a ``block_table`` or ``cache_batch_idx`` that points past the
        cache, rotary tables without new keys or without a row for a position.

    Examples
    --------
    Two sequences of lengths 3 and 1 in a cache of 4 slots; one new token each:

    >>> rng = np.random.default_rng(0)
    >>> k_cache, v_cache = rng.normal(size=(2, 2, 4, 1, 2))
    >>> q, k, v = rng.normal(size=(3, 2, 1, 1, 2))
    >>> out = attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=[3, 1])
    >>> bool((k_cache[1, 1] == k[1, 0]).all())       # appended in place at slot 1
    True
    >>> first = attention(q[0, :, 0], k_cache[0, :, 0], v_cache[0, :, 0])  # its 4 keys
    >>> bool(np.allclose(out[0, :, 0], first)), out.shape
    (True, (2, 1, 1, 2))
    """
    queries = check_tokens("q", q)
    n_batch, n_queries, heads, head_dim = queries.shape
    layout = CacheLayout.check(k_cache, v_cache, n_batch, heads, head_dim, cache_batch_idx,
                               block_table)
    new_keys, new_values = check_new_tokens(k, v, layout, n_batch)
    n_new = 0 if new_keys is None else new_keys.shape[1]
    lengths, leftpad = layout.sequences(cache_seqlens, cache_leftpad, n_new)
    slopes = None if alibi_slopes is None else check_alibi_slopes(alibi_slopes,
                                                                  (n_batch, heads))
    rope = rotary_tables(rotary_cos, rotary_sin, rotary_interleaved)
    if rope is not None and new_keys is None:
        raise InvalidArgumentError("rotary_cos/rotary_sin rotate the new k and q: they need k "
                                   "and v (the cached keys were rotated when appended)")
    local = causal or check_window_size(window_size) is not None
    if sinks is not None:
        group_sinks(sinks, (heads,), queries.dtype)       # refused before the cache changes
    if rope is not None and new_keys is not None:
        queries, new_keys = rotate_round(rope, queries, new_keys, lengths, local)
    queries_by_head = queries.transpose(0, 2, 1, 3)                    # (B, H, Lq, D)
    if new_keys is not None and new_values is not None:
        # Every append lands before any sequence reads: a page two sequences share reads
        # the same whichever sequence comes first.
        for b in range(n_batch):
            layout.write(b, int(lengths[b]), new_keys[b], new_values[b])
    outputs, lses = [], []
    for b in range(n_batch):
        start, end = int(leftpad[b]), int(lengths[b])
        query = queries_by_head[b]                                     # (H, Lq, D)
        keys, values = layout.gather(b, start, end + n_new)            # (H_kv, n_b, D)
        result = attention(query, keys, values, scale=softmax_scale, enable_gqa=True,
                           is_causal=causal, causal_alignment="bottom_right",
                           window_size=window_size, softcap=softcap,
                           alibi_slopes=None if slopes is None else np.broadcast_to(
                               slopes, (n_batch, heads))[b],
                           sinks=sinks, return_lse=return_lse, numerics=numerics)
        output = result[0] if return_lse else result
        outputs.append(np.asarray(output).transpose(1, 0, 2))          # (Lq, H, Dv)
        if return_lse:
            lses.append(result[1])                                     # (H, Lq)
    out = np.stack(outputs)                                            # (B, Lq, H, Dv)
    return (out, np.stack(lses)) if return_lse else out


def check_new_tokens(k: ArrayLike | None, v: ArrayLike | None, layout: CacheLayout,
                     n_batch: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The new keys and values, checked against the cache (or None, None)."""
    if (k is None) != (v is None):
        raise InvalidArgumentError("k and v come together: give both new keys and values, "
                                   "or neither")
    if k is None or v is None:
        return None, None
    keys, values = check_tokens("k", k), check_tokens("v", v)
    for name, new, cache in (("k", keys, layout.k_cache), ("v", values, layout.v_cache)):
        expected = (n_batch, keys.shape[1], *cache.shape[2:])
        if new.shape != expected:
            raise ShapeError(f"{name} must have shape (batch, seqlen_new, heads_k, headdim) "
                             f"= {expected} to go into {name}_cache, got {new.shape}")
        if new.dtype != cache.dtype:
            raise DTypeError(f"{name} has dtype {new.dtype} but {name}_cache holds "
                             f"{cache.dtype}; the new tokens are written into the cache as "
                             "they are")
        if not cache.flags.writeable:
            raise InvalidArgumentError(f"{name}_cache is read-only, but {name} is appended to "
                                       "it in place")
    return keys, values


def _cache_seqlens(cache_seqlens: ArrayLike | int | None, n_batch: int, capacity: int,
                   n_new: int) -> np.ndarray:
    """Each sequence's cached length (B,), checked to leave room for ``n_new`` keys."""
    if cache_seqlens is None:
        lengths = np.full(n_batch, capacity, np.int64)
    elif isinstance(cache_seqlens, (int, np.integer)) and not isinstance(cache_seqlens, bool):
        lengths = np.full(n_batch, int(cache_seqlens), np.int64)
    else:
        lengths = _indices("cache_seqlens", cache_seqlens, (n_batch,))
    bad = (lengths < 0) | (lengths + n_new > capacity)
    if bad.any():
        b = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(f"cache_seqlens[{b}] = {lengths[b]} with {n_new} new keys "
                                   f"is beyond the cache: a sequence holds 0..{capacity} keys")
    return lengths


def rotary_tables(rotary_cos: ArrayLike | None, rotary_sin: ArrayLike | None,
                  interleaved: bool) -> RotaryEmbedding | None:
    """The rotary embedding of FlashAttention's ``rotary_cos``/``rotary_sin`` tables
    ``(seqlen_ro, rotary_dim / 2)``, or None when neither is given.

    Examples
    --------
    >>> angle = np.arange(4)[:, None] * np.array([[1.0, 0.1]])       # 4 positions, R = 4
    >>> rotary_tables(np.cos(angle), np.sin(angle), True).layout
    'interleaved'
    """
    if rotary_cos is None and rotary_sin is None:
        return None
    if rotary_cos is None or rotary_sin is None:
        raise InvalidArgumentError("rotary_cos and rotary_sin come together: give both or "
                                   "neither")
    return RotaryEmbedding.from_tables(rotary_cos, rotary_sin,
                                       layout="interleaved" if interleaved else "half")


def rotate_round(rope: RotaryEmbedding, queries: np.ndarray, keys: np.ndarray,
                 lengths: np.ndarray, local: bool) -> tuple[np.ndarray, np.ndarray]:
    """One round's queries ``(B, Lq, H, D)`` and new keys ``(B, L_new, H_kv, D)`` turned as
    FlashAttention turns them: each key by the table row of its slot ``cache_seqlens[b] +
    t`` (it is stored so), each query by :func:`query_slots`' row; a slot without a row is
    refused, naming it. Both keep their dtype.

    Examples
    --------
    >>> angle = np.arange(8)[:, None] * np.array([[1.0]])             # 8 slots, R = 2
    >>> rope = rotary_tables(np.cos(angle), np.sin(angle), False)
    >>> q, k = np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 2))           # B = Lq = L_new = 1
    >>> turned_q, turned_k = rotate_round(rope, q, k, np.array([3]), local=True)
    >>> bool(np.allclose(turned_k[0, 0, 0], [np.cos(3) - np.sin(3), np.sin(3) + np.cos(3)]))
    True
    >>> bool((turned_q == turned_k).all())                             # the same slot, 3
    True
    """
    slots = lengths[:, None] + np.arange(keys.shape[1])                 # (B, L_new)
    rope.check_positions("the new keys' slots (cache_seqlens + t)", slots)
    turned_keys = rope.rotate(keys.transpose(0, 2, 1, 3), slots[:, None, :])  # (B, H_kv, L_new, D)
    positions = query_slots(lengths, queries.shape[1], local)           # (B, Lq)
    rope.check_positions("the queries' slots (cache_seqlens + i)", positions)
    turned_queries = rope.rotate(queries.transpose(0, 2, 1, 3), positions[:, None, :])
    return turned_queries.transpose(0, 2, 1, 3), turned_keys.transpose(0, 2, 1, 3)


def query_slots(lengths: np.ndarray, n_queries: int, local: bool) -> np.ndarray:
    """FlashAttention's rotary positions of the queries ``(B, Lq)``: their own slots
    ``cache_seqlens[b] + i`` when the mask looks at positions (causal or a window), else
    all at the first new slot ``cache_seqlens[b]``."""
    offsets = np.arange(n_queries) if local else np.zeros(n_queries, np.int64)
    return lengths[:, None] + offsets                                   # (B, Lq)
