"""The sparse matrix reference: a segment softmax over a RouteSet equals dense attention."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.inputs import mods
from routing_sim.reference import segments
from routing_sim.routes import patterns
from routing_sim.routes import restrictions as sparse
from tests.conftest import attention_inputs, route_masks

RTOL, ATOL = 1e-12, 1e-13


def close(ours, expected) -> None:
    np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=ATOL)


@given(attention_inputs(), st.data())
def test_route_set_equals_the_same_mask(inputs, data):
    q, k, v = inputs
    n_queries, n_keys = q.shape[0], k.shape[0]
    options = data.draw(route_masks(n_queries, n_keys))
    dense = rs.attention(q, k, v, return_weights=True, **options)
    # The route set carries only the pattern; attn_mask / is_causal apply on top of it.
    pattern = np.random.default_rng(data.draw(st.integers(0, 99))).random(
        (n_queries, n_keys)) < 0.8
    with_pattern = dict(options)
    if "attn_mask" in options and options["attn_mask"].dtype == bool:
        with_pattern["attn_mask"] = options["attn_mask"] & pattern
        graph_options = {**options}
    elif "attn_mask" in options:
        with_pattern["attn_mask"] = np.where(pattern, options["attn_mask"], -np.inf)
        graph_options = {**options}
    else:
        with_pattern["attn_mask"] = pattern if not options.get("is_causal") else \
            pattern & rs.masks.causal_mask(n_queries, n_keys, options.get("causal_alignment",
                                                                           "top_left"))
        with_pattern.pop("is_causal", None)
        graph_options = {**options}
    expected = rs.attention(q, k, v, return_weights=True, **with_pattern)
    got = rs.attention(q, k, v, graph=rs.RouteSet.from_mask(pattern), return_weights=True,
                       **graph_options)
    for ours, theirs in zip(got, expected):
        close(ours, theirs)
    full = rs.attention(q, k, v, graph=rs.RouteSet.complete(n_queries, n_keys),
                        return_weights=True, **options)
    for ours, theirs in zip(full, dense):
        close(ours, theirs)


@given(attention_inputs(max_len=7), st.integers(0, 2**32 - 1), st.sampled_from(["zero", "nan"]))
def test_mask_mod_and_score_mod_match_the_dense_form(inputs, seed, empty_rows):
    q, k, v = inputs
    rng = np.random.default_rng(seed)
    heads = 2
    q, k, v = (np.stack([x, x[::-1]]) for x in (q, k, v))               # (H, T, E)
    table = rng.random((heads, q.shape[1], k.shape[1])) < 0.6
    mask_mod = lambda b, h, q_idx, kv_idx: table[h, q_idx, kv_idx]     # noqa: E731
    score_mod = mods.softcap(float(rng.uniform(0.5, 5)))
    expected = rs.attention(q, k, v, attn_mask=table, empty_rows=empty_rows,
                            score_mod=score_mod)
    got = rs.attention(q, k, v, mask_mod=mask_mod, score_mod=score_mod, empty_rows=empty_rows)
    close(got, expected)
    # score_mod changes the scaled score, before any additive bias, as in Gemma 2.
    cap = score_mod.cap
    raw = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    modded = np.where(table, cap * np.tanh(raw / cap), -np.inf)
    has = table.any(-1, keepdims=True)
    weights = np.exp(modded - np.where(has, modded.max(-1, keepdims=True, initial=0), 0))
    manual = weights / np.where(has, weights.sum(-1, keepdims=True), 1) @ v
    if empty_rows == "nan":
        manual = np.where(has, manual, np.nan)
    close(got, manual)


@given(attention_inputs(max_len=6, magnitude=0.05), st.integers(0, 2**32 - 1))
def test_backward_matches_the_dense_form(inputs, seed):
    q, k, v = inputs
    rng = np.random.default_rng(seed)
    mask = rng.random((q.shape[0], k.shape[0])) < 0.7
    d_out = rng.normal(size=(q.shape[0], v.shape[1]))
    for score_mod in (None, mods.softcap(2.0), mods.relative_bias(rng.normal(size=5))):
        expected = rs.attention_backward(q, k, v, d_out, attn_mask=mask, score_mod=score_mod)
        got = rs.attention_backward(q, k, v, d_out, graph=rs.RouteSet.from_mask(mask),
                                    score_mod=score_mod)
        for ours, theirs in zip(got, expected):
            close(ours, theirs)


def test_backward_with_the_same_dropout_routes():
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 2, 7, 4))
    mask, keep = rng.random((7, 7)) < 0.7, rng.random((2, 7, 7)) < 0.8
    d_out = rng.normal(size=(2, 7, 4))
    for score_mod in (None, mods.softcap(1.5), mods.alibi([0.3, 0.7])):
        expected = rs.attention_backward(q, k, v, d_out, attn_mask=mask, score_mod=score_mod,
                                         dropout_p=0.25, dropout_mask=keep)
        got = rs.attention_backward(q, k, v, d_out, graph=rs.RouteSet.from_mask(mask),
                                    score_mod=score_mod, dropout_p=0.25, dropout_mask=keep)
        for ours, theirs in zip(got, expected):
            close(ours, theirs)


def test_exact_mode_is_bit_identical_to_the_dense_exact_mode():
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(3, 2, 6, 3))
    mask = rng.random((2, 6, 6)) < 0.6
    np.testing.assert_array_equal(
        rs.attention(q, k, v, graph=rs.RouteSet.from_mask(mask), numerics="exact"),
        rs.attention(q, k, v, attn_mask=mask, numerics="exact"))


def test_sparse_reference_never_builds_an_l_by_s_array(monkeypatch):
    monkeypatch.setattr(segments, "CHUNK_ROUTES", 1000)
    n = 50_000
    rng = np.random.default_rng(5)
    q, k, v = rng.normal(size=(3, n, 4))
    routes = patterns.sliding_window(n, 3, sinks=1)
    out = rs.attention(q, k, v, graph=routes)
    rows = np.array([0, 1, 2, 777, n - 1])
    for i in rows:                                                     # independent: banded
        keys = sorted({0, *range(max(i - 2, 0), i + 1)})
        scores = k[keys] @ q[i] / 2.0
        weights = np.exp(scores - scores.max())
        close(out[i], weights / weights.sum() @ v[keys])


def test_dense_weights_have_a_size_limit(monkeypatch):
    monkeypatch.setattr(sparse, "DENSE_LIMIT", 10)
    monkeypatch.setattr(rs.reference.matrix, "DENSE_LIMIT", 10)
    q = np.ones((4, 2))
    with pytest.raises(rs.InvalidArgumentError, match="route_weights"):
        rs.attention(q, q, q, graph=patterns.sliding_window(4, 2), return_weights=True)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"graph": rs.RouteSet.complete(3, 3), "score_mod": mods.softcap(1.0), "numerics": "exact"},
     rs.InvalidArgumentError, "numerics='exact'"),
    ({"mask_mod": 3}, rs.InvalidArgumentError, "mask_mod must be a function"),
    ({"score_mod": "x"}, rs.InvalidArgumentError, "score_mod must be a function"),
    ({"graph": patterns.sliding_window(5, 2)}, rs.ShapeError, "graph has 5 query tokens"),
    ({"graph": 3}, rs.InvalidArgumentError, "graph must be"),
    ({"mask_mod": lambda b, h, q, kv: q + kv}, rs.DTypeError, "must return a bool"),
    ({"score_mod": lambda s, b, h, q, kv: s * np.inf, "graph": rs.RouteSet.complete(3, 3)},
     rs.InvalidArgumentError, "score_mod <lambda> returned (inf|nan) .* -inf to remove"),
    ({"score_mod": lambda s, b, h, q, kv: np.ones(2)}, rs.ShapeError, "elementwise"),
    ({"graph": patterns.sliding_window(3, 2), "empty_rows": "error",
      "attn_mask": np.zeros((3, 3), bool)}, rs.EmptyRowError, "query token 0"),
    ({"graph": patterns.sliding_window(3, 2), "alibi_slopes": [1.0, 2.0]}, rs.ShapeError,
     r"shape \(2,\) but the inputs have no head dim"),
])
def test_errors(kwargs, error, message):
    q = np.eye(3)
    with pytest.raises(error, match=message):
        rs.attention(q, q, q, **kwargs)


def test_plain_score_mod_has_no_gradient():
    q = np.eye(3)
    with pytest.raises(rs.InvalidArgumentError, match="needs the derivative of score_mod"):
        rs.attention_backward(q, q, q, np.ones((3, 3)), score_mod=lambda s, b, h, i, j: s)


def test_sparse_reference_memory_grows_with_routes_not_l_times_s():
    # 200,000 tokens in a window of 4 + 1 sink: an L x S bool mask alone would be 40 GB.
    n, dim = 200_000, 4
    rng = np.random.default_rng(6)
    q, k, v = rng.normal(size=(3, n, dim))
    routes = patterns.sliding_window(n, 4, sinks=1)
    tracemalloc.start()
    try:
        rs.attention(q, k, v, graph=routes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Budget: the output and a few per-route arrays, plus one chunk of gathered rows.
    budget = 4 * n * dim * 8 + 64 * len(routes) + 4 * segments.CHUNK_ROUTES * dim * 8
    assert peak < budget < n * n // 100
