"""Sparse attention patterns as route sets: each token's fan-in is a design decision.

Every function returns a one-group :class:`~routing_sim.RouteSet` over ``n`` tokens
(self-attention: query ``i`` and key ``j`` are positions in one sequence), built in
O(routes) time and memory from per-row key ranges; no ``n × n`` array is ever made. Pass
it as ``graph=`` to :func:`~routing_sim.attention` or :func:`~routing_sim.simulate`; it
is shared by every batch element and head.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidArgumentError
from .graphs import check_count
from .route_set import RouteSet, from_ranges

__all__ = ["bigbird", "dilated", "document", "longformer", "prefix_lm", "sliding_window"]


def sliding_window(n: int, window: int, *, sinks: int = 0) -> RouteSet:
    """Causal window with attention sinks (Mistral, StreamingLLM).

    Key ``j`` is reachable from query ``i`` iff ``j <= i`` and (``i - j < window`` or
    ``j < sinks``). Fan-in: ``min(i + 1, window + sinks)`` (at most ``window + sinks``).

    Examples
    --------
    >>> sliding_window(5, 2, sinks=1).to_mask().astype(int)
    array([[1, 0, 0, 0, 0],
           [1, 1, 0, 0, 0],
           [1, 1, 1, 0, 0],
           [1, 0, 1, 1, 0],
           [1, 0, 0, 1, 1]])
    """
    n, window = check_count("n", n), _positive("window", window)
    sinks = check_count("sinks", sinks)
    rows = np.arange(n)
    sink_stop = np.minimum(sinks, rows + 1)
    starts = np.stack([np.zeros(n, np.int64), np.maximum(rows - window + 1, sink_stop)], 1)
    stops = np.stack([sink_stop, rows + 1], 1)                         # (n, 2)
    return from_ranges(n, n, starts, stops)


def longformer(n: int, window: int, global_tokens: int | Sequence[int]) -> RouteSet:
    """Longformer: a symmetric window plus global tokens (non-causal).

    ``|i - j| <= window // 2``, plus every route from or to a global token.
    ``global_tokens`` is a count (the first tokens) or a list of positions. Fan-in: ``n``
    for a global token, else at most ``2 · (window // 2) + 1 + len(global_tokens)``.

    Examples
    --------
    >>> longformer(5, 2, [4]).to_mask().astype(int)
    array([[1, 1, 0, 0, 1],
           [1, 1, 1, 0, 1],
           [0, 1, 1, 1, 1],
           [0, 0, 1, 1, 1],
           [1, 1, 1, 1, 1]])
    """
    n, window = check_count("n", n), check_count("window", window)
    chosen = _positions("global_tokens", global_tokens, n)
    rows, half = np.arange(n), window // 2
    band = (rows - half, rows + half + 1)
    # Global keys outside the band are one-key ranges; inside it, they are already covered.
    outside = (chosen[None, :] < band[0][:, None]) | (chosen[None, :] >= band[1][:, None])
    starts = np.concatenate([band[0][:, None], np.where(outside, chosen, 0)], 1)
    stops = np.concatenate([band[1][:, None], np.where(outside, chosen + 1, 0)], 1)
    is_global = np.zeros(n, bool)
    is_global[chosen] = True
    starts[is_global], stops[is_global] = 0, 0
    starts[is_global, 0], stops[is_global, 0] = 0, n
    order = np.argsort(np.where(stops > starts, starts, n + 1), axis=1, kind="stable")
    return from_ranges(n, n, np.take_along_axis(starts, order, 1),
                       np.take_along_axis(stops, order, 1))


def bigbird(n: int, block: int, *, window_blocks: int = 3, global_blocks: int = 2,
            random_blocks: int = 3, seed: int = 0) -> RouteSet:
    """BigBird, at block level: global, window and random key blocks.

    Tokens fall into blocks of ``block`` (the last may be shorter). The global blocks are
    the first ``ceil(global_blocks / 2)`` and the last ``global_blocks // 2`` blocks (the
    first and the last by default): their queries see every key, and every query sees
    them. Every other query block sees its window blocks (itself and ``window_blocks //
    2`` neighbours each side) and ``random_blocks`` other blocks drawn, block by block in
    ascending order, by ``np.random.default_rng(seed).choice(candidates, size, replace=
    False)`` from the blocks neither global nor in its window. Fan-in: ``n`` for a global
    token, else at most ``block · (2 · (window_blocks // 2) + 1 + global_blocks +
    random_blocks)`` (the window always holds the query's own block).

    Examples
    --------
    >>> bigbird(8, 2, random_blocks=0).to_mask().astype(int)[2:4]
    array([[1, 1, 1, 1, 1, 1, 1, 1],
           [1, 1, 1, 1, 1, 1, 1, 1]])
    >>> bigbird(10, 2, window_blocks=1, random_blocks=1).routes_per_query().tolist()
    [10, 10, 8, 8, 8, 8, 8, 8, 10, 10]
    """
    n, block = check_count("n", n), _positive("block", block)
    window_blocks, random_blocks = check_count("window_blocks", window_blocks), \
        check_count("random_blocks", random_blocks)
    n_blocks = -(-n // block)
    first, last = -(-check_count("global_blocks", global_blocks) // 2), global_blocks // 2
    is_global = np.zeros(n_blocks, bool)
    is_global[:first], is_global[n_blocks - last:] = True, True
    rng = np.random.default_rng(seed)
    seen = []
    for row in range(n_blocks):
        if is_global[row]:
            seen.append(np.arange(n_blocks))
            continue
        window = np.zeros(n_blocks, bool)
        window[max(row - window_blocks // 2, 0):row + window_blocks // 2 + 1] = True
        candidates = np.flatnonzero(~window & ~is_global)
        drawn = rng.choice(candidates, size=min(random_blocks, len(candidates)), replace=False)
        chosen = window | is_global
        chosen[drawn] = True
        seen.append(np.flatnonzero(chosen))
    width = max(map(len, seen), default=0)
    blocks = np.full((n_blocks, width), -1)                            # (blocks, ranges)
    for row, picked in enumerate(seen):
        blocks[row, :len(picked)] = picked
    per_token = blocks[np.arange(n) // block]                          # (n, ranges)
    starts = np.where(per_token >= 0, per_token * block, 0)
    return from_ranges(n, n, starts, np.where(per_token >= 0, starts + block, 0))


def dilated(n: int, window: int, dilation: int) -> RouteSet:
    """Causal dilated window: ``window`` keys spaced ``dilation`` apart, ending at ``i``.

    Key ``j`` is reachable from ``i`` iff ``j <= i``, ``(i - j) % dilation == 0`` and
    ``i - j < window · dilation``. Fan-in: ``min(window, i // dilation + 1)``.

    Examples
    --------
    >>> dilated(6, 2, 2).to_mask().astype(int)[4:]
    array([[0, 0, 1, 0, 1, 0],
           [0, 0, 0, 1, 0, 1]])
    """
    n, window, dilation = check_count("n", n), _positive("window", window), \
        _positive("dilation", dilation)
    rows = np.arange(n)
    counts = np.minimum(window, rows // dilation + 1)                  # (n,)
    indptr = np.concatenate(([0], np.cumsum(counts)))
    step = np.arange(indptr[-1]) - np.repeat(indptr[:-1], counts)      # (R,) 0 .. count-1
    indices = np.repeat(rows - dilation * (counts - 1), counts) + dilation * step
    return RouteSet(indptr, indices, n, n)


def document(lengths: Sequence[int], *, causal: bool = False) -> RouteSet:
    """Packed documents: a token reaches only tokens of its own document.

    Documents of ``lengths`` follow one another; ``j`` is reachable from ``i`` iff both lie
    in the same document (and ``j <= i`` when ``causal``). Fan-in: the document's length
    (causal: the position inside it, plus one).

    Examples
    --------
    >>> document([2, 1]).to_mask().astype(int)
    array([[1, 1, 0],
           [1, 1, 0],
           [0, 0, 1]])
    """
    sizes = np.asarray(lengths)
    if sizes.size == 0:
        sizes = sizes.astype(np.int64)
    if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or (sizes < 0).any():
        raise InvalidArgumentError(f"lengths must be a 1-D list of non-negative integers, got "
                                   f"{sizes.tolist()!r}")
    ends = np.cumsum(sizes)
    n = int(ends[-1]) if len(ends) else 0
    rows = np.arange(n)
    which = np.searchsorted(ends, rows, side="right")                  # (n,) document
    starts = (ends - sizes)[which]
    stops = rows + 1 if causal else ends[which]
    return from_ranges(n, n, starts[:, None], stops[:, None])


def prefix_lm(n: int, prefix: int) -> RouteSet:
    """Prefix LM: the first ``prefix`` tokens see each other; the rest are causal.

    ``j`` is reachable from ``i`` iff ``j < prefix`` or ``j <= i``. Fan-in:
    ``max(prefix, i + 1)`` (capped at ``n``).

    Examples
    --------
    >>> prefix_lm(4, 2).to_mask().astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 1]])
    """
    n, prefix = check_count("n", n), check_count("prefix", prefix)
    rows = np.arange(n)
    return from_ranges(n, n, np.zeros((n, 1), np.int64), np.maximum(prefix, rows + 1)[:, None])


def _positions(name: str, tokens, n: int) -> np.ndarray:
    if isinstance(tokens, (int, np.integer)) and not isinstance(tokens, bool):
        if not 0 <= tokens <= n:
            raise InvalidArgumentError(f"{name} must be a count in 0 .. {n}, got {tokens}")
        return np.arange(int(tokens))
    chosen = np.asarray(tokens)
    if chosen.ndim != 1 or (len(chosen) and (chosen.dtype.kind not in "iu" or chosen.min() < 0
                                             or chosen.max() >= n)):
        raise InvalidArgumentError(f"{name} must be a count or a list of positions in "
                                   f"0 .. {n - 1}, got {tokens!r}")
    return np.unique(chosen.astype(np.int64))


def _positive(name: str, n) -> int:
    if check_count(name, n) == 0:
        raise InvalidArgumentError(f"{name} must be at least 1, got {n!r}")
    return int(n)
