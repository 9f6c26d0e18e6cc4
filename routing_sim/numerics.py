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

import numpy as np

from .errors import NumericalError

__all__ = ["Kernels", "exact_budget", "exact_pull", "exact_scores", "match_scores",
           "routing_budget", "weighted_pull"]


def match_scores(keys: np.ndarray, query: np.ndarray, scale: float,
                 bias: np.ndarray | None = None) -> np.ndarray:
    """Scores of one query against its reachable keys: ``keys @ query · scale + bias``.

    Examples
    --------
    >>> match_scores(np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([3.0, 1.0]), 0.5)
    array([2.5, 0.5])
    """
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported below
        scores = keys @ query                                          # (n_routes,)
        scores *= query.dtype.type(scale)
        if bias is not None:
            scores += bias
    if not np.isfinite(scores).all():
        raise NumericalError(f"a score overflowed to {scores[~np.isfinite(scores)][0]}; "
                             "scale the inputs down")
    return scores


def routing_budget(scores: np.ndarray) -> np.ndarray:
    """Stable softmax of one node's scores: shares of a budget that sum to 1.

    The row max is subtracted before ``exp``; there is no epsilon and no clamping.

    Examples
    --------
    >>> routing_budget(np.log(np.array([5.0, 3.0, 2.0]))).round(2)
    array([0.5, 0.3, 0.2])
    """
    shares = np.exp(scores - scores.max())                             # (n_routes,)
    shares /= shares.sum()
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
# numerics="exact" computes, for every route and query node:
#
#   s_ij = fl( fl( fl(Σ_d q_id k_jd) · scale ) + b_ij )   dot product correctly rounded
#   m_i  = max_j s_ij                                     exact
#   e_ij = exp( fl(s_ij - m_i) )                          numpy's exp (not correctly rounded)
#   l_i  = fl(Σ_j e_ij)                                   correctly rounded (math.fsum)
#   w_ij = fl(e_ij / l_i)                                 (· fl(1/(1-p)) under dropout)
#   o_ic = fl(Σ_j w_ij v_jc)                              correctly rounded
#
# fl() is one IEEE rounding to nearest. Every sum is correctly rounded, so no order of
# arrival can change a bit, and attention(numerics="exact") runs these same kernels.

_SPLIT = 134217729.0            # 2**27 + 1: Dekker's splitting constant
_SAFE_MAX = 2.0**500            # beyond this the split could overflow
_SAFE_MIN = 2.0**-900           # below this a product's error term could underflow


def exact_scores(keys: np.ndarray, query: np.ndarray, scale: float,
                 bias: np.ndarray | None = None) -> np.ndarray:
    """:func:`match_scores` with each dot product correctly rounded.

    Examples
    --------
    >>> keys = np.array([[1e16, 1.0, -1e16]])
    >>> float(exact_scores(keys, np.array([1.0, 1.0, 1.0]), 1.0)[0])
    1.0
    """
    dtype = query.dtype
    products = keys.astype(np.float64) * query.astype(np.float64)    # (n_routes, E)
    if _dekker_safe(keys, query):
        error = _product_error(keys.astype(np.float64), query.astype(np.float64), products)
        terms = np.concatenate([products, error], axis=1).tolist()    # (n_routes, 2E)
        dots = np.array([math.fsum(row) for row in terms])
    else:
        dots = np.array([_fraction_dot(row, query) for row in keys])
    with np.errstate(over="ignore", invalid="ignore"):
        scores = dots.astype(dtype) * dtype.type(scale)
        if bias is not None:
            scores += bias
    if not np.isfinite(scores).all():
        raise NumericalError(f"a score overflowed to {scores[~np.isfinite(scores)][0]}; "
                             "scale the inputs down")
    return scores


def exact_budget(scores: np.ndarray) -> np.ndarray:
    """:func:`routing_budget` with the normaliser correctly rounded (``math.fsum``)."""
    shares = np.exp(scores - scores.max())                             # (n_routes,)
    return shares / scores.dtype.type(math.fsum(shares.tolist()))


def exact_pull(shares: np.ndarray, values: np.ndarray) -> np.ndarray:
    """:func:`weighted_pull` with every output feature correctly rounded."""
    dtype = values.dtype
    if len(shares) == 0:
        return np.zeros(values.shape[1], dtype=dtype)
    weights = np.broadcast_to(shares.astype(np.float64)[:, None], values.shape)
    if _dekker_safe(weights, values):
        products = weights * values                                    # (n_routes, Ev)
        error = _product_error(weights, values.astype(np.float64), products)
        columns = np.concatenate([products, error], axis=0).T.tolist()  # (Ev, 2·n_routes)
        return np.array([math.fsum(column) for column in columns], dtype=dtype)
    return np.array([_fraction_dot(shares, values[:, c]) for c in range(values.shape[1])],
                    dtype=dtype)


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
    """The three per-node operations of one numerics mode."""

    def __init__(self, numerics: str) -> None:
        if numerics == "exact":
            self.scores, self.budget, self.pull = exact_scores, exact_budget, exact_pull
        else:
            self.scores, self.budget, self.pull = match_scores, routing_budget, weighted_pull
        self.name = numerics
