"""Hypothesis strategies for attention cases, for the search of
:func:`~routing_sim.testing.check_attention` and for your own tests.

Needs hypothesis (``pip install 'routing_sim[testing]'``); nothing else in routing_sim
imports this module at load time.

>>> from hypothesis import given, settings
>>> import routing_sim as rs
>>> from routing_sim.testing import strategies
>>> @settings(max_examples=20, database=None)
... @given(strategies.cases(features=["causal", "gqa"]))
... def test_mine(case):
...     q, k, v, kwargs = strategies.arguments(case)
...     rs.testing.assert_attention_close(rs.attention(q, k, v, **kwargs), q, k, v, **kwargs)
>>> test_mine()
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from .calling import arguments as layout_arguments
from .cases import (
    OUTPUTS,
    PATTERNS,
    SHAPES,
    Case,
    check_features,
    compatible,
    forms,
    ordered,
)
from .precision import check_dtype

__all__ = ["arguments", "cases"]

# 1..8, then past the tile sizes of 64 and 128. One integer drawn and looked up, not a
# one_of: hypothesis shrinks an integer towards 0, so a failing case shrinks to the
# smallest size that still fails (one_of may stay in its second branch).
_SIZE_CHOICES = (*range(1, 9), 64, 65, 129)
_SIZES = st.integers(0, len(_SIZE_CHOICES) - 1).map(_SIZE_CHOICES.__getitem__)
_VALUES = st.floats(-4, 4, width=16)


def cases(features: Any = (), layout: str = "sdpa", dtype: Any = None,
          require: str | None = None) -> st.SearchStrategy[Case]:
    """Attention cases (:class:`~routing_sim.testing.cases.Case`) that use a random choice
    of ``features`` (``require``: always this one), in ``dtype`` (float64 by default).

    Every case follows one of the patterns named (``full`` when none is: see
    :func:`~routing_sim.testing.cases.check_features`) and has one of the shapes named
    (``padded`` when none is), so ``features=["causal"]`` draws causal cases only,
    ``features=["varlen"]`` packed ones only. Sizes shrink towards one token (packed:
    one sequence), values towards zero: a failure hypothesis finds is reported small.
    """
    chosen = check_features(features, layout)
    dtype_name = check_dtype(dtype)
    if require is not None and require not in chosen - OUTPUTS:
        raise ValueError(f"require={require!r} is not one of the features {sorted(chosen)}")
    found = forms(require, chosen, layout)
    if not found:
        named = ordered(chosen & (PATTERNS | SHAPES))
        raise ValueError(f"require={require!r} combines with none of the patterns and shapes "
                         f"named ({', '.join(named)}) in layout {layout!r}")
    return _cases(chosen, layout, dtype_name, require, found)


def arguments(case: Case, layout: str = "sdpa") -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(q, k, v, kwargs)`` of a case as numpy arrays, in the layout's shapes and names."""
    (query, key, value), kwargs = layout_arguments(case, layout, "numpy")
    return query, key, value, kwargs


@st.composite
def _cases(draw: st.DrawFn, chosen: frozenset[str], layout: str, dtype: str,
           require: str | None, found: list[tuple[str, str]]) -> Case:
    wanted = {name for name in sorted(chosen - OUTPUTS) if draw(st.booleans())}
    form = draw(st.sampled_from(found))                 # (shape, pattern)
    on = compatible(wanted, layout, first=[name for name in (require, *form) if name])
    batch = 1 if "varlen" in on else draw(st.integers(1, 2))
    kv_heads = draw(st.integers(1, 2))
    heads = kv_heads * (draw(st.integers(2, 3)) if "gqa" in on else 1)
    if "varlen" in on:
        sequences = draw(st.integers(1, 3))
        # Some sequence has a query and some a key: an empty packed batch is no case.
        lengths_q = [draw(st.integers(1, 5))] + draw(
            st.lists(st.integers(0, 5), min_size=sequences - 1, max_size=sequences - 1))
        lengths_k = [draw(st.integers(1, 6))] + draw(
            st.lists(st.integers(0, 6), min_size=sequences - 1, max_size=sequences - 1))
        cu_seqlens = (np.r_[0, np.cumsum(lengths_q)], np.r_[0, np.cumsum(lengths_k)])
        n_queries, n_keys = int(cu_seqlens[0][-1]), int(cu_seqlens[1][-1])
    else:
        cu_seqlens = None
        n_queries = 1 if "decode" in on else draw(_SIZES)
        n_keys = draw(_SIZES)
    dim = draw(st.integers(1, 8))
    # Ev = E unless asked: FlashAttention 2's kernels need it.
    value_dim = draw(st.integers(1, 8).filter(lambda n: n != dim)) if "value_dim" in on \
        else dim
    size = draw(st.sampled_from([1.0, 0.25, 8.0]))

    def values(shape: tuple[int, ...]) -> np.ndarray:
        return draw(arrays(np.float64, shape, elements=_VALUES)) * size

    case = Case(values((batch, heads, n_queries, dim)), values((batch, kv_heads, n_keys, dim)),
                draw(arrays(np.float64, (batch, kv_heads, n_keys, value_dim), elements=_VALUES)),
                dtype, scale=draw(st.none() | st.floats(0.0625, 2, width=16)),
                cu_seqlens=cu_seqlens, decode="decode" in on)
    routes = (batch, heads, n_queries, n_keys)
    options: dict[str, Any] = {}
    if "causal" in on:
        options["causal"] = "bottom_right" if layout == "flash" or "varlen" in on else "top_left"
    if "bottom_right" in on:
        options["causal"] = "bottom_right"
    if "mask" in on:
        shape = (draw(st.sampled_from([1, batch])), draw(st.sampled_from([1, heads])),
                 n_queries, n_keys)
        options["mask"] = draw(arrays(bool, shape) | arrays(
            np.float64, shape, elements=st.sampled_from([-np.inf, 0.0]) | _VALUES))
    if "window" in on:
        right = draw(st.sampled_from([0, -1])) if "causal" in options else \
            draw(st.integers(-1, 4))
        options["window"] = (draw(st.integers(-1, 4)), right)
    if "softcap" in on:
        options["softcap"] = draw(st.sampled_from([1.0, 5.0, 30.0]))
    if "alibi" in on:
        slopes = (heads,) if draw(st.booleans()) else (batch, heads)
        options["alibi"] = draw(arrays(np.float64, slopes, elements=st.floats(0, 1, width=16)))
    if "sinks" in on:
        options["sinks"] = draw(arrays(np.float64, (heads,), elements=st.floats(-5, 5, width=16)))
    if "dropout_mask" in on:
        options.update(dropout_p=draw(st.sampled_from([0.125, 0.5])),
                       dropout_mask=draw(arrays(bool, routes)))
    if "lse" in chosen:
        options["lse"] = True
    if "backward" in chosen:
        options["d_output"] = draw(arrays(np.float64, (batch, heads, n_queries, value_dim),
                                          elements=_VALUES))
    return replace(case, **options)
