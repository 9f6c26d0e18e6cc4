"""Faults with retries: the same bits as a clean network, or a clear account of what is missing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.network.messages import Fate
from tests.conftest import attention_inputs, route_masks

COLUMNS = ("kind", "src", "dst", "group", "sent", "arrive", "nbytes", "value", "id", "attempt",
           "copy", "fate")


@st.composite
def faulty_networks(draw, retries: int = 60):
    return rs.Network(latency=draw(st.sampled_from([0.5, 1.0])),
                      jitter=draw(st.sampled_from([0.0, 0.3, 2.0])),
                      loss=draw(st.sampled_from([0.0, 0.1, 0.3])),
                      duplicate=draw(st.sampled_from([0.0, 0.1, 0.3])),
                      reorder=draw(st.sampled_from([0.0, 0.3])),
                      retries=retries, seed=draw(st.integers(0, 10_000)))


@given(st.data())
def test_enough_retries_give_the_fault_free_bits(data):
    query, key, value = data.draw(attention_inputs(max_len=5))
    masks = data.draw(route_masks(len(query), len(key)))
    network = data.draw(faulty_networks())
    softmax = data.draw(st.sampled_from(["two_phase", "online"]))
    clean = rs.simulate(query, key, value, softmax=softmax, **masks)
    faulty = rs.simulate(query, key, value, network=network, softmax=softmax, **masks)
    if softmax == "two_phase":
        np.testing.assert_array_equal(faulty.output, clean.output)
        np.testing.assert_array_equal(faulty.weights, clean.weights)
    else:       # online bits may follow arrival order; the values may not
        output_tol, _ = rs.verify.tolerance(query, key, value, **masks)
        assert (np.abs(faulty.output - clean.output) <= output_tol).all()
    assert faulty.dropped == []
    stats = faulty.stats
    routes = stats.routes
    # Every retransmission went out because an answer was missing; the rest are first tries.
    assert stats.messages["QUERY"] == routes + stats.retransmitted["QUERY"]
    assert stats.messages["PULL"] == clean.stats.messages["PULL"] + stats.retransmitted["PULL"]


@given(st.data())
def test_loss_without_retries_strict_names_every_missing_route(data):
    query, key, value = data.draw(attention_inputs(max_len=5))
    network = rs.Network(loss=0.5, retries=0, seed=data.draw(st.integers(0, 1000)))
    # Without retries a route is missing iff one of its messages is lost; a node that lost a
    # score never pulls. Message ids are len(Kind) · route + kind for first attempts, routes
    # numbered (i, j) in order.
    n_queries, n_keys = len(query), len(key)
    routes = [(i, j) for i in range(n_queries) for j in range(n_keys)]
    kinds = len(rs.Kind)
    lost = network.lost(np.arange(kinds * len(routes))).reshape(len(routes), kinds)
    score_lost = lost[:, 0] | lost[:, 1]
    node_failed = {i for (i, _), gone in zip(routes, score_lost) if gone}
    expected = {(i, j, "score") for (i, j), gone in zip(routes, score_lost) if gone}
    expected |= {(i, j, "value") for (i, j), row in zip(routes, lost)
                 if i not in node_failed and (row[2] or row[3])}
    if not expected:
        np.testing.assert_array_equal(rs.simulate(query, key, value, network=network).output,
                                      rs.simulate(query, key, value).output)
        return
    with pytest.raises(rs.DeliveryError) as caught:
        rs.simulate(query, key, value, network=network)
    text = str(caught.value)
    assert text.startswith(f"{len(expected)} routes never delivered after 0 retries")
    for i, j, phase in sorted(expected)[:20]:
        assert f"(query {i}, key {j}: {phase} lost)" in text


@given(st.data())
def test_degrade_equals_attention_over_the_routes_that_survived(data):
    query, key, value = data.draw(attention_inputs(max_len=5))
    network = rs.Network(loss=0.4, retries=data.draw(st.integers(0, 1)), on_missing="degrade",
                         seed=data.draw(st.integers(0, 1000)))
    run = rs.simulate(query, key, value, network=network)
    survived = np.ones((len(query), len(key)), dtype=bool)
    for route in run.dropped:
        survived[route.query, route.key] = False
    expected, weights = rs.attention(query, key, value, survived, return_weights=True)
    output_tol, weight_tol = rs.verify.tolerance(query, key, value, survived)
    assert (np.abs(run.output - expected) <= output_tol).all()
    assert (np.abs(run.weights - weights) <= weight_tol).all()
    full = rs.attention(query, key, value, return_weights=True)[1]
    for route in run.dropped:      # the share each dropped route would have had
        assert abs(route.share - full[route.query, route.key]) <= 1e-12 * (1 + full.max())


def test_duplicates_never_double_count():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 4, 3))
    run = rs.simulate(q, k, v, network=rs.Network(duplicate=1.0, seed=2), trace="full")
    np.testing.assert_array_equal(run.output, rs.simulate(q, k, v).output)
    assert run.stats.duplicated == {"QUERY": 16, "SCORE": 16, "PULL": 16, "VALUE": 16}
    assert run.stats.ignored == 4 * 16
    assert (run.trace.copy == 1).sum() == 64


def test_same_seed_same_trace_other_seed_other_trace():
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(3, 5, 3))
    network = rs.Network(jitter=1.0, loss=0.2, duplicate=0.2, reorder=0.3, retries=20, seed=7)
    first, again = (rs.simulate(q, k, v, network=network, trace="full") for _ in range(2))
    for column in COLUMNS:
        np.testing.assert_array_equal(getattr(first.trace, column), getattr(again.trace, column))
    other = rs.simulate(q, k, v, network=rs.Network(jitter=1.0, loss=0.2, duplicate=0.2,
                                                    reorder=0.3, retries=20, seed=8),
                        trace="full")
    assert not np.array_equal(first.trace.arrive, other.trace.arrive, equal_nan=True)


def test_stats_match_the_trace():
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(3, 4, 3))
    run = rs.simulate(q, k, v, trace="full",
                      network=rs.Network(loss=0.3, duplicate=0.2, retries=30, seed=4))
    trace = run.trace
    for kind in rs.messages.FORWARD:
        mine = trace.kind == kind
        assert run.stats.lost[kind.name] == int((mine & (trace.fate == Fate.LOST)).sum())
        assert run.stats.duplicated[kind.name] == int((mine & (trace.copy == 1)).sum())
        assert run.stats.messages[kind.name] == int((mine & (trace.copy == 0)).sum())
    assert run.stats.lost["QUERY"] > 0 and run.stats.retransmitted["QUERY"] > 0
    assert "lost" in str(run.stats)


def test_strict_error_is_a_delivery_error_of_the_hierarchy():
    with pytest.raises(rs.RoutingSimError, match="on_missing='degrade'"):
        rs.simulate(np.eye(3), np.eye(3), np.eye(3),
                    network=rs.Network(loss=0.9, retries=0, seed=0))
