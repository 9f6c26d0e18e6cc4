"""What one query node computes, in a fixed order that no delivery schedule can change.

Every function here works on one query node's routes, listed in source order (ascending
key index). The simulator calls them once per node, over the node's whole route list,
never over "whatever arrived together": BLAS results for a row depend on the shape of
the batch it is computed in, but not on anything else, so one call per node over a
fixed list gives the same bits under every schedule. docs/design.md has the measurement.
"""

from __future__ import annotations

import numpy as np

from .errors import NumericalError

__all__ = ["routing_budget", "match_scores", "weighted_pull"]


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
