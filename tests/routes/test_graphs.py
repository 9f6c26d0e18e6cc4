"""Token-graph builders and the graph <-> mask conversion."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import routing_sim as rs
from routing_sim.routes import graphs


@given(arrays(bool, st.tuples(st.integers(0, 6), st.integers(0, 6))))
def test_mask_round_trip(mask):
    assert np.array_equal(graphs.to_mask(graphs.from_mask(mask)), mask)
    assert np.array_equal(graphs.to_mask(graphs.from_mask(mask, cross=True)), mask)


def test_edge_direction_is_key_to_query():
    graph = graphs.causal(3)
    assert set(graph.edges()) == {(0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 2)}


def test_cross_graph_numbering_and_labels():
    graph = graphs.complete(2, 3, labels=["q0", "q1"], key_labels=["a", "b", "c"])
    assert graph.graph["n_queries"] == 2
    assert [graph.nodes[n]["side"] for n in graph] == ["query"] * 2 + ["key"] * 3
    assert [graph.nodes[n]["position"] for n in graph] == [0, 1, 0, 1, 2]
    assert graph.nodes[4]["label"] == "c"
    assert graphs.to_mask(graph).all() and graphs.to_mask(graph).shape == (2, 3)


def test_complete_self_graph_has_every_pair():
    assert graphs.to_mask(graphs.complete(4)).sum() == 16


def test_any_networkx_digraph_is_a_route_set():
    graph = nx.DiGraph([(0, 1), (2, 1), (1, 0)])
    graph.add_node(2)
    expected = np.array([[False, True, False], [True, False, True], [False, False, False]])
    np.testing.assert_array_equal(graphs.to_mask(graph), expected)
    run = rs.simulate(np.eye(3), np.eye(3), np.eye(3), graph=graph)
    np.testing.assert_array_equal(run.weights > 0, expected)


@pytest.mark.parametrize("graph, message", [
    (nx.DiGraph([("a", "b")]), "graph nodes must be integers"),
    (nx.DiGraph([(0, 2)]), "numbered 0 .. 1"),
    (nx.Graph([(0, 1)]), "must be a networkx.DiGraph"),
])
def test_bad_graphs(graph, message):
    with pytest.raises(rs.RoutingSimError, match=message):
        graphs.to_mask(graph)


def test_cross_graph_edge_between_two_queries_is_rejected():
    graph = graphs.complete(2, 2)
    graph.add_edge(0, 1)
    with pytest.raises(rs.ShapeError, match="edge 0 -> 1"):
        graphs.to_mask(graph)


def test_labels_must_fit():
    with pytest.raises(rs.ShapeError, match="labels has 2 entries for 3 tokens"):
        graphs.complete(3, labels=["a", "b"])


@pytest.mark.parametrize("n_queries, n_keys", [(5, None), (3, 4)])
def test_reads_builds_the_mask_it_is_given(n_queries, n_keys):
    width = n_queries if n_keys is None else n_keys
    mask = np.random.default_rng(n_queries).random((n_queries, width)) < 0.5
    mask[:, 0] = True
    table = {i: np.flatnonzero(mask[i]).tolist() for i in range(n_queries)}
    graph = rs.graphs.reads(table, n_queries, n_keys)
    np.testing.assert_array_equal(rs.graphs.to_mask(graph), mask)
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(n_queries, 3)), rng.normal(size=(width, 3)), \
        rng.normal(size=(width, 2))
    run = rs.simulate(q, k, v, graph=graph)
    np.testing.assert_allclose(run.output, rs.attention(q, k, v, attn_mask=mask),
                               rtol=1e-12, atol=1e-12)


def test_reads_is_not_the_asks_direction():
    causal = rs.graphs.reads({i: range(i + 1) for i in range(4)}, 4)
    np.testing.assert_array_equal(rs.graphs.to_mask(causal), rs.masks.causal_mask(4, 4))
    asks = nx.DiGraph((i, j) for i in range(4) for j in range(i + 1))   # "i asks j": wrong
    np.testing.assert_array_equal(rs.graphs.to_mask(asks), rs.masks.causal_mask(4, 4).T)


@pytest.mark.parametrize("table, match", [({0: [5]}, "keys in 0 .. 1"),
                                          ({2: [0]}, "queries must be in 0 .. 1"),
                                          ({0: 1}, "must list the key tokens"),
                                          ([(0, 1)], "must map each query")])
def test_reads_rejects_bad_tables(table, match):
    with pytest.raises(rs.InvalidArgumentError, match=match):
        rs.graphs.reads(table, 2)


def test_reads_keeps_labels():
    graph = rs.graphs.reads({0: [1]}, 1, 2, labels=["q"], key_labels=["a", "b"])
    assert [graph.nodes[n].get("label") for n in graph] == ["q", "a", "b"]
    assert list(graph.edges) == [(2, 0)]
