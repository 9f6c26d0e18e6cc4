"""The matrix form's exact mode (``attention(..., numerics="exact")``): one query row at a
time, with the correctly rounded kernels of :mod:`routing_sim.exact` and their integer
fallback :mod:`routing_sim.exact_row`. A sink is one more route of the row whose score is
its logit and which pulls no value.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .errors import EmptyRowError, InvalidArgumentError
from .exact import exact_pull, exact_scores, exact_shares, exact_unnormalised
from .exact_row import exact_row
from .inputs import Problem
from .sparse import DENSE_LIMIT

__all__ = ["exact_attention", "has_route"]


def has_route(problem: Problem) -> np.ndarray:
    """``(G, L)``: which query tokens have at least one route."""
    if problem.sparse is None:
        return np.asarray(problem.dense_allowed.any(axis=-1))
    return (np.diff(problem.sparse.routes.indptr) > 0).reshape(problem.shape[:2])


def _rows(problem: Problem):
    """``(g, i, keys, bias, keep)`` of every query with a route: dense or sparse form."""
    if problem.sparse is None:
        allowed = problem.dense_allowed
        for g, i in zip(*np.nonzero(allowed.any(axis=-1))):
            keys = np.flatnonzero(allowed[g, i])
            yield (g, i, keys, None if problem.bias is None else problem.bias[g, i, keys],
                   None if problem.keep is None else problem.keep[g, i, keys])
        return
    sparse, n_queries = problem.sparse, problem.shape[1]
    indptr = sparse.routes.indptr
    for node in np.flatnonzero(np.diff(indptr)).tolist():
        span = slice(indptr[node], indptr[node + 1])
        yield (node // n_queries, node % n_queries, sparse.routes.indices[span],
               None if sparse.bias is None else sparse.bias[span],
               None if sparse.keep is None else sparse.keep[span])


def _score_name(group: int, query: int, keys: np.ndarray, row: int) -> str:
    """How an exact-mode error names the score of key row ``row`` of a query's routes."""
    return f"the score of query {query} and key {keys[row]} (group {group})"


def exact_attention(problem: Problem, return_weights: bool
                    ) -> tuple[np.ndarray | None, np.ndarray]:
    """``(weights (G, L, S) or None, output (G, L, Ev))``: each query's row with
    correctly rounded dot products and sums (weights when asked, or for a dense problem)."""
    groups, n_queries, n_keys, _, value_dim = problem.shape
    dense = problem.sparse is None or return_weights
    if dense and problem.sparse is not None and groups * n_queries * n_keys > DENSE_LIMIT:
        raise InvalidArgumentError("return_weights=True would build a dense "
                                   f"{(groups, n_queries, n_keys)} array, over "
                                   f"{DENSE_LIMIT:,} entries")
    weights = np.zeros((groups, n_queries, n_keys), dtype=problem.dtype) if dense else None
    output = np.zeros((groups, n_queries, value_dim), dtype=problem.dtype)
    routed = has_route(problem)
    if problem.empty_rows == "error" and not routed.all():
        g, i = np.argwhere(~routed)[0]
        raise EmptyRowError(f"query token {i} (group {g}) has no route to any key token")
    factor = problem.dtype.type(1.0 / (1.0 - problem.dropout_p))
    for g, i, keys, bias, keep in _rows(problem):
        high, low = exact_scores(
            problem.key[g, keys], problem.query[g, i], problem.scale, bias,
            name=partial(_score_name, g, i, keys))
        sink = None if problem.sinks is None else float(problem.sinks[g])
        if sink is not None:        # one more route, last: its score is the logit, exactly
            high, low = np.append(high, sink), np.append(low, 0.0)
        e_high, e_low, l_high, l_low = exact_unnormalised(high, low)
        shares = exact_shares(e_high, e_low, l_high, l_low, high.max())
        pulled = np.ones(len(keys), dtype=bool) if keep is None else keep
        row = exact_pull(e_high[:len(keys)][pulled], e_low[:len(keys)][pulled], l_high, l_low,
                         problem.value[g, keys[pulled]], high.max())
        if np.isnan(shares).any() or np.isnan(row).any():             # undecided: integers
            shares, decided = exact_row(problem.key[g, keys], problem.query[g, i],
                                        problem.scale, bias, problem.value[g, keys], pulled,
                                        sink)
            assert decided is not None                                 # values given
            row = decided
        shares, row = shares[:len(keys)].astype(problem.dtype), row.astype(problem.dtype)
        if keep is not None:
            with np.errstate(over="ignore"):      # 1/(1-p) may take it past the float range
                shares, row = shares * pulled * factor, row * factor
        if weights is not None:
            weights[g, i, keys] = shares
        output[g, i] = row
    return weights, output
