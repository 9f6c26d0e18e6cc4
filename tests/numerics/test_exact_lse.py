"""Exact mode's log-sum-exp (numerics/exact.py's exact_lse, numerics/exact_row.py's
exact_row_lse) against mpmath: correctly rounded on ordinary rows and on the hard ones."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.numerics.exact import exact_lse, exact_scores, exact_unnormalised, log_terms
from routing_sim.numerics.exact_row import exact_row_lse
from routing_sim.numerics.kernels import with_sink


def mpmath_lse(keys, query, scale, bias=None, sink=None) -> float:
    """log Σ exp(q·k·scale + b) (and exp(sink)), every score exact in 4000 bits, rounded
    once to the nearest float (round-half-even) by mpmath."""
    with mpmath.workprec(4000):
        scores = []
        for j, row in enumerate(np.asarray(keys, np.float64).tolist()):
            dot = mpmath.fsum(mpmath.mpf(a) * mpmath.mpf(b) for a, b in zip(row, query))
            scores.append(dot * mpmath.mpf(scale) + (0 if bias is None else mpmath.mpf(bias[j])))
        if sink is not None:
            scores.append(mpmath.mpf(sink))
        top = max(scores)
        lse = top + mpmath.log(mpmath.fsum(mpmath.exp(s - top) for s in scores))
        return float(lse)                      # mpf -> float rounds to nearest


def fast_and_slow(keys, query, scale, bias=None, sink=None) -> tuple[float, float]:
    """The double-double path's answer (NaN if it defers) and the integer path's."""
    high, low = exact_scores(keys, query, scale, bias)
    if sink is not None:
        high, low = with_sink(high, low, sink)
    *_, l_high, l_low = exact_unnormalised(high, low)
    return float(exact_lse(high, low, l_high, l_low)), exact_row_lse(keys, query, scale, bias,
                                                                      sink)


@given(n=st.integers(1, 8), dim=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
       magnitude=st.sampled_from([1e-3, 1.0, 30.0, 1e4]), with_sink=st.booleans(),
       with_bias=st.booleans())
def test_both_paths_are_correctly_rounded(n, dim, seed, magnitude, with_sink, with_bias):
    rng = np.random.default_rng(seed)
    keys, query = rng.normal(size=(n, dim)) * magnitude, rng.normal(size=dim)
    bias = rng.normal(size=n) * 3 if with_bias else None
    sink = float(rng.normal()) if with_sink else None
    expected = mpmath_lse(keys, query.tolist(), 0.5, bias, sink)
    fast, slow = fast_and_slow(keys, query, 0.5, bias, sink)
    assert slow == expected
    assert math.isnan(fast) or fast == expected


HARD = {
    # lse = -log 2 (rounded) + log 2: a result near 0, far below the scores' ulp
    "cancellation to ~2e-17": (np.full((2, 1), -math.log(2)), [1.0]),
    "cancellation with three": (np.full((3, 1), -math.log(3)), [1.0]),
    "scores near the largest float": (np.array([[1.5e154], [1.4e154]]), [1.1e154]),
    "the largest float, twice": (np.full((2, 1), 1.7976931348623157e308), [1.0]),
    "-1e300, three times": (np.full((3, 1), -1e300), [1.0]),
    "weights in exp's subnormal band": (np.array([[0.0], [-745.0], [-700.0], [-760.5]]),
                                        [1.0]),
    "one route: the score itself": (np.array([[3.0, 1e-300]]), [1e-10, 7.0]),
    "gaps of 1e-17": (np.array([[1.0], [1.0 + 2**-52], [1.0 - 2**-53]]), [1e5]),
}


@pytest.mark.parametrize("name", sorted(HARD))
def test_hard_rows_are_correctly_rounded(name):
    keys, query = HARD[name]
    fast, slow = fast_and_slow(keys, np.array(query), 1.0)
    expected = mpmath_lse(keys, query, 1.0)
    assert slow == expected
    assert math.isnan(fast) or fast == expected


def test_a_sink_alone_is_its_logit_and_a_row_of_one_score_is_that_score():
    assert exact_row_lse(np.zeros((0, 2)), np.zeros(2), 1.0, None, sink=-1.25) == -1.25
    keys, query = np.array([[1.0, 3.0]]), np.array([0.1, 0.2])
    high, low = exact_scores(keys, query, 0.3)
    score = mpmath_lse(keys, query.tolist(), 0.3)                     # log(exp(s)) = s
    assert exact_lse(high, low, *exact_unnormalised(high, low)[2:]) == score


def test_the_double_double_path_decides_ordinary_rows():
    """The integer fallback is for hard rows: ordinary ones are decided fast."""
    rng = np.random.default_rng(3)
    rows = [fast_and_slow(rng.normal(size=(6, 4)), rng.normal(size=4), 0.5)[0]
            for _ in range(50)]
    assert not any(math.isnan(x) for x in rows)


def test_rows_stacked_get_the_bits_they_get_alone():
    rng = np.random.default_rng(4)
    high, low = rng.normal(size=(5, 7)) * 10, rng.normal(size=(5, 7)) * 1e-16
    *_, l_high, l_low = exact_unnormalised(high, low)
    stacked = exact_lse(high, low, l_high, l_low)
    alone = [exact_lse(h, lo, *exact_unnormalised(h, lo)[2:]) for h, lo in zip(high, low)]
    assert stacked.tolist() == [float(x) for x in alone]


def test_a_row_spanning_the_whole_float_range_is_rounded_not_overflowed():
    # Found by hypothesis: biases of -max and 1e300 in one row put the integer path's
    # bisection bounds past the largest float (an OverflowError, before the fix).
    query = [0.1257302210933933, -0.1321048632913019, 0.6404226504432821]
    keys = np.array([[-0.535669373161111, 0.36159505490948474, 1.3040000451301372],
                     [0.9470809631292422, -0.7037352358069926, -1.2654214710460525],
                     [-0.6232744625373522, 0.0413259793472436, -2.3250307746388343],
                     [-0.21879166393254573, -1.2459109472530652, -0.7322673547034516]])
    bias = [-np.finfo(np.float64).max, 1e300, 1e300, 1e300]
    expected = mpmath_lse(keys, query, 1 / math.sqrt(3), bias)
    assert exact_row_lse(keys, query, 1 / math.sqrt(3), bias) == expected
    _, lse = rs.attention(np.array([query]), keys, np.ones((4, 1)), attn_mask=np.array([bias]),
                          numerics="exact", return_lse=True)
    assert lse[0] == expected


@given(st.floats(1.0, 2.0**60), st.floats(-1.0, 1.0), st.integers(0, 1))
def test_log_terms_sum_to_log_l_within_the_bound(l_high, low_fraction, ulp_below):
    """The three floats of one Newton step sum, exactly, to within 2^-92 (relative to
    log l's own size, and l's error) of log l, for l = l_high + l_low >= 1 any double-double."""
    l_high = float(np.nextafter(l_high, 0) if ulp_below and l_high > 1 else l_high)
    l_low = low_fraction * math.ulp(l_high) / 2                          # |l_low| <= ulp/2
    terms = log_terms(np.array([l_high]), np.array([l_low]))
    with mpmath.workprec(300):
        total = mpmath.fsum(mpmath.mpf(float(t[0])) for t in terms)
        truth = mpmath.log(mpmath.mpf(l_high) + mpmath.mpf(l_low))
        assert abs(total - truth) <= mpmath.mpf(2) ** -92
