"""Streaming softmax: same answer as two-phase, rescaling visible, states merge."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.numerics.kernels import merge_states, online_state
from tests.conftest import attention_inputs, route_masks


@given(st.data())
def test_online_equals_two_phase_and_matrix(data):
    query, key, value = data.draw(attention_inputs())
    masks = data.draw(route_masks(len(query), len(key)))
    network = rs.Network(jitter=data.draw(st.sampled_from([0.0, 2.0])),
                         seed=data.draw(st.integers(0, 100)))
    online = rs.simulate(query, key, value, softmax="online", network=network, **masks)
    two_phase = rs.simulate(query, key, value, **masks)
    expected = rs.attention(query, key, value, **masks)
    output_tol, _ = rs.verify.tolerance(query, key, value, **masks)
    assert (np.abs(online.output - expected) <= output_tol).all()
    assert (np.abs(online.output - two_phase.output) <= output_tol).all()
    np.testing.assert_array_equal(online.weights, two_phase.weights)


def test_trace_shows_each_rescale():
    rng = np.random.default_rng(3)
    query, key, value = rng.normal(size=(3, 4, 3))
    run = rs.simulate(query, key, value, softmax="online", trace="full",
                      network=rs.Network(jitter=2.0, seed=1))
    trace = run.trace
    for node in range(4):
        mine = (trace.kind == rs.Kind.VALUE) & (trace.dst == node)
        scores = {int(j): s for j, s in zip(trace.src[(trace.kind == rs.Kind.SCORE)
                                                      & (trace.dst == node)],
                                            trace.value[(trace.kind == rs.Kind.SCORE)
                                                        & (trace.dst == node)])}
        running = -np.inf
        for source, factor in zip(trace.src[mine], trace.rescale[mine]):
            new = max(running, scores[int(source)])
            assert factor == np.exp(running - new)
            running = new
        stream = run.stream(node)
        assert len(stream) == 4 and np.array_equal(stream[-1][1], run.output[node])
        assert [t for t, _ in stream] == sorted(trace.arrive[mine].tolist())


@given(st.integers(1, 8), st.integers(0, 8), st.integers(0, 2**32 - 1))
def test_partial_states_merge(n_keys, split, seed):
    rng = np.random.default_rng(seed)
    scores, values = rng.normal(size=n_keys) * 5, rng.normal(size=(n_keys, 3))
    split = min(split, n_keys)
    m, l, o = merge_states(online_state(scores[:split], values[:split]),  # noqa: E741 (m, l, o)
                           online_state(scores[split:], values[split:]))
    whole = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum() @ values
    np.testing.assert_allclose(o / l, whole, rtol=1e-12, atol=1e-12)


def test_online_with_dropout_and_degrade():
    rng = np.random.default_rng(4)
    query, key, value = rng.normal(size=(3, 5, 3))
    keep = rng.random((5, 5)) < 0.6
    online = rs.simulate(query, key, value, softmax="online", dropout_p=0.4, dropout_mask=keep)
    expected = rs.attention(query, key, value, dropout_p=0.4, dropout_mask=keep)
    np.testing.assert_allclose(online.output, expected, rtol=1e-12, atol=1e-12)
    assert online.stats.messages["PULL"] == keep.sum()
    lossy = rs.simulate(query, key, value, softmax="online",
                        network=rs.Network(loss=0.4, retries=0, on_missing="degrade", seed=3))
    survived = np.ones((5, 5), dtype=bool)
    for route in lossy.dropped:
        survived[route.query, route.key] = False
    np.testing.assert_allclose(lossy.output, rs.attention(query, key, value, survived),
                               rtol=1e-12, atol=1e-12)


def test_exact_online_is_refused():
    try:
        rs.simulate(np.eye(2), np.eye(2), np.eye(2), softmax="online", numerics="exact")
    except rs.InvalidArgumentError as error:
        assert "two_phase" in str(error)
    else:
        raise AssertionError("exact online should be refused")


@st.composite
def top_of_range(draw):
    """(query, key, value) with ordinary scores and values near the largest float
    (log-uniform in [1e290, max], random signs; some rows all equal to one value)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_queries, n_keys, dim = draw(st.integers(1, 4)), draw(st.integers(1, 40)), 2
    exponent = rng.uniform(290, 308.25, size=(n_keys, 2))
    value = np.minimum(10.0 ** exponent, np.finfo(float).max) * rng.choice([-1, 1], (n_keys, 2))
    if draw(st.booleans()):
        value[:] = value[0]                           # the sum of values overflows
    return rng.normal(size=(n_queries, dim)), rng.normal(size=(n_keys, dim)), value


def assert_close_to(output, expected, weights, value):
    """Within 1e-12 of Σ w·|v|, the conditioning of a weighted mean (scaled by 2^-64 so
    the bound itself cannot overflow)."""
    assert np.isfinite(output).all()
    bound = 1e-12 * (weights @ np.ldexp(np.abs(value), -64))
    assert (np.abs(np.ldexp(output, -64) - np.ldexp(expected, -64)) <= bound).all()


@given(top_of_range(), st.integers(0, 100))
def test_online_stays_finite_near_the_largest_float(inputs, seed):
    query, key, value = inputs
    online = rs.simulate(query, key, value, softmax="online",
                         network=rs.Network(jitter=2.0, seed=seed))
    two_phase = rs.simulate(query, key, value)
    expected, weights = rs.attention(query, key, value, return_weights=True)
    assert np.isfinite(expected).all()
    assert_close_to(online.output, expected, weights, value)
    assert_close_to(online.output, two_phase.output, weights, value)
    merged = merge_states(online_state(np.zeros(1), value[:1] / 2), online_state(np.zeros(1),
                                                                                 value[:1] / 2))
    np.testing.assert_array_equal(merged[2] / merged[1], value[0] / 2)


def test_online_reproducer_of_issue_16():
    run = rs.simulate(np.zeros((1, 1)), np.zeros((20, 1)), np.full((20, 1), 1e307), scale=1.0,
                      softmax="online")
    assert run.output.tolist() == [[1e307]]
    largest = np.finfo(float).max
    run = rs.simulate(np.zeros((1, 1)), np.zeros((20, 1)), np.full((20, 1), largest),
                      scale=1.0, softmax="online", network=rs.Network(jitter=1.0))
    np.testing.assert_allclose(run.output, [[largest]], rtol=1e-12)


@given(top_of_range(), st.sampled_from(["ring", "allgather", "tree"]), st.integers(2, 4))
def test_context_parallel_states_stay_finite(inputs, strategy, devices):
    _, key, value = inputs
    n_keys = len(key) - len(key) % devices or devices
    key, value = np.resize(key, (n_keys, 2)), np.resize(value, (n_keys, 2))
    run = rs.context_parallel(key, key, value, strategy=strategy,
                              cluster=rs.Cluster(devices=devices))
    expected, weights = rs.attention(key, key, value, return_weights=True)
    assert_close_to(run.output, expected, weights, value)


def _layouts(rng: np.random.Generator) -> dict[str, dict]:
    """One case of each fixed-block layout online computes on: a full table's row blocks,
    a dense one-run-a-row mask's span blocks (with a float bias), a sparse route set's
    tiles."""
    n = 96
    bias = np.where(np.tri(n, dtype=bool), rng.normal(size=(n, n)), -np.inf)   # causal
    return {"rows": {}, "spans": {"attn_mask": bias},
            "tiles": {"graph": rs.patterns.sliding_window(n, 16, sinks=2)}}


@settings(max_examples=9)
@given(st.sampled_from(["rows", "spans", "tiles"]), st.integers(0, 2**32 - 1))
def test_online_puts_its_shares_off_till_they_are_read(layout, seed):
    """Each pair brings its own weight, so online computes the shares only when something
    reads them: then they are the barrier's bits, and the run's lse stays its own."""
    rng = np.random.default_rng(seed)
    query, key, value = rng.normal(size=(3, 2, 96, 8))
    options = _layouts(rng)[layout]
    online = rs.simulate(query, key, value, softmax="online", **options)
    assert online.state.shares_pending                   # nothing read them yet
    lse = online.lse
    shares = online.route_weights().share
    assert not online.state.shares_pending
    two_phase = rs.simulate(query, key, value, **options)
    np.testing.assert_array_equal(shares, two_phase.route_weights().share)
    np.testing.assert_array_equal(online.lse, lse)       # m + log l of its own stream
    read_first = rs.simulate(query, key, value, softmax="online", **options)
    read_first.route_weights()
    np.testing.assert_array_equal(online.output, read_first.output)
    d_output = rng.normal(size=value.shape)
    put_off = rs.simulate(query, key, value, softmax="online", **options).backward(d_output)
    read = read_first.backward(d_output)
    for side in ("query", "key", "value"):             # the backward pass reads them
        np.testing.assert_array_equal(getattr(put_off, side), getattr(read, side))


@pytest.mark.parametrize("layout", ["rows", "spans", "tiles"])
def test_put_off_shares_come_from_the_runs_own_scores(layout):
    """Inputs changed in place after the run, a score_mod that counts its calls: the shares
    read later are those of the inputs the run had, from its own scores (no product made
    again, the score_mod not called again)."""
    rng = np.random.default_rng(13)
    query, key, value = rng.normal(size=(3, 2, 96, 8))
    options = _layouts(rng)[layout]
    calls = []

    def halved(score, b, h, q_idx, kv_idx):
        calls.append(1)
        return score * 0.5
    if layout == "rows":                          # a score_mod (span blocks take none)
        options = {"score_mod": halved}
    expected = rs.simulate(query, key, value, **options).route_weights().share
    online = rs.simulate(query, key, value, softmax="online", **options)
    assert online.state.shares_pending
    scores, count = online.state.scores.copy(), len(calls)
    query *= 3.0                                  # the caller's arrays, changed in place
    key[:, ::2] = 0.0
    np.testing.assert_array_equal(online.route_weights().share, expected)
    np.testing.assert_array_equal(online.state.scores, scores)
    assert len(calls) == count


def test_threads_reading_put_off_shares_at_once_all_read_them_whole():
    """Readers in several threads: one computes the shares, the others wait for it and
    none sees them half made."""
    query, key, value = np.random.default_rng(11).normal(size=(3, 2, 256, 8))
    options = {"graph": rs.patterns.sliding_window(256, 32, sinks=2)}
    expected = rs.simulate(query, key, value, **options).route_weights().share
    online = rs.simulate(query, key, value, softmax="online", **options)
    assert online.state.shares_pending
    start = threading.Barrier(4)

    def read() -> np.ndarray:
        start.wait()
        return online.route_weights().share.copy()
    with ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(lambda _: read(), range(4)))
    for shares in seen:
        np.testing.assert_array_equal(shares, expected)


@pytest.mark.parametrize("case", ["loss", "sinks", "dropout"])
def test_online_computes_its_shares_at_once_where_they_ride_on_the_softmax(case):
    """A node that may lose routes, a sink's share, dropout's probabilities: the shares
    come with them at the first SCORE, as before."""
    query, key, value = np.random.default_rng(5).normal(size=(3, 2, 96, 8))
    options = {"loss": {"network": rs.Network(loss=0.05, seed=1, on_missing="degrade")},
               "sinks": {"sinks": np.array([0.5, -1.0])},
               "dropout": {"dropout_p": 0.3, "seed": 2}}[case]
    online = rs.simulate(query, key, value, softmax="online", **options)
    assert not online.state.shares_pending
    if case == "loss":                      # each row renormalised over what arrived
        assert online.dropped
        np.testing.assert_allclose(online.weights.sum(axis=-1), 1.0, rtol=1e-13)
        return
    two_phase = rs.simulate(query, key, value, **options)
    np.testing.assert_array_equal(online.route_weights().share,
                                  two_phase.route_weights().share)
    np.testing.assert_array_equal(online.probabilities, two_phase.probabilities)
