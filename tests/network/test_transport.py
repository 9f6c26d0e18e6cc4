"""Batched delivery changes how many SimPy events run, never what is delivered or when."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from tests.conftest import attention_inputs, route_masks

COLUMNS = ("kind", "src", "dst", "group", "sent", "arrive", "nbytes", "value", "id", "attempt",
           "copy", "fate", "rescale")


@given(st.data())
def test_delivery_modes_send_the_same_messages_at_the_same_times(data):
    query, key, value = data.draw(attention_inputs(max_len=5))
    masks = data.draw(route_masks(len(query), len(key)))
    contention = data.draw(st.booleans())
    network = rs.Network(latency=data.draw(st.sampled_from([0.0, 1.0])),
                         jitter=data.draw(st.sampled_from([0.0, 0.5, 3.0])),
                         bandwidth=64.0 if contention else None, contention=contention,
                         loss=data.draw(st.sampled_from([0.0, 0.2])),
                         duplicate=data.draw(st.sampled_from([0.0, 0.2])),
                         retries=40, seed=data.draw(st.integers(0, 100)))
    softmax = data.draw(st.sampled_from(["two_phase", "online"]))
    runs = [rs.simulate(query, key, value, network=network, trace="full", delivery=mode,
                        softmax=softmax, **masks)
            for mode in ("per_message", "instant", "window")]
    baseline = runs[0]
    for run in runs[1:]:
        for column in COLUMNS:
            np.testing.assert_array_equal(getattr(run.trace, column),
                                          getattr(baseline.trace, column), err_msg=column)
        np.testing.assert_array_equal(run.output, baseline.output)
        assert run.stats.messages == baseline.stats.messages
        assert run.stats.makespan == baseline.stats.makespan
        assert run.stats.events <= baseline.stats.events
    # One SimPy event per delivered copy of a message, plus one per retry timer.
    delivered = int((baseline.trace.fate != 1).sum())
    assert baseline.stats.events >= delivered


def test_window_batches_jittered_arrivals():
    rng = np.random.default_rng(0)
    query, key, value = rng.normal(size=(3, 8, 4))
    network = rs.Network(latency=1.0, jitter=0.5, seed=1)
    instant = rs.simulate(query, key, value, network=network, delivery="instant")
    window = rs.simulate(query, key, value, network=network, delivery="window")
    # Every jittered arrival has its own instant; a window of width 1.0 holds a whole wave.
    assert instant.stats.events == instant.stats.total_messages
    assert window.stats.events < 10


def test_arrival_times_do_not_depend_on_send_order():
    network = rs.Network(latency=1.0, jitter=2.0, seed=9)
    ids = np.arange(10, dtype=np.int64)
    base = np.ones(10)
    forward = network.delays(ids, base, np.zeros(10))
    backward = network.delays(ids[::-1].copy(), base, np.zeros(10))[::-1]
    np.testing.assert_array_equal(forward, backward)
    assert len(set(forward.tolist())) == 10
    assert ((forward >= 1.0) & (forward < 3.0)).all()
    assert not np.array_equal(forward, rs.Network(latency=1.0, jitter=2.0, seed=10).delays(
        ids, base, np.zeros(10)))


@given(st.data())
def test_zero_latency_runs_whole_waves_with_the_same_trace(data):
    """Without timers or NIC queues a window takes every pending message: one event per
    wave (QUERY, SCORE, PULL, VALUE) whatever the latency, the same trace as per message.
    Online runs with dropout keep the windows (a dropped route updates with the SCOREs)."""
    query, key, value = data.draw(attention_inputs(max_len=6))
    network = rs.Network(latency=0.0, jitter=data.draw(st.sampled_from([0.5, 2.0])),
                         jitter_dist=data.draw(st.sampled_from(["uniform", "exponential"])),
                         reorder=data.draw(st.sampled_from([0.0, 0.5])),
                         spike=data.draw(st.sampled_from([0.0, 0.3])), spike_delay=4.0,
                         duplicate=data.draw(st.sampled_from([0.0, 0.3])),
                         seed=data.draw(st.integers(0, 100)))
    per_message, window = same_trace_both_ways(data, query, key, value, network)
    assert window.stats.events <= 4              # a wave may be empty (dropout)


@given(st.data())
def test_retries_run_up_to_each_timer_with_the_same_trace(data):
    """Timers that never fire before a live answer (timeout >= slowest round trip) let a
    window take every message due before the next timer, then every timer due before the
    next message; shorter user timeouts and exponential jitter tails keep the lookahead
    windows, and online nodes need a positive or jittered transit. Same trace either way."""
    query, key, value = data.draw(attention_inputs(max_len=5))
    crashes = data.draw(st.sampled_from([(), (rs.Crash(0, 0.5, 4.0),)]))
    network = rs.Network(latency=data.draw(st.sampled_from([0.0, 1.0])),
                         jitter=data.draw(st.sampled_from([0.0, 2.0])),
                         jitter_dist=data.draw(st.sampled_from(["uniform", "exponential"])),
                         loss=data.draw(st.sampled_from([0.2, 0.4])),
                         duplicate=data.draw(st.sampled_from([0.0, 0.3])),
                         reorder=data.draw(st.sampled_from([0.0, 0.4])),
                         timeout=data.draw(st.sampled_from([None, 1.5, 30.0])),
                         retries=data.draw(st.integers(0, 5)), crashes=crashes,
                         on_missing="degrade", seed=data.draw(st.integers(0, 100)))
    per_message, window = same_trace_both_ways(data, query, key, value, network)
    assert window.stats.events <= per_message.stats.events


def same_trace_both_ways(data, query, key, value, network):
    """Run per-message and windowed delivery with a drawn softmax and dropout; assert every
    trace column and the output are equal; return (per_message, window)."""
    softmax = data.draw(st.sampled_from(["two_phase", "online"]))
    dropout = data.draw(st.sampled_from([0.0, 0.3]))
    runs = [rs.simulate(query, key, value, network=network, trace="full", delivery=mode,
                        softmax=softmax, dropout_p=dropout, seed=3)
            for mode in ("per_message", "window")]
    for column in COLUMNS:
        np.testing.assert_array_equal(getattr(runs[1].trace, column),
                                      getattr(runs[0].trace, column), err_msg=column)
    np.testing.assert_array_equal(runs[1].output, runs[0].output)
    return runs[0], runs[1]
