"""ALiBi and rotary embeddings: their defining properties, and both engines agree."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
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


# ------------------------------------------------ RoPE as kernels take it: rotary_dim, layouts,
# per-batch position_ids, cos/sin tables. The references below are FlashAttention's
# apply_rotary_emb_torch and transformers' (Llama / GPT-NeoX, GPT-J) rotary code, written
# again here in torch (einops replaced by torch ops), never through routing_sim.

def _flash_rotate_half(x, interleaved):
    torch = pytest.importorskip("torch")
    if not interleaved:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def _flash_apply_rotary_emb_torch(x, cos, sin, interleaved):
    """flash_attn/layers/rotary.py: x (batch, seqlen, nheads, headdim), cos/sin (seqlen,
    rotary_dim / 2) or (batch, seqlen, rotary_dim / 2)."""
    torch = pytest.importorskip("torch")
    ro_dim = cos.shape[-1] * 2
    assert ro_dim <= x.shape[-1]
    if interleaved:                                   # "... d -> ... 1 (d 2)"
        cos, sin = (t.repeat_interleave(2, dim=-1).unsqueeze(-2) for t in (cos, sin))
    else:                                             # "... d -> ... 1 (2 d)"
        cos, sin = (torch.cat((t, t), dim=-1).unsqueeze(-2) for t in (cos, sin))
    return torch.cat([x[..., :ro_dim] * cos + _flash_rotate_half(x[..., :ro_dim], interleaved)
                      * sin, x[..., ro_dim:]], dim=-1)


def _hf_neox_rotary(q, k, position_ids, base, rotary_dim):
    """transformers' GPT-NeoX / Llama rotary: q, k (B, H, L, D), position_ids (B, L)."""
    torch = pytest.importorskip("torch")
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64)
                               .to(torch.float64) / rotary_dim))
    inv_freq_expanded = inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1)
    freqs = (inv_freq_expanded @ position_ids[:, None, :].to(torch.float64)).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)        # unsqueeze_dim=1

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    rotated = []
    for x in (q, k):                                  # apply_rotary_pos_emb, partial
        x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
        rotated.append(torch.cat([x_rot * cos + rotate_half(x_rot) * sin, x_pass], dim=-1))
    return rotated


def _hf_gptj_rotary(x, position_ids, rotary_dim):
    """transformers' GPT-J: x (B, L, H, D), base 10000, rotate_every_two on rotary_dim."""
    torch = pytest.importorskip("torch")
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64)
                                .to(torch.float64) / rotary_dim))
    positions = torch.arange(int(position_ids.max()) + 1, dtype=torch.float64)
    sinusoid = positions[:, None] * inv_freq
    sincos = torch.cat((torch.sin(sinusoid), torch.cos(sinusoid)), dim=1)[position_ids]
    sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
    sin = torch.repeat_interleave(sin[:, :, None, :], 2, 3)
    cos = torch.repeat_interleave(cos[:, :, None, :], 2, 3)
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    every_two = torch.stack((-x_rot[..., 1::2], x_rot[..., ::2]), dim=-1).flatten(-2)
    return torch.cat([x_rot * cos + every_two * sin, x_pass], dim=-1)


def _softmax_attention(q, k, v, causal):
    """softmax(q kᵀ / √E) v in plain numpy, top-left causal."""
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])        # (..., L, S)
    if causal:
        scores = np.where(np.tri(*scores.shape[-2:], dtype=bool), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True) @ v


@st.composite
def rotary_cases(draw):
    """Heads dims, a rotary_dim <= E (or all of it), a layout and per-batch positions."""
    batch, heads, n = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    pairs = draw(st.integers(1, 5))
    dim = 2 * pairs + draw(st.integers(0, 3))
    rotary_dim = 2 * draw(st.integers(1, pairs))
    layout = draw(st.sampled_from(["half", "interleaved"]))
    offsets = draw(st.lists(st.integers(0, 200), min_size=batch, max_size=batch))
    position_ids = np.array(offsets)[:, None] + np.arange(n)                 # (B, L)
    seed = draw(st.integers(0, 2**32 - 1))
    return batch, heads, n, dim, rotary_dim, layout, position_ids, seed


@settings(deadline=None)
@given(rotary_cases())
def test_rotate_is_flash_attentions_apply_rotary_emb_bit_for_bit(case):
    torch = pytest.importorskip("torch")
    batch, heads, n, dim, rotary_dim, layout, position_ids, seed = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, n, heads, dim))                       # flash's layout
    angle = np.arange(int(position_ids.max()) + 1)[:, None] * rng.uniform(0, 1, rotary_dim // 2)
    cos, sin = np.cos(angle), np.sin(angle) * 1.25                    # any table (YaRN scales)
    expected = _flash_apply_rotary_emb_torch(
        torch.from_numpy(x), torch.from_numpy(cos[position_ids]),
        torch.from_numpy(sin[position_ids]), interleaved=layout == "interleaved").numpy()
    rope = RotaryEmbedding.from_tables(cos, sin, layout=layout)
    got = rope.rotate(x, position_ids[:, :, None])                    # (B, L, 1): over heads
    np.testing.assert_array_equal(got, expected)
    assert rope.rotary_dim == rotary_dim


@settings(deadline=None)
@given(rotary_cases(), st.sampled_from([10000.0, 500.0, 10.0]))
def test_rotate_is_transformers_apply_rotary_pos_emb(case, base):
    torch = pytest.importorskip("torch")
    batch, heads, n, dim, rotary_dim, layout, position_ids, seed = case
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, batch, heads, n, dim))
    ids = torch.from_numpy(position_ids)
    rope = RotaryEmbedding(base, layout, rotary_dim)
    if layout == "half":                                               # GPT-NeoX, Llama, Phi
        expected = [x.numpy() for x in _hf_neox_rotary(torch.from_numpy(q), torch.from_numpy(k),
                                                       ids, base, rotary_dim)]
    else:                                                              # GPT-J, base 10000
        rope = RotaryEmbedding(10000.0, layout, rotary_dim)
        expected = [_hf_gptj_rotary(torch.from_numpy(x).transpose(1, 2), ids, rotary_dim)
                    .transpose(1, 2).numpy() for x in (q, k)]
    for x, want in zip((q, k), expected):
        np.testing.assert_allclose(rope.rotate(x, position_ids[:, None, :]), want,
                                   rtol=1e-13, atol=1e-13)


@settings(deadline=None, max_examples=40)
@given(rotary_cases(), st.booleans())
def test_attention_with_rope_is_attention_on_rotated_queries_and_keys(case, tables):
    torch = pytest.importorskip("torch")
    batch, heads, n, dim, rotary_dim, layout, position_ids, seed = case
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, batch, heads, n, dim))
    v = rng.normal(size=(batch, heads, n, 3))
    angle = np.arange(int(position_ids.max()) + 1)[:, None] * \
        1.0 / 100.0 ** (np.arange(0, rotary_dim, 2) / rotary_dim)
    cos, sin = np.cos(angle), np.sin(angle)
    rope = RotaryEmbedding.from_tables(cos, sin, layout) if tables else \
        RotaryEmbedding(100.0, layout, rotary_dim)
    q_rot, k_rot = (_flash_apply_rotary_emb_torch(
        torch.from_numpy(x.transpose(0, 2, 1, 3)), torch.from_numpy(cos[position_ids]),
        torch.from_numpy(sin[position_ids]), layout == "interleaved").numpy().transpose(0, 2, 1, 3)
        for x in (q, k))
    expected = _softmax_attention(q_rot, k_rot, v, causal=True)
    options = dict(is_causal=True, rope=rope, position_ids=position_ids)
    np.testing.assert_allclose(rs.attention(q, k, v, **options), expected, rtol=1e-12,
                               atol=1e-13)
    run = rs.simulate(q, k, v, network=rs.Network(jitter=1.0, seed=seed), **options)
    np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-13)
    exact = rs.simulate(q, k, v, numerics="exact", **options)
    np.testing.assert_array_equal(exact.output, rs.attention(q, k, v, numerics="exact",
                                                              **options))


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("tables", [False, True])
def test_gradients_through_rope_match_torch_autograd(layout, tables):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    batch, heads, kv_heads, n_queries, n_keys, dim, rotary_dim = 2, 4, 2, 3, 5, 10, 6
    q = rng.normal(size=(batch, heads, n_queries, dim))
    k = rng.normal(size=(batch, kv_heads, n_keys, dim))
    v = rng.normal(size=(batch, kv_heads, n_keys, 3))
    d_out = rng.normal(size=(batch, heads, n_queries, 3))
    query_ids = np.array([[2, 3, 4], [5, 6, 7]])                      # (B, L)
    key_ids = np.array([[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]])            # (B, S)
    angle = np.arange(8)[:, None] * 1.0 / 30.0 ** (np.arange(0, rotary_dim, 2) / rotary_dim)
    cos, sin = np.cos(angle), np.sin(angle)
    rope = RotaryEmbedding.from_tables(cos, sin, layout) if tables else \
        RotaryEmbedding(30.0, layout, rotary_dim)

    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))

    def rotated(x, ids):                       # flash layout (B, T, H, D) and back
        return _flash_apply_rotary_emb_torch(
            x.transpose(1, 2), torch.from_numpy(cos[ids]), torch.from_numpy(sin[ids]),
            layout == "interleaved").transpose(1, 2)

    keys = rotated(tk, key_ids).repeat_interleave(heads // kv_heads, dim=1)
    values = tv.repeat_interleave(heads // kv_heads, dim=1)
    scores = rotated(tq, query_ids) @ keys.transpose(-1, -2) / np.sqrt(dim)
    out = torch.softmax(scores, dim=-1) @ values
    (out * torch.from_numpy(d_out)).sum().backward()
    expected = [x.grad.numpy() for x in (tq, tk, tv)]

    options = dict(rope=rope, position_ids=query_ids, key_position_ids=key_ids,
                   enable_gqa=True)
    matrix = rs.attention_backward(q, k, v, d_out, **options)
    messages = rs.simulate(q, k, v, **options).backward(d_out)
    for got in (matrix, (messages.query, messages.key, messages.value)):
        for mine, want in zip(got, expected):
            np.testing.assert_allclose(mine, want, rtol=1e-11, atol=1e-13)


def test_partial_rotary_computes_frequencies_over_rotary_dim_and_passes_the_rest():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 10))
    positions = np.arange(5) + 3
    partial = RotaryEmbedding(100.0, rotary_dim=4).rotate(x, positions)
    whole = RotaryEmbedding(100.0).rotate(x[:, :4], positions)         # E = 4: same pairs
    np.testing.assert_array_equal(partial[:, :4], whole)
    np.testing.assert_array_equal(partial[:, 4:], x[:, 4:])
    angle = positions[:, None] * 100.0 ** -(np.arange(0, 4, 2) / 4)    # pair d: p·base^(-2d/R)
    np.testing.assert_allclose(partial[:, 0], x[:, 0] * np.cos(angle[:, 0])
                               - x[:, 2] * np.sin(angle[:, 0]), rtol=1e-14)


def test_position_ids_shift_every_position_alike_changes_nothing():
    """RoPE scores depend on j - i only: a sequence moved along keeps its output."""
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(3, 2, 2, 5, 8))                        # (B, H, L, E)
    shifted = np.array([[0, 1, 2, 3, 4], [40, 41, 42, 43, 44]])
    rope = RotaryEmbedding(100.0, rotary_dim=6)
    np.testing.assert_allclose(rs.attention(q, k, v, rope=rope, position_ids=shifted),
                               rs.attention(q, k, v, rope=rope), rtol=1e-12)
    moved = rs.attention(q, k, v, rope=rope, position_ids=shifted[:, ::-1].copy())
    assert not np.allclose(moved, rs.attention(q, k, v, rope=rope))    # they are used


def test_key_position_ids_place_a_cache_of_keys():
    """L != S: the queries are the last tokens of a cache, placed with both arrays."""
    rng = np.random.default_rng(5)
    q, k, v = rng.normal(size=(3, 2, 7, 8))
    rope = RotaryEmbedding(rotary_dim=4, layout="interleaved")
    whole = rs.attention(q, k, v, rope=rope, is_causal=True)
    tail = rs.attention(q[:, 4:], k, v, rope=rope, is_causal=True,
                        causal_alignment="bottom_right", position_ids=np.arange(4, 7),
                        key_position_ids=np.arange(7))
    np.testing.assert_allclose(tail, whole[:, 4:], rtol=1e-12)
    default = rs.attention(q[:, 4:], k, v, rope=rope, is_causal=True,
                           causal_alignment="bottom_right")
    np.testing.assert_array_equal(tail, default)      # the bottom-right places them so too


def test_a_rotary_embedding_compares_by_what_it_computes():
    cos, sin = np.ones((3, 2)), np.zeros((3, 2))
    assert RotaryEmbedding(100.0, rotary_dim=4) == RotaryEmbedding(100.0, "half", 4)
    assert RotaryEmbedding(100.0, rotary_dim=4) != RotaryEmbedding(100.0)
    same = RotaryEmbedding.from_tables(cos, sin)
    assert same == RotaryEmbedding.from_tables(cos.copy(), sin.copy())
    assert hash(same) == hash(RotaryEmbedding.from_tables(cos.copy(), sin.copy()))
    assert same != RotaryEmbedding.from_tables(cos, sin + 1) != RotaryEmbedding(100.0)
    assert "from_tables" in repr(same) and "(3, 2)" in repr(same)
    assert not same.cos.flags.writeable


@pytest.mark.parametrize("make, error, words", [
    (lambda: RotaryEmbedding(rotary_dim=3), rs.InvalidArgumentError, ["rotary_dim", "3"]),
    (lambda: RotaryEmbedding(rotary_dim=0), rs.InvalidArgumentError, ["rotary_dim", "0"]),
    (lambda: RotaryEmbedding(rotary_dim=True), rs.InvalidArgumentError, ["rotary_dim"]),
    (lambda: RotaryEmbedding(layout="neox"), rs.InvalidArgumentError, ["layout", "neox"]),
    (lambda: RotaryEmbedding.from_tables(np.ones((4, 2)), np.ones((4, 3))), rs.ShapeError,
     ["(4, 2)", "(4, 3)"]),
    (lambda: RotaryEmbedding.from_tables(np.ones(4), np.ones(4)), rs.ShapeError,
     ["rope cos", "(4,)"]),
    (lambda: RotaryEmbedding.from_tables(np.full((2, 1), np.nan), np.ones((2, 1))),
     rs.InvalidArgumentError, ["rope cos", "finite"]),
    (lambda: RotaryEmbedding(rotary_dim=6, cos=np.ones((2, 2)), sin=np.ones((2, 2))),
     rs.ShapeError, ["rotary_dim = 6", "2 columns"]),
    (lambda: RotaryEmbedding(cos=np.ones((2, 2))), rs.InvalidArgumentError, ["both"]),
])
def test_bad_rotary_embeddings_are_refused(make, error, words):
    with pytest.raises(error) as caught:
        make()
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"rope": RotaryEmbedding(rotary_dim=10)}, rs.ShapeError, ["rotary_dim = 10", "E = 8"]),
    ({"position_ids": [0, 1, 2]}, rs.InvalidArgumentError, ["position_ids", "rope="]),
    ({"key_position_ids": [0, 1, 2]}, rs.InvalidArgumentError, ["key_position_ids", "rope="]),
    ({"rope": 10.0, "position_ids": [0.0, 1.0, 2.0]}, rs.DTypeError, ["position_ids",
                                                                       "float64"]),
    ({"rope": 10.0, "position_ids": [0, 1]}, rs.ShapeError, ["position_ids", "T = 3", "(2,)"]),
    ({"rope": 10.0, "position_ids": [0, -1, 2]}, rs.InvalidArgumentError, ["position_ids",
                                                                            "-1"]),
    ({"rope": 10.0, "position_ids": np.zeros((4, 3), int)}, rs.ShapeError,
     ["position_ids of shape (4, 3)", "(2, 2)", "B = 2"]),
    ({"rope": 10.0, "key_position_ids": np.zeros((2, 4), int)}, rs.ShapeError,
     ["key_position_ids", "T = 3"]),
    ({"rope": RotaryEmbedding.from_tables(np.ones((3, 4)), np.zeros((3, 4))),
      "position_ids": [1, 2, 3]}, rs.InvalidArgumentError, ["position_ids reach position 3",
                                                             "0..2"]),
])
def test_bad_positions_are_refused_naming_the_argument(kwargs, error, words):
    q = np.ones((2, 2, 3, 8))                                          # (B, H, L, E)
    for call in (rs.attention, rs.simulate):
        with pytest.raises(error) as caught:
            call(q, q, q, **kwargs)
        for word in words:
            assert word in str(caught.value)


def test_position_ids_need_key_positions_when_there_are_more_keys():
    q, k = np.ones((3, 8)), np.ones((5, 8))
    with pytest.raises(rs.InvalidArgumentError, match="S = 5 keys .* key_position_ids"):
        rs.attention(q, k, k, rope=10.0, position_ids=[2, 3, 4])
    with pytest.raises(rs.InvalidArgumentError, match="key positions reach position 4"):
        rs.attention(q, k, k, rope=RotaryEmbedding.from_tables(np.ones((4, 4)),
                                                              np.zeros((4, 4))))
