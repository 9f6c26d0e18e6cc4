"""decode_step: one query a group, the same bits as simulate, or a refusal to guess."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.engines.fast.decode import decode_step

MASKS = ("none", "all", "padding", "window", "gap", "empty", "bias", "float padding",
         "float gap")


def step_inputs(seed: int, batch: int, kv_heads: int, share: int, n_keys: int, dim: int,
                value_dim: int, dtype: type, mask: str) -> tuple:
    """Query (B, H, 1, E), key and value (B, Hkv, S, ·), and a mask of kind ``mask``."""
    rng = np.random.default_rng(seed)
    heads = kv_heads * share
    query = rng.normal(size=(batch, heads, 1, dim)).astype(dtype)
    key = rng.normal(size=(batch, kv_heads, n_keys, dim)).astype(dtype)
    value = rng.normal(size=(batch, kv_heads, n_keys, value_dim)).astype(dtype)
    column = np.arange(n_keys)                                         # (S,)
    start = rng.integers(0, n_keys, size=(batch, 1, 1, 1))             # (B, 1, 1, 1)
    if mask == "none":
        return query, key, value, None
    if mask == "all":
        return query, key, value, np.ones((batch, 1, 1, n_keys), dtype=bool)
    if mask == "padding":                                              # left padding per row
        return query, key, value, column >= start
    if mask == "window":                                               # a run inside the cache
        return query, key, value, (column >= start) & (column < start + 1 + n_keys // 3)
    if mask == "gap":                                                  # one key blocked inside
        return query, key, value, column != n_keys // 2
    if mask == "empty":                                                # a row with no key at all
        allowed = np.broadcast_to(column >= start, (batch, heads, 1, n_keys)).copy()
        allowed[0, -1] = False
        return query, key, value, allowed
    bias = rng.normal(size=(batch, heads, 1, n_keys))
    if mask == "float padding":
        bias = np.where(column >= start, bias, -np.inf)
    elif mask == "float gap":                                          # a bias, one key blocked
        bias = np.where(column != n_keys // 2, bias, -np.inf)
    return query, key, value, bias


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 2), kv_heads=st.integers(1, 3),
       share=st.integers(1, 3), n_keys=st.integers(1, 70), dim=st.integers(1, 24),
       value_dim=st.integers(1, 24), dtype=st.sampled_from([np.float64, np.float32]),
       mask=st.sampled_from(MASKS), scale=st.none() | st.floats(0.05, 4.0),
       sinks=st.booleans(), cap=st.none() | st.floats(0.5, 50.0))
def test_same_bits_as_simulate(seed, batch, kv_heads, share, n_keys, dim, value_dim, dtype,
                               mask, scale, sinks, cap):
    query, key, value, attn_mask = step_inputs(seed, batch, kv_heads, share, n_keys, dim,
                                               value_dim, dtype, mask)
    logits = np.linspace(-1.0, 1.0, kv_heads * share) if sinks else None
    score_mod = None if cap is None else rs.mods.softcap(cap)
    ours = decode_step(query, key, value, attn_mask, scale, True, logits, score_mod)
    run = rs.simulate(query, key, value, attn_mask, scale=scale, enable_gqa=True,
                      sinks=logits, score_mod=score_mod)
    assert ours is not None and ours.dtype == run.output.dtype
    assert np.array_equal(ours, run.output[:, :, 0])


def test_an_empty_row_is_zero_as_in_simulate():
    query, key, value, mask = step_inputs(3, 2, 2, 2, 9, 5, 4, np.float64, "empty")
    ours = decode_step(query, key, value, mask, enable_gqa=True)
    assert ours is not None and not ours[0, -1].any()
    expected = rs.simulate(query, key, value, mask, enable_gqa=True).output[:, :, 0]
    assert np.array_equal(ours, expected)


@pytest.mark.parametrize("change", ["two queries", "nan query", "no gqa", "heads", "dtypes",
                                    "float16", "integers", "no keys", "nan mask", "int mask",
                                    "mask shape"])
def test_declines_what_simulate_must_refuse_or_do(change):
    query, key, value, mask = step_inputs(0, 1, 2, 2, 6, 4, 4, np.float64, "padding")
    gqa = True
    if change == "two queries":
        query = np.concatenate([query, query], axis=2)
    elif change == "nan query":
        query[0, 1, 0, 2] = np.nan
    elif change == "no gqa":
        gqa = False
    elif change == "heads":
        query = query[:, :3]
    elif change == "dtypes":
        key = key.astype(np.float32)
    elif change == "float16":                        # simulate refuses it (DTypeError)
        query, key, value = (x.astype(np.float16) for x in (query, key, value))
    elif change == "integers":                       # simulate computes them in float64
        query, key, value = (np.round(x * 3).astype(np.int64) for x in (query, key, value))
    elif change == "no keys":
        key, value, mask = key[:, :, :0], value[:, :, :0], None
    elif change == "nan mask":
        mask = np.where(np.arange(6) == 2, np.nan, 0.0)
    elif change == "int mask":
        mask = mask.astype(np.int64)
    else:
        mask = mask[..., :5]
    assert decode_step(query, key, value, mask, enable_gqa=gqa) is None


def test_declines_an_overflow_which_simulate_reports():
    query, key, value, _ = step_inputs(0, 1, 1, 1, 4, 2, 2, np.float64, "none")
    query[...], key[...] = 1e200, 1e200              # q · k overflows
    assert decode_step(query, key, value) is None
    with pytest.raises(rs.NumericalError):
        rs.simulate(query, key, value)


def test_huge_finite_inputs_are_handed_to_simulate_without_a_warning():
    """Their sum overflows: the step declines (simulate decides) and says nothing."""
    query, key, value, _ = step_inputs(0, 1, 1, 1, 4, 2, 2, np.float64, "none")
    value[...] = 1.5e308
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_step(query, key, value) is None


def test_a_float_mask_of_zeros_and_ones_warns_as_in_simulate():
    query, key, value, _ = step_inputs(0, 1, 1, 1, 4, 2, 2, np.float64, "none")
    with pytest.warns(rs.MaskWarning):
        decode_step(query, key, value, np.array([0.0, 1.0, 1.0, 0.0]))
