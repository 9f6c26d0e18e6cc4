"""Exact mode against an independent exact computation of its documented formula."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.numerics.kernels import exact_scores
from tests.conftest import attention_inputs, route_masks


def decimal_attention(query, key, value, allowed, bias, scale):
    """Attention on the given floats in 60-digit decimals, rounded once to float64 at the
    end: the correctly rounded outputs and shares, computed independently."""
    output = np.zeros((len(query), value.shape[1]))
    shares = np.zeros(allowed.shape)
    with localcontext() as context:
        context.prec = 60
        for i in range(len(query)):
            routes = np.flatnonzero(allowed[i])
            if not len(routes):
                continue
            scores = [sum(Decimal(float(a)) * Decimal(float(b)) for a, b in zip(query[i], key[j]))
                      * Decimal(float(scale)) + Decimal(float(bias[i, j])) for j in routes]
            top = max(scores)
            weights = [(score - top).exp() for score in scores]
            total = sum(weights)
            for j, weight in zip(routes, weights):
                shares[i, j] = float(weight / total)
            for c in range(value.shape[1]):
                output[i, c] = float(sum(w * Decimal(float(value[j, c]))
                                         for w, j in zip(weights, routes)) / total)
    return output, shares


@given(st.data())
def test_exact_mode_is_correctly_rounded(data):
    query, key, value = data.draw(attention_inputs(max_len=4, max_dim=5, magnitude=10.0))
    masks = data.draw(route_masks(len(query), len(key)))
    scale = data.draw(st.sampled_from([None, 0.7]))
    run = rs.simulate(query, key, value, numerics="exact", scale=scale,
                      network=rs.Network(jitter=1.0, seed=data.draw(st.integers(0, 99))),
                      **masks)
    problem = rs.inputs.prepare(query, key, value, scale=scale, **masks)
    bias = np.zeros(problem.allowed[0].shape) if problem.bias is None else problem.bias[0]
    output, shares = decimal_attention(query, key, value, problem.allowed[0], bias,
                                       problem.scale)
    assert_correctly_rounded(run.output, output)
    assert_correctly_rounded(run.weights, shares)
    assert_correctly_rounded(rs.attention(query, key, value, numerics="exact", scale=scale,
                                          **masks), output)


def assert_correctly_rounded(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bit-equal, subnormals included (a result the double-doubles cannot decide is
    computed in integers; docs/numerics.md)."""
    np.testing.assert_array_equal(actual, expected)


@given(attention_inputs(max_len=5, magnitude=30.0), st.integers(0, 1000))
def test_exact_mode_is_bit_identical_across_schedules_and_engines(inputs, seed):
    query, key, value = inputs
    reference = rs.attention(query, key, value, numerics="exact")
    for network in (rs.Network(), rs.Network(jitter=3.0, seed=seed),
                    rs.Network(loss=0.3, duplicate=0.3, retries=50, seed=seed)):
        run = rs.simulate(query, key, value, numerics="exact", network=network)
        np.testing.assert_array_equal(run.output, reference)


def test_exact_mode_is_never_farther_from_the_truth_than_float_mode():
    rng = np.random.default_rng(5)
    for case in range(30):
        query, key, value = rng.normal(size=(3, 6, 16)) * (1, 4, 10)[case % 3]
        truth, _ = decimal_attention(query, key, value, np.ones((6, 6), bool),
                                     np.zeros((6, 6)), 0.25)
        exact = rs.simulate(query, key, value, numerics="exact").output
        floating = rs.simulate(query, key, value).output
        assert (np.abs(exact - truth) <= np.abs(floating - truth)).all()


def test_cancellation_is_exact():
    keys = np.array([[1e16, 1.0, -1e16], [1.0, 1.0, 1.0]])
    high, low = exact_scores(keys, np.ones(3), 1.0)
    assert high.tolist() == [1.0, 3.0] and low.tolist() == [0.0, 0.0]
    assert float(keys[0] @ np.ones(3)) != 1.0        # what plain float arithmetic gives


def test_exact_falls_back_beyond_dekker_range():
    tiny = np.array([[1e-200, 3e-200]])
    assert exact_scores(tiny, np.array([1e-200, 1e-200]), 1.0)[0].tolist() == [0.0]
    huge = np.array([[1e300, 1e300, 1.0]])
    high, low = exact_scores(huge, np.array([1e-300, -1e-300, 0.5]), 1.0)
    exact = Fraction(1e300) * Fraction(1e-300) - Fraction(1e300) * Fraction(1e-300) + Fraction(1, 2)
    assert high.tolist() == [float(exact)] and low.tolist() == [0.0]


def test_float_order_changes_last_bits_exact_does_not():
    rng = np.random.default_rng(0)
    terms = rng.normal(size=1000) * 10.0 ** rng.integers(-8, 8, 1000)
    forward, backward = sum(terms.tolist()), sum(terms[::-1].tolist())
    assert forward != backward
    assert math.fsum(terms.tolist()) == math.fsum(terms[::-1].tolist())
