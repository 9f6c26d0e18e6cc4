"""The query node's barrier for many nodes at once: the vectorised paths for nodes that
lost no route.

``allocate_whole`` computes the scores and shares of every node that passed its barrier
in one step (rows of equal length stacked together, or the sparse tiles), ``pull_whole``
their outputs; each row is computed exactly as it would be alone, so the result is the
same bits as :mod:`routing_sim.barrier`'s one-node paths, which cover dead routes, hard
routing in exact mode and the rest.
"""

from __future__ import annotations

import numpy as np

from .barrier import (
    allocate,
    budget,
    exact_budget_shares,
    exact_fallback,
    gather,
    modify,
    node_scores,
    top_routes,
)
from .errors import NumericalError
from .exact import exact_unnormalised
from .numerics import routing_budget, scale_scores, sink_budget, weighted_pull, with_sink
from .state import ForwardState

__all__ = ["allocate_whole", "pull_whole", "tiled_shares"]


def allocate_whole(state: ForwardState, nodes: np.ndarray) -> np.ndarray:
    """Barrier passed for nodes that lost no route: scores, then shares. Returns PULLs.

    Each node's scores are one product over its own keys; the softmax then runs on
    rows of equal length stacked together, which computes each row exactly as alone.
    """
    if state.kernels.exact and state.top_k:
        return np.concatenate([allocate(state, int(node)) for node in nodes])
    if state.tiles is not None:
        tiled_shares(state)
    elif state.kernels.exact:
        for node in nodes.tolist():
            node_scores(state, node)
    else:
        _float_scores(state, nodes)
    for chosen, count in ([] if state.tiles is not None else _by_count(state, nodes)):
        if state.kernels.exact:
            _exact_block(state, chosen, count)
        else:
            _float_block(state, chosen, count)
    routes = state.routes
    pulls = routes.routes_of(nodes)
    if state.chosen is not None:
        pulls = pulls[state.chosen[pulls]]
    if state.kept is not None:
        pulls = pulls[state.kept[pulls]]
    if state.top_k or state.kept is not None:
        state.values_needed[nodes] = np.bincount(routes.query_node[pulls],
                                                 minlength=routes.n_nodes)[nodes]
    return pulls


def _by_count(state: ForwardState, nodes: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """The nodes grouped by how many routes they have: ``[(nodes, count), ...]``."""
    counts = state.needed[nodes]
    if len(counts) and counts.min() == counts.max():
        return [(nodes, int(counts[0]))]
    order = np.argsort(counts, kind="stable")
    bounds = np.flatnonzero(np.diff(counts[order])) + 1
    return [(same, int(state.needed[same[0]])) for same in np.split(nodes[order], bounds)]


def tiled_shares(state: ForwardState) -> None:
    """Sparse fast path, at the first barrier: every route's score and share at once.

    The dot products come from the fixed tiles (:mod:`routing_sim.tiles`), the softmax
    runs row by row; the same products whatever order the barriers pass in, so a node's
    shares are the same bits under every schedule. A node that later loses a route
    recomputes its own (:func:`allocate`), after this: the two-phase nodes call it at
    their first barrier, whichever node passes it.
    """
    if state.tiled_shares:
        return
    assert state.tiles is not None, "a sparse run's state has tiles"
    problem = state.problem
    dim = problem.shape[3]
    with np.errstate(over="ignore", invalid="ignore"):                 # overflow reported later
        state.tiles.dots(problem.query.reshape(-1, dim), problem.key.reshape(-1, dim),
                         out=state.scores)
    for chosen, count in _by_count(state, np.flatnonzero(state.needed)):
        _float_block(state, chosen, count)
    state.tiled_shares = True


def _float_scores(state: ForwardState, nodes: np.ndarray) -> None:
    """Unscaled dot products q_i · k_j of these nodes' routes: one product per node."""
    routes, problem = state.routes, state.problem
    indptr, n_queries, n_keys = routes.indptr, routes.n_queries, routes.n_keys
    with np.errstate(over="ignore", invalid="ignore"):                 # overflow reported later
        for node in nodes.tolist():
            start, stop = indptr[node], indptr[node + 1]
            group, token = divmod(node, n_queries)
            keys = problem.key[group] if stop - start == n_keys else \
                gather(problem.key[group], routes.key_index[start:stop])
            state.scores[start:stop] = keys @ problem.query[group, token]


def _routes_block(state: ForwardState, nodes: np.ndarray) -> slice | np.ndarray:
    """The route ids of these nodes: a slice when they are consecutive, else an array."""
    if nodes[-1] - nodes[0] == len(nodes) - 1:
        return slice(state.routes.indptr[nodes[0]], state.routes.indptr[nodes[-1] + 1])
    return state.routes.routes_of(nodes)


def _float_block(state: ForwardState, chosen: np.ndarray, count: int) -> None:
    """Scale, bias, (top-k) and softmax of nodes with ``count`` routes each, stacked."""
    problem = state.problem
    span = _routes_block(state, chosen)
    block = state.scores[span].reshape(len(chosen), count)            # (nodes, routes)
    bias = None if state.bias is None else state.bias[span].reshape(block.shape)
    if state.raw is None:
        block = scale_scores(block, problem.scale, bias)
    else:
        block = modify(state, span, scale_scores(block, problem.scale), bias)
    state.scores[span] = block.reshape(-1)
    if not np.isfinite(block).all():
        raise NumericalError(f"a score overflowed to {block[~np.isfinite(block)][0]}; "
                             "scale the inputs down")
    if state.top_k and state.chosen is not None:
        pick = top_routes(block, state.top_k)
        state.chosen[span] = pick.reshape(-1)
        block = np.where(pick, block, -np.inf)
    # A slice of routes: the shares go straight into the state.
    out = state.shares[span].reshape(block.shape) if isinstance(span, slice) else None
    if state.sink_shares is None:
        shares = routing_budget(block, out=out)
    else:
        assert state.sinks is not None                                 # both or neither
        shares, state.sink_shares[chosen] = sink_budget(block, state.sinks[chosen], out=out)
    if state.kept is not None:
        shares *= state.kept[span].reshape(shares.shape) * state.dropout_scale
    state.shares[span] = shares.reshape(-1)


def _exact_block(state: ForwardState, chosen: np.ndarray, count: int) -> None:
    """Exact shares of nodes with ``count`` routes each (scores already in)."""
    span = _routes_block(state, chosen)
    if not isinstance(span, slice):                    # scattered nodes: one at a time
        for node in chosen.tolist():
            _, _, own = state.span(node)
            state.shares[own] = budget(state, node, np.ones(count, dtype=bool))
        return
    block = state.scores[span].reshape(len(chosen), count)            # (nodes, routes)
    assert state.exact is not None                                     # exact mode
    low = state.exact.score_low[span].reshape(block.shape)
    if state.sinks is not None:                                        # (nodes, routes + 1)
        block, low = with_sink(block, low, state.sinks[chosen])
    shares = exact_budget_shares(state.exact, chosen, span, slice(None),
                                 exact_unnormalised(block, low), block.max(axis=1),
                                 sink=state.sinks is not None)
    for row in np.flatnonzero(np.isnan(shares).any(axis=1)).tolist():  # undecided: integers
        shares[row] = exact_fallback(state, int(chosen[row]), np.ones(count, dtype=bool))[0]
    if state.sink_shares is not None:
        state.sink_shares[chosen], shares = shares[:, -1], shares[:, :-1]
    if state.kept is not None:
        shares *= state.kept[span].reshape(shares.shape) * state.dropout_scale
    state.shares[span] = shares.reshape(-1)


def pull_whole(state: ForwardState, nodes: np.ndarray) -> None:
    """o_i = Σ_j w_ij v_j for nodes whose values all came: one product per node."""
    if state.tiles is not None:                        # sparse fast path: every pull at once
        if not state.tiled_output:
            # Every row at once, straight into the outputs; a node that lost a route keeps
            # (or later gets) its own row from aggregate().
            dead = np.flatnonzero(state.dead)
            lost = np.unique(state.routes.query_node[dead]) if len(dead) else dead
            rows = state.output[lost]
            value = state.problem.value
            state.tiles.pull(state.shares, value.reshape(-1, value.shape[2]), out=state.output)
            state.output[lost] = rows
            state.tiled_output = True
        state.done_time[nodes] += state.processing
        return
    routes, value, shares, kept = state.routes, state.problem.value, state.shares, state.kept
    indptr, n_queries, n_keys = routes.indptr, routes.n_queries, routes.n_keys
    for node in nodes.tolist():
        start, stop = indptr[node], indptr[node + 1]
        weights = shares[start:stop]
        if kept is None and stop - start == n_keys:                   # every key: no gather
            state.output[node] = weighted_pull(weights, value[node // n_queries])
            continue
        pulled = routes.key_index[start:stop]
        if kept is not None:
            pulled, weights = pulled[kept[start:stop]], weights[kept[start:stop]]
        state.output[node] = weighted_pull(weights, gather(value[node // n_queries], pulled))
    state.done_time[nodes] += state.processing
