"""context_parallel equals matrix attention, bit for bit under every schedule and fault."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs

STRATEGIES = ["ring", "allgather", "ulysses", "tree"]
LAYOUTS = ["contiguous", "zigzag", "striped"]
FAST = rs.Cluster(devices=4, bandwidth=1e9, latency=1e-6, flops=1e12)


@st.composite
def problems(draw, max_devices: int = 4):
    """(strategy, layout, devices, is_causal, query, key, value) that fit together."""
    strategy = draw(st.sampled_from(STRATEGIES))
    layout = draw(st.sampled_from(LAYOUTS))
    devices = draw(st.sampled_from([d for d in (1, 2, 3, 4) if d <= max_devices]))
    parts = 2 * devices if layout == "zigzag" else devices
    heads = devices * draw(st.integers(1, 2)) if strategy == "ulysses" else draw(
        st.integers(1, 3))
    keys = parts * draw(st.integers(1, 3))
    queries = draw(st.integers(1, 4)) if strategy == "tree" else keys
    dim, value_dim = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    magnitude = draw(st.sampled_from([1.0, 3.0, 10.0]))
    batch = draw(st.sampled_from([(), (2,)]))
    query = rng.normal(size=batch + (heads, queries, dim)) * magnitude
    key = rng.normal(size=batch + (heads, keys, dim)) * magnitude
    value = rng.normal(size=batch + (heads, keys, value_dim))
    return strategy, layout, devices, draw(st.booleans()), query, key, value


def _relative_error(output, reference) -> float:
    return float(np.abs(output - reference).max() / np.abs(reference).max())


@given(problems())
def test_every_strategy_and_layout_equals_matrix_attention(problem):
    strategy, layout, devices, causal, query, key, value = problem
    run = rs.context_parallel(query, key, value, strategy=strategy, layout=layout,
                              is_causal=causal, cluster=rs.Cluster(devices=devices))
    reference = rs.attention(query, key, value, is_causal=causal)
    assert run.output.shape == reference.shape
    assert _relative_error(run.output, reference) <= 1e-12


@settings(max_examples=15)
@given(problems(max_devices=3))
def test_exact_mode_is_the_correctly_rounded_output(problem):
    strategy, layout, devices, causal, query, key, value = problem
    run = rs.context_parallel(query, key, value, strategy=strategy, layout=layout,
                              is_causal=causal, cluster=rs.Cluster(devices=devices),
                              numerics="exact")
    assert np.array_equal(run.output, rs.attention(query, key, value, is_causal=causal,
                                                   numerics="exact"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_float32_stays_float32(strategy):
    rng = np.random.default_rng(3)
    query, key, value = rng.normal(size=(3, 4, 16, 8)).astype(np.float32)
    run = rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST)
    assert run.output.dtype == np.float32
    reference = rs.attention(query.astype(np.float64), key.astype(np.float64),
                             value.astype(np.float64))
    assert _relative_error(run.output, reference) <= 1e-5


SCHEDULES = [
    {"cluster": rs.Cluster(devices=4, bandwidth=1e3, latency=0.5, flops=1e3)},
    {"cluster": rs.Cluster(devices=4, bandwidth=1e12, latency=0.0, flops=1e15,
                           topology="switch")},
    {"network": rs.Network(jitter=3e-6, reorder=0.5, duplicate=0.3, seed=5)},
    {"network": rs.Network(jitter=1e-5, jitter_dist="exponential", spike=0.3,
                           spike_delay=1e-4)},
    {"network": rs.Network(loss=0.3, retries=12, seed=2)},
    {"network": rs.Network(crashes=(rs.Crash(1, 0.0, 3e-6), rs.Crash(3, 1e-6, 9e-6)),
                           retries=30)},
]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_output_is_bit_identical_under_every_schedule_and_fault(strategy, schedule):
    rng = np.random.default_rng(7)
    queries = 3 if strategy == "tree" else 16
    query = rng.normal(size=(4, queries, 8)) * 3
    key, value = rng.normal(size=(2, 4, 16, 8))
    plain = rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST,
                                is_causal=True)
    options = {"cluster": FAST, **schedule}
    run = rs.context_parallel(query, key, value, strategy=strategy, is_causal=True, **options)
    assert np.array_equal(run.output, plain.output)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_loss_with_retries_keeps_the_bits_and_costs_time(strategy):
    rng = np.random.default_rng(8)
    query = rng.normal(size=(4, 2 if strategy == "tree" else 32, 8))
    key, value = rng.normal(size=(2, 4, 32, 8))
    plain = rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST)
    lossy = rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST,
                                network=rs.Network(loss=0.4, retries=20, seed=1))
    assert np.array_equal(lossy.output, plain.output)
    assert lossy.stats.retransmissions > 0
    assert lossy.stats.makespan > plain.stats.makespan
    assert lossy.trace.transfers[0]["fate"] in ("delivered", "lost")
    assert any(t["fate"] == "lost" for t in lossy.trace.transfers)


def test_a_transfer_lost_on_every_try_is_a_delivery_error():
    query = key = value = np.ones((1, 8, 2))
    with pytest.raises(rs.DeliveryError, match="device 1 still waits for the K/V block"):
        rs.context_parallel(query, key, value, strategy="ring", cluster=FAST,
                            network=rs.Network(loss=0.99, retries=0))


def test_the_seed_draws_another_fault_pattern_with_the_same_bits():
    rng = np.random.default_rng(9)
    query, key, value = rng.normal(size=(3, 2, 16, 4))
    network = rs.Network(loss=0.3, retries=20)
    runs = [rs.context_parallel(query, key, value, strategy="ring", cluster=FAST,
                                network=network, seed=seed) for seed in (0, 1)]
    assert np.array_equal(runs[0].output, runs[1].output)
    assert [t["fate"] for t in runs[0].trace.transfers] != \
        [t["fate"] for t in runs[1].trace.transfers]


def test_low_precision_transit_error_grows_with_the_device_count():
    """Rounding each partial state to float16 after every merge, as low-precision ring
    implementations do: the error grows with P. Exact mode has none."""
    errors = {}
    for devices in (2, 16):
        per_seed = []
        for seed in range(3):
            rng = np.random.default_rng(seed)
            query, key, value = rng.normal(size=(3, 2, 64, 8))
            run = rs.context_parallel(query, key, value, strategy="ring",
                                      cluster=rs.Cluster(devices=devices),
                                      transit_dtype="float16")
            per_seed.append(_relative_error(run.output, rs.attention(query, key, value)))
        errors[devices] = np.mean(per_seed)
    assert 1e-4 < errors[2] < errors[16] < 1e-2


@pytest.mark.parametrize("arguments, error, message", [
    ({"strategy": "mesh"}, rs.InvalidArgumentError, "strategy"),
    ({"layout": "diagonal"}, rs.InvalidArgumentError, "layout"),
    ({"numerics": "fast"}, rs.InvalidArgumentError, "numerics"),
    ({"transit_dtype": "bfloat16"}, rs.DTypeError, "transit_dtype"),
    ({"transit_dtype": "float16", "numerics": "exact"}, rs.InvalidArgumentError, "exact"),
    ({"trace": "some"}, rs.InvalidArgumentError, "trace"),
    ({"seed": 1.5}, rs.InvalidArgumentError, "seed"),
    ({"cluster": 4}, rs.InvalidArgumentError, "cluster"),
    ({"cluster": rs.Cluster(devices=3)}, rs.ShapeError, "length 10 must be a multiple of 3"),
    ({"layout": "zigzag", "cluster": rs.Cluster(devices=4)}, rs.ShapeError,
     "multiple of 8 for layout=.zigzag"),
    ({"strategy": "ulysses", "cluster": rs.Cluster(devices=4)}, rs.ShapeError,
     "6 heads over 4 devices"),
    ({"network": rs.Network(crashes=(rs.Crash(5, 0, 1),))}, rs.InvalidArgumentError,
     "device 5"),
    ({"network": "lossy"}, rs.InvalidArgumentError, "network"),
])
def test_bad_arguments_are_clear_errors(arguments, error, message):
    query = key = value = np.ones((6, 10, 4))
    options = {"strategy": "ring", "cluster": rs.Cluster(devices=2), **arguments}
    with pytest.raises(error, match=message):
        rs.context_parallel(query, key, value, **options)


@pytest.mark.parametrize("shapes, message", [
    (((2, 8, 4), (3, 8, 4), (3, 8, 4)), "leading"),
    (((2, 8, 4), (2, 8, 5), (2, 8, 4)), "feature dim"),
    (((2, 8, 4), (2, 8, 4), (2, 6, 4)), "length S"),
    (((2, 0, 4), (2, 8, 4), (2, 8, 4)), "empty"),
])
def test_shapes_that_do_not_fit_are_shape_errors(shapes, message):
    query, key, value = (np.ones(shape) for shape in shapes)
    with pytest.raises(rs.ShapeError, match=message):
        rs.context_parallel(query, key, value, strategy="ring", cluster=rs.Cluster(devices=2))


def test_non_finite_inputs_are_refused():
    query = np.ones((2, 8, 4))
    query[0, 1, 2] = np.nan
    with pytest.raises(rs.InvalidArgumentError, match="query holds nan"):
        rs.context_parallel(query, query, query, strategy="ring", cluster=FAST)
