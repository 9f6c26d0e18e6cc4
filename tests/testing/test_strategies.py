"""The hypothesis strategies: cases that use the chosen features (and the required one),
which a correct kernel passes and routing_sim's own attention passes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

import routing_sim as rs
from routing_sim.testing import strategies
from routing_sim.testing.cases import OUTPUTS
from tests.testing import kernels

CHOSEN = ("mask", "gqa", "window", "alibi", "sinks", "dropout_mask", "lse")


@settings(max_examples=40, deadline=None)
@given(strategies.cases(features=CHOSEN, require="window"))
def test_cases_use_the_chosen_features_and_the_required_one(case):
    assert "window" in case.features("sdpa")
    assert case.features("sdpa") - OUTPUTS <= {*CHOSEN, "padded"}
    assert case.lse
    q, k, v, kwargs = strategies.arguments(case)
    rs.testing.assert_attention_close(kernels.sdpa(q, k, v, **kwargs), q, k, v, **kwargs)


@settings(max_examples=30, deadline=None)
@given(strategies.cases(features=["causal", "varlen", "softcap"], layout="flash"))
def test_flash_cases_pass_the_correct_flash_kernel(case):
    q, k, v, kwargs = strategies.arguments(case, "flash")
    rs.testing.assert_attention_close(kernels.flash(q, k, v, **kwargs), q, k, v,
                                      layout="flash", **kwargs)


@settings(max_examples=30, deadline=None)
@given(strategies.cases(features=["causal", "gqa", "mask", "sinks"]))
def test_routing_sims_own_attention_passes(case):
    q, k, v, kwargs = strategies.arguments(case)
    out = rs.attention(q, k, v, **kwargs)
    rs.testing.assert_attention_close(out, q, k, v, **kwargs)


def test_a_required_feature_must_be_chosen():
    with pytest.raises(ValueError, match="require='window'"):
        strategies.cases(features=["causal"], require="window")


def test_cases_shrink_to_small_ones():
    from hypothesis import find

    case = find(strategies.cases(features=["causal"]), lambda c: c.shape[4] >= 3,
                settings=settings(database=None))
    batch, heads, _, n_queries, n_keys, *_ = case.shape
    assert (batch, n_queries, n_keys) == (1, 1, 3) and heads <= 2


@settings(max_examples=25, deadline=None)
@given(strategies.cases(features=["causal", "gqa", "value_dim"]))
def test_a_kernel_naming_one_pattern_gets_only_that_pattern(case):
    assert case.causal == "top_left" and case.window is None
    q, k, v, kwargs = strategies.arguments(case)
    rs.testing.assert_attention_close(kernels.sdpa(q, k, v, **kwargs), q, k, v, **kwargs)


def test_a_required_feature_must_combine_with_a_named_pattern():
    with pytest.raises(ValueError, match="combines with none of the patterns and shapes"):
        strategies.cases(features=["causal", "mask"], require="mask")
    with pytest.raises(ValueError, match=r"named \(full, varlen\)"):
        strategies.cases(features=["varlen", "mask"], require="mask")


@settings(max_examples=25, deadline=None)
@given(strategies.cases(features=["varlen", "causal", "window"], layout="flash"))
def test_a_kernel_naming_one_shape_gets_only_that_shape(case):
    assert case.cu_seqlens is not None and case.shape[0] == 1
    q, k, v, kwargs = strategies.arguments(case, "flash")
    assert q.ndim == 3 and "cu_seqlens_q" in kwargs
    rs.testing.assert_attention_close(kernels.flash(q, k, v, **kwargs), q, k, v,
                                      layout="flash", **kwargs)


@settings(max_examples=15, deadline=None)
@given(strategies.cases(features=["decode", "gqa"]))
def test_decode_cases_have_one_query(case):
    assert case.decode and case.shape[3] == 1
