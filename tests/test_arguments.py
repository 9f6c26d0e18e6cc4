"""Every entry point that says it takes the arguments of ``attention`` takes each of them.

The walk reads ``attention``'s signature, so an argument added there later is walked too.
Each argument gets a value other than its default; the gradients of every entry point
(``attention_backward``, ``simulate(...).backward``, both MHA gradient engines) must then
agree with ``attention_backward``, the matrix reference, or the entry point must refuse the
argument with a project error that names it (and its docstring must say so).
"""

from __future__ import annotations

import inspect
from functools import partial

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.errors import RoutingSimError

WALKED = [name for name in inspect.signature(rs.attention).parameters
          if name not in ("query", "key", "value")]
HEADS, TOKENS, DIM, VALUE_DIM = 2, 4, 4, 2
RTOL, ATOL = 1e-10, 1e-12
# (entry point, argument) pairs refused on purpose; each docstring says why.
REFUSED = {("attention_backward", "return_weights"), ("mha", "return_weights"),
           ("mha", "enable_gqa"), ("attention_backward", "return_lse"), ("mha", "return_lse")}


def non_default(name: str) -> dict:
    """A value for ``name`` that changes the computation (or at least is not the default)."""
    rng = np.random.default_rng(1)
    causal = np.tril(np.ones((TOKENS, TOKENS), bool))
    return {
        "attn_mask": {"attn_mask": causal},
        "dropout_p": {"dropout_p": 0.25},
        "is_causal": {"is_causal": True},
        "scale": {"scale": 0.7},
        "enable_gqa": {"enable_gqa": True},
        "causal_alignment": {"causal_alignment": "bottom_right"},
        "empty_rows": {"empty_rows": "nan"},
        "numerics": {"numerics": "exact"},
        "dropout_mask": {"dropout_mask": rng.random((HEADS, TOKENS, TOKENS)) > 0.3},
        "seed": {"seed": 5, "dropout_p": 0.2},
        "alibi_slopes": {"alibi_slopes": [0.5, 0.25]},
        "alibi_mode": {"alibi_slopes": [0.5, 0.25], "alibi_mode": "signed"},
        "rope": {"rope": 100.0},
        "return_weights": {"return_weights": True},
        "graph": {"graph": rs.graphs.causal(TOKENS)},
        "mask_mod": {"mask_mod": lambda b, h, q_idx, kv_idx: q_idx >= kv_idx},
        "score_mod": {"score_mod": rs.mods.softcap(2.0)},
        "sinks": {"sinks": [0.5, -1.0]},
        "position_ids": {"rope": 100.0, "position_ids": [3, 0, 5, 1]},
        "key_position_ids": {"rope": 100.0, "key_position_ids": [2, 7, 1, 4]},
        "window_size": {"window_size": (1, 0)},
        "cu_seqlens_q": {"cu_seqlens_q": [0, 1, 4], "cu_seqlens_k": [0, 2, 4]},
        "cu_seqlens_k": {"cu_seqlens_q": [0, 3, 4], "cu_seqlens_k": [0, 1, 4],
                         "is_causal": True},
        "softcap": {"softcap": 2.0},
        "return_lse": {"return_lse": True},
    }[name]


def inputs(name: str):
    rng = np.random.default_rng(0)
    kv_heads = 1 if name == "enable_gqa" else HEADS
    q = rng.normal(size=(HEADS, TOKENS, DIM))
    k = rng.normal(size=(kv_heads, TOKENS, DIM))
    v = rng.normal(size=(kv_heads, TOKENS, VALUE_DIM))
    d_out = rng.normal(size=(HEADS, TOKENS, VALUE_DIM))
    return q, k, v, d_out


def refused(entry: str, name: str, call) -> None:
    """The entry point refuses ``name`` clearly: a project error naming it."""
    with pytest.raises(RoutingSimError, match=name):
        call()


def test_the_walk_covers_attentions_signature():
    assert set(WALKED) >= {"attn_mask", "empty_rows", "numerics", "rope", "graph"}
    for name in WALKED:
        assert non_default(name)


@pytest.mark.parametrize("name", WALKED)
def test_attention_backward_takes_every_argument(name):
    q, k, v, d_out = inputs(name)
    options = non_default(name)
    call = lambda: rs.attention_backward(q, k, v, d_out, **options)  # noqa: E731
    if ("attention_backward", name) in REFUSED:
        assert name in rs.attention_backward.__doc__
        refused("attention_backward", name, call)
        return
    grads = call()
    assert all(np.isfinite(g).all() for g in grads)
    # The same gradients as without the argument unless it changes the computation: compare
    # with finite differences of attention to make sure the argument was honoured.
    forward = {key: value for key, value in options.items()}
    forward.pop("numerics", None)
    step = 1e-6
    bump = np.zeros_like(q)
    bump[1, 2, 0] = step
    loss = lambda x: float((rs.attention(x, k, v, **forward) * d_out).sum())  # noqa: E731
    slope = (loss(q + bump) - loss(q - bump)) / (2 * step)
    assert slope == pytest.approx(grads[0][1, 2, 0], rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("name", WALKED)
def test_run_backward_takes_every_argument_of_simulate(name):
    q, k, v, d_out = inputs(name)
    options = non_default(name)
    if name not in inspect.signature(rs.simulate).parameters:
        assert f"``{name}``" in rs.simulate.__doc__.split("Returns")[0]    # says it does not
        with pytest.raises(TypeError, match=name):
            rs.simulate(q, k, v, **options)
        return
    run = rs.simulate(q, k, v, **options)
    got = run.backward(d_out)
    options.pop("return_weights", None)
    expected = rs.attention_backward(q, k, v, d_out, **options)
    for mine, reference in zip((got.query, got.key, got.value), expected):
        np.testing.assert_allclose(mine, reference, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", [n for n in WALKED if n not in ("attn_mask", "is_causal")])
def test_both_mha_gradient_engines_take_every_option(name):
    """MHA's own attn_mask and is_causal are its parameters; the rest are options."""
    mha = rs.MultiHeadAttention(HEADS * DIM, HEADS, seed=0)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(TOKENS, HEADS * DIM))
    d_out = rng.normal(size=(TOKENS, HEADS * DIM))
    options = non_default(name)
    if ("mha", name) in REFUSED:
        assert f"``{name}``" in rs.MultiHeadAttention.__call__.__doc__
        for engine in ("messages", "matrix"):
            refused("mha", name, partial(mha.gradients, x, x, x, d_out, engine=engine,
                                         **options))
        return
    if name not in inspect.signature(rs.simulate).parameters:
        pytest.skip(f"simulate does not take {name} yet, so neither does the messages engine")
    matrix = mha.gradients(x, x, x, d_out, engine="matrix", **options)
    messages = mha.gradients(x, x, x, d_out, engine="messages", **options)
    assert matrix.keys() == messages.keys()
    for key in matrix:
        np.testing.assert_allclose(messages[key], matrix[key], rtol=RTOL, atol=ATOL,
                                   err_msg=key)


@pytest.mark.parametrize("empty_rows", ["zero", "nan"])
def test_an_empty_row_gets_zero_gradients_in_both_engines(empty_rows):
    q, k, v, d_out = inputs("attn_mask")
    mask = np.ones((TOKENS, TOKENS), bool)
    mask[1] = False                                                    # query 1 reads nothing
    d_query, _, _ = rs.attention_backward(q, k, v, d_out, attn_mask=mask, empty_rows=empty_rows)
    assert (d_query[:, 1] == 0).all() and np.isfinite(d_query).all()
    got = rs.simulate(q, k, v, attn_mask=mask, empty_rows=empty_rows).backward(d_out)
    np.testing.assert_allclose(got.query, d_query, rtol=RTOL, atol=ATOL)
    with pytest.raises(rs.EmptyRowError):
        rs.attention_backward(q, k, v, d_out, attn_mask=mask, empty_rows="error")
