"""Whole-wave delivery: a fault-free two-phase run without SimPy is the windowed run, bit
for bit (outputs, routing data, stats, every trace row)."""

from __future__ import annotations

import dataclasses
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim import simulation
from routing_sim.network.conditions import whole_waves
from routing_sim.network.messages import Kind
from routing_sim.network.waves import WaveTransport
from routing_sim.results.run import RouteWeights
from routing_sim.trace.log import COLUMNS
from tests.engines.test_plain import cases, networks


def general_run(*inputs, **options) -> rs.Run:
    """``simulate`` on the SimPy window transport, whatever the network."""
    with mock.patch.object(simulation, "whole_waves", lambda network: False):
        return rs.simulate(*inputs, **options)


def spied_run(*inputs, **options) -> tuple[rs.Run, list[WaveTransport]]:
    """``simulate``, and the whole-wave transports it made (none: the general path ran)."""
    made: list[WaveTransport] = []
    original = WaveTransport.__init__

    def spy(transport, *args, **kwargs):
        made.append(transport)
        original(transport, *args, **kwargs)

    with mock.patch.object(WaveTransport, "__init__", spy):
        return rs.simulate(*inputs, **options), made


def assert_same_run(lean: rs.Run, general: rs.Run, full: bool) -> None:
    for name in ("output", "weights", "probabilities", "lse"):
        ours, theirs = getattr(lean, name), getattr(general, name)
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs, strict=True)
    for field in dataclasses.fields(rs.Stats):
        ours, theirs = getattr(lean.stats, field.name), getattr(general.stats, field.name)
        if field.name == "node_bytes":
            np.testing.assert_array_equal(ours, theirs, strict=True)
        else:
            assert ours == theirs, field.name
    ours_routes, theirs_routes = lean.route_weights(), general.route_weights()
    for name in RouteWeights._fields:
        np.testing.assert_array_equal(getattr(ours_routes, name), getattr(theirs_routes, name))
    assert lean.trace.detail == general.trace.detail
    if full:
        for column in COLUMNS:
            np.testing.assert_array_equal(getattr(lean.trace, column),
                                          getattr(general.trace, column), strict=True)
    for kind in Kind:
        if kind in lean.trace.kinds:
            np.testing.assert_array_equal(lean.trace.latency_histogram[kind],
                                          general.trace.latency_histogram[kind])


@st.composite
def fault_free(draw):
    """A network of those test_plain draws, with latency, bandwidth and processing."""
    network = draw(networks())
    latency = draw(st.sampled_from([0.0, 0.25, 1.0, 3.0]))
    return dataclasses.replace(network, latency=latency)


@given(cases(), fault_free(), st.sampled_from(["full", "summary"]),
       st.sampled_from([None, 2]), st.booleans())
@settings(max_examples=60, deadline=None)
def test_whole_waves_equal_the_window_transport(case, network, trace, top_k, sinks):
    inputs, options = case
    if top_k:
        options = {**options, "routing": "topk", "top_k": top_k}
    if sinks:
        options = {**options, "sinks": [0.5]}
    lean, made = spied_run(*inputs, network=network, trace=trace, **options)
    assert len(made) == 1                                              # the lean path ran
    general = general_run(*inputs, network=network, trace=trace, **options)
    assert_same_run(lean, general, trace == "full")
    d_output = np.random.default_rng(0).normal(size=lean.output.shape)
    ours, theirs = lean.backward(d_output), general.backward(d_output)
    for name in ("query", "key", "value", "sinks"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))


@given(st.integers(1, 40), st.integers(1, 8), st.integers(0, 2**32 - 1))
@settings(max_examples=20, deadline=None)
def test_one_query_steps_equal_the_window_transport(n_keys, heads, seed):
    """A decoding step: one query node per head, as the transformers backend sends it."""
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(1, heads, 1, 16))
    key, value = rng.normal(size=(2, 1, heads, n_keys, 16))
    network = rs.Network(latency=float(rng.uniform(0, 2)), processing=0.5, bandwidth=64.0)
    for trace in ("summary", "full"):
        lean, made = spied_run(query, key, value, network=network, trace=trace)
        assert len(made) == 1
        assert_same_run(lean, general_run(query, key, value, network=network, trace=trace),
                        trace == "full")


@pytest.mark.parametrize("network, options", [
    (rs.Network(loss=0.1), {}), (rs.Network(duplicate=0.1), {}),
    (rs.Network(bandwidth=8.0, contention=True), {}), (rs.Network(), {"softmax": "online"}),
    (rs.Network(), {"delivery": "instant"}), (rs.Network(), {"engine": "plain"}),
])
def test_other_runs_take_the_general_transport(network, options):
    q, k, v = np.random.default_rng(1).normal(size=(3, 4, 4))
    run, made = spied_run(q, k, v, network=network, **options)
    assert made == []
    np.testing.assert_allclose(run.output, rs.attention(q, k, v), rtol=1e-12)


def test_refuses_a_lossy_network_and_handlers_that_do_not_commute():
    with pytest.raises(ValueError, match="lose, copy or queue"):
        WaveTransport(rs.Network(loss=0.5), np.ones(2), {Kind.QUERY: 8}, lambda b, f: None)
    wire = WaveTransport(rs.Network(), np.ones(2), {Kind.QUERY: 8}, lambda b, f: None)
    wire.send(Kind.QUERY, np.arange(2), 0.0)
    with pytest.raises(RuntimeError, match="commute"):
        wire.run()
    assert whole_waves(rs.Network(jitter=1.0)) and not whole_waves(rs.Network(loss=0.1))
