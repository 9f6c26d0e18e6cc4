"""Partial softmax states of query blocks: compute one per key block, merge, finish.

A partial state of a query row over a group of keys is ``(m, l, o)``: the max score, the
normaliser ``l = Σ exp(s - m)`` and the numerator ``o = Σ exp(s - m) v`` (the
FlashAttention algebra of :func:`routing_sim.numerics.merge_states`). Devices merge the
states of their key blocks in a canonical order (a fixed list, never arrival order), so
every schedule gives the same bits.

In exact mode ``l`` and ``o`` are double-doubles (``l_low``, ``o_low`` hold what rounding
left out), the exp factors of a merge are double-double too, the merged sums are
correctly rounded (``math.fsum``) and the output is rounded once, in :func:`finish`: the
correctly rounded attention output, as :func:`routing_sim.attention` gives with
``numerics="exact"``.

Attention sinks have no key block: :func:`sink_state` is the state of a sink alone (its
logit as ``m``, ``l = 1``, no value), merged once into each finished row's state by the
device that finishes it. :func:`log_sum_exp` reads each row's ``m + log l`` from its final
state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

import numpy as np

from ..errors import NumericalError
from ..numerics.exact import (
    dd_exp,
    dd_multiply,
    dd_quotient,
    exact_numerator,
    exact_scores,
    exact_unnormalised,
    log_terms,
    rounded_or_nan,
    row_sums,
    two_sum,
)
from ..numerics.kernels import merge_states, scale_scores, value_shift

__all__ = ["PartialState", "block_state", "empty_state", "finish", "log_sum_exp", "merge",
           "rounded", "sink_state"]


@dataclass(frozen=True)
class PartialState:
    """``(m, l, o)`` of ``(G, c)`` query rows; ``l_low``/``o_low`` only in exact mode."""

    m: np.ndarray                    # (G, c)
    l: np.ndarray                    # (G, c)  # noqa: E741 (the normaliser l of m, l, o)
    o: np.ndarray                    # (G, c, Ev)
    l_low: np.ndarray | None = None  # (G, c)
    o_low: np.ndarray | None = None  # (G, c, Ev)
    shift: np.ndarray | None = None  # (G, c) float mode: o holds o · 2^-shift (None: 0)

    @property
    def exact(self) -> bool:
        return self.l_low is not None

    def nbytes(self, itemsize: int) -> int:
        """Bytes of the state on the wire: ``m``, ``l`` and ``o`` at ``itemsize`` each (and
        the low parts of ``l`` and ``o`` in exact mode)."""
        parts = 1 + (2 if self.exact else 1) * (1 + self.o.shape[-1])
        return self.m.size * (parts + (self.shift is not None)) * itemsize

    def rows(self, index: int | slice | tuple[int | slice, ...] | np.ndarray) -> PartialState:
        """The state of some rows, e.g. ``state.rows(np.s_[:, 2:4])``."""
        shift = None if self.shift is None else self.shift[index]
        if self.l_low is None or self.o_low is None:
            return PartialState(self.m[index], self.l[index], self.o[index], None, None, shift)
        return PartialState(self.m[index], self.l[index], self.o[index], self.l_low[index],
                            self.o_low[index], shift)


def block_state(query: np.ndarray, key: np.ndarray, value: np.ndarray, allowed: np.ndarray,
                scale: float, exact: bool, bias: np.ndarray | None = None,
                cap: Callable | None = None) -> PartialState:
    """The partial state of query rows ``(G, cq, d)`` over one key block ``(G, ck, d)``
    with values ``(G, ck, Ev)``, where ``allowed`` ``(cq, ck)`` says which routes exist.

    A score is ``q·k·scale``, through ``cap`` (FlashAttention's softcap, float mode only),
    plus ``bias`` ``(G, cq, ck)`` (ALiBi), in the order :func:`routing_sim.attention`
    applies them."""
    if exact:
        return _exact_block_state(query, key, value, allowed, scale, bias)
    scores = scale_scores(query @ key.swapaxes(-1, -2), scale)         # (G, cq, ck)
    if cap is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            scores = cap(scores, None, None, None, None)               # softcap reads no index
    if bias is not None:
        scores += bias                                                 # (G, cq, ck)
    if np.isinf(scores[:, allowed]).any():
        raise NumericalError("a score overflowed to inf; scale the inputs down")
    scores[:, ~allowed] = -np.inf
    m = scores.max(axis=-1)                                            # (G, cq)
    pivot = np.where(np.isfinite(m), m, 0).astype(m.dtype)             # an empty row: 0
    scores -= pivot[..., None]
    np.exp(scores, out=scores)                                         # (G, cq, ck)
    shift = value_shift(value.reshape(len(value), -1))                 # (G,)
    if not shift.any():
        return PartialState(m, scores.sum(axis=-1), scores @ value)    # o: (G, cq, Ev)
    scaled = np.ldexp(value, -shift[:, None, None])                    # (G, ck, Ev)
    return PartialState(m, scores.sum(axis=-1), scores @ scaled,
                        shift=np.repeat(shift[:, None], m.shape[1], axis=1))


def _exact_block_state(query, key, value, allowed, scale, bias) -> PartialState:
    groups, rows = query.shape[:2]
    m = np.full((groups, rows), -np.inf)                               # (G, cq)
    l_high, l_low = np.zeros((2, groups, rows))                        # (G, cq) each
    o_high, o_low = np.zeros((2, groups, rows, value.shape[-1]))       # (G, cq, Ev) each
    for group in range(groups):
        for row in np.flatnonzero(allowed.any(axis=1)):
            keys = key[group][allowed[row]]                            # (n, d)
            high, low = exact_scores(keys, query[group, row], scale,
                                     None if bias is None else bias[group, row, allowed[row]])
            unnormalised = exact_unnormalised(high, low, dd_max=False)   # NaN: undecided
            e_high, e_low, l_high[group, row], l_low[group, row] = unnormalised
            m[group, row] = high.max()
            o_high[group, row], o_low[group, row] = exact_numerator(
                e_high, e_low, value[group][allowed[row]])
    return PartialState(m, l_high, o_high, l_low, o_low)


def empty_state(groups: int, rows: int, value_dim: int, dtype: np.dtype, exact: bool
                ) -> PartialState:
    """The state of rows that have seen no key: ``(-inf, 0, 0)``."""
    m = np.full((groups, rows), -np.inf, dtype)                        # (G, c)
    o = np.zeros((groups, rows, value_dim), dtype)                     # (G, c, Ev)
    if exact:
        return PartialState(m.astype(np.float64), np.zeros(m.shape), o.astype(np.float64),
                            np.zeros(m.shape), np.zeros(o.shape))
    return PartialState(m, np.zeros_like(m), o)


def sink_state(sinks: np.ndarray, rows: int, value_dim: int, exact: bool) -> PartialState:
    """The state of ``rows`` query rows of each group over its sink alone: ``m`` the
    group's logit ``sinks`` ``(G,)``, ``l = e^0 = 1`` exactly, ``o = 0`` (a sink pulls no
    value). Merged once into a row's state, it puts the sink's term in the denominator.

    Examples
    --------
    >>> row = PartialState(np.array([[0.0]]), np.array([[1.0]]), np.array([[[6.0]]]))
    >>> merged = merge([row, sink_state(np.array([0.0]), 1, 1, exact=False)])
    >>> finish(merged, np.dtype(np.float64)).tolist()       # 6 · e^0 / (e^0 + e^0)
    [[[3.0]]]
    """
    empty = empty_state(len(sinks), rows, value_dim, sinks.dtype, exact)
    m = np.repeat(sinks[:, None], rows, axis=1).astype(empty.m.dtype)  # (G, c)
    return dataclasses.replace(empty, m=m, l=np.ones_like(empty.l))


def merge(states: list[PartialState], transit: np.dtype | None = None) -> PartialState:
    """Merge the states of disjoint key groups, in the order given (the canonical one).

    Float states fold left with :func:`~routing_sim.numerics.merge_states`, each result
    rounded to ``transit`` when given (a low-precision accumulator); exact states merge all
    at once, correctly rounded, so their order cannot matter.
    """
    if states[0].exact:
        return _exact_merge(states)

    def fold(a: PartialState, b: PartialState) -> PartialState:
        if a.shift is None and b.shift is None:
            return rounded(PartialState(*merge_states((a.m, a.l, a.o), (b.m, b.l, b.o))),
                           transit)
        a_shift, b_shift = (np.zeros(a.m.shape, np.int64) if s.shift is None else s.shift
                            for s in (a, b))
        shift = np.maximum(a_shift, b_shift)                           # (G, c)
        merged = merge_states((a.m, a.l, np.ldexp(a.o, (a_shift - shift)[..., None])),
                              (b.m, b.l, np.ldexp(b.o, (b_shift - shift)[..., None])))
        m, l, o = merged  # noqa: E741 (the normaliser l of m, l, o)
        return rounded(PartialState(m, l, o, shift=shift), transit)

    return reduce(fold, states)


def _exact_merge(states: list[PartialState]) -> PartialState:
    m = np.max([state.m for state in states], axis=0)                  # (G, c)
    routed = np.isfinite(m)
    factors = []
    for state in states:
        present = np.isfinite(state.m)                                 # an empty state: 0
        with np.errstate(over="ignore", invalid="ignore"):
            far = present & ~(state.m - m >= -660.0)                   # e^gap not a normal dd
        gap_high, gap_low = two_sum(np.where(present & ~far, state.m, 0.0),
                                     -np.where(present & ~far, m, 0.0))
        f_high, f_low = dd_exp(gap_high, gap_low)
        f_high = np.where(far, np.nan, f_high)         # undecided: finished in integers
        factors.append((np.where(present, f_high, 0.0), np.where(present, f_low, 0.0)))
    l_terms, o_terms = [], []
    for (f_high, f_low), s in zip(factors, states):
        assert s.l_low is not None and s.o_low is not None, "exact states carry low parts"
        l_terms.append(dd_multiply(f_high, f_low, s.l, s.l_low))
        o_terms.append(dd_multiply(f_high[..., None], f_low[..., None], s.o, s.o_low))
    l_high, l_low = _sum_terms(l_terms)
    o_high, o_low = _sum_terms(o_terms)
    return PartialState(np.where(routed, m, -np.inf), l_high, o_high, l_low, o_low)


def _sum_terms(terms: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Correctly rounded elementwise sums of double-double terms, as a double-double."""
    shape = terms[0][0].shape
    stacked = np.stack([part for term in terms for part in term], axis=-1)  # (..., 2·n)
    high, low = row_sums(stacked.reshape(-1, stacked.shape[-1]))
    return high.reshape(shape), low.reshape(shape)


def rounded(state: PartialState, transit: np.dtype | None) -> PartialState:
    """``l`` and ``o`` rounded to ``transit`` (kept in their own dtype); ``m`` is kept, as
    kernels keep the log-sum-exp in float32 or better."""
    if transit is None:
        return state
    return PartialState(state.m, state.l.astype(transit).astype(state.l.dtype),
                        state.o.astype(transit).astype(state.o.dtype), shift=state.shift)


def finish(state: PartialState, dtype: np.dtype, value_bound: np.ndarray | None = None
           ) -> np.ndarray:
    """The output ``o / l`` (rows without a route: 0, PyTorch's math backend's policy).

    In exact mode ``value_bound`` (``(G, 1, 1)``, the largest |value| of each group)
    bounds the error of the double-double result: ``Σ e |v| <= l · max |v|``. An output
    it cannot round with certainty (Ziv's test, as in :mod:`routing_sim.numerics.exact`) is NaN:
    :func:`routing_sim.parallel.api.context_parallel` finishes it in integers."""
    routed = state.l > 0                                               # (G, c)
    denominator = np.where(routed, state.l, 1.0).astype(state.l.dtype)[..., None]
    if state.l_low is not None and state.o_low is not None:                # exact mode
        low = np.where(routed, state.l_low, 0.0)[..., None]
        first, rest = dd_quotient(state.o, state.o_low, denominator, low)  # (G, c, Ev)
        size = np.inf if value_bound is None else value_bound
        with np.errstate(over="ignore", invalid="ignore"):
            error = ((2.0**-84 + 2.0**-99 * np.abs(state.m)[..., None]) * size
                     + 2.0**-98 * np.abs(first))
        output = rounded_or_nan(first, rest, error, (np.abs(first) >= 2.0**-960)
                                | (size == 0))
    else:
        output = state.o / denominator                                 # (G, c, Ev)
        if state.shift is not None:
            output = np.ldexp(output, state.shift[..., None])
    return np.where(routed[..., None] | np.isnan(state.l)[..., None], output, 0).astype(dtype)


def log_sum_exp(state: PartialState) -> np.ndarray:
    """Each row's log-sum-exp ``m + log l`` ``(G, c)`` (-inf for a row with nothing in its
    softmax), in the state's dtype; float64 in exact mode, correctly rounded, or NaN
    where the double-doubles cannot decide it (the caller then computes it in integers).

    Exact mode follows :func:`routing_sim.numerics.exact.exact_lse`, with the partial
    state's ``m`` (a float) and ``l = Σ e^(s - m)`` (a double-double, ``l >= 1`` up to
    rounding), ``log l`` from :func:`~routing_sim.numerics.exact.log_terms`. The error
    of ``m + y + u`` is ``l``'s relative error (at most ``2⁻⁸⁴ + 2⁻⁹⁹|m|``, the bound
    :func:`finish` takes for ``o / l``) plus ``exp``'s ``2⁻⁹³`` and ``u²/2 < 2⁻⁹³``: under
    ``2⁻⁸³ + 2⁻⁹⁹|m|``, the Ziv bound.

    Examples
    --------
    >>> state = PartialState(np.array([[1.0, -np.inf]]), np.array([[2.0, 0.0]]),
    ...                      np.zeros((1, 2, 1)), np.zeros((1, 2)), np.zeros((1, 2, 1)))
    >>> log_sum_exp(state).tolist() == [[1.0 + float(np.log(2.0)), -np.inf]]
    True
    """
    empty = state.l == 0                                               # (G, c) NaN: not empty
    if state.l_low is None:
        with np.errstate(divide="ignore"):
            return np.where(empty, -np.inf, state.m + np.log(np.where(empty, 1, state.l)))
    known = ~empty & ~np.isnan(state.l)                                # (G, c)
    l_high, l_low = np.where(known, state.l, 1.0), np.where(known, state.l_low, 0.0)
    top = np.where(known, state.m, 0.0)
    terms = np.stack([top, *log_terms(l_high, l_low)], axis=-1)        # (G, c, 4)
    first, rest = row_sums(terms.reshape(-1, 4))
    error = 2.0**-83 + 2.0**-99 * np.abs(top)                          # (G, c)
    lse = rounded_or_nan(first.reshape(top.shape), rest.reshape(top.shape), error, known)
    return np.where(empty, -np.inf, lse)
