"""verify.tolerance with a score_mod: the contract and the bound see the modified scores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.errors import InvalidArgumentError
from routing_sim.inputs import mods


def inputs(seed: int, magnitude: float, shape=(2, 3, 6, 4)):
    rng = np.random.default_rng(seed)
    q, k = (rng.normal(size=shape) * magnitude for _ in range(2))
    return q, k, rng.normal(size=shape)


def test_in_the_contract_the_tolerance_follows_the_modified_routing_tables():
    q, k, v = inputs(0, 3.0)                       # |scores| ~ 10: a softcap(1) reshapes them
    mod = mods.softcap(1.0)
    output, weights = rs.attention(q, k, v, score_mod=mod, return_weights=True)
    output_tol, weight_tol = rs.verify.tolerance(q, k, v, score_mod=mod)
    np.testing.assert_array_equal(weight_tol, 1e-12 * (1 + weights))
    np.testing.assert_array_equal(output_tol, 1e-12 * (1 + np.abs(output)))


@pytest.mark.parametrize("mod", [mods.alibi([1e4, 2e4, 3e4]),
                                 mods.relative_bias([-1e5, 0.0, 1e5])])
def test_a_mod_that_pushes_scores_far_past_100_gets_the_derived_bound(mod):
    q, k, v = inputs(1, 0.5)                       # raw |scores| < 100, modified ones ~1e5
    weight_tol = rs.verify.tolerance(q, k, v, score_mod=mod)[1]
    weights = rs.attention(q, k, v, score_mod=mod, return_weights=True)[1]
    contract = 1e-12 * (1 + weights)
    # Rounding 1e5-sized scores moves a weight of ~1 by more than the contract's 1e-12.
    assert (weight_tol >= contract).all() and (weight_tol[weights > 0.5] > 2e-12).all()


def test_a_plain_score_mod_beyond_the_contract_is_refused():
    def double(score, b, h, q_idx, kv_idx):
        return 2.0 * score

    small, large = inputs(2, 0.5), inputs(2, 100.0)
    rs.verify.tolerance(*small, score_mod=double)                 # within ±100: the contract
    with pytest.raises(InvalidArgumentError, match="no error bound for score_mod"):
        rs.verify.tolerance(*large, score_mod=double)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), magnitude=st.sampled_from([0.3, 30.0, 3e3, 3e5]),
       which=st.sampled_from(["softcap", "alibi", "relative_bias"]))
def test_simulate_with_built_in_mods_stays_within_the_bound(seed, magnitude, which):
    q, k, v = inputs(seed, magnitude)
    mod = {"softcap": mods.softcap(magnitude), "alibi": mods.alibi([0.5, 1.0, 4.0]),
           "relative_bias": mods.relative_bias(np.linspace(-50, 50, 11))}[which]
    graph = rs.patterns.longformer(6, 2, 1)
    run = rs.simulate(q, k, v, graph=graph, score_mod=mod,
                      network=rs.Network(jitter=2.0, seed=seed))
    verdict = rs.verify.verdict(run.output, run.weights, q, k, v, graph=graph, score_mod=mod)
    assert verdict.within_tolerance, verdict
    # The bound is no blanket: an error of a millionth of the output is still caught. Not
    # so for alibi/relative_bias at |q·k| ~ 1e11: they pass that score's rounding (~1e-5)
    # on at slope 1, so no implementation can promise six digits there. A softcap flattens
    # such scores and, with them, their rounding.
    if which == "softcap" or magnitude <= 30:
        wrong = run.output + 1e-6 * (1 + np.abs(run.output))
        assert not rs.verify.verdict(wrong, run.weights, q, k, v, graph=graph,
                                     score_mod=mod).within_tolerance


def test_a_score_mod_that_removes_routes_gets_a_verdict():
    q, k, v = np.random.default_rng(0).normal(size=(3, 2, 5, 4))

    def causal(score, b, h, q_idx, kv_idx):                            # FlexAttention style
        return np.where(kv_idx > q_idx, -np.inf, score)

    run = rs.simulate(q, k, v, score_mod=causal)
    assert rs.verify.verdict(run.output, run.weights, q, k, v, score_mod=causal
                             ).within_tolerance
    wrong = run.output.copy()
    wrong[0, 3] += 1e-9
    assert not rs.verify.verdict(wrong, run.weights, q, k, v, score_mod=causal
                                 ).within_tolerance


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.5, 3.0, 30.0]))
def test_the_bound_alone_covers_float_against_exact_and_is_far_below_1e_9(seed, magnitude):
    q, k, v = inputs(seed, magnitude)
    output_bound, weight_bound = rs.verify.bound(q, k, v, is_causal=True)
    exact = rs.attention(q, k, v, is_causal=True, numerics="exact")
    float_ = rs.attention(q, k, v, is_causal=True)
    # An independent float64 implementation: plain numpy, another summation order.
    scores = np.einsum("...le,...se->...ls", q, k)[..., ::-1] / 2.0
    scores = np.where(np.tri(6, 6, dtype=bool)[:, ::-1], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    shares = weights / weights.sum(-1, keepdims=True)
    mine = np.einsum("...ls,...sv->...lv", shares, v[..., ::-1, :])
    for other in (float_, mine):
        assert (np.abs(other - exact) <= output_bound).all()
    magnitude_ = np.abs(rs.attention(q, k, v, is_causal=True, return_weights=True)[1]) @ np.abs(v)
    assert (output_bound < 1e-9 * magnitude_).all()
    assert weight_bound.shape == (2, 3, 6, 6)


def test_the_bound_has_no_contract_floor():
    q, k, v = inputs(1, 1.0)
    output_bound, _ = rs.verify.bound(q, k, v)
    output_tol, _ = rs.verify.tolerance(q, k, v)
    assert (output_bound < output_tol / 100).all()
