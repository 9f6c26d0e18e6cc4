"""What one query node computes, in a fixed order that no delivery schedule can change.

Every function here works on one query node's routes, listed in source order (ascending
key index). The simulator calls them once per node, over the node's whole route list,
never over "whatever arrived together": BLAS results for a row depend on the shape of
the batch it is computed in, but not on anything else, so one call per node over a
fixed list gives the same bits under every schedule. docs/design.md has the measurement.
"""

from __future__ import annotations

import numpy as np

from .exact import (
    exact_budget,
    exact_numerator,
    exact_pull,
    exact_scores,
    exact_shares,
    exact_unnormalised,
)

__all__ = ["Kernels", "exact_budget", "exact_pull", "exact_scores", "exact_shares",
           "exact_numerator", "exact_unnormalised",
           "match_scores", "merge_states", "online_state", "routing_budget", "scale_scores",
           "sink_budget", "value_shift", "weighted_pull", "with_sink"]


def match_scores(keys: np.ndarray, query: np.ndarray, scale: float,
                 bias: np.ndarray | None = None) -> np.ndarray:
    """Scores of one query against its reachable keys: ``keys @ query · scale + bias``.

    Overflow to inf is left for the caller to report (it checks whole batches at once).

    Examples
    --------
    >>> match_scores(np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([3.0, 1.0]), 0.5)
    array([2.5, 0.5])
    """
    return scale_scores(keys @ query, scale, bias)                     # (n_routes,)


def scale_scores(dots: np.ndarray, scale: float, bias: np.ndarray | None = None) -> np.ndarray:
    """``dots · scale + bias``, in place: elementwise, so a block of nodes gets each node's
    exact bits."""
    with np.errstate(over="ignore", invalid="ignore"):
        dots *= dots.dtype.type(scale)
        if bias is not None:
            dots += bias
    return dots


def routing_budget(scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Stable softmax of one node's scores (or of rows of equal length): budget shares.

    The row max is subtracted before ``exp``; there is no epsilon and no clamping. Every
    operation is elementwise or a reduction along the row, so a row stacked with others
    gets exactly the bits it gets alone.

    Examples
    --------
    >>> routing_budget(np.log(np.array([5.0, 3.0, 2.0]))).round(2)
    array([0.5, 0.3, 0.2])
    """
    shares = np.subtract(scores, scores.max(axis=-1, keepdims=True), out=out)  # (..., n_routes)
    np.exp(shares, out=shares)
    shares /= shares.sum(axis=-1, keepdims=True)
    return shares


def sink_budget(scores: np.ndarray, sinks: np.ndarray | float, out: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`routing_budget` with a sink: one more logit per row that takes a share of the
    budget and pulls no value. Returns the routes' shares and the sink's share.

    With ``m = max(sink, max_j s_j)``: ``w_j = exp(s_j - m) / (exp(sink - m) + Σ_j exp(s_j
    - m))``, so a row's shares sum to less than 1, and a row with no route gives the sink
    everything. Elementwise and per-row work only, as in :func:`routing_budget`.

    Examples
    --------
    >>> shares, sink = sink_budget(np.log(np.array([2.0, 1.0])), np.log(1.0))
    >>> shares.round(2), sink.round(2)
    (array([0.5 , 0.25]), np.float64(0.25))
    """
    sink = np.asarray(sinks, dtype=scores.dtype)[..., None]            # (..., 1)
    top = np.maximum(scores.max(axis=-1, keepdims=True, initial=-np.inf), sink)  # (..., 1)
    shares = np.subtract(scores, top, out=out)                         # (..., n_routes)
    np.exp(shares, out=shares)
    sink_weight = np.exp(sink - top)                                   # (..., 1)
    total = shares.sum(axis=-1, keepdims=True) + sink_weight
    shares /= total
    return shares, (sink_weight / total)[..., 0]


def with_sink(high: np.ndarray, low: np.ndarray, sinks: np.ndarray | float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``(high, low)`` with each row's sink logit as one more route at the end: its
    high part is the logit and its low part 0 (a logit is a float, exactly). The sink joins
    ``m`` and ``l``; it pulls no value, so it never enters :func:`exact_pull`'s numerator.

    Examples
    --------
    >>> high, low = with_sink(np.array([[1.0, 2.0]]), np.array([[1e-17, 0.0]]), np.array([3.0]))
    >>> high.tolist(), low.tolist()
    ([[1.0, 2.0, 3.0]], [[1e-17, 0.0, 0.0]])
    """
    sink = np.broadcast_to(np.asarray(sinks, np.float64)[..., None], (*high.shape[:-1], 1))
    return np.concatenate([high, sink], axis=-1), np.concatenate([low, np.zeros_like(sink)],
                                                                 axis=-1)


def weighted_pull(shares: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Add up the pulled values, each weighted by its share: ``shares @ values``.

    Examples
    --------
    >>> weighted_pull(np.array([0.5, 0.5]), np.array([[2.0, 0.0], [4.0, 2.0]]))
    array([3., 1.])
    """
    return shares @ values                                             # (Ev,)


class Kernels:
    """The per-node score and budget operations of one numerics mode.

    ``scores(keys, query, scale, bias) -> (high, low)`` (``low`` is None in float mode);
    ``budget(high, low, sinks) -> (shares, sink shares or None)``.
    """

    def __init__(self, numerics: str) -> None:
        self.exact = numerics == "exact"

    def scores(self, keys: np.ndarray, query: np.ndarray, scale: float,
               bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores of ``query`` against ``keys``: ``(high, low)`` double-doubles in exact
        mode, ``(scores, None)`` in float mode."""
        if self.exact:
            return exact_scores(keys, query, scale, bias)
        return match_scores(keys, query, scale, bias), None

    def budget(self, high: np.ndarray, low: np.ndarray | None,
               sinks: np.ndarray | float | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Shares of the scores ``high`` (plus ``low``: exact mode's double-doubles), and
        the sink's share of each row when ``sinks`` gives its logit (else None)."""
        if not self.exact:
            return (routing_budget(high), None) if sinks is None else sink_budget(high, sinks)
        assert low is not None, "exact scores are double-doubles (high, low)"
        if sinks is None:
            return exact_budget(high, low), None
        shares = exact_budget(*with_sink(high, low, sinks))           # (..., n_routes + 1)
        return shares[..., :-1], shares[..., -1]


# ---------------------------------------------------------------- online softmax states


def online_state(scores: np.ndarray, values: np.ndarray
                 ) -> tuple[float, float, np.ndarray]:
    """The streaming state ``(m, l, o)`` after taking in these (score, value) pairs in order.

    ``m`` is the running max, ``l = Σ exp(s - m)`` and ``o = Σ exp(s - m) v``; the output
    is ``o / l``. Each step rescales by ``exp(m_old - m_new)``.

    Examples
    --------
    >>> m, l, o = online_state(np.log(np.array([1.0, 3.0])), np.array([[4.0], [8.0]]))
    >>> float(m), float(l), (o / l).tolist()
    (1.0986122886681098, 1.3333333333333333, [7.0])
    """
    dtype = values.dtype
    state = (dtype.type(-np.inf), dtype.type(0), np.zeros(values.shape[1], dtype=dtype))
    for score, value in zip(scores, values):
        state = merge_states(state, (score, dtype.type(1), value))
    return state


def merge_states(a: tuple, b: tuple) -> tuple:
    """Merge two streaming states ``(m, l, o)`` of disjoint key groups (FlashAttention).

    Works elementwise on rows too: ``m`` and ``l`` of shape ``(...)``, ``o`` of shape
    ``(..., Ev)``. A state with no route yet is ``(-inf, 0, 0)``; two of those merge into
    another (the max is guarded before ``-inf - (-inf)`` can happen).

    Examples
    --------
    >>> scores, values = np.array([0.5, 2.0, -1.0]), np.eye(3)
    >>> m, l, o = merge_states(online_state(scores[:1], values[:1]),
    ...                        online_state(scores[1:], values[1:]))
    >>> np.allclose(o / l, routing_budget(scores) @ values, rtol=1e-15)
    True
    >>> empty = (np.array([-np.inf]), np.array([0.0]), np.zeros((1, 2)))
    >>> merge_states(empty, empty)[1]
    array([0.])
    """
    (m_a, l_a, o_a), (m_b, l_b, o_b) = a, b
    m = np.maximum(m_a, m_b)
    pivot = np.where(np.isfinite(m), m, 0.0).astype(np.result_type(m))
    c_a, c_b = np.exp(m_a - pivot), np.exp(m_b - pivot)    # exp(-inf) = 0: an empty side
    o = np.asarray(c_a)[..., None] * o_a + np.asarray(c_b)[..., None] * o_b
    return m, c_a * l_a + c_b * l_b, o.reshape(np.shape(o_a))


HEADROOM = 960          # accumulate values below 2^960: room for 2^63 terms under 2^1024


def value_shift(values: np.ndarray) -> np.ndarray:
    """Per row of values, the power of two that brings its largest entry below 2^960.

    The accumulator ``o = Σ exp(s - m) v`` holds ``o · 2^-shift``: a sum of many values
    near the largest float overflows although the output (a weighted mean) does not.
    Scaling by a power of two is exact (bar values under 2^-1022+shift, too small to
    change such an output), and ``shift`` is 0 for values below 2^960, so ordinary runs
    get the same bits as without it.

    Examples
    --------
    >>> value_shift(np.array([[1.0, -2.0], [1e307, 0.0]])).tolist()
    [0, 60]
    """
    _, exponent = np.frexp(np.abs(values).max(axis=-1, initial=0.0))  # |v| < 2^exponent
    return np.maximum(exponent - HEADROOM, 0).astype(np.int64)
