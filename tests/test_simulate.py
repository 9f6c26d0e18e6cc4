"""The headline: simulate() equals matrix attention, under every network schedule."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from tests.conftest import attention_inputs, route_masks


@st.composite
def networks(draw):
    return rs.Network(latency=draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
                      jitter=draw(st.sampled_from([0.0, 0.1, 2.0, 10.0])),
                      seed=draw(st.integers(0, 2**31)))


@st.composite
def token_graphs(draw, n_queries: int, n_keys: int):
    """A random route set as a graph, some edges with their own latency."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    graph = rs.graphs.from_mask(rng.random((n_queries, n_keys)) < 0.6,
                                cross=draw(st.booleans()) or n_queries != n_keys)
    for j, i in list(graph.edges()):
        if rng.random() < 0.3:
            graph.edges[j, i]["latency"] = float(rng.uniform(0, 5))
    return graph


@given(st.data())
def test_simulation_equals_matrix_attention(data):
    query, key, value = data.draw(attention_inputs())
    masks = data.draw(route_masks(len(query), len(key)))
    graph = data.draw(st.none() | token_graphs(len(query), len(key)))
    network = data.draw(networks())
    run = rs.simulate(query, key, value, graph=graph, network=network, **masks)
    expected, expected_weights = rs.attention(
        query, key, value, return_weights=True,
        **_with_graph(masks, graph))
    output_tol, weight_tol = rs.verify.tolerance(query, key, value, **_with_graph(masks, graph))
    assert run.output.shape == expected.shape
    assert (np.abs(run.output - expected) <= output_tol).all()
    assert (np.abs(run.weights - expected_weights) <= weight_tol).all()


def _with_graph(masks: dict, graph: nx.DiGraph | None) -> dict:
    """The same route set for attention(), which takes masks only."""
    if graph is None:
        return masks
    allowed = rs.graphs.to_mask(graph)
    if masks.get("is_causal"):
        allowed &= rs.masks.causal_mask(*allowed.shape, masks.get("causal_alignment", "top_left"))
        return {"attn_mask": allowed}
    mask = masks.get("attn_mask")
    if mask is None:
        return {"attn_mask": allowed}
    if mask.dtype == bool:
        return {"attn_mask": mask & allowed}
    return {"attn_mask": np.where(allowed, mask, -np.inf)}


@given(st.data())
def test_outputs_bit_identical_across_schedules(data):
    query, key, value = data.draw(attention_inputs(magnitude=30.0))
    masks = data.draw(route_masks(len(query), len(key)))
    first = rs.simulate(query, key, value, network=data.draw(networks()), **masks)
    second = rs.simulate(query, key, value, network=data.draw(networks()),
                         delivery=data.draw(st.sampled_from(["window", "instant", "per_message"])),
                         **masks)
    np.testing.assert_array_equal(first.output, second.output)
    np.testing.assert_array_equal(first.weights, second.weights)


@given(attention_inputs(magnitude=1.0, dtype=np.float32), networks())
def test_float32_in_float32_out(inputs, network):
    query, key, value = inputs
    run = rs.simulate(query, key, value, network=network)
    assert run.output.dtype == np.float32 and run.weights.dtype == np.float32
    expected = rs.attention(*(x.astype(np.float64) for x in inputs))
    # 1e-5 while scores stay within ±100; the float32 derived bound beyond.
    output_tol, _ = rs.verify.tolerance(query, key, value)
    assert (np.abs(run.output - expected) <= output_tol).all()


def test_float32_contract_at_moderate_scores():
    rng = np.random.default_rng(8)
    query, key, value = (rng.normal(size=(3, 16, 8)) * 2).astype(np.float32)
    run = rs.simulate(query, key, value)
    expected = rs.attention(*(x.astype(np.float64) for x in (query, key, value)))
    np.testing.assert_allclose(run.output, expected, rtol=1e-5, atol=1e-5)


def test_huge_scores_stay_finite_and_match():
    rng = np.random.default_rng(11)
    query, key, value = rng.normal(size=(3, 5, 4)) * 1e3        # scores ~ 1e6
    run = rs.simulate(query, key, value, network=rs.Network(jitter=1.0))
    assert np.isfinite(run.output).all()
    expected = rs.attention(query, key, value)
    output_tol, _ = rs.verify.tolerance(query, key, value)
    assert (np.abs(run.output - expected) <= output_tol).all()


def test_four_messages_per_route():
    rng = np.random.default_rng(0)
    query, key, value = rng.normal(size=(3, 6, 4))
    run = rs.simulate(query, key, value, is_causal=True)
    routes = 6 * 7 // 2
    assert run.stats.messages == {"QUERY": routes, "SCORE": routes, "PULL": routes,
                                  "VALUE": routes}
    assert run.stats.bytes == {"QUERY": routes * 32, "SCORE": routes * 8, "PULL": routes * 8,
                               "VALUE": routes * 32}


def test_constant_latency_timeline():
    # QUERY at 0 arrives at 1, SCORE at 2, the barrier fires, PULL at 3, VALUE at 4.
    query = key = value = np.eye(2)
    run = rs.simulate(query, key, value, network=rs.Network(latency=1.0), trace="full")
    log = sorted(zip(run.trace.kind.tolist(), run.trace.sent.tolist(),
                     run.trace.arrive.tolist()))
    assert log == [(0, 0.0, 1.0)] * 4 + [(1, 1.0, 2.0)] * 4 + [(2, 2.0, 3.0)] * 4 + \
        [(3, 3.0, 4.0)] * 4
    assert run.stats.makespan == 4.0


def test_edge_latency_overrides_network_latency():
    graph = rs.graphs.complete(2)
    graph.edges[1, 0]["latency"] = 10.0      # token 0 pulling from token 1 is slow
    run = rs.simulate(np.eye(2), np.eye(2), np.eye(2), graph=graph, trace="full")
    slow = (run.trace.src == 0) & (run.trace.dst == 1) & (run.trace.kind == rs.Kind.QUERY)
    assert run.trace.arrive[slow].tolist() == [10.0]
    assert run.routing_table(0).completed == 40.0
    assert run.routing_table(1).completed == 4.0


def test_graph_and_mask_combine():
    graph = rs.graphs.causal(3)
    mask = np.array([[True, True, True], [False, True, True], [True, True, True]])
    run = rs.simulate(np.eye(3), np.eye(3), np.eye(3), mask, graph=graph)
    expected = mask & np.tril(np.ones((3, 3), dtype=bool))
    np.testing.assert_array_equal(run.weights > 0, expected)


def test_empty_row_policies_in_simulation():
    mask = np.array([[True, False], [False, False]])
    zero = rs.simulate(np.ones((2, 1)), np.ones((2, 1)), np.ones((2, 1)), mask)
    assert zero.output[1].tolist() == [0.0]
    nan = rs.simulate(np.ones((2, 1)), np.ones((2, 1)), np.ones((2, 1)), mask, empty_rows="nan")
    assert np.isnan(nan.output[1]).all() and np.isnan(nan.weights[1]).all()
    with pytest.raises(rs.EmptyRowError, match="query token 1"):
        rs.simulate(np.ones((2, 1)), np.ones((2, 1)), np.ones((2, 1)), mask, empty_rows="error")


def test_no_messages_for_a_token_without_routes():
    mask = np.array([[True, False], [False, False]])
    run = rs.simulate(np.ones((2, 1)), np.ones((2, 1)), np.ones((2, 1)), mask)
    assert run.stats.total_messages == 4


@pytest.mark.parametrize("n_queries, n_keys", [(0, 3), (3, 0), (0, 0)])
def test_empty_sequences(n_queries, n_keys):
    run = rs.simulate(np.zeros((n_queries, 2)), np.zeros((n_keys, 2)), np.ones((n_keys, 5)))
    assert run.output.shape == (n_queries, 5) and not run.output.any()
    assert run.weights.shape == (n_queries, n_keys)
    assert run.stats.total_messages == 0 and run.stats.makespan == 0.0


def test_dropout_drops_pull_and_value_messages():
    rng = np.random.default_rng(4)
    query, key, value = rng.normal(size=(3, 4, 3))
    keep = rng.random((4, 4)) < 0.5
    run = rs.simulate(query, key, value, dropout_p=0.5, dropout_mask=keep)
    expected = rs.attention(query, key, value, dropout_p=0.5, dropout_mask=keep)
    np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-12)
    assert run.stats.messages["QUERY"] == 16 and run.stats.messages["PULL"] == keep.sum()


def test_batched_heads_are_independent_groups():
    rng = np.random.default_rng(5)
    query = rng.normal(size=(2, 3, 4, 5))
    key, value = rng.normal(size=(2, 3, 6, 5)), rng.normal(size=(2, 3, 6, 2))
    run = rs.simulate(query, key, value)
    assert run.output.shape == (2, 3, 4, 2) and run.weights.shape == (2, 3, 4, 6)
    for b in range(2):
        for h in range(3):
            single = rs.simulate(query[b, h], key[b, h], value[b, h])
            np.testing.assert_array_equal(run.output[b, h], single.output)


@given(st.data())
def test_multihead_cross_attention_with_broadcast_masks(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch, heads = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    kv_heads = data.draw(st.sampled_from([h for h in (1, 2, 3) if heads % h == 0]))
    n_queries, n_keys = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    dim, value_dim = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    q = rng.normal(size=(batch, heads, n_queries, dim)) * 3
    k = rng.normal(size=(batch, kv_heads, n_keys, dim)) * 3
    v = rng.normal(size=(batch, kv_heads, n_keys, value_dim))
    mask_shape = data.draw(st.sampled_from([(n_queries, n_keys), (heads, 1, n_keys),
                                            (batch, 1, n_queries, n_keys)]))
    mask = rng.random(mask_shape) < 0.6
    options = dict(attn_mask=mask, enable_gqa=kv_heads != heads,
                   empty_rows=data.draw(st.sampled_from(["zero", "nan"])))
    run = rs.simulate(q, k, v, network=rs.Network(jitter=0.7, seed=3), **options)
    expected, weights = rs.attention(q, k, v, return_weights=True, **options)
    output_tol, weight_tol = rs.verify.tolerance(q, k, v, **options)
    assert run.weights.shape == (batch, heads, n_queries, n_keys)
    np.testing.assert_array_equal(np.isnan(run.output), np.isnan(expected))
    assert (np.nan_to_num(np.abs(run.output - expected)) <= output_tol).all()
    assert (np.nan_to_num(np.abs(run.weights - weights)) <= weight_tol).all()


def test_sliding_window_and_padding_graphs_route_like_their_masks():
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(3, 6, 3))
    for graph in (rs.graphs.sliding_window(6, 3), rs.graphs.padding(6, 4)):
        run = rs.simulate(q, k, v, graph=graph)
        expected = rs.attention(q, k, v, attn_mask=rs.graphs.to_mask(graph))
        np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-12)
    padded = rs.masks.padding_mask([2, 6], 6)
    batch_q = np.stack([q, q])
    run = rs.simulate(batch_q[:, None], batch_q[:, None], np.stack([v, v])[:, None],
                      attn_mask=padded)
    assert (run.weights[0, 0][:, 2:] == 0).all() and (run.weights[1, 0] > 0).all()


@pytest.mark.parametrize("routing", ["softmax", None])
@pytest.mark.parametrize("top_k", [1, 2])
def test_top_k_without_hard_routing_is_refused_not_ignored(routing, top_k):
    q = np.random.default_rng(0).normal(size=(5, 4))
    options = {} if routing is None else {"routing": routing}
    with pytest.raises(rs.InvalidArgumentError, match='routing="topk"'):
        rs.simulate(q, q, q, top_k=top_k, **options)


def test_topk_routing_without_top_k_keeps_the_single_best_route():
    q, k, v = np.random.default_rng(1).normal(size=(3, 5, 4))
    run = rs.simulate(q, k, v, routing="topk")
    best = (q @ k.T).argmax(axis=-1)                                   # (L,)
    np.testing.assert_array_equal(run.output, v[best])
    assert run.stats.messages["PULL"] == 5
    assert np.array_equal(run.weights, rs.simulate(q, k, v, routing="topk", top_k=1).weights)
