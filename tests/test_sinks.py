"""Attention sinks (``sinks=``): one logit per head in every row's softmax denominator.

The oracle here is written in the test: the sink as one more score column, a plain
softmax over the row, the column dropped (gpt-oss's ``eager_attention_forward``). Exact
mode is checked against mpmath, gradients against torch autograd.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.exact_row import exact_row


def concatenated(query, key, value, sinks, allowed, scale=None, keep=None, p=0.0):
    """``(output, weights, sink shares)``: softmax over [scores, sink], sink column dropped.

    ``query`` (..., H, L, E), ``key``/``value`` (..., H, S, ·) (GQA already repeated),
    ``allowed`` bool broadcastable to (..., H, L, S), ``sinks`` (H,).
    """
    scale = 1 / np.sqrt(query.shape[-1]) if scale is None else scale
    scores = np.where(allowed, query @ np.swapaxes(key, -1, -2) * scale, -np.inf)
    column = np.broadcast_to(np.asarray(sinks)[:, None, None], (*scores.shape[:-1], 1))
    row = np.concatenate([scores, column], axis=-1)                    # (..., L, S + 1)
    row = np.exp(row - row.max(axis=-1, keepdims=True))
    row /= row.sum(axis=-1, keepdims=True)
    weights, sink_shares = row[..., :-1], row[..., -1]
    pulled = weights if keep is None else weights * keep / (1 - p)
    return pulled @ value, weights, sink_shares


def relative(actual, expected):
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300))


@st.composite
def sink_problems(draw, max_len: int = 6):
    """Inputs (B, H, L, E) with GQA key/value heads, a mask that may empty rows, sinks."""
    batch, kv_heads = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    heads = kv_heads * draw(st.integers(1, 2))
    n_queries, n_keys = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    dim, value_dim = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = draw(st.sampled_from([1.0, 4.0]))
    query = rng.normal(size=(batch, heads, n_queries, dim)) * size
    key = rng.normal(size=(batch, kv_heads, n_keys, dim)) * size
    value = rng.normal(size=(batch, kv_heads, n_keys, value_dim))
    sinks = rng.normal(size=heads) * draw(st.sampled_from([0.5, 3.0, 30.0]))
    allowed = rng.random((n_queries, n_keys)) < draw(st.sampled_from([0.5, 0.8, 1.0]))
    return query, key, value, sinks, allowed


def repeated(key, value, heads):
    group = heads // key.shape[-3]
    return np.repeat(key, group, axis=-3), np.repeat(value, group, axis=-3)


# ---------------------------------------------------------------- matrix form


@given(sink_problems())
def test_attention_equals_the_sink_as_one_more_column(problem):
    query, key, value, sinks, allowed = problem
    output, weights, sink_shares = concatenated(query, *repeated(key, value, len(sinks)),
                                                sinks, allowed)
    out, w = rs.attention(query, key, value, attn_mask=allowed, enable_gqa=True, sinks=sinks,
                          return_weights=True)
    np.testing.assert_allclose(out, output, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(w, weights, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(w.sum(axis=-1) + sink_shares, 1.0, rtol=1e-14)


@given(sink_problems())
def test_sparse_route_set_equals_the_dense_mask(problem):
    query, key, value, sinks, allowed = problem
    routes = rs.RouteSet.from_mask(allowed)
    dense = rs.attention(query, key, value, attn_mask=allowed, enable_gqa=True, sinks=sinks)
    sparse = rs.attention(query, key, value, graph=routes, enable_gqa=True, sinks=sinks)
    np.testing.assert_allclose(sparse, dense, rtol=1e-12, atol=1e-14)


def test_an_empty_row_gives_the_sink_its_whole_budget():
    rng = np.random.default_rng(0)
    query, key, value = rng.normal(size=(3, 2, 3, 4))
    allowed = np.array([[False, False, False], [True, False, False], [True, True, True]])
    out, weights = rs.attention(query, key, value, attn_mask=allowed, sinks=[0.5, -2.0],
                                return_weights=True)
    assert not out[:, 0].any() and not weights[:, 0].any()
    run = rs.simulate(query, key, value, attn_mask=allowed, sinks=[0.5, -2.0])
    assert run.routing_table(0, head=1).sink == 1.0
    assert not run.output[:, 0].any()
    nan = rs.attention(query, key, value, attn_mask=allowed, sinks=[0.5, -2.0],
                       empty_rows="nan")
    assert np.isnan(nan[:, 0]).all() and np.isfinite(nan[:, 1:]).all()
    with pytest.raises(rs.EmptyRowError):
        rs.attention(query, key, value, attn_mask=allowed, sinks=[0.5, -2.0],
                     empty_rows="error")


def test_one_sink_for_every_head_and_inputs_without_heads():
    rng = np.random.default_rng(1)
    query, key, value = rng.normal(size=(3, 2, 3, 4, 5))
    shared = rs.attention(query, key, value, sinks=[0.7])
    np.testing.assert_array_equal(shared, rs.attention(query, key, value, sinks=[0.7] * 3))
    flat = rs.attention(query[0, 0], key[0, 0], value[0, 0], sinks=np.array([0.7]))
    np.testing.assert_array_equal(flat, shared[0, 0])


@pytest.mark.parametrize("sinks, error, words", [
    (np.zeros(3), rs.ShapeError, "sinks must have shape (2,)"),
    (np.zeros((2, 1)), rs.ShapeError, "got shape (2, 1)"),
    (0.5, rs.ShapeError, "got shape ()"),
    (np.array([0.0, np.inf]), rs.InvalidArgumentError, "sinks holds inf at index 1"),
    (np.array(["a", "b"]), rs.DTypeError, "sinks must hold real numbers"),
])
@pytest.mark.parametrize("entry", ["attention", "simulate", "attention_backward"])
def test_bad_sinks_are_refused_naming_the_argument(sinks, error, words, entry):
    query = key = value = np.ones((2, 3, 4))
    extra = (np.ones((2, 3, 4)),) if entry == "attention_backward" else ()
    with pytest.raises(error) as caught:
        getattr(rs, entry)(query, key, value, *extra, sinks=sinks)
    assert words in str(caught.value)


def test_inputs_without_a_head_dim_take_one_sink():
    with pytest.raises(rs.ShapeError, match="the inputs have no head dim"):
        rs.attention(np.ones((3, 4)), np.ones((3, 4)), np.ones((3, 4)), sinks=[1.0, 2.0])


def test_the_sink_logit_is_not_scaled():
    query, key, value = np.ones((1, 1, 2)), np.ones((1, 1, 2)), np.ones((1, 1, 1))
    # score q·k·scale = 2 · 0.5 = 1 = the sink: each takes half.
    out, weights = rs.attention(query, key, value, scale=0.5, sinks=[1.0], return_weights=True)
    assert weights.item() == 0.5 and out.item() == 0.5


# ---------------------------------------------------------------- exact mode


def correctly_rounded(query, key, value, sink, scale):
    """One row's output in mpmath at 200 digits, then rounded once to float64."""
    with mpmath.workdps(200):
        exact = [Fraction(float(scale)) * sum(Fraction(q) * Fraction(k)
                                              for q, k in zip(query.tolist(), row))
                 for row in key.tolist()]
        scores = [mpmath.mpf(s.numerator) / s.denominator for s in exact]
        top = max([*scores, mpmath.mpf(sink)])
        weights = [mpmath.exp(s - top) for s in scores]
        total = mpmath.fsum(weights) + mpmath.exp(mpmath.mpf(sink) - top)
        return [float(mpmath.fsum(w * mpmath.mpf(v[c]) for w, v in zip(weights, value.tolist()))
                      / total) for c in range(value.shape[1])]


@given(st.integers(0, 2**32 - 1), st.sampled_from([1.0, 30.0]))
def test_exact_mode_rounds_the_output_with_the_sink_once(seed, size):
    rng = np.random.default_rng(seed)
    query, key = rng.normal(size=(2, 4, 3)) * size
    value = rng.normal(size=(4, 2))
    sink = float(rng.normal() * size)
    out = rs.attention(query, key, value, sinks=[sink], numerics="exact")
    for i in range(4):
        assert out[i].tolist() == correctly_rounded(query[i], key, value, sink, 1 / np.sqrt(3))


def test_the_integer_fallback_takes_the_sink():
    keys, query, values = np.array([[1.0], [2.0]]), np.array([0.5]), np.array([[3.0], [-1.0]])
    shares, output = exact_row(keys, query, 1.0, None, values, None, sink=0.75)
    with mpmath.workdps(100):
        e = [mpmath.exp(s - 1) for s in (0.5, 1.0, 0.75)]
        total = mpmath.fsum(e)
        assert shares.tolist() == [float(x / total) for x in e]
        assert output.tolist() == [float((3 * e[0] - e[1]) / total)]


@pytest.mark.parametrize("size", [1.0, 1e10])          # 1e10: scores past what the
def test_exact_simulation_is_bit_identical_to_exact_attention(size):  # dds can decide
    rng = np.random.default_rng(2)
    query, key, value = rng.normal(size=(3, 2, 2, 6, 3))
    query, key = query * size, key * np.sqrt(size)
    sinks = rng.normal(size=2) * size
    window = rs.patterns.sliding_window(6, 2, sinks=1)
    for options in ({"is_causal": True}, {"graph": window},
                    {"attn_mask": rng.random((6, 6)) < 0.6}):
        expected = rs.attention(query, key, value, sinks=sinks, numerics="exact", **options)
        for network in (rs.Network(), rs.Network(jitter=3.0, reorder=0.5, seed=4)):
            run = rs.simulate(query, key, value, sinks=sinks, numerics="exact",
                              network=network, **options)
            np.testing.assert_array_equal(run.output, expected)
    plain = rs.simulate(query, key, value, sinks=sinks, numerics="exact", engine="plain",
                        is_causal=True)
    np.testing.assert_array_equal(
        plain.output, rs.attention(query, key, value, sinks=sinks, numerics="exact",
                                   is_causal=True))


def test_exact_mode_with_dropout_and_lost_routes():
    rng = np.random.default_rng(3)
    query, key, value = rng.normal(size=(3, 2, 5, 4))
    keep = rng.random((2, 5, 5)) < 0.7
    expected = rs.attention(query, key, value, dropout_p=0.3, dropout_mask=keep,
                            sinks=[0.2, 1.5], numerics="exact")
    run = rs.simulate(query, key, value, dropout_p=0.3, dropout_mask=keep, sinks=[0.2, 1.5],
                      numerics="exact", network=rs.Network(loss=0.2, retries=30, seed=5))
    np.testing.assert_array_equal(run.output, expected)


# ---------------------------------------------------------------- simulation


NETWORKS = [rs.Network(), rs.Network(jitter=2.0, seed=1),
            rs.Network(jitter=1.0, reorder=0.5, bandwidth=64.0, seed=2),
            rs.Network(loss=0.2, duplicate=0.1, retries=40, seed=3)]


@given(sink_problems(), st.sampled_from(["dense", "sparse"]))
def test_simulation_matches_and_is_bit_identical_under_every_schedule(problem, form):
    query, key, value, sinks, allowed = problem
    output, weights, sink_shares = concatenated(query, *repeated(key, value, len(sinks)),
                                                sinks, allowed)
    routes = {"attn_mask": allowed} if form == "dense" else \
        {"graph": rs.RouteSet.from_mask(allowed)}
    first = None
    for network in NETWORKS:
        run = rs.simulate(query, key, value, enable_gqa=True, sinks=sinks, network=network,
                          **routes)
        if first is None:
            first = run
            np.testing.assert_allclose(run.output, output, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(run.weights, weights, rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(run.state.sink_shares.reshape(sink_shares.shape),
                                       sink_shares, rtol=1e-12)
        np.testing.assert_array_equal(run.output, first.output)
        np.testing.assert_array_equal(run.weights, first.weights)
        np.testing.assert_array_equal(run.state.sink_shares, first.state.sink_shares)


def test_sparse_tiles_take_the_sink():
    rng = np.random.default_rng(4)
    n = 96
    query, key, value = rng.normal(size=(3, 2, n, 8))
    window = rs.patterns.sliding_window(n, 8, sinks=2)
    sinks = np.array([0.3, 2.0])
    runs = [rs.simulate(query, key, value, graph=window, sinks=sinks, network=network)
            for network in NETWORKS[:3]]
    assert runs[0].state.tiles is not None                             # the tile path
    allowed = rs.attention(np.eye(n), np.eye(n), np.eye(n), graph=window,
                           return_weights=True)[1] > 0
    output, _, sink_shares = concatenated(query, key, value, sinks, allowed)
    np.testing.assert_allclose(runs[0].output, output, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(runs[0].state.sink_shares.reshape(2, n), sink_shares, rtol=1e-12)
    for run in runs[1:]:
        np.testing.assert_array_equal(run.output, runs[0].output)


@pytest.mark.parametrize("options", [{"is_causal": True},
                                     {"graph": rs.patterns.sliding_window(7, 3, sinks=1)}])
def test_online_softmax_starts_from_the_sink(options):
    rng = np.random.default_rng(5)
    query, key, value = rng.normal(size=(3, 2, 7, 4))
    sinks = np.array([4.0, -1.0])
    two_phase = rs.simulate(query, key, value, sinks=sinks, **options)
    for network in NETWORKS[:3]:
        online = rs.simulate(query, key, value, sinks=sinks, softmax="online",
                             network=network, **options)
        np.testing.assert_allclose(online.output, two_phase.output, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(online.weights, two_phase.weights, rtol=1e-12, atol=1e-300)


def test_plain_engine_takes_the_sink():
    rng = np.random.default_rng(6)
    query, key, value = rng.normal(size=(3, 2, 5, 4))
    sinks = np.array([1.0, -0.5])
    network = rs.Network(jitter=0.5, seed=7)
    plain = rs.simulate(query, key, value, is_causal=True, sinks=sinks, engine="plain",
                        network=network)
    fast = rs.simulate(query, key, value, is_causal=True, sinks=sinks, network=network)
    np.testing.assert_allclose(plain.output, fast.output, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(plain.state.sink_shares, fast.state.sink_shares, rtol=1e-12)
    assert plain.stats.messages == fast.stats.messages == {kind: 30 for kind in
                                                           ("QUERY", "SCORE", "PULL", "VALUE")}


def test_hard_routing_softmax_runs_over_the_chosen_routes_and_the_sink():
    rng = np.random.default_rng(7)
    query, key, value = rng.normal(size=(3, 6, 4))
    run = rs.simulate(query, key, value, routing="topk", top_k=2, sinks=[0.4])
    chosen = run.weights > 0
    assert (chosen.sum(axis=-1) == 2).all()
    expected = rs.attention(query, key, value, attn_mask=chosen, sinks=[0.4])
    np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-15)


def test_degraded_rows_renormalise_over_what_arrived_and_the_sink():
    rng = np.random.default_rng(8)
    query, key, value = rng.normal(size=(3, 6, 4))
    run = rs.simulate(query, key, value, sinks=[0.1],
                      network=rs.Network(loss=0.4, retries=1, on_missing="degrade", seed=2))
    assert run.dropped
    arrived = run.weights > 0
    expected, _, sink_shares = concatenated(query[None], key[None], value[None], [0.1],
                                            arrived[None])
    np.testing.assert_allclose(run.output, expected[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(run.state.sink_shares, sink_shares[0], rtol=1e-12)


def test_routing_table_shows_the_sinks_share():
    rng = np.random.default_rng(9)
    query, key, value = rng.normal(size=(3, 2, 4, 4))
    run = rs.simulate(query, key, value, is_causal=True, sinks=[2.0, -1.0],
                      labels=["a", "b", "c", "d"])
    table = run.routing_table("c", head=0)
    _, weights, sink_shares = concatenated(query, key, value, [2.0, -1.0],
                                           np.tril(np.ones((4, 4), bool)))
    assert table.sink == pytest.approx(sink_shares[0, 2], rel=1e-12)
    assert table.sink_logit == 2.0
    assert sum(route.share for route in table.routes) + table.sink == pytest.approx(1, 1e-12)
    share = sink_shares[0, 2]
    assert str(table).splitlines()[4:] == [
        f"  sink:    {share:.2f} ({100 * share:5.1f}%)  logit +2.000   pulls no value (budget "
        "that goes nowhere)", "  3 routes, 12 messages, output complete at t=4.000"]
    assert rs.simulate(query, key, value).routing_table(1, head=0).sink is None
    shares = run.route_weights()
    np.testing.assert_array_equal(run.weights[shares.group, shares.query, shares.key],
                                  shares.share)


def test_float32_stays_float32():
    rng = np.random.default_rng(10)
    query, key, value = rng.normal(size=(3, 2, 5, 4)).astype(np.float32)
    sinks = np.array([0.5, 1.0], dtype=np.float64)
    run = rs.simulate(query, key, value, is_causal=True, sinks=sinks)
    expected, _, _ = concatenated(*(x.astype(np.float64) for x in (query, key, value)),
                                  sinks.astype(np.float32).astype(np.float64),
                                  np.tril(np.ones((5, 5), bool)))
    assert run.output.dtype == np.float32 and run.state.sink_shares.dtype == np.float32
    np.testing.assert_allclose(run.output, expected, rtol=1e-5, atol=1e-6)
    grads = run.backward(np.ones_like(run.output))
    assert grads.sinks.dtype == np.float32 and grads.sinks.shape == (2,)


def test_decoder_steps_see_the_sink_of_their_head():
    rng = np.random.default_rng(11)
    query, key, value = rng.normal(size=(3, 2, 5, 4))
    decoder = rs.Decoder(sinks=[0.5, -0.5])
    rows = [decoder.step(query[:, t], key[:, t], value[:, t]).output for t in range(5)]
    expected = rs.attention(query, key, value, is_causal=True, sinks=[0.5, -0.5])
    np.testing.assert_allclose(np.stack(rows, axis=-2), expected, rtol=1e-12)


# ---------------------------------------------------------------- gradients


def torch_gradients(query, key, value, sinks, allowed, d_output, scale=None, keep=None,
                    p=0.0, softcap=None):
    """Gradients of sum(output * d_output) by torch autograd, the sink as a column."""
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(x, requires_grad=True) for x in (query, key, value, sinks)]
    q, k, v, s = tensors
    group = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~torch.tensor(np.broadcast_to(allowed, scores.shape)),
                                -torch.inf)
    column = s.reshape(-1, 1, 1).expand(*scores.shape[:-1], 1)
    weights = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)[..., :-1]
    if keep is not None:
        weights = weights * torch.tensor(keep) / (1 - p)
    (weights @ v * torch.tensor(d_output)).sum().backward()
    return [t.grad.numpy() for t in tensors]


def assert_gradients_close(actual, expected):
    for name, a, b in zip(("query", "key", "value", "sinks"), actual, expected):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)


@given(sink_problems(), st.booleans())
def test_gradients_equal_torch_autograd(problem, dropout):
    query, key, value, sinks, allowed = problem
    rng = np.random.default_rng(0)
    d_output = rng.normal(size=(*query.shape[:-1], value.shape[-1]))
    keep = rng.random((*query.shape[:-1], key.shape[-2])) < 0.7 if dropout else None
    options = {"dropout_p": 0.25, "dropout_mask": keep} if dropout else {}
    expected = torch_gradients(query, key, value, sinks, allowed, d_output, keep=keep,
                               p=0.25 if dropout else 0.0)
    matrix = rs.attention_backward(query, key, value, d_output, attn_mask=allowed,
                                   enable_gqa=True, sinks=sinks, **options)
    assert len(matrix) == 4
    assert_gradients_close(matrix, expected)
    sparse = rs.attention_backward(query, key, value, d_output,
                                   graph=rs.RouteSet.from_mask(allowed), enable_gqa=True,
                                   sinks=sinks, **options)
    assert_gradients_close(sparse, expected)
    run = rs.simulate(query, key, value, attn_mask=allowed, enable_gqa=True, sinks=sinks,
                      **options)
    grads = run.backward(d_output)
    assert_gradients_close((grads.query, grads.key, grads.value, grads.sinks), expected)


def test_gradients_through_a_score_mod_and_a_shared_sink():
    rng = np.random.default_rng(12)
    query, key, value = rng.normal(size=(3, 2, 3, 5, 4)) * 2
    d_output = rng.normal(size=query.shape)
    causal = np.tril(np.ones((5, 5), bool))
    expected = torch_gradients(query, key, value, np.array([0.3] * 3), causal, d_output,
                               softcap=1.5)
    expected[3] = expected[3].sum(keepdims=True)                       # one shared logit
    grads = rs.attention_backward(query, key, value, d_output, is_causal=True,
                                  score_mod=rs.mods.softcap(1.5), sinks=[0.3])
    assert_gradients_close(grads, expected)
    run = rs.simulate(query, key, value, is_causal=True, score_mod=rs.mods.softcap(1.5),
                      sinks=[0.3])
    back = run.backward(d_output)
    assert_gradients_close((back.query, back.key, back.value, back.sinks), expected)


@pytest.mark.parametrize("numerics, softmax", [("float", "online"), ("exact", "two_phase")])
def test_backward_of_online_and_exact_runs(numerics, softmax):
    rng = np.random.default_rng(13)
    query, key, value = rng.normal(size=(3, 2, 6, 4))
    d_output = rng.normal(size=query.shape)
    expected = torch_gradients(query, key, value, np.array([1.0, -1.0]),
                               np.tril(np.ones((6, 6), bool)), d_output)
    grads = rs.simulate(query, key, value, is_causal=True, sinks=[1.0, -1.0],
                        numerics=numerics, softmax=softmax).backward(d_output)
    assert_gradients_close((grads.query, grads.key, grads.value, grads.sinks), expected)


def test_tiled_backward_is_bit_identical_under_every_schedule():
    rng = np.random.default_rng(14)
    n = 96
    query, key, value = rng.normal(size=(3, 2, n, 8))
    d_output = rng.normal(size=query.shape)
    window = rs.patterns.sliding_window(n, 8, sinks=2)
    keep = rng.random((2, n, n)) < 0.8
    expected = rs.attention_backward(query, key, value, d_output, graph=window,
                                     sinks=[0.5, -0.5], dropout_p=0.2, dropout_mask=keep)
    first = None
    for network in NETWORKS[:3]:
        run = rs.simulate(query, key, value, graph=window, sinks=[0.5, -0.5], dropout_p=0.2,
                          dropout_mask=keep, network=network)
        assert run.state.tiles is not None
        grads = run.backward(d_output)
        assert_gradients_close((grads.query, grads.key, grads.value, grads.sinks), expected)
        if first is None:
            first = grads
        np.testing.assert_array_equal(grads.sinks, first.sinks)
        np.testing.assert_array_equal(grads.query, first.query)


def test_without_sinks_nothing_changes():
    rng = np.random.default_rng(15)
    query, key, value = rng.normal(size=(3, 4, 3))
    assert len(rs.attention_backward(query, key, value, np.ones((4, 3)))) == 3
    run = rs.simulate(query, key, value)
    assert run.backward(np.ones((4, 3))).sinks is None and run.state.sink_shares is None


def test_replay_page_and_notebook_table_show_the_sink(tmp_path):
    rng = np.random.default_rng(16)
    query, key, value = rng.normal(size=(3, 2, 4, 4))
    run = rs.simulate(query, key, value, is_causal=True, sinks=[2.0, -1.0], trace="full")
    text = run.to_html(tmp_path / "run.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="replay-data">(.*?)'
                                r'</script>', text, re.DOTALL).group(1))
    _, _, sink_shares = concatenated(query, key, value, [2.0, -1.0],
                                     np.tril(np.ones((4, 4), bool)))
    assert [head["sinkLogit"] for head in data["heads"]] == [2.0, -1.0]
    np.testing.assert_allclose([head["sinks"] for head in data["heads"]], sink_shares,
                               rtol=1e-12)
    table = run.routing_table(3, head=1)
    assert ("<tr><td><i>sink</i></td>" in table._repr_html_()
            and f"{table.sink:.4f} ({100 * table.sink:.1f}%)</td><td>-1.000</td>"
            in table._repr_html_())


def test_verdict_compares_with_the_sinks():
    rng = np.random.default_rng(17)
    query, key, value = rng.normal(size=(3, 2, 5, 4)) * 30            # past the ±100 contract
    run = rs.simulate(query, key, value, is_causal=True, sinks=[40.0, -3.0])
    with_sinks = rs.verify.verdict(run.output, run.weights, query, key, value, is_causal=True,
                                   sinks=[40.0, -3.0])
    without = rs.verify.verdict(run.output, run.weights, query, key, value, is_causal=True)
    assert with_sinks.within_tolerance and not without.within_tolerance
