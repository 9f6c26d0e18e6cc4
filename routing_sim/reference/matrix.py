"""Matrix-form attention: the independent oracle every simulation is compared against.

This module computes ``softmax(Q Kᵀ · scale + bias) V`` with whole-matrix numpy
operations. It shares argument handling with the simulator (:mod:`routing_sim.routes.problem`)
but none of its arithmetic, so an equivalence test really compares two computations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike

from ..errors import EmptyRowError, InvalidArgumentError, NumericalError
from ..inputs.mods import derivative, flash_softcap, modified, removed_by
from ..options import NUMERICS, CausalAlignment, EmptyRows, Numerics, check_choice
from ..routes.problem import Problem, prepare
from ..routes.restrictions import DENSE_LIMIT
from ..routes.route_set import batch_head
from .exact_rows import exact_attention, has_route
from .segments import segment_attention, segment_backward

if TYPE_CHECKING:
    import networkx as nx

    from ..inputs.masks import Window
    from ..inputs.positions import AlibiMode, RotaryEmbedding
    from ..routes.route_set import RouteSet

__all__ = ["attention", "attention_backward"]


def attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
              attn_mask: ArrayLike | None = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False, *,
              causal_alignment: CausalAlignment = "top_left", empty_rows: EmptyRows = "zero",
              numerics: Numerics = "float", dropout_mask: ArrayLike | None = None,
              seed: int | None = 0, alibi_slopes: ArrayLike | None = None,
              alibi_mode: AlibiMode = "symmetric",
              rope: RotaryEmbedding | float | None = None,
              return_weights: bool | Literal["probabilities"] = False,
              graph: nx.DiGraph | RouteSet | None = None, mask_mod: Callable | None = None,
              score_mod: Callable | None = None, sinks: ArrayLike | None = None,
              position_ids: ArrayLike | None = None, key_position_ids: ArrayLike | None = None,
              window_size: Window | None = None, cu_seqlens_q: ArrayLike | None = None,
              cu_seqlens_k: ArrayLike | None = None, softcap: float | None = 0.0,
              return_lse: bool = False) -> np.ndarray | tuple[np.ndarray, ...]:
    r"""Scaled dot-product attention in matrix form, with PyTorch's SDPA semantics.

    .. math:: \mathrm{out} = \mathrm{softmax}(Q K^\top \cdot \mathrm{scale} + B)\, V

    Parameters
    ----------
    query : array_like, shape (..., L, E)
        What each query token is looking for.
    key : array_like, shape (..., S, E)
        How each key token can be found.
    value : array_like, shape (..., S, Ev)
        What each key token hands out when pulled.
    attn_mask : array_like of bool or float, broadcastable to (..., L, S), optional
        Bool: True = route allowed. Float: added to the scores; ``-inf`` blocks the route.
        A float mask of only 0s and 1s blocks nothing, so it warns
        (:class:`~routing_sim.MaskWarning`): pass it as bool if it says which routes exist.
    dropout_p : float
        Probability of dropping a route after softmax; survivors are rescaled by
        ``1 / (1 - dropout_p)``. The mask is ``default_rng(seed).random((..., L, S)) >=
        dropout_p`` unless ``dropout_mask`` gives it.
    is_causal : bool
        Allow only ``j <= i`` (aligned as ``causal_alignment`` says). Not with ``attn_mask``.
    scale : float, optional
        Score scale; ``1 / sqrt(E)`` by default.
    enable_gqa : bool
        Grouped-query attention: query head ``h`` uses key/value head ``h // (Hq // Hkv)``.
    causal_alignment : {"top_left", "bottom_right"}
        Where the causal diagonal starts when ``L != S`` (PyTorch's ``is_causal`` is top-left).
    empty_rows : {"zero", "nan", "error"}
        What a query with no allowed route gets: zeros (PyTorch's math backend), NaN, or
        an :class:`~routing_sim.EmptyRowError`.
    numerics : {"float", "exact"}
        Matrix products (BLAS), or correctly rounded dot products and sums, one query at a
        time (the formula is in :mod:`routing_sim.numerics.kernels`); exact mode is bit-identical
        to ``simulate(..., numerics="exact")`` under every schedule.
    dropout_mask : array_like of bool, optional
        The exact routes dropout keeps (True = kept), broadcastable to (..., L, S).
    seed : int, optional
        Seed of the dropout draw.
    alibi_slopes : array_like, shape (H,) or (B, H), optional
        ALiBi: add ``-alibi_slopes[h] · |pos_i - j|`` to head ``h``'s scores (heads are the
        last batch dim; positions follow ``causal_alignment``). ``(B, H)`` gives each batch
        element its own slopes, as FlashAttention takes them; with ``cu_seqlens`` and
        inputs ``(H, total, E)``, ``(n_seqs, H)`` gives each packed sequence its own, as
        ``flash_attn_varlen_func`` takes them.
    alibi_mode : {"symmetric", "signed"}
        ``"symmetric"``: ``-m · |pos_i - j|``, FlashAttention's convention. ``"signed"``:
        ``m · (j - pos_i)``, the ALiBi paper's and FlexAttention's (attention-gym); a key
        after the query then gets a positive bias. The two agree on causal routes.
    rope : float or RotaryEmbedding, optional
        Rotate queries and keys by their positions (a float is the base, layout "half",
        every feature); a :class:`~routing_sim.RotaryEmbedding` also takes ``rotary_dim``
        (partial rotary), the ``"interleaved"`` layout, or cos/sin tables. Key ``j`` sits
        at ``j`` and query ``i`` where ``causal_alignment`` puts it, unless
        ``position_ids`` say otherwise.
    return_weights : bool or "probabilities"
        Also return the routing tables: ``True`` gives them after dropout (the weights the
        output was computed with, as ``nn.MultiheadAttention`` and transformers' eager
        attention return them: a dropped route is 0 and the kept ones are scaled by
        ``1 / (1 - dropout_p)``, so a row need not sum to 1); ``"probabilities"`` gives
        the softmax before dropout, rows summing to 1. The same without dropout. Dense, so
        a sparse route set must be small enough (see
        :data:`~routing_sim.routes.restrictions.DENSE_LIMIT`).
    graph : networkx.DiGraph or RouteSet, optional
        The routes that exist (see :mod:`routing_sim.graphs`, :mod:`routing_sim.patterns`).
        A RouteSet is computed sparsely: a softmax per query over its own routes
        (:mod:`routing_sim.reference.segments`), never an ``L × S`` array.
    mask_mod : callable, optional
        ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (FlexAttention): True where the route
        exists. Combines with ``attn_mask``, ``is_causal`` and ``graph`` (all must allow a
        route); computed sparsely. See :mod:`routing_sim.mods` for how it is called.
    score_mod : callable, optional
        ``score_mod(score, b, h, q_idx, kv_idx) -> score`` (FlexAttention): changes the
        scaled score ``q·k·scale`` before ``attn_mask``/ALiBi biases are added and before
        the softmax. ``-inf`` removes the route (as in FlexAttention; a query left with
        none is an empty row); ``+inf`` and NaN raise InvalidArgumentError. Not with
        ``numerics="exact"``.
    sinks : array_like, shape (H,) or (1,), optional
        Attention sinks (gpt-oss's ``s_aux``, FlashAttention's learnable sink): one logit
        per head (heads are the last batch dim; (1,): one logit every head shares), added
        to every row's softmax denominator and not multiplied by ``scale``. With ``m =
        max(sink_h, max_j s_ij)``, ``w_ij = exp(s_ij - m) / (exp(sink_h - m) + Σ_j exp(s_ij
        - m))``: the sink takes a share of the budget and pulls no value, so a row's
        weights sum to less than 1. A row with no route gives the sink its whole budget
        (output zeros, as gpt-oss and FlashAttention do; ``empty_rows="nan"`` or
        ``"error"`` still apply to it). Cast to the inputs' dtype.
    position_ids : array_like of int, shape (L,) or (B, L), optional
        The positions RoPE rotates the queries by (needs ``rope``), as transformers'
        ``position_ids``: ``(B, L)`` gives each batch element its own (left padding,
        packed or shifted sequences; heads, the last batch dim, share them). With
        ``S == L`` the keys take the same positions, as in self-attention; with ``S != L``
        pass ``key_position_ids`` too. They move the rotation only: ``is_causal``,
        ALiBi and the mods still see the token indices.
    key_position_ids : array_like of int, shape (S,) or (B, S), optional
        The keys' positions for RoPE (default: ``position_ids`` when ``S == L``, else key
        ``j`` at ``j``).
    window_size : (int, int), optional
        FlashAttention's local attention ``(left, right)``: query ``i`` reaches keys ``j``
        with ``p - left <= j <= p + right``, where ``p = i + S - L`` (aligned bottom-right,
        as FlashAttention aligns it); ``-1`` or None leaves that side unbounded.
        ``is_causal=True`` sets ``right = 0`` (for ``L != S`` it then needs
        ``causal_alignment="bottom_right"``, FlashAttention's ``causal``; top-left is
        refused). Combines with ``attn_mask``, ``graph`` and ``mask_mod`` (all must allow a
        route). Computed sparsely: memory and time grow with the routes, never ``L × S``.
        A query whose window holds no key is an empty row (``empty_rows``).
    cu_seqlens_q, cu_seqlens_k : array_like of int, shape (B + 1,), optional
        FlashAttention's varlen: packed sequences along L and S (inputs ``(..., H, total,
        E)``). Sequence ``b`` is query rows ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` and key
        rows ``cu_seqlens_k[b]:cu_seqlens_k[b + 1]``; its q and k lengths may differ. No
        route crosses sequences, and ``is_causal`` (aligned as ``causal_alignment`` says),
        ``window_size`` (bottom-right), ALiBi and RoPE positions apply per sequence, each
        starting at 0 (FlashAttention's ``flash_attn_varlen_func`` aligns ``causal``
        bottom-right: pass ``causal_alignment="bottom_right"`` for it). Both or neither.
        ``mask_mod``, ``score_mod`` and ``attn_mask`` see packed indices. Computed sparsely.
    softcap : float, optional
        FlashAttention's ``softcap``: ``cap · tanh(s / cap)`` on the scaled score, before
        ``attn_mask``/ALiBi biases, the same as ``score_mod=rs.mods.softcap(cap)``. ``0.0``
        or None: off. Not with a ``score_mod`` (write both in one mod: no order of the two
        is the obvious one) nor with ``numerics="exact"``.
    return_lse : bool
        Also return each row's log-sum-exp ``lse_i = log Σ_j exp(s_ij)`` over the scores
        its softmax ran over (FlashAttention's ``softmax_lse``), computed stably as ``m_i
        + log Σ_j exp(s_ij - m_i)``: with sinks the sink's term is in the sum, with
        dropout it is the softmax's before dropout. A row with no route gets ``-inf``
        (its sink's logit with sinks), whatever ``empty_rows`` does to its output. In
        exact mode it is correctly rounded.

    Returns
    -------
    output : ndarray, shape (..., L, Ev)
    weights : ndarray, shape (..., L, S)
        Only with ``return_weights=True``. With ``sinks``, the real keys' shares (the
        sink's share is ``1 - weights.sum(-1)``, up to rounding).
    lse : ndarray, shape (..., L)
        Only with ``return_lse=True``, last: ``(output, lse)`` or ``(output, weights,
        lse)``. ``weights == exp(s - lse[..., None])`` (before dropout).

    Examples
    --------
    >>> import numpy as np
    >>> q = np.array([[1.0, 0.0]]); k = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> v = np.array([[10.0], [20.0]])
    >>> out, w = attention(q, k, v, scale=np.log(3), return_weights=True)
    >>> w.round(2)
    array([[0.75, 0.25]])
    >>> out.round(2)
    array([[12.5]])
    >>> out, w = attention(q, k, v, scale=np.log(3), sinks=[np.log(4)], return_weights=True)
    >>> w.round(2), out.round(2)                     # the sink takes 4 / (3 + 1 + 4)
    (array([[0.38, 0.12]]), array([[6.25]]))
    >>> out, lse = attention(q, k, v, scale=np.log(3), return_lse=True)
    >>> bool(np.isclose(lse[0], np.log(3 + 1)))      # log(e^{log 3} + e^0)
    True
    >>> capped = attention(q, k, v, scale=100.0, softcap=2.0, return_lse=True)[1]
    >>> bool(np.isclose(capped[0], np.log(np.exp(2 * np.tanh(50.0)) + 1)))
    True

    RoPE with per-sequence positions is attention on rotated queries and keys:

    >>> from routing_sim import RotaryEmbedding
    >>> q, k, v = np.random.default_rng(0).normal(size=(3, 2, 1, 4, 8))   # (B, H, L, E)
    >>> rope = RotaryEmbedding(rotary_dim=4, layout="interleaved")
    >>> ids = np.array([[0, 1, 2, 3], [2, 3, 4, 5]])                     # (B, L)
    >>> out = attention(q, k, v, is_causal=True, rope=rope, position_ids=ids)
    >>> at = ids[:, None, :]                                               # (B, 1, L)
    >>> rotated = attention(rope.rotate(q, at), rope.rotate(k, at), v, is_causal=True)
    >>> bool(np.array_equal(out, rotated))
    True

    A window and packed sequences are route sets: query 3 reaches keys 2 and 3; the two
    packed sequences (3 and 2 tokens) never see each other.

    >>> x = np.eye(5)
    >>> _, w = attention(x, x, x, window_size=(1, 0), return_weights=True)
    >>> (w > 0).astype(int)[3]
    array([0, 0, 1, 1, 0])
    >>> _, w = attention(x, x, x, cu_seqlens_q=[0, 3, 5], cu_seqlens_k=[0, 3, 5],
    ...                  return_weights=True)
    >>> (w > 0).astype(int)
    array([[1, 1, 1, 0, 0],
           [1, 1, 1, 0, 0],
           [1, 1, 1, 0, 0],
           [0, 0, 0, 1, 1],
           [0, 0, 0, 1, 1]])
    """
    score_mod = flash_softcap(softcap, score_mod, numerics)
    problem = prepare(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                      causal_alignment=causal_alignment, empty_rows=empty_rows,
                      dropout_mask=dropout_mask, seed=seed, alibi_slopes=alibi_slopes,
                      alibi_mode=alibi_mode, rope=rope, graph=graph, mask_mod=mask_mod,
                      score_mod=score_mod, sinks=sinks, position_ids=position_ids,
                      key_position_ids=key_position_ids, window_size=window_size,
                      cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    check_choice("numerics", numerics, NUMERICS)
    if not (isinstance(return_weights, (bool, np.bool_)) or return_weights == "probabilities"):
        raise InvalidArgumentError(f"return_weights must be False, True (the weights after "
                                   f"dropout) or 'probabilities' (before it), got "
                                   f"{return_weights!r}")
    if not isinstance(return_lse, (bool, np.bool_)):
        raise InvalidArgumentError(f"return_lse must be True or False, got {return_lse!r}")
    after_dropout = return_weights != "probabilities"
    if numerics == "exact":
        weights, output, lse = exact_attention(problem, bool(return_weights), after_dropout)
        routed = has_route(problem)                                    # (G, L)
    elif problem.sparse is not None:
        output, shares, routed, lse = segment_attention(problem)       # (G, L, Ev), (R,)
        keep = problem.sparse.keep
        if after_dropout and keep is not None:       # as the output pulled them
            shares = shares * (keep * problem.dtype.type(1.0 / (1.0 - problem.dropout_p)))
        weights = _dense_weights(problem, shares) if return_weights else None
    else:
        weights, _, live, lse = _weights(problem)                      # (G, L, S) x2, (G, L)
        pulled = _dropped_out(problem, weights)                        # (G, L, S)
        output = pulled @ problem.value                                # (G, L, Ev)
        weights = pulled if after_dropout else weights
        routed = np.asarray(live.any(axis=-1))                         # (G, L)
    if problem.empty_rows == "nan":
        output[~routed] = np.nan
        if weights is not None:
            weights[~routed] = np.nan
    results = [problem.unflatten(output)]
    if return_weights:
        assert weights is not None                                     # built when asked
        results.append(problem.unflatten(weights))
    if return_lse:
        results.append(problem.unflatten(lse[..., None])[..., 0])
    return results[0] if len(results) == 1 else tuple(results)


def _dense_weights(problem: Problem, shares: np.ndarray) -> np.ndarray:
    """The per-route shares as a dense ``(G, L, S)`` array, if that is small enough."""
    groups, n_queries, n_keys, _, _ = problem.shape
    if groups * n_queries * n_keys > DENSE_LIMIT:
        raise InvalidArgumentError(f"return_weights=True would build a dense (G, L, S) = "
                                   f"{(groups, n_queries, n_keys)} array, over {DENSE_LIMIT:,} "
                                   "entries; simulate(...).route_weights() gives them per route")
    routes = problem.sparse_form.routes
    weights = np.zeros((groups * n_queries, n_keys), dtype=problem.dtype)
    weights[routes.query_node, routes.indices] = shares
    return weights.reshape(groups, n_queries, n_keys)


def _weights(problem: Problem
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Routing tables ``(G, L, S)`` before dropout: stable softmax over live routes (and
    the sink); the sinks' shares ``(G, L)`` (None without sinks); which routes are live
    ``(G, L, S)``: allowed, and not removed by a score_mod; and each row's log-sum-exp
    ``m + log Σ exp(s - m)`` ``(G, L)`` (-inf for a row with nothing in its softmax)."""
    allowed = problem.dense_allowed                                    # (G, L, S)
    live = allowed
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported below
        scores = problem.query @ problem.key.transpose(0, 2, 1)        # (G, L, S)
        scores *= problem.dtype.type(problem.scale)
        if problem.score_mod is not None:
            raw, scores = scores, modified(problem.score_mod, scores, *_grid(problem),
                                           exists=allowed)
            live = allowed & ~removed_by(raw, scores)
        if problem.bias is not None:
            scores += problem.bias
    overflow = live & ~np.isfinite(scores)
    if overflow.any():
        g, i, j = np.argwhere(overflow)[0]
        raise NumericalError(f"the score of query {i} and key {j} (group {g}) overflowed "
                             f"to {scores[g, i, j]}; scale the inputs down (a score_mod must "
                             "return finite scores, or -inf to remove the route)")
    has_route = live.any(axis=-1, keepdims=True)                       # (G, L, 1)
    if problem.empty_rows == "error" and not has_route.all():
        g, i, _ = np.argwhere(~has_route)[0]
        raise EmptyRowError(f"query token {i} (group {g}) has no route to any key token"
                            + (" (the score_mod removed every one)" if allowed[g, i].any()
                               else ""))
    scores = np.where(live, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True, initial=-np.inf)      # (G, L, 1)
    sink_shares = None
    if problem.sinks is None:
        # An empty row's max is -inf; shift it by 0 instead so -inf - -inf never happens.
        row_max = np.where(has_route, row_max, 0)
        weights = np.exp(scores - row_max)                             # (G, L, S)
        total = np.where(has_route, weights.sum(axis=-1, keepdims=True), 1)  # (G, L, 1)
        weights /= total
        lse = np.where(has_route, row_max + np.log(total), -np.inf)    # (G, L, 1)
    else:                                  # the sink is in every row: the max is finite
        sink = problem.sinks[:, None, None]                            # (G, 1, 1)
        row_max = np.maximum(row_max, sink)
        weights = np.exp(scores - row_max)                             # (G, L, S)
        sink_weight = np.exp(sink - row_max)                           # (G, L, 1)
        total = weights.sum(axis=-1, keepdims=True) + sink_weight      # (G, L, 1)
        weights /= total
        sink_shares = (sink_weight / total)[..., 0]                    # (G, L)
        lse = row_max + np.log(total)                                  # (G, L, 1)
    return weights, sink_shares, live, lse[..., 0]


def _dropped_out(problem: Problem, weights: np.ndarray) -> np.ndarray:
    """The routing tables after dropout: the kept shares scaled by ``1 / (1 - p)``."""
    if problem.keep is None:
        return weights
    return weights * (problem.keep * problem.dtype.type(1.0 / (1.0 - problem.dropout_p)))


def _grid(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """FlexAttention's ``(b, h, q_idx, kv_idx)`` as arrays broadcasting to ``(G, L, S)``."""
    groups, n_queries, n_keys, _, _ = problem.shape
    batch, head = batch_head(np.arange(groups), problem.batch_shape)
    return (batch[:, None, None], head[:, None, None], np.arange(n_queries)[None, :, None],
            np.arange(n_keys)[None, None, :])


def attention_backward(query: ArrayLike, key: ArrayLike, value: ArrayLike, d_output: ArrayLike,
                       attn_mask: ArrayLike | None = None, dropout_p: float = 0.0,
                       is_causal: bool = False, scale: float | None = None,
                       enable_gqa: bool = False, *,
                       causal_alignment: CausalAlignment = "top_left",
                       empty_rows: EmptyRows = "zero", numerics: Numerics = "float",
                       dropout_mask: ArrayLike | None = None, seed: int | None = 0,
                       alibi_slopes: ArrayLike | None = None,
                       alibi_mode: AlibiMode = "symmetric",
                       rope: RotaryEmbedding | float | None = None,
                       return_weights: bool = False, graph: nx.DiGraph | RouteSet | None = None,
                       mask_mod: Callable | None = None, score_mod: Callable | None = None,
                       sinks: ArrayLike | None = None, position_ids: ArrayLike | None = None,
                       key_position_ids: ArrayLike | None = None,
                       window_size: Window | None = None,
                       cu_seqlens_q: ArrayLike | None = None,
                       cu_seqlens_k: ArrayLike | None = None, softcap: float | None = 0.0,
                       return_lse: bool = False, d_lse: ArrayLike | None = None
                       ) -> tuple[np.ndarray, ...]:
    r"""Gradients of :func:`attention` with respect to query, key and value (and the sinks),
    in matrix form: of the loss ``Σ dO ⊙ O`` (plus ``Σ d_lse ⊙ lse`` with ``d_lse``).

    With ``P = softmax(S)``, ``P' = P ⊙ keep / (1-p)`` and ``O = P' V``, given ``dO``:

    .. math:: dV = P'^\top dO,\quad dP = (dO\,V^\top) ⊙ keep / (1-p),\quad
              dS = P ⊙ (dP - \mathrm{rowsum}(P ⊙ dP)),\quad dQ = s\,dS\,K,\quad
              dK = s\,dS^\top Q

    then carried back through RoPE (each rotation's transpose, at the same positions), GQA
    head sharing and broadcasting to the inputs' shapes.

    ``d_lse`` (shape ``(..., L)``, the log-sum-exp's as :func:`attention` returns it with
    ``return_lse=True``) lets the loss read the lse too, as FlashAttention's backward
    takes a gradient for ``softmax_lse``. Since :math:`\partial\,\mathrm{lse}_i /
    \partial s_{ij} = P_{ij}` (the share before dropout, the sink in the denominator),
    it joins the Jacobian as one more term per row:

    .. math:: dS = P ⊙ (dP - \mathrm{rowsum}(P ⊙ dP) + d\mathrm{lse})

    then through the score_mod's (or softcap's) derivative and the scale like the rest;
    the value's gradient does not change. A row with no route has nothing to pass it to
    (its lse is ``-inf``), or with sinks passes all of it to its sink (its lse is the
    sink's logit). Leaving it out (None) is ``d_lse = 0``.

    Takes every argument of :func:`attention`. A query with no route gets zero gradients
    whatever ``empty_rows`` says (its output does not depend on the inputs);
    ``empty_rows="error"`` raises :class:`~routing_sim.EmptyRowError` as in the forward
    pass. The arithmetic is float: ``numerics="exact"`` is accepted (the gradients of an
    exact forward pass) and computed in float, as :meth:`Run.backward
    <routing_sim.Run.backward>` does. ``return_weights=True`` and ``return_lse=True`` are
    refused with an :class:`~routing_sim.InvalidArgumentError`: take the weights and the
    log-sum-exp from :func:`attention`. A
    ``score_mod`` multiplies ``dS`` by its derivative at the raw score, so it must carry one
    (:mod:`routing_sim.mods`); a plain function raises InvalidArgumentError. ``softcap``
    is ``score_mod=rs.mods.softcap(cap)`` (its derivative ``sech²(s / cap)``). A RouteSet
    ``graph`` or a ``mask_mod`` is computed sparsely (:mod:`routing_sim.reference.segments`).

    With ``sinks``, it returns ``(d_query, d_key, d_value, d_sinks)``, ``d_sinks`` of the
    sinks' shape. The sink is a score with no value, so its gradient is the Jacobian's
    term for it, summed over every row of its head (and the batch):

    .. math:: d\,\mathrm{sink}_h = \sum_{i} p_{\mathrm{sink},i}\,
              (d\mathrm{lse}_i - \mathrm{rowsum}(P ⊙ dP')_i)
              = \sum_i p_{\mathrm{sink},i}\,(d\mathrm{lse}_i - dO_i \cdot O_i)

    Raises
    ------
    ShapeError
        ``d_output`` not of the output's shape, or ``d_lse`` not of the lse's.
    InvalidArgumentError
        A non-finite ``d_output`` or ``d_lse``, ``return_weights`` or ``return_lse``,
        or a ``score_mod`` without a derivative.

    Examples
    --------
    >>> q = np.array([[1.0, 0.0]]); k = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> v = np.array([[1.0], [0.0]])
    >>> dq, dk, dv = attention_backward(q, k, v, np.ones((1, 1)), scale=1.0)
    >>> dv.round(3).tolist()
    [[0.731], [0.269]]
    >>> *_, d_sinks = attention_backward(q, k, v, np.ones((1, 1)), scale=1.0, sinks=[0.0])
    >>> d_sinks.round(3).tolist()                    # -p_sink · (dO · O)
    [-0.122]

    A loss that reads only the lse: its score gradient is the softmax itself, so
    ``dQ = scale · P K``, and the value gets none.

    >>> dq, dk, dv = attention_backward(q, k, v, np.zeros((1, 1)), scale=1.0, d_lse=[1.0])
    >>> dq.round(3).tolist(), dv.tolist()
    ([[0.731, 0.269]], [[0.0], [0.0]])
    """
    score_mod = flash_softcap(softcap, score_mod)
    problem = prepare(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                      causal_alignment=causal_alignment, empty_rows=empty_rows,
                      dropout_mask=dropout_mask, seed=seed, alibi_slopes=alibi_slopes,
                      alibi_mode=alibi_mode, rope=rope, graph=graph, mask_mod=mask_mod,
                      score_mod=score_mod, sinks=sinks, position_ids=position_ids,
                      key_position_ids=key_position_ids, window_size=window_size,
                      cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    check_choice("numerics", numerics, NUMERICS)
    for name, asked in (("return_weights", return_weights), ("return_lse", return_lse)):
        if asked is not False:
            raise InvalidArgumentError(f"attention_backward returns (d_query, d_key, d_value) "
                                       f"only; {name}={asked!r} belongs to attention()")
    slope = derivative(score_mod)
    upstream = problem.upstream(d_output)                           # (G, L, Ev)
    lse_upstream = problem.upstream_lse(d_lse)                         # (G·L,) or None
    if problem.sparse is not None:
        d_query, d_key, d_value, d_sinks = segment_backward(problem, upstream, lse_upstream)
        return _gradients(problem, d_query, d_key, d_value, d_sinks)
    weights, sink_shares, live, _ = _weights(problem)                  # (G, L, S)  P
    factor = 1.0 if problem.keep is None else problem.keep * problem.dtype.type(
        1.0 / (1.0 - problem.dropout_p))
    dropped = weights * factor                                         # (G, L, S)  P'
    d_value = dropped.transpose(0, 2, 1) @ upstream                    # (G, S, Ev)
    d_weights = (upstream @ problem.value.transpose(0, 2, 1)) * factor  # (G, L, S)  dP
    through = (weights * d_weights).sum(-1, keepdims=True)             # (G, L, 1) Σ P dP
    if lse_upstream is not None:                                       # dS = P (dP - Σ + dlse)
        through -= lse_upstream.reshape(through.shape)
    d_scores = weights * (d_weights - through)
    d_sinks = None if sink_shares is None else -(sink_shares * through[..., 0]).sum(-1)  # (G,)
    if slope is not None:                                              # through score_mod
        raw = problem.query @ problem.key.transpose(0, 2, 1) * problem.dtype.type(problem.scale)
        # A removed route (-inf) had no share: its gradient is 0, whatever the slope says.
        d_scores = np.where(live, d_scores * slope(raw, *_grid(problem)), 0)
    d_query = problem.scale * d_scores @ problem.key                   # (G, L, E)
    d_key = problem.scale * d_scores.transpose(0, 2, 1) @ problem.query  # (G, S, E)
    return _gradients(problem, d_query, d_key, d_value, d_sinks)


def _gradients(problem: Problem, d_query: np.ndarray, d_key: np.ndarray, d_value: np.ndarray,
               d_sinks: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """The gradients in the caller's shapes: ``(dQ, dK, dV)``, and ``d_sinks`` with sinks."""
    grads = (problem.to_inputs(d_query, "query"), problem.to_inputs(d_key, "key"),
             problem.to_inputs(d_value, "value"))
    return grads if d_sinks is None else (*grads, problem.to_sinks(d_sinks))
