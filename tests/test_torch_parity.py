"""Optional: routing_sim against PyTorch itself (skipped when torch is not installed).

Install torch (``pip install torch``) to run these; the core never imports it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import routing_sim as rs

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = ATOL = 1e-12


def close(ours, theirs) -> None:
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


def tensors(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal", "bottom_right",
                                       "gqa", "empty_rows"])
def test_sdpa(seed, mask_kind):
    rng = np.random.default_rng(seed)
    batch, heads, n_queries, n_keys, dim, value_dim = 2, 4, *rng.integers(1, 9, 2), 8, 5
    kv_heads = 2 if mask_kind == "gqa" else heads
    q = rng.normal(size=(batch, heads, n_queries, dim))
    k = rng.normal(size=(batch, kv_heads, n_keys, dim))
    v = rng.normal(size=(batch, kv_heads, n_keys, value_dim))
    kwargs: dict = {"scale": float(rng.uniform(0.1, 2))}
    if mask_kind == "bool":
        kwargs["attn_mask"] = rng.random((batch, 1, n_queries, n_keys)) < 0.7
    elif mask_kind == "float":
        mask = rng.normal(size=(heads, n_queries, n_keys))
        mask[rng.random(mask.shape) < 0.2] = -np.inf
        kwargs["attn_mask"] = mask
    elif mask_kind == "causal":
        kwargs["is_causal"] = True
    elif mask_kind == "bottom_right":
        kwargs["attn_mask"] = rs.masks.causal_mask(n_queries, n_keys, "bottom_right")
    elif mask_kind == "gqa":
        kwargs["enable_gqa"] = True
    elif mask_kind == "empty_rows":
        mask = rng.random((n_queries, n_keys)) < 0.5
        mask[0] = False
        kwargs["attn_mask"] = mask
    torch_kwargs = {name: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                    for name, value in kwargs.items()}
    expected = F.scaled_dot_product_attention(*tensors(q, k, v), **torch_kwargs)
    close(rs.attention(q, k, v, **kwargs), expected)
    close(rs.simulate(q, k, v, network=rs.Network(jitter=0.5, seed=seed), **kwargs).output,
          expected)


def torch_module(config: dict, seed: int):
    torch.manual_seed(seed)
    module = torch.nn.MultiheadAttention(batch_first=True, dtype=torch.float64, **config)
    with torch.no_grad():       # non-zero biases, so they are really compared
        for name, parameter in module.named_parameters():
            if "bias" in name:
                parameter.normal_()
    return module


CONFIGS = [
    {"embed_dim": 8, "num_heads": 2},
    {"embed_dim": 8, "num_heads": 4, "bias": False},
    {"embed_dim": 6, "num_heads": 3, "kdim": 5, "vdim": 4},
    {"embed_dim": 8, "num_heads": 2, "add_bias_kv": True},
    {"embed_dim": 8, "num_heads": 2, "add_zero_attn": True},
    {"embed_dim": 6, "num_heads": 2, "kdim": 3, "vdim": 7, "add_bias_kv": True,
     "add_zero_attn": True},
]
CALLS = ["plain", "key_padding_mask", "attn_mask_2d", "attn_mask_3d", "float_masks",
         "per_head", "no_weights"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("engine", ["messages", "matrix"])
def test_multihead_attention(config, call, engine):
    seed = CONFIGS.index(config) * 100 + CALLS.index(call)
    rng = np.random.default_rng(seed)
    theirs = torch_module(config, seed)
    ours = rs.MultiHeadAttention(**config)
    ours.load_state_dict(theirs.state_dict())
    batch, n_queries, n_keys = 2, 4, 5
    embed, kdim, vdim = config["embed_dim"], config.get("kdim", config["embed_dim"]), \
        config.get("vdim", config["embed_dim"])
    query = rng.normal(size=(batch, n_queries, embed))
    key, value = rng.normal(size=(batch, n_keys, kdim)), rng.normal(size=(batch, n_keys, vdim))
    kwargs: dict = {}
    if call == "key_padding_mask":
        kwargs["key_padding_mask"] = np.array([[False] * 5, [False, False, False, True, True]])
    elif call == "attn_mask_2d":
        mask = rng.random((n_queries, n_keys)) < 0.3
        mask[:, 0] = False
        kwargs["attn_mask"] = mask
    elif call == "attn_mask_3d":
        mask = rng.random((batch * config["num_heads"], n_queries, n_keys)) < 0.3
        mask[..., 1] = False
        kwargs["attn_mask"] = mask
    elif call == "float_masks":
        kwargs["attn_mask"] = rng.normal(size=(n_queries, n_keys))
        kwargs["key_padding_mask"] = np.array([[0.0, -np.inf, 0.0, 0.0, 0.5]] * 2)
    elif call == "per_head":
        kwargs["average_attn_weights"] = False
    elif call == "no_weights":
        kwargs["need_weights"] = False
    torch_kwargs = {name: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                    for name, value in kwargs.items()}
    expected, expected_weights = theirs(*tensors(query, key, value), **torch_kwargs)
    output, weights = ours(query, key, value, engine=engine, **kwargs)
    close(output, expected)
    if call == "no_weights":
        assert weights is None and expected_weights is None
    else:
        close(weights, expected_weights)


def test_unbatched_and_state_dict_round_trip():
    theirs = torch_module({"embed_dim": 4, "num_heads": 2}, 0)
    ours = rs.MultiHeadAttention(4, 2)
    ours.load_state_dict(theirs.state_dict())
    for name, value in ours.state_dict().items():
        close(value, theirs.state_dict()[name])
    x = np.random.default_rng(1).normal(size=(3, 4))
    expected, expected_weights = theirs(*tensors(x, x, x))
    output, weights = ours(x, x, x)
    close(output, expected)
    close(weights, expected_weights)


def test_fully_masked_row_is_nan_in_torch_with_weights():
    theirs = torch_module({"embed_dim": 4, "num_heads": 1}, 3)
    ours = rs.MultiHeadAttention(4, 1)
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(2).normal(size=(1, 3, 4))
    mask = np.zeros((3, 3), dtype=bool)
    mask[1] = True
    expected, _ = theirs(*tensors(x, x, x), attn_mask=torch.from_numpy(mask))
    output, _ = ours(x, x, x, attn_mask=mask, empty_rows="nan")
    np.testing.assert_array_equal(np.isnan(output), np.isnan(expected.detach().numpy()))
    close(np.nan_to_num(output), np.nan_to_num(expected.detach().numpy()))
    silent, _ = theirs(*tensors(x, x, x), attn_mask=torch.from_numpy(mask), need_weights=False)
    close(ours(x, x, x, attn_mask=mask, need_weights=False)[0], silent)


def test_every_combination_of_extras_loads():
    for bias, bias_kv, zero in itertools.product([True, False], repeat=3):
        config = {"embed_dim": 4, "num_heads": 2, "bias": bias, "add_bias_kv": bias_kv,
                  "add_zero_attn": zero}
        theirs = torch_module(config, 0)
        ours = rs.MultiHeadAttention(**config)
        ours.load_state_dict(theirs.state_dict())
        assert set(ours.state_dict()) == set(theirs.state_dict())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("case", ["mask", "gqa", "cross", "causal"])
def test_sdpa_gradients(seed, case):
    rng = np.random.default_rng(seed + 100)
    heads, kv_heads = (4, 2) if case == "gqa" else (2, 2)
    n_queries, n_keys = (3, 6) if case == "cross" else (5, 5)
    q = rng.normal(size=(2, heads, n_queries, 4))
    k = rng.normal(size=(2, kv_heads, n_keys, 4))
    v = rng.normal(size=(2, kv_heads, n_keys, 3 if case == "cross" else 4))
    kwargs: dict = {}
    if case == "mask":
        kwargs["attn_mask"] = rng.random((n_queries, n_keys)) < 0.7
    elif case == "gqa":
        kwargs["enable_gqa"] = True
    elif case == "causal":
        kwargs["is_causal"] = True
    d_output = rng.normal(size=(2, heads, n_queries, v.shape[-1]))
    leaves = [torch.from_numpy(x.copy()).requires_grad_() for x in (q, k, v)]
    torch_kwargs = {n: torch.from_numpy(x) if isinstance(x, np.ndarray) else x
                    for n, x in kwargs.items()}
    out = F.scaled_dot_product_attention(*leaves, **torch_kwargs)
    out.backward(torch.from_numpy(d_output))
    grads = rs.simulate(q, k, v, network=rs.Network(jitter=1.0, seed=seed), **kwargs
                        ).backward(d_output)
    for ours, leaf in zip((grads.query, grads.key, grads.value), leaves):
        np.testing.assert_allclose(ours, leaf.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("engine", ["messages", "matrix"])
def test_multihead_attention_gradients(config, engine):
    rng = np.random.default_rng(CONFIGS.index(config))
    theirs = torch_module(config, CONFIGS.index(config))
    ours = rs.MultiHeadAttention(**config)
    ours.load_state_dict(theirs.state_dict())
    embed = config["embed_dim"]
    query = rng.normal(size=(2, 4, embed))
    key = rng.normal(size=(2, 5, config.get("kdim", embed)))
    value = rng.normal(size=(2, 5, config.get("vdim", embed)))
    mask = rng.random((4, 5)) < 0.3
    mask[:, 0] = False
    d_output = rng.normal(size=(2, 4, embed))
    leaves = [torch.from_numpy(x.copy()).requires_grad_() for x in (query, key, value)]
    out, _ = theirs(*leaves, attn_mask=torch.from_numpy(mask))
    out.backward(torch.from_numpy(d_output))
    grads = ours.gradients(query, key, value, d_output, attn_mask=mask, engine=engine)
    for name, parameter in theirs.named_parameters():
        np.testing.assert_allclose(grads[name], parameter.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    for name, leaf in zip(("query", "key", "value"), leaves):
        np.testing.assert_allclose(grads[name], leaf.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
