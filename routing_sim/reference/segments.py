r"""Matrix-form attention over a sparse route set: a segment softmax, no ``L × S`` array.

The routes of query node ``u`` are one segment of the flat route list. For every route
``r = (u, j)``:

.. math:: s_r = \mathrm{mod}(q_u \cdot k_j \cdot \mathrm{scale}) + b_r,\quad
          w_r = \frac{e^{s_r - \max_{seg} s}}{\sum_{seg} e^{s - \max_{seg} s}},\quad
          o_u = \sum_{r \in u} w_r v_j

(with sinks, the segment's sink logit joins the max and the normaliser's sum).

computed with gathers, ``einsum`` and ``np.*.reduceat`` over chunks of whole segments, so
memory stays at a chunk of routes times the feature size. Like :mod:`routing_sim.reference.matrix`
it shares argument handling with the simulator and none of its arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import EmptyRowError, NumericalError
from ..inputs.mods import derivative, modified, removed_by
from ..routes.problem import Problem
from ..routes.route_set import batch_head

__all__ = ["segment_attention", "segment_backward"]

CHUNK_ROUTES = 2**16     # routes per chunk: a chunk gathers CHUNK_ROUTES x E floats


class Chunk:
    """One run of whole segments: the routes of query nodes ``first .. last - 1``."""

    def __init__(self, problem: Problem, first: int, last: int) -> None:
        routes = problem.sparse_form.routes
        groups, n_queries, n_keys, _, _ = problem.shape
        self.span = slice(int(routes.indptr[first]), int(routes.indptr[last]))
        counts = np.diff(routes.indptr[first:last + 1])                # (nodes,)
        self.nodes = np.arange(first, last)[counts > 0]                # segments with routes
        self.counts = counts[counts > 0]
        self.starts = np.cumsum(self.counts) - self.counts             # (segments,)
        self.node = np.repeat(self.nodes, self.counts)                 # (r,) query node u
        group = self.node // n_queries
        self.query_token = self.node % n_queries                       # (r,) i
        self.key_token = routes.indices[self.span].astype(np.int64)    # (r,) j
        self.key_row = group * n_keys + self.key_token                 # (r,) row of (G·S, ·)
        self.batch, self.head = batch_head(group, routes.batch_shape)
        # (segments,) each query node's sink logit, or None
        self.sinks = None if problem.sinks is None else problem.sinks[self.nodes // n_queries]

    def total(self, per_route: np.ndarray) -> np.ndarray:
        """Per segment: the sum of a per-route array (first axis)."""
        return np.add.reduceat(per_route, self.starts, axis=0)

    def spread(self, per_segment: np.ndarray) -> np.ndarray:
        """Per route: its segment's entry."""
        return np.repeat(per_segment, self.counts, axis=0)


def chunks(problem: Problem) -> Iterator[Chunk]:
    """Whole segments, about CHUNK_ROUTES routes at a time."""
    indptr = problem.sparse_form.routes.indptr
    first, n_nodes = 0, len(indptr) - 1
    while first < n_nodes:
        last = int(np.searchsorted(indptr, indptr[first] + CHUNK_ROUTES, side="right")) - 1
        last = min(max(last, first + 1), n_nodes)
        if indptr[last] > indptr[first]:
            yield Chunk(problem, first, last)
        first = last


def route_scores(problem: Problem, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, s)``: ``q · k · scale`` and the score after score_mod and bias, per route
    (``-inf`` where the score_mod removed the route)."""
    dim = problem.shape[3]
    queries = problem.query.reshape(-1, dim)[chunk.node]               # (r, E)
    keys = problem.key.reshape(-1, dim)[chunk.key_row]                 # (r, E)
    removed = None
    with np.errstate(over="ignore", invalid="ignore"):
        raw = np.einsum("re,re->r", queries, keys) * problem.dtype.type(problem.scale)
        scores = raw
        if problem.score_mod is not None:
            scores = modified(problem.score_mod, raw, chunk.batch, chunk.head,
                              chunk.query_token, chunk.key_token)
            removed = removed_by(raw, scores)
        if problem.sparse_form.bias is not None:
            scores = scores + problem.sparse_form.bias[chunk.span]
    overflow = ~np.isfinite(scores) if removed is None else ~np.isfinite(scores) & ~removed
    if overflow.any():
        bad = int(np.flatnonzero(overflow)[0])
        raise NumericalError(f"the score of query {chunk.query_token[bad]} and key "
                             f"{chunk.key_token[bad]} (group {chunk.node[bad] // problem.shape[1]})"
                             f" overflowed to {scores[bad]}; scale the inputs down (a score_mod "
                             "must return finite scores, or -inf to remove the route)")
    if removed is not None and problem.empty_rows == "error":
        gone = np.logical_and.reduceat(removed, chunk.starts)          # (segments,)
        if gone.any():
            node = int(chunk.nodes[np.flatnonzero(gone)[0]])
            raise EmptyRowError(f"query token {node % problem.shape[1]} (group "
                                f"{node // problem.shape[1]}) has no route to any key token "
                                "(the score_mod removed every one)")
    return raw, scores


def route_shares(chunk: Chunk, scores: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Stable softmax within each segment: subtract the segment max, no epsilon. With
    sinks, each segment's sink logit joins the max and the normaliser; returns the routes'
    shares ``(r,)``, the sinks' shares ``(segments,)`` (None without sinks) and each
    segment's log-sum-exp ``max + log(normaliser)`` ``(segments,)``.

    A segment whose every route a score_mod removed (all ``-inf``) and that has no sink
    gets shares of 0, as an empty row does: its max is shifted by 0 and its total divided
    by 1, so ``-inf - -inf`` never happens; its log-sum-exp is -inf.
    """
    top = np.maximum.reduceat(scores, chunk.starts)                    # (segments,)
    if chunk.sinks is not None:
        top = np.maximum(top, chunk.sinks)
    empty = np.isneginf(top)
    top[empty] = 0.0
    shares = np.exp(scores - chunk.spread(top))                        # (r,)
    total = chunk.total(shares)                                        # (segments,)
    total[empty] = 1.0
    if chunk.sinks is None:
        lse = np.where(empty, -np.inf, top + np.log(total))            # (segments,)
        return shares / chunk.spread(total), None, lse
    sink_weight = np.exp(chunk.sinks - top)                            # (segments,)
    total += sink_weight
    return shares / chunk.spread(total), sink_weight / total, top + np.log(total)


def dropout_factor(problem: Problem, chunk: Chunk) -> np.ndarray | float:
    keep = problem.sparse_form.keep
    if keep is None:
        return 1.0
    return keep[chunk.span] * problem.dtype.type(1.0 / (1.0 - problem.dropout_p))


def segment_attention(problem: Problem
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(output (G, L, Ev), shares (R,), has_route (G, L), lse (G, L))``: shares before
    dropout (the output pulls them after it), in canonical order; ``has_route`` is False
    for a query with no route or none left after the score_mod; ``lse`` each query's
    log-sum-exp (-inf, or its sink's logit, for a query with no route)."""
    groups, n_queries, _, _, value_dim = problem.shape
    _check_empty(problem)
    output = np.zeros((groups * n_queries, value_dim), dtype=problem.dtype)
    shares = np.zeros(len(problem.sparse_form.routes), dtype=problem.dtype)
    has_route = np.diff(problem.sparse_form.routes.indptr) > 0          # (G·L,)
    lse = np.full(groups * n_queries, -np.inf, dtype=problem.dtype) if problem.sinks is None \
        else np.repeat(problem.sinks, n_queries)                       # (G·L,) no route yet
    values = problem.value.reshape(-1, value_dim)
    for chunk in chunks(problem):
        _, scores = route_scores(problem, chunk)
        if problem.score_mod is not None:
            has_route[chunk.nodes] = np.maximum.reduceat(scores, chunk.starts) > -np.inf
        pulled, _, lse[chunk.nodes] = route_shares(chunk, scores)
        shares[chunk.span] = pulled
        pulled = pulled * dropout_factor(problem, chunk)
        output[chunk.nodes] = chunk.total(pulled[:, None] * values[chunk.key_row])
    return (output.reshape(groups, n_queries, value_dim), shares,
            has_route.reshape(groups, n_queries), lse.reshape(groups, n_queries))


def segment_backward(problem: Problem, upstream: np.ndarray,
                     lse_upstream: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """``(dQ (G, L, E), dK (G, S, E), dV (G, S, Ev), d_sinks (G,) or None)`` for
    ``upstream`` ``(G, L, Ev)`` and the log-sum-exp's ``lse_upstream`` ``(G·L,)`` (None:
    the loss does not read it); ``dS = P (dP - Σ P dP + d_lse)`` per segment."""
    groups, n_queries, n_keys, dim, value_dim = problem.shape
    slope = derivative(problem.score_mod)
    upstream = upstream.reshape(-1, value_dim)
    queries, keys = problem.query.reshape(-1, dim), problem.key.reshape(-1, dim)
    values = problem.value.reshape(-1, value_dim)
    d_query = np.zeros_like(queries)
    d_key, d_value = np.zeros_like(keys), np.zeros_like(values)
    d_sinks = None if problem.sinks is None else np.zeros_like(problem.sinks)  # (G,)
    if d_sinks is not None and lse_upstream is not None:  # no route: the sink's share is 1
        empty = np.flatnonzero(np.diff(problem.sparse_form.routes.indptr) == 0)  # (nodes,)
        np.add.at(d_sinks, empty // n_queries, lse_upstream[empty])
    for chunk in chunks(problem):
        raw, scores = route_scores(problem, chunk)
        shares, sink_shares, _ = route_shares(chunk, scores)           # (r,) P
        factor = dropout_factor(problem, chunk)
        d_out = upstream[chunk.node]                                   # (r, Ev)
        np.add.at(d_value, chunk.key_row, (shares * factor)[:, None] * d_out)
        d_shares = np.einsum("re,re->r", d_out, values[chunk.key_row]) * factor  # dP
        through = chunk.total(shares * d_shares)                       # (segments,) Σ P dP
        if lse_upstream is not None:
            through -= lse_upstream[chunk.nodes]                       # Σ P dP - d_lse
        d_scores = shares * (d_shares - chunk.spread(through))
        if d_sinks is not None and sink_shares is not None:  # d sink = -p_sink · Σ P dP
            np.add.at(d_sinks, chunk.nodes // n_queries, -sink_shares * through)
        if slope is not None:        # a removed route (-inf) had no share: gradient 0
            d_scores = np.where(np.isneginf(scores), 0, d_scores * slope(
                raw, chunk.batch, chunk.head, chunk.query_token, chunk.key_token))
        d_scores = d_scores * problem.dtype.type(problem.scale)        # (r,) through the scale
        d_query[chunk.nodes] = chunk.total(d_scores[:, None] * keys[chunk.key_row])
        np.add.at(d_key, chunk.key_row, d_scores[:, None] * queries[chunk.node])
    return (d_query.reshape(groups, n_queries, dim), d_key.reshape(groups, n_keys, dim),
            d_value.reshape(groups, n_keys, value_dim), d_sinks)


def _check_empty(problem: Problem) -> None:
    if problem.empty_rows != "error":
        return
    empty = np.flatnonzero(np.diff(problem.sparse_form.routes.indptr) == 0)
    if empty.size:
        group, token = divmod(int(empty[0]), problem.shape[1])
        raise EmptyRowError(f"query token {token} (group {group}) has no route to any key token")
