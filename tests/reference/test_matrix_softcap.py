"""``softcap=`` (FlashAttention's name for ``cap · tanh(s / cap)``) on attention,
attention_backward and simulate: against numpy's formula, torch autograd and the
``score_mod`` it stands for; its refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs


def capped_attention(q, k, v, cap, scale, alibi=None, causal=False, sinks=None, lib=np):
    """FlashAttention's order, written out: s = q·k·scale, then cap·tanh(s / cap), then the
    ALiBi bias -slope·|i - j|, then the causal mask; a sink logit joins the softmax.
    ``lib`` is numpy or torch (then the arrays are tensors, for autograd)."""
    torch = None if lib is np else lib
    scores = q @ k.swapaxes(-1, -2) * scale                            # (H, L, S)
    scores = cap * lib.tanh(scores / cap)
    n_queries, n_keys = scores.shape[-2:]
    rows, cols = np.arange(n_queries)[:, None], np.arange(n_keys)[None, :]
    if alibi is not None:
        bias = -np.asarray(alibi)[:, None, None] * np.abs(rows - cols)
        scores = scores + (torch.from_numpy(bias) if lib is torch else bias)
    if causal:
        blocked = np.broadcast_to(cols > rows, tuple(scores.shape)).copy()
        scores = scores.masked_fill(torch.from_numpy(blocked), -torch.inf) if lib is torch \
            else np.where(blocked, -np.inf, scores)
    if sinks is not None:                      # one more column: the sink's logit
        if lib is torch:
            scores = torch.cat([scores, sinks[:, None, None].expand(-1, n_queries, 1)], -1)
        else:
            column = np.broadcast_to(np.asarray(sinks)[:, None, None], (len(sinks), n_queries, 1))
            scores = np.concatenate([scores, column], -1)
    if lib is torch:
        weights = torch.softmax(scores, -1)
    else:
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights = weights / weights.sum(-1, keepdims=True)
    return (weights if sinks is None else weights[..., :-1]) @ v


@given(seed=st.integers(0, 2**32 - 1), cap=st.sampled_from([0.5, 5.0, 30.0, 1e4]),
       magnitude=st.sampled_from([0.3, 3.0, 30.0]), causal=st.booleans(),
       alibi=st.booleans(), sinks=st.booleans())
def test_softcap_matches_the_formula_and_its_score_mod(seed, cap, magnitude, causal, alibi,
                                                       sinks):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, 2, 5, 4)) * magnitude
    v = rng.normal(size=(2, 5, 3))
    options = dict(is_causal=causal, alibi_slopes=[0.5, 0.25] if alibi else None,
                   sinks=rng.normal(size=2) if sinks else None)
    got = rs.attention(q, k, v, softcap=cap, **options)
    expected = capped_attention(q, k, v, cap, 0.5, options["alibi_slopes"], causal,
                                options["sinks"])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    assert np.array_equal(got, rs.attention(q, k, v, score_mod=rs.mods.softcap(cap), **options))
    run = rs.simulate(q, k, v, softcap=cap, **options)
    np.testing.assert_allclose(run.output, got, rtol=1e-12, atol=1e-13)
    assert np.array_equal(run.output, rs.simulate(q, k, v, score_mod=rs.mods.softcap(cap),
                                                  **options).output)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sinks", [False, True])
def test_softcap_gradients_match_torch_autograd(seed, sinks):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, 2, 6, 4)) * 2
    v, d_out = rng.normal(size=(2, 2, 6, 3))
    sink = rng.normal(size=2) if sinks else None
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    tsink = None if sink is None else torch.tensor(sink, requires_grad=True)
    out = capped_attention(tq, tk, tv, 1.5, 0.5, [0.5, 0.25], True, tsink, lib=torch)
    out.backward(torch.from_numpy(d_out))
    expected = [tq.grad, tk.grad, tv.grad] + ([] if tsink is None else [tsink.grad])
    options = dict(softcap=1.5, is_causal=True, alibi_slopes=[0.5, 0.25], sinks=sink)
    grads = rs.simulate(q, k, v, **options).backward(d_out)
    for got in (rs.attention_backward(q, k, v, d_out, **options),
                (grads.query, grads.key, grads.value) + (() if sink is None else (grads.sinks,))):
        assert len(got) == len(expected)
        for mine, theirs in zip(got, expected):
            np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("off", [0.0, 0, None])
def test_zero_or_none_is_off(off):
    q, k, v = np.random.default_rng(1).normal(size=(3, 4, 4)) * 5
    assert np.array_equal(rs.attention(q, k, v, softcap=off), rs.attention(q, k, v))
    assert np.array_equal(rs.simulate(q, k, v, softcap=off).output,
                          rs.simulate(q, k, v).output)
    assert rs.attention(q, k, v, softcap=off, numerics="exact").shape == (4, 4)


CALLS = {
    "attention": lambda q, **kw: rs.attention(q, q, q, **kw),
    "attention_backward": lambda q, **kw: rs.attention_backward(q, q, q, q, **kw),
    "simulate": lambda q, **kw: rs.simulate(q, q, q, **kw),
}


@pytest.mark.parametrize("entry", sorted(CALLS))
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "30", [30.0]])
def test_bad_values_are_refused_naming_softcap(entry, bad):
    q = np.ones((2, 3))
    with pytest.raises(rs.InvalidArgumentError, match=r"softcap must be a finite number >= 0"):
        CALLS[entry](q, softcap=bad)


@pytest.mark.parametrize("entry", sorted(CALLS))
def test_softcap_with_a_score_mod_is_refused(entry):
    with pytest.raises(rs.InvalidArgumentError, match=r"softcap=30.0 and score_mod=.*both"):
        CALLS[entry](np.ones((2, 3)), softcap=30.0, score_mod=rs.mods.alibi([0.5]))


@pytest.mark.parametrize("entry", ["attention", "simulate"])
def test_exact_mode_refuses_softcap_by_name(entry):
    with pytest.raises(rs.InvalidArgumentError, match=r"softcap=30.0 .* numerics='exact'"):
        CALLS[entry](np.ones((2, 3)), softcap=30.0, numerics="exact")


def test_a_decoder_passes_softcap_to_every_round():
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(3, 5, 4)) * 4
    decoder = rs.Decoder(softcap=2.0)
    steps = [decoder.step(q[t], k[t], v[t]) for t in range(5)]
    full, lse = rs.attention(q, k, v, is_causal=True, softcap=2.0, return_lse=True)
    np.testing.assert_allclose([s.output for s in steps], full, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose([s.lse for s in steps], lse, rtol=1e-12, atol=1e-13)
