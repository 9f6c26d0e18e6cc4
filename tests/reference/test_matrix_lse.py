"""``attention(..., return_lse=True)`` (reference/matrix.py, exact_rows.py, segments.py)
against the log-sum-exp written from its definition, in mpmath."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from tests.conftest import route_masks
from tests.reference.test_matrix import explicit_routes

U = 2.0**-53


def reference_lse(query, key, allowed, bias, scale, sink=None):
    """Per query row ``(L,)``: log(Σ_allowed exp(q·k·scale + b) + exp(sink)) in mpmath
    (scores exact in 600 bits), rounded once; -inf for a row with nothing in it. Also the
    float error bound of one float64 implementation: each score's rounding (dot product,
    scale, bias), u·|s - m| per exp, the sum and log, and the last addition."""
    n_queries, dim = query.shape
    lse, bound = np.full(n_queries, -np.inf), np.zeros(n_queries)
    with mpmath.workprec(600):
        for i in range(n_queries):
            keys = np.flatnonzero(allowed[i])
            scores = [mpmath.fsum(mpmath.mpf(float(a)) * mpmath.mpf(float(b))
                                  for a, b in zip(query[i], key[j])) * mpmath.mpf(scale)
                      + mpmath.mpf(float(bias[i, j])) for j in keys]
            terms = scores + ([] if sink is None else [mpmath.mpf(float(sink))])
            if not terms:
                continue
            top = max(terms)
            exact = top + mpmath.log(mpmath.fsum(mpmath.exp(s - top) for s in terms))
            lse[i] = float(exact)
            score_error = max((1.01 * dim * U * abs(scale) * float(np.abs(query[i] * key[j]).sum())
                               + 2 * U * (abs(float(s)) + abs(bias[i, j]))
                               for j, s in zip(keys, scores)), default=0.0)
            spread = max(float(abs(s - top)) for s in terms)
            bound[i] = score_error + U * spread + (len(terms) + 3) * U + U * abs(lse[i])
    return lse, bound


def assert_lse_close(got, expected, bound):
    """Equal where the reference is ±inf, else within twice the derived bound."""
    assert np.array_equal(np.isinf(got), np.isinf(expected))
    assert (got[np.isinf(got)] == expected[np.isinf(expected)]).all()
    finite = np.isfinite(expected)
    assert (np.abs(got[finite] - expected[finite]) <= 2 * bound[finite]).all(), \
        (got, expected, bound)


@st.composite
def lse_case(draw, max_len=6):
    """Inputs (H, L, E) with GQA or not, a mask of routes, sinks or not, and a magnitude
    from tiny to huge scores."""
    n_queries, n_keys = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    dim, heads = draw(st.integers(1, 5)), draw(st.sampled_from([1, 2, 4]))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, heads) if heads % h == 0]))
    magnitude = draw(st.sampled_from([1e-150, 1e-3, 1.0, 10.0, 1e3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    query = rng.normal(size=(heads, n_queries, dim)) * magnitude
    key = rng.normal(size=(kv_heads, n_keys, dim)) * magnitude
    value = rng.normal(size=(kv_heads, n_keys, 3))
    masks = draw(route_masks(n_queries, n_keys))
    sinks = rng.normal(size=heads) * 2 if draw(st.booleans()) else None
    return query, key, value, masks, sinks


def reference_for(query, key, masks, sinks, scale):
    """Every head's reference lse and bound ``(H, L)``; query head h reads kv head
    h // (H / Hkv)."""
    allowed, bias = explicit_routes(query.shape[1], key.shape[1], **masks)
    group = query.shape[0] // key.shape[0]
    rows = [reference_lse(query[h], key[h // group], allowed, bias, scale,
                          None if sinks is None else sinks[h]) for h in range(query.shape[0])]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


@given(lse_case())
def test_float_lse_matches_its_definition(case):
    query, key, value, masks, sinks = case
    scale = 1 / math.sqrt(query.shape[-1])
    output, lse = rs.attention(query, key, value, scale=scale, sinks=sinks, return_lse=True,
                               enable_gqa=query.shape[0] != key.shape[0], **masks)
    assert lse.shape == query.shape[:-1] and lse.dtype == np.float64
    assert_lse_close(lse, *reference_for(query, key, masks, sinks, scale))
    assert np.array_equal(output, rs.attention(query, key, value, scale=scale, sinks=sinks,
                                               enable_gqa=query.shape[0] != key.shape[0],
                                               **masks))


@given(lse_case(max_len=5))
def test_exact_lse_is_correctly_rounded(case):
    query, key, value, masks, sinks = case
    scale = 1 / math.sqrt(query.shape[-1])
    _, lse = rs.attention(query, key, value, scale=scale, sinks=sinks, return_lse=True,
                          numerics="exact", enable_gqa=query.shape[0] != key.shape[0], **masks)
    expected, _ = reference_for(query, key, masks, sinks, scale)
    assert np.array_equal(lse, expected)


@pytest.mark.parametrize("numerics", ["float", "exact"])
def test_hard_rows(numerics):
    """Scores near the largest float, exact cancellation towards 0, weights in exp's
    subnormal band, a route with a tiny score beside a large one."""
    query = np.array([[1.0], [1.0], [1.0], [1e-300]])
    key = np.array([[1e300], [-math.log(2)], [-math.log(2)], [-745.0]])
    attn_mask = np.array([[True, False, False, False], [False, True, True, False],
                          [False, False, True, True], [True, True, True, True]])
    _, lse = rs.attention(query, key, np.ones((4, 1)), attn_mask=attn_mask, scale=1.0,
                          return_lse=True, numerics=numerics)
    expected, bound = reference_lse(query, key, attn_mask, np.zeros((4, 4)), 1.0)
    if numerics == "exact":
        assert lse.tolist() == expected.tolist()
    else:
        assert_lse_close(lse, expected, bound)
    assert expected[1] == pytest.approx(2.3190468138462996e-17)      # -log 2 rounded + log 2


@pytest.mark.parametrize("numerics", ["float", "exact"])
@pytest.mark.parametrize("empty_rows", ["zero", "nan"])
def test_an_empty_row_has_lse_minus_inf_or_its_sinks_logit(numerics, empty_rows):
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 2, 3, 4))
    mask = np.ones((3, 3), bool)
    mask[1] = False
    output, lse = rs.attention(q, k, v, attn_mask=mask, empty_rows=empty_rows,
                               numerics=numerics, return_lse=True)
    assert (lse[:, 1] == -np.inf).all() and np.isfinite(lse[:, [0, 2]]).all()
    assert (np.isnan(output[:, 1]).all() if empty_rows == "nan" else (output[:, 1] == 0).all())
    _, lse = rs.attention(q, k, v, attn_mask=mask, empty_rows=empty_rows, numerics=numerics,
                          return_lse=True, sinks=[0.5, -2.0])
    assert lse[:, 1].tolist() == [0.5, -2.0]                           # the sink's term alone


def test_a_score_mod_that_removes_every_route_leaves_minus_inf():
    q, k, v = np.random.default_rng(1).normal(size=(3, 3, 2))
    gone = lambda score, b, h, q_idx, kv_idx: np.where(q_idx == 0, -np.inf, score)  # noqa: E731
    _, lse = rs.attention(q, k, v, score_mod=gone, return_lse=True)
    assert lse[0] == -np.inf and np.isfinite(lse[1:]).all()


@pytest.mark.parametrize("numerics", ["float", "exact"])
def test_with_dropout_the_lse_is_of_the_softmax_before_it(numerics):
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(3, 2, 5, 4))
    _, probabilities, lse = rs.attention(q, k, v, dropout_p=0.4, seed=3, numerics=numerics,
                                         return_weights="probabilities", return_lse=True)
    _, undropped = rs.attention(q, k, v, numerics=numerics, return_lse=True)
    assert np.array_equal(lse, undropped)
    scores = q @ k.transpose(0, 2, 1) / 2                              # scale 1/sqrt(4)
    np.testing.assert_allclose(np.exp(scores - lse[..., None]), probabilities, rtol=1e-13)


def test_returns_output_weights_lse_in_that_order():
    q, k, v = np.random.default_rng(3).normal(size=(3, 2, 3, 4))
    out, weights, lse = rs.attention(q, k, v, is_causal=True, return_weights=True,
                                     return_lse=True)
    assert out.shape == (2, 3, 4) and weights.shape == (2, 3, 3) and lse.shape == (2, 3)
    assert np.array_equal(out, rs.attention(q, k, v, is_causal=True))
    with pytest.raises(rs.InvalidArgumentError, match="return_lse"):
        rs.attention(q, k, v, return_lse="yes")
    with pytest.raises(rs.InvalidArgumentError, match="return_lse"):
        rs.attention_backward(q, k, v, np.ones((2, 3, 4)), return_lse=True)


def test_float32_inputs_give_a_float32_lse():
    q, k, v = np.random.default_rng(4).normal(size=(3, 4, 4)).astype(np.float32)
    _, lse = rs.attention(q, k, v, return_lse=True)
    _, lse64 = rs.attention(*(x.astype(np.float64) for x in (q, k, v)), return_lse=True)
    assert lse.dtype == np.float32
    np.testing.assert_allclose(lse, lse64, rtol=1e-5)


@pytest.mark.parametrize("numerics", ["float", "exact"])
def test_a_sparse_route_set_gives_the_dense_masks_lse(numerics):
    rng = np.random.default_rng(5)
    q, k, v = rng.normal(size=(3, 2, 9, 4))
    routes = rs.patterns.sliding_window(9, 3, sinks=1)
    _, sparse = rs.attention(q, k, v, graph=routes, numerics=numerics, return_lse=True,
                             sinks=[0.1, 0.2])
    mask = routes.to_mask()
    expected = np.array([reference_lse(q[h], k[h], mask, np.zeros((9, 9)), 0.5, s)[0]
                         for h, s in enumerate([0.1, 0.2])])
    if numerics == "exact":
        assert np.array_equal(sparse, expected)
    else:
        np.testing.assert_allclose(sparse, expected, rtol=1e-14)


@pytest.mark.parametrize("numerics", ["float", "exact"])
@pytest.mark.parametrize("options", [{"window_size": (2, 0)},
                                     {"window_size": (1, 1), "sinks": [0.3, -0.5]},
                                     {"cu_seqlens_q": [0, 4, 9], "cu_seqlens_k": [0, 3, 9],
                                      "is_causal": True, "causal_alignment": "bottom_right"}],
                         ids=["window", "window_sinks", "varlen"])
def test_windows_and_packed_sequences_give_their_routes_lse(numerics, options):
    """The lse runs over the routes a window or a packed sequence leaves, in attention and
    in every query node of simulate (exact mode: the same bits)."""
    rng = np.random.default_rng(6)
    q, k, v = rng.normal(size=(3, 2, 9, 4))
    _, lse = rs.attention(q, k, v, numerics=numerics, return_lse=True, **options)
    sinks = options.get("sinks")
    rows, cols = np.arange(9)[:, None], np.arange(9)[None, :]
    if "window_size" in options:                 # FlashAttention's window, L == S
        left, right = options["window_size"]
        allowed = (cols >= rows - left) & (cols <= rows + right)
    else:                                        # per sequence, causal bottom-right
        starts_q, starts_k = options["cu_seqlens_q"], options["cu_seqlens_k"]
        allowed = np.zeros((9, 9), bool)
        for b in range(2):
            n_q, n_k = starts_q[b + 1] - starts_q[b], starts_k[b + 1] - starts_k[b]
            local = np.arange(n_k)[None, :] <= np.arange(n_q)[:, None] + n_k - n_q
            allowed[starts_q[b]:starts_q[b + 1], starts_k[b]:starts_k[b + 1]] = local
    expected = np.array([reference_lse(q[h], k[h], allowed, np.zeros((9, 9)), 0.5,
                                       None if sinks is None else sinks[h])[0]
                         for h in range(2)])
    if numerics == "exact":
        assert np.array_equal(lse, expected)
        assert np.array_equal(rs.simulate(q, k, v, numerics="exact", **options).lse, lse)
    else:
        np.testing.assert_allclose(lse, expected, rtol=1e-14)
        np.testing.assert_allclose(rs.simulate(q, k, v, **options).lse, lse, rtol=1e-14)
