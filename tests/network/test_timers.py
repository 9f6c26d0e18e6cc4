"""Retransmission timers: contention delays a lossy run, never fails it; every finite
network either finishes or is refused when it is built."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.network.timers import RetransmissionTimer


@contextmanager
def wall_clock_limit(seconds: float):
    """Fail (instead of hanging) if the block runs longer than ``seconds``."""
    def stop(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(run: rs.Run) -> tuple:
    return sorted((d.group, d.query, d.key, d.phase) for d in run.dropped)


def test_issue_reproducer_contention_with_little_loss_delivers():
    q, k, v = np.zeros((1, 8)), np.zeros((100, 8)), np.ones((100, 1))
    busy = rs.Network(bandwidth=64, contention=True, loss=0.001, retries=60)
    run = rs.simulate(q, k, v, network=busy)
    quiet = rs.simulate(q, k, v, network=rs.Network(bandwidth=64, loss=0.001, retries=60))
    assert np.array_equal(run.output, quiet.output) and run.output.tolist() == [[1.0]]
    assert run.stats.makespan >= quiet.stats.makespan


@given(loss=st.floats(0.0, 0.3), retries=st.integers(0, 12), seed=st.integers(0, 2**16),
       n_queries=st.integers(1, 3), n_keys=st.integers(1, 24),
       duplicate=st.sampled_from([0.0, 0.2]),
       bandwidth=st.sampled_from([1.0, 16.0, 1e3]), jitter=st.sampled_from([0.0, 0.7]),
       online=st.booleans())
@settings(max_examples=40)
def test_contention_with_loss_delivers_whenever_the_quiet_network_does(
        loss, retries, seed, n_queries, n_keys, duplicate, bandwidth, jitter, online):
    """Same loss, seed and retries: the same routes arrive; two-phase output bit-identical."""
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(n_queries, 4)), rng.normal(size=(n_keys, 4)), \
        rng.normal(size=(n_keys, 3))
    common = dict(loss=loss, retries=retries, seed=seed, duplicate=duplicate, jitter=jitter,
                  bandwidth=bandwidth, on_missing="degrade")
    options = dict(softmax="online" if online else "two_phase", trace="summary")
    quiet = rs.simulate(q, k, v, network=rs.Network(**common), **options)
    busy = rs.simulate(q, k, v, network=rs.Network(contention=True, **common), **options)
    assert outcome(busy) == outcome(quiet)
    if online:       # an online node's last bits follow arrival order (ARCHITECTURE.md)
        np.testing.assert_allclose(busy.output, quiet.output, rtol=1e-12, atol=1e-15)
    else:
        assert np.array_equal(busy.output, quiet.output, equal_nan=True)


def test_a_delivery_error_means_every_attempt_was_lost():
    q, k, v = np.zeros((1, 4)), np.zeros((40, 4)), np.ones((40, 1))
    busy = rs.Network(bandwidth=4, contention=True, loss=0.3, retries=1, seed=3)
    quiet = rs.Network(bandwidth=4, loss=0.3, retries=1, seed=3)
    with pytest.raises(rs.DeliveryError) as busy_error:
        rs.simulate(q, k, v, network=busy)
    with pytest.raises(rs.DeliveryError) as quiet_error:
        rs.simulate(q, k, v, network=quiet)
    assert str(busy_error.value) == str(quiet_error.value)
    assert "every attempt" in str(busy_error.value) and "retries=" in str(busy_error.value)


def test_timers_back_off_up_to_the_give_up_wait():
    timer = RetransmissionTimer(timeout=1.5, give_up=20.0, retries=6)
    due = timer.due(np.full(7, 10.0), np.arange(7))
    assert due.tolist() == [11.5, 13.0, 16.0, 22.0, 30.0, 30.0, 30.0]


MAGNITUDES = st.one_of(st.just(0.0), st.builds(lambda m, e: m * 10.0 ** e,
                                               st.floats(1.0, 9.99), st.integers(-300, 300)))


@given(latency=MAGNITUDES, jitter=MAGNITUDES, processing=MAGNITUDES, spike_delay=MAGNITUDES,
       faults=st.sampled_from([{}, {"loss": 0.3, "retries": 40}, {"spike": 1.0},
                               {"reorder": 0.5, "duplicate": 0.3},
                               {"jitter_dist": "exponential", "loss": 0.1, "retries": 20}]),
       online=st.booleans())
@settings(max_examples=60)
def test_every_finite_network_finishes_or_is_refused(latency, jitter, processing, spike_delay,
                                                     faults, online):
    """Parameters from every order of magnitude: the run ends, bit-identical, or the Network
    says which time scales do not fit one float64 clock."""
    q = np.random.default_rng(0).normal(size=(3, 2))
    quiet = rs.simulate(q, q, q)
    try:
        network = rs.Network(latency=latency, jitter=jitter, processing=processing,
                             spike_delay=spike_delay, **faults)
    except rs.InvalidArgumentError as error:
        assert "cannot share one clock" in str(error)
        return
    softmax = "online" if online else "two_phase"
    with wall_clock_limit(20.0):
        run = rs.simulate(q, q, q, network=network, softmax=softmax)
    if online:
        np.testing.assert_allclose(run.output, quiet.output, rtol=1e-12, atol=1e-15)
    else:
        assert np.array_equal(run.output, quiet.output)
    assert np.isfinite(run.stats.makespan)


@pytest.mark.parametrize("parameters", [dict(latency=1e-17, jitter=1.0), dict(jitter=1e16),
                                        dict(processing=1e300),
                                        dict(spike=1, spike_delay=1e300),
                                        dict(latency=1e-300, jitter=1.0)])
def test_issue_reproducers_finish(parameters):
    q = np.eye(3)
    with wall_clock_limit(20.0):
        run = rs.simulate(q, q, q, network=rs.Network(**parameters))
    assert np.array_equal(run.output, rs.simulate(q, q, q).output)


@pytest.mark.parametrize("parameters", [dict(jitter=1e308), dict(processing=1e308, loss=0.1),
                                        dict(spike_delay=1e308, spike=0.5)])
def test_times_past_the_float64_range_are_refused_naming_the_parameter(parameters):
    name = next(iter(parameters))
    with pytest.raises(rs.InvalidArgumentError, match=f"{name}=1e\\+308.*cannot share one clock"):
        rs.Network(**parameters)
