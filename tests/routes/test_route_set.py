"""RouteSet: sparse route sets, their constructors and conversions."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import routing_sim as rs
from routing_sim.routes import graphs
from routing_sim.routes.route_set import batch_head, concat_ranges, from_ranges, key_runs

masks = arrays(bool, st.tuples(st.integers(0, 3), st.integers(0, 7), st.integers(0, 7)))


@given(masks)
def test_mask_round_trip(mask):
    routes = rs.RouteSet.from_mask(mask)
    assert np.array_equal(routes.to_mask(), mask)
    assert len(routes) == int(mask.sum())
    assert np.array_equal(routes.routes_per_query(), mask.sum(axis=-1))
    # Canonical order: by query node, then by key, exactly what np.nonzero gives.
    assert np.array_equal(routes.indices, np.nonzero(mask)[-1])


@given(arrays(bool, st.tuples(st.integers(0, 6), st.integers(0, 6))), st.booleans())
def test_graph_round_trip(mask, cross):
    cross = cross or mask.shape[0] != mask.shape[1]
    graph = graphs.from_mask(mask, cross=cross)
    routes = rs.RouteSet.from_graph(graph)
    assert np.array_equal(routes.to_mask(), mask)
    assert routes.cross == cross
    back = routes.to_networkx()
    assert set(back.edges()) == set(graph.edges())
    assert dict(back.nodes(data=True)) == dict(graph.nodes(data=True))
    assert back.graph == graph.graph


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_mask_mod_is_evaluated_block_by_block(n_queries, n_keys, block_size, seed):
    table = np.random.default_rng(seed).random((2, 3, n_queries, n_keys)) < 0.5
    calls = []

    def mask_mod(b, h, q_idx, kv_idx):
        calls.append(np.broadcast_shapes(q_idx.shape, kv_idx.shape))
        return table[b, h, q_idx, kv_idx]

    routes = rs.RouteSet.from_mask_mod(mask_mod, n_queries, n_keys, batch_shape=(2, 3),
                                       block_size=block_size)
    assert np.array_equal(routes.to_mask(), table)
    assert max(rows for rows, _ in calls) <= block_size


def test_mask_mod_never_sees_a_whole_score_matrix():
    seen = []

    def window(b, h, q_idx, kv_idx):
        seen.append(np.broadcast_shapes(q_idx.shape, kv_idx.shape))
        return (q_idx - kv_idx >= 0) & (q_idx - kv_idx < 4)

    routes = rs.RouteSet.from_mask_mod(window, 5_000, 5_000, block_size=512)
    assert len(routes) == 4 * 5_000 - 6
    assert max(a * b for a, b in seen) <= 2**20


def test_full_sets_keep_indices_implicit():
    routes = rs.RouteSet.complete(3, 4, (2,))
    assert routes.full and routes._indices is None
    assert routes.indices.tolist() == [0, 1, 2, 3] * 6
    assert rs.RouteSet.from_mask(np.ones((2, 2), bool)).full


def test_broadcast_and_select():
    one = rs.RouteSet.from_mask(np.array([[True, False], [True, True]]))
    many = one.broadcast_to((2, 3))
    assert np.array_equal(many.to_mask(), np.broadcast_to(one.to_mask(), (2, 3, 2, 2)))
    keep = np.arange(len(many)) % 2 == 0
    expected = many.to_mask().copy()
    expected.reshape(-1)[np.flatnonzero(expected.reshape(-1))[~keep]] = False
    assert np.array_equal(many.select(keep).to_mask(), expected)


@given(st.integers(1, 8), st.integers(1, 12), st.integers(1, 3), st.integers(1, 4),
       st.integers(0, 2**32 - 1))
def test_ranges_give_their_runs_of_keys(n_queries, n_keys, n_ranges, groups, seed):
    """A route set built from ranges knows its runs: those key_runs finds key by key,
    ranges that touch joined in one, in every group it is broadcast to."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, n_keys + 1, size=(n_queries, 2 * n_ranges)), axis=1)
    starts, stops = cuts[:, 0::2], cuts[:, 1::2]                      # ascending, disjoint
    stops[:, :-1] = np.where(rng.random((n_queries, n_ranges - 1)) < 0.5, starts[:, 1:],
                             stops[:, :-1])                            # some touch the next
    routes = from_ranges(n_queries, n_keys, starts, stops)
    for each in (routes, routes.broadcast_to((groups,))):
        if each.full:
            assert each.key_runs is None
            continue
        expected = key_runs(each.indptr, each.indices)
        assert [part.tolist() for part in each.key_runs] == [part.tolist() for part in expected]


@given(st.lists(st.tuples(st.integers(-5, 40), st.integers(0, 6)), max_size=12),
       st.sampled_from([np.int32, np.int64]))
def test_concat_ranges_is_the_ranges_one_after_another(ranges, dtype):
    starts = np.array([start for start, _ in ranges], dtype=np.int64)
    stops = np.array([start + length for start, length in ranges], dtype=np.int64)
    expected = [key for start, stop in zip(starts, stops) for key in range(start, stop)]
    joined = concat_ranges(starts, stops, dtype)
    assert joined.tolist() == expected
    assert joined.dtype == dtype


def test_batch_head_convention():
    assert [x.tolist() for x in batch_head(np.arange(1), ())] == [[0], [0]]
    assert [x.tolist() for x in batch_head(np.arange(3), (3,))] == [[0, 0, 0], [0, 1, 2]]
    batch, head = batch_head(np.arange(12), (2, 2, 3))
    assert batch.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert head.tolist() == [0, 1, 2] * 4


@pytest.mark.parametrize("call, message", [
    (lambda: rs.RouteSet([0, 2], [1, 0], 1, 2), "strictly ascending"),
    (lambda: rs.RouteSet([0, 1], [5], 1, 2), r"lie in 0 \.\. 1"),
    (lambda: rs.RouteSet([0, 3], [0, 1], 1, 2), "routes indptr counts"),
    (lambda: rs.RouteSet([1, 1], [], 1, 2), "indptr must be"),
    (lambda: rs.RouteSet.from_mask(np.ones(3)), "mask must be a bool array"),
    (lambda: rs.RouteSet.from_mask_mod(lambda b, h, q, kv: q - kv, 2, 2), "must return a bool"),
    (lambda: rs.RouteSet.from_mask_mod(lambda b, h, q, kv: np.ones(3, bool), 2, 2),
     "does not broadcast"),
    (lambda: rs.RouteSet.from_mask_mod(None, 2, 2), "callable mask_mod"),
    (lambda: rs.RouteSet.complete(2, 2).to_networkx(group=1), "group must be"),
    (lambda: rs.RouteSet.from_graph(nx.DiGraph([("a", "b")])), "graph nodes must be integers"),
])
def test_errors(call, message):
    with pytest.raises(rs.RoutingSimError, match=message):
        call()
