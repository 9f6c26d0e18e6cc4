"""The stats equal the closed forms: bytes, compute, overlap around c*, causal balance."""

from __future__ import annotations

import math

import numpy as np
import pytest

import routing_sim as rs

HEADS, DIM = 2, 4


def _inputs(tokens: int, dtype=np.float64, heads: int = HEADS, seed: int = 0):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(heads, tokens, DIM)).astype(dtype) for _ in range(3))


@pytest.mark.parametrize("devices", [2, 4, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strategy", ["ring", "allgather"])
def test_ring_and_allgather_bytes_are_2_P_minus_1_c_H_d_s(devices, dtype, strategy):
    block = 3
    query, key, value = _inputs(devices * block, dtype)
    run = rs.context_parallel(query, key, value, strategy=strategy,
                              cluster=rs.Cluster(devices=devices))
    itemsize = np.dtype(dtype).itemsize
    expected = 2 * (devices - 1) * block * HEADS * DIM * itemsize
    assert run.stats.bytes_sent.tolist() == [expected] * devices
    assert run.stats.bytes == {"kv": expected * devices}
    assert run.stats.messages == {"kv": (devices - 1) * devices}


@pytest.mark.parametrize("devices", [2, 4, 8])
@pytest.mark.parametrize("topology", ["switch", "ring"])
def test_ulysses_bytes_are_4_P_minus_1_c_H_over_P_d_s(devices, topology):
    heads, block = 2 * devices, 2
    query, key, value = _inputs(devices * block, heads=heads)
    run = rs.context_parallel(query, key, value, strategy="ulysses",
                              cluster=rs.Cluster(devices=devices, topology=topology))
    expected = 4 * (devices - 1) * block * (heads // devices) * DIM * 8
    assert run.stats.bytes_sent.tolist() == [expected] * devices
    assert run.stats.messages == {"qkv": devices * (devices - 1),
                                  "out": devices * (devices - 1)}
    forwarded = run.stats.link_bytes.sum() - run.stats.bytes_sent.sum()
    assert (forwarded > 0) == (topology == "ring" and devices > 3)


@pytest.mark.parametrize("devices", [2, 3, 4, 8])
def test_tree_decoding_bytes_do_not_depend_on_the_cache_length(devices):
    rng = np.random.default_rng(1)
    query = rng.normal(size=(HEADS, 2, DIM))
    sent = []
    for cache in (devices * 4, devices * 32):
        key, value = rng.normal(size=(2, HEADS, cache, DIM))
        run = rs.context_parallel(query, key, value, strategy="tree",
                                  cluster=rs.Cluster(devices=devices))
        sent.append(run.stats.bytes_sent.tolist())
    state = HEADS * 2 * (DIM + 2) * 8                  # m, l and o of every query row
    assert sent[0] == sent[1] == [0] + [state] * (devices - 1)
    assert run.stats.messages == {"state": devices - 1}


def test_tree_reduction_takes_ceil_log2_P_rounds():
    rng = np.random.default_rng(2)
    query = rng.normal(size=(1, 1, DIM))
    key, value = rng.normal(size=(2, 1, 48, DIM))
    cluster = rs.Cluster(devices=6, bandwidth=math.inf, latency=1.0, flops=1e30)
    run = rs.context_parallel(query, key, value, strategy="tree", cluster=cluster)
    assert run.stats.makespan == pytest.approx(math.ceil(math.log2(6)), rel=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_compute_time_is_the_timing_model(causal):
    devices, block, flops = 4, 6, 1e9
    tokens = devices * block
    query, key, value = _inputs(tokens)
    run = rs.context_parallel(query, key, value, strategy="ring", is_causal=causal,
                              cluster=rs.Cluster(devices=devices, flops=flops))
    routes = tokens * (tokens + 1) // 2 if causal else tokens * tokens
    assert run.stats.compute_time.mean() == pytest.approx(
        4 * routes * DIM * HEADS / flops / devices, rel=1e-12)


def _ring(block: int, critical: float, latency: float = 0.0, devices: int = 4):
    """A ring run whose c* is ``critical`` tokens."""
    flops = 1e9
    bandwidth = 8 * flops / (2 * critical)                # c* = s·F/(2B), s = 8
    cluster = rs.Cluster(devices=devices, bandwidth=bandwidth, latency=latency, flops=flops)
    query, key, value = _inputs(devices * block)
    return rs.context_parallel(query, key, value, strategy="ring", cluster=cluster), cluster


def test_the_ring_hides_communication_from_c_star_on():
    for block in (16, 32):
        run, cluster = _ring(block, critical=16)
        step = cluster.attention_time(block * block, DIM, DIM, HEADS)
        assert np.all(run.stats.exposed_communication == 0)
        assert run.stats.makespan == pytest.approx(4 * step, rel=1e-12)


def test_below_c_star_the_ring_waits_for_each_transfer():
    run, cluster = _ring(block=4, critical=16)
    step = cluster.attention_time(16, DIM, DIM, HEADS)
    transfer = cluster.transfer_time(2 * 4 * HEADS * DIM * 8)
    assert transfer > step
    assert run.stats.makespan == pytest.approx(3 * transfer + step, rel=1e-12)


def test_idle_share_is_small_well_above_c_star_and_large_well_below():
    above, _ = _ring(block=128, critical=16, latency=1e-9)
    below, _ = _ring(block=2, critical=16, latency=1e-9)
    assert above.stats.idle_share < 0.02
    assert below.stats.idle_share > 0.8


def _causal(layout: str, devices: int = 8, block: int = 16):
    query, key, value = _inputs(devices * block)
    cluster = rs.Cluster(devices=devices, bandwidth=math.inf, latency=0.0, flops=1e9)
    run = rs.context_parallel(query, key, value, strategy="ring", layout=layout,
                              is_causal=True, cluster=cluster)
    return run, cluster.attention_time(1, DIM, DIM, HEADS)


def test_the_causal_contiguous_ring_is_imbalanced():
    devices, block = 8, 16
    run, per_route = _causal("contiguous", devices, block)
    diagonal = block * (block + 1) // 2
    routes = [rank * block * block + diagonal for rank in range(devices)]
    assert run.stats.compute_time == pytest.approx(np.array(routes) * per_route, rel=1e-12)
    # the last device does about twice the mean: 2P/(P+1) for large blocks
    assert run.stats.imbalance == pytest.approx(max(routes) / np.mean(routes), rel=1e-12)
    assert run.stats.imbalance > 1.7


def test_zigzag_balances_causal_work_exactly_and_striped_nearly():
    devices, block = 8, 16
    zigzag, per_route = _causal("zigzag", devices, block)
    assert np.all(zigzag.stats.compute_time == zigzag.stats.compute_time[0])
    striped, _ = _causal("striped", devices, block)
    upper, lower = block * (block + 1) // 2, block * (block - 1) // 2
    routes = [(rank + 1) * upper + (devices - 1 - rank) * lower for rank in range(devices)]
    assert striped.stats.compute_time == pytest.approx(np.array(routes) * per_route, rel=1e-12)
    assert striped.stats.imbalance < 1 + 1 / block


def test_striped_speedup_has_the_papers_shape():
    """Compute-bound causal ring: every step waits for its busiest device, a full block for
    contiguous and a half block for striped, so the speedup is
    (c + 1 + 2(P - 1)c) / (P(c + 1)): growing with P towards 2."""
    block, speedups = 16, []
    for devices in (2, 4, 8):
        contiguous, _ = _causal("contiguous", devices, block)
        striped, _ = _causal("striped", devices, block)
        speedups.append(contiguous.stats.makespan / striped.stats.makespan)
        closed = (block + 1 + 2 * (devices - 1) * block) / (devices * (block + 1))
        assert speedups[-1] == pytest.approx(closed, rel=1e-12)
    assert speedups == sorted(speedups) and 1 < speedups[0] and speedups[-1] < 2
