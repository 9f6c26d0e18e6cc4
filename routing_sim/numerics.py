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

__all__ = ["Kernels", "exact_budget", "exact_pull", "exact_scores", "exact_unnormalised",
           "match_scores", "merge_states", "online_state", "routing_budget", "scale_scores",
           "weighted_pull"]


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


def routing_budget(scores: np.ndarray) -> np.ndarray:
    """Stable softmax of one node's scores (or of rows of equal length): budget shares.

    The row max is subtracted before ``exp``; there is no epsilon and no clamping. Every
    operation is elementwise or a reduction along the row, so a row stacked with others
    gets exactly the bits it gets alone.

    Examples
    --------
    >>> routing_budget(np.log(np.array([5.0, 3.0, 2.0]))).round(2)
    array([0.5, 0.3, 0.2])
    """
    shares = scores - scores.max(axis=-1, keepdims=True)              # (..., n_routes)
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
# numerics="exact" computes, for every route j of query node i (fl = one IEEE rounding to
# nearest; Σ° = a correctly rounded sum of the exact terms, math.fsum):
#
#   d      = Σ_d q_id k_jd                      exact (error-free products)
#   d_hi   = fl(d),  d_lo = fl(d - d_hi)        the dot product as a double-double
#   p_hi + p_lo = d_hi · scale                  exact (TwoProduct)
#   s_hi   = Σ°(p_hi, p_lo, fl(d_lo · scale), b_ij),  s_lo = Σ°(same terms, -s_hi)
#   m      = max_j s_hi                         exact
#   x_hi + x_err = s_hi - m                     exact (TwoSum);  x_lo = fl(x_err + s_lo)
#   e_ij   = fl(g + fl(g · x_lo)),  g = exp(x_hi)   (numpy's exp: the one inexact step)
#   l_i    = Σ°_j e_ij
#   w_ij   = fl(e_ij / l_i)                     the shares (PULL payloads, routing tables)
#   o_ic   = fl(Σ°_{j pulled} e_ij v_jc / l_i)  (then · fl(1/(1-p)) under dropout)
#
# Scores travel as (s_hi, s_lo): a SCORE carries two floats. Every sum is correctly
# rounded and every other step is one elementwise operation, so no order of arrival can
# change a bit, and attention(numerics="exact") runs these same kernels. The work is done
# in float64 whatever the input dtype; float32 inputs get the result rounded to float32.

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


def exact_unnormalised(high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, float]:
    """``(e, l)``: the budget before division, ``e_ij ≈ exp(s_ij - m)`` and ``l = Σ° e``."""
    top = high.max()
    shifted = high - top                                               # (n_routes,) x_hi
    error = (high - (shifted + top)) + (-top - (shifted - high))       # TwoSum remainder
    correction = error + low                                           # x_lo
    growth = np.exp(shifted)
    unnormalised = growth + growth * correction
    return unnormalised, math.fsum(memoryview(np.ascontiguousarray(unnormalised)))


def exact_budget(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Shares ``w = e / l`` of one node's routes (exact mode)."""
    unnormalised, total = exact_unnormalised(high, low)
    return unnormalised / total


def exact_pull(high: np.ndarray, low: np.ndarray, pulled: np.ndarray, values: np.ndarray
               ) -> np.ndarray:
    """``o_c = Σ°_{pulled j} e_j v_jc / l``: the output, with one division at the end."""
    dtype = values.dtype
    unnormalised, total = exact_unnormalised(high, low)
    weights = unnormalised[pulled].astype(np.float64)
    if len(weights) == 0:
        return np.zeros(values.shape[1], dtype=dtype)
    values64 = values.astype(np.float64)
    weights2d = np.broadcast_to(weights[:, None], values64.shape)
    if _dekker_safe(weights2d, values64):
        products = weights2d * values64                                # (n_pulled, Ev)
        error = _product_error(weights2d, values64, products)
        columns = np.ascontiguousarray(np.concatenate([products, error], axis=0).T)
        flat, width = memoryview(columns.reshape(-1)), columns.shape[1]  # (Ev, 2·n_pulled)
        sums = np.array([math.fsum(flat[start:start + width])
                         for start in range(0, len(flat), width)])
    else:
        sums = np.array([_fraction_dot(weights, values64[:, c]) for c in
                         range(values.shape[1])])
    return (sums / total).astype(dtype)


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
    """The per-node operations of one numerics mode, behind one interface.

    ``scores(keys, query, scale, bias) -> (high, low)``: ``low`` is None in float mode.
    ``budget(high, low) -> shares``. ``pull(high, low, shares, pulled, values) -> output``:
    float mode adds ``shares[pulled] @ values``; exact mode divides once at the end.
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

    def pull(self, high, low, shares, pulled, values):
        if self.exact:
            return exact_pull(high, low, pulled, values)
        return weighted_pull(shares[pulled], values)


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

    Examples
    --------
    >>> scores, values = np.array([0.5, 2.0, -1.0]), np.eye(3)
    >>> m, l, o = merge_states(online_state(scores[:1], values[:1]),
    ...                        online_state(scores[1:], values[1:]))
    >>> np.allclose(o / l, routing_budget(scores) @ values, rtol=1e-15)
    True
    """
    (m_a, l_a, o_a), (m_b, l_b, o_b) = a, b
    m = max(m_a, m_b)
    if m == -np.inf:
        return a
    c_a, c_b = np.exp(m_a - m), np.exp(m_b - m)
    return m, c_a * l_a + c_b * l_b, c_a * o_a + c_b * o_b
