"""The matrix reference against a per-element loop written from the definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from tests.conftest import attention_inputs, route_masks


def loop_attention(query, key, value, allowed, bias, scale):
    """softmax(q·k·scale + b) v, one query at a time, with Python floats and math.exp."""
    n_queries, n_keys = allowed.shape
    output = np.zeros((n_queries, value.shape[1]))
    weights = np.zeros((n_queries, n_keys))
    for i in range(n_queries):
        scores = {j: math.fsum(float(a) * float(b) for a, b in zip(query[i], key[j])) * scale
                  + bias[i, j] for j in range(n_keys) if allowed[i, j]}
        if not scores:
            continue
        top = max(scores.values())
        total = math.fsum(math.exp(s - top) for s in scores.values())
        for j, s in scores.items():
            weights[i, j] = math.exp(s - top) / total
        output[i] = weights[i] @ value
    return output, weights


def explicit_routes(n_queries, n_keys, attn_mask=None, is_causal=False,
                    causal_alignment="top_left"):
    """The route set and bias, spelled out from PyTorch's documented semantics."""
    allowed = np.ones((n_queries, n_keys), dtype=bool)
    bias = np.zeros((n_queries, n_keys))
    if is_causal:
        shift = 0 if causal_alignment == "top_left" else n_keys - n_queries
        allowed = np.array([[j <= i + shift for j in range(n_keys)] for i in range(n_queries)])
    if attn_mask is not None and attn_mask.dtype == bool:
        allowed = attn_mask
    elif attn_mask is not None:
        allowed = attn_mask != -np.inf
        bias = np.where(allowed, attn_mask, 0.0)
    return allowed, bias


@given(st.data())
def test_reference_matches_loop_definition(data):
    query, key, value = data.draw(attention_inputs())
    masks = data.draw(route_masks(len(query), len(key)))
    scale = data.draw(st.sampled_from([None, 0.3, -1.5]))
    output, weights = rs.attention(query, key, value, scale=scale, return_weights=True, **masks)
    allowed, bias = explicit_routes(len(query), len(key), **masks)
    expected_output, expected_weights = loop_attention(
        query, key, value, allowed, bias, 1 / math.sqrt(query.shape[1]) if scale is None else scale)
    output_tol, weight_tol = rs.verify.tolerance(query, key, value, scale=scale, **masks)
    assert (np.abs(output - expected_output) <= output_tol).all()
    assert (np.abs(weights - expected_weights) <= weight_tol).all()


def test_seed_example_routing_table():
    # Scores log(5), log(3), log(2) give the document's table A 0.5 / B 0.3 / C 0.2.
    query = np.array([[1.0]])
    key = np.log(np.array([[5.0], [3.0], [2.0]]))
    value = np.array([[10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    output, weights = rs.attention(query, key, value, scale=1.0, return_weights=True)
    np.testing.assert_allclose(weights, [[0.5, 0.3, 0.2]], rtol=1e-15)
    np.testing.assert_allclose(output, [[0.5 * 10 + 0.2 * 10, 0.3 * 10 + 0.2 * 10]], rtol=1e-15)


def test_large_scores_do_not_overflow():
    query = np.array([[1000.0, 0.0]])
    key = np.array([[1000.0, 0.0], [999.0, 0.0]])
    value = np.array([[1.0], [2.0]])
    output, weights = rs.attention(query, key, value, scale=1.0, return_weights=True)
    # Scores 1e6 and 999000: the second share is exp(-1000) = 0 in float64.
    assert weights.tolist() == [[1.0, 0.0]]
    assert output.tolist() == [[1.0]]


@pytest.mark.parametrize("policy, expected", [("zero", 0.0), ("nan", np.nan)])
def test_empty_rows(policy, expected):
    query, key, value = np.ones((2, 3)), np.ones((2, 3)), np.arange(4.0).reshape(2, 2)
    mask = np.array([[True, False], [False, False]])
    output, weights = rs.attention(query, key, value, mask, empty_rows=policy,
                                   return_weights=True)
    np.testing.assert_array_equal(output[1], [expected, expected])
    np.testing.assert_array_equal(weights[1], [expected, expected])
    np.testing.assert_array_equal(output[0], value[0])


def test_empty_rows_error_names_the_token():
    with pytest.raises(rs.EmptyRowError, match="query token 1"):
        rs.attention(np.ones((2, 1)), np.ones((2, 1)), np.ones((2, 1)),
                     np.array([[True, True], [False, False]]), empty_rows="error")


def test_dropout_mask_rescales_survivors():
    rng = np.random.default_rng(3)
    query, key, value = rng.normal(size=(3, 4, 2))
    keep = np.array([[True, False, True, True]] * 4)
    plain = rs.attention(query, key, value, return_weights=True)[1]
    dropped = rs.attention(query, key, value, dropout_p=0.25, dropout_mask=keep,
                           return_weights=True)[1]
    np.testing.assert_allclose(dropped, plain * keep / 0.75, rtol=1e-15)


def test_seeded_dropout_is_reproducible_and_drops_about_p():
    query = key = value = np.ones((40, 40, 2))
    first = rs.attention(query, key, value, dropout_p=0.3, seed=5, return_weights=True)[1]
    again = rs.attention(query, key, value, dropout_p=0.3, seed=5, return_weights=True)[1]
    np.testing.assert_array_equal(first, again)
    assert 0.25 < (first == 0).mean() < 0.35


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    query, key, value = rng.normal(size=(3, 5, 4)).astype(np.float32)
    assert rs.attention(query, key, value).dtype == np.float32


def test_empty_sequences():
    assert rs.attention(np.zeros((0, 3)), np.zeros((4, 3)), np.zeros((4, 2))).shape == (0, 2)
    np.testing.assert_array_equal(
        rs.attention(np.zeros((2, 3)), np.zeros((0, 3)), np.zeros((0, 2))), np.zeros((2, 2)))


def _softmax_and_dropout(q, k, v, keep, p):
    """Independent reference: the softmax, then dropout's keep / (1 - p)."""
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    probabilities = np.exp(scores - scores.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    return probabilities, probabilities * keep / (1 - p)


@pytest.mark.parametrize("numerics", ["float", "exact"])
@pytest.mark.parametrize("sparse", [False, True])
def test_weights_are_after_dropout_and_probabilities_before(numerics, sparse):
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(3, 2, 5, 4))
    keep = rng.random((2, 5, 5)) >= 0.4
    options = {"dropout_p": 0.4, "dropout_mask": keep, "numerics": numerics}
    if sparse:
        options["graph"] = rs.RouteSet.complete(5, 5, (2,))
    probabilities, weights = _softmax_and_dropout(q, k, v, keep, 0.4)
    out, got_weights = rs.attention(q, k, v, return_weights=True, **options)
    same_out, got_probabilities = rs.attention(q, k, v, return_weights="probabilities",
                                               **options)
    np.testing.assert_array_equal(out, same_out)                      # the same output
    np.testing.assert_allclose(got_probabilities, probabilities, rtol=1e-12)
    np.testing.assert_allclose(got_probabilities.sum(-1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(got_weights, weights, rtol=1e-12)
    np.testing.assert_allclose(got_weights, got_probabilities * keep / 0.6, rtol=1e-15)
    np.testing.assert_allclose(out, weights @ v, rtol=1e-12)
    assert not np.allclose(got_weights.sum(-1), 1.0)                   # the trap, documented


@pytest.mark.parametrize("bad", ["probs", 1, None])
def test_return_weights_takes_true_false_or_probabilities(bad):
    q = np.ones((2, 3))
    with pytest.raises(rs.InvalidArgumentError, match="return_weights must be .*probabilities"):
        rs.attention(q, q, q, return_weights=bad)
