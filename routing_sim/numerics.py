"""What one query node computes, in a fixed order that no delivery schedule can change.

Every function here works on one query node's routes, listed in source order (ascending
key index). The simulator calls them once per node, over the node's whole route list,
never over "whatever arrived together": BLAS results for a row depend on the shape of
the batch it is computed in, but not on anything else, so one call per node over a
fixed list gives the same bits under every schedule. docs/design.md has the measurement.
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import chain

import numpy as np

from .errors import NumericalError

__all__ = ["Kernels", "exact_budget", "exact_pull", "exact_scores", "exact_shares",
           "exact_numerator", "exact_unnormalised",
           "match_scores", "merge_states", "online_state", "routing_budget", "scale_scores",
           "value_shift", "weighted_pull"]


def match_scores(keys: np.ndarray, query: np.ndarray, scale: float,
                 bias: np.ndarray | None = None) -> np.ndarray:
    """Scores of one query against its reachable keys: ``keys @ query · scale + bias``.

    Overflow to inf is left for the caller to report (it checks whole batches at once).

    Examples
    --------
    >>> match_scores(np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([3.0, 1.0]), 0.5)
    array([2.5, 0.5])
    """
    return scale_scores(keys @ query, scale, bias)                     # (n_routes,)


def scale_scores(dots: np.ndarray, scale: float, bias: np.ndarray | None = None) -> np.ndarray:
    """``dots · scale + bias``, in place: elementwise, so a block of nodes gets each node's
    exact bits."""
    with np.errstate(over="ignore", invalid="ignore"):
        dots *= dots.dtype.type(scale)
        if bias is not None:
            dots += bias
    return dots


def routing_budget(scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Stable softmax of one node's scores (or of rows of equal length): budget shares.

    The row max is subtracted before ``exp``; there is no epsilon and no clamping. Every
    operation is elementwise or a reduction along the row, so a row stacked with others
    gets exactly the bits it gets alone.

    Examples
    --------
    >>> routing_budget(np.log(np.array([5.0, 3.0, 2.0]))).round(2)
    array([0.5, 0.3, 0.2])
    """
    shares = np.subtract(scores, scores.max(axis=-1, keepdims=True), out=out)  # (..., n_routes)
    np.exp(shares, out=shares)
    shares /= shares.sum(axis=-1, keepdims=True)
    return shares


def weighted_pull(shares: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Add up the pulled values, each weighted by its share: ``shares @ values``.

    Examples
    --------
    >>> weighted_pull(np.array([0.5, 0.5]), np.array([[2.0, 0.0], [4.0, 2.0]]))
    array([3., 1.])
    """
    return shares @ values                                             # (Ev,)


# ---------------------------------------------------------------- exact mode
#
# numerics="exact" aims at the correctly rounded attention output. For every route j of
# query node i (Σ° = a correctly rounded sum of exact terms, math.fsum; dd = double-double,
# an unevaluated sum hi + lo of two floats):
#
#   s_ij  = q_i · k_j · scale + b_ij      dot product exact, then kept as a dd (error 2⁻¹⁰⁶)
#   m_i   = max_j s_hi
#   e_ij  = exp(s_ij - m_i)               in dd: range reduction by ln 2, Taylor series,
#                                         10 squarings (relative error below 1e-28)
#   l_i   = Σ_j e_ij                      summed exactly, kept as a dd
#   w_ij  = e_ij / l_i                    one dd division, rounded once: the shares
#   o_ic  = (Σ_{j pulled} e_ij v_jc) / l_i    numerator: e_hi·v exactly, plus the e_lo·v parts
#                                         (~2⁻⁵³ of it) in one float sum; one division,
#                                         rounded once (then · fl(1/(1-p)) under dropout)
#
# Every quantity is carried with ~100 bits until one final rounding, so each output is the
# correctly rounded value of attention on the given floats, except when the exact value
# lies within ~1e-25 (relative) of a rounding boundary or is subnormal (the low part of
# the double-double underflows; the last bit may then be one unit off). No order of arrival changes a bit,
# and attention(numerics="exact") runs these same kernels. The work is done in float64
# whatever the input dtype; float32 inputs get the result rounded to float32.

_LN2 = (0.6931471805599453, 2.3190468138462996e-17)    # ln 2 as a double-double
_SPLIT = 134217729.0            # 2**27 + 1: Dekker's splitting constant
_SAFE_MAX = 2.0**500            # beyond this the split could overflow
_SAFE_MIN = 2.0**-900           # below this a product's error term could underflow


def exact_scores(keys: np.ndarray, query: np.ndarray, scale: float,
                 bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores as double-doubles ``(s_hi, s_lo)``: ``s_hi`` is the correctly rounded
    ``q·k·scale + b`` (with the dot product exact) and ``s_lo`` what rounding left out.

    Examples
    --------
    >>> keys = np.array([[1e16, 1.0, -1e16]])
    >>> high, low = exact_scores(keys, np.array([1.0, 1.0, 1.0]), 1.0)
    >>> float(high[0]), float(low[0])
    (1.0, 0.0)
    """
    keys64, query64 = keys.astype(np.float64), query.astype(np.float64)
    if _dekker_safe(keys64, query64):
        products = keys64 * query64                                    # (n_routes, E)
        error = _product_error(keys64, np.broadcast_to(query64, keys64.shape), products)
        dot_high, dot_low = _row_sums(np.concatenate([products, error], axis=1))
    else:
        exact = [sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(row, query64)),
                     Fraction(0)) for row in keys64]
        dot_high = np.array([float(d) for d in exact])
        dot_low = np.array([float(d - Fraction(h)) for d, h in zip(exact, dot_high.tolist())])
    with np.errstate(over="ignore", invalid="ignore"):
        scale64 = np.float64(scale)
        scaled_high = dot_high * scale64
        scaled_low = _product_error(dot_high, np.full_like(dot_high, scale64), scaled_high)
        tail = dot_low * scale64
    if not (np.isfinite(scaled_high).all() and np.isfinite(scaled_low).all()):
        raise NumericalError("a score overflowed to inf; scale the inputs down")
    bias64 = np.zeros(len(dot_high)) if bias is None else bias.astype(np.float64)
    return _row_sums(np.stack([scaled_high, scaled_low, tail, bias64], axis=1))


def _row_sums(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the correctly rounded sum, and the correctly rounded remainder."""
    terms = np.ascontiguousarray(terms, dtype=np.float64)
    width = terms.shape[1]
    flat = memoryview(terms.reshape(-1))          # fsum reads floats straight from memory
    starts = range(0, len(flat), width)
    high = [math.fsum(flat[start:start + width]) for start in starts]
    low = [math.fsum(chain(flat[start:start + width], (-h,))) for start, h in zip(starts, high)]
    return np.array(high), np.array(low)


def exact_unnormalised(high: np.ndarray, low: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(e_hi, e_lo, l_hi, l_lo)``: ``e = exp(s - m)`` per route and ``l = Σ e`` per row,
    as double-doubles. Works on one node's scores or on rows of equal length (elementwise
    and per-row work only, so a row stacked with others gets its bits alone)."""
    top = high.max(axis=-1, keepdims=True)
    shifted, error = _two_sum(high, np.broadcast_to(-top, high.shape))  # exact s_hi - m
    shifted, correction = _fast_two_sum(shifted, error + low)
    e_high, e_low = _dd_exp(shifted, correction)
    rows = np.concatenate([e_high, e_low], axis=-1).reshape(-1, 2 * high.shape[-1])
    l_high, l_low = _row_sums(rows)
    return e_high, e_low, l_high.reshape(high.shape[:-1]), l_low.reshape(high.shape[:-1])


def exact_budget(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Shares ``w = e / l`` of one node's routes (or rows), each rounded once."""
    return exact_shares(*exact_unnormalised(high, low))


def exact_shares(e_high: np.ndarray, e_low: np.ndarray, l_high, l_low) -> np.ndarray:
    """``e / l`` from :func:`exact_unnormalised`'s double-doubles, each rounded once."""
    return _dd_divide(e_high, e_low, np.asarray(l_high)[..., None],
                      np.asarray(l_low)[..., None])


def exact_pull(e_high: np.ndarray, e_low: np.ndarray, l_high: float, l_low: float,
               values: np.ndarray) -> np.ndarray:
    """``o_c = Σ_j e_j v_jc / l`` over the pulled routes' ``e``: the numerator summed
    exactly, divided once."""
    if len(e_high) == 0:
        return np.zeros(values.shape[1], dtype=values.dtype)
    return _dd_divide(*exact_numerator(e_high, e_low, values), l_high, l_low
                      ).astype(values.dtype)


def exact_numerator(e_high: np.ndarray, e_low: np.ndarray, values: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``n_c = Σ_j e_j v_jc`` as a double-double ``(n_hi, n_lo)``: the numerator of
    :func:`exact_pull` before its one division (also a partial state's numerator)."""
    values64 = values.astype(np.float64)
    if len(e_high) == 0:
        return np.zeros(values.shape[1]), np.zeros(values.shape[1])
    weights = np.broadcast_to(e_high[:, None], values64.shape)
    if _dekker_safe(weights, values64):
        products = weights * values64                                  # (n_pulled, Ev)
        # The e_lo parts are ~2⁻⁵³ of the total: one float sum of them is accurate enough.
        tail = (e_low[:, None] * values64).sum(axis=0, keepdims=True)  # (1, Ev)
        terms = np.concatenate([products, _product_error(weights, values64, products), tail],
                               axis=0)                                 # (2·n_pulled + 1, Ev)
        return _row_sums(terms.T)
    exact = [sum((Fraction(float(h)) + Fraction(float(lo))) * Fraction(float(v))
                 for h, lo, v in zip(e_high, e_low, values64[:, c]))
             for c in range(values.shape[1])]
    n_high = np.array([float(x) for x in exact])
    return n_high, np.array([float(x - Fraction(h)) for x, h in zip(exact, n_high.tolist())])


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's TwoSum: ``a + b = s + e`` exactly."""
    total = a + b
    shifted = total - a
    return total, (a - (total - shifted)) + (b - shifted)


def _fast_two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a + b = s + e`` exactly, for ``|a| >= |b|``."""
    total = a + b
    return total, b - (total - a)


def _dd_multiply(a_high, a_low, b_high, b_low) -> tuple[np.ndarray, np.ndarray]:
    product = a_high * b_high
    error = _product_error(a_high, b_high, product) + (a_high * b_low + a_low * b_high)
    return _fast_two_sum(product, error)


def _dd_exp(high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """exp of a double-double ``x <= 0``, as a double-double (relative error < 1e-28).

    x = k·ln 2 + r; exp(r / 1024) by an 11-term Taylor series in Horner form; then ten
    squarings and a multiplication by 2^k (exact).
    """
    with np.errstate(under="ignore"):
        steps = np.rint(high / _LN2[0])
        zero = np.zeros_like(high)
        multiple = _dd_multiply(steps, zero, np.full_like(high, _LN2[0]),
                                np.full_like(high, _LN2[1]))
        r_high, error = _two_sum(high, -multiple[0])
        r_high, r_low = _fast_two_sum(r_high, error + (low - multiple[1]))
        r_high, r_low = r_high / 1024.0, r_low / 1024.0               # exact: a power of 2
        t_high, t_low = np.ones_like(high), zero
        for n in range(11, 0, -1):
            t_high, t_low = _dd_multiply(t_high, t_low, r_high, r_low)
            t_high, t_low = _dd_divide_int(t_high, t_low, n)
            t_high, error = _two_sum(t_high, np.ones_like(high))
            t_high, t_low = _fast_two_sum(t_high, error + t_low)
        for _ in range(10):
            t_high, t_low = _dd_multiply(t_high, t_low, t_high, t_low)
        exponent = np.maximum(steps, -1100).astype(np.int64)            # below: underflow to 0
        return np.ldexp(t_high, exponent), np.ldexp(t_low, exponent)


def _dd_divide_int(high, low, n: int) -> tuple[np.ndarray, np.ndarray]:
    quotient = high / n
    product = quotient * n
    error = _product_error(quotient, np.full_like(quotient, float(n)), product)
    return _fast_two_sum(quotient, ((high - product) - error + low) / n)


def _dd_divide(n_high, n_low, d_high: float, d_low: float) -> np.ndarray:
    """``(n_high + n_low) / (d_high + d_low)``, rounded once."""
    first = n_high / d_high
    product = first * d_high
    error = _product_error(first, np.full_like(first, d_high), product)
    remainder = ((n_high - product) - error + n_low - first * d_low) / d_high
    return first + remainder


def _dekker_safe(a: np.ndarray, b: np.ndarray) -> bool:
    magnitude = np.abs(a) * np.abs(b)
    return bool(np.abs(a).max(initial=0) < _SAFE_MAX and np.abs(b).max(initial=0) < _SAFE_MAX
                and not ((magnitude > 0) & (magnitude < _SAFE_MIN)).any())


def _product_error(a: np.ndarray, b: np.ndarray, product: np.ndarray) -> np.ndarray:
    """Dekker's TwoProduct: ``a · b - fl(a · b)``, exactly (given no overflow/underflow)."""
    a_high, a_low = _split(a)
    b_high, b_low = _split(b)
    return (((a_high * b_high - product) + a_high * b_low) + a_low * b_high) + a_low * b_low


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaled = _SPLIT * x
    high = scaled - (scaled - x)
    return high, x - high


def _fraction_dot(a: np.ndarray, b: np.ndarray) -> float:
    """Correctly rounded dot product for inputs Dekker's split cannot take (slow, exact)."""
    return float(sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a, b)),
                     Fraction(0)))


class Kernels:
    """The per-node score and budget operations of one numerics mode.

    ``scores(keys, query, scale, bias) -> (high, low)`` (``low`` is None in float mode);
    ``budget(high, low) -> shares``.
    """

    def __init__(self, numerics: str) -> None:
        self.name = numerics
        self.exact = numerics == "exact"

    def scores(self, keys, query, scale, bias=None):
        if self.exact:
            return exact_scores(keys, query, scale, bias)
        return match_scores(keys, query, scale, bias), None

    def budget(self, high, low):
        return exact_budget(high, low) if self.exact else routing_budget(high)


# ---------------------------------------------------------------- online softmax states


def online_state(scores: np.ndarray, values: np.ndarray
                 ) -> tuple[float, float, np.ndarray]:
    """The streaming state ``(m, l, o)`` after taking in these (score, value) pairs in order.

    ``m`` is the running max, ``l = Σ exp(s - m)`` and ``o = Σ exp(s - m) v``; the output
    is ``o / l``. Each step rescales by ``exp(m_old - m_new)``.

    Examples
    --------
    >>> m, l, o = online_state(np.log(np.array([1.0, 3.0])), np.array([[4.0], [8.0]]))
    >>> float(m), float(l), (o / l).tolist()
    (1.0986122886681098, 1.3333333333333333, [7.0])
    """
    dtype = values.dtype
    state = (dtype.type(-np.inf), dtype.type(0), np.zeros(values.shape[1], dtype=dtype))
    for score, value in zip(scores, values):
        state = merge_states(state, (score, dtype.type(1), value))
    return state


def merge_states(a: tuple, b: tuple) -> tuple:
    """Merge two streaming states ``(m, l, o)`` of disjoint key groups (FlashAttention).

    Works elementwise on rows too: ``m`` and ``l`` of shape ``(...)``, ``o`` of shape
    ``(..., Ev)``. A state with no route yet is ``(-inf, 0, 0)``; two of those merge into
    another (the max is guarded before ``-inf - (-inf)`` can happen).

    Examples
    --------
    >>> scores, values = np.array([0.5, 2.0, -1.0]), np.eye(3)
    >>> m, l, o = merge_states(online_state(scores[:1], values[:1]),
    ...                        online_state(scores[1:], values[1:]))
    >>> np.allclose(o / l, routing_budget(scores) @ values, rtol=1e-15)
    True
    >>> empty = (np.array([-np.inf]), np.array([0.0]), np.zeros((1, 2)))
    >>> merge_states(empty, empty)[1]
    array([0.])
    """
    (m_a, l_a, o_a), (m_b, l_b, o_b) = a, b
    m = np.maximum(m_a, m_b)
    pivot = np.where(np.isfinite(m), m, 0.0).astype(np.result_type(m))
    c_a, c_b = np.exp(m_a - pivot), np.exp(m_b - pivot)    # exp(-inf) = 0: an empty side
    o = np.asarray(c_a)[..., None] * o_a + np.asarray(c_b)[..., None] * o_b
    return m, c_a * l_a + c_b * l_b, o.reshape(np.shape(o_a))


HEADROOM = 960          # accumulate values below 2^960: room for 2^63 terms under 2^1024


def value_shift(values: np.ndarray) -> np.ndarray:
    """Per row of values, the power of two that brings its largest entry below 2^960.

    The accumulator ``o = Σ exp(s - m) v`` holds ``o · 2^-shift``: a sum of many values
    near the largest float overflows although the output (a weighted mean) does not.
    Scaling by a power of two is exact (bar values under 2^-1022+shift, too small to
    change such an output), and ``shift`` is 0 for values below 2^960, so ordinary runs
    get the same bits as without it.

    Examples
    --------
    >>> value_shift(np.array([[1.0, -2.0], [1e307, 0.0]])).tolist()
    [0, 60]
    """
    _, exponent = np.frexp(np.abs(values).max(axis=-1, initial=0.0))  # |v| < 2^exponent
    return np.maximum(exponent - HEADROOM, 0).astype(np.int64)
