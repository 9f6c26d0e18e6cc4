"""The network's random draws and the arrival times they give, message by message, against
the documented definitions written out with Python integers and floats: splitmix64 of
``(seed, purpose, message id)``, a delay of latency + size / bandwidth + jitter + reordering
hold + spike, and an arrival at send time + delay."""

from __future__ import annotations

import dataclasses
import math
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.network import transport
from routing_sim.network.conditions import _JITTER, _REORDER, _REORDER_DELAY, _SPIKE
from routing_sim.network.messages import Fate
from tests.engines.test_plain import networks

GOLDEN, PURPOSE_MIX, WORD = 0x9E3779B97F4A7C15, 0xD1B54A32D192ED03, 2**64


def splitmix_uniform(seed: int, purpose: int, message_id: int) -> float:
    """The uniform draw of one message: splitmix64's finaliser on Python integers."""
    x = (message_id + seed * GOLDEN + purpose * PURPOSE_MIX) % WORD
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % WORD
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % WORD
    x ^= x >> 31
    return (x >> 11) * 2.0**-53


def expected_delay(network: rs.Network, message_id: int, nbytes: int) -> float:
    """One message's transit time, in the order of operations the docs give."""
    delay = network.latency
    if network.bandwidth is not None:
        delay = delay + nbytes / network.bandwidth
    if network.jitter > 0:
        u = splitmix_uniform(network.seed, _JITTER, message_id)
        delay = delay + (network.jitter * u if network.jitter_dist == "uniform"
                         else -network.jitter * float(np.log1p(np.array([-u]))[0]))
    if network.reorder > 0:
        held = float(splitmix_uniform(network.seed, _REORDER, message_id) < network.reorder)
        delay = delay + held * splitmix_uniform(network.seed, _REORDER_DELAY, message_id) \
            * 2 * (network.latency + network.jitter)
    if network.spike > 0:
        delay = delay + float(splitmix_uniform(network.seed, _SPIKE, message_id)
                              < network.spike) * network.spike_delay
    return delay


@given(st.integers(-2**40, 2**40), st.integers(0, 6),
       st.lists(st.integers(0, 2**62), max_size=40))
def test_draws_are_splitmix64_of_seed_purpose_and_message_id(seed, purpose, ids):
    drawn = rs.Network(seed=seed).draw(np.array(ids, np.int64), purpose)
    assert drawn.dtype == np.float64
    assert drawn.tolist() == [splitmix_uniform(seed, purpose, ident) for ident in ids]


@given(st.integers(0, 2**31), st.sampled_from(["uniform", "exponential"]),
       st.lists(st.integers(0, 2**40), min_size=1, max_size=20),
       st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 0.5]))
def test_delays_of_a_wave_are_each_message_alone(seed, distribution, ids, reorder, spike):
    network = rs.Network(latency=0.75, jitter=1.5, jitter_dist=distribution, bandwidth=16.0,
                         reorder=reorder, spike=spike, spike_delay=3.0, seed=seed)
    delays = network.delays(np.array(ids, np.int64), 0.75, 24)
    assert delays.tolist() == [expected_delay(network, ident, 24) for ident in ids]


@st.composite
def simulations(draw):
    """Inputs (heads, cross-attention, a mask or causal) and simulate's options."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    heads = draw(st.sampled_from([(), (1,), (2,)]))
    n_queries, n_keys, dim = (draw(st.integers(1, 6)) for _ in range(3))
    inputs = (rng.normal(size=(*heads, n_queries, dim)), rng.normal(size=(*heads, n_keys, dim)),
              rng.normal(size=(*heads, n_keys, 3)))
    options: dict = {"softmax": draw(st.sampled_from(["two_phase", "online"]))}
    routes = draw(st.sampled_from(["all", "mask", "causal"]))
    if routes == "mask":
        options["attn_mask"] = rng.random((n_queries, n_keys)) < 0.6
    elif routes == "causal":
        options["is_causal"] = True
    return inputs, options


@st.composite
def faulty_networks(draw):
    """test_plain's networks (latency 0 included), some with loss and retries or copies."""
    network = draw(networks())
    faults = draw(st.sampled_from(["none", "loss", "duplicate", "both"]))
    loss = 0.2 if faults in ("loss", "both") else 0.0
    duplicate = 0.3 if faults in ("duplicate", "both") else 0.0
    return dataclasses.replace(network, loss=loss, retries=30 if loss else 3,
                               duplicate=duplicate)


@given(simulations(), faulty_networks(), st.sampled_from([1, 3, 2**16]))
@settings(max_examples=60, deadline=None)
def test_every_arrival_is_its_send_time_plus_its_own_documented_delay(case, network, step):
    """Every transmission that left (retries included; network copies arrive later by
    their own draw) arrives at its send time plus the delay its id draws, whatever the
    slices the delays are drawn in (``step``); a summary trace bins those same latencies."""
    inputs, options = case
    with mock.patch.object(transport, "DRAW_SLICE", step):
        trace = rs.simulate(*inputs, network=network, trace="full", **options).trace
        summary = rs.simulate(*inputs, network=network, trace="summary", **options).trace
    arrived = (trace.fate == Fate.DELIVERED) & (trace.copy == 0)
    for ident, sent, arrive, nbytes in zip(trace.id[arrived].tolist(),
                                           trace.sent[arrived].tolist(),
                                           trace.arrive[arrived].tolist(),
                                           trace.nbytes[arrived].tolist()):
        assert arrive == sent + expected_delay(network, ident, nbytes)
    assert all(math.isnan(t) for t in trace.arrive[trace.fate == Fate.LOST].tolist())
    for kind in trace.kinds:
        np.testing.assert_array_equal(summary.latency_histogram[kind],
                                      trace.latency_histogram[kind])
        assert summary.counts[kind] == trace.counts[kind]
