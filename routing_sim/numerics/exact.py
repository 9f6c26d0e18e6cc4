"""Exact mode (``numerics="exact"``): the correctly rounded attention output, fast path.

For every route j of query node i (Σ° = a correctly rounded sum of exact terms,
``math.fsum``; dd = double-double, an unevaluated sum hi + lo of two floats)::

  s_ij  = q_i · k_j · scale + b_ij      every product exact, one Σ°: hi correctly rounded,
                                        lo the correctly rounded rest (error <= 2⁻¹⁰⁴·|s|)
  m_i   = max_j s_hi
  e_ij  = exp(s_ij - m_i)               in dd: range reduction by ln 2, Taylor series,
                                        10 squarings; 0 when s_ij - m_i < -760 (bounded)
  l_i   = Σ°_j e_ij                     kept as a dd
  w_ij  = e_ij / l_i                    one dd division, rounded once: the shares
  o_ic  = (Σ°_{j pulled} e_ij v_jc) / l_i   e_hi·v exactly, the e_lo·v parts in one float sum

Each result carries an error bound (about 2⁻⁸⁷ relative, more for scores above 2¹⁴ and
for the bounded weights): if every number within it rounds to the same float, that float
is the correctly rounded result. Otherwise, or when the double-doubles cannot hold the
row (a weight between e⁻⁷⁶⁰ and e⁻⁶⁶⁰, scores beyond 2⁷⁰ that do not dominate, values
beyond 2⁹⁹⁰, a result below 2⁻⁹⁶⁰), the row's results are NaN: the callers then compute
that row with :func:`routing_sim.numerics.exact_row.exact_row`, in integers. No order of arrival
changes a bit. The work is in float64 whatever the input dtype.

The simulator's default engine computes the scores and outputs of nodes that lost no
route a block at a time (:mod:`routing_sim.numerics.exact_blocks`, no ``fsum``) and comes
here only for what those blocks leave undecided; the matrix reference works row by row
here, so the tests compare two computations that share no summation code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from itertools import chain

import numpy as np
from numpy.typing import ArrayLike

from ..errors import NumericalError

__all__ = ["exact_budget", "exact_lse", "exact_numerator", "exact_pull", "exact_scores",
           "exact_shares", "exact_unnormalised", "log_terms", "rounded_or_nan", "weight_error"]

_LN2 = (0.6931471805599453, 2.3190468138462996e-17)    # ln 2 as a double-double
_SPLIT = 134217729.0            # 2**27 + 1: Dekker's splitting constant
_SAFE_MAX = 2.0**500            # beyond this the split could overflow
_SAFE_MIN = 2.0**-900           # below this a product's error term could underflow
_KEPT = -660.0                  # e = exp(d) computed for d >= this (e, e_lo normal)
_BOUNDED = -760.0               # e < 2^-1096 for d < this: taken as 0, bounded
_BOUND_ROOT = 2.0**-548         # its square 2^-1096 > exp(_BOUNDED) (not a float)
_RELATIVE = 2.0**-87            # error of e from exp, range reduction and rounding of d
_TINY = 2.0**-960               # results below: the dd division may underflow
_PIECE = 2**15                  # elementwise work in pieces that stay in cache (3x faster
                                # than over 2^18 elements at once; the same bits)


def exact_scores(keys: np.ndarray, query: np.ndarray, scale: float,
                 bias: np.ndarray | None = None, *,
                 name: Callable[[int], str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores as double-doubles ``(s_hi, s_lo)``: ``s_hi`` is the correctly rounded
    ``q·k·scale + b`` and ``s_lo`` the correctly rounded rest.

    Rows whose products the float error-free transformations cannot take (huge or tiny
    entries, intermediate overflow) are computed with ``fractions.Fraction``. A score
    whose correctly rounded value is ±inf raises NumericalError (``name(j)`` names the
    score of key row ``j`` in it); any finite score works, whatever its intermediate
    products.

    Examples
    --------
    >>> keys = np.array([[1e16, 1.0, -1e16]])
    >>> high, low = exact_scores(keys, np.array([1.0, 1.0, 1.0]), 1.0)
    >>> float(high[0]), float(low[0])
    (1.0, 0.0)
    >>> float(exact_scores(np.array([[1.5e154]]), np.array([1e154]), 1.0)[0][0])
    1.5e+308
    """
    keys64, query64 = np.asarray(keys, np.float64), np.asarray(query, np.float64)
    scale64 = np.float64(scale)
    bias64 = np.zeros(len(keys64)) if bias is None else np.asarray(bias, np.float64)
    with np.errstate(all="ignore"):
        products = keys64 * query64                                    # (n, E)
        error = _product_error(keys64, np.broadcast_to(query64, keys64.shape), products)
        exact_products = (_in_range(products).all(axis=1)             # (n,) error exact
                          & (np.abs(keys64).max(axis=1, initial=0) < _SAFE_MAX)
                          & bool(np.abs(query64).max(initial=0) < _SAFE_MAX))
        if bias is None:           # q·k as a dd first: its error is 2⁻¹⁰⁶ of the score
            dot_high, dot_low = np.zeros((2, len(keys64), 1))          # (n, 1) each
            if exact_products.any():
                sums = row_sums(np.concatenate([products, error], axis=1)[exact_products])
                dot_high[exact_products, 0], dot_low[exact_products, 0] = sums
            products, error = dot_high, dot_low
        scaled, scaled_error = products * scale64, error * scale64     # (n, E) or (n, 1)
        scale_full = np.full_like(products, scale64)
        terms = np.concatenate([scaled, _product_error(products, scale_full, scaled),
                                scaled_error, _product_error(error, scale_full, scaled_error),
                                bias64[:, None]], axis=1)              # (n, 4E + 1) or (n, 5)
        safe = exact_products & _safe_rows(products, error, scaled, scaled_error, scale64,
                                           bias64)
    high, low = np.zeros(len(keys64)), np.zeros(len(keys64))
    if safe.any():
        high[safe], low[safe] = row_sums(terms[safe])
    for row in np.flatnonzero(~safe).tolist():
        high[row], low[row] = _fraction_score(keys64[row], query64, scale64, bias64[row],
                                              "a score" if name is None else name(row))
    return high, low


def _safe_rows(products, error, scaled, scaled_error, scale, bias) -> np.ndarray:
    """Rows where every product by the scale and its error term is exact in floats and
    no partial sum can overflow."""
    scale_ok = scale == 0 or 2.0**-400 <= abs(scale) <= 2.0**400
    in_range = _in_range(products) & _in_range(scaled) & _in_range(scaled_error)
    return (scale_ok & in_range.all(axis=1)
            & (np.abs(error) < 2.0**990).all(axis=1)
            & (np.abs(scaled).sum(axis=1) * 2 + np.abs(bias) < 2.0**1020))


def _in_range(x: np.ndarray) -> np.ndarray:
    """0, or a magnitude whose products and error terms stay normal and finite."""
    size = np.abs(x)
    return (size == 0) | ((size >= _SAFE_MIN) & (size < 2.0**990))


def _fraction_score(key: np.ndarray, query: np.ndarray, scale: float, bias: float,
                    name: str) -> tuple[float, float]:
    """One score exactly, in fractions: (correctly rounded, correctly rounded rest)."""
    exact = sum((Fraction(x) * Fraction(y) for x, y in zip(key.tolist(), query.tolist())),
                Fraction(0)) * Fraction(float(scale)) + Fraction(float(bias))
    try:
        high = float(exact)
    except OverflowError:
        high = math.inf
    if math.isinf(high):
        raise NumericalError(f"{name} overflowed float64 (|q·k·scale + bias| rounds to inf); "
                             "scale the inputs down")
    return high, float(exact - Fraction(high))


def row_sums(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the correctly rounded sum, and the correctly rounded remainder."""
    terms = np.ascontiguousarray(terms, dtype=np.float64)
    width = terms.shape[1]
    flat = terms.reshape(-1).data                 # fsum reads floats straight from memory
    starts = range(0, len(flat), width)
    high = [math.fsum(flat[start:start + width]) for start in starts]
    low = [math.fsum(chain(flat[start:start + width], (-h,))) for start, h in zip(starts, high)]
    return np.array(high), np.array(low)


def exact_unnormalised(high: np.ndarray, low: np.ndarray, dd_max: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(e_hi, e_lo, l_hi, l_lo)``: ``e = exp(s - m)`` per route and ``l = Σ e`` per row,
    as double-doubles. Works on one node's scores or on rows of equal length (elementwise
    and per-row work only, so a row stacked with others gets its bits alone).

    ``m`` is the largest score as a double-double (``dd_max=False``: its high part, the
    ``m`` a partial state carries). A weight below e⁻⁷⁶⁰ is 0 (bounded by
    :func:`exact_shares` and :func:`exact_pull`). A row the double-doubles cannot decide
    gets NaN throughout.
    """
    if high.ndim == 2 and high.size > _PIECE:                          # rows, in pieces
        rows = max(1, _PIECE // high.shape[1])
        parts = [exact_unnormalised(high[start:start + rows], low[start:start + rows], dd_max)
                 for start in range(0, len(high), rows)]
        return tuple(np.concatenate(part) for part in zip(*parts))    # type: ignore[return-value]
    top, top_low, reference = _dd_max(high, low)                       # (..., 1) each
    if not dd_max:
        top_low = np.zeros_like(top)
    with np.errstate(over="ignore", invalid="ignore"):
        near = (high - top) >= -2048.0                                 # else e < e^-2048
        # |s - s_hi - s_lo| <= 2^-104·|s_hi| at both ends: the error of d = s - m
        slack = 2.0**-103 * np.abs(high) + 2.0**-103 * np.abs(top) + 2.0**-1060
    if dd_max:
        np.put_along_axis(slack, reference, 0.0, -1)                   # d = 0 exactly
    shifted, error = two_sum(np.where(near, high, top), np.broadcast_to(-top, high.shape))
    d_high, d_low = _fast_two_sum(shifted, error + (np.where(near, low, top_low) - top_low))
    bounded = ~near | (d_high + slack < _BOUNDED)
    kept = near & (d_high - slack >= _KEPT) & (slack <= 2.0**-30) & (d_high <= 1.0)
    e_high, e_low = dd_exp(np.where(kept, d_high, 0.0), np.where(kept, d_low, 0.0))
    e_high, e_low = np.where(kept, e_high, 0.0), np.where(kept, e_low, 0.0)
    undecided = ((~bounded & ~kept).any(axis=-1, keepdims=True)        # (..., 1)
                 | ~kept.any(axis=-1, keepdims=True))                  # m above every s
    e_high = np.where(undecided, np.nan, e_high)
    rows = np.concatenate([e_high, e_low], axis=-1).reshape(-1, 2 * high.shape[-1])
    l_high, l_low = row_sums(rows)
    return e_high, e_low, l_high.reshape(high.shape[:-1]), l_low.reshape(high.shape[:-1])


def _dd_max(high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(m_hi, m_lo, where)`` ``(..., 1)`` each: a row's largest score as a double-double
    (the largest high part, then the largest low part among its ties) and its index."""
    top = high.max(axis=-1, keepdims=True)                             # (..., 1)
    candidates = np.where(high == top, low, -np.inf)                   # (..., n)
    reference = np.argmax(candidates, axis=-1)[..., None]              # (..., 1)
    return top, np.take_along_axis(candidates, reference, -1), reference


def exact_lse(high: np.ndarray, low: np.ndarray, l_high: ArrayLike, l_low: ArrayLike
              ) -> np.ndarray:
    """The log-sum-exp ``log Σ_j exp(s_j) = m + log l`` of rows of scores ``(high, low)``
    (a sink logit is one more entry), correctly rounded; NaN where not decided.

    ``l_high + l_low`` is the row's ``l = Σ exp(s - m)`` from :func:`exact_unnormalised`
    (``m`` the largest score as a double-double, so ``l >= 1``). ``log l`` is
    :func:`log_terms`' one Newton step from ``y = log(l_hi)`` (``y < 64`` is within an
    ulp of ``log l_hi``, so ``|u| < 2⁻⁴⁶`` and ``u²/2 < 2⁻⁹³``). The absolute
    error of ``m + y + u`` is at most ``l``'s relative error (each ``e`` within
    :func:`weight_error`, at least ``2⁻⁸⁷``; the bounded ones under ``2⁻¹⁰⁹⁶`` each), plus
    ``dd_exp``'s ``2⁻⁹³``, ``u²/2`` and the products' ``2⁻¹⁰⁴``: ``2 · weight_error(m) + n ·
    2⁻¹⁰⁹⁰`` holds it. Where every
    number within that bound rounds to the same float (Ziv's test), that float is the
    correctly rounded lse; elsewhere (or where ``l`` is NaN) the row gets NaN and
    :func:`~routing_sim.numerics.exact_row.exact_row_lse` decides it in integers. A row of one
    score is that score (``high`` is its correctly rounded value).

    Examples
    --------
    >>> high, low = np.array([[0.0, 0.0]]), np.zeros((1, 2))
    >>> *_, l_high, l_low = exact_unnormalised(high, low)
    >>> exact_lse(high, low, l_high, l_low).tolist() == [float(np.log(2))]
    True
    """
    if high.shape[-1] == 1:
        return high[..., 0].astype(np.float64)
    top, top_low, _ = _dd_max(high, low)                               # (..., 1) each
    l_high, l_low = np.asarray(l_high, np.float64), np.asarray(l_low, np.float64)
    known = ~np.isnan(l_high)                                          # (...,)
    l_high, l_low = np.where(known, l_high, 1.0), np.where(known, l_low, 0.0)
    terms = np.stack([top[..., 0], top_low[..., 0], *log_terms(l_high, l_low)], axis=-1)
    first, rest = row_sums(terms.reshape(-1, 5))
    error = 2 * weight_error(top[..., 0]) + high.shape[-1] * 2.0**-1090   # (...,)
    return rounded_or_nan(first.reshape(known.shape), rest.reshape(known.shape), error, known)


def log_terms(l_high: np.ndarray, l_low: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``log l`` of a double-double ``l = l_high + l_low >= 1`` as three floats ``y``,
    ``u_high``, ``u_low`` (elementwise) whose exact sum is within ``2⁻⁹²`` of it (an
    error ``l`` itself carries adds its relative size on top).

    One Newton step from the float guess ``y = log(l_high)``: ``log l = y + log(1 + u)``
    with ``1 + u = l · exp(-y)`` in double-doubles, ``|u| < 2⁻⁴⁶``; taking ``u`` for
    ``log(1 + u)`` leaves ``u²/2 < 2⁻⁹³``, and ``dd_exp`` adds at most ``2⁻⁹³``.
    ``u_high = p_high - 1`` is exact (Sterbenz: ``p_high`` is within ``2⁻⁴⁶`` of 1).

    Examples
    --------
    >>> y, u_high, u_low = log_terms(np.array([3.0]), np.array([2.0**-60]))
    >>> from fractions import Fraction
    >>> total = sum(Fraction(float(t[0])) for t in (y, u_high, u_low))
    >>> float(total) == float(np.log(3.0))
    True
    """
    guess = np.log(l_high)                                             # (...,) y >= 0
    t_high, t_low = dd_exp(-guess, np.zeros_like(guess))               # exp(-y)
    p_high, p_low = dd_multiply(l_high, l_low, t_high, t_low)          # 1 + u
    return guess, p_high - 1.0, p_low


def exact_budget(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Shares ``w = e / l`` of one node's routes (or rows), each rounded once (NaN for a
    row only :func:`~routing_sim.numerics.exact_row.exact_row` can decide)."""
    return exact_shares(*exact_unnormalised(high, low), top=high.max(axis=-1))


def weight_error(top: ArrayLike) -> np.ndarray:
    """Relative error bound of each e: exp and rounding, plus the scores' dd error
    (``top``: the row's largest score).

    Examples
    --------
    >>> float(weight_error(0.0)) == 2.0**-87
    True
    """
    return _RELATIVE + 2.0**-100 * np.abs(np.asarray(top, np.float64))


def exact_shares(e_high: np.ndarray, e_low: np.ndarray, l_high: ArrayLike, l_low: ArrayLike,
                 top: ArrayLike) -> np.ndarray:
    """``e / l`` from :func:`exact_unnormalised`'s double-doubles, each rounded once; NaN
    where the error bound (``top``: the row's max score) straddles a rounding boundary."""
    l_high, l_low = np.asarray(l_high)[..., None], np.asarray(l_low)[..., None]
    first, rest = dd_quotient(e_high, e_low, l_high, l_low)
    with np.errstate(over="ignore"):                                   # inf: undecided
        error = 2.5 * weight_error(top)[..., None] * np.abs(first)
    return rounded_or_nan(first, rest, error, np.ones(first.shape, dtype=bool))


def exact_pull(e_high: np.ndarray, e_low: np.ndarray, l_high: np.ndarray | float,
               l_low: np.ndarray | float, values: np.ndarray, top: np.ndarray | float
               ) -> np.ndarray:
    """``o_c = Σ_j e_j v_j / l`` over the pulled routes' ``e``: the numerator summed
    exactly, divided once; NaN where the result is not decided (see the module docs)."""
    if len(e_high) == 0:
        return np.zeros(values.shape[1], dtype=values.dtype)
    values64 = np.asarray(values, np.float64)
    if not (np.abs(values64).max(initial=0) < 2.0**990) or np.isnan(l_high):
        return np.full(values.shape[1], np.nan, dtype=values.dtype)
    n_high, n_low = exact_numerator(e_high, e_low, values64)           # (Ev,) each
    first, rest = dd_quotient(n_high, n_low, l_high, l_low)
    size = np.abs(values64)                                            # (n, Ev)
    bounded = (e_high == 0)[:, None]
    magnitude = (np.where(bounded, 0.0, e_high[:, None]) * size).sum(axis=0)  # Σ e|v|
    tail = np.where(bounded, size, 0.0).sum(axis=0) * _BOUND_ROOT * _BOUND_ROOT  # bounded
    underflow = 2.0**-1072 * len(e_high)                               # subnormal products
    with np.errstate(over="ignore"):                                   # inf: undecided
        error = ((2 * weight_error(top) + len(e_high) * 2.0**-104) * magnitude * 1.01 + tail
                 + underflow) / l_high + 2.0**-98 * np.abs(first)
    decided = (np.abs(first) >= _TINY) | ((magnitude == 0) & (tail == 0))
    return rounded_or_nan(first, rest, error, decided).astype(values.dtype)


def rounded_or_nan(first: np.ndarray, rest: np.ndarray, error: np.ndarray, decided: np.ndarray
             ) -> np.ndarray:
    """``fl(first + rest)`` where every number within ``error`` of it rounds the same
    (Ziv's test), else NaN."""
    error = np.maximum(error, 2.0**-50 * np.abs(rest))                 # rest ± error rounds
    result = first + rest
    with np.errstate(invalid="ignore"):                                # inf - inf: undecided
        same = (first + (rest - error)) == (first + (rest + error))
    return np.where(same & decided, result, np.nan)


def exact_numerator(e_high: np.ndarray, e_low: np.ndarray, values: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``n_c = Σ_j e_j v_jc`` as a double-double ``(n_hi, n_lo)``: the numerator of
    :func:`exact_pull` before its one division (also a partial state's numerator)."""
    values64 = values.astype(np.float64)
    if len(e_high) == 0:
        return np.zeros(values.shape[1]), np.zeros(values.shape[1])
    if np.isnan(e_high).any() or not np.abs(values64).max() < 2.0**990:
        undecided = np.full(values.shape[1], np.nan)
        return undecided, undecided.copy()
    weights = np.broadcast_to(e_high[:, None], values64.shape)
    if _dekker_safe(weights, values64):
        products = weights * values64                                  # (n_pulled, Ev)
        # The e_lo parts are ~2⁻⁵³ of the total: one float sum of them is accurate enough.
        tail = (e_low[:, None] * values64).sum(axis=0, keepdims=True)  # (1, Ev)
        terms = np.concatenate([products, _product_error(weights, values64, products), tail],
                               axis=0)                                 # (2·n_pulled + 1, Ev)
        return row_sums(terms.T)
    exact = [sum((Fraction(float(h)) + Fraction(float(lo))) * Fraction(float(v))
                 for h, lo, v in zip(e_high, e_low, values64[:, c]))
             for c in range(values.shape[1])]
    n_high = np.array([float(x) for x in exact])
    return n_high, np.array([float(x - Fraction(h)) for x, h in zip(exact, n_high.tolist())])


def two_sum(a: np.ndarray, b: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's TwoSum: ``a + b = s + e`` exactly."""
    total = a + b
    shifted = total - a
    return total, (a - (total - shifted)) + (b - shifted)


def _fast_two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a + b = s + e`` exactly, for ``|a| >= |b|``."""
    total = a + b
    return total, b - (total - a)


def dd_multiply(a_high: np.ndarray, a_low: np.ndarray, b_high: np.ndarray | float,
                b_low: np.ndarray | float, b_parts: tuple | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(a_high + a_low) · (b_high + b_low)`` as a double-double (``b_parts``: Dekker's
    split of ``b_high``, when the caller has it already)."""
    product = a_high * b_high
    error = (_product_error(a_high, b_high, product, b_parts)
             + (a_high * b_low + a_low * b_high))
    return _fast_two_sum(product, error)


def dd_exp(high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """exp of a double-double ``x <= 0``, as a double-double (relative error < 1e-28 for
    ``x >= -660``; 0 below -800, where it underflows).

    x = k·ln 2 + r; exp(r / 1024) by an 11-term Taylor series in Horner form; then ten
    squarings and a multiplication by 2^k (exact).
    """
    if np.size(high) > _PIECE:                                         # elementwise: pieces
        flat_high, flat_low = np.ravel(high), np.ravel(low)
        parts = [dd_exp(flat_high[start:start + _PIECE], flat_low[start:start + _PIECE])
                 for start in range(0, len(flat_high), _PIECE)]
        return (np.concatenate([part[0] for part in parts]).reshape(np.shape(high)),
                np.concatenate([part[1] for part in parts]).reshape(np.shape(high)))
    gone = high < -800.0
    high, low = np.where(gone, 0.0, high), np.where(gone, 0.0, low)
    with np.errstate(under="ignore"):
        steps = np.rint(high / _LN2[0])
        zero = np.zeros_like(high)
        multiple = dd_multiply(steps, zero, _LN2[0], _LN2[1])
        r_high, error = two_sum(high, -multiple[0])
        r_high, r_low = _fast_two_sum(r_high, error + (low - multiple[1]))
        r_high, r_low = r_high / 1024.0, r_low / 1024.0               # exact: a power of 2
        t_high, t_low = np.ones_like(high), zero
        r_parts = _split(r_high)                                       # split once, not 11x
        for n in range(11, 0, -1):
            t_high, t_low = dd_multiply(t_high, t_low, r_high, r_low, r_parts)
            t_high, t_low = _dd_divide_int(t_high, t_low, n)
            t_high, error = two_sum(t_high, 1.0)
            t_high, t_low = _fast_two_sum(t_high, error + t_low)
        for _ in range(10):
            t_high, t_low = dd_multiply(t_high, t_low, t_high, t_low)
        exponent = steps.astype(np.int64)
        t_high, t_low = np.ldexp(t_high, exponent), np.ldexp(t_low, exponent)
    return np.where(gone, 0.0, t_high), np.where(gone, 0.0, t_low)


def _dd_divide_int(high, low, n: int) -> tuple[np.ndarray, np.ndarray]:
    quotient = high / n
    product = quotient * n
    error = _product_error(quotient, float(n), product)
    return _fast_two_sum(quotient, ((high - product) - error + low) / n)


def dd_quotient(n_high: np.ndarray, n_low: np.ndarray, d_high: np.ndarray | float,
                d_low: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """``(n_high + n_low) / (d_high + d_low)`` as ``first + rest`` (``rest`` unrounded
    into ``first``), for :func:`rounded_or_nan`."""
    with np.errstate(all="ignore"):
        first = n_high / d_high
        product = first * d_high
        error = _product_error(first, np.broadcast_to(d_high, np.shape(first)), product)
        rest = ((n_high - product) - error + n_low - first * d_low) / d_high
    return first, rest


def _dekker_safe(a: np.ndarray, b: np.ndarray) -> bool:
    magnitude = np.abs(a) * np.abs(b)
    return bool(np.abs(a).max(initial=0) < _SAFE_MAX and np.abs(b).max(initial=0) < _SAFE_MAX
                and not ((magnitude > 0) & (magnitude < _SAFE_MIN)).any())


def _product_error(a: np.ndarray, b: np.ndarray | float, product: np.ndarray,
                   b_parts: tuple | None = None) -> np.ndarray:
    """Dekker's TwoProduct: ``a · b - fl(a · b)``, exactly (given no overflow/underflow).
    A square (``b is a``) or a given ``b_parts`` splits once."""
    a_high, a_low = _split(a)
    b_high, b_low = b_parts if b_parts is not None else (a_high, a_low) if b is a \
        else _split(b)
    return (((a_high * b_high - product) + a_high * b_low) + a_low * b_high) + a_low * b_low


def _split(x: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
    scaled = _SPLIT * x
    high = scaled - (scaled - x)
    return high, x - high
