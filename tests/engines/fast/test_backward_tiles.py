"""The backward pass's sparse fast path: gradients of tiled runs equal the matrix reference
(``rs.attention_backward``, a segment computation sharing nothing with the simulator), are
the same bits under every schedule, and leave runs that lost a route to the per-node path."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.engines.fast import backward, backward_tiles
from routing_sim.engines.fast.backward_tiles import key_major_order
from routing_sim.inputs import mods
from routing_sim.routes import patterns

RTOL, ATOL = 1e-10, 1e-12
PATTERNS = {                  # sizes at which the forward pass takes the tiles
    "window_sinks": lambda: patterns.sliding_window(64, 6, sinks=2),
    "longformer": lambda: patterns.longformer(48, 6, [0, 20]),
    "bigbird": lambda: patterns.bigbird(64, 4, seed=1),
    "dilated": lambda: patterns.dilated(40, 4, 2),
    "document": lambda: patterns.document([17, 23], causal=True),
    "prefix_lm": lambda: patterns.prefix_lm(40, 9),
}
SCORE_MODS = {
    "none": None,
    "softcap": mods.softcap(1.5),
    "alibi": mods.alibi([0.5, 0.25]),
    "relative": mods.relative_bias(np.random.default_rng(7).normal(size=(2, 9))),
}


def problem(seed: int, n_queries: int, n_keys: int | None = None, heads: int = 2,
            kv_heads: int = 1, dim: int = 8, value_dim: int = 3):
    rng = np.random.default_rng(seed)
    n_keys = n_queries if n_keys is None else n_keys
    q = rng.normal(size=(2, heads, n_queries, dim))
    k = rng.normal(size=(2, kv_heads, n_keys, dim))
    v = rng.normal(size=(2, kv_heads, n_keys, value_dim))
    return q, k, v, rng.normal(size=(2, heads, n_queries, value_dim))


def check(grads, expected) -> None:
    for ours, theirs in zip((grads.query, grads.key, grads.value), expected):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("score_name", sorted(SCORE_MODS))
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_tiled_gradients_equal_attention_backward(tiled, pattern, score_name):
    routes = PATTERNS[pattern]()
    q, k, v, d_output = problem(len(pattern), routes.n_queries)
    options = dict(graph=routes, score_mod=SCORE_MODS[score_name], enable_gqa=True)
    run = rs.simulate(q, k, v, **options)
    grads = run.backward(d_output)
    assert run.state.tiles is not None and len(tiled) == 1         # the fast path ran
    assert tiled[0].transposed is not None                         # on both sides
    check(grads, rs.attention_backward(q, k, v, d_output, **options))


def test_sinks_are_summed_alone_and_dropout_goes_through(tiled):
    routes = PATTERNS["window_sinks"]()
    q, k, v, d_output = problem(1, 64, kv_heads=2)
    keep = np.random.default_rng(2).random((2, 2, 64, 64)) >= 0.3
    options = dict(graph=routes, dropout_p=0.3, dropout_mask=keep, score_mod=mods.softcap(2.0))
    grads = rs.simulate(q, k, v, **options).backward(d_output)
    assert len(tiled) == 1 and len(tiled[0].heavy) == 2 * 2 * 2    # sinks x groups
    check(grads, rs.attention_backward(q, k, v, d_output, **options))


def test_key_side_without_tiles_takes_the_per_node_sums(tiled, monkeypatch):
    """When the key-major tiles would waste too much, dV and dK come node by node."""
    routes = PATTERNS["longformer"]()
    q, k, v, d_output = problem(3, routes.n_queries)
    run = rs.simulate(q, k, v, graph=routes)
    monkeypatch.setattr(backward_tiles.Tiles, "worthwhile", lambda self: False)
    grads = run.backward(d_output)
    assert len(tiled) == 1 and tiled[0].transposed is None
    check(grads, rs.attention_backward(q, k, v, d_output, graph=routes))


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_top_k_takes_the_tiles_both_ways(tiled, pattern, top_k, dropout):
    """Hard routing on a route set: forward and backward on the tiles, equal to the matrix
    form restricted to the routes each query chose (a fixed mask), the same bits with
    jitter."""
    routes = PATTERNS[pattern]()
    q, k, v, d_output = problem(top_k, routes.n_queries, kv_heads=2)
    options: dict = dict(graph=routes, routing="topk", top_k=top_k)
    if dropout:
        keep = np.random.default_rng(top_k).random((2, 2, routes.n_queries, routes.n_keys))
        options.update(dropout_p=0.3, dropout_mask=keep >= 0.3)
    run = rs.simulate(q, k, v, **options)
    grads = run.backward(d_output)
    assert run.state.tiles is not None and len(tiled) == 1         # the fast path ran
    state = run.state
    assert state.chosen is not None
    chosen = np.zeros((2 * 2, routes.n_queries, routes.n_keys), dtype=bool)  # (G, L, S)
    picked = np.flatnonzero(state.chosen)
    chosen[state.routes.group(picked), state.routes.query_token(picked),
           state.routes.key_index[picked]] = True
    fixed = {key: value for key, value in options.items()
             if key not in ("graph", "routing", "top_k")}
    mask = chosen.reshape(2, 2, routes.n_queries, routes.n_keys)
    np.testing.assert_allclose(run.output, rs.attention(q, k, v, mask, **fixed),
                               rtol=RTOL, atol=ATOL)
    check(grads, rs.attention_backward(q, k, v, d_output, mask, **fixed))
    jittered = rs.simulate(q, k, v, network=rs.Network(jitter=1.5, seed=2), **options)
    np.testing.assert_array_equal(jittered.output, run.output)
    again = jittered.backward(d_output)
    for ours, theirs in zip((grads.query, grads.key, grads.value),
                            (again.query, again.key, again.value)):
        np.testing.assert_array_equal(ours, theirs)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 40), window=st.integers(1, 12),
       sinks=st.integers(0, 3), heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]),
       dims=st.sampled_from([(1, 1), (4, 2), (8, 5)]), cross=st.booleans(),
       mod=st.sampled_from(sorted(SCORE_MODS)), dropout=st.booleans(), holes=st.booleans())
def test_gradients_over_shapes(seed, n, window, sinks, heads, dims, cross, mod, dropout,
                               holes):
    """Windows with sinks, cross-attention bands, GQA, score_mods, dropout, and query
    tokens without any route (``holes``: a mask_mod that removes every route of some)."""
    n_keys = n + 7 if cross else n
    if cross:                                        # a band around the query's position
        routes = rs.RouteSet.from_mask_mod(
            lambda b, h, i, j: (np.abs(j - i - 3) < window) | (j < sinks), n, n_keys)
    else:
        routes = patterns.sliding_window(n, window, sinks=sinks)
    q, k, v, d_output = problem(seed, n, n_keys, *heads, *dims)
    options: dict = dict(graph=routes, score_mod=SCORE_MODS[mod], enable_gqa=heads[1] > 1,
                         mask_mod=(lambda b, h, i, j: (i + h) % 5 != 1) if holes else None)
    if dropout:
        rng = np.random.default_rng(seed + 1)
        options.update(dropout_p=0.25, dropout_mask=rng.random((2, heads[0], n, n_keys)) >= 0.25)
    grads = rs.simulate(q, k, v, **options).backward(d_output)
    check(grads, rs.attention_backward(q, k, v, d_output, **options))


@pytest.mark.parametrize("network, delivery", [
    (rs.Network(latency=0.5, jitter=0.9, seed=3), "window"),
    (rs.Network(latency=0.5, jitter=0.9, seed=5), "per_message"),
    (rs.Network(jitter=0.3, seed=6), "instant"),
    (rs.Network(loss=0.2, duplicate=0.2, retries=40, seed=4), "window"),
])
def test_tiled_gradients_are_the_same_bits_under_every_schedule(tiled, network, delivery):
    routes = PATTERNS["window_sinks"]()
    q, k, v, d_output = problem(4, 64)
    options = dict(graph=routes, score_mod=mods.softcap(2.0))
    first = rs.simulate(q, k, v, **options).backward(d_output)
    again = rs.simulate(q, k, v, network=network, delivery=delivery, **options)
    assert not again.dropped                                       # every route came
    second = again.backward(d_output)
    assert len(tiled) == 2
    for ours, theirs in zip((first.query, first.key, first.value, first.score()),
                            (second.query, second.key, second.value, second.score())):
        np.testing.assert_array_equal(ours, theirs)


def test_nodes_that_lost_a_route_redo_their_own_sums(tiled, monkeypatch):
    """Degrade: the tiles compute every gradient, then the nodes at either end of a lost
    route redo theirs per node: a query node's dS and dQ, a key node's dV are the bits the
    per-node path gives on the same forward run; everything matches the same pattern given
    as a dense graph (which never takes the tiles)."""
    routes = patterns.sliding_window(24, 5, sinks=2)
    q, k, v = np.random.default_rng(1).normal(size=(3, 2, 24, 8))
    d_output = np.random.default_rng(2).normal(size=v.shape)
    for seed in (2, 19):                             # a VALUE lost; a SCORE lost (0.02 loss)
        network = rs.Network(loss=0.02, retries=1, on_missing="degrade", seed=seed)
        sparse_run = rs.simulate(q, k, v, graph=routes, network=network)
        dense_run = rs.simulate(q, k, v, graph=routes.to_networkx(), network=network)
        assert sparse_run.state.tiles is not None and sparse_run.dropped
        sparse, dense = sparse_run.backward(d_output), dense_run.backward(d_output)
        for ours, theirs in zip((sparse.query, sparse.key, sparse.value, sparse.score()),
                                (dense.query, dense.key, dense.value, dense.score())):
            np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)
        with monkeypatch.context() as patch:         # the per-node path, same forward run
            patch.setattr(backward, "TiledGradients", lambda *args: None)
            per_node = sparse_run.backward(d_output)
        queries = tuple(zip(*((*d.group, d.query) for d in sparse_run.dropped)))
        keys = tuple(zip(*((*d.group, d.key) for d in sparse_run.dropped)))
        np.testing.assert_array_equal(sparse.score()[queries], per_node.score()[queries])
        np.testing.assert_array_equal(sparse.query[queries], per_node.query[queries])
        np.testing.assert_array_equal(sparse.value[keys], per_node.value[keys])
    assert len(tiled) == 2                           # the sparse runs took the tiles


def test_float32_stays_float32(tiled):
    routes = PATTERNS["longformer"]()
    q, k, v, d_output = (x.astype(np.float32) for x in problem(5, routes.n_queries))
    grads = rs.simulate(q, k, v, graph=routes, enable_gqa=True).backward(d_output)
    assert len(tiled) == 1
    assert {grads.query.dtype, grads.key.dtype, grads.value.dtype} == {np.dtype(np.float32)}
    expected = rs.attention_backward(*(x.astype(np.float64) for x in (q, k, v, d_output)),
                                     graph=routes, enable_gqa=True)
    for ours, theirs in zip((grads.query, grads.key, grads.value), expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@given(st.lists(st.integers(0, 2**18), max_size=200))
def test_key_major_order_is_a_stable_sort(keys):
    key_node = np.array(keys, dtype=np.int64)
    n_nodes = int(key_node.max(initial=0)) + 1
    expected = np.lexsort((np.arange(len(key_node)), key_node))
    np.testing.assert_array_equal(key_major_order(key_node, n_nodes), expected)
