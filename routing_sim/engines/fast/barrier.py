"""The query node's arithmetic: scores, the budget (softmax), the weighted pull.

Functions over a run's :class:`~routing_sim.engines.state.ForwardState` (which holds the
route table and the problem) and the query nodes that just passed a barrier. Each node's
sums run once, over its own routes in source order (:mod:`routing_sim.numerics.kernels`), so no
delivery schedule changes a bit of the result. ``allocate`` and ``aggregate`` take one node
at a time and cover dead routes, hard routing and exact mode. ``allocate_whole`` and
``pull_whole``, after them, are the vectorised paths for nodes that lost no route: the
scores and shares of every node that passed its barrier in one step (rows of equal length
stacked together; or, computed at the first barrier for every node at once, the sparse
tiles, a full table's row blocks or a dense mask's span blocks), then their outputs. Block
products may round differently from a one-node product in the last bit, within the float
contract; what never changes them is the schedule: the blocks are fixed by the route table
alone, and a node that loses a route recomputes its own row with the one-node paths.
"""

from __future__ import annotations

import threading

import numpy as np

from ...errors import EmptyRowError, NumericalError
from ...inputs.mods import modified, removed_by
from ...numerics.exact import exact_lse, exact_pull, exact_shares, exact_unnormalised
from ...numerics.exact_row import exact_row, exact_row_lse
from ...numerics.kernels import (
    routing_budget,
    scale_scores,
    sink_budget,
    top_routes,
    weighted_pull,
    with_sink,
)
from ...numerics.tiles import RaggedRows, SpanBlocks
from ...routes.route_set import batch_head
from ..state import VALUE_PHASE, ExactParts, ForwardState
from .exact_whole import exact_scores_whole

__all__ = ["aggregate", "allocate", "allocate_whole", "budget", "exact_budget_lse",
           "exact_budget_shares", "exact_fallback", "gather", "keep_probabilities", "modify",
           "node_scores", "note_would_have", "pending_shares", "pull_whole", "scores_of",
           "softmax_routes", "tiled_shares"]

_FILLING = threading.RLock()        # pending_shares: one fill at a time (re-entered by its own)


def gather(rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` (one group's keys or values) for these key indices."""
    if len(keys) and keys[-1] - keys[0] == len(keys) - 1:
        return rows[keys[0]:keys[-1] + 1]                              # contiguous: a view
    return rows[keys]


def node_scores(state: ForwardState, node: int) -> None:
    """Every score of one query node, in source order (the key nodes' answers)."""
    problem = state.problem
    group, token, span = state.span(node)
    keys = state.routes.key_index[span]
    bias = None if state.bias is None else state.bias[span]
    if state.raw is not None:                                          # float mode only
        scaled = state.kernels.scores(gather(problem.key[group], keys),
                                      problem.query[group, token], problem.scale)[0]
        state.scores[span] = modify(state, span, scaled, bias)[0]
        return
    high, low = state.kernels.scores(gather(problem.key[group], keys),
                                     problem.query[group, token], problem.scale, bias)
    state.scores[span] = high
    if state.exact is not None and low is not None:
        state.exact.score_low[span] = low


def modify(state: ForwardState, span: slice | np.ndarray, scaled: np.ndarray,
           bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The key node's score_mod on scaled scores of routes ``span`` (kept in
    ``state.raw`` for the backward pass), then the bias; and which routes the mod removed
    (``-inf``: they take no share and pull no value). ``scaled`` is one node's scores or
    ``(nodes, routes)`` rows of whole nodes, so an all-removed row is an empty row."""
    routes, score_mod, raw = state.routes, state.problem.score_mod, state.raw
    assert score_mod is not None and raw is not None, "only a score_mod modifies scores"
    raw[span] = scaled.reshape(-1)
    nodes = routes.query_node[span]
    batch, head = batch_head(nodes // routes.n_queries, state.problem.batch_shape)
    scores = modified(score_mod, scaled.reshape(-1), batch, head,
                      nodes % routes.n_queries, routes.key_index[span]).reshape(scaled.shape)
    removed = removed_by(scaled, scores)
    rows = removed.reshape(-1, max(removed.shape[-1], 1))              # (nodes, routes)
    gone = np.flatnonzero(rows.all(axis=1)) if removed.size else np.zeros(0, np.int64)
    if state.problem.empty_rows == "error" and len(gone):
        first = int(nodes.reshape(rows.shape)[gone[0], 0])
        group, token = divmod(first, routes.n_queries)
        raise EmptyRowError(f"query token {token} (group {group}) has no route to any key "
                            "token (the score_mod removed every one); empty_rows='error' "
                            "was asked for")
    if bias is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            scores = scores + bias.reshape(scaled.shape)
    return scores, removed


def scores_of(state: ForwardState, span: slice, routes: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """(high, low) scores of some of a node's routes (a mask over its span)."""
    low = None if state.exact is None else state.exact.score_low[span][routes]
    return state.scores[span][routes], low


def budget(state: ForwardState, node: int, alive: np.ndarray, remember: bool = True
           ) -> np.ndarray:
    """Shares (after dropout) of a node's live routes; 0 for the dead ones.

    With hard routing only the ``top_k`` best live routes get a share. ``remember``
    keeps what the pull will need (the chosen routes; exact mode's e and l), the sink's
    share and the node's log-sum-exp.
    """
    _, _, span = state.span(node)
    shares = np.zeros(span.stop - span.start, dtype=state.problem.dtype)
    sink_share: float | np.ndarray = 1.0       # no live route: the sink takes everything
    lse = state.no_route_lse(np.array([node]))                         # (1,)
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
            unnormalised = exact_unnormalised(high, low)
            every = exact_budget_shares(keep, node, span, alive, unnormalised, high.max(),
                                        sink=state.sinks is not None)
            if np.isnan(every).any():                                  # undecided: integers
                every = exact_fallback(state, node, alive)[0]
            shares[alive] = every[:int(alive.sum())]
            if state.sinks is not None:
                sink_share = every[-1]
            if remember:
                lse = exact_budget_lse(state, np.array([node]), high, low, unnormalised,
                                       alive)
        elif state.sinks is None:
            shares[alive] = routing_budget(state.scores[span][alive], lse=lse)
        else:
            shares[alive], sink_share = sink_budget(state.scores[span][alive],
                                                    state.sinks[node], lse=lse)
    if remember:
        state.lse[node] = lse[0]
    if remember and state.sink_shares is not None:
        state.sink_shares[node] = sink_share
    if state.kept is not None:
        if remember:
            keep_probabilities(state, span, shares)
        shares *= state.kept[span] * state.dropout_scale
    return shares


def keep_probabilities(state: ForwardState, span: slice | np.ndarray, shares: np.ndarray
                       ) -> None:
    """Keep the shares before dropout (``run.probabilities``): rows that sum to 1."""
    assert state.probabilities is not None, "kept with dropout"
    state.probabilities[span] = shares.reshape(-1)


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


def exact_budget_lse(state: ForwardState, nodes: np.ndarray, high: np.ndarray,
                     low: np.ndarray,
                     unnormalised: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                     routes: np.ndarray | None = None) -> np.ndarray:
    """Exact mode: the log-sum-exp of nodes ``(n,)``, from the scores their softmax ran
    over (rows ``high``, ``low``, the sink last) and the same ``l`` as their shares,
    correctly rounded; a node the double-doubles cannot decide is done in integers.
    ``routes``: the mask over one node's span the softmax ran over (None: every route)."""
    lse = np.atleast_1d(exact_lse(high, low, unnormalised[2], unnormalised[3]))  # (n,)
    for row in np.flatnonzero(np.isnan(lse)).tolist():               # undecided: integers
        node = int(nodes[row])
        _, _, span = state.span(node)
        every = np.ones(span.stop - span.start, dtype=bool)
        lse[row] = exact_row_lse(*_row_inputs(state, node, every if routes is None
                                              else routes))
    return lse.astype(state.problem.dtype)


def _row_inputs(state: ForwardState, node: int, routes: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray | None, float | None]:
    """``(keys, query, scale, bias, sink)`` of a node's routes ``routes`` (a mask over
    its span): what :mod:`~routing_sim.numerics.exact_row` recomputes a row from."""
    problem = state.problem
    group, token, span = state.span(node)
    keys = state.routes.key_index[span][routes]
    bias = None if state.bias is None else state.bias[span][routes]
    sink = None if state.sinks is None else float(state.sinks[node])
    return (gather(problem.key[group], keys), problem.query[group, token], problem.scale,
            bias, sink)


def softmax_routes(state: ForwardState, span: slice) -> np.ndarray:
    """The routes of a node its softmax runs over: the live ones (the chosen, top-k)."""
    members = state.dead[span] == 0
    return members if state.chosen is None else members & state.chosen[span]


def exact_fallback(state: ForwardState, node: int, routes: np.ndarray,
                   pulled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Exact mode, a node the double-doubles cannot decide: shares over ``routes`` (a
    mask over its span; with sinks, the sink's share last) and, given ``pulled``, its
    output, from the exact scores the key nodes computed
    (:func:`~routing_sim.numerics.exact_row.exact_row`)."""
    group, _, span = state.span(node)
    keys, query, scale, bias, sink = _row_inputs(state, node, routes)
    values = None if pulled is None else gather(state.problem.value[group],
                                                state.routes.key_index[span][routes])
    return exact_row(keys, query, scale, bias, values, pulled, sink)


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
    if state.raw is not None:                          # a removed route (-inf): no PULL
        pull &= ~np.isneginf(state.scores[span])
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


def allocate_whole(state: ForwardState, nodes: np.ndarray) -> np.ndarray:
    """Barrier passed for nodes that lost no route: scores, then shares. Returns PULLs.

    Each node's scores are one product over its own keys; the softmax then runs on
    rows of equal length stacked together, which computes each row exactly as alone.
    """
    if state.kernels.exact and state.top_k:
        return np.concatenate([allocate(state, int(node)) for node in nodes])
    if state.fixed_blocks:
        tiled_shares(state)
    elif state.kernels.exact:
        exact_scores_whole(state, nodes)
    else:
        _float_scores(state, nodes)
    for chosen, count in ([] if state.tiled_shares else _by_count(state, nodes)):
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
    if state.raw is not None:                          # a removed route (-inf): no PULL
        pulls = pulls[~np.isneginf(state.scores[pulls])]
    if state.top_k or state.kept is not None or state.raw is not None:
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


def tiled_shares(state: ForwardState, softmax: bool = True) -> None:
    """Fast paths, at the first barrier: every route's score and share at once (``softmax``
    False: the scores alone; :func:`pending_shares` adds the shares when they are read).

    The dot products come from the fixed tiles of a sparse run (:mod:`routing_sim.numerics.tiles`),
    the row blocks of a full one or the span blocks of a dense one-run-per-row mask; the
    softmax runs on stacked rows; the same products
    whatever order the barriers pass in, so a node's shares are the same bits under every
    schedule. A node that later loses a route recomputes its own (:func:`allocate`),
    after this: the two-phase nodes call it at their first barrier, whichever node passes
    it.
    """
    if state.tiled_shares:
        return
    _fixed_blocks(state, softmax=softmax)
    state.tiled_shares = True


def pending_shares(state: ForwardState) -> None:
    """The shares a run put off (:attr:`ForwardState.shares_pending`): the softmax of the
    scores it kept, on the blocks the barrier would have used, so the same bits. Nothing
    else moves: no product is made again (the inputs may have changed since), no score_mod
    called, and the log-sum-exps and sink shares stay the run's own.

    One fill at a time: a reader in another thread waits for it rather than read shares
    half made; the filling thread's own reads (the blocks write through
    :attr:`ForwardState.shares`) go straight through. A fill that fails leaves the shares
    pending.
    """
    with _FILLING:
        if not state.shares_pending or state.filling_shares:
            return
        state.filling_shares = True
        try:
            _fixed_blocks(state, scores=False)
            if state.spans is not None:
                state.spans.release()
            state.shares_pending = False
        finally:
            state.filling_shares = False


def _fixed_blocks(state: ForwardState, scores: bool = True, softmax: bool = True) -> None:
    """Every route's scores (``scores``: the products, scaled, biased and checked) and
    shares (``softmax``) on the run's fixed blocks; the softmax alone reads the scores the
    first pass left, and leaves the log-sum-exps and sink shares as they are."""
    problem = state.problem
    if state.rows is not None:
        _row_block_shares(state, scores, softmax)
        return
    if state.spans is not None:
        _span_block_shares(state, scores, softmax)
        return
    assert state.tiles is not None, "a sparse run's state has tiles"
    if scores:
        dim = problem.shape[3]
        with np.errstate(over="ignore", invalid="ignore"):             # overflow reported later
            state.tiles.dots(problem.query.reshape(-1, dim), problem.key.reshape(-1, dim),
                             out=state.scores)
    ragged = RaggedRows(state.routes.indptr)
    if state.raw is None and not state.top_k and ragged.worthwhile():
        for first, stop, width in ragged.blocks:
            _ragged_block(state, ragged, first, stop, width, scores, softmax)
    else:
        for chosen, count in _by_count(state, np.flatnonzero(state.needed)):
            _float_block(state, chosen, count, scores, softmax)


def _span_block_shares(state: ForwardState, scores: bool = True, softmax: bool = True
                       ) -> None:
    """A dense mask of one key run per row: each span block one product (into one reused
    array), then its rows part by part (each part's passes stay in cache): scaled (and
    biased) in place, the padding set to -inf (no share; each row's max and sum as they
    are), the softmax in place, and one gather each puts the scores and the shares into
    the route arrays (``scores``, ``softmax``: as :func:`_fixed_blocks`)."""
    assert state.spans is not None, "a span run's state has span blocks"
    problem, spans = state.problem, state.spans
    query = problem.query.reshape(-1, problem.shape[3])                # (G·L, E)
    key = problem.key.reshape(-1, problem.shape[3])                    # (G·S, E)
    for first, stop, lo, hi in spans.blocks:
        product = spans.work(first, stop, lo, hi, state.scores.dtype)  # (rows, hi - lo)
        if scores:
            with np.errstate(over="ignore", invalid="ignore"):         # overflow reported next
                spans.dots(query, key, first, stop, lo, hi, out=product)  # (rows, hi - lo)
        for part, end in spans.parts(first, stop, lo, hi):
            _span_part(state, product[part - first:end - first], part, end, lo, scores,
                       softmax)


def _span_part(state: ForwardState, block: np.ndarray, first: int, stop: int,
               lo: int, scores: bool = True, softmax: bool = True) -> None:
    """The scores and (``softmax``) shares of nodes ``first:stop`` from their key-aligned
    dot products ``block (rows, width)`` (from key ``lo``; contiguous, the work array);
    ``scores`` False: the block is laid out again from the scores already in."""
    assert state.spans is not None, "a span run's state has span blocks"
    spans, hi = state.spans, lo + block.shape[1]
    span = spans.routes(first, stop)
    filled, padding = spans.masks(first, stop, lo, hi)
    entries = block.reshape(-1)                                        # (rows · width,) a view
    flat = state.scores[span]                                          # (routes,) a view
    if scores:
        scale_scores(block, state.problem.scale)      # elementwise: the routes' own bits
        bias = None if state.bias is None else state.bias[span]        # (routes,)
        with np.errstate(over="ignore", invalid="ignore"):             # overflow reported next
            if padding is None:                        # every entry a route, in order
                if bias is not None:
                    entries += bias
                flat[:] = entries
            else:
                flat[:] = entries[filled.reshape(-1)]
                if bias is not None:
                    flat += bias
                    entries[filled.reshape(-1)] = flat
        _check_overflow(flat)                          # a padded pair's dot is no route's
        if softmax and padding is not None:
            np.copyto(block, -np.inf, where=padding)
    else:                                              # the block the first pass had
        _key_aligned(spans, state.scores, block, first, stop, lo, -np.inf)
    if not softmax:
        return
    _padded_budget(state, span, slice(first, stop), None if padding is None else filled,
                   block, remember=scores)


def _check_overflow(scores: np.ndarray, removed: np.ndarray | None = None) -> None:
    """Refuse when one of these routes' ``scores`` overflowed: one sum, and a look route by
    route only when it is not finite (huge finite scores can overflow the sum alone; a
    route the score_mod removed, ``removed``, is -inf and no overflow)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(scores, axis=None)
    if not np.isfinite(total):
        overflow = ~np.isfinite(scores) if removed is None else ~np.isfinite(scores) & ~removed
        if overflow.any():
            overflowed(scores[overflow])


def overflowed(scores: np.ndarray) -> None:
    """Refuse scores that overflowed (``scores``: the non-finite ones, not removed routes)."""
    raise NumericalError(f"a score overflowed to {scores[0]}; scale the inputs down")


def _stacked_budget(state: ForwardState, nodes: slice | np.ndarray, block: np.ndarray,
                    out: np.ndarray | None, remember: bool = True) -> np.ndarray:
    """The softmax of ``nodes``' stacked rows ``block (rows, width)`` (their sinks in the
    denominators): the shares, into ``out`` when given; each row's log-sum-exp and sink
    share go into the state (``remember``)."""
    lse = np.empty(len(block), dtype=block.dtype)                      # (rows,)
    if state.sink_shares is None:
        shares = routing_budget(block, out=out, lse=lse)
    else:
        assert state.sinks is not None                                 # both or neither
        shares, sink_shares = sink_budget(block, state.sinks[nodes], out=out, lse=lse)
        if remember:
            state.sink_shares[nodes] = sink_shares
    if remember:
        state.lse[nodes] = lse
    return shares


def _padded_budget(state: ForwardState, span: slice, nodes: slice,
                   filled: np.ndarray | None, block: np.ndarray, remember: bool = True
                   ) -> None:
    """The shares of nodes ``nodes`` whose routes ``span`` are the ``filled`` entries of
    ``block (rows, width)`` (None: every entry, in order; contiguous; the scaled scores
    there, -inf elsewhere: the padding takes no share): the softmax in place, then one
    gather into the state (``remember``: as :func:`_stacked_budget`)."""
    _stacked_budget(state, nodes, block, out=block, remember=remember)
    shares = state.shares[span]                                        # (routes,) a view
    entries = block.reshape(-1)                                        # (rows · width,) a view
    shares[:] = entries if filled is None else entries[filled.reshape(-1)]
    if state.kept is not None:
        keep_probabilities(state, span, shares)
        shares *= state.kept[span] * state.dropout_scale


def _ragged_block(state: ForwardState, ragged: RaggedRows, first: int, stop: int,
                  width: int, scores: bool = True, softmax: bool = True) -> None:
    """(``scores``) Scale and bias, and (``softmax``) the softmax of nodes ``first:stop``
    (one ragged block): the rows padded with -inf, which takes no share and leaves each
    row's max and sum as they are."""
    span = ragged.routes(first, stop)
    filled = ragged.filled(first, stop, width)                         # (rows, width)
    flat = state.scores[span]                                          # (routes,) a view
    if scores:
        scale_scores(flat, state.problem.scale,
                     None if state.bias is None else state.bias[span])
        _check_overflow(flat)
    if not softmax:
        return
    block = np.full(filled.shape, -np.inf, dtype=state.scores.dtype)   # (rows, width)
    block.reshape(-1)[filled.reshape(-1)] = flat
    _padded_budget(state, span, slice(first, stop), filled, block, remember=scores)


def _row_block_shares(state: ForwardState, scores: bool = True, softmax: bool = True
                      ) -> None:
    """A full table: each block of rows one product, then the softmax of those rows
    (``scores``, ``softmax``: as :func:`_fixed_blocks`)."""
    assert state.rows is not None, "a full run's state has row blocks"
    problem, rows = state.problem, state.rows
    for group, first, stop in rows.blocks:
        if scores:
            with np.errstate(over="ignore", invalid="ignore"):         # overflow reported later
                rows.dots(problem.query, problem.key, group, first, stop, out=state.scores)
        node = group * rows.n_queries
        _float_block(state, np.arange(node + first, node + stop), rows.n_keys, scores,
                     softmax)


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


def _float_block(state: ForwardState, chosen: np.ndarray, count: int, scores: bool = True,
                 softmax: bool = True) -> None:
    """(``scores``) Scale, bias, top-k, and (``softmax``) the softmax of nodes with
    ``count`` routes each, stacked."""
    span = _routes_block(state, chosen)
    block = state.scores[span].reshape(len(chosen), count)            # (nodes, routes)
    if scores:
        block = _scaled_block(state, span, block)
    elif state.top_k and state.chosen is not None:     # the routes the first pass chose
        block = np.where(state.chosen[span].reshape(block.shape), block, -np.inf)
    if not softmax:
        return
    # A slice of routes: the shares go straight into the state.
    out = state.shares[span].reshape(block.shape) if isinstance(span, slice) else None
    shares = _stacked_budget(state, chosen, block, out=out, remember=scores)
    if state.kept is not None:
        keep_probabilities(state, span, shares)
        shares *= state.kept[span].reshape(shares.shape) * state.dropout_scale
    if out is None:                                    # else the shares are in place
        state.shares[span] = shares.reshape(-1)


def _scaled_block(state: ForwardState, span: slice | np.ndarray, block: np.ndarray
                  ) -> np.ndarray:
    """Nodes' stacked dot products ``block (nodes, routes)`` (of routes ``span``) scaled,
    biased and modified into their scores (kept in the state), overflow refused, and the
    top-k chosen (the others -inf): the block the softmax runs on."""
    problem = state.problem
    bias = None if state.bias is None else state.bias[span].reshape(block.shape)
    if state.raw is None:
        block = scale_scores(block, problem.scale, bias)
        removed = None
    else:                                 # -inf where the score_mod removed the route
        block, removed = modify(state, span, scale_scores(block, problem.scale), bias)
    if not np.may_share_memory(block, state.scores):   # scaled in place: already there
        state.scores[span] = block.reshape(-1)
    _check_overflow(block, removed)
    if state.top_k and state.chosen is not None:
        pick = top_routes(block, state.top_k)
        state.chosen[span] = pick.reshape(-1)
        block = np.where(pick, block, -np.inf)
    return block


def _exact_block(state: ForwardState, chosen: np.ndarray, count: int) -> None:
    """Exact shares of nodes with ``count`` routes each (scores already in)."""
    span = _routes_block(state, chosen)
    if not isinstance(span, slice):                    # runs of consecutive nodes: slices
        for run in np.split(chosen, np.flatnonzero(np.diff(chosen) != 1) + 1):
            _exact_block(state, run, count)
        return
    block = state.scores[span].reshape(len(chosen), count)            # (nodes, routes)
    assert state.exact is not None                                     # exact mode
    low = state.exact.score_low[span].reshape(block.shape)
    if state.sinks is not None:                                        # (nodes, routes + 1)
        block, low = with_sink(block, low, state.sinks[chosen])
    unnormalised = exact_unnormalised(block, low)
    shares = exact_budget_shares(state.exact, chosen, span, slice(None), unnormalised,
                                 block.max(axis=1), sink=state.sinks is not None)
    for row in np.flatnonzero(np.isnan(shares).any(axis=1)).tolist():  # undecided: integers
        shares[row] = exact_fallback(state, int(chosen[row]), np.ones(count, dtype=bool))[0]
    state.lse[chosen] = exact_budget_lse(state, chosen, block, low, unnormalised)
    if state.sink_shares is not None:
        state.sink_shares[chosen], shares = shares[:, -1], shares[:, :-1]
    if state.kept is not None:
        keep_probabilities(state, span, shares)
        shares *= state.kept[span].reshape(shares.shape) * state.dropout_scale
    state.shares[span] = shares.reshape(-1)


def pull_whole(state: ForwardState, nodes: np.ndarray) -> None:
    """o_i = Σ_j w_ij v_j for nodes whose values all came: on the fast paths every node's
    row at once (tiles, row or span blocks), else one product per node."""
    if state.fixed_blocks:
        if not state.tiled_output:
            _pull_every_row(state)
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


def _key_aligned(spans: SpanBlocks, per_route: np.ndarray, out: np.ndarray, first: int,
                 stop: int, lo: int, fill: float) -> None:
    """Nodes ``first:stop``'s ``per_route`` values (scores, shares) key-aligned into ``out
    (rows, width)`` (from key ``lo``), ``fill`` off their routes."""
    filled, padding = spans.masks(first, stop, lo, lo + out.shape[1])
    routed = per_route[spans.routes(first, stop)]                      # (routes,)
    if padding is None:
        out[...] = routed.reshape(out.shape)
        return
    out.fill(fill)
    out.reshape(-1)[filled.reshape(-1)] = routed


def _pull_every_row(state: ForwardState) -> None:
    """Every node's pull at once, straight into the outputs; a node that lost a route keeps
    (or later gets) its own row from :func:`aggregate`. A route that takes no value (not
    chosen, dropped, removed) has a share of exactly 0 here."""
    dead = np.flatnonzero(state.dead)
    lost = np.unique(state.routes.query_node[dead]) if len(dead) else dead
    kept_rows = state.output[lost]
    value = state.problem.value
    if state.spans is not None:
        flat_value = value.reshape(-1, value.shape[2])                 # (G·S, Ev)
        spans = state.spans
        for first, stop, lo, hi in spans.blocks:
            weights = spans.work(first, stop, lo, hi, state.shares.dtype)  # (rows, hi - lo)
            for part, end in spans.parts(first, stop, lo, hi):         # 0 off the routes
                _key_aligned(spans, state.shares, weights[part - first:end - first], part,
                             end, lo, 0.0)
            spans.pull(weights, flat_value, first, stop, lo, hi, out=state.output)
        spans.release()
    elif state.rows is not None:
        for group, first, stop in state.rows.blocks:
            state.rows.pull(state.shares, value, group, first, stop, out=state.output)
    else:
        assert state.tiles is not None, "a sparse run's state has tiles"
        state.tiles.pull(state.shares, value.reshape(-1, value.shape[2]), out=state.output)
    state.output[lost] = kept_rows
    state.tiled_output = True
