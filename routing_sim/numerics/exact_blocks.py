"""Exact mode on whole blocks of query nodes: error-free matrix products, then one
accurate sum per result with an error bound.

:mod:`routing_sim.numerics.exact` sums each score's 2E exact terms with ``math.fsum``, one
Python call per score and per output entry. Here the sums are matrix products that BLAS
computes exactly (Ozaki's splitting), and the few terms they leave are added up for a
whole block at once:

- **Slices.** Each row ``x`` of queries (or keys, weights, value columns) is cut into
  ``x = x_1 + x_2 + ... + remainder``, ``x_a`` integer multiples of ``μ·2^(-β·a)`` below
  ``μ·2^(-β·(a-1))`` (``μ`` the power of two at or above the row's largest entry). With
  ``β = (53 - bit_length(n)) // 2`` for sums of ``n`` products, every partial sum of
  ``x_a @ y_b`` is an integer multiple of one unit below ``2^53`` units: exact in any
  order, so BLAS's blocking, threads and FMAs change no bit. Slices go on until the
  remainder is 0, or a cap (then the remainder is bounded, or its row is left undecided).
- **Accurate sum.** The products' ``A·B`` matrices (and a scale's exact product errors,
  and a bias) are added entrywise with two levels of error-free sums (TwoSum) and a float
  third level: ``s + r + Σ τ`` is the exact total, and the float sum of the ``τ`` is off
  by at most ``64·2⁻⁵³·Σ|τ|``, about ``2⁻¹⁵⁰`` of the total.

So a score comes out as a double-double ``(high, low)`` with a rigorous bound; ``high``
is the correctly rounded score wherever the bound shows every number within it rounds
the same (Ziv's test), and the bound is at most ``2⁻¹⁰⁵·|high|`` (what
:func:`~routing_sim.numerics.exact.exact_unnormalised` assumes of a score). A score the
test cannot decide (massive cancellation, a result next to a rounding boundary, inputs
outside the safe range) is reported undecided; the caller computes it with
:func:`~routing_sim.numerics.exact.exact_scores`. An output entry's numerator comes with
its bound the same way, and :func:`exact_outputs` rounds ``numerator / l`` once or
leaves it NaN (undecided) for :func:`~routing_sim.numerics.exact.exact_pull` and the
integer tier. Every entry's arithmetic is elementwise, so a result does not depend on
the block it was computed in, beyond being decided or not.
"""

from __future__ import annotations

import numpy as np

from .exact import dd_quotient, rounded_or_nan, two_sum, weight_error

__all__ = ["exact_dots", "exact_outputs", "split_rows"]

_UNIT = 2.0**-53                # unit roundoff of float64
_CARRIES = 64                   # most third-level terms a sum takes (its bound counts these)
_MARGIN = 1.0 + 2.0**-40        # covers the rounding of a bound's own float arithmetic
_SPAN = 2.0**200                # rows and scales within 2^±200: no slice product underflows
_SCORE_BOUND = 2.0**-105        # a decided score is within this of |high|
_FLOOR = 2.0**-1070             # absolute slack: subnormal rounding of the third level
_TINY = 2.0**-960               # outputs below this: the integer tier (as exact_pull)
_BOUND_ROOT = 2.0**-548         # e below e^-760 is 0, bounded by its square (as exact_pull)
_PIECE = 2**18                  # multiply-adds per BLAS call (OpenBLAS: one thread)


def split_rows(x: np.ndarray, beta: int, most: int
               ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Cut each row of ``x`` into slices whose products with another's are exact.

    Returns ``(slices, remainder, usable)``: ``x = Σ slices + remainder`` exactly for the
    ``usable`` rows (finite, largest entry within ``2^±200``, or all zero); the others are
    zero in every slice. Slicing stops once every remainder is 0, or after ``most``.

    Examples
    --------
    >>> x = np.array([[1.0 + 2.0**-30, 3.0], [0.0, 0.0]])
    >>> slices, remainder, usable = split_rows(x, beta=20, most=4)
    >>> len(slices), bool((sum(slices) == x).all()), remainder.any(), usable.tolist()
    (2, True, np.False_, [True, True])
    """
    x = np.asarray(x, np.float64)                                      # (rows, n)
    with np.errstate(invalid="ignore"):
        top = np.abs(x).max(axis=1, initial=0.0)                       # (rows,)
        usable = (np.isfinite(x).all(axis=1)
                  & ((top == 0) | ((top >= 1 / _SPAN) & (top <= _SPAN))))
    _, exponent = np.frexp(np.where(usable & (top > 0), top, 1.0))    # top <= 2^exponent
    unit = np.ldexp(1.0, exponent)[:, None]                            # (rows, 1) μ
    remainder = np.where(usable[:, None], x, 0.0)                      # (rows, n)
    slices: list[np.ndarray] = []
    while len(slices) < most and remainder.any():
        unit = unit * 2.0**-beta                                       # exact: a power of 2
        part = np.rint(remainder / unit) * unit                        # nearest multiple
        remainder = remainder - part                                   # exact (|.| <= unit/2)
        slices.append(part)
    return slices, remainder, usable


def _matmul(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x @ y`` in pieces of at most 2^18 multiply-adds, which OpenBLAS runs on one
    thread. Its threads, on a machine whose cores are busy, wait for each other: a
    128 x 64 x 128 product took 60-300 ms under load, against 10 ms in such pieces.
    (Slice products are exact, so the pieces change no bit of them.)"""
    rows = max(1, _PIECE // max(y.shape[0] * y.shape[1], 1))
    if rows >= len(x):
        return x @ y                                                   # (Nx, Ny)
    return np.concatenate([x[start:start + rows] @ y for start in range(0, len(x), rows)])


def _beta(length: int) -> int:
    """Bits per slice so that a sum of ``length`` slice products stays below 2^53 units."""
    return (53 - max(length, 1).bit_length()) // 2


class _Sum:
    """Entrywise accurate sum of float arrays: ``s + r + Σ τ`` holds the exact total."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.first = np.zeros(shape)       # s: the running float sum
        self.second = np.zeros(shape)      # r: its errors, summed error-free
        self.third = np.zeros(shape)       # t: the errors of r, in floats
        self.size = np.zeros(shape)        # Σ|τ|, which bounds t's rounding
        self.carries = 0

    def add(self, terms: np.ndarray) -> None:
        self.first, error = two_sum(self.first, terms)
        self.carry(error)

    def carry(self, terms: np.ndarray) -> None:
        """Add terms known to be far below the total (errors of other terms)."""
        self.second, error = two_sum(self.second, terms)
        self.third += error
        self.size += np.abs(error)
        self.carries += 1

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(high, low, bound)``: ``high = fl(high + low)`` and the exact total within
        ``bound`` of ``high + low``."""
        assert self.carries < _CARRIES, "the bound counts at most 64 third-level terms"
        high, error = two_sum(self.first, self.second)
        rest = error + self.third                                      # rounds once
        high, low = two_sum(high, rest)
        bound = (_CARRIES * _UNIT * self.size + _UNIT * np.abs(rest)) * _MARGIN + _FLOOR
        # Every third-level term 0: rest is error, exactly, and high + low the total.
        return high, low, np.where(self.size == 0, 0.0, bound)


def _scaled(total: _Sum, products: np.ndarray, scale: float) -> None:
    """Add ``products · scale`` exactly: the rounded product, then its error (Dekker)."""
    scaled = products * scale
    total.add(scaled)
    if scale != 0 and np.frexp(scale)[0] != 0.5:       # a power of two scales exactly
        total.carry(_product_error(products, scale, scaled))


def _product_error(a: np.ndarray, b: float, product: np.ndarray) -> np.ndarray:
    """``a · b - fl(a · b)`` exactly (Dekker's TwoProduct; no overflow or underflow)."""
    a_high, a_low = _split(a)
    b_high, b_low = _split(np.float64(b))
    return (((a_high * b_high - product) + a_high * b_low) + a_low * b_high) + a_low * b_low


def _split(x):
    scaled = 134217729.0 * x                                           # 2^27 + 1
    high = scaled - (scaled - x)
    return high, x - high


def exact_dots(queries: np.ndarray, keys: np.ndarray, scale: float, rows: np.ndarray,
               cols: np.ndarray, bias: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores ``queries[rows] · keys[cols] · scale + bias`` of some pairs, as
    double-doubles: ``(high, low, decided)``, each ``(P,)``.

    Where ``decided``, ``high`` is the correctly rounded score and ``|s - high - low| <=
    2⁻¹⁰⁵·|high|`` (what :func:`~routing_sim.numerics.exact.exact_scores` gives); elsewhere
    the pair is left to it. The products are exact matrix products of slices
    (:func:`split_rows`), so the work is a few BLAS calls and ``O(P)`` elementwise steps.

    Examples
    --------
    >>> keys = np.array([[1e16, 1.0, -1e16], [0.1, 0.2, 0.3]])
    >>> high, low, decided = exact_dots(np.ones((1, 3)), keys, 1.0, np.zeros(2, int),
    ...                                 np.arange(2))
    >>> high.tolist(), decided.tolist()          # floats would give 0.0, 0.6000000000000001
    ([1.0, 0.6], [True, True])
    """
    scale = float(scale)
    if not (scale == 0 or 1 / _SPAN <= abs(scale) <= _SPAN):     # left to exact_scores
        undecided = np.zeros(rows.shape)
        return undecided, undecided.copy(), np.zeros(rows.shape, dtype=bool)
    dim = queries.shape[1]
    beta, most = _beta(dim), 4
    query_slices, query_left, query_ok = split_rows(queries, beta, most)
    key_slices, key_left, key_ok = split_rows(keys, beta, most)
    usable = (query_ok & ~query_left.any(axis=1))[rows] & (key_ok & ~key_left.any(axis=1))[cols]
    if bias is not None:
        bias = np.asarray(bias, np.float64)
        usable &= np.isfinite(bias)
    total = _Sum(rows.shape)
    # Largest slices first: the running sum stays close to the total.
    for a, b in sorted(np.ndindex(len(query_slices), len(key_slices)), key=sum):
        products = _matmul(query_slices[a], key_slices[b].T)      # (Nq, Nk) exact
        _scaled(total, products[rows, cols], scale)                   # (P,)
    if bias is not None:
        total.add(np.where(usable, bias, 0.0))
    high, low, bound = total.result()
    toward_zero = np.abs(high - np.nextafter(high, 0.0))               # the smaller gap
    decided = usable & ((bound == 0) | (bound <= _SCORE_BOUND * np.abs(high))
                        & ((np.abs(low) + bound) * _MARGIN < 0.5 * toward_zero))
    return high, low, decided


def exact_outputs(e_high: np.ndarray, e_low: np.ndarray, pulled: np.ndarray,
                  l_high: np.ndarray, l_low: np.ndarray, values: np.ndarray, top: np.ndarray
                  ) -> np.ndarray:
    """Outputs ``o = Σ_j e_j v_j / l`` of a block of query nodes, each rounded once; NaN
    where not decided (left to :func:`~routing_sim.numerics.exact.exact_pull`).

    ``e_high``, ``e_low``: ``(N, S)`` the weights ``e = exp(s - m)`` of each node's
    routes as double-doubles; ``pulled``: ``(N, S)`` the routes whose value it pulled;
    ``l_high``, ``l_low``: ``(N,)`` the normalisers; ``values``: ``(S, Ev)``; ``top``:
    ``(N,)`` each node's largest score. The numerator ``Σ_j e_hi v_j`` is an exact sum of
    slice products (the parts of weights below ``2⁻¹¹⁰`` of a row's largest are bounded,
    not sliced), ``Σ_j e_lo v_j`` a float product with its bound; the error bound then
    takes the weights' own error (``weight_error(top)``), the weights taken as 0 (each below
    ``2⁻¹⁰⁹⁶``) and the division, as :func:`~routing_sim.numerics.exact.exact_pull` does.

    Examples
    --------
    >>> e = np.array([[1.0, 0.5]])
    >>> out = exact_outputs(e, np.zeros((1, 2)), e > 0, np.array([1.5]), np.zeros(1),
    ...                     np.array([[3.0], [0.0]]), np.zeros(1))
    >>> out.tolist()
    [[2.0]]
    """
    values = np.asarray(values, np.float64)                            # (S, Ev)
    n_keys = values.shape[0]
    beta = _beta(n_keys)
    usable = (np.isfinite(l_high) & np.isfinite(e_high).all(axis=1)
              & np.isfinite(e_low).all(axis=1))                        # (N,)
    e_high = np.where(pulled & usable[:, None], e_high, 0.0)           # (N, S)
    e_low = np.where(pulled & usable[:, None], e_low, 0.0)             # (N, S)
    weight_slices, weight_left, weight_ok = split_rows(e_high, beta, -(-110 // beta))
    value_slices, value_left, value_ok = split_rows(values.T, beta, 4)  # per column
    usable &= weight_ok & value_ok.all()
    size = np.abs(values)                                              # (S, Ev)
    total = _Sum((len(e_high), values.shape[1]))
    for a, b in sorted(np.ndindex(len(weight_slices), len(value_slices)), key=sum):
        total.add(_matmul(weight_slices[a], value_slices[b].T))       # (N, Ev) exact
    total.add(_matmul(e_low, values))                                  # (N, Ev) rounded
    high, low, bound = total.result()
    bounded = (pulled & (e_high == 0)).astype(np.float64)              # (N, S) e < e^-760
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # NaN: undecided
        magnitude = _matmul(e_high, size)                              # (N, Ev) Σ e|v|
        # The float product Σ e_lo·v, the remainders left unsliced (|Σ_a W_a| <= 2·e),
        # the weights taken as 0; a product that underflows loses less than 2^-1074.
        error = (n_keys * _UNIT * _matmul(np.abs(e_low), size)
                 + _matmul(np.abs(weight_left), size)
                 + 2 * _matmul(e_high, np.abs(value_left.T))
                 + _matmul(bounded, size) * _BOUND_ROOT * _BOUND_ROOT) * 1.01 \
            + bound + n_keys * 2.0**-1070                              # (N, Ev)
        first, rest = dd_quotient(high, low, l_high[:, None], l_low[:, None])
        error = ((2 * weight_error(top)[:, None] * magnitude * 1.01 + error)
                 / l_high[:, None] + 2.0**-98 * np.abs(first))
    # No pulled route with a weight (or a bounded one) meets a nonzero value: exactly 0.
    zero = _matmul(((e_high != 0) | (bounded != 0)).astype(np.float64),
                   (values != 0).astype(np.float64)) == 0              # (N, Ev)
    decided = usable[:, None] & (np.abs(first) >= _TINY)
    return np.where(usable[:, None] & zero, 0.0, rounded_or_nan(first, rest, error, decided))
