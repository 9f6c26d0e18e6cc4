"""MultiHeadAttention: both engines agree, and equal per-head reference attention."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs


def per_head_oracle(mha: rs.MultiHeadAttention, query, key, value, allowed=None):
    """Project, attend head by head with rs.attention (2-D), concatenate, project out."""
    state = mha.state_dict()
    w_q, w_k, w_v = mha.projections()
    E, kv, d = mha.embed_dim, mha.kv_dim, mha.head_dim
    bias = state.get("in_proj_bias", np.zeros(E + 2 * kv))
    q = query @ w_q.T + bias[:E]
    k = key @ w_k.T + bias[E:E + kv]
    v = value @ w_v.T + bias[E + kv:]
    if "bias_k" in state:
        k = np.concatenate([k, state["bias_k"][0]])
        v = np.concatenate([v, state["bias_v"][0]])
    if mha.add_zero_attn:
        k, v = np.concatenate([k, np.zeros((1, kv))]), np.concatenate([v, np.zeros((1, kv))])
    group = mha.num_heads // mha.num_kv_heads
    heads = []
    for h in range(mha.num_heads):
        kv_head = h // group
        mask = None
        if allowed is not None:
            mask = np.ones((len(q), len(k)), dtype=bool)
            mask[:, :allowed.shape[1]] = allowed
        heads.append(rs.attention(q[:, h * d:(h + 1) * d], k[:, kv_head * d:(kv_head + 1) * d],
                                  v[:, kv_head * d:(kv_head + 1) * d], mask))
    out = np.concatenate(heads, axis=1) @ state["out_proj.weight"].T
    return out + state.get("out_proj.bias", 0)


configs = st.fixed_dictionaries({
    "heads": st.sampled_from([(1, 1), (2, 2), (4, 2), (4, 1), (3, 3)]),
    "head_dim": st.integers(1, 3),
    "kdim": st.none() | st.integers(1, 5),
    "vdim": st.none() | st.integers(1, 5),
    "bias": st.booleans(),
    "add_bias_kv": st.booleans(),
    "add_zero_attn": st.booleans(),
    "seed": st.integers(0, 1000),
})


@given(configs, st.integers(1, 5), st.integers(1, 5), st.booleans())
def test_engines_agree_with_per_head_oracle(config, n_queries, n_keys, masked):
    num_heads, num_kv_heads = config["heads"]
    embed_dim = num_heads * config["head_dim"]
    mha = rs.MultiHeadAttention(embed_dim, num_heads, kdim=config["kdim"], vdim=config["vdim"],
                                bias=config["bias"], add_bias_kv=config["add_bias_kv"],
                                add_zero_attn=config["add_zero_attn"],
                                num_kv_heads=num_kv_heads, seed=config["seed"])
    rng = np.random.default_rng(config["seed"])
    state = {name: rng.normal(size=value.shape) for name, value in mha.state_dict().items()}
    mha.load_state_dict(state)
    query = rng.normal(size=(n_queries, embed_dim))
    key = rng.normal(size=(n_keys, mha.kdim))
    value = rng.normal(size=(n_keys, mha.vdim))
    blocked = rng.random((n_queries, n_keys)) < 0.4 if masked else None
    expected = per_head_oracle(mha, query, key, value, None if blocked is None else ~blocked)
    for engine in ("messages", "matrix"):
        output, weights = mha(query, key, value, attn_mask=blocked, engine=engine)
        np.testing.assert_allclose(output, expected, rtol=1e-12, atol=1e-12)
        extra = int(config["add_bias_kv"]) + int(config["add_zero_attn"])
        assert weights.shape == (n_queries, n_keys + extra)


def test_messages_engine_keeps_its_run():
    mha = rs.MultiHeadAttention(4, 2, seed=1)
    x = np.random.default_rng(0).normal(size=(2, 3, 4))
    _, weights = mha(x, x, x, average_attn_weights=False)
    assert mha.last_run.weights.shape == (2, 2, 3, 3)
    np.testing.assert_array_equal(mha.last_run.weights, weights)
    assert mha.last_run.stats.messages["QUERY"] == 2 * 2 * 3 * 3


def test_gqa_sends_values_once_per_pulling_head():
    mha = rs.MultiHeadAttention(8, 4, num_kv_heads=2, seed=0)
    x = np.random.default_rng(0).normal(size=(1, 3, 8))
    mha(x, x, x)
    assert mha.last_run.stats.messages["VALUE"] == 4 * 3 * 3
    assert set(mha.state_dict()) == {"q_proj_weight", "k_proj_weight", "v_proj_weight",
                                     "in_proj_bias", "out_proj.weight", "out_proj.bias"}
    assert mha.state_dict()["k_proj_weight"].shape == (4, 8)


def test_key_padding_mask_blocks_padded_keys():
    mha = rs.MultiHeadAttention(4, 2, seed=0)
    x = np.random.default_rng(0).normal(size=(2, 3, 4))
    _, weights = mha(x, x, x, key_padding_mask=np.array([[False, False, True]] * 2))
    assert (weights[..., 2] == 0).all()
    np.testing.assert_allclose(weights.sum(-1), 1, rtol=1e-15)


def test_is_causal_without_mask_builds_the_causal_mask():
    mha = rs.MultiHeadAttention(4, 1, seed=0)
    x = np.random.default_rng(0).normal(size=(3, 4))
    causal_out, causal_weights = mha(x, x, x, is_causal=True)
    mask_out, _ = mha(x, x, x, attn_mask=np.triu(np.ones((3, 3), dtype=bool), 1))
    np.testing.assert_array_equal(causal_out, mask_out)
    assert (np.triu(causal_weights, 1) == 0).all()


@pytest.mark.parametrize("build, error, words", [
    (lambda: rs.MultiHeadAttention(10, 3), rs.InvalidArgumentError,
     ["embed_dim 10", "num_heads 3"]),
    (lambda: rs.MultiHeadAttention(8, 4, num_kv_heads=3), rs.InvalidArgumentError,
     ["num_heads 4", "num_kv_heads 3"]),
    (lambda: rs.MultiHeadAttention(0, 1), rs.InvalidArgumentError, ["embed_dim", "0"]),
])
def test_bad_module_arguments(build, error, words):
    with pytest.raises(error) as caught:
        build()
    for word in words:
        assert word in str(caught.value)


def test_state_dict_errors_name_the_key():
    mha = rs.MultiHeadAttention(4, 2)
    state = mha.state_dict()
    with pytest.raises(rs.InvalidArgumentError, match=r"missing keys \['out_proj.bias'\]"):
        mha.load_state_dict({k: v for k, v in state.items() if k != "out_proj.bias"})
    with pytest.raises(rs.InvalidArgumentError, match=r"unexpected keys \['bias_k'\]"):
        mha.load_state_dict({**state, "bias_k": np.zeros((1, 1, 4))})
    with pytest.raises(rs.ShapeError, match=r"'in_proj_weight' has shape \(4, 4\).*\(12, 4\)"):
        mha.load_state_dict({**state, "in_proj_weight": np.zeros((4, 4))})


@pytest.mark.parametrize("call, error, words", [
    (lambda m, x: m(x[..., :3], x, x), rs.ShapeError, ["query has 3 features", "embed_dim is 4"]),
    (lambda m, x: m(x, x[:, :2], x), rs.ShapeError, ["batch and sequence dims"]),
    (lambda m, x: m(x, x, x, attn_mask=np.ones((2, 2), bool)), rs.ShapeError,
     ["attn_mask", "(3, 3)"]),
    (lambda m, x: m(x, x, x, key_padding_mask=np.ones(3, bool)), rs.ShapeError,
     ["key_padding_mask", "(2, 3)"]),
    (lambda m, x: m(x, x, x, engine="gpu"), rs.InvalidArgumentError, ["engine", "gpu"]),
    (lambda m, x: m(x[0], x, x), rs.ShapeError, ["all be batched"]),
])
def test_bad_call_arguments(call, error, words):
    mha = rs.MultiHeadAttention(4, 2)
    x = np.ones((2, 3, 4))
    with pytest.raises(error) as caught:
        call(mha, x)
    for word in words:
        assert word in str(caught.value)


def test_kdim_mismatch_is_named():
    mha = rs.MultiHeadAttention(4, 2, kdim=3, vdim=5)
    with pytest.raises(rs.ShapeError, match="key has 4 features but the module's kdim is 3"):
        mha(np.ones((2, 4)), np.ones((2, 4)), np.ones((2, 5)))


@pytest.mark.parametrize("config", [dict(embed_dim=4, num_heads=2),
                                    dict(embed_dim=4, num_heads=2, kdim=3, vdim=2,
                                         add_bias_kv=True, add_zero_attn=True),
                                    dict(embed_dim=4, num_heads=4, num_kv_heads=2)])
@pytest.mark.parametrize("engine", ["messages", "matrix"])
def test_module_gradients_equal_finite_differences(config, engine):
    rng = np.random.default_rng(0)
    mha = rs.MultiHeadAttention(**config, seed=1)
    mha.load_state_dict({name: rng.normal(size=value.shape)
                         for name, value in mha.state_dict().items()})
    query = rng.normal(size=(2, 3, mha.embed_dim))
    key, value = rng.normal(size=(2, 4, mha.kdim)), rng.normal(size=(2, 4, mha.vdim))
    d_output = rng.normal(size=(2, 3, mha.embed_dim))
    grads = mha.gradients(query, key, value, d_output, is_causal=False, engine=engine)
    state = mha.state_dict()

    def loss(parameters, inputs):
        mha.load_state_dict(parameters)
        return float((mha(*inputs, engine="matrix")[0] * d_output).sum())

    inputs = {"query": query, "key": key, "value": value}
    for name in list(state) + list(inputs):
        base = state if name in state else inputs
        numeric = np.zeros_like(base[name])
        for index in np.ndindex(numeric.shape):
            for sign in (1, -1):
                changed = {**base, name: base[name].copy()}
                changed[name][index] += sign * 1e-6
                parameters = changed if name in state else state
                arrays = changed if name in inputs else inputs
                numeric[index] += sign * loss(parameters, (arrays["query"], arrays["key"],
                                                           arrays["value"])) / 2e-6
        mha.load_state_dict(state)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-7, err_msg=name)


def test_unbatched_call_keeps_an_unbatched_run():
    mha = rs.MultiHeadAttention(4, 2, seed=1)
    x = np.random.default_rng(0).normal(size=(3, 4))
    _, weights = mha(x, x, x, average_attn_weights=False)
    assert mha.last_run.weights.shape == (2, 3, 3)
    np.testing.assert_array_equal(mha.last_run.weights, weights)
    table = mha.last_run.routing_table(2, head=1)
    assert str(table).startswith("routing table of token #2, head 1\n")
    assert [route.share for route in table.routes] == sorted(weights[1, 2], reverse=True)
    batched = rs.MultiHeadAttention(4, 2, seed=1)
    grads = batched.gradients(x[None], x[None], x[None], np.ones((1, 3, 4)))
    for name, gradient in mha.gradients(x, x, x, np.ones((3, 4))).items():
        expected = grads[name][0] if name in ("query", "key", "value") else grads[name]
        np.testing.assert_array_equal(gradient, expected)


def test_top_k_without_hard_routing_is_refused():
    mha = rs.MultiHeadAttention(4, 2, seed=0)
    x = np.random.default_rng(0).normal(size=(3, 4))
    with pytest.raises(rs.InvalidArgumentError, match='routing="topk"'):
        mha(x, x, x, top_k=2)
