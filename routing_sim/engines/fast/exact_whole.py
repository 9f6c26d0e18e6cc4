"""Exact mode for nodes that lost no route: their scores, and later their outputs, a
block of nodes at a time (:mod:`routing_sim.numerics.exact_blocks`).

A block is up to a few hundred query nodes of one group and the union of their keys: the
dot products (or the weighted pull) are exact matrix products over that union, then
each route's (or output entry's) accurate sum and error bound. A result the bound does not
decide is computed as the one-node path computes it (``math.fsum`` for a score; the
caller's :func:`~routing_sim.engines.fast.barrier.aggregate`, with the integer tier behind
it, for an output), so the results are the correctly rounded values whatever blocks the
barriers form: the same bits under every schedule.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ...numerics.exact import exact_scores
from ...numerics.exact_blocks import exact_dots, exact_outputs
from ..state import ForwardState

__all__ = ["exact_pull_whole", "exact_scores_whole"]

BLOCK_ROUTES = 2**15        # routes per block: its arrays stay in cache


def _blocks(state: ForwardState, nodes: np.ndarray
            ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``(group, nodes, routes, rows, union)`` per block: the block's route ids (node by
    node, in source order), each route's row in the block, and the sorted key indices
    the block's routes reach (a route's column is its key's place in ``union``).

    A block holds up to ``BLOCK_ROUTES`` routes of one group; one whose dense nodes x
    union array would be over four times that (scattered keys) is halved."""
    table = state.routes
    nodes = np.sort(nodes[state.needed[nodes] > 0])
    if not len(nodes):
        return
    groups = nodes // table.n_queries
    for same in np.split(nodes, np.flatnonzero(np.diff(groups)) + 1):
        filled = np.cumsum(state.needed[same]) // BLOCK_ROUTES           # (nodes,)
        pending = np.split(same, np.flatnonzero(np.diff(filled)) + 1)
        while pending:
            chosen = pending.pop()
            routes = table.routes_of(chosen)
            union = np.unique(table.key_index[routes])
            if len(chosen) > 1 and len(chosen) * len(union) > 4 * BLOCK_ROUTES:
                pending += np.array_split(chosen, 2)
                continue
            rows = np.repeat(np.arange(len(chosen)), state.needed[chosen])
            yield int(chosen[0] // table.n_queries), chosen, routes, rows, union


def exact_scores_whole(state: ForwardState, nodes: np.ndarray) -> None:
    """Every score of these nodes as a double-double, its high part correctly rounded;
    a score the block's bound leaves undecided is computed with ``math.fsum``."""
    problem, table, exact = state.problem, state.routes, state.exact
    assert exact is not None, "exact mode"
    for group, chosen, routes, rows, union in _blocks(state, nodes):
        keys = table.key_index[routes]
        cols = np.searchsorted(union, keys)
        bias = None if state.bias is None else state.bias[routes]
        high, low, decided = exact_dots(problem.query[group, chosen % table.n_queries],
                                        problem.key[group, union], problem.scale, rows,
                                        cols, bias)
        for row in np.unique(rows[~decided]).tolist():                 # undecided: fsum
            own = np.flatnonzero((rows == row) & ~decided)
            high[own], low[own] = exact_scores(
                problem.key[group, keys[own]],
                problem.query[group, chosen[row] % table.n_queries], problem.scale,
                None if bias is None else bias[own])
        state.scores[routes], exact.score_low[routes] = high, low


def exact_pull_whole(state: ForwardState, nodes: np.ndarray) -> np.ndarray:
    """o_i = Σ_j e_ij v_j / l_i of nodes whose values all came, each rounded once. Returns
    the nodes the blocks' bounds leave undecided, for the one-node path (their outputs
    and times untouched)."""
    problem, table, exact = state.problem, state.routes, state.exact
    assert exact is not None, "exact mode"
    undecided = [np.zeros(0, np.int64)]
    for group, chosen, routes, rows, union in _blocks(state, nodes):
        cols = np.searchsorted(union, table.key_index[routes])
        e_high, e_low = (np.zeros((len(chosen), len(union))) for _ in range(2))  # (N, S)
        pulled = np.zeros(e_high.shape, dtype=bool)
        e_high[rows, cols], e_low[rows, cols] = exact.e_high[routes], exact.e_low[routes]
        pulled[rows, cols] = ~np.isnan(state.value_time[routes])
        members = state.scores[routes]
        if state.chosen is not None:                   # top-k: the softmax's routes only
            members = np.where(state.chosen[routes], members, -np.inf)
        starts = np.concatenate([[0], np.cumsum(state.needed[chosen])[:-1]])
        top = np.maximum.reduceat(members, starts)                     # (N,) largest score
        if state.sinks is not None:                                    # the sink is in l
            top = np.maximum(top, state.sinks[chosen])
        output = exact_outputs(e_high, e_low, pulled, exact.l_high[chosen],
                               exact.l_low[chosen], problem.value[group, union], top)
        decided = ~np.isnan(output).any(axis=1)                        # (N,)
        output = output[decided].astype(problem.dtype)
        if state.kept is not None:
            with np.errstate(over="ignore"):      # 1/(1-p) may take it past the float range
                output = output * state.dropout_scale
        state.output[chosen[decided]] = output
        state.done_time[chosen[decided]] += state.processing
        undecided.append(chosen[~decided])
    return np.concatenate(undecided)
