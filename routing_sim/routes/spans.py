"""Key spans: FlashAttention's ``window_size`` and packed sequences (``cu_seqlens``) as routes.

Both give each query token one contiguous range of key tokens, so together they are a
route set built from one ``[start, stop)`` range per query, in O(L + routes) time and
memory, never an ``L × S`` array. For query row ``i`` of packed sequence ``b`` (one
sequence spanning everything when no ``cu_seqlens`` is given), with ``i' = i - cu_q[b]``
its place in the sequence and ``L_b``, ``S_b`` the sequence's query and key lengths:

* the keys are those of its own sequence: ``cu_k[b] <= j < cu_k[b + 1]``;
* the window is aligned bottom-right, as FlashAttention aligns it: the query sits at key
  position ``p = i' + S_b - L_b`` and reaches local keys ``p - left <= j' <= p + right``;
* ``is_causal`` reaches local keys ``j' <= i'`` (``"top_left"``) or ``j' <= p``
  (``"bottom_right"``, FlashAttention's ``causal``), per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError
from ..inputs.masks import Window
from ..options import CausalAlignment
from .route_set import RouteSet, from_ranges

__all__ = ["KeySpans", "key_spans"]


@dataclass(frozen=True)
class KeySpans:
    """Each query token's key range ``start:stop`` and the tokens' positions in their
    sequences (where ALiBi and RoPE place them)."""

    start: np.ndarray             # (L,) first key a query reaches
    stop: np.ndarray              # (L,) one past its last key (stop >= start)
    query_positions: np.ndarray   # (L,) each query's position in its sequence's key axis
    key_positions: np.ndarray     # (S,) each key's position in its sequence
    query_sequence: np.ndarray    # (L,) the packed sequence that owns each query
    n_sequences: int = 1          # packed sequences (1 without cu_seqlens)

    def routes(self) -> RouteSet:
        """The spans as a one-group route set."""
        return from_ranges(len(self.start), len(self.key_positions), self.start[:, None],
                           self.stop[:, None])

    def holds(self, query: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Whether each route ``(query (R,), key (R,))`` lies in its query's span."""
        return (self.start[query] <= key) & (key < self.stop[query])


def key_spans(n_queries: int, n_keys: int, window: Window | None,
              sequences: tuple[np.ndarray, np.ndarray] | None, is_causal: bool,
              alignment: CausalAlignment) -> KeySpans:
    """The key span of every query token (see the module docstring for the rules).

    ``window`` and ``sequences`` come checked from
    :func:`~routing_sim.inputs.masks.check_window_size` and
    :func:`~routing_sim.inputs.masks.check_cu_seqlens`.

    Examples
    --------
    >>> spans = key_spans(3, 5, (1, 0), None, False, "top_left")   # bottom-right: 2, 3, 4
    >>> spans.start.tolist(), spans.stop.tolist()
    ([1, 2, 3], [3, 4, 5])
    >>> packed = key_spans(3, 3, None, (np.array([0, 1, 3]), np.array([0, 2, 3])), True,
    ...                    "bottom_right")
    >>> packed.routes().to_mask().astype(int)
    array([[1, 1, 0],
           [0, 0, 0],
           [0, 0, 1]])
    """
    query_start, key_start = sequences if sequences is not None else \
        (np.array([0, n_queries]), np.array([0, n_keys]))
    rows = np.arange(n_queries)
    # The sequence that owns each row; an empty sequence owns none (side="right").
    owner = np.searchsorted(query_start, rows, side="right") - 1       # (L,)
    local = rows - query_start[owner]                                  # (L,) i'
    first_key, end_key = key_start[owner], key_start[owner + 1]        # (L,) x2
    bottom = local + (end_key - first_key) - (query_start[owner + 1] - query_start[owner])
    aligned = bottom if alignment == "bottom_right" else local         # (L,)
    if window is not None and is_causal and not np.array_equal(aligned, bottom):
        raise InvalidArgumentError(
            "window_size with is_causal=True follows FlashAttention: is_causal sets the "
            "window's right side to 0, aligned bottom-right, but causal_alignment='top_left' "
            "aligns is_causal elsewhere when a sequence has more keys than queries or fewer; "
            "pass causal_alignment='bottom_right' (FlashAttention's causal), or give the "
            "window's right side as 0 without is_causal")
    start, stop = first_key.copy(), end_key.copy()
    if is_causal:
        stop = np.minimum(stop, first_key + aligned + 1)
    if window is not None:
        left, right = window
        if left is not None:
            start = np.maximum(start, first_key + bottom - left)
        if right is not None:
            stop = np.minimum(stop, first_key + bottom + right + 1)
    stop = np.maximum(stop, start)                                     # empty, not negative
    key_owner = np.searchsorted(key_start, np.arange(n_keys), side="right") - 1   # (S,)
    return KeySpans(start, stop, aligned, np.arange(n_keys) - key_start[key_owner], owner,
                    len(query_start) - 1)
