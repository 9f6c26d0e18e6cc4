"""``rs.attention_with_kvcache`` (reference/kvcache.py) against flash_attn_with_kvcache's
published definition, written here as FlashAttention's test writes it: the dense keys of
each sequence, the mask from its docstring, then a softmax (no routing_sim inside)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.errors import DTypeError, InvalidArgumentError, ShapeError


def rotate(x, cos, sin, positions, interleaved):
    """FlashAttention's apply_rotary_emb: ``x (T, heads, D)`` turned by table rows
    ``positions (T,)``; features past ``rotary_dim`` unchanged."""
    half = cos.shape[1]
    c, s = cos[positions][:, None, :], sin[positions][:, None, :]     # (T, 1, R/2)
    first = slice(0, 2 * half, 2) if interleaved else slice(0, half)
    second = slice(1, 2 * half, 2) if interleaved else slice(half, 2 * half)
    out = x.copy()
    out[..., first] = x[..., first] * c - x[..., second] * s
    out[..., second] = x[..., first] * s + x[..., second] * c
    return out


def flash_reference(case):
    """(out (B, Lq, H, Dv), lse (B, H, Lq), k_cache, v_cache after the append)."""
    q, k_cache, v_cache = case["q"], case["k_cache"].copy(), case["v_cache"].copy()
    k, v, table = case["k"], case["v"], case["block_table"]
    n_batch, n_queries, heads, _ = q.shape
    kv_heads = k_cache.shape[2]
    seqlens = np.broadcast_to(case["cache_seqlens"], (n_batch,))
    leftpad = np.zeros(n_batch, int) if case["cache_leftpad"] is None else case["cache_leftpad"]
    rows = np.arange(n_batch) if case["cache_batch_idx"] is None else case["cache_batch_idx"]
    cos, sin, interleaved = case["rotary_cos"], case["rotary_sin"], case["rotary_interleaved"]
    left, right = case["window_size"]
    local = (left, right) != (-1, -1)
    causal = case["causal"]
    if causal:
        right = 0
    n_new = 0 if k is None else k.shape[1]
    scale = case["softmax_scale"] or q.shape[-1] ** -0.5

    def where(b, s):                                     # storage index of slot s
        return (rows[b], s) if table is None else (table[b, s // k_cache.shape[1]],
                                                   s % k_cache.shape[1])

    for b in range(n_batch if n_new else 0):
        new_k = k[b] if cos is None else rotate(
            k[b], cos, sin, seqlens[b] + np.arange(n_new), interleaved)
        for t in range(n_new):
            k_cache[where(b, seqlens[b] + t)] = new_k[t]
            v_cache[where(b, seqlens[b] + t)] = v[b, t]
    out = np.zeros((n_batch, n_queries, heads, v_cache.shape[-1]))
    lse = np.full((n_batch, heads, n_queries), -np.inf)
    for b in range(n_batch):
        capacity = k_cache.shape[1] if table is None else table.shape[1] * k_cache.shape[1]
        keys = np.stack([k_cache[where(b, s)] for s in range(capacity)])    # (S, Hkv, D)
        values = np.stack([v_cache[where(b, s)] for s in range(capacity)])
        query = q[b]
        if cos is not None:
            positions = seqlens[b] + (np.arange(n_queries) if causal or local
                                      else np.zeros(n_queries, int))
            query = rotate(query, cos, sin, positions, interleaved)
        j = np.arange(capacity)
        valid = (j >= leftpad[b]) & (j < seqlens[b] + n_new)
        col, n_keys = j - leftpad[b], valid.sum()
        for h in range(heads):
            g = h // (heads // kv_heads)
            for i in range(n_queries):
                p = i + n_keys - n_queries
                allowed = valid.copy()
                if left >= 0:
                    allowed &= col >= p - left
                if right >= 0:
                    allowed &= col <= p + right
                score = keys[:, g] @ query[i, h] * scale                     # (S,)
                if case["softcap"]:
                    score = case["softcap"] * np.tanh(score / case["softcap"])
                slopes = case["alibi_slopes"]
                if slopes is not None:
                    slope = slopes[h] if slopes.ndim == 1 else slopes[b, h]
                    score = score - slope * np.abs(p - col)
                terms = list(score[allowed])
                if case["sinks"] is not None:
                    terms.append(case["sinks"][h])
                if not terms:
                    continue
                top = max(terms)
                weights = np.exp(score[allowed] - top)
                total = np.exp(np.array(terms) - top).sum()
                out[b, i, h] = weights @ values[allowed, g] / total
                lse[b, h, i] = top + np.log(total)
    return out, lse, k_cache, v_cache


@st.composite
def kvcache_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_batch, kv_heads, group = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(
        st.integers(1, 2))
    heads, dim, value_dim = kv_heads * group, draw(st.sampled_from([2, 4, 6])), draw(
        st.integers(1, 3))
    n_queries, n_new = draw(st.integers(1, 4)), draw(st.integers(0, 3))
    paged = draw(st.booleans())
    case = {"block_table": None, "cache_batch_idx": None}
    if paged:
        page_size = draw(st.integers(1, 3))
        max_blocks = draw(st.integers(max(1, -(-n_new // page_size)), 4))
        n_pages = n_batch * max_blocks + draw(st.integers(0, 3))
        capacity, storage = page_size * max_blocks, (n_pages, page_size)
        # Pages shared between sequences when nothing is appended to them.
        case["block_table"] = (rng.integers(0, n_pages, (n_batch, max_blocks)) if n_new == 0
                               else rng.permutation(n_pages)[:n_batch * max_blocks]
                               .reshape(n_batch, max_blocks))
    else:
        capacity = draw(st.integers(max(1, n_new), 6))
        rows = n_batch
        if draw(st.booleans()):
            rows += draw(st.integers(0, 2))
            case["cache_batch_idx"] = rng.permutation(rows)[:n_batch]
        storage = (rows, capacity)
    seqlens = rng.integers(0, capacity - n_new + 1, n_batch)
    case.update(
        q=rng.normal(size=(n_batch, n_queries, heads, dim)),
        k_cache=rng.normal(size=(*storage, kv_heads, dim)),
        v_cache=rng.normal(size=(*storage, kv_heads, value_dim)),
        k=rng.normal(size=(n_batch, n_new, kv_heads, dim)) if n_new else None,
        v=rng.normal(size=(n_batch, n_new, kv_heads, value_dim)) if n_new else None,
        cache_seqlens=seqlens if draw(st.booleans()) or len(set(seqlens)) > 1 else
        int(seqlens[0]),
        cache_leftpad=(np.array([rng.integers(0, s + 1) for s in seqlens])
                       if draw(st.booleans()) else None),
        causal=draw(st.booleans()),
        window_size=(draw(st.integers(-1, 4)), draw(st.integers(-1, 4)))
        if draw(st.booleans()) else (-1, -1),
        softcap=draw(st.sampled_from([0.0, 0.7, 3.0])),
        alibi_slopes=draw(st.sampled_from([None, (heads,), (n_batch, heads)])),
        sinks=rng.normal(size=heads) if draw(st.booleans()) else None,
        softmax_scale=draw(st.sampled_from([None, 0.3])),
        rotary_interleaved=draw(st.booleans()),
        rotary_cos=None, rotary_sin=None,
    )
    if case["alibi_slopes"] is not None:
        case["alibi_slopes"] = rng.random(case["alibi_slopes"]) * 0.3
    if n_new and draw(st.booleans()):
        rotary_dim = draw(st.sampled_from(range(2, dim + 1, 2)))       # partial rotary
        angle = rng.random((capacity + n_queries, rotary_dim // 2)) * 2 * np.pi
        case["rotary_cos"], case["rotary_sin"] = np.cos(angle), np.sin(angle)
    return case


def call(case, **options):
    arguments = {name: value for name, value in case.items() if name not in ("q", "k_cache",
                                                                             "v_cache", "k", "v")}
    return rs.attention_with_kvcache(case["q"], case["k_cache"], case["v_cache"], case["k"],
                                     case["v"], **arguments, **options)


@settings(max_examples=150, deadline=None)
@given(kvcache_cases())
def test_matches_flash_attn_with_kvcache_definition(case):
    expected_out, expected_lse, k_after, v_after = flash_reference(case)
    out, lse = call(case, return_lse=True)
    np.testing.assert_allclose(out, expected_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, expected_lse, rtol=1e-12, atol=1e-13)
    # Appended in place: the values as given, the keys rotated as FlashAttention rotates them.
    np.testing.assert_array_equal(case["v_cache"], v_after)
    np.testing.assert_allclose(case["k_cache"], k_after, rtol=1e-14, atol=1e-15)


def test_return_lse_false_gives_the_output_alone():
    rng = np.random.default_rng(3)
    q, cache = rng.normal(size=(2, 3, 2, 4)), rng.normal(size=(2, 5, 1, 4))
    out = rs.attention_with_kvcache(q, cache, cache, cache_seqlens=[5, 2], causal=True)
    with_lse, _ = rs.attention_with_kvcache(q, cache, cache, cache_seqlens=[5, 2], causal=True,
                                            return_lse=True)
    np.testing.assert_array_equal(out, with_lse)


def test_a_cpu_tensor_cache_is_written_in_place():
    torch = pytest.importorskip("torch")
    k_cache = torch.zeros(1, 4, 1, 2, dtype=torch.float64)
    v_cache = torch.zeros(1, 4, 1, 2, dtype=torch.float64)
    k = torch.tensor([[[[1.0, 2.0]]]], dtype=torch.float64)
    rs.attention_with_kvcache(k, k_cache, v_cache, k, 3 * k, cache_seqlens=2)
    assert k_cache[0, 2, 0].tolist() == [1.0, 2.0] and v_cache[0, 2, 0].tolist() == [3.0, 6.0]
    assert not k_cache[0, 3].any()


def test_an_empty_sequence_gives_zeros_and_minus_infinity():
    rng = np.random.default_rng(4)
    q, cache = rng.normal(size=(2, 1, 1, 2)), rng.normal(size=(2, 3, 1, 2))
    out, lse = rs.attention_with_kvcache(q, cache, cache, cache_seqlens=[0, 3],
                                         return_lse=True)
    assert not out[0].any() and lse[0, 0, 0] == -np.inf and np.isfinite(lse[1]).all()


def errors_case():
    rng = np.random.default_rng(5)
    return dict(q=rng.normal(size=(2, 1, 2, 4)), k_cache=rng.normal(size=(2, 3, 1, 4)),
                v_cache=rng.normal(size=(2, 3, 1, 4)), k=rng.normal(size=(2, 1, 1, 4)),
                v=rng.normal(size=(2, 1, 1, 4)), pages=rng.normal(size=(3, 2, 1, 4)))


@pytest.mark.parametrize("change, error, match", [
    (dict(cache_seqlens=[3, 1]), InvalidArgumentError, r"cache_seqlens\[0\] = 3 with 1 new"),
    (dict(cache_seqlens=[-1, 1]), InvalidArgumentError, r"cache_seqlens\[0\] = -1"),
    (dict(cache_seqlens=[1.0, 1.0]), DTypeError, "cache_seqlens must hold integers"),
    (dict(cache_seqlens=[1, 1, 1]), ShapeError, r"cache_seqlens must have shape \(2,\)"),
    (dict(cache_leftpad=[2, 0]), InvalidArgumentError, r"cache_leftpad\[0\] = 2"),
    (dict(cache_batch_idx=[0, 2]), InvalidArgumentError, "cache_batch_idx points past"),
    (dict(q="3d"), ShapeError, "q must be 4-D"),
    (dict(k="heads"), ShapeError, "k must have shape"),
    (dict(k="float32"), DTypeError, "k has dtype float32 but k_cache holds float64"),
    (dict(k=None), InvalidArgumentError, "k and v come together"),
    (dict(k_cache="heads"), ShapeError, "q's 2 heads must be a multiple"),
    (dict(rotary_cos=np.ones((4, 2))), InvalidArgumentError, "rotary_cos and rotary_sin"),
    (dict(rotary_cos=np.ones((2, 2)), rotary_sin=np.zeros((2, 2))), InvalidArgumentError,
     "the new keys' slots"),
    (dict(sinks=[1.0, 2.0, 3.0]), ShapeError, "sinks must have shape"),
    (dict(alibi_slopes=[1.0, 2.0, 3.0]), ShapeError, "alibi_slopes of shape"),
])
def test_bad_arguments_are_refused_by_name_before_the_cache_changes(change, error, match):
    case = errors_case()
    arrays = {name: case[name] for name in ("q", "k_cache", "v_cache", "k", "v")}
    if change.get("q") == "3d":
        arrays["q"] = case["q"][0]
    elif change.get("k") == "heads":
        arrays["k"] = np.zeros((2, 1, 2, 4))
    elif change.get("k") == "float32":
        arrays["k"] = case["k"].astype(np.float32)
    elif change.get("k_cache") == "heads":
        arrays["k_cache"] = arrays["v_cache"] = np.zeros((2, 3, 3, 4))
    elif "k" in change:
        arrays["k"] = None
    options = {name: value for name, value in change.items() if name not in arrays}
    options.setdefault("cache_seqlens", [1, 2])
    before = arrays["k_cache"].copy()
    with pytest.raises(error, match=match):
        rs.attention_with_kvcache(*arrays.values(), **options)
    np.testing.assert_array_equal(arrays["k_cache"], before)


@pytest.mark.parametrize("table, seqlens, match", [
    ([[0, 3], [1, 2]], [2, 0], r"block_table\[0\] points past the cache: entry 1 is 3"),
    ([[0, 1], [-1, 2]], [1, 0], r"block_table\[1\] points past the cache: entry 0 is -1"),
    ([[0, 1], [1, 2]], [4, 0], r"cache_seqlens\[0\] = 4 with 1 new keys is beyond the cache"),
])
def test_a_paged_cache_refuses_pages_and_lengths_past_it(table, seqlens, match):
    case = errors_case()
    with pytest.raises(InvalidArgumentError, match=match):
        rs.attention_with_kvcache(case["q"], case["pages"], case["pages"], case["k"], case["v"],
                                  cache_seqlens=seqlens, block_table=table)


def test_pages_past_a_sequence_are_never_read():
    case = errors_case()
    out = rs.attention_with_kvcache(case["q"], case["pages"], case["pages"],
                                    cache_seqlens=[2, 1], block_table=[[0, 99], [2, -7]])
    assert np.isfinite(out).all()


def test_cache_batch_idx_and_block_table_do_not_combine():
    case = errors_case()
    with pytest.raises(InvalidArgumentError, match="cache_batch_idx and block_table"):
        rs.attention_with_kvcache(case["q"], case["pages"], case["pages"], cache_seqlens=1,
                                  cache_batch_idx=[0, 1], block_table=[[0], [1]])
