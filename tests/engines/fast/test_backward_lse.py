"""``run.backward(d_output, d_lse=...)`` (engines/fast/backward.py, backward_tiles.py): the
log-sum-exp's gradient sent as part of GRAD_SCORE equals the matrix form's
(``rs.attention_backward(..., d_lse=...)``, itself held to torch autograd in
tests/reference/test_matrix_lse_backward.py) and is the same bits under every schedule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.routes import patterns
from tests.reference.test_matrix_lse_backward import lse_problems

RTOL = 1e-10
NETWORKS = [rs.Network(), rs.Network(jitter=2.0, seed=3),
            rs.Network(loss=0.2, duplicate=0.2, retries=50, seed=4)]


def gradients(grads, sinks: bool) -> list[np.ndarray]:
    return [grads.query, grads.key, grads.value] + ([grads.sinks] if sinks else [])


def assert_close(actual, expected) -> None:
    for ours, theirs in zip(actual, expected, strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=RTOL,
                                   atol=RTOL * max(np.abs(theirs).max(), 1.0))


@given(lse_problems(), st.sampled_from(NETWORKS))
@settings(max_examples=40, deadline=None)
def test_message_lse_gradients_equal_the_matrix_form(case, network):
    inputs, _, options, d_output, d_lse = case
    grads = rs.simulate(*inputs, network=network, **options).backward(d_output, d_lse=d_lse)
    expected = rs.attention_backward(*inputs, d_output, d_lse=d_lse, **options)
    assert_close(gradients(grads, "sinks" in options), expected)


@given(lse_problems())
@settings(max_examples=20, deadline=None)
def test_lse_gradients_are_bit_identical_across_schedules(case):
    inputs, _, options, d_output, d_lse = case
    runs = [rs.simulate(*inputs, **options),
            rs.simulate(*inputs, delivery="per_message",
                        network=rs.Network(jitter=4.0, seed=9), **options),
            rs.simulate(*inputs, network=rs.Network(latency=0.3, jitter=1.0, reorder=True,
                                                    seed=5), **options)]
    first, *others = [gradients(run.backward(d_output, d_lse=d_lse), "sinks" in options)
                      for run in runs]
    for other in others:
        for a, b in zip(first, other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sinks", [None, [0.4, -0.6]])
@pytest.mark.parametrize("score_mod", [None, "softcap"])
def test_tiled_runs_carry_the_lse_gradient(tiled, sinks, score_mod):
    """A sparse run large enough for the tiles: the tiled Jacobian takes d_lse too."""
    rng = np.random.default_rng(6)
    q, k, v = rng.normal(size=(3, 2, 64, 8))
    d_output, d_lse = rng.normal(size=(2, 64, 8)), rng.normal(size=(2, 64))
    options = {"graph": patterns.sliding_window(64, 6, sinks=2), "sinks": sinks,
               "softcap": 1.5 if score_mod else 0.0}
    grads = rs.simulate(q, k, v, **options).backward(d_output, d_lse=d_lse)
    assert tiled, "the forward pass took the tiles"
    jittered = rs.simulate(q, k, v, network=rs.Network(jitter=3.0, seed=1),
                           **options).backward(d_output, d_lse=d_lse)
    expected = rs.attention_backward(q, k, v, d_output, d_lse=d_lse, **options)
    assert_close(gradients(grads, sinks is not None), expected)
    for a, b in zip(gradients(grads, sinks is not None), gradients(jittered, sinks is not None)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sinks", [None, [0.5]])
def test_a_node_that_pulled_nothing_sends_its_lse_gradient_at_the_start(sinks):
    """Query 0's routes all dropped: it gets no GRAD_SHARE, yet its d_lse moves its score
    gradient, so it sends GRAD_SCORE at time 0; query 2 (also all dropped, d_lse 0) sends
    none."""
    rng = np.random.default_rng(7)
    q, k, v = rng.normal(size=(3, 4, 2))
    keep = np.ones((4, 4), dtype=bool)
    keep[0] = keep[2] = False
    d_output, d_lse = rng.normal(size=(4, 2)), np.array([1.5, -0.5, 0.0, 2.0])
    options = {"dropout_p": 0.5, "dropout_mask": keep, "sinks": sinks}
    run = rs.simulate(q, k, v, trace="full", **options)
    grads = run.backward(d_output, d_lse=d_lse)
    expected = rs.attention_backward(q, k, v, d_output, d_lse=d_lse, **options)
    assert_close(gradients(grads, sinks is not None), expected)
    assert np.abs(grads.query[0]).max() > 1e-3
    scores = grads.trace.kind == rs.Kind.GRAD_SCORE
    senders = grads.trace.src[scores]
    assert (senders == 0).sum() == 4 and (senders == 2).sum() == 0
    assert grads.trace.sent[scores][senders == 0].max() <= grads.trace.sent[scores].min() + 1e-12
    without = run.backward(d_output)
    assert not without.query[0].any()
    assert without.stats.messages["GRAD_SCORE"] == grads.stats.messages["GRAD_SCORE"] - 4


@pytest.mark.parametrize("graph", [False, True])
def test_a_node_with_no_route_gives_its_lse_gradient_to_its_sink(graph):
    rng = np.random.default_rng(8)
    q, k, v = rng.normal(size=(3, 2, 3, 2))
    allowed = np.array([[True, False, True], [False, False, False], [True, True, True]])
    routes = {"graph": rs.RouteSet.from_mask(allowed)} if graph else {"attn_mask": allowed}
    d_output, d_lse = rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 3))
    for sinks in (None, [0.2, 0.7]):
        grads = rs.simulate(q, k, v, sinks=sinks, **routes).backward(d_output, d_lse=d_lse)
        expected = rs.attention_backward(q, k, v, d_output, d_lse=d_lse, sinks=sinks,
                                         **routes)
        assert_close(gradients(grads, sinks is not None), expected)


def test_hard_routing_passes_the_lse_gradient_to_the_chosen_routes():
    """With top-k routing the lse is over the chosen routes only: the score gradient the
    loss on lse gives is the top-k softmax, zero elsewhere."""
    rng = np.random.default_rng(9)
    q, k, v = rng.normal(size=(3, 5, 4))
    run = rs.simulate(q, k, v, routing="topk", top_k=2)
    grads = run.backward(np.zeros((5, 4)), d_lse=np.ones(5))
    np.testing.assert_allclose(grads.score(), run.probabilities, rtol=1e-13, atol=0)


def test_online_softmax_runs_take_d_lse():
    rng = np.random.default_rng(10)
    q, k, v = rng.normal(size=(3, 2, 4, 3))
    d_output, d_lse = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4))
    grads = rs.simulate(q, k, v, is_causal=True, softmax="online").backward(d_output, d_lse)
    expected = rs.attention_backward(q, k, v, d_output, is_causal=True, d_lse=d_lse)
    assert_close(gradients(grads, False), expected)


@pytest.mark.parametrize("bad", [np.ones(3), np.ones((4, 1)), np.ones((1, 4))])
def test_a_d_lse_of_the_wrong_shape_is_named(bad):
    run = rs.simulate(*np.ones((3, 4, 2)))
    with pytest.raises(rs.ShapeError, match=r"d_lse must have the log-sum-exp's shape \(4,\)"):
        run.backward(np.ones((4, 2)), d_lse=bad)


def test_a_non_finite_d_lse_is_refused():
    run = rs.simulate(*np.ones((3, 2, 2)))
    with pytest.raises(rs.InvalidArgumentError, match="d_lse must hold finite real numbers"):
        run.backward(np.ones((2, 2)), d_lse=[0.0, np.nan])


def test_plain_engine_runs_take_d_lse():
    """The plain engine records the same forward state, so its runs go backward here too."""
    rng = np.random.default_rng(11)
    q, k, v = rng.normal(size=(3, 2, 4, 3))
    d_output, d_lse = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4))
    options = {"is_causal": True, "sinks": [0.1, -0.3]}
    grads = rs.simulate(q, k, v, engine="plain", **options).backward(d_output, d_lse)
    expected = rs.attention_backward(q, k, v, d_output, d_lse=d_lse, **options)
    assert_close(gradients(grads, True), expected)
