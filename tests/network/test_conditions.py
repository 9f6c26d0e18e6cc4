"""Timing models: each changes only timing, by exactly what its definition says."""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.network.messages import Fate

Q = K = V = np.eye(2)


def timeline(network: rs.Network, **kwargs) -> rs.Run:
    return rs.simulate(Q, K, V, network=network, trace="full", **kwargs)


def test_bandwidth_adds_size_over_bandwidth():
    run = timeline(rs.Network(latency=1.0, bandwidth=8.0))
    # QUERY 16 bytes: 1 + 2; SCORE 8 bytes: 1 + 1; PULL: 1 + 1; VALUE 16 bytes: 1 + 2.
    transit = {rs.Kind(k).name: set((run.trace.arrive - run.trace.sent)[run.trace.kind == k])
               for k in range(4)}
    assert transit == {"QUERY": {3.0}, "SCORE": {2.0}, "PULL": {2.0}, "VALUE": {3.0}}
    assert run.stats.makespan == 10.0


def test_processing_time_delays_every_reply():
    run = timeline(rs.Network(latency=1.0, processing=0.25))
    scores = run.trace.kind == rs.Kind.SCORE
    assert set(run.trace.sent[scores]) == {1.25}
    assert run.stats.makespan == 4 * 1.0 + 4 * 0.25


def test_contention_serialises_a_nic():
    # One query token asking three keys over one NIC: its QUERYs leave one after another.
    run = rs.simulate(np.ones((1, 2)), np.ones((3, 2)), np.ones((3, 1)), trace="full",
                      network=rs.Network(latency=1.0, bandwidth=16.0, contention=True))
    queries = run.trace.kind == rs.Kind.QUERY
    assert sorted(run.trace.arrive[queries].tolist()) == [2.0, 3.0, 4.0]
    # The three 8-byte SCOREs leave three key nodes at once but queue at the asker's NIC.
    scores = run.trace.kind == rs.Kind.SCORE
    assert sorted(run.trace.arrive[scores].tolist()) == [3.5, 4.5, 5.5]


def test_contention_without_bandwidth_is_an_error():
    with pytest.raises(rs.InvalidArgumentError, match="contention=True needs a bandwidth"):
        rs.Network(contention=True)


@pytest.mark.parametrize("dist, low, high, mean", [("uniform", 0, 2, 1.0),
                                                   ("exponential", 0, np.inf, 2.0)])
def test_jitter_distributions(dist, low, high, mean):
    network = rs.Network(latency=0.0, jitter=2.0 if dist == "uniform" else 2.0,
                         jitter_dist=dist, seed=3)
    delays = network.delays(np.arange(20000), np.zeros(20000), np.zeros(20000))
    assert low <= delays.min() and delays.max() < high
    assert abs(delays.mean() - mean) < 0.05 * mean


def test_reorder_and_spikes_only_add_delay():
    ids, base = np.arange(5000), np.ones(5000)
    plain = rs.Network(seed=1).delays(ids, base, np.zeros(5000))
    rough = rs.Network(seed=1, reorder=0.5, spike=0.1, spike_delay=10.0).delays(
        ids, base, np.zeros(5000))
    assert (rough >= plain).all()
    assert 0.08 < ((rough - plain) >= 10).mean() < 0.12
    assert 0.4 < ((rough - plain) > 0).mean() < 0.6


def test_timing_models_never_change_outputs():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 2, 5, 4))
    base = rs.simulate(q, k, v).output
    for network in (rs.Network(bandwidth=10.0, contention=True, processing=0.3, jitter=0.7),
                    rs.Network(jitter=3.0, jitter_dist="exponential", reorder=True, seed=2),
                    rs.Network(latency=0.0, spike=0.5, spike_delay=4.0, seed=5)):
        np.testing.assert_array_equal(rs.simulate(q, k, v, network=network).output, base)


def test_stats_report_latency_percentiles_and_node_bytes():
    run = timeline(rs.Network(latency=1.0, bandwidth=8.0))
    assert run.stats.latency["QUERY"] == {"p50": 3.0, "p90": 3.0, "p99": 3.0, "max": 3.0}
    sent, received = run.stats.node_bytes[..., 0], run.stats.node_bytes[..., 1]
    assert sent.sum() == received.sum() == run.stats.total_bytes
    summary = rs.simulate(Q, K, V, network=rs.Network(latency=1.0, bandwidth=8.0),
                          trace="summary")
    assert abs(summary.stats.latency["QUERY"]["p50"] - 3.0) <= 0.05 * 3.0


def test_crash_window_drops_and_retries_recover():
    network = rs.Network(latency=1.0, crashes=(rs.Crash(1, 0.5, 1.5),), retries=3, seed=0)
    run = rs.simulate(Q, K, V, network=network, trace="full")
    np.testing.assert_array_equal(run.output, rs.simulate(Q, K, V).output)
    down = run.trace.fate == Fate.RECEIVER_DOWN
    # Both QUERYs to token 1 arrived at t=1 while it was down; retries got through.
    assert down.sum() == 2 and set(run.trace.dst[down]) == {1}
    assert run.stats.retransmitted["QUERY"] == 2 and run.stats.dropped["QUERY"] == 2


@pytest.mark.parametrize("kwargs, words", [
    ({"bandwidth": 0}, ["bandwidth", "0"]),
    ({"loss": 1.0}, ["loss", "[0, 1)"]),
    ({"duplicate": 1.5}, ["duplicate"]),
    ({"retries": -1}, ["retries", "-1"]),
    ({"timeout": 0.0}, ["timeout"]),
    ({"on_missing": "ignore"}, ["on_missing", "ignore"]),
    ({"jitter_dist": "pareto"}, ["jitter_dist", "pareto"]),
    ({"crashes": [(1, 0, 1)]}, ["crashes", "Crash"]),
])
def test_bad_network_arguments(kwargs, words):
    with pytest.raises(rs.InvalidArgumentError) as caught:
        rs.Network(**kwargs)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("crash, words", [
    (lambda: rs.Crash(0, 2.0, 1.0), ["0 <= start < end"]),
    (lambda: rs.Crash(-1, 0, 1), ["token", "-1"]),
    (lambda: rs.Crash(0, 0, 1, side="middle"), ["side", "middle"]),
])
def test_bad_crashes(crash, words):
    with pytest.raises(rs.InvalidArgumentError) as caught:
        crash()
    for word in words:
        assert word in str(caught.value)


def test_crash_of_a_token_that_does_not_exist():
    with pytest.raises(rs.InvalidArgumentError, match="only 2 such tokens"):
        rs.simulate(Q, K, V, network=rs.Network(crashes=[rs.Crash(5, 0, 1)]))
