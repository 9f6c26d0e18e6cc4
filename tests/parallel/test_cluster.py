"""Cluster: validation, the timing model's closed forms, and the paths transfers take."""

from __future__ import annotations

import math

import pytest

import routing_sim as rs


@pytest.mark.parametrize("arguments, named", [
    ({"devices": 0}, "devices"), ({"devices": True}, "devices"), ({"devices": 2.0}, "devices"),
    ({"bandwidth": 0}, "bandwidth"), ({"bandwidth": -1.0}, "bandwidth"),
    ({"bandwidth": math.nan}, "bandwidth"), ({"latency": -1e-6}, "latency"),
    ({"latency": math.inf}, "latency"), ({"flops": 0}, "flops"), ({"flops": math.inf}, "flops"),
    ({"topology": "mesh"}, "topology"), ({"network": "lossy"}, "network"),
])
def test_bad_arguments_are_named(arguments, named):
    with pytest.raises(rs.InvalidArgumentError, match=named):
        rs.Cluster(**arguments)


def test_the_timing_model():
    cluster = rs.Cluster(devices=2, bandwidth=4e9, latency=3e-6, flops=2e12)
    assert cluster.transfer_time(8e6) == 3e-6 + 8e6 / 4e9
    # 4 · routes · d · heads / F when d_v = d
    assert cluster.attention_time(routes=100, dim=16, value_dim=16, heads=8) == \
        4 * 100 * 16 * 8 / 2e12
    assert cluster.critical_block(itemsize=2) == 2 * 2e12 / (2 * 4e9)


def test_an_infinite_bandwidth_costs_only_latency():
    assert rs.Cluster(bandwidth=math.inf, latency=5e-6).transfer_time(1e9) == 5e-6


def test_a_switch_links_every_pair_and_a_ring_forwards_the_shorter_way():
    switch = rs.Cluster(devices=6, topology="switch")
    ring = rs.Cluster(devices=6, topology="ring")
    assert switch.path(0, 4) == [(0, 4)]
    assert ring.path(0, 1) == [(0, 1)]
    assert ring.path(0, 4) == [(0, 5), (5, 4)]
    assert ring.path(1, 4) == [(1, 2), (2, 3), (3, 4)]      # a tie goes forward
    assert ring.path(3, 3) == [(3, 3)]
