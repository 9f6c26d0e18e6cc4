"""``run.lse`` (results/run.py): each query node's log-sum-exp, computed at its barrier (or
from its streaming state), across engines, schedules, numerics and route sets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from tests.reference.test_matrix_lse import assert_lse_close, reference_lse

SCHEDULES = [
    rs.Network(),
    rs.Network(latency=0.0, jitter=3.0, seed=1),
    rs.Network(jitter=1.0, reorder=True, seed=2),
    rs.Network(loss=0.3, duplicate=0.2, retries=30, seed=3),
]


def inputs(seed=0, heads=2, n_queries=6, n_keys=6, dim=4):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(heads, n_queries, dim)) * 2, rng.normal(size=(heads, n_keys, dim)) * 2,
            rng.normal(size=(heads, n_keys, 3)))


def references(q, k, allowed, scale, sinks=None):
    rows = [reference_lse(q[h], k[h], allowed, np.zeros(allowed.shape), scale,
                          None if sinks is None else sinks[h]) for h in range(len(q))]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


@pytest.mark.parametrize("options", [{}, {"sinks": [0.3, -1.0]}, {"dropout_p": 0.3},
                                     {"graph": rs.patterns.sliding_window(6, 2, sinks=1)}],
                         ids=["plain", "sinks", "dropout", "route_set"])
def test_two_phase_lse_is_the_same_bits_under_every_schedule(options):
    q, k, v = inputs()
    runs = [rs.simulate(q, k, v, is_causal=True, network=net, **options) for net in SCHEDULES]
    runs += [rs.simulate(q, k, v, is_causal=True, delivery=mode, **options)
             for mode in ("instant", "per_message")]
    for run in runs[1:]:
        assert np.array_equal(run.lse, runs[0].lse)
    allowed = np.tril(np.ones((6, 6), bool))
    if "graph" in options:
        allowed &= options["graph"].to_mask()
    assert_lse_close(runs[0].lse, *references(q, k, allowed, 0.5, options.get("sinks")))


EXACT_OPTIONS = {"plain": {}, "sinks": {"sinks": [0.3, -1.0]}, "dropout": {"dropout_p": 0.3},
                 "route_set": {"graph": rs.patterns.sliding_window(6, 2, sinks=1)},
                 "alibi": {"alibi_slopes": [0.5, 0.25]}}


# The plain engine refuses route sets (an error tested with the plain engine), so the
# route_set case runs on the fast engine only.
@pytest.mark.parametrize("engine, options", [
    (engine, options) for engine in ("fast", "plain") for name, options in EXACT_OPTIONS.items()
    if not (engine == "plain" and name == "route_set")],
    ids=[f"{engine}-{name}" for engine in ("fast", "plain") for name in EXACT_OPTIONS
         if not (engine == "plain" and name == "route_set")])
def test_exact_lse_is_bit_identical_to_attention(engine, options):
    q, k, v = inputs(1)
    _, expected = rs.attention(q, k, v, is_causal=True, numerics="exact", return_lse=True,
                               **options)
    for net in SCHEDULES[:3 if engine == "plain" else 4]:
        run = rs.simulate(q, k, v, is_causal=True, numerics="exact", engine=engine,
                          network=net, **options)
        assert np.array_equal(run.lse, expected)


def test_exact_lse_of_hard_rows_is_bit_identical_to_attention():
    """Rows the double-doubles defer to integers: scores near the largest float, a weight
    in exp's subnormal band, and cancellation to ~2e-17, in both engines."""
    q = np.array([[1.0], [1.0], [1.0]])
    k = np.array([[1e300], [-np.log(2)], [-np.log(2)], [-745.0]])
    mask = np.array([[True, False, False, True], [False, True, True, False],
                     [False, False, True, True]])
    _, expected = rs.attention(q, k, np.ones((4, 1)), attn_mask=mask, scale=1.0,
                               numerics="exact", return_lse=True)
    assert expected[1] == pytest.approx(2.3190468138462996e-17)
    for engine in ("fast", "plain"):
        run = rs.simulate(q, k, np.ones((4, 1)), attn_mask=mask, scale=1.0, numerics="exact",
                          engine=engine)
        assert run.lse.tolist() == expected.tolist()


@given(seed=st.integers(0, 2**32 - 1), sinks=st.booleans(), causal=st.booleans())
def test_online_lse_is_within_the_float_bound(seed, sinks, causal):
    q, k, v = inputs(seed % 1000)
    logits = [0.3, -1.0] if sinks else None
    net = rs.Network(jitter=2.0, seed=seed % 97)
    run = rs.simulate(q, k, v, is_causal=causal, sinks=logits, softmax="online", network=net)
    allowed = np.tril(np.ones((6, 6), bool)) if causal else np.ones((6, 6), bool)
    assert_lse_close(run.lse, *references(q, k, allowed, 0.5, logits))


@pytest.mark.parametrize("softmax", ["two_phase", "online"])
@pytest.mark.parametrize("sinks", [None, [0.3, -1.0]])
def test_a_node_with_no_route_has_minus_inf_or_its_sinks_logit(softmax, sinks):
    q, k, v = inputs(2)
    mask = np.ones((6, 6), bool)
    mask[2] = False
    run = rs.simulate(q, k, v, attn_mask=mask, sinks=sinks, softmax=softmax)
    expected = [-np.inf, -np.inf] if sinks is None else sinks
    assert run.lse[:, 2].tolist() == expected
    assert np.isfinite(run.lse[:, [0, 1, 3, 4, 5]]).all()


@pytest.mark.parametrize("softmax", ["two_phase", "online"])
def test_a_sparse_run_on_tiles_gives_the_segment_softmaxs_lse(softmax):
    q, k, v = inputs(8, n_queries=64, n_keys=64)
    routes = rs.patterns.sliding_window(64, 6, sinks=2)
    run = rs.simulate(q, k, v, graph=routes, sinks=[0.1, 0.2], softmax=softmax)
    assert run.state.tiles is not None                                 # the tiled fast path
    assert_lse_close(run.lse, *references(q, k, routes.to_mask(), 0.5, [0.1, 0.2]))


def test_hard_routing_gives_the_lse_of_the_top_k_routes():
    q, k, v = inputs(3)
    run = rs.simulate(q, k, v, routing="topk", top_k=2)
    scores = q @ k.transpose(0, 2, 1) * 0.5                            # (H, L, S)
    best = np.sort(scores, axis=-1)[..., -2:]                          # the two kept
    expected = np.log(np.exp(best).sum(-1))
    np.testing.assert_allclose(run.lse, expected, rtol=1e-13)


def test_a_degraded_node_takes_the_routes_that_answered():
    q, k, v = inputs(4)
    net = rs.Network(loss=0.4, retries=0, on_missing="degrade", seed=5)
    run = rs.simulate(q, k, v, network=net)
    state = run.state
    assert state.dead.any()                                            # some routes lost
    for node in range(12):
        span = slice(state.routes.indptr[node], state.routes.indptr[node + 1])
        alive = state.dead[span] == 0
        scores = state.scores[span][alive]
        expected = np.log(np.exp(scores).sum()) if alive.any() else -np.inf
        assert run.lse.reshape(-1)[node] == pytest.approx(expected, rel=1e-13)


def test_each_routing_table_holds_its_nodes_lse():
    q, k, v = inputs(5)
    run = rs.simulate(q, k, v, is_causal=True, sinks=[0.3, -1.0])
    table = run.routing_table(3, head=1)
    assert table.lse == run.lse[1, 3]
    shares = [route.share for route in table.routes]
    assert np.allclose(shares, [np.exp(route.score - table.lse) for route in table.routes],
                       rtol=1e-13)


def test_a_decoder_step_has_its_tokens_lse():
    q, k, v = inputs(6)
    _, expected = rs.attention(q, k, v, is_causal=True, return_lse=True, numerics="exact")
    decoder = rs.Decoder(numerics="exact")
    first = decoder.extend(q[:, :4], k[:, :4], v[:, :4])
    step = decoder.step(q[:, 4], k[:, 4], v[:, 4])
    assert first.lse.shape == (2, 4) and step.lse.shape == (2,)
    assert np.array_equal(first.lse, expected[:, :4])
    assert np.array_equal(step.lse, expected[:, 4])


def test_the_lse_is_a_copy():
    run = rs.simulate(*inputs(7))
    run.lse[...] = 0
    assert (run.lse != 0).all()
