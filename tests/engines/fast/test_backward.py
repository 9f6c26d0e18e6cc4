"""Gradients sent back along the routes equal the matrix-form gradients and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs

RTOL, ATOL = 1e-10, 1e-12


def close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


@st.composite
def problems(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    heads = draw(st.sampled_from([1, 2, 4]))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0]))
    n_queries, n_keys = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dim = draw(st.sampled_from([1, 2, 4]))
    value_dim = draw(st.integers(1, 3))
    q = rng.normal(size=(heads, n_queries, dim)) * 2
    k = rng.normal(size=(kv_heads, n_keys, dim)) * 2
    v = rng.normal(size=(kv_heads, n_keys, value_dim))
    options: dict = {"enable_gqa": kv_heads != heads}
    mask_kind = draw(st.sampled_from(["none", "bool", "float", "causal"]))
    if mask_kind == "bool":
        options["attn_mask"] = rng.random((n_queries, n_keys)) < 0.7
    elif mask_kind == "float":
        bias = rng.normal(size=(n_queries, n_keys))
        bias[rng.random(bias.shape) < 0.2] = -np.inf
        options["attn_mask"] = bias
    elif mask_kind == "causal":
        options["is_causal"] = True
    if draw(st.booleans()):
        options["scale"] = 0.7
    if draw(st.booleans()) and dim % 2 == 0:
        options["rope"] = 50.0
    if draw(st.booleans()):
        options["dropout_p"] = 0.3
        options["dropout_mask"] = rng.random((heads, n_queries, n_keys)) < 0.7
    d_output = rng.normal(size=(heads, n_queries, value_dim))
    return (q, k, v), options, d_output


@given(problems(), st.sampled_from([rs.Network(), rs.Network(jitter=2.0, seed=3),
                                    rs.Network(loss=0.2, duplicate=0.2, retries=50, seed=4)]))
def test_message_gradients_equal_matrix_gradients(problem, network):
    (q, k, v), options, d_output = problem
    grads = rs.simulate(q, k, v, network=network, **options).backward(d_output)
    expected = rs.attention_backward(q, k, v, d_output, **options)
    for actual, wanted, original in zip((grads.query, grads.key, grads.value), expected,
                                        (q, k, v)):
        assert actual.shape == original.shape
        close(actual, wanted)


@pytest.mark.parametrize("options", [{}, {"is_causal": True}, {"enable_gqa": True},
                                     {"rope": 10.0, "scale": 0.3},
                                     {"dropout_p": 0.5, "seed": 3}])
def test_matrix_gradients_equal_finite_differences(options):
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 3, 4))
    k, v = rng.normal(size=(1 if options.get("enable_gqa") else 2, 4, 4)), \
        rng.normal(size=(1 if options.get("enable_gqa") else 2, 4, 2))
    d_output = rng.normal(size=(2, 3, 2))
    grads = rs.attention_backward(q, k, v, d_output, **options)
    messages = rs.simulate(q, k, v, **options).backward(d_output)

    def loss(*inputs):
        return float((rs.attention(*inputs, **options) * d_output).sum())

    for position, gradient in enumerate(grads):
        inputs = [q, k, v]
        numeric = np.zeros_like(inputs[position])
        for index in np.ndindex(numeric.shape):
            for sign in (1, -1):
                shifted = [x.copy() for x in inputs]
                shifted[position][index] += sign * 1e-6
                numeric[index] += sign * loss(*shifted) / 2e-6
        np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose((messages.query, messages.key, messages.value)[position],
                                   numeric, rtol=1e-6, atol=1e-8)


def test_gradients_are_bit_identical_across_schedules():
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(3, 2, 5, 4))
    d_output = rng.normal(size=(2, 5, 4))
    first = rs.simulate(q, k, v, is_causal=True).backward(d_output)
    second = rs.simulate(q, k, v, is_causal=True, delivery="per_message",
                         network=rs.Network(jitter=4.0, seed=9)).backward(d_output)
    for a, b in zip((first.query, first.key, first.value), (second.query, second.key,
                                                             second.value)):
        np.testing.assert_array_equal(a, b)


def test_four_gradient_messages_per_route_in_stats_and_trace():
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 4, 2))
    grads = rs.simulate(q, k, v, is_causal=True, trace="full").backward(np.ones((4, 2)))
    assert grads.stats.messages == {"GRAD_OUTPUT": 10, "GRAD_SHARE": 10, "GRAD_SCORE": 10,
                                    "GRAD_KEY": 10}
    assert grads.stats.bytes == {"GRAD_OUTPUT": 160, "GRAD_SHARE": 80, "GRAD_SCORE": 80,
                                 "GRAD_KEY": 160}
    shares = grads.trace.kind == rs.Kind.GRAD_SHARE
    assert (grads.trace.src[shares] <= grads.trace.dst[shares]).all()   # j -> i, causal
    assert grads.trace.to_mermaid().count("GRAD_") == 40


def test_cross_attention_gradients():
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(2, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    graph = rs.graphs.from_mask(rng.random((2, 5)) < 0.6, cross=True)
    d_output = rng.normal(size=(2, 3))
    grads = rs.simulate(q, k, v, graph=graph).backward(d_output)
    expected = rs.attention_backward(q, k, v, d_output, attn_mask=rs.graphs.to_mask(graph))
    for actual, wanted in zip((grads.query, grads.key, grads.value), expected):
        close(actual, wanted)


def test_hard_routing_has_no_score_gradient():
    rng = np.random.default_rng(5)
    q, k, v = rng.normal(size=(3, 5, 4))
    grads = rs.simulate(q, k, v, routing="topk", top_k=1).backward(rng.normal(size=(5, 4)))
    assert not grads.query.any() and not grads.key.any()
    assert grads.value.any()
    soft = rs.simulate(q, k, v).backward(rng.normal(size=(5, 4)))
    assert np.abs(soft.query).max() > 1e-3


def test_bad_upstream_gradient():
    run = rs.simulate(np.eye(2), np.eye(2), np.eye(2))
    with pytest.raises(rs.ShapeError, match=r"\(2, 2\)"):
        run.backward(np.ones((2, 3)))
    with pytest.raises(rs.InvalidArgumentError, match="finite"):
        run.backward(np.full((2, 2), np.nan))
