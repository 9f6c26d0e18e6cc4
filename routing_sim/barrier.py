"""The query node's arithmetic: scores, the budget (softmax), the weighted pull.

Functions over a run's :class:`~routing_sim.state.ForwardState` (which holds the route
table and the problem) and the query nodes that just passed a barrier. Each node's sums
run once, over its own routes in source order (:mod:`routing_sim.numerics`), so no
delivery schedule changes a bit of the result. ``allocate_whole`` and ``pull_whole`` are
the vectorised paths for nodes that lost no route (:mod:`routing_sim.barrier_whole`);
``allocate`` and ``aggregate``, here, take one node at a time and cover dead routes, hard
routing and exact mode.
"""

from __future__ import annotations

import numpy as np

from .exact import exact_pull, exact_shares, exact_unnormalised
from .exact_row import exact_row
from .mods import modified
from .numerics import routing_budget, sink_budget, weighted_pull, with_sink
from .routeset import batch_head
from .state import VALUE_PHASE, ExactParts, ForwardState

__all__ = ["aggregate", "allocate", "budget", "exact_budget_shares", "exact_fallback", "gather",
           "modify", "node_scores", "note_would_have", "scores_of", "softmax_routes",
           "top_routes"]


def gather(rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` (one group's keys or values) for these key indices."""
    if len(keys) and keys[-1] - keys[0] == len(keys) - 1:
        return rows[keys[0]:keys[-1] + 1]                              # contiguous: a view
    return rows[keys]


def top_routes(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of a bool mask: each row's ``k`` highest scores (ties: lower source first).

    Examples
    --------
    >>> top_routes(np.array([[0.1, 0.9, 0.9, 0.3]]), 2).astype(int)
    array([[0, 1, 1, 0]])
    """
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]       # (rows, k)
    pick = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(pick, order, True, axis=-1)
    return pick


def node_scores(state: ForwardState, node: int) -> None:
    """Every score of one query node, in source order (the key nodes' answers)."""
    problem = state.problem
    group, token, span = state.span(node)
    keys = state.routes.key_index[span]
    bias = None if state.bias is None else state.bias[span]
    if state.raw is not None:                                          # float mode only
        scaled = state.kernels.scores(gather(problem.key[group], keys),
                                      problem.query[group, token], problem.scale)[0]
        state.scores[span] = modify(state, span, scaled, bias)
        return
    high, low = state.kernels.scores(gather(problem.key[group], keys),
                                     problem.query[group, token], problem.scale, bias)
    state.scores[span] = high
    if state.exact is not None and low is not None:
        state.exact.score_low[span] = low


def modify(state: ForwardState, span: slice | np.ndarray, scaled: np.ndarray,
           bias: np.ndarray | None) -> np.ndarray:
    """The key node's score_mod on scaled scores of routes ``span`` (kept in
    ``state.raw`` for the backward pass), then the bias."""
    routes, score_mod, raw = state.routes, state.problem.score_mod, state.raw
    assert score_mod is not None and raw is not None, "only a score_mod modifies scores"
    raw[span] = scaled.reshape(-1)
    nodes = routes.query_node[span]
    batch, head = batch_head(nodes // routes.n_queries, state.problem.batch_shape)
    scores = modified(score_mod, scaled.reshape(-1), batch, head,
                      nodes % routes.n_queries, routes.key_index[span]).reshape(scaled.shape)
    if bias is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            scores = scores + bias.reshape(scaled.shape)
    return scores


def scores_of(state: ForwardState, span: slice, routes: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """(high, low) scores of some of a node's routes (a mask over its span)."""
    low = None if state.exact is None else state.exact.score_low[span][routes]
    return state.scores[span][routes], low


def budget(state: ForwardState, node: int, alive: np.ndarray, remember: bool = True
           ) -> np.ndarray:
    """Shares (after dropout) of a node's live routes; 0 for the dead ones.

    With hard routing only the ``top_k`` best live routes get a share. ``remember``
    keeps what the pull will need (the chosen routes; exact mode's e and l) and the
    sink's share.
    """
    _, _, span = state.span(node)
    shares = np.zeros(span.stop - span.start, dtype=state.problem.dtype)
    sink_share: float | np.ndarray = 1.0       # no live route: the sink takes everything
    if state.top_k and alive.any():
        pick = np.zeros_like(alive)
        pick[np.flatnonzero(alive)[top_routes(state.scores[span][alive][None],
                                              state.top_k)[0]]] = True
        if remember and state.chosen is not None:
            state.chosen[span] = pick
        alive = pick
    if alive.any():
        if state.exact is not None:
            high, low = state.scores[span][alive], state.exact.score_low[span][alive]
            keep = state.exact if remember else None
            if state.sinks is not None:
                high, low = with_sink(high, low, state.sinks[node])
            every = exact_budget_shares(keep, node, span, alive, exact_unnormalised(high, low),
                                        high.max(), sink=state.sinks is not None)
            if np.isnan(every).any():                                  # undecided: integers
                every = exact_fallback(state, node, alive)[0]
            shares[alive] = every[:int(alive.sum())]
            if state.sinks is not None:
                sink_share = every[-1]
        elif state.sinks is None:
            shares[alive] = routing_budget(state.scores[span][alive])
        else:
            shares[alive], sink_share = sink_budget(state.scores[span][alive],
                                                    state.sinks[node])
    if remember and state.sink_shares is not None:
        state.sink_shares[node] = sink_share
    if state.kept is not None:
        shares *= state.kept[span] * state.dropout_scale
    return shares


def exact_budget_shares(keep: ExactParts | None, nodes: int | np.ndarray, span: slice,
                  routes: np.ndarray | slice,
                  unnormalised: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  top: np.ndarray | float, sink: bool = False) -> np.ndarray:
    """Exact mode: shares e / l, rounded once; ``keep`` e and l for the weighted pull.

    ``sink``: the last column is the sink (:func:`~routing_sim.numerics.with_sink`): its e is
    in l and its share is returned last, but it pulls nothing, so its e is not kept."""
    e_high, e_low, l_high, l_low = unnormalised
    if keep is not None:
        routes_only = slice(None, -1 if sink else None)
        keep.e_high[span][routes] = e_high[..., routes_only].reshape(-1)
        keep.e_low[span][routes] = e_low[..., routes_only].reshape(-1)
        keep.l_high[nodes], keep.l_low[nodes] = l_high, l_low
    return exact_shares(e_high, e_low, l_high, l_low, top)


def softmax_routes(state: ForwardState, span: slice) -> np.ndarray:
    """The routes of a node its softmax runs over: the live ones (the chosen, top-k)."""
    members = state.dead[span] == 0
    return members if state.chosen is None else members & state.chosen[span]


def exact_fallback(state: ForwardState, node: int, routes: np.ndarray,
                   pulled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Exact mode, a node the double-doubles cannot decide: shares over ``routes`` (a
    mask over its span; with sinks, the sink's share last) and, given ``pulled``, its
    output, from the exact scores the key nodes computed
    (:func:`~routing_sim.exact_row.exact_row`)."""
    problem = state.problem
    group, token, span = state.span(node)
    keys = state.routes.key_index[span][routes]
    bias = None if state.bias is None else state.bias[span][routes]
    values = None if pulled is None else gather(problem.value[group], keys)
    sink = None if state.sinks is None else float(state.sinks[node])
    return exact_row(gather(problem.key[group], keys), problem.query[group, token],
                     problem.scale, bias, values, pulled, sink)


def note_would_have(state: ForwardState, node: int) -> None:
    """The shares a node's dead routes would have had had every answer come in."""
    _, _, span = state.span(node)
    full = budget(state, node, np.ones(span.stop - span.start, dtype=bool), remember=False)
    lost = state.dead[span] != 0
    assert state.would_have is not None, "routes die only on a faulty network"
    state.would_have[span][lost] = full[lost]


def allocate(state: ForwardState, node: int) -> np.ndarray:
    """Barrier passed for one node: scores -> shares. Returns the routes to PULL on."""
    _, _, span = state.span(node)
    node_scores(state, node)
    alive = state.dead[span] == 0
    if not alive.all():
        note_would_have(state, node)
        if state.on_missing == "strict":
            state.failed[node] = True
            return np.zeros(0, np.int64)
    state.shares[span] = budget(state, node, alive)
    pull = alive if state.chosen is None else alive & state.chosen[span]
    pull = pull if state.kept is None else pull & state.kept[span]
    state.values_needed[node] = int(pull.sum())
    return np.flatnonzero(pull) + span.start


def aggregate(state: ForwardState, node: int) -> None:
    """o_i = Σ_j w_ij v_j over the values node i pulled, in source order."""
    group, _, span = state.span(node)
    if (state.dead[span] == VALUE_PHASE).any():
        note_would_have(state, node)
        if state.on_missing == "strict":
            state.failed[node] = True
            state.done_time[node] = np.nan
            return
        state.shares[span] = budget(state, node, state.dead[span] == 0)
    pulled = ~np.isnan(state.value_time[span])
    values = gather(state.problem.value[group], state.routes.key_index[span][pulled])
    exact = state.exact
    if exact is not None:
        members = softmax_routes(state, span)
        top = state.scores[span][members].max(initial=-np.inf)
        if state.sinks is not None:                                    # the sink is in l
            top = max(top, state.sinks[node])
        output = exact_pull(exact.e_high[span][pulled], exact.e_low[span][pulled],
                            exact.l_high[node], exact.l_low[node], values, top)
        if np.isnan(output).any():                                    # undecided: integers
            decided = exact_fallback(state, node, members, pulled[members])[1]
            assert decided is not None                                 # pulled given
            output = decided.astype(values.dtype)
        if state.kept is not None:
            with np.errstate(over="ignore"):      # 1/(1-p) may take it past the float range
                output = output * state.dropout_scale
    else:
        output = weighted_pull(state.shares[span][pulled], values)
    state.output[node] = output
    state.done_time[node] += state.processing
