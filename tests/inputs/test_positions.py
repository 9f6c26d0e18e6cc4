"""ALiBi and rotary embeddings: their defining properties, and both engines agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.inputs.positions import RotaryEmbedding, alibi_bias


@given(st.integers(1, 6), st.integers(1, 6), st.sampled_from(["top_left", "bottom_right"]))
def test_alibi_is_distance_times_slope(n_queries, n_keys, alignment):
    bias = alibi_bias([0.25, 1.0], n_queries, n_keys, alignment)
    offset = n_keys - n_queries if alignment == "bottom_right" else 0
    for h, slope in enumerate([0.25, 1.0]):
        for i in range(n_queries):
            for j in range(n_keys):
                assert bias[h, i, j] == -slope * abs(i + offset - j)


@given(st.sampled_from(["half", "interleaved"]), st.integers(1, 4), st.integers(0, 50),
       st.integers(0, 50), st.integers(0, 20), st.integers(0, 2**32 - 1))
def test_rope_scores_depend_only_on_relative_position(layout, pairs, i, j, shift, seed):
    rope = RotaryEmbedding(base=100.0, layout=layout)
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, 1, 2 * pairs))
    score = rope.rotate(q, np.array([i])) @ rope.rotate(k, np.array([j])).T
    shifted = rope.rotate(q, np.array([i + shift])) @ rope.rotate(k, np.array([j + shift])).T
    np.testing.assert_allclose(score, shifted, rtol=1e-9, atol=1e-9)


def test_rope_layouts_pair_different_features():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    angle = np.array([1.0, 100 ** -0.5])           # base 100, E = 4
    half = RotaryEmbedding(100.0, "half").rotate(x, np.array([1]))
    inter = RotaryEmbedding(100.0, "interleaved").rotate(x, np.array([1]))
    c, s = np.cos(angle), np.sin(angle)
    np.testing.assert_allclose(half, [[1 * c[0] - 3 * s[0], 2 * c[1] - 4 * s[1],
                                       1 * s[0] + 3 * c[0], 2 * s[1] + 4 * c[1]]])
    np.testing.assert_allclose(inter, [[1 * c[0] - 2 * s[0], 1 * s[0] + 2 * c[0],
                                        3 * c[1] - 4 * s[1], 3 * s[1] + 4 * c[1]]])


@given(st.integers(0, 2**32 - 1), st.sampled_from(["top_left", "bottom_right"]),
       st.sampled_from([None, 10000.0, RotaryEmbedding(500.0, "interleaved")]))
def test_engines_agree_with_alibi_and_rope(seed, alignment, rope):
    rng = np.random.default_rng(seed)
    heads, n_queries, n_keys = 3, int(rng.integers(1, 5)), int(rng.integers(1, 6))
    q = rng.normal(size=(heads, n_queries, 4))
    k, v = rng.normal(size=(heads, n_keys, 4)), rng.normal(size=(heads, n_keys, 2))
    options = dict(alibi_slopes=[0.5, 0.25, 0.125], rope=rope, causal_alignment=alignment,
                   is_causal=True)
    run = rs.simulate(q, k, v, network=rs.Network(jitter=1.0, seed=seed), **options)
    expected, weights = rs.attention(q, k, v, return_weights=True, **options)
    tol = rs.verify.tolerance(q, k, v, **options)
    assert (np.abs(run.output - expected) <= tol[0]).all()
    assert (np.abs(run.weights - weights) <= tol[1]).all()


def test_alibi_favours_near_tokens():
    q = k = np.zeros((1, 4, 2))
    v = np.eye(4)[None]
    weights = rs.attention(q, k, v, alibi_slopes=[1.0], return_weights=True)[1][0]
    assert (np.diff(weights[3]) > 0).all()            # the latest token gets the most


def test_rope_is_an_explicit_check_against_manual_rotation():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 3, 4))
    rope = RotaryEmbedding(10.0)
    manual = rs.attention(rope.rotate(q, np.arange(3)), rope.rotate(k, np.arange(3)), v)
    np.testing.assert_array_equal(rs.attention(q, k, v, rope=rope), manual)


@pytest.mark.parametrize("kwargs, words", [
    ({"alibi_slopes": [1.0, 2.0]}, ["2 slopes", "no head dim"]),
    ({"alibi_slopes": [[1.0]]}, ["1-D"]),
    ({"rope": "big"}, ["rope", "big"]),
])
def test_position_errors(kwargs, words):
    with pytest.raises(rs.RoutingSimError) as caught:
        rs.attention(np.ones((2, 4)), np.ones((2, 4)), np.ones((2, 1)), **kwargs)
    for word in words:
        assert word in str(caught.value)


def test_rope_needs_even_dim():
    with pytest.raises(rs.ShapeError, match="even feature dim"):
        rs.simulate(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 1)), rope=10000.0)
