"""One query row of exact mode in integer arithmetic: the fallback that always decides.

The double-double kernels of :mod:`routing_sim.numerics.exact` are fast and carry about 90 bits,
which decides the correctly rounded result of almost every row. They hand a row over
(by returning NaN for it) when they cannot: scores too large for 90 bits to pin the
gaps between them, a weight in the subnormal band, values near the largest float, a
result too close to a rounding boundary. This module then computes the row exactly:

* scores ``s_j = q·k_j·scale + b_j`` as integers times ``2^-3222`` (every product of
  three floats and every float is a multiple of that), so gaps are exact at any size;
* ``e_j = exp(s_j - max s)`` in fixed point with ``W`` bits (range reduction by a
  ``W``-bit ln 2, Taylor series), each within a relative ``2^-W``;
* a weight with ``s_j - max s < -1600`` is bounded, not computed: ``e_j < 2^-2308``, so
  even times the largest value it is below ``2^-1284``, under half the smallest
  subnormal; it enters the error bound, not the sum;
* the output ``Σ e_j v_j / Σ e_j`` and each share ``e_j / Σ e_j`` as exact fractions
  with an error bound; if both ends of the interval round to the same float, that is
  the correctly rounded result (``float(Fraction)`` rounds correctly), else ``W``
  doubles (Ziv's strategy), up to 4096 bits;
* if the interval holds one rounding boundary ``c``, the sign of ``Σ e_j (v_j - c)`` over
  every route, bounded weights included, decides the side (:func:`_settle`): a tie of the
  rest is decided by the tiny weights, so the result is correctly rounded in every case.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from functools import cache

import numpy as np

from ..errors import NumericalError

__all__ = ["exact_row", "exact_row_lse"]

FLOOR = 3222                 # every score is an integer multiple of 2^-FLOOR
NEGLIGIBLE = 1600            # s - max s below -NEGLIGIBLE: e < 2^-2308, bounded
TAIL = Fraction(1, 2**2308)  # > exp(-NEGLIGIBLE)
PRECISIONS = (128, 256, 512, 1024, 2048, 4096)


def exact_row(keys: np.ndarray, query: np.ndarray, scale: float, bias: np.ndarray | None,
              values: np.ndarray | None = None, pulled: np.ndarray | None = None,
              sink: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Correctly rounded shares ``e_j / l`` and output ``Σ_pulled e_j v_j / l`` of one row.

    ``keys`` ``(n, E)`` are the routes the softmax runs over, ``bias`` ``(n,)`` or None,
    ``values`` ``(n, Ev)`` (None: shares only) and ``pulled`` ``(n,)`` the routes whose
    values enter the output (None: all). A ``sink`` logit is one more route, last, whose
    score is the logit and which pulls no value: the shares then have ``n + 1`` entries,
    the sink's last. Slow (Python integers), for the rows the double-double kernels cannot
    decide.

    Examples
    --------
    >>> shares, output = exact_row(np.array([[1e154], [1e154]]), np.array([1.5e154]), 1.0,
    ...                            None, np.array([[1e308], [1e308]]))
    >>> shares.tolist(), output.tolist()
    ([0.5, 0.5], [1e+308])
    """
    scores = _integer_scores(keys, query, scale, bias)
    value_rows = None if values is None else [[v.as_integer_ratio() for v in row]
                                              for row in np.asarray(values, np.float64).tolist()]
    pulls = [True] * len(scores) if pulled is None else [bool(p) for p in pulled]
    if sink is not None:                      # a route with the logit as score, no value
        scores.append(_sink_score(sink))
        pulls.append(False)
        if values is not None and value_rows is not None:
            value_rows.append([(0, 1)] * np.shape(values)[1])
    top = max(scores)
    gaps = [score - top for score in scores]                          # <= 0, times 2^FLOOR
    kept = [gap >= -NEGLIGIBLE << FLOOR for gap in gaps]
    for precision in PRECISIONS:
        decided = _attempt(gaps, kept, value_rows, pulls, precision,
                           last=precision == PRECISIONS[-1])
        if decided is not None:
            return decided
    raise AssertionError("unreachable: the last precision always decides")


def exact_row_lse(keys: np.ndarray, query: np.ndarray, scale: float, bias: np.ndarray | None,
                  sink: float | None = None) -> float:
    """The correctly rounded log-sum-exp ``log Σ_j exp(s_j)`` of one row (a ``sink`` logit
    one more term), in integers: the fallback of
    :func:`~routing_sim.numerics.exact.exact_lse`.

    The float nearest ``lse`` is found by bisection over the floats between two bounds
    (a float estimate's, checked, else ``m <= lse < m + n``), each step asking on which
    side of a rounding boundary ``c`` (a midpoint of two floats) ``lse`` lies: ``lse > c``
    exactly when ``Σ_j exp(s_j - c) - 1 > 0``, a sum of exponentials of rationals whose
    sign :func:`_sign_at` decides exactly. It is never 0 for two or more terms
    (Lindemann–Weierstrass: ``exp(c)`` is not a sum of other exponentials of rationals),
    so ``lse`` is never a tie; a row of one score is that score, rounded.

    Examples
    --------
    >>> exact_row_lse(np.array([[1.0], [1.0]]), np.array([1e300]), 1.0, None)   # m + log 2
    1e+300
    >>> exact_row_lse(np.array([[0.0]]), np.array([0.0]), 1.0, None, sink=0.0)
    0.6931471805599453
    """
    scores = _integer_scores(keys, query, scale, bias)
    if sink is not None:
        scores.append(_sink_score(sink))
    top = max(scores)
    if len(scores) == 1:
        return _to_float(Fraction(top, 1 << FLOOR))

    def above(index: int) -> bool:
        """Is lse above the rounding boundary between float ``index`` and the next?"""
        boundary = (_value_at(index) + _value_at(index + 1)) / 2 * (1 << FLOOR)
        assert boundary.denominator == 1, "a midpoint of floats is a multiple of 2^-1075"
        sign = _sign_at([score - int(boundary) for score in scores] + [0],
                        [Fraction(1)] * len(scores) + [Fraction(-1)], Fraction(0))
        assert sign, "lse is transcendental: never on a boundary"
        return sign > 0

    top_float = _to_float(Fraction(top, 1 << FLOOR))
    total = math.fsum(math.exp(_to_float(Fraction(score - top, 1 << FLOOR)))
                      for score in scores)                              # in [1, n]
    estimate = top_float + math.log(total)
    width = 2.0**-48 * (abs(top_float) + len(scores))                 # > its error
    low = max(_index(estimate - width) - 1, -_INFINITE)
    high = min(_index(estimate + width) + 1, _INFINITE)
    if not above(low) or (high < _INFINITE and above(high)):         # the estimate missed
        low = max(_index(top_float) - 1, -_INFINITE)                   # boundary <= m < lse
        high = _index(_to_float(Fraction(top, 1 << FLOOR) + len(scores)))  # > m + log n
    while high - low > 1:                       # boundary(low) < lse < boundary(high)
        middle = (low + high) // 2
        if above(middle):
            low = middle
        else:
            high = middle
    return _at_index(high)


_INFINITE = struct.unpack("<q", struct.pack("<d", math.inf))[0]     # the index of inf


def _index(x: float) -> int:
    """Floats numbered in order: 0 is ±0, 1 the smallest subnormal, ``_INFINITE`` inf."""
    bits = struct.unpack("<q", struct.pack("<d", abs(x)))[0]
    return bits if x >= 0 else -bits


def _at_index(index: int) -> float:
    """The float of an :func:`_index`."""
    x = struct.unpack("<d", struct.pack("<q", abs(index)))[0]
    return x if index >= 0 else -x


def _value_at(index: int) -> Fraction:
    """The float of an index as an exact fraction; ±inf counts as ±2^1024, so the boundary
    between the largest float and inf is where rounding to inf starts."""
    if abs(index) >= _INFINITE:
        return Fraction(2**1024 if index > 0 else -2**1024)
    return Fraction(_at_index(index))


def _sink_score(sink: float) -> int:
    """A sink logit as a score: ``sink · 2^FLOOR``, exactly."""
    mantissa, exponent = _parts(float(sink))
    return mantissa << (exponent + FLOOR)


def _integer_scores(keys, query, scale, bias) -> list[int]:
    """``s_j · 2^FLOOR`` exactly, for every route; NumericalError if one rounds to inf."""
    query_parts = [_parts(x) for x in np.asarray(query, np.float64).tolist()]
    scale_mantissa, scale_exponent = _parts(float(scale))
    biases = [0.0] * len(keys) if bias is None else np.asarray(bias, np.float64).tolist()
    scores = []
    for row, b in zip(np.asarray(keys, np.float64).tolist(), biases):
        dot = 0                                                         # q·k · 2^2148
        for (qm, qe), (km, ke) in zip(query_parts, (_parts(x) for x in row)):
            dot += (qm * km) << (qe + ke + 2148)
        bias_mantissa, bias_exponent = _parts(b)
        score = ((dot * scale_mantissa) << (scale_exponent + 1074)) \
            + (bias_mantissa << (bias_exponent + FLOOR))
        if math.isinf(_to_float(score, 1 << FLOOR)):
            raise NumericalError(f"a score overflowed float64 (|q·k·scale + bias| above "
                                 f"{np.finfo(np.float64).max:.4g}); scale the inputs down")
        scores.append(score)
    return scores


def _parts(x: float) -> tuple[int, int]:
    """``x = mantissa · 2^exponent`` with integers, exponent >= -1074."""
    numerator, denominator = x.as_integer_ratio()
    return numerator, 1 - denominator.bit_length()


def _to_float(numerator: int | Fraction, denominator: int = 1) -> float:
    """The correctly rounded float of a fraction, ±inf beyond the largest float."""
    try:
        return float(numerator / denominator)
    except OverflowError:                    # the sign by comparison: float() overflows again
        return math.inf if (numerator > 0) == (denominator > 0) else -math.inf


@cache
def _ln2(bits: int) -> int:
    """ln 2 · 2^bits, within 2 units: ln 2 = Σ 1/(k·2^k)."""
    guard = bits + 16
    total, k = 0, 1
    while True:
        term = (1 << guard) // (k << k)
        if not term:
            return total >> 16
        total += term
        k += 1


def _exp(gap: int, bits: int) -> tuple[int, int]:
    """``(X, k)`` with ``exp(gap · 2^-FLOOR) ≈ X · 2^(k - bits)`` within relative 2^-(bits - 16)
    (``-NEGLIGIBLE <= gap · 2^-FLOOR <= 0``)."""
    fixed = gap >> (FLOOR - bits) if FLOOR >= bits else gap << (bits - FLOOR)
    ln2 = _ln2(bits)
    k = round(fixed / ln2)
    r = fixed - k * ln2                                                 # |r| <= 0.35·2^bits
    term, total, n = 1 << bits, 1 << bits, 1
    while term:
        product = term * r
        term = product // (n << bits) if product >= 0 else -(-product // (n << bits))
        total += term
        n += 1
    return total, k


def _attempt(gaps, kept, value_rows, pulled, precision: int, last: bool):
    """Shares and output at one working precision, or None if the error interval straddles
    a rounding boundary (the last precision returns the nearest float regardless)."""
    bits = precision + 32
    weights = [_exp(gap, bits) if keep else None for gap, keep in zip(gaps, kept)]
    k_min = min(k for weight in weights if weight is not None for k in (weight[1],))
    mantissas = [0 if w is None else w[0] << (w[1] - k_min) for w in weights]  # e · 2^(bits-k_min)
    unit = Fraction(1, 1 << bits) * Fraction(2) ** k_min                 # value of one unit
    # exp(0) = 1 is exact (a tie with the max); every other weight is within 2^-precision
    relative = [Fraction(0) if gap == 0 else Fraction(1, 1 << precision) for gap in gaps]
    dropped = sum(1 for keep in kept if not keep)
    total = sum(mantissas)
    total_error = sum(r * m for r, m in zip(relative, mantissas)) + dropped * TAIL / unit
    low_total = total - total_error
    shares = []
    for index, (mantissa, keep, rel) in enumerate(zip(mantissas, kept, relative)):
        if not keep:
            shares.append(0.0)                        # e_j / l < 2^-2308: rounds to 0
            continue
        share = Fraction(mantissa, total)
        error = (rel * mantissa + share * total_error) / low_total
        decided = _decide(share, error, False)
        if decided is None:
            decided = _settle(share, error, gaps, [Fraction(int(j == index))
                                                   for j in range(len(gaps))])
        if decided is None:
            decided = _decide(share, error, last)
        if decided is None:
            return None
        shares.append(decided)
    if value_rows is None:
        return np.array(shares), None
    output = []
    for column in range(len(value_rows[0]) if value_rows else 0):
        numerator, magnitude, tail = Fraction(0), Fraction(0), Fraction(0)
        for mantissa, keep, take, row, rel in zip(mantissas, kept, pulled, value_rows,
                                                  relative):
            if not take:
                continue
            value = Fraction(*row[column])
            if keep:
                numerator += mantissa * value
                magnitude += rel * mantissa * abs(value)
            else:
                tail += abs(value)
        mean = numerator / total
        error = (magnitude + tail * TAIL / unit + abs(mean) * total_error) / low_total
        decided = _decide(mean, error, False)
        if decided is None:
            decided = _settle(mean, error, gaps,
                              [Fraction(*row[column]) if take else Fraction(0)
                               for take, row in zip(pulled, value_rows)])
        if decided is None:
            decided = _decide(mean, error, last)
        if decided is None:
            return None
        output.append(decided)
    return np.array(shares), np.array(output)


def _settle(x: Fraction, error: Fraction, gaps: list[int], values: list[Fraction]
            ) -> float | None:
    """Round ``y = Σ e_j v_j / Σ e_j`` (``y`` within ``error`` of ``x``) when that interval
    holds exactly one rounding boundary ``c``: the side of ``c`` is the sign of
    ``Σ e_j (v_j - c)``, decided by :func:`_sign_at` with every weight, the bounded ones
    included. None if the interval is wider than one boundary."""
    low, high = _to_float(x - error), _to_float(x + error)
    if math.isinf(low) or math.isinf(high) or high != math.nextafter(low, math.inf):
        return None
    boundary = (Fraction(low) + Fraction(high)) / 2
    sign = _sign_at(gaps, values, boundary)
    return high if sign > 0 else low if sign < 0 else float(boundary)  # exact tie: to even


def _sign_at(gaps: list[int], values: list[Fraction], boundary: Fraction) -> int:
    """The sign of ``Σ_j exp(gap_j · 2^-FLOOR) (v_j - boundary)``, exactly.

    Routes with the same gap share one weight; their coefficients are summed exactly.
    If every coefficient is 0 the sum is 0 (an exact tie). Otherwise it is not 0: the
    exponentials of distinct rationals are linearly independent over the rationals
    (Lindemann–Weierstrass), so raising the precision, and the cutoff below which a
    weight is only bounded, always decides the sign; weights far below the top nonzero
    group are no longer negligible here, they are what decides a tie of the rest.

    >>> _sign_at([0, 0, -5 << FLOOR], [Fraction(0), Fraction(2), Fraction(3)], Fraction(1))
    1
    """
    groups: dict[int, Fraction] = {}
    for gap, value in zip(gaps, values):
        groups[gap] = groups.get(gap, Fraction(0)) + value - boundary
    live = {gap: c for gap, c in groups.items() if c}
    if not live:
        return 0
    top = max(live)
    precision = PRECISIONS[0]
    while precision <= 1 << 20:
        bits = precision + 32
        total, error = Fraction(0), Fraction(0)
        for gap, coefficient in live.items():
            shift = gap - top                                       # <= 0, times 2^-FLOOR
            if shift < -bits << FLOOR:
                error += abs(coefficient) / (1 << bits)             # e^-bits < 2^-bits
                continue
            mantissa, k = _exp(shift, bits)
            weight = Fraction(mantissa) * Fraction(2) ** (k - bits)
            total += coefficient * weight
            if shift:
                error += abs(coefficient) * weight / (1 << (precision - 1))
        if abs(total) > error:
            return 1 if total > 0 else -1
        precision *= 2
    raise AssertionError("unreachable: a nonzero sum of exponentials has a sign")


def _decide(x: Fraction, error: Fraction, last: bool) -> float | None:
    """The float nearest ``x`` if every number within ``error`` of it rounds the same."""
    nearest = _to_float(x)
    if error == 0 or last or _to_float(x - error) == _to_float(x + error):
        return nearest
    return None
