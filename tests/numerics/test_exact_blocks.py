"""Exact mode's block kernels against fractions, and the block path of the simulator
against an oracle written here (fractions and mpmath), on hard inputs: huge, tiny and
subnormal entries, cancellation, results on and next to a midpoint between two floats,
masks, sinks and dropout."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.numerics.exact_blocks import exact_dots, exact_outputs, split_rows
from tests.numerics.test_range import to_fraction

MIDPOINT = 1.0 + 2.0**-53              # halfway between 1 and the next float


def exact_score(query, key, scale, bias) -> Fraction:
    return (sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(query, key)),
                Fraction(0)) * Fraction(float(scale)) + Fraction(float(bias)))


def rounded(x: Fraction) -> float:
    """x correctly rounded (ties to even; Python rounds a Fraction so)."""
    return float(x)


entries = st.one_of(
    st.floats(-10, 10),
    st.floats(-1e200, 1e200),
    st.sampled_from([0.0, 5e-324, -2.5e-320, 1e-300, 1e300, -1e300, 2.0**-53, 3.0]),
    st.floats(allow_nan=False, allow_infinity=False, width=64).filter(lambda x: abs(x) < 1e250))


@st.composite
def dot_cases(draw):
    dim = draw(st.integers(1, 6))
    n_queries, n_keys = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    queries = np.array(draw(st.lists(entries, min_size=n_queries * dim,
                                     max_size=n_queries * dim))).reshape(n_queries, dim)
    keys = np.array(draw(st.lists(entries, min_size=n_keys * dim,
                                  max_size=n_keys * dim))).reshape(n_keys, dim)
    if draw(st.booleans()):                 # cancellation: a key and its negation
        keys = np.concatenate([keys, -keys[:1], keys[:1] * 3])
        keys[-1, 0] += 1.0
    scale = draw(st.sampled_from([0.125, 0.3, 1.0, 1e-250, 3.0, 0.0]))
    bias = draw(st.one_of(st.none(), st.lists(entries, min_size=1, max_size=1)))
    return queries, keys, scale, bias


def check_dots(queries, keys, scale, bias_value=None):
    """Every decided score is the correctly rounded one, its low part within 2⁻¹⁰⁵."""
    rows, cols = (x.reshape(-1) for x in np.indices((len(queries), len(keys))))
    bias = None if bias_value is None else np.full(len(rows), bias_value)
    high, low, decided = exact_dots(queries, keys, scale, rows, cols, bias)
    for p in np.flatnonzero(decided):
        exact = exact_score(queries[rows[p]], keys[cols[p]], scale,
                            0.0 if bias is None else bias[p])
        assert high[p] == rounded(exact)
        assert abs(exact - Fraction(high[p]) - Fraction(low[p])) <= \
            Fraction(2) ** -105 * abs(Fraction(high[p]))
    return decided


@settings(max_examples=300, deadline=None)
@given(dot_cases())
def test_decided_scores_are_correctly_rounded(case):
    queries, keys, scale, bias = case
    check_dots(queries, keys, scale, None if bias is None else bias[0])


def test_scores_on_and_next_to_a_midpoint():
    # q·k = 1 + 2⁻⁵³ exactly: ties to even give 1.0; a hair (2⁻⁸⁰) either side decides.
    query = np.array([[1.0, 2.0**-53, 1.0]])
    keys = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 2.0**-80], [1.0, 1.0, -2.0**-80],
                     [1.0, 3.0, 0.0], [1.0, 1.0, 2.0**-120]])
    decided = check_dots(query, keys, 1.0)
    assert decided.tolist() == [True, True, True, True, False]   # 2⁻¹²⁰: past the slices
    high, _, _ = exact_dots(query, keys, 1.0, np.zeros(5, int), np.arange(5))
    assert high[:4].tolist() == [1.0, 1.0 + 2.0**-52, 1.0, 1.0 + 2.0**-51]
    assert float(keys[1] @ query[0]) == 1.0             # what float arithmetic gives


def test_cancellation_and_zero_scores_are_exact():
    keys = np.array([[1e16, 1.0, -1e16], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    high, low, decided = exact_dots(np.ones((1, 3)), keys, 1.0, np.zeros(3, int), np.arange(3))
    assert decided.all() and high.tolist() == [1.0, 0.0, 0.0] and low.tolist() == [0, 0, 0]


def test_ordinary_scores_are_decided_in_blocks():
    """The point of the blocks: random rows at E = 64 need no fsum at all."""
    rng = np.random.default_rng(3)
    queries, keys = rng.normal(size=(2, 40, 64)) * np.array([1.0, 30.0])[:, None, None]
    assert check_dots(queries, keys, 0.3).all()
    assert check_dots(queries, keys, 0.125, bias_value=-1e9).all()


def test_split_rows_is_exact_or_says_so():
    x = np.array([[1.0, 2.0**-60, 3.0], [1.0, 2.0**-100, 0.0], [1e300, 1.0, 0.0]])
    slices, remainder, usable = split_rows(x, beta=20, most=4)
    assert usable.tolist() == [True, True, False]
    assert (sum(slices) + remainder == np.where(usable[:, None], x, 0)).all()
    assert not remainder[0].any() and remainder[1].any()    # 2⁻¹⁰⁰ is below 80 bits


def exact_output(e, values, total) -> list[Fraction]:
    return [sum((Fraction(float(w)) * Fraction(float(v)) for w, v in zip(e, values[:, c])),
                Fraction(0)) / total for c in range(values.shape[1])]


weights = st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 2.0**-700, 1e-300, 0.5]))
values_entries = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, 1e-300, 1e200, -3.0]))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_decided_outputs_are_correctly_rounded(data):
    n_nodes, n_keys, width = (data.draw(st.integers(1, 4)) for _ in range(3))
    e = np.array(data.draw(st.lists(weights, min_size=n_nodes * n_keys,
                                    max_size=n_nodes * n_keys))).reshape(n_nodes, n_keys)
    e[:, 0] = 1.0                                       # the largest score's weight
    values = np.array(data.draw(st.lists(values_entries, min_size=n_keys * width,
                                         max_size=n_keys * width))).reshape(n_keys, width)
    pulled = np.ones(e.shape, dtype=bool)
    if data.draw(st.booleans()):                        # dropout: some routes pull nothing
        pulled[:, 1:] = np.random.default_rng(data.draw(st.integers(0, 99))).random(
            (n_nodes, n_keys - 1)) < 0.5
    l_high = np.array([math.fsum(row) for row in e])    # e_lo = 0: l = Σ e, rounded
    l_low = np.array([float(sum(map(Fraction, row), Fraction(0)) - Fraction(h))
                      for row, h in zip(e, l_high)])
    output = exact_outputs(e, np.zeros_like(e), pulled, l_high, l_low, values,
                           np.zeros(n_nodes))
    for i in range(n_nodes):
        truth = exact_output(np.where(pulled[i], e[i], 0.0), values,
                             Fraction(l_high[i]) + Fraction(l_low[i]))
        for c in range(width):
            assert np.isnan(output[i, c]) or output[i, c] == rounded(truth[c])


def test_outputs_at_a_midpoint_are_left_undecided_or_right():
    e = np.array([[1.0, 1.0], [1.0, 1.0]])
    values = np.array([[1.0, 1.0], [1.0 + 2.0**-52, 1.0 + 2.0**-51]])
    output = exact_outputs(e, np.zeros_like(e), e > 0, np.array([2.0, 2.0]), np.zeros(2),
                           values, np.zeros(2))
    # (1 + (1 + 2⁻⁵²)) / 2 is a midpoint: the weights' bound straddles it.
    assert np.isnan(output[:, 0]).all() and output[:, 1].tolist() == [1.0 + 2.0**-52] * 2
    rng = np.random.default_rng(0)
    e, values = rng.random((30, 50)), rng.normal(size=(50, 16))
    e[:, 0] = 1.0
    assert not np.isnan(exact_outputs(e, np.zeros_like(e), e > 0, e.sum(axis=1),
                                      np.zeros(30), values, np.zeros(30))).any()


def oracle(query, key, value, scale, allowed, bias, sinks=None, keep=None, p=0.0):
    """Correctly rounded attention (output) of one group, in fractions and mpmath."""
    output = np.zeros((len(query), value.shape[1]))
    for i in range(len(query)):
        routes = np.flatnonzero(allowed[i])
        scores = [exact_score(query[i], key[j], scale, bias[i, j]) for j in routes]
        terms = scores + ([] if sinks is None else [Fraction(float(sinks))])
        if not terms:
            continue
        top = max(terms)
        with mpmath.workprec(400):               # a weight below e^-2000 cannot matter here
            weights = [Fraction(0) if s - top < -2000 else to_fraction(
                mpmath.exp(mpmath.mpf((s - top).numerator) / (s - top).denominator))
                for s in terms]
        total = sum(weights, Fraction(0))
        for c in range(value.shape[1]):
            pulled = sum((w * Fraction(float(value[j, c])) for w, j in zip(weights, routes)
                          if keep is None or keep[i, j]), Fraction(0))
            output[i, c] = float(pulled / total)
        if keep is not None:
            output[i] = output[i] * (1 / (1 - p))
    return output


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_block_path_against_the_oracle(data):
    """simulate's block path (several nodes per barrier) with masks, sinks and dropout,
    under jitter, against fractions and mpmath; and bit-equal to attention's."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n, dim = data.draw(st.integers(2, 7)), data.draw(st.integers(1, 9))
    query, key, value = rng.normal(size=(3, n, dim)) * data.draw(
        st.sampled_from([1.0, 8.0, 1e-3]))
    if data.draw(st.booleans()):                    # exact ties: repeated keys, midpoints
        key[1:] = key[0]
        value[:, 0] = 1.0
        value[1, 0] = 1.0 + 2.0**-52
    options: dict = {}
    allowed, bias = np.ones((n, n), bool), np.zeros((n, n))
    kind = data.draw(st.sampled_from(["none", "causal", "mask", "bias"]))
    if kind == "causal":
        options["is_causal"], allowed = True, np.tril(allowed)
    elif kind == "mask":
        allowed = rng.random((n, n)) < 0.7
        options["attn_mask"] = allowed
    elif kind == "bias":
        bias = rng.normal(size=(n, n)) * 3
        bias[0, 0] = np.finfo(np.float64).min
        options["attn_mask"] = bias
    sinks = data.draw(st.sampled_from([None, 0.5]))
    if sinks is not None:
        options["sinks"] = [sinks]
    keep = None
    if data.draw(st.booleans()):
        keep = rng.random((n, n)) < 0.7
        options.update(dropout_p=0.3, dropout_mask=keep)
    scale = rs.inputs.prepare(query, key, value).scale
    expected = oracle(query, key, value, scale, allowed, bias, sinks, keep, 0.3)
    run = rs.simulate(query, key, value, numerics="exact",
                      network=rs.Network(jitter=data.draw(st.sampled_from([0.0, 2.0])),
                                         seed=1), **options)
    np.testing.assert_array_equal(run.output, expected)
    np.testing.assert_array_equal(rs.attention(query, key, value, numerics="exact", **options),
                                  expected)
