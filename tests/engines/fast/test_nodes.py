"""TokenNodes.detach: a finished run holds no reference cycle, so a dropped Run frees its
per-route state at once, without Python's cycle collector."""

import gc
import weakref

import numpy as np
import pytest

import routing_sim as rs

_Q, _K, _V = np.random.default_rng(5).normal(size=(3, 2, 24, 8))

RUNS = {
    "full graph (row blocks, whole waves)": {},
    "causal (span blocks)": {"is_causal": True},
    "window (tiles)": {"graph": rs.patterns.sliding_window(24, 4, sinks=1)},
    "online": {"softmax": "online"},
    "exact": {"numerics": "exact"},
    "jitter (SimPy transport)": {"network": rs.Network(jitter=0.5, seed=1)},
    "loss and retries (timers)": {"network": rs.Network(loss=0.2, retries=30, seed=2)},
    "full trace": {"trace": "full"},
}


@pytest.fixture
def no_cycle_collector():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("options", RUNS.values(), ids=RUNS.keys())
def test_a_dropped_run_is_freed_without_the_cycle_collector(options, no_cycle_collector):
    run = rs.simulate(_Q, _K, _V, **options)
    state = weakref.ref(run.state)
    del run
    assert state() is None


def test_a_dropped_backward_pass_leaves_its_run_freeable(no_cycle_collector):
    run = rs.simulate(_Q, _K, _V, network=rs.Network(jitter=0.3, seed=3))
    gradients = run.backward(np.ones_like(_Q))
    state = weakref.ref(run.state)
    del run, gradients
    assert state() is None

