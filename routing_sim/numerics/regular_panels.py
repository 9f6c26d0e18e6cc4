"""Regular tile panels: a panel's gathers as strided copies, its scatters as one pattern.

In a sliding window (with or without sinks), a band, or any pattern that repeats along the
diagonal, consecutive tiles of one group look alike: tile ``r`` of a panel reads the same
key intervals as tile 0, each moved by ``r · step`` keys (``step = T`` for a window, 0 for
the sinks), and its routes sit at the same places of its ``T × |U|`` block. Then

- the keys (or values) a panel gathers, ``K[key_rows]``, are one strided view of ``K`` per
  interval, copied into a buffer with no index array;
- the block entries that hold routes are ``rank · T · |U| + pattern``: one ``(P,)`` index
  array, the first tile's, serves every tile (no ``(R,)`` slot array).

A :class:`RegularPanel` fills exactly the arrays the general path builds (the same values in
the same layout), so the products and their bits are those of the general path.

Examples
--------
>>> panel = RegularPanel(np.array([0, 1]), [(0, 2, 10, 2)], 2)    # 2 tiles, one interval
>>> keys = np.arange(32.0).reshape(16, 2)
>>> panel.gather(keys, np.empty((2, 2, 2))).tolist()              # rows 10, 11 and 12, 13
[[[20.0, 21.0], [22.0, 23.0]], [[24.0, 25.0], [26.0, 27.0]]]
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["RegularPanel"]


class RegularPanel:
    """A panel whose tiles repeat each other, shifted: its gathers and scatters.

    Parameters
    ----------
    pattern : ndarray, shape (P,)
        The block entries (``row · |U| + column``) of the first tile's routes, in route
        order; tile ``r``'s are ``r · T · |U| + pattern``.
    intervals : list of (column, length, row, step)
        Each interval of the key union: its first column in the block, its length, its first
        key row (``g · S + j``) in tile 0 and how many rows it moves per tile (``>= 0``).
    tiles : int
        Tiles in the panel.
    """

    def __init__(self, pattern: np.ndarray, intervals: list[tuple[int, int, int, int]],
                 tiles: int) -> None:
        self.pattern, self.intervals, self.tiles = pattern, intervals, tiles

    def part(self, start: int, stop: int) -> RegularPanel:
        """The panel's tiles ``start:stop`` as a panel of their own.

        Examples
        --------
        >>> RegularPanel(np.array([0]), [(0, 2, 10, 2)], 5).part(3, 5).intervals
        [(0, 2, 16, 2)]
        """
        return RegularPanel(self.pattern, [(column, length, first + start * step, step)
                                           for column, length, first, step in self.intervals],
                            stop - start)

    def gather(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``rows[key_rows]`` of the panel into ``out (n, |U|, D)``, for ``rows (G·S, D)``."""
        row_stride, column_stride = rows.strides
        for column, length, first, step in self.intervals:
            moved = as_strided(rows[first:], shape=(self.tiles, length, rows.shape[1]),
                               strides=(step * row_stride, row_stride, column_stride),
                               writeable=False)                        # (n, length, D)
            out[:, column:column + length] = moved
        return out

    def gather_transposed(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``rows[key_rows]`` transposed, ``(n, D, |U|)``, into ``out``: each interval's
        rows transposed once (the rows the whole panel reads), then strided copies."""
        for column, length, first, step in self.intervals:
            reach = (self.tiles - 1) * step + length                   # rows read in all
            flipped = np.ascontiguousarray(rows[first:first + reach].T)  # (D, reach)
            moved = as_strided(flipped, shape=(self.tiles, rows.shape[1], length),
                               strides=(step * flipped.strides[1], *flipped.strides),
                               writeable=False)                        # (n, D, length)
            out[:, :, column:column + length] = moved
        return out

    def take(self, block: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The routes' entries of ``block (n, T, |U|)`` into ``out (n · P,)``, route order."""
        return np.take(block.reshape(self.tiles, -1), self.pattern, axis=1,   # in bounds:
                       out=out.reshape(self.tiles, len(self.pattern)), mode="clip")  # unbuffered

    def slots(self, entries: int) -> np.ndarray:
        """``(n · P,)``: each route's entry in the panel's blocks flattened, for blocks of
        ``entries = T · |U|`` each (tile ``r``'s routes at ``r · entries + pattern``).

        Examples
        --------
        >>> RegularPanel(np.array([0, 3]), [(0, 2, 10, 2)], 2).slots(4).tolist()
        [0, 3, 4, 7]
        """
        return (np.arange(self.tiles)[:, None] * entries + self.pattern).reshape(-1)

    def scatter(self, shares: np.ndarray, out: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """``shares (n · P,)`` at their routes' entries of ``out (n, T·|U|)``, zero
        elsewhere (``slots``: :meth:`slots` of ``T·|U|``, which the caller keeps)."""
        out.fill(0)
        out.reshape(-1)[slots] = shares
        return out
