"""The sparse simulator: simulate / Run / backward / MHA on a RouteSet, mask_mod and score_mod.

Every equivalence check is against the matrix reference (``rs.attention``, whose sparse
path is a segment softmax sharing no arithmetic with the simulator) or, for the route
counts, against masks built independently from the definitions.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.errors import InvalidArgumentError
from routing_sim.inputs import mods
from routing_sim.routes import patterns

RTOL, ATOL = 1e-12, 1e-13
N = 24

PATTERNS = {
    "window": lambda: patterns.sliding_window(N, 5, sinks=2),
    "longformer": lambda: patterns.longformer(N, 6, [0, 7]),
    "bigbird": lambda: patterns.bigbird(N, 4, seed=1),
    "dilated": lambda: patterns.dilated(N, 4, 2),
    "document": lambda: patterns.document([9, 15], causal=True),
    "prefix_lm": lambda: patterns.prefix_lm(N, 7),
}
SCORE_MODS = {
    "none": None,
    "softcap": mods.softcap(1.5),
    "alibi": mods.alibi([0.5, 0.25, 0.125]),
    "relative": mods.relative_bias(np.random.default_rng(7).normal(size=(3, 9))),
}
MASK_MODS = {
    "none": None,
    "per_head": lambda b, h, q, kv: (q + kv + h + b) % 3 != 0,
    "causal": lambda b, h, q, kv: kv <= q,
}


def inputs(seed: int, shape=(2, 3), n: int = N, dim: int = 8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, *shape, n, dim))


def close(ours, expected) -> None:
    np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=ATOL)


def independent_count(pattern_mask: np.ndarray, mask_mod, shape) -> int:
    """Routes of the pattern (a dense mask here) where the mask_mod also allows them."""
    full = np.broadcast_to(pattern_mask, (*shape, N, N))
    if mask_mod is None:
        return int(full.sum())
    b, h = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    allowed = mask_mod(b[..., None, None], h[..., None, None], np.arange(N)[:, None],
                       np.arange(N)[None, :])
    return int((full & allowed).sum())


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("score_name", sorted(SCORE_MODS))
@pytest.mark.parametrize("mask_name", sorted(MASK_MODS))
def test_simulate_on_patterns_equals_attention(pattern, score_name, mask_name):
    routes = PATTERNS[pattern]()
    q, k, v = inputs(len(pattern) + len(score_name))
    options = dict(graph=routes, score_mod=SCORE_MODS[score_name], mask_mod=MASK_MODS[mask_name])
    run = rs.simulate(q, k, v, **options)
    close(run.output, rs.attention(q, k, v, **options))
    assert run.stats.routes == independent_count(routes.to_mask(), MASK_MODS[mask_name], (2, 3))
    assert run.stats.messages["QUERY"] == run.stats.routes      # no message on a masked route
    # The same routes given densely: the same weights.
    expected_weights = rs.attention(q, k, v, return_weights=True, **options)[1]
    close(run.weights, expected_weights)


@settings(max_examples=25)
@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(PATTERNS)),
       st.sampled_from(["none", "bool", "float", "causal", "dropout"]))
def test_route_set_combines_with_masks(seed, pattern, extra):
    """A route exists only where the graph, attn_mask, is_causal and dropout all allow it."""
    rng = np.random.default_rng(seed)
    routes = PATTERNS[pattern]()
    q, k, v = inputs(seed % 1000)
    options: dict = {}
    if extra == "bool":
        options["attn_mask"] = rng.random((N, N)) < 0.7
    elif extra == "float":
        options["attn_mask"] = np.where(rng.random((N, N)) < 0.2, -np.inf,
                                        rng.normal(size=(N, N)))
    elif extra == "causal":
        options["is_causal"] = True
    elif extra == "dropout":
        options.update(dropout_p=0.3, dropout_mask=rng.random((2, 3, N, N)) >= 0.3)
    run = rs.simulate(q, k, v, graph=routes, **options)
    close(run.output, rs.attention(q, k, v, graph=routes, **options))
    dense = rs.simulate(q, k, v, graph=routes.to_networkx(), **options)
    close(run.output, dense.output)
    close(run.weights, dense.weights)


def test_schedules_do_not_change_a_bit():
    routes = patterns.longformer(N, 4, [3])
    q, k, v = inputs(5)
    mod = mods.softcap(2.0)
    first = rs.simulate(q, k, v, graph=routes, score_mod=mod)
    assert first.state.tiles is not None                    # the tile path ran
    for network, delivery in ((rs.Network(latency=0.5, jitter=0.9, seed=3), "window"),
                              (rs.Network(latency=0.5, jitter=0.9, seed=5), "per_message"),
                              (rs.Network(jitter=0.3, seed=6), "instant"),
                              (rs.Network(loss=0.2, duplicate=0.2, retries=30, seed=4),
                               "window")):
        again = rs.simulate(q, k, v, graph=routes, score_mod=mod, network=network,
                            delivery=delivery)
        np.testing.assert_array_equal(again.output, first.output)
        np.testing.assert_array_equal(again.route_weights().share, first.route_weights().share)


@pytest.mark.parametrize("heads", [1, 3])
def test_a_route_set_that_knows_its_runs_runs_as_one_that_does_not(heads):
    """from_ranges hands its runs of keys to the tiles and the route counts: the same bits
    and counts as a copy of the set that leaves them to be found key by key."""
    routes = patterns.sliding_window(N, 6, sinks=2)
    bare = rs.RouteSet(routes.indptr, routes.indices, N, N)
    assert routes.key_runs is not None and bare.key_runs is None
    q, k, v = (x[None].repeat(heads, axis=0) for x in inputs(7))
    known, found = (rs.simulate(q, k, v, graph=graph) for graph in (routes, bare))
    assert known.state.tiles is not None                    # the tile path ran
    np.testing.assert_array_equal(known.output, found.output)
    np.testing.assert_array_equal(known.route_weights().share, found.route_weights().share)
    np.testing.assert_array_equal(known.stats.node_bytes, found.stats.node_bytes)


@pytest.mark.parametrize("score_name", ["none", "softcap", "alibi", "relative"])
@pytest.mark.parametrize("pattern", ["window", "bigbird"])
def test_backward_on_route_sets_equals_attention_backward(pattern, score_name):
    routes = PATTERNS[pattern]()
    q, k, v = inputs(11)
    d_output = np.random.default_rng(12).normal(size=v.shape)
    options = dict(graph=routes, score_mod=SCORE_MODS[score_name],
                   mask_mod=MASK_MODS["per_head"])
    grads = rs.simulate(q, k, v, **options).backward(d_output)
    expected = rs.attention_backward(q, k, v, d_output, **options)
    for ours, theirs in zip((grads.query, grads.key, grads.value), expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_score_mod_on_a_dense_run_and_its_backward():
    q, k, v = inputs(2, shape=(3,), n=6)
    mod = mods.softcap(1.0)
    run = rs.simulate(q, k, v, is_causal=True, score_mod=mod)
    close(run.output, rs.attention(q, k, v, is_causal=True, score_mod=mod))
    d_output = np.ones_like(v)
    expected = rs.attention_backward(q, k, v, d_output, is_causal=True, score_mod=mod)
    grads = run.backward(d_output)
    for ours, theirs in zip((grads.query, grads.key, grads.value), expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_plain_score_mod_has_no_backward():
    q, k, v = inputs(3, shape=(), n=5)
    run = rs.simulate(q, k, v, score_mod=lambda s, b, h, i, j: s * 2.0)
    close(run.output, rs.attention(q, k, v, scale=2.0 / np.sqrt(8)))
    with pytest.raises(InvalidArgumentError, match="derivative of score_mod"):
        run.backward(np.ones_like(v))


def test_online_softmax_takes_score_mod_and_route_sets():
    routes = PATTERNS["longformer"]()
    q, k, v = inputs(4)
    options = dict(graph=routes, score_mod=mods.alibi([0.5, 0.25, 0.1]))
    run = rs.simulate(q, k, v, softmax="online", **options)
    close(run.output, rs.attention(q, k, v, **options))


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("dropout_p", [0.0, 0.4])
def test_online_on_a_route_set_shares_the_two_phase_scores_and_shares(name, dropout_p):
    """Both softmax modes score a sparse run on the same fixed tiles: the routing tables
    agree bit for bit under any schedule; the streamed outputs agree to rounding."""
    routes = PATTERNS[name]()
    q, k, v = inputs(11)
    options = dict(graph=routes, score_mod=mods.softcap(3.0), dropout_p=dropout_p, seed=5)
    two_phase = rs.simulate(q, k, v, **options)
    for network in (None, rs.Network(jitter=2.0, loss=0.2, retries=30, seed=1)):
        online = rs.simulate(q, k, v, softmax="online", network=network, **options)
        np.testing.assert_array_equal(online.route_weights().share,
                                      two_phase.route_weights().share)
        close(online.output, two_phase.output)


def test_exact_numerics_on_a_route_set_and_no_score_mod_with_it():
    routes = PATTERNS["dilated"]()
    q, k, v = inputs(6)
    np.testing.assert_array_equal(rs.simulate(q, k, v, graph=routes, numerics="exact").output,
                                  rs.attention(q, k, v, graph=routes, numerics="exact"))
    with pytest.raises(InvalidArgumentError, match="score_mod"):
        rs.simulate(q, k, v, score_mod=mods.softcap(1.0), numerics="exact")


def test_route_weights_in_canonical_order_and_the_weights_limit(monkeypatch, tmp_path):
    routes = patterns.sliding_window(N, 3, sinks=1)
    q, k, v = inputs(8, shape=(2,))
    run = rs.simulate(q, k, v, graph=routes)
    shares = run.route_weights()
    mask = np.broadcast_to(routes.to_mask(), (2, N, N))
    group, query, key = np.nonzero(mask)                    # canonical: group, query, key
    np.testing.assert_array_equal(shares.group, group)
    np.testing.assert_array_equal(shares.query, query)
    np.testing.assert_array_equal(shares.key, key)
    weights = rs.attention(q, k, v, graph=routes, return_weights=True)[1]
    close(shares.share, weights[group, query, key])
    table = run.routing_table(7, head=1)
    assert [route.source for route in sorted(table.routes, key=lambda r: r.source)] == \
        np.flatnonzero(mask[1, 7]).tolist()
    monkeypatch.setattr(rs.run, "WEIGHTS_LIMIT", 10)
    fresh = rs.simulate(q, k, v, graph=routes)
    with pytest.raises(InvalidArgumentError, match=r"run\.route_weights\(\)"):
        _ = fresh.weights
    assert fresh.weights_shape == (2, N, N)
    with pytest.raises(InvalidArgumentError, match="replay page.*WEIGHTS_LIMIT"):
        fresh.to_html(tmp_path / "run.html")
    assert "weights (2, 24, 24)" in repr(fresh)


def test_a_long_sparse_run_never_allocates_l_by_s():
    n, window, dim = 20_000, 8, 4
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, n, dim))
    routes = patterns.sliding_window(n, window)
    padded = np.zeros(n, dtype=bool)
    padded[[5, 17, n - 2]] = True                           # a key padding mask, (S,)
    tracemalloc.start()
    run = rs.simulate(q, k, v, graph=routes, attn_mask=~padded, trace="summary")
    table = run.routing_table(n - 1)
    shares = run.route_weights()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20 < n * n * 8 // 40              # L·S·8 bytes is 3.2 GB
    padded_routes = sum(min(window, n - j) for j in np.flatnonzero(padded).tolist())
    assert run.stats.routes == len(routes) - padded_routes
    assert len(routes) == n * window - window * (window - 1) // 2
    assert sorted(route.source for route in table.routes) == [n - 8, n - 7, n - 6, n - 5,
                                                              n - 4, n - 3, n - 1]
    rows = np.r_[rng.choice(n, 50, replace=False), 5, 17, n - 1]   # an independent banded check
    for i in rows.tolist():
        keys = np.arange(max(0, i - window + 1), i + 1)
        keys = keys[~padded[keys]]
        scores = k[keys] @ q[i] / np.sqrt(dim)
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        close(run.output[i], weights @ v[keys])
    assert len(shares.share) == run.stats.routes
    with pytest.raises(InvalidArgumentError, match="route_weights"):
        _ = run.weights


@pytest.mark.parametrize("engine", ["messages", "matrix"])
def test_multihead_attention_takes_route_sets_and_mods(engine):
    mha = rs.MultiHeadAttention(8, 2, seed=0)
    x = np.random.default_rng(9).normal(size=(2, N, 8))
    routes = PATTERNS["bigbird"]()
    options = dict(graph=routes, score_mod=mods.softcap(2.0), mask_mod=MASK_MODS["per_head"])
    dense_mask = np.broadcast_to(routes.to_mask(), (2, 2, N, N)) & MASK_MODS["per_head"](
        np.arange(2)[:, None, None, None], np.arange(2)[None, :, None, None],
        np.arange(N)[:, None], np.arange(N)[None, :])
    out, weights = mha(x, x, x, engine=engine, average_attn_weights=False, **options)
    expected, expected_weights = mha(x, x, x, engine="matrix", average_attn_weights=False,
                                     attn_mask=~dense_mask.reshape(4, N, N),
                                     score_mod=mods.softcap(2.0))
    close(out, expected)
    close(weights, expected_weights)
    d_output = np.random.default_rng(1).normal(size=out.shape)
    grads = mha.gradients(x, x, x, d_output, engine=engine, **options)
    reference = mha.gradients(x, x, x, d_output, engine="matrix", **options)
    for name, value in reference.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-10, atol=1e-12)


def test_multihead_attention_refuses_dense_weights_of_a_long_run_before_running():
    n = 4200                                         # 2 heads: 35 M dense entries
    mha = rs.MultiHeadAttention(4, 2, seed=0)
    x = np.random.default_rng(3).normal(size=(n, 4))
    routes = rs.patterns.sliding_window(n, 8, sinks=1)
    assert 2 * n * n > rs.run.WEIGHTS_LIMIT
    with pytest.raises(InvalidArgumentError, match="need_weights=False"):
        mha(x, x, x, graph=routes)
    assert mha.last_run is None                      # refused before simulating
    out, weights = mha(x, x, x, graph=routes, need_weights=False)
    assert weights is None
    shares = mha.last_run.route_weights()
    np.testing.assert_allclose(np.bincount(shares.group * n + shares.query,
                                           weights=shares.share), 1.0, rtol=1e-12)
    close(out, mha(x, x, x, graph=routes, need_weights=False, engine="matrix")[0])


@pytest.mark.parametrize("seed", range(3))
def test_lost_routes_on_a_route_set_degrade_as_on_the_same_graph(seed):
    """Dead routes (degrade) take the per-node path; the rest come from the fast path."""
    routes = PATTERNS["window"]()
    q, k, v = inputs(seed)
    network = rs.Network(loss=0.3, retries=1, on_missing="degrade", seed=seed)
    sparse_run = rs.simulate(q, k, v, graph=routes, network=network)
    dense_run = rs.simulate(q, k, v, graph=routes.to_networkx(), network=network)
    where = [(d.group, d.query, d.key, d.phase) for d in sparse_run.dropped]
    assert where == [(d.group, d.query, d.key, d.phase) for d in dense_run.dropped] and where
    close([d.share for d in sparse_run.dropped], [d.share for d in dense_run.dropped])
    close(sparse_run.output, dense_run.output)
    close(sparse_run.weights, dense_run.weights)


@pytest.mark.parametrize("pattern", ["window", "bigbird", "document"])
def test_verdict_takes_route_sets_and_mask_mods(pattern):
    routes = PATTERNS[pattern]()
    q, k, v = inputs(14)
    options = dict(graph=routes, mask_mod=MASK_MODS["per_head"], is_causal=True)
    run = rs.simulate(q, k, v, **options)
    assert rs.verify.verdict(run.output, run.weights, q, k, v, **options).within_tolerance
    wrong = run.output.copy()
    wrong[0, 1, 5, 0] += 1e-6
    assert not rs.verify.verdict(wrong, run.weights, q, k, v, **options).within_tolerance


def test_float32_stays_float32_on_the_tile_path():
    routes = PATTERNS["longformer"]()
    q, k, v = (x.astype(np.float32) for x in inputs(13))
    run = rs.simulate(q, k, v, graph=routes, score_mod=mods.softcap(2.0))
    assert run.state.tiles is not None
    assert run.output.dtype == np.float32 and run.route_weights().share.dtype == np.float32
    expected = rs.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                            graph=routes, score_mod=mods.softcap(2.0))
    np.testing.assert_allclose(run.output, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("softmax", ["two_phase", "online"])
def test_a_route_set_without_any_route_gives_zero_rows_like_the_reference(softmax):
    q, k, v = inputs(12, shape=(2,), n=6)
    for options in (dict(graph=rs.RouteSet.from_mask(np.zeros((6, 6), bool))),
                    dict(mask_mod=lambda b, h, i, j: i < 0)):
        run = rs.simulate(q, k, v, softmax=softmax, **options)
        assert run.stats.routes == 0 and run.stats.total_messages == 0
        np.testing.assert_array_equal(run.output, rs.attention(q, k, v, **options))
        np.testing.assert_array_equal(run.output, np.zeros_like(q))
        np.testing.assert_array_equal(run.backward(np.ones_like(q)).query, np.zeros_like(q))
        with pytest.raises(rs.EmptyRowError):
            rs.simulate(q, k, v, softmax=softmax, empty_rows="error", **options)
