"""Exact mode against an independent exact computation of its documented formula."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from conftest import attention_inputs, route_masks
from routing_sim.numerics import exact_scores


def two_sum(a: float, b: float) -> tuple[float, float]:
    total = a + b
    shifted = total - a
    return total, (a - (total - shifted)) + (b - shifted)


def fraction_formula(query, key, value, allowed, bias, scale):
    """The formula in numerics.py: Fractions where it says Σ°, float64 where it says fl."""
    output = np.zeros((len(query), value.shape[1]))
    f64 = np.float64
    for i in range(len(query)):
        routes = np.flatnonzero(allowed[i])
        if not len(routes):
            continue
        highs, lows = [], []
        for j in routes:
            dot = sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(query[i], key[j]))
            dot_high = float(dot)
            dot_low = float(dot - Fraction(dot_high))
            scaled = Fraction(dot_high) * Fraction(float(scale))          # p_hi + p_lo, exact
            terms = scaled + Fraction(float(f64(dot_low) * f64(scale))) + Fraction(float(bias[i, j]))
            highs.append(float(terms))
            lows.append(float(terms - Fraction(highs[-1])))
        top = max(highs)
        unnormalised = []
        for high, low in zip(highs, lows):
            shifted, error = two_sum(high, -top)
            correction = float(f64(error) + f64(low))
            growth = float(np.exp(f64(shifted)))
            unnormalised.append(float(f64(growth) + f64(growth) * f64(correction)))
        total = float(sum(map(Fraction, unnormalised)))
        for c in range(value.shape[1]):
            pulled = float(sum(Fraction(e) * Fraction(float(value[j, c]))
                               for e, j in zip(unnormalised, routes)))
            output[i, c] = float(f64(pulled) / f64(total))
    return output


@given(st.data())
def test_exact_mode_is_the_documented_formula(data):
    query, key, value = data.draw(attention_inputs(max_len=4, max_dim=5, magnitude=10.0))
    masks = data.draw(route_masks(len(query), len(key)))
    scale = data.draw(st.sampled_from([None, 0.7]))
    run = rs.simulate(query, key, value, numerics="exact", scale=scale,
                      network=rs.Network(jitter=1.0, seed=data.draw(st.integers(0, 99))),
                      **masks)
    problem = rs.inputs.prepare(query, key, value, scale=scale, **masks)
    bias = np.zeros(problem.allowed[0].shape) if problem.bias is None else problem.bias[0]
    expected = fraction_formula(query, key, value, problem.allowed[0], bias, problem.scale)
    np.testing.assert_array_equal(run.output, expected)
    np.testing.assert_array_equal(rs.attention(query, key, value, numerics="exact",
                                               scale=scale, **masks), expected)


@given(attention_inputs(max_len=5, magnitude=30.0), st.integers(0, 1000))
def test_exact_mode_is_bit_identical_across_schedules_and_engines(inputs, seed):
    query, key, value = inputs
    reference = rs.attention(query, key, value, numerics="exact")
    for network in (rs.Network(), rs.Network(jitter=3.0, seed=seed),
                    rs.Network(loss=0.3, duplicate=0.3, retries=50, seed=seed)):
        run = rs.simulate(query, key, value, numerics="exact", network=network)
        np.testing.assert_array_equal(run.output, reference)


def high_precision_attention(query, key, value):
    """softmax(q·k/sqrt(E)) v with 60-digit decimals: an independent 'true' value."""
    with localcontext() as context:
        context.prec = 60
        scale = Decimal(1) / Decimal(query.shape[1]).sqrt()
        out = np.zeros((len(query), value.shape[1]))
        for i in range(len(query)):
            scores = [sum(Decimal(float(a)) * Decimal(float(b)) for a, b in zip(query[i], k_j))
                      * scale for k_j in key]
            top = max(scores)
            weights = [(s - top).exp() for s in scores]
            total = sum(weights)
            for c in range(value.shape[1]):
                out[i, c] = float(sum(w * Decimal(float(v)) for w, v in
                                      zip(weights, value[:, c])) / total)
        return out


def test_exact_mode_is_closer_to_the_true_value():
    """Against 60-digit decimals: exact mode's errors are several times smaller in total.

    Per case, float mode sometimes lands closer by luck at the last-ulp level (numpy's
    exp is exact mode's one inexact step), so the claim is about the whole sample.
    """
    rng = np.random.default_rng(5)
    exact_errors, float_errors = [], []
    for case in range(45):
        query, key, value = rng.normal(size=(3, 6, 16)) * (1, 4, 10)[case % 3]
        truth = high_precision_attention(query, key, value)
        exact_errors.append(np.abs(rs.simulate(query, key, value, numerics="exact").output
                                   - truth).max())
        float_errors.append(np.abs(rs.simulate(query, key, value).output - truth).max())
    exact_errors, float_errors = np.array(exact_errors), np.array(float_errors)
    assert exact_errors.sum() < 0.5 * float_errors.sum()
    assert (exact_errors > float_errors).mean() < 0.2
    assert (exact_errors <= 4 * np.finfo(float).eps * 10).all()


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
