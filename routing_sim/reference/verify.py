"""How close must a simulation be to matrix attention? The derived float64 error bound.

Two correct implementations of ``softmax(f(Q Kᵀ · scale) + B) V`` (``f`` the optional
``score_mod``) differ only by rounding. With unit roundoff ``u`` (2⁻⁵³ for float64) and
``γ_n = n·u / (1 - n·u)``, write ``t_ij = q_i · k_j · scale`` and ``s_ij = f(t_ij) + b_ij``:

1. a score computed either way is off by at most
   ``e_ij = γ_E · |scale| · Σ_d |q_id k_jd| + 2u · (|t_ij| + |b_ij|)``
   (dot product, then the scale multiply and the bias add). With a score mod, the error of
   ``t_ij`` passes through ``f`` times at most its slope bound ``L_f``, evaluating ``f``
   adds at most ``ε_f``, then the bias add:
   ``e_ij = L_f · (γ_E · |scale| · Σ_d |q_id k_jd| + 2u·|t_ij|) + ε_f + 2u · (|f(t_ij)| + |b_ij|)``
   (for softcap, ``L_f`` multiplies the division's rounding too, below).
   The two scores differ by at most ``Δ_i = 2 · max_j e_ij``;
2. shifting a row's scores by at most ``Δ_i`` moves each weight by a relative factor of
   at most ``exp(2Δ_i) - 1``; ``exp(s - m)``, the row sum and the division add a relative
   ``u·|s_ij - m_i| + γ_S + 3u`` per implementation (a sink logit has no error of its
   own: it only joins the max ``m_i`` and the sum);
3. the weighted pull adds ``γ_S`` relative to ``Σ_j w_ij |v_j|`` per implementation.

So ``|o_sim - o_ref| <= Σ_j w_ij |v_j| · (exp(2Δ_i) - 1 + 2·(u·|s_ij - m_i| + 2γ_S + 3u))``
(the ``|s - m|`` term taken inside the sum), and likewise for each weight.

``L_f`` and ``ε_f`` of the built-in mods (:mod:`routing_sim.mods`): every one has
``L_f <= 1``. ``alibi`` and ``relative_bias`` add a term both implementations compute
identically (the same float product ``slope · |i - j|``, the same table entry), so
``L_f = 1`` and ``ε_f = u·|f(t)|``, the one addition. ``softcap``'s ``cap · tanh(t / cap)``
has slope ``sech²(t / cap)``, which falls with ``|t|``: an input within ``r = e + u·|t|`` of
``t`` (its error, then the division's rounding) reaches the result times at most
``L_f = sech²(max(|t| - r, 0) / cap)`` (so a huge score that the cap flattens carries
almost none of its rounding through); ``tanh`` is within 2 ulp (``4u`` relative: numpy's
accuracy tests hold ``np.tanh`` to 2 ulp, and 60,000 samples against mpmath here stayed
under 1.14 ulp) and the multiply adds ``u``: ``ε_f = 5u·|f(t)|`` beside ``L_f · r``.
(As elsewhere in this bound, products of two rounding errors are left out.) Any other
score mod has no known ``L_f`` or ``ε_f``: :func:`tolerance` refuses it beyond the contract.

The project's contract (docs/design.md, "How close is equal") is rtol = atol = 1e-12 while
every score stays within ±100: both the scaled ``t_ij`` and the ``s_ij`` the softmax sees
(a softcap or a bias may bring a huge ``t`` back into range, but the rounding of ``t`` is
what step 1 carries). Beyond that the bound above is what a correct simulation can promise,
and :func:`tolerance` returns it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InvalidArgumentError
from ..inputs.masks import checked_upstream
from ..inputs.mods import alibi, modified, relative_bias, softcap
from ..routes.problem import Problem, prepare
from ..routes.restrictions import DENSE_LIMIT
from ..routes.route_set import batch_head
from .matrix import attention

__all__ = ["CONTRACT_SCORE_LIMIT", "Verdict", "bound", "tolerance", "verdict"]

CONTRACT_SCORE_LIMIT = 100.0
_CONTRACT = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
_BOUNDED_MODS = (softcap, alibi, relative_bias)   # score mods whose L_f and ε_f are derived


@dataclass(frozen=True)
class Verdict:
    """Outcome of comparing a simulation with matrix attention."""

    max_abs_error: float
    max_weight_error: float
    within_tolerance: bool
    bit_identical: bool

    def line(self) -> str:
        """A one-line verdict without machine-dependent digits (for golden outputs)."""
        if self.within_tolerance:
            return "verdict: EQUAL to matrix attention (within the float tolerance)"
        return (f"verdict: MISMATCH with matrix attention (max abs difference "
                f"{self.max_abs_error:.3g})")

    def __str__(self) -> str:
        if self.bit_identical:
            return "EQUAL: bit-identical to matrix attention (max abs difference 0.0)"
        word = "EQUAL" if self.within_tolerance else "MISMATCH"
        return (f"{word}: max abs difference {self.max_abs_error:.3g} in outputs, "
                f"{self.max_weight_error:.3g} in weights "
                f"({'within' if self.within_tolerance else 'outside'} the float tolerance)")


def tolerance(query: ArrayLike, key: ArrayLike, value: ArrayLike,
              attn_mask: ArrayLike | None = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
              **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Allowed absolute difference from matrix attention, per output and per weight.

    Takes the arguments of :func:`~routing_sim.attention`. Returns arrays shaped like the
    output ``(..., L, Ev)`` and the weights ``(..., L, S)``: ``rtol·|ref| + atol`` with
    rtol = atol = 1e-12 (1e-5 for float32) while every score is within ±100, and at least
    the derived bound of the module docstring beyond. A ``score_mod`` counts in both: the
    scores are checked before and after it, and the bound carries its slope and rounding;
    beyond ±100 only the built-in mods (softcap, alibi, relative_bias) have a derived bound,
    any other is refused with an :class:`~routing_sim.errors.InvalidArgumentError`.

    Examples
    --------
    >>> import numpy as np
    >>> q = np.ones((1, 4)); k = np.ones((2, 4)); v = np.ones((2, 3))
    >>> out_tol, weight_tol = tolerance(q, k, v)
    >>> out_tol.shape, float(out_tol.max())
    ((1, 3), 2e-12)
    """
    problem = _dense(prepare(query, key, value, attn_mask, dropout_p, is_causal, scale,
                             enable_gqa, **options))
    output_tol, weight_tol = _tolerance(problem)
    return problem.unflatten(output_tol), problem.unflatten(weight_tol)


def verdict(output: np.ndarray, weights: np.ndarray | None, query: ArrayLike, key: ArrayLike,
            value: ArrayLike, **arguments: Any) -> Verdict:
    """Compare a simulated output and weights with :func:`~routing_sim.attention`.

    ``arguments`` are the attention arguments the simulation used. ``weights=None``
    compares the output only (protocols that never form the whole routing table, such
    as context parallelism).
    """
    ref_output, ref_weights = attention(query, key, value, return_weights=True, **arguments)
    output_tol, weight_tol = tolerance(query, key, value, **arguments)
    output_error = np.abs(np.asarray(output, np.float64) - ref_output)
    weight_error = (np.zeros(()) if weights is None
                    else np.abs(np.asarray(weights, np.float64) - ref_weights))
    empty = np.isnan(ref_output)
    same_nans = np.array_equal(np.isnan(output), empty)
    return Verdict(
        max_abs_error=float(np.nanmax(output_error, initial=0.0)),
        max_weight_error=float(np.nanmax(weight_error, initial=0.0)),
        within_tolerance=bool(same_nans and (output_error[~empty] <= output_tol[~empty]).all()
                              and (np.nan_to_num(weight_error) <= weight_tol).all()),
        bit_identical=bool(np.array_equal(output, ref_output, equal_nan=True)),
    )


def _dense(problem: Problem) -> Problem:
    """A sparse problem (RouteSet ``graph``, ``mask_mod``) in the dense form the bound's
    ``(G, L, S)`` arithmetic needs, up to
    :data:`~routing_sim.routes.restrictions.DENSE_LIMIT` entries."""
    if problem.sparse is None:
        return problem
    groups, n_queries, n_keys, _, _ = problem.shape
    if groups * n_queries * n_keys > DENSE_LIMIT:
        raise InvalidArgumentError(f"the tolerance is computed on dense (G, L, S) = "
                                   f"{(groups, n_queries, n_keys)} arrays, over {DENSE_LIMIT:,} "
                                   "entries; check sampled rows of a long run instead")
    routes, sparse = problem.sparse.routes, problem.sparse
    nodes, keys = routes.query_node, routes.indices                    # (R,), (R,)

    def spread(per_route: np.ndarray | None, fill) -> np.ndarray | None:
        if per_route is None:
            return None
        dense = np.full((groups * n_queries, n_keys), fill, dtype=per_route.dtype)
        dense[nodes, keys] = per_route
        return dense.reshape(groups, n_queries, n_keys)

    return replace(problem, allowed=spread(np.ones(len(routes), bool), False),
                   bias=spread(sparse.bias, 0), keep=spread(sparse.keep, False), sparse=None)


def bound(query: ArrayLike, key: ArrayLike, value: ArrayLike,
          attn_mask: ArrayLike | None = None, dropout_p: float = 0.0, is_causal: bool = False,
          scale: float | None = None, enable_gqa: bool = False,
          **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """The derived bound of the module docstring alone, per output and per weight.

    Takes the arguments of :func:`~routing_sim.attention`. Unlike :func:`tolerance` it has
    no floor from the project's contract: it is what two correct implementations in the
    inputs' dtype may differ by, however small the scores, so it can tell a last-bit
    difference from an error of 1e-9 relative (:mod:`routing_sim.testing` builds on it).
    A ``score_mod`` other than the built-in ones has no bound and is refused.

    Examples
    --------
    >>> import numpy as np
    >>> q = np.ones((1, 4)); k = np.ones((2, 4)); v = np.ones((2, 3))
    >>> output_bound, weight_bound = bound(q, k, v)
    >>> bool(output_bound.max() < 1e-14), weight_bound.shape
    (True, (1, 2))
    """
    problem = _dense(prepare(query, key, value, attn_mask, dropout_p, is_causal, scale,
                             enable_gqa, **options))
    _check_mod(problem, None)
    reference = _Reference.of(problem)
    weight_bound = reference.weights * _relative_bound(problem, reference)
    return (problem.unflatten(weight_bound @ np.abs(reference.value)),    # (G, L, Ev)
            problem.unflatten(weight_bound))


@dataclass(frozen=True)
class _Reference:
    """The float64 quantities the bound is computed from, for one dense problem."""

    query: np.ndarray        # (G, L, E)
    key: np.ndarray          # (G, S, E)
    value: np.ndarray        # (G, S, Ev)
    raw: np.ndarray          # (G, L, S) t = q·k·scale
    modded: np.ndarray       # (G, L, S) f(t)
    scores: np.ndarray       # (G, L, S) s = f(t) + b, -inf off the routes
    weights: np.ndarray      # (G, L, S) after dropout

    @classmethod
    def of(cls, problem: Problem) -> _Reference:
        q, k, v = (x.astype(np.float64) for x in (problem.query, problem.key, problem.value))
        allowed = problem.dense_allowed                                # (G, L, S)
        raw = q @ k.transpose(0, 2, 1) * problem.scale                 # (G, L, S) t
        modded = raw if problem.score_mod is None else _modded(problem, raw)  # (G, L, S)
        scores = np.where(allowed, modded + (0 if problem.bias is None else problem.bias),
                          -np.inf)                                     # (G, L, S) s
        # Zero scale: the mask is the whole score, so these are the reference's tables of s
        # (the groups are the heads here: one sink logit each; scores, not a mask a user
        # wrote: no MaskWarning however they come out).
        with checked_upstream():
            weights = attention(q, k, v, scale=0.0, attn_mask=scores, return_weights=True,
                                sinks=problem.sinks)[1]
        if problem.keep is not None:
            weights = weights * problem.keep / (1.0 - problem.dropout_p)
        return cls(q, k, v, raw, modded, scores, weights)

    def largest(self, problem: Problem) -> float:
        """The largest score magnitude: scaled ``t``, modded ``s``, or a sink logit."""
        allowed = problem.dense_allowed
        live = allowed & ~np.isneginf(self.scores)     # -inf: the score_mod removed it
        return max(np.abs(np.where(live, self.scores, 0)).max(initial=0.0),
                   np.abs(np.where(allowed, self.raw, 0)).max(initial=0.0),
                   0.0 if problem.sinks is None else float(np.abs(problem.sinks).max()))


def _check_mod(problem: Problem, largest: float | None) -> None:
    """Refuse a score mod the bound knows nothing of (beyond the contract, when
    ``largest`` is given)."""
    if problem.score_mod is None or type(problem.score_mod) in _BOUNDED_MODS:
        return
    where = "" if largest is None else \
        f" with scores beyond ±{CONTRACT_SCORE_LIMIT:g} (largest {largest:.3g})"
    raise InvalidArgumentError(
        f"no error bound for score_mod {problem.score_mod!r}{where}: the bound knows the "
        "rounding of rs.mods.softcap, alibi and relative_bias only; scale the inputs "
        "into the contract or use a built-in mod")


def _tolerance(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    contract = _CONTRACT[problem.dtype]
    reference = _Reference.of(problem)
    with np.errstate(invalid="ignore"):
        ref_output = reference.weights @ reference.value               # (G, L, Ev)
    output_tol = contract * (1 + np.abs(ref_output))
    weight_tol = contract * (1 + reference.weights)
    largest = reference.largest(problem)
    if largest <= CONTRACT_SCORE_LIMIT:
        return output_tol, weight_tol
    _check_mod(problem, largest)
    weight_bound = reference.weights * _relative_bound(problem, reference)
    return (np.maximum(output_tol, weight_bound @ np.abs(reference.value)),  # (G, L, Ev)
            np.maximum(weight_tol, weight_bound))


def _relative_bound(problem: Problem, reference: _Reference) -> np.ndarray:
    """Steps 1-2 of the module docstring: each weight's relative error bound ``(G, L, S)``."""
    q, k, raw, modded, scores = (reference.query, reference.key, reference.raw,
                                 reference.modded, reference.scores)
    unit = float(np.finfo(problem.dtype).eps) / 2
    dim, n_keys = q.shape[-1], k.shape[-2]
    allowed = problem.dense_allowed                                    # (G, L, S)
    bias = 0.0 if problem.bias is None else np.abs(problem.bias.astype(np.float64))
    magnitude = np.abs(q) @ np.abs(k).transpose(0, 2, 1) * abs(problem.scale)  # (G, L, S)
    if problem.score_mod is None:
        score_error = _gamma(dim, unit) * magnitude + 2 * unit * (np.abs(raw) + bias)
    else:
        raw_error = _gamma(dim, unit) * magnitude + 2 * unit * np.abs(raw)  # (G, L, S)
        score_error = (_mod_error(problem.score_mod, raw, modded, raw_error, unit)
                       + 2 * unit * (np.abs(modded) + bias))
    score_error = np.where(allowed, score_error, 0)
    spread = 2 * score_error.max(axis=-1, keepdims=True)               # (G, L, 1) Δ_i
    row_max = np.where(allowed.any(-1, keepdims=True),
                       scores.max(-1, keepdims=True, initial=-np.inf), 0)
    if problem.sinks is not None:             # a sink above the scores is the row's max
        row_max = np.maximum(row_max, problem.sinks[:, None, None])
    distance = np.where(allowed, row_max - scores, 0)          # (G, L, S) |s - m|
    return np.expm1(2 * spread) + 2 * (unit * distance + 2 * _gamma(n_keys, unit) + 3 * unit)


def _modded(problem: Problem, raw: np.ndarray) -> np.ndarray:
    """``score_mod`` on the scaled scores ``(G, L, S)``, with FlexAttention's indices."""
    assert problem.score_mod is not None                               # asked only then
    groups, n_queries, n_keys = raw.shape
    batch, head = batch_head(np.arange(groups), problem.batch_shape)
    with np.errstate(over="ignore", invalid="ignore"):
        return modified(problem.score_mod, raw, batch[:, None, None], head[:, None, None],
                        np.arange(n_queries)[None, :, None], np.arange(n_keys)[None, None, :])


def _mod_error(score_mod: Callable, raw: np.ndarray, modded: np.ndarray,
               raw_error: np.ndarray, unit: float) -> np.ndarray:
    """``L_f · e + ε_f`` of a built-in score mod for scaled scores ``raw`` off by at most
    ``raw_error`` (all ``(G, L, S)``; see the module docstring)."""
    if type(score_mod) is softcap:
        reach = raw_error + unit * np.abs(raw)        # t's error, then the division's
        zero = np.zeros(())
        slope = score_mod.grad(np.maximum(np.abs(raw) - reach, 0), zero, zero, zero, zero)
        return slope * reach + 5 * unit * np.abs(modded)
    return raw_error + unit * np.abs(modded)         # alibi, relative_bias: one addition


def _gamma(n: int, unit: float) -> float:
    return n * unit / (1 - n * unit)
