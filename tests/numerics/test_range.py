"""Exact mode over the whole finite float64 range, against an independent oracle.

The oracle computes every score as a ``Fraction`` and the exponentials in mpmath at 600
bits, then rounds once (``float(Fraction)`` rounds correctly, subnormals included).
Inputs are drawn log-uniformly from 5e-324 to the largest float, with masks of ±1e300,
-1e25 and ``finfo.min``, subnormals, values near the largest float and exact
cancellations (repeated keys, opposite values).
"""

from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.numerics.exact_row import exact_row

LARGEST = np.finfo(np.float64).max


def oracle_row(keys, query, scale, bias, values):
    """Correctly rounded (shares, output) of one row; None if a score overflows.

    Scores are fractions; each weight ``exp(s - max s)`` comes from mpmath at 3600 bits
    (a gap between two scores can be as small as 2⁻³²²², and then the weight differs from
    1 there) and is then used as an exact fraction; weights below e⁻²⁰⁰⁰ are 0 (even
    times the largest value they are below 2⁻¹⁸⁰⁰)."""
    scores = [sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(query, key)),
                  Fraction(0)) * Fraction(float(scale)) + Fraction(float(c))
              for key, c in zip(keys, bias)]
    if any(abs(s) >= Fraction(LARGEST) + Fraction(2.0**970) for s in scores):
        return None                                   # rounds to ±inf: NumericalError
    top = max(scores)
    weights = []
    with mpmath.workprec(3600):
        for gap in (s - top for s in scores):
            weights.append(Fraction(0) if gap < -2000 else
                           to_fraction(mpmath.exp(mpmath.mpf(gap.numerator) / gap.denominator)))
    total = sum(weights)
    value_rows = [[Fraction(float(x)) for x in row] for row in values]
    shares = [float(w / total) for w in weights]
    output = [float(sum(w * row[c] for w, row in zip(weights, value_rows)) / total)
              for c in range(values.shape[1])]
    return np.array(shares), np.array(output)


def to_fraction(x) -> Fraction:
    """An mpf as the exact fraction it is."""
    sign, mantissa, exponent, _ = x._mpf_
    return (-1) ** sign * Fraction(int(mantissa)) * Fraction(2) ** int(exponent)


def log_uniform(rng, shape, kind):
    """Entries of one kind: ordinary, huge (products near 1e300), tiny (subnormal
    products), wide (log-uniform over the whole range), top (near the largest float)."""
    sign = rng.choice([-1.0, 1.0], shape)
    exponent = {"ordinary": rng.uniform(-1, 1, shape), "huge": rng.uniform(149, 154, shape),
                "tiny": rng.uniform(-200, -150, shape),
                "wide": rng.uniform(-323.3, 308.25, shape),
                "top": rng.uniform(300, 308.25, shape)}[kind]
    return np.minimum(10.0 ** exponent, LARGEST) * sign


@st.composite
def range_inputs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_queries, n_keys = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    dim, value_dim = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    kinds = st.sampled_from(["ordinary", "huge", "tiny", "wide"])
    query = log_uniform(rng, (n_queries, dim), draw(kinds))
    key = log_uniform(rng, (n_keys, dim), draw(kinds))
    value = log_uniform(rng, (n_keys, value_dim),
                        draw(st.sampled_from(["ordinary", "wide", "top", "tiny"])))
    if draw(st.booleans()):                          # exact cancellations
        key[-1] = key[0]
        value[-1] = -value[0]
    scale = draw(st.sampled_from([None, 1.0, 1e300, 1e-300, 0.5, 3.0]))
    mask = None
    if draw(st.booleans()):
        choices = np.array([0.0, 0.0, -1e300, 1e300, -1e25, np.finfo(np.float64).min, -1000.0,
                            -745.0, 5e-324])
        mask = rng.choice(choices, (n_queries, n_keys))
    return query, key, value, scale, mask


@given(range_inputs())
def test_exact_mode_is_correctly_rounded_over_the_whole_range(inputs):
    query, key, value, scale, mask = inputs
    problem = rs.inputs.prepare(query, key, value, attn_mask=mask, scale=scale)
    bias = np.zeros((len(query), len(key))) if mask is None else mask
    rows = [oracle_row(key, q, problem.scale, b, value) for q, b in zip(query, bias)]
    if any(row is None for row in rows):
        with pytest.raises(rs.NumericalError, match="overflow"):
            rs.attention(query, key, value, attn_mask=mask, scale=scale, numerics="exact")
        with pytest.raises(rs.NumericalError, match="overflow"):
            rs.simulate(query, key, value, attn_mask=mask, scale=scale, numerics="exact")
        return
    output, weights = rs.attention(query, key, value, attn_mask=mask, scale=scale,
                                   numerics="exact", return_weights=True)
    np.testing.assert_array_equal(weights, np.array([row[0] for row in rows]))
    np.testing.assert_array_equal(output, np.array([row[1] for row in rows]))
    for engine in ("fast", "plain"):
        run = rs.simulate(query, key, value, attn_mask=mask, scale=scale, numerics="exact",
                          network=rs.Network(jitter=1.0), engine=engine)
        np.testing.assert_array_equal(run.output, output)
        np.testing.assert_array_equal(run.weights, weights)


REPRODUCERS = [  # issue 16: (query, key, value, keyword arguments)
    ([[1.0]], [[1.0], [-1.0]], [[1.0], [2.0]],
     {"attn_mask": np.array([[np.finfo(np.float64).min, 0.0]])}),
    ([[1.0]], [[1.0], [-1.0]], [[1.0], [2.0]], {"attn_mask": np.array([[-1e25, 0.0]])}),
    ([[1.0]], [[1.0], [-1.0]], [[1.0], [2.0]], {"attn_mask": np.array([[-1e308, 0.0]])}),
    ([[1e150, 1.0]], [[1e150, 0.0], [1e150, 1.0]], [[1.0], [2.0]], {"scale": 1.0}),
    ([[1e150, 1e60]], [[1e150, 1.0], [1e150, 0.0]], [[1.0], [2.0]], {"scale": 1.0}),
    ([[1.0]], [[1.0], [0.5]], [[1.0], [2.0]], {"scale": 1e300}),
    ([[1e150]], [[1e150]], [[3.0]], {}),
    ([[1e154]], [[1.5e154]], [[1.0]], {"scale": 1.0}),
    ([[0.0]], [[0.0]], [[1e305]], {"scale": 1.0}),
    ([[0.0]], [[0.0], [0.0]], [[1e308], [1e308]], {"scale": 1.0}),
    ([[1.0]], [[0.0], [0.0], [0.0]], [[1.0], [-1.0], [1e308]],
     {"attn_mask": np.array([[0.0, 0.0, -1000.0]])}),
    ([[1.0]], [[0.0], [0.0], [0.0]], [[1e-300], [0.0], [1e300]],   # e^-1000·1e300 decides
     {"attn_mask": np.array([[0.0, 0.0, -1000.0]])}),
    # the rest of the row lies exactly halfway between two floats; a weight below e^-1600
    # (never computed, only bounded) decides the side of the tie
    ([[1.0]], [[0.0], [0.0], [0.0]], [[1.0], [1.0 + 2.0**-52], [2.0]],
     {"attn_mask": np.array([[0.0, 0.0, -1800.0]])}),
    ([[1.0]], [[0.0], [0.0], [0.0]], [[1.0 + 2.0**-52], [1.0 + 2.0**-51], [0.0]],
     {"attn_mask": np.array([[0.0, 0.0, -1800.0]])}),
    ([[1.0]], [[0.0], [0.0], [0.0], [0.0]],                          # tail terms cancel:
     [[1.0 + 2.0**-52], [1.0 + 2.0**-51], [2.0], [0.0]],               # an exact tie, to even
     {"attn_mask": np.array([[0.0, 0.0, -1800.0, -1800.0]])}),
    ([[1.0]], [[0.0], [0.0], [0.0], [0.0]],                          # the nearer of two
     [[1.0], [1.0 + 2.0**-52], [3.0], [-1.0]],                         # opposite tail terms
     {"attn_mask": np.array([[0.0, 0.0, -1700.0, -1700.000001]])}),
]


@pytest.mark.parametrize("query, key, value, options", REPRODUCERS)
def test_reproducers_of_issue_16(query, key, value, options):
    query, key, value = np.array(query), np.array(key), np.array(value)
    problem = rs.inputs.prepare(query, key, value, **options)
    bias = np.zeros((1, len(key))) if problem.bias is None else problem.bias[0]
    shares, output = oracle_row(key, query[0], problem.scale, bias[0], value)
    result, weights = rs.attention(query, key, value, numerics="exact", return_weights=True,
                                   **options)
    assert result[0].tolist() == output.tolist() and weights[0].tolist() == shares.tolist()
    np.testing.assert_array_equal(rs.simulate(query, key, value, numerics="exact",
                                              **options).output, result)


def test_a_score_that_rounds_to_inf_is_named():
    with pytest.raises(rs.NumericalError, match="overflow"):
        rs.attention([[1e155]], [[1.5e154]], [[1.0]], scale=1.0, numerics="exact")
    with pytest.raises(rs.NumericalError, match=r"query 1 and key 2 \(group 0\) overflow"):
        rs.attention([[0.0], [1e155]], [[0.0], [1.0], [1.5e154]], [[1.0]] * 3, scale=1.0,
                     numerics="exact")


def test_ordinary_rows_never_need_the_integer_fallback(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the double-double kernels should decide ordinary rows")

    monkeypatch.setattr("routing_sim.reference.exact_rows.exact_row", refuse)
    monkeypatch.setattr("routing_sim.engines.fast.barrier.exact_row", refuse)
    rng = np.random.default_rng(7)
    query, key, value = rng.normal(size=(3, 12, 8)) * np.array([1.0, 5.0, 1.0])[:, None, None]
    mask = rng.normal(size=(12, 12)) * 3
    rs.attention(query, key, value, attn_mask=mask, numerics="exact")
    rs.simulate(query, key, value, attn_mask=mask, numerics="exact")


@given(st.integers(0, 2**32 - 1), st.integers(1, 6))
def test_integer_fallback_agrees_with_the_oracle_on_ordinary_rows(seed, n_keys):
    rng = np.random.default_rng(seed)
    keys, query = rng.normal(size=(n_keys, 3)) * 4, rng.normal(size=3)
    bias, values = rng.normal(size=n_keys), rng.normal(size=(n_keys, 2))
    shares, output = exact_row(keys, query, 0.6, bias, values)
    expected_shares, expected_output = oracle_row(keys, query, 0.6, bias, values)
    assert shares.tolist() == expected_shares.tolist()
    assert output.tolist() == expected_output.tolist()


@given(st.integers(0, 2**32 - 1), st.sampled_from(["ring", "allgather", "ulysses", "tree"]),
       st.booleans(), st.sampled_from(["ordinary", "huge", "tiny", "wide"]),
       st.sampled_from(["ordinary", "wide", "top", "tiny"]))
def test_context_parallel_exact_equals_attention_over_the_whole_range(seed, strategy, causal,
                                                                      kind, value_kind):
    rng = np.random.default_rng(seed)
    query, key = log_uniform(rng, (2, 4, 2), kind), log_uniform(rng, (2, 4, 2), "ordinary")
    value = log_uniform(rng, (2, 4, 2), value_kind)
    causal = causal and strategy != "tree"
    try:
        expected = rs.attention(query, key, value, is_causal=causal, numerics="exact")
    except rs.NumericalError:
        return                                        # a score rounds to inf
    run = rs.context_parallel(query, key, value, strategy=strategy, is_causal=causal,
                              cluster=rs.Cluster(devices=2), numerics="exact")
    np.testing.assert_array_equal(run.output, expected)
