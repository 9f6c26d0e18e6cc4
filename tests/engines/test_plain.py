"""The plain engine as an oracle: the same messages at the same times as the fast engine,
and the same outputs (bit for bit in exact mode) as the fast engine and matrix attention."""

from __future__ import annotations

from unittest import mock

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.engines import plain
from routing_sim.network.messages import Kind

LOG_COLUMNS = ("kind", "src", "dst", "group", "sent", "arrive", "nbytes")


@st.composite
def cases(draw):
    """Inputs with heads (or none), self- or cross-attention, a mask or a graph, options."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    heads = draw(st.sampled_from([(), (1,), (2,), (3,)]))
    n_queries, dim, value_dim = (draw(st.integers(1, 5)) for _ in range(3))
    n_keys = n_queries if draw(st.booleans()) else draw(st.integers(1, 5))
    query = rng.normal(size=(*heads, n_queries, dim)) * 2
    key = rng.normal(size=(*heads, n_keys, dim)) * 2
    value = rng.normal(size=(*heads, n_keys, value_dim))
    options: dict = {}
    routes = draw(st.sampled_from(["all", "mask", "causal", "graph"]))
    allowed = rng.random((n_queries, n_keys)) < 0.7
    if routes == "mask":
        options["attn_mask"] = allowed
    elif routes == "causal":
        options["is_causal"] = True
    elif routes == "graph":
        graph = rs.graphs.from_mask(allowed, cross=n_queries != n_keys or draw(st.booleans()))
        for j, i in list(graph.edges()):
            if rng.random() < 0.3:
                graph.edges[j, i]["latency"] = float(rng.uniform(0, 3))
        options["graph"] = graph
    if draw(st.booleans()):
        options["dropout_p"] = 0.3
        options["dropout_mask"] = rng.random((n_queries, n_keys)) < 0.7
    options["numerics"] = draw(st.sampled_from(["float", "exact"]))
    return (query, key, value), options


@st.composite
def networks(draw):
    """Latency, jitter (either distribution), bandwidth, processing, reordering, spikes."""
    return rs.Network(latency=draw(st.sampled_from([0.0, 0.5, 1.0])),
                      jitter=draw(st.sampled_from([0.0, 0.3, 2.0])),
                      jitter_dist=draw(st.sampled_from(["uniform", "exponential"])),
                      bandwidth=draw(st.sampled_from([None, 8.0, 100.0])),
                      processing=draw(st.sampled_from([0.0, 0.25])),
                      reorder=draw(st.sampled_from([0.0, 0.5])),
                      spike=draw(st.sampled_from([0.0, 0.2])), spike_delay=4.0,
                      seed=draw(st.integers(0, 2**31)))


def plain_run(inputs, **options):
    """Run the plain engine; return the run and the wire's own log of message objects."""
    wires = []
    send = plain.Wire.send

    def spy(wire, message, to):
        wires.append(wire)
        send(wire, message, to)

    with mock.patch.object(plain.Wire, "send", spy):
        run = rs.simulate(*inputs, engine="plain", trace="full", **options)
    return run, (wires[0].log if wires else [])


def payload_bytes(message: plain.Message, itemsize: int, exact: bool) -> int:
    """Bytes of what the message object carries: a vector, or one float (a score: two in
    exact mode, high and low part)."""
    if isinstance(message, plain.Query):
        return message.query.nbytes
    if isinstance(message, plain.Value):
        return message.value.nbytes
    return itemsize * (2 if exact and isinstance(message, plain.Score) else 1)


def log_rows(messages: list[plain.Message], itemsize: int, exact: bool) -> list[tuple]:
    """(kind, src, dst, group, sent, arrive, bytes) of each message, in a canonical order."""
    rows = [(int(m.KIND), m.i if m.KIND.to_key else m.j, m.j if m.KIND.to_key else m.i,
             m.group, m.sent, m.arrive, payload_bytes(m, itemsize, exact)) for m in messages]
    return sorted(rows)


def trace_rows(trace: rs.Trace) -> list[tuple]:
    return sorted(zip(*(getattr(trace, column).tolist() for column in LOG_COLUMNS)))


@given(cases(), networks())
@settings(max_examples=40)
def test_plain_log_equals_fast_trace(case, network):
    inputs, options = case
    run, messages = plain_run(inputs, network=network, **options)
    fast = rs.simulate(*inputs, network=network, trace="full", **options)
    exact = options["numerics"] == "exact"
    assert log_rows(messages, inputs[0].itemsize, exact) == trace_rows(fast.trace)
    for column in (*LOG_COLUMNS, "id", "attempt", "copy", "fate"):
        np.testing.assert_array_equal(getattr(run.trace, column), getattr(fast.trace, column))
    assert run.stats.messages == fast.stats.messages and run.stats.bytes == fast.stats.bytes
    assert run.stats.makespan == fast.stats.makespan
    np.testing.assert_array_equal(run.stats.node_bytes, fast.stats.node_bytes)


@given(cases(), networks())
@settings(max_examples=40)
def test_plain_output_equals_fast_and_attention(case, network):
    inputs, options = case
    run = rs.simulate(*inputs, network=network, engine="plain", **options)
    fast = rs.simulate(*inputs, network=network, **options)
    masks = _as_masks(options)
    expected, expected_weights = rs.attention(*inputs, return_weights=True, **masks)
    if options["numerics"] == "exact":             # no order can change a bit
        np.testing.assert_array_equal(run.output, fast.output)
        np.testing.assert_array_equal(run.weights, fast.weights)
        np.testing.assert_array_equal(run.output, expected)
        np.testing.assert_array_equal(run.trace.value, fast.trace.value)
        return
    output_tol, weight_tol = rs.verify.tolerance(*inputs, **{
        name: value for name, value in masks.items() if name != "numerics"})
    for output, weights in ((run.output, run.weights), (fast.output, fast.weights)):
        assert (np.abs(run.output - output) <= output_tol).all()
        assert (np.abs(run.weights - weights) <= weight_tol).all()
    assert (np.abs(run.output - expected) <= output_tol).all()
    assert (np.abs(run.weights - expected_weights) <= weight_tol).all()


def _as_masks(options: dict) -> dict:
    """attention()'s arguments for a case: a graph becomes a bool mask."""
    masks = {name: value for name, value in options.items() if name != "graph"}
    graph: nx.DiGraph | None = options.get("graph")
    if graph is not None:
        masks["attn_mask"] = rs.graphs.to_mask(graph)
    return masks


@given(st.integers(0, 2**31), st.integers(1, 3))
@settings(max_examples=10)
def test_hard_routing_pulls_the_same_routes(seed, top_k):
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(3, 2, 5, 4))
    network = rs.Network(jitter=1.0, seed=seed)
    for numerics in ("float", "exact"):
        run, messages = plain_run((q, k, v), network=network, routing="topk", top_k=top_k,
                                  numerics=numerics)
        fast = rs.simulate(q, k, v, network=network, routing="topk", top_k=top_k,
                           numerics=numerics, trace="full")
        assert log_rows(messages, 8, numerics == "exact") == trace_rows(fast.trace)
        assert run.stats.messages["PULL"] == 2 * 5 * top_k
        np.testing.assert_allclose(run.output, fast.output, rtol=1e-12, atol=1e-14)


def test_float32_stays_float32():
    q, k, v = np.random.default_rng(1).normal(size=(3, 4, 6)).astype(np.float32)
    run = rs.simulate(q, k, v, engine="plain")
    assert run.output.dtype == run.weights.dtype == np.float32
    np.testing.assert_allclose(run.output, rs.attention(q, k, v), rtol=1e-5, atol=1e-6)


def test_a_plain_run_is_a_whole_run():
    """Routing tables, the backward pass and empty rows work on a plain run as on a fast one."""
    q, k, v = np.random.default_rng(2).normal(size=(3, 5, 4))
    mask = np.tril(np.ones((5, 5), bool), -1)                          # token 0: no route
    plain_run_, fast = (rs.simulate(q, k, v, attn_mask=mask, empty_rows="nan",
                                    labels="we route the five tokens".split(), engine=engine)
                        for engine in ("plain", "fast"))
    assert np.isnan(plain_run_.output[0]).all()
    assert str(plain_run_.routing_table("the")) == str(fast.routing_table("the"))
    d_output = np.random.default_rng(3).normal(size=(5, 4))
    mask[0, 0] = True
    grads = rs.simulate(q, k, v, attn_mask=mask, engine="plain").backward(d_output)
    expected = rs.attention_backward(q, k, v, d_output, attn_mask=mask)
    for got, want in zip((grads.query, grads.key, grads.value), expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_each_node_is_a_process_with_an_inbox():
    """One TokenNode per token and group (key tokens apart in cross-attention)."""
    engines = []
    run = plain.PlainEngine.run

    def spy(engine, log):
        engines.append(engine)
        run(engine, log)

    with mock.patch.object(plain.PlainEngine, "run", spy):
        q = np.ones((2, 3, 4))
        rs.simulate(q, q, q, engine="plain")
        rs.simulate(q, np.ones((2, 5, 4)), np.ones((2, 5, 4)), engine="plain")
    assert [len(engine.nodes) for engine in engines] == [2 * 3, 2 * (3 + 5)]
    assert all(len(node.inbox.items) == 0 for engine in engines for node in engine.nodes)


@pytest.mark.parametrize("options, named", [
    ({"softmax": "online"}, "softmax='online'"),
    ({"network": rs.Network(loss=0.1)}, "loss"),
    ({"network": rs.Network(crashes=[rs.Crash(0, 0.0, 1.0)])}, "crashes"),
    ({"network": rs.Network(duplicate=0.1)}, "duplicate"),
    ({"network": rs.Network(bandwidth=8.0, contention=True)}, "contention"),
    ({"graph": rs.RouteSet.from_mask(np.ones((3, 3), bool))}, "RouteSet"),
])
def test_plain_refuses_what_only_the_fast_engine_simulates(options, named):
    q = np.ones((3, 4))
    with pytest.raises(rs.errors.InvalidArgumentError, match=named):
        rs.simulate(q, q, q, engine="plain", **options)


def test_engine_is_checked():
    q = np.ones((3, 4))
    with pytest.raises(rs.errors.InvalidArgumentError, match="engine must be one of"):
        rs.simulate(q, q, q, engine="readable")


def test_message_ids_key_the_network_draws():
    """Same seed, same id: a message's delay does not depend on who computes it."""
    network = rs.Network(jitter=1.0, seed=5)
    ids = rs.messages.message_ids(Kind.SCORE, np.arange(4))
    assert ids.tolist() == [1, 9, 17, 25]
    one_by_one = [float(network.delays(ids[[n]], 1.0, 8)[0]) for n in range(4)]
    assert one_by_one == network.delays(ids, 1.0, 8).tolist()


@pytest.mark.parametrize("seed", range(3))
def test_plain_equals_pytorch_sdpa(seed):
    """Heads, GQA, a batch-broadcast bool mask and cross-attention, against torch itself."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    n_queries, n_keys = rng.integers(1, 7, 2)
    q = rng.normal(size=(2, 4, n_queries, 8))
    k, v = rng.normal(size=(2, 2, n_keys, 8)), rng.normal(size=(2, 2, n_keys, 5))
    mask = rng.random((2, 1, n_queries, n_keys)) < 0.7
    mask[..., 0] = True                                 # no empty rows: SDPA gives NaN there
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(x) for x in (q, k, v)), attn_mask=torch.from_numpy(mask),
        enable_gqa=True).numpy()
    run = rs.simulate(q, k, v, attn_mask=mask, enable_gqa=True, engine="plain",
                      network=rs.Network(jitter=0.5, seed=seed))
    np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-12)
