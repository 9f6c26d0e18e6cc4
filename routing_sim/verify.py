"""How close must a simulation be to matrix attention? The derived float64 error bound.

Two correct implementations of ``softmax(Q Kᵀ · scale + B) V`` differ only by rounding.
With unit roundoff ``u`` (2⁻⁵³ for float64) and ``γ_n = n·u / (1 - n·u)``:

1. a score computed either way is off by at most
   ``e_ij = γ_E · |scale| · Σ_d |q_id k_jd| + 2u · (|s_ij| + |b_ij|)``
   (dot product, then the scale multiply and the bias add), so the two scores differ
   by at most ``Δ_i = 2 · max_j e_ij``;
2. shifting a row's scores by at most ``Δ_i`` moves each weight by a relative factor of
   at most ``exp(2Δ_i) - 1``; ``exp(s - m)``, the row sum and the division add a relative
   ``u·|s_ij - m_i| + γ_S + 3u`` per implementation;
3. the weighted pull adds ``γ_S`` relative to ``Σ_j w_ij |v_j|`` per implementation.

So ``|o_sim - o_ref| <= Σ_j w_ij |v_j| · (exp(2Δ_i) - 1 + 2·(u·|s_ij - m_i| + 2γ_S + 3u))``
(the ``|s - m|`` term taken inside the sum), and likewise for each weight. The project's
contract (docs/design.md, "How close is equal") is rtol = atol = 1e-12 while every score
stays within ±100; beyond that the bound above is what a correct simulation can promise,
and :func:`tolerance` returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .errors import InvalidArgumentError
from .inputs import Problem, prepare
from .network import Network
from .reference import attention
from .simulation import simulate
from .sparse import DENSE_LIMIT

__all__ = ["CONTRACT_SCORE_LIMIT", "Verdict", "tolerance", "verdict"]

CONTRACT_SCORE_LIMIT = 100.0
_CONTRACT = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


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
    the derived bound of the module docstring beyond.

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
    ``(G, L, S)`` arithmetic needs, up to :data:`~routing_sim.sparse.DENSE_LIMIT` entries."""
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


def _tolerance(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    q, k, v = (x.astype(np.float64) for x in (problem.query, problem.key, problem.value))
    dtype = problem.dtype
    unit = float(np.finfo(dtype).eps) / 2
    dim, n_keys = q.shape[-1], k.shape[-2]
    contract = _CONTRACT[dtype]
    allowed = problem.dense_allowed                                    # (G, L, S)
    scores = q @ k.transpose(0, 2, 1) * problem.scale                  # (G, L, S)
    bias = 0.0 if problem.bias is None else np.abs(problem.bias.astype(np.float64))
    magnitude = np.abs(q) @ np.abs(k).transpose(0, 2, 1) * abs(problem.scale)  # (G, L, S)
    score_error = _gamma(dim, unit) * magnitude + 2 * unit * (np.abs(scores) + bias)
    score_error = np.where(allowed, score_error, 0)
    spread = 2 * score_error.max(axis=-1, keepdims=True)               # (G, L, 1) Δ_i
    shifted = np.where(allowed, scores + (0 if problem.bias is None else problem.bias),
                       -np.inf)
    row_max = np.where(allowed.any(-1, keepdims=True),
                       shifted.max(-1, keepdims=True, initial=-np.inf), 0)
    distance = np.where(allowed, row_max - shifted, 0)         # (G, L, S) |s - m|
    weights = attention(q, k, v, scale=problem.scale,
                        attn_mask=np.where(allowed,
                                           0.0 if problem.bias is None else problem.bias,
                                           -np.inf),
                        return_weights=True)[1]
    if problem.keep is not None:
        weights = weights * problem.keep / (1.0 - problem.dropout_p)
    relative = np.expm1(2 * spread) + 2 * (unit * distance + 2 * _gamma(n_keys, unit)
                                           + 3 * unit)                 # (G, L, S)
    weight_bound = weights * relative
    output_bound = weight_bound @ np.abs(v)                            # (G, L, Ev)
    with np.errstate(invalid="ignore"):
        ref_output = weights @ v
    in_contract = (np.abs(np.where(allowed, shifted, 0)).max(initial=0.0)
                   <= CONTRACT_SCORE_LIMIT)
    output_tol = contract * (1 + np.abs(ref_output))
    weight_tol = contract * (1 + weights)
    if not in_contract:
        output_tol = np.maximum(output_tol, output_bound)
        weight_tol = np.maximum(weight_tol, weight_bound)
    return output_tol, weight_tol


def _gamma(n: int, unit: float) -> float:
    return n * unit / (1 - n * unit)


@dataclass(frozen=True)
class CaseResult:
    """One case of an equivalence sweep (see :func:`check_case`)."""

    seed: int
    description: str
    error_ratio: float        # max |sim - ref| / tolerance (<= 1 passes)
    bit_identical: bool       # two delivery schedules gave the same bits
    passed: bool


def random_case(seed: int) -> tuple[tuple, dict, str]:
    """A random configuration: ``(q, k, v), keyword arguments, description``."""
    rng = np.random.default_rng(seed)
    heads = int(rng.integers(1, 4))
    n_queries, n_keys = (int(x) for x in rng.integers(1, 9, size=2))
    dim, value_dim = (int(x) for x in rng.integers(1, 9, size=2))
    magnitude = float(rng.choice([0.5, 3.0, 30.0]))
    query = rng.normal(size=(heads, n_queries, dim)) * magnitude
    key = rng.normal(size=(heads, n_keys, dim)) * magnitude
    value = rng.normal(size=(heads, n_keys, value_dim))
    mask_kind = str(rng.choice(["none", "bool", "float", "causal", "bottom_right"]))
    options: dict = {}
    if mask_kind == "bool":
        options["attn_mask"] = rng.random((n_queries, n_keys)) < 0.7
    elif mask_kind == "float":
        bias = rng.normal(size=(n_queries, n_keys))
        bias[rng.random(bias.shape) < 0.2] = -np.inf
        options["attn_mask"] = bias
    elif mask_kind != "none":
        options["is_causal"] = True
        options["causal_alignment"] = "top_left" if mask_kind == "causal" else "bottom_right"
    network = Network(latency=float(rng.choice([0.0, 1.0])), jitter=float(rng.choice([0, 2.0])),
                      loss=float(rng.choice([0.0, 0.2])), duplicate=float(rng.choice([0, 0.2])),
                      retries=50, seed=seed)
    options["network"] = network
    description = (f"heads={heads} L={n_queries} S={n_keys} E={dim} Ev={value_dim} "
                   f"x{magnitude:g} mask={mask_kind} loss={network.loss} "
                   f"jitter={network.jitter}")
    return (query, key, value), options, description


def check_case(seed: int) -> CaseResult:
    """Simulate one random case twice (two schedules) and compare with matrix attention."""
    (query, key, value), options, description = random_case(seed)
    network = options.pop("network")
    run = simulate(query, key, value, network=network, **options)
    other = simulate(query, key, value, network=Network(latency=0.5, jitter=3.0,
                                                        seed=seed + 1), **options)
    output_tol, _ = tolerance(query, key, value, **options)
    expected = attention(query, key, value, **options)
    ratio = float(np.max(np.abs(run.output - expected) / output_tol, initial=0.0))
    same = bool(np.array_equal(run.output, other.output))
    return CaseResult(seed, description, ratio, same, ratio <= 1.0 and same)
