"""Built-in score mods: their values and the derivatives the backward pass uses."""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.inputs import mods


def test_softcap_values_and_derivative():
    scores = np.array([-1e3, -3.0, 0.0, 0.5, 40.0])
    mod = mods.softcap(4.0)
    np.testing.assert_array_equal(mod(scores, 0, 0, 0, 0), 4.0 * np.tanh(scores / 4.0))
    assert np.all(np.abs(mod(scores, 0, 0, 0, 0)) <= 4.0)
    # d/ds c·tanh(s/c) = sech²(s/c) = 1 / cosh²(s/c): an independent formula.
    np.testing.assert_allclose(mod.grad(scores, 0, 0, 0, 0), 1 / np.cosh(scores / 4.0) ** 2,
                               rtol=1e-14, atol=0)


def test_alibi_mod_equals_alibi_slopes():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 2, 3, 5, 4))
    slopes = [0.25, 0.5, 1.0]
    np.testing.assert_allclose(rs.attention(q, k, v, score_mod=mods.alibi(slopes)),
                               rs.attention(q, k, v, alibi_slopes=slopes), rtol=1e-14)
    assert mods.alibi(slopes).grad(np.zeros(4), 0, 1, np.arange(4), 0).tolist() == [1.0] * 4


def test_relative_bias_reads_the_table_by_distance():
    table = np.arange(2 * 3 * 5, dtype=float).reshape(2, 15)[:, :5]    # (H, 2M - 1), M = 3
    mod = mods.relative_bias(table)
    q_idx, kv_idx = np.array([[0], [4]]), np.array([[0, 1, 2, 6]])
    expected = [[table[1, 2], table[1, 1], table[1, 0], table[1, 0]],
                [table[1, 4], table[1, 4], table[1, 4], table[1, 0]]]
    np.testing.assert_array_equal(mod(np.zeros((2, 4)), 0, 1, q_idx, kv_idx), expected)
    shared = mods.relative_bias([1.0, 2.0, 3.0])
    assert shared(np.zeros(3), 0, 0, 1, np.arange(3)).tolist() == [3.0, 2.0, 1.0]


@pytest.mark.parametrize("call, message", [
    (lambda: mods.softcap(0), "cap must be a finite number > 0"),
    (lambda: mods.softcap(np.inf), "cap must be a finite number > 0"),
    (lambda: mods.alibi([[1.0]]), "1-D array"),
    (lambda: mods.relative_bias(np.ones(4)), r"\(2M - 1,\)"),
    (lambda: mods.derivative(lambda s, b, h, q, kv: s), "needs the derivative"),
])
def test_errors(call, message):
    with pytest.raises(rs.RoutingSimError, match=message):
        call()
