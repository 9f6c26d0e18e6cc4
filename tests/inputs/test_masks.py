"""Mask handling: a 0/1 float mask, almost always a bool mask in disguise, warns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import routing_sim as rs

ZERO_ONE = np.tril(np.ones((4, 4)))                      # meant: causal; added: a bias


def _inputs():
    return np.random.default_rng(0).normal(size=(3, 4, 2))


@pytest.mark.parametrize("entry", [rs.attention, rs.simulate, rs.attention_backward])
def test_a_zero_one_float_mask_warns_naming_the_argument_and_the_ways_out(entry):
    q, k, v = _inputs()
    extra = (np.ones((4, 2)),) if entry is rs.attention_backward else ()
    with pytest.warns(rs.MaskWarning, match="attn_mask is a float mask of only 0s and 1s") \
            as caught:
        entry(q, k, v, *extra, attn_mask=ZERO_ONE)
    message = str(caught[0].message)
    assert "astype(bool)" in message and "-inf" in message and "filterwarnings" in message
    assert caught[0].filename == __file__                              # points at the call


def test_the_warning_is_about_a_real_difference():
    q, k, v = _inputs()
    scores = q @ k.T / np.sqrt(2)                                      # (L, S)
    with pytest.warns(rs.MaskWarning):
        added = rs.attention(q, k, v, attn_mask=ZERO_ONE)
    weights = np.exp(scores + ZERO_ONE)
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(added, weights @ v, rtol=1e-12)        # the PyTorch meaning
    assert not np.allclose(added, rs.attention(q, k, v, attn_mask=ZERO_ONE.astype(bool)))


@pytest.mark.parametrize("mask", [
    ZERO_ONE.astype(bool),                                             # bool: allowed routes
    np.zeros((4, 4)),                                                  # a no-op bias
    np.where(ZERO_ONE == 1, 0.0, -np.inf),                             # blocks with -inf
    np.where(ZERO_ONE == 1, 0.0, -1e9),                                # large negatives
    ZERO_ONE * 0.5,                                                    # a real bias
])
def test_masks_that_say_what_they_mean_do_not_warn(mask):
    q, k, v = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rs.attention(q, k, v, attn_mask=mask)
        rs.simulate(q, k, v, attn_mask=mask)


def test_the_warning_can_be_silenced_as_it_says():
    q, k, v = _inputs()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=rs.MaskWarning)
        rs.attention(q, k, v, attn_mask=ZERO_ONE)
    assert issubclass(rs.MaskWarning, UserWarning)


def test_sparse_routes_warn_too():
    q, k, v = _inputs()
    with pytest.warns(rs.MaskWarning, match="attn_mask"):
        rs.simulate(q, k, v, attn_mask=ZERO_ONE, graph=rs.patterns.sliding_window(4, 2))


@pytest.mark.parametrize("engine", ["matrix", "messages"])
@pytest.mark.parametrize("name", ["attn_mask", "key_padding_mask"])
def test_multihead_attention_warns_once_under_its_own_argument_name(engine, name):
    mha = rs.MultiHeadAttention(4, 2, seed=0)
    x = np.random.default_rng(1).normal(size=(2, 3, 4))
    mask = {"attn_mask": np.triu(np.ones((3, 3)), 1),
            "key_padding_mask": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])}[name]
    with pytest.warns(rs.MaskWarning) as caught:
        mha(x, x, x, engine=engine, **{name: mask})
        mha.gradients(x, x, x, np.ones((2, 3, 4)), engine=engine, **{name: mask})
    assert [str(w.message).split(" ")[0] for w in caught] == [name, name]
