"""ALiBi and rotary embeddings: their defining properties, and both engines agree."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.inputs import mods
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
    ({"alibi_slopes": [1.0, 2.0]}, ["shape (2,)", "no head dim"]),
    ({"alibi_slopes": [[[1.0]]]}, ["(H,) or (B, H)"]),
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


# ---------------------------------------------------------------- ALiBi: (B, H), two conventions

def _alibi_reference(q, k, v, slopes, signed):
    """Independent formula: m·(j - i) (signed) or -m·|i - j| added to q·k/√E, softmax."""
    n_queries, n_keys = q.shape[-2], k.shape[-2]
    offset = np.arange(n_keys)[None, :] - np.arange(n_queries)[:, None]   # (L, S) j - i
    distance = offset if signed else -np.abs(offset)
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]) \
        + np.asarray(slopes)[..., None, None] * distance
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True) @ v


@pytest.mark.parametrize("mode", ["symmetric", "signed"])
@pytest.mark.parametrize("per_batch", [False, True])
def test_alibi_slopes_per_head_or_per_batch_and_head_in_both_conventions(mode, per_batch):
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 2, 3, 5, 4))                        # (B, H, L, E)
    slopes = rng.uniform(0.1, 1.0, size=(2, 3) if per_batch else (3,))
    expected = _alibi_reference(q, k, v, slopes, mode == "signed")
    options = {"alibi_slopes": slopes, "alibi_mode": mode}
    np.testing.assert_allclose(rs.attention(q, k, v, **options), expected, rtol=1e-12)
    routes = rs.RouteSet.complete(5, 5, (2, 3))
    np.testing.assert_allclose(rs.attention(q, k, v, graph=routes, **options), expected,
                               rtol=1e-12)
    run = rs.simulate(q, k, v, **options)
    np.testing.assert_allclose(run.output, expected, rtol=1e-12)
    window = rs.patterns.sliding_window(5, 5)                         # causal: modes agree
    causal = rs.attention(q, k, v, graph=window, **options)
    np.testing.assert_allclose(rs.simulate(q, k, v, graph=window, **options).output, causal,
                               rtol=1e-12)
    np.testing.assert_allclose(causal, rs.attention(q, k, v, graph=window,
                                                    alibi_slopes=slopes), rtol=1e-14)
    mod = mods.alibi(slopes, signed=mode == "signed")
    np.testing.assert_allclose(rs.attention(q, k, v, score_mod=mod), expected, rtol=1e-12)
    d_out = rng.normal(size=v.shape)
    np.testing.assert_allclose(run.backward(d_out).query,
                               rs.attention_backward(q, k, v, d_out, **options)[0], rtol=1e-10)


def test_the_two_conventions_differ_without_a_causal_mask():
    q = k = np.zeros((1, 3, 2))
    v = np.eye(3)[None]                                                # output = weights
    symmetric = rs.attention(q, k, v, alibi_slopes=[1.0])
    signed = rs.attention(q, k, v, alibi_slopes=[1.0], alibi_mode="signed")
    first = np.exp([0.0, -1.0, -2.0])
    np.testing.assert_allclose(symmetric[0, 0], first / first.sum(), rtol=1e-15)
    last = np.exp([-2.0, -1.0, 0.0])                                   # query 0 leans ahead
    np.testing.assert_allclose(signed[0, 0], last / last.sum(), rtol=1e-15)


@pytest.mark.parametrize("slopes, message", [
    (np.ones((3, 3)), r"alibi_slopes of shape \(3, 3\) does not fit .* \(B, H\) = \(2, 3\)"),
    (np.ones(4), r"H = 3 heads"),
    (np.ones((1, 2, 3)), r"\(H,\) or \(B, H\)"),
])
def test_alibi_slopes_that_do_not_fit_are_refused_with_the_shapes(slopes, message):
    q = np.ones((2, 3, 4, 2))
    with pytest.raises(rs.ShapeError, match=message):
        rs.attention(q, q, q, alibi_slopes=slopes)
    with pytest.raises(rs.ShapeError, match=message):
        rs.simulate(q, q, q, alibi_slopes=slopes, graph=rs.RouteSet.complete(4, 4, (2, 3)))


def test_alibi_mode_is_checked():
    q = np.ones((3, 2))
    with pytest.raises(rs.InvalidArgumentError, match="alibi_mode must be one of"):
        rs.attention(q, q, q, alibi_slopes=[1.0], alibi_mode="abs")


def test_signed_alibi_matches_flex_attention_with_attention_gyms_mod():
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    rng = np.random.default_rng(9)
    q, k, v = rng.normal(size=(3, 2, 4, 6, 8))
    heads = 4

    def alibi_mod(score, b, h, q_idx, kv_idx):                         # attention-gym
        return score + (kv_idx - q_idx) * torch.exp2(-((h + 1) * 8.0 / heads))

    slopes = np.exp2(-(np.arange(heads) + 1) * 8.0 / heads).astype(np.float32)  # as gym
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                # eager flex
        expected = flex.flex_attention(*(torch.from_numpy(x) for x in (q, k, v)),
                                       score_mod=alibi_mod).numpy()
    for got in (rs.attention(q, k, v, alibi_slopes=slopes.astype(np.float64),
                             alibi_mode="signed"),
                rs.simulate(q, k, v, score_mod=mods.alibi(slopes, signed=True)).output):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
