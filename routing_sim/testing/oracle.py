"""The oracle: what a correct kernel returns for a :class:`~routing_sim.testing.cases.Case`,
and how far from it a correct kernel in the case's dtype may land.

The case's definitions are written here, from their published sources, and handed to
:func:`~routing_sim.attention` as one routing problem per query head: every KV head
repeated for the query heads that read it (head ``h`` reads ``h // (Hq // Hkv)``), every
restriction (mask, causal diagonal, window, packed sequences) as allowed routes, every
additive term (float mask, ALiBi) as a bias.

**float64.** The reference is the float64 matrix form with the bound of
:func:`routing_sim.verify.bound` (two float64 implementations differ by at most that, so a
correct kernel is at most that far from the true result, a kernel that rounds its scale
into ``q`` and ``k`` included), and for the rows a decision needs the correctly rounded
result (``numerics="exact"``, which is within half a ULP of the true one). The tolerance
is that bound plus one ULP at the row's magnitude ``Σ_j w_ij |v_j|``: a few ULPs when the
row is well conditioned, more when its output cancels (``|o| << Σ w |v|``) or its scores
are large (a score's rounding grows with it). softcap has no correctly rounded result
(``tanh`` is not): its cases compare with the float64 reference under the same bound.

**float32, float16, bfloat16.** The same bound in the units of the dtype a kernel
accumulates in (float32 for all three: every kernel accumulates 16-bit inputs in
float32), plus, for a 16-bit kernel, the rounding of what it stores in its dtype: its
scores (``u·|s|`` each, which moves a share by ``exp(2Δ) - 1``), its shares and its outputs
(:class:`Rounding`). The reference stays the float64 one (its own bound is added). A bound,
not a measurement: a correct kernel never exceeds it, whatever the inputs, and a wrong
one is caught as soon as its error passes what rounding in its dtype can explain (for
bfloat16 and scores near 100 that is a lot: such a kernel cannot tell those scores apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..inputs.masks import checked_upstream
from ..inputs.mods import softcap
from ..reference.matrix import attention, attention_backward
from ..reference.verify import bound
from .cases import Case
from .precision import ulp, unit

__all__ = ["Expected", "Rounding", "Routes", "correctly_rounded", "describe_tolerance", "expect",
           "restrictions", "routes"]


@dataclass(frozen=True)
class Routes:
    """A case as one routing problem per query head (all ``(B, Hq, ...)``)."""

    query: np.ndarray           # (B, Hq, L, E)
    key: np.ndarray             # (B, Hq, S, E)
    value: np.ndarray           # (B, Hq, S, Ev)
    allowed: np.ndarray         # (B, Hq, L, S) bool
    bias: np.ndarray | None     # (B, Hq, L, S) the finite additive terms
    keep: np.ndarray | None     # (B, Hq, L, S) dropout's kept routes

    @property
    def mask(self) -> np.ndarray | None:
        """The float mask :func:`~routing_sim.attention` takes: bias, -inf off the routes."""
        if self.allowed.all() and self.bias is None:
            return None
        bias = 0.0 if self.bias is None else self.bias
        return np.where(self.allowed, bias, -np.inf)                    # (B, Hq, L, S)


def _positions(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, offset, same)`` broadcasting to ``(L, S)``: each query's and key's position
    in its sequence, the bottom-right offset ``S - L`` of its sequence, and whether the
    two are in one sequence (packed sequences: ``cu_seqlens``)."""
    n_queries, n_keys = case.query.shape[2], case.key.shape[2]
    rows, columns = np.arange(n_queries)[:, None], np.arange(n_keys)[None, :]
    if case.cu_seqlens is None:
        return rows, columns, np.array(n_keys - n_queries), np.ones((1, 1), bool)
    starts_q, starts_k = case.cu_seqlens
    sequence_q = np.searchsorted(starts_q, rows, side="right") - 1        # (L, 1)
    sequence_k = np.searchsorted(starts_k, columns, side="right") - 1     # (1, S)
    offset = np.diff(starts_k)[sequence_q] - np.diff(starts_q)[sequence_q]  # (L, 1)
    return (rows - starts_q[sequence_q], columns - starts_k[sequence_k], offset,
            sequence_q == sequence_k)


def restrictions(case: Case) -> dict[str, np.ndarray]:
    """Which routes each restriction allows, by name, broadcasting to ``(B, Hq, L, S)``."""
    i, j, offset, same = _positions(case)
    found: dict[str, np.ndarray] = {}
    if case.cu_seqlens is not None:
        found["another sequence"] = same
    if case.causal is not None:
        aligned = case.causal == "bottom_right" or case.cu_seqlens is not None
        found["causal"] = j <= i + (offset if aligned else 0)
    if case.window is not None:
        left, right = case.window
        window = np.ones(np.broadcast_shapes(i.shape, j.shape), bool)
        if left >= 0:
            window &= j >= i + offset - left
        if right >= 0:
            window &= j <= i + offset + right
        found["window"] = window
    if case.mask is not None:
        found["mask"] = case.mask if case.mask.dtype == bool else case.mask > -np.inf
    return found


def routes(case: Case) -> Routes:
    """The case as one routing problem per query head."""
    batch, heads, kv_heads, n_queries, n_keys, _, _ = case.shape
    shape = (batch, heads, n_queries, n_keys)
    allowed = np.ones(shape, bool)
    for allows in restrictions(case).values():
        allowed &= allows
    bias = None
    if case.mask is not None and case.mask.dtype != bool:
        bias = np.where(case.mask > -np.inf, case.mask, 0.0) + np.zeros(shape)
    if case.alibi is not None:
        i, j, offset, _ = _positions(case)
        slopes = case.alibi.reshape(-1 if case.alibi.ndim == 2 else 1, heads)
        alibi = -slopes[:, :, None, None] * np.abs(i + offset - j)           # (B, Hq, L, S)
        bias = alibi if bias is None else bias + alibi
    keep = None if case.dropout_mask is None else np.broadcast_to(case.dropout_mask, shape)
    shared = heads // kv_heads
    return Routes(case.query, np.repeat(case.key, shared, axis=1),
                  np.repeat(case.value, shared, axis=1), allowed, bias, keep)


def _arguments(case: Case, routes: Routes) -> dict:
    """The keyword arguments of :func:`~routing_sim.attention` for the case."""
    arguments: dict = {"attn_mask": routes.mask, "scale": case.effective_scale,
                       "sinks": case.sinks}
    if routes.keep is not None:
        arguments.update(dropout_mask=routes.keep, dropout_p=case.dropout_p)
    if case.softcap:
        arguments["score_mod"] = softcap(case.softcap)
    return arguments


@dataclass(frozen=True)
class Expected:
    """What a correct kernel returns for one case, and how far from it it may land.

    ``output`` is the float64 reference, within ``bound`` of the true result;
    ``tolerance`` is how far from the true result a correct kernel may be;
    ``magnitude`` (``Σ_j w_ij |v_jc|``) is where its ULPs are counted. The intermediate
    values (``scores`` with -inf off the routes, ``weights`` after dropout, each row's
    ``row_max`` and ``normaliser``) tell where a wrong answer first diverges.
    """

    output: np.ndarray                 # (B, Hq, L, Ev)
    bound: np.ndarray                  # (B, Hq, L, Ev)
    tolerance: np.ndarray              # (B, Hq, L, Ev)
    magnitude: np.ndarray              # (B, Hq, L, Ev)
    scores: np.ndarray                 # (B, Hq, L, S)
    weights: np.ndarray                # (B, Hq, L, S)
    row_max: np.ndarray                # (B, Hq, L)
    normaliser: np.ndarray             # (B, Hq, L) Σ exp(s - m), the sink's term included
    exact: bool                        # whether correctly rounded rows can be asked for
    lse: np.ndarray | None = None      # (B, Hq, L)
    lse_bound: np.ndarray | None = None
    lse_tolerance: np.ndarray | None = None
    gradients: tuple[np.ndarray, ...] | None = None       # dq, dk, dv
    gradient_tolerance: tuple[np.ndarray, ...] | None = None
    gradient_magnitude: tuple[np.ndarray, ...] | None = None


def expect(case: Case) -> Expected:
    """The oracle's answer for ``case``: the reference, its bound and the tolerance."""
    grouped = routes(case)
    arguments = _arguments(case, grouped)
    with checked_upstream():
        output, weights = attention(grouped.query, grouped.key, grouped.value,
                                    return_weights=True, **arguments)
        reference_bound, weight_bound = bound(grouped.query, grouped.key, grouped.value,
                                              **arguments)
    magnitude = weights @ np.abs(grouped.value)                        # (B, Hq, L, Ev)
    scores, row_max, normaliser = _softmax_parts(case, grouped)
    rounding = Rounding.of(case, scores)
    output_bound = reference_bound
    if rounding.accumulate != "float64":
        query, key, value = (x.astype(rounding.accumulate)
                             for x in (grouped.query, grouped.key, grouped.value))
        with checked_upstream():
            output_bound, weight_bound = bound(query, key, value, **arguments)
    stored = weights * rounding.weights                                # (B, Hq, L, S)
    weight_bound = weight_bound + stored
    output_bound = output_bound + stored @ np.abs(grouped.value) \
        + 2 * rounding.store * np.abs(output)
    lse, lse_bound = _oracle_lse(row_max, normaliser, weights, weight_bound)
    lse_dtype = "float64" if case.dtype == "float64" else "float32"
    # A share or a product stored below the smallest normal may be off by a subnormal ULP
    # whatever its relative bound says: one of each per key, times the values it meets.
    underflow = (case.key.shape[2] + 2) * ulp(np.zeros(()), case.dtype) * (
        1 + float(np.abs(case.value).max(initial=0.0)))
    # In float64 the bound of two implementations covers the reference as the second one;
    # below, the kernel's bound and the float64 reference's are added.
    reference_share = 0.0 if case.dtype == "float64" else reference_bound
    tolerance = output_bound + reference_share + ulp(magnitude, case.dtype) + underflow
    gradients = gradient_tolerance = gradient_magnitude = None
    if case.d_output is not None:
        gradients, gradient_tolerance, gradient_magnitude = _gradients(
            case, grouped, arguments, rounding)
    return Expected(output, reference_bound, tolerance, magnitude, scores, weights, row_max,
                    normaliser, case.dtype == "float64" and not case.softcap,
                    lse if case.lse else None, lse_bound, lse_bound + ulp(lse, lse_dtype),
                    gradients, gradient_tolerance, gradient_magnitude)


@dataclass(frozen=True)
class Rounding:
    """How a correct kernel in the case's dtype rounds, beyond its float64 or float32
    arithmetic: ``accumulate`` is the dtype its products and sums run in (float64 for
    float64, float32 otherwise, as every kernel accumulates float16 and bfloat16); a 16-bit
    kernel also stores its scores, shares and outputs in its dtype, each rounding once by
    at most ``store`` (its unit roundoff) relative. ``weights`` is what that does to each
    share ``(B, Hq, L, 1)``, for two implementations: scores off by ``Δ = 2 u |s|`` move a
    share by ``exp(2Δ) - 1``, storing it adds ``2u``."""

    accumulate: str
    store: float
    weights: np.ndarray | float

    @classmethod
    def of(cls, case: Case, scores: np.ndarray) -> Rounding:
        if case.dtype in ("float64", "float32"):
            return cls(case.dtype, 0.0, 0.0)
        store = unit(case.dtype)
        largest = np.where(np.isfinite(scores), np.abs(scores), 0).max(-1, keepdims=True,
                                                                        initial=0.0)
        return cls("float32", store, np.expm1(4 * store * largest) + 2 * store)


def _softmax_parts(case: Case, grouped: Routes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's intermediate values in float64: the scores ``(B, Hq, L, S)``
    (-inf off the routes), each row's max and its normaliser ``Σ exp(s - m)`` with the
    sink's term ``(B, Hq, L)``."""
    scale = case.effective_scale
    raw = grouped.query @ np.swapaxes(grouped.key, -1, -2) * scale       # (B, Hq, L, S)
    if case.softcap:
        raw = case.softcap * np.tanh(raw / case.softcap)
    scores = np.where(grouped.allowed, raw + (0 if grouped.bias is None else grouped.bias),
                      -np.inf)
    sink = None if case.sinks is None else case.sinks[None, :, None]    # (1, Hq, 1)
    row_max = scores.max(-1, initial=-np.inf)                            # (B, Hq, L)
    if sink is not None:
        row_max = np.maximum(row_max, sink)
    shift = np.where(np.isfinite(row_max), row_max, 0.0)[..., None]
    normaliser = np.exp(scores - shift).sum(-1)                          # (B, Hq, L)
    if sink is not None:
        normaliser = normaliser + np.exp(sink - shift[..., 0])
    return scores, row_max, normaliser


def _oracle_lse(row_max: np.ndarray, normaliser: np.ndarray, weights: np.ndarray,
                weight_bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's log-sum-exp ``m + log Σ exp(s - m)`` (-inf for a row with no route and
    no sink) and its error bound ``(B, Hq, L)``.

    Float64, by the stable formula; its error against the true value is at most the
    row's largest relative weight bound (:func:`routing_sim.verify.bound`: the scores'
    error and the rounding of ``exp`` and of the sum, through ``w_j = exp(s_j - lse)``)
    plus the rounding of the log and of the final sum, ``2u(|m| + |log l|)``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        log_normaliser = np.log(normaliser)
        lse = np.where(normaliser > 0, row_max + log_normaliser, -np.inf)
        relative = np.where(weights > 0, weight_bound / weights, 0.0).max(-1, initial=0.0)
    finite = np.isfinite(lse)
    rounding = 2 * unit("float64") * (np.abs(np.where(finite, row_max, 0))
                                       + np.abs(np.where(finite, log_normaliser, 0)))
    return lse, relative + rounding


def correctly_rounded(case: Case, rows: np.ndarray) -> np.ndarray:
    """The correctly rounded outputs ``(N, Ev)`` of the rows ``(N, 3)`` (batch, head,
    query) of a float64 case without softcap: ``numerics="exact"``, one row each."""
    grouped = routes(case)
    b, h, i = rows.T
    mask = grouped.mask
    arguments: dict = {"attn_mask": None if mask is None else mask[b, h, i][:, None],
                       "scale": case.effective_scale,
                       "sinks": None if case.sinks is None else case.sinks[h]}
    if grouped.keep is not None:
        arguments.update(dropout_mask=grouped.keep[b, h, i][:, None],
                         dropout_p=case.dropout_p)
    with checked_upstream():
        output = attention(grouped.query[b, h, i][:, None], grouped.key[b, h],
                           grouped.value[b, h], numerics="exact", **arguments)
    assert isinstance(output, np.ndarray)                              # no weights asked
    return output[:, 0]                                                 # (N, Ev)


def _gradients(case: Case, grouped: Routes, arguments: dict, rounding: Rounding
               ) -> tuple[tuple[np.ndarray, ...], ...]:
    """The float64 gradients ``(dq, dk, dv)`` (and ``d_sinks`` with sinks) in the case's
    shapes, the tolerance of each (two implementations), and the magnitude its ULPs are
    counted at.

    The bound follows each product of the backward pass through its absolute values, with
    ``u`` and ``γ_n = n·u / (1 - n·u)`` of the accumulating dtype (``εP`` the weights'
    bound, ``P'`` the weights after dropout, ``f`` dropout's factor)::

        dV = P'ᵀ dO          εdV = (εP' + γ_L P')ᵀ |dO|
        dP = dO Vᵀ f         εdP = γ_Ev |dO| |V|ᵀ f
        D  = Σ_j P dP        εD  = Σ_j (εP |dP| + P εdP) + γ_S Σ_j P |dP|
        dS = P (dP - D)      εdS = εP |dP - D| + P (εdP + εD) + 2u P |dP - D|
        dQ = s dS K          εdQ = |s| (εdS |K| + γ_{S+1} |dS| |K|)
        dK = s dSᵀ Q         εdK = |s| (εdSᵀ |Q| + γ_{L+1} |dS|ᵀ |Q|)

    then summed over the query heads that share a KV head (``γ_r`` more); twice each, for
    the kernel and the reference. A 16-bit kernel also stores ``dP``, ``dS`` and the
    gradients in its dtype: ``u_store`` relative on each.

    **softcap** ``f(t) = c·tanh(t / c)`` passes ``dS`` back to the scaled score ``t`` times
    its slope ``f'(t) = sech²(t / c)`` (then ``dQ`` and ``dK`` take ``f' ⊙ dS`` for ``dS``)::

        εt  = γ_E |s| |q|·|k| + (3u + u_store) |t|      (dot product, scale, division by c)
        εf' = 4 / (3√3 c) · εt + 14u                    (|f''| <= 4 / (3√3 c); tanh is
                                                         within 4u, then 1 - tanh², the
                                                         products: an absolute 14u)
        ε(f' dS) = f' εdS + (εf' + u f') |dS|

    **sinks**: ``d sink_h = -Σ_{b,i} p_i D_i`` with ``p_i = exp(sink_h - m_i) / l_i`` the
    sink's share of row ``i``. The sink's logit has no rounding of its own, so ``p_i`` is
    off by at most what every share of its row is, less the share's own score error:
    ``εp_i / p_i <= min_j εP_ij / P_ij + 2u |sink_h - m_i| + 8u`` (its ``exp`` argument
    and one more term in the sum), and ``ε d sink_h = Σ_{b,i} (εp_i Σ_j P |dP| + p_i εD_i)
    + γ_{BL+1} Σ_{b,i} p_i Σ_j P |dP|``.
    """
    d_output = case.d_output
    assert d_output is not None
    with checked_upstream():
        d_query, d_key, d_value, *d_sinks = attention_backward(
            grouped.query, grouped.key, grouped.value, d_output, **arguments)
    u, store = unit(rounding.accumulate), rounding.store

    def gamma(n: int) -> float:
        return n * u / (1 - n * u)

    scale = abs(case.effective_scale)
    n_queries, n_keys, value_dim = case.query.shape[2], case.key.shape[2], case.value.shape[3]
    factor = 1.0 if grouped.keep is None else grouped.keep / (1.0 - case.dropout_p)
    # P and its bound before dropout: a dropped route pulls nothing but still has dS.
    undropped = {name: value for name, value in arguments.items()
                 if name not in ("dropout_mask", "dropout_p")}
    query, key, value = (x.astype(rounding.accumulate)
                         for x in (grouped.query, grouped.key, grouped.value))
    with checked_upstream():
        before = attention(grouped.query, grouped.key, grouped.value, return_weights=True,
                           **undropped)[1]                              # (B, Hq, L, S) P
        bound_before = bound(query, key, value, **undropped)[1] + before * rounding.weights
    weights, weight_bound = before * factor, bound_before * factor     # P', εP'
    swap = np.swapaxes
    abs_out, abs_value = np.abs(d_output), np.abs(grouped.value)
    d_weights = d_output @ swap(grouped.value, -1, -2) * factor         # (B, Hq, L, S) dP
    error_dp = (gamma(value_dim) * (abs_out @ swap(abs_value, -1, -2)) * factor
                + store * np.abs(d_weights))
    through = (before * d_weights).sum(-1, keepdims=True)               # (B, Hq, L, 1) D
    error_through = ((bound_before * np.abs(d_weights) + before * error_dp
                      + gamma(n_keys) * before * np.abs(d_weights)).sum(-1, keepdims=True))
    centred = np.abs(d_weights - through)
    error_ds = (bound_before * centred + before * (error_dp + error_through)
                + (2 * u + store) * before * centred)
    # dS's magnitude without the cancellation in dP - D: what its errors scale with.
    abs_ds = before * (np.abs(d_weights) + np.abs(through))             # (B, Hq, L, S)
    if case.softcap:
        slope, slope_error = _softcap_slope(case, grouped, u, store)    # (B, Hq, L, S)
        error_ds = slope * error_ds + (slope_error + u * slope) * abs_ds
        abs_ds = (slope + slope_error) * abs_ds
    magnitudes: tuple[np.ndarray, ...] = (
        scale * abs_ds @ np.abs(grouped.key),                            # (B, Hq, L, E)
        scale * swap(abs_ds, -1, -2) @ np.abs(grouped.query),            # (B, Hq, S, E)
        swap(weights, -1, -2) @ abs_out)                                # (B, Hq, S, Ev)
    errors: tuple[np.ndarray, ...] = (
        scale * (error_ds @ np.abs(grouped.key)) + gamma(n_keys + 1) * magnitudes[0],
        scale * (swap(error_ds, -1, -2) @ np.abs(grouped.query))
        + gamma(n_queries + 1) * magnitudes[1],
        swap(weight_bound + gamma(n_queries) * weights, -1, -2) @ abs_out)
    shared = case.shape[1] // case.shape[2]

    def folded(per_query_head: np.ndarray) -> np.ndarray:
        """Sum a ``(B, Hq, ...)`` array over the query heads of each KV head."""
        batch, heads, *rest = per_query_head.shape
        return per_query_head.reshape(batch, heads // shared, shared, *rest).sum(2)

    gradients: tuple[np.ndarray, ...] = (d_query, folded(d_key), folded(d_value))
    magnitudes = (magnitudes[0], folded(magnitudes[1]), folded(magnitudes[2]))
    errors = (errors[0], folded(errors[1]), folded(errors[2]))
    # A value stored below the smallest normal carries up to a subnormal ULP absolute,
    # which each later product multiplies by what it meets.
    largest = [float(np.abs(x).max(initial=0.0)) for x in (d_output, grouped.value)]
    reach = (1 + largest[0]) * (1 + largest[1]) * (1 + scale * max(
        float(np.abs(grouped.query).max(initial=0.0)), float(np.abs(grouped.key).max(initial=0.0))))
    underflow = (n_keys + n_queries + 2) * reach * ulp(np.zeros(()), case.dtype)
    if d_sinks:
        gradients += (d_sinks[0],)
        rows = (before * np.abs(d_weights)).sum(-1)                      # (B, Hq, L) ≥ |D|
        sink_share, sink_error = _sink_share(case, grouped, before, bound_before, u)
        batch = case.shape[0]
        magnitudes += ((sink_share * rows).sum((0, 2)),)                 # (Hq,)
        errors += ((sink_error * rows + sink_share * error_through[..., 0]).sum((0, 2))
                   + gamma(batch * n_queries + 1) * magnitudes[3],)
    tolerances = tuple(2 * (error + (gamma(shared) + store) * size) + ulp(size, case.dtype)
                       + underflow for error, size in zip(errors, magnitudes))
    return gradients, tolerances, magnitudes


def _softcap_slope(case: Case, grouped: Routes, u: float, store: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """softcap's slope ``sech²(t / c)`` at each scaled score ``t`` and how far a kernel's
    may be from it ``(B, Hq, L, S)`` (:func:`_gradients`)."""
    cap, scale = case.softcap, abs(case.effective_scale)
    raw = grouped.query @ np.swapaxes(grouped.key, -1, -2) * case.effective_scale  # t
    dim = case.query.shape[3]
    raw_error = (dim * u / (1 - dim * u) * scale
                 * (np.abs(grouped.query) @ np.swapaxes(np.abs(grouped.key), -1, -2))
                 + (3 * u + store) * np.abs(raw))
    with np.errstate(over="ignore"):         # sech² of a score the cap flattens: 0
        slope = 1 / np.cosh(raw / cap) ** 2
    return slope, 4 / (3 * np.sqrt(3) * cap) * raw_error + 14 * u


def _sink_share(case: Case, grouped: Routes, weights: np.ndarray, weight_bound: np.ndarray,
                u: float) -> tuple[np.ndarray, np.ndarray]:
    """Each row's sink share ``p_i`` and its error bound ``(B, Hq, L)`` (:func:`_gradients`;
    ``weights`` and ``weight_bound`` before dropout)."""
    assert case.sinks is not None
    _, row_max, normaliser = _softmax_parts(case, grouped)
    sinks = case.sinks[None, :, None]                                    # (1, Hq, 1)
    share = np.exp(sinks - row_max) / normaliser                         # (B, Hq, L)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(weights > 0, weight_bound / weights, np.inf).min(-1)
    relative = np.where(np.isfinite(relative), relative, 0.0)    # no route: p = 1 exactly
    return share, share * (relative + 2 * u * np.abs(sinks - row_max) + 8 * u)


def describe_tolerance(dtype: str) -> str:
    """One sentence: how the tolerance of ``dtype`` is made (for the report)."""
    if dtype == "float64":
        return ("the bound derived for two float64 implementations (rs.verify.bound) + 1 ULP "
                "at each output's magnitude sum_j w_ij |v_j|")
    if dtype == "float32":
        return ("the bound derived for two float32 implementations (rs.verify.bound in "
                "float32) + 1 ULP of float32 at each output's magnitude")
    return (f"the bound derived for two implementations accumulating in float32 and storing "
            f"scores, shares and outputs in {dtype} + 1 ULP of {dtype} at each output's "
            "magnitude")

