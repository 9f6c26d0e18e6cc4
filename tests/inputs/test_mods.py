"""Built-in score mods: their values and the derivatives the backward pass uses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    (lambda: mods.alibi([[[1.0]]]), r"\(H,\) or \(B, H\)"),
    (lambda: mods.alibi([1.0], signed="yes"), "signed must be True or False"),
    (lambda: mods.relative_bias(np.ones(4)), r"\(2M - 1,\)"),
    (lambda: mods.derivative(lambda s, b, h, q, kv: s), "needs the derivative"),
])
def test_errors(call, message):
    with pytest.raises(rs.RoutingSimError, match=message):
        call()


# ---------------------------------------------------------------- -inf removes a route

def _removing(removed: np.ndarray):
    """A FlexAttention-style mod masking with -inf where ``removed[h, q, kv]``, and its
    derivative (1: the mod is the identity on the routes it keeps)."""

    class Removing(mods.ScoreMod):
        def __call__(self, score, b, h, q_idx, kv_idx):
            return np.where(removed[h, q_idx, kv_idx], -np.inf, score)

        def grad(self, score, b, h, q_idx, kv_idx):
            return np.ones(np.broadcast_shapes(*map(np.shape, (score, h, q_idx, kv_idx))))

    return Removing()


def _masked_softmax(q, k, v, removed, scale):
    """Independent reference: softmax over the routes left, a row with none gives 0."""
    scores = np.where(removed, -np.inf, q @ np.swapaxes(k, -1, -2) * scale)   # (B, H, L, S)
    empty = removed.all(axis=-1, keepdims=True)                                # (B, H, L, 1)
    weights = np.exp(scores - np.where(empty, 0, scores.max(axis=-1, keepdims=True)))
    weights /= np.where(empty, 1, weights.sum(axis=-1, keepdims=True))
    return weights @ v, weights


CAUSAL = np.tril(np.ones((7, 7), bool))
SIMULATE_MODES = {                              # options, and the routes they allow (L, S)
    "two_phase": ({}, True),
    "online": ({"softmax": "online"}, True),
    "sparse_tiles": ({"graph": rs.patterns.sliding_window(7, 7)}, CAUSAL),
    "mask_mod": ({"mask_mod": lambda b, h, q, kv: kv <= q}, CAUSAL),
    "jittered": ({"network": rs.Network(jitter=3.0, seed=2)}, True),
    "lossy": ({"network": rs.Network(loss=0.3, retries=30, seed=4)}, True),
}


@given(seed=st.integers(0, 2**32 - 1), density=st.sampled_from([0.2, 0.5, 0.9, 1.0]))
@settings(max_examples=8)
def test_minus_inf_from_a_score_mod_removes_the_route_in_every_mode(seed, density):
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(3, 2, 3, 7, 4)) * 2
    removed = rng.random((3, 7, 7)) < density                          # (H, L, S)
    mod = _removing(removed)
    expected, weights = _masked_softmax(q, k, v, np.broadcast_to(removed, (2, 3, 7, 7)), 0.5)
    out, got_weights = rs.attention(q, k, v, score_mod=mod, return_weights=True)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_weights, weights, rtol=1e-12, atol=1e-15)
    sparse = rs.attention(q, k, v, score_mod=mod, graph=rs.RouteSet.complete(7, 7, (2, 3)))
    np.testing.assert_allclose(sparse, expected, rtol=1e-12, atol=1e-14)
    for name, (options, allowed) in SIMULATE_MODES.items():
        gone = removed | ~np.asarray(allowed)                          # (H, L, S)
        expected, weights = _masked_softmax(q, k, v, np.broadcast_to(gone, (2, 3, 7, 7)), 0.5)
        run = rs.simulate(q, k, v, score_mod=mod, **options)
        np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(run.weights, weights, rtol=1e-12, atol=1e-15, err_msg=name)
        if name == "lossy":                                            # counts retries
            continue
        # The key node sends the SCORE (it applies the mod); a removed route pulls nothing.
        assert run.stats.messages["SCORE"] == 2 * np.broadcast_to(allowed, (3, 7, 7)).sum()
        assert run.stats.messages["PULL"] == run.stats.messages["VALUE"] == 2 * (~gone).sum()


def test_hard_routing_never_picks_a_removed_route_over_a_live_one():
    rng = np.random.default_rng(5)
    q, k, v = rng.normal(size=(3, 1, 6, 4))
    removed = np.zeros((1, 6, 6), bool)
    removed[0, :, :4] = True                                           # 2 routes left each
    run = rs.simulate(q, k, v, score_mod=_removing(removed), routing="topk", top_k=3)
    expected, _ = _masked_softmax(q, k, v, removed[None], 0.5)
    np.testing.assert_allclose(run.output, expected[0], rtol=1e-12)
    assert run.stats.messages["PULL"] == 6 * 2


@pytest.mark.parametrize("engine", ["matrix", "dense_messages", "sparse", "tiles", "dropout"])
def test_a_removed_route_has_zero_gradient(engine):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    q, k, v, d_out = rng.normal(size=(4, 2, 6, 3))
    removed = rng.random((2, 6, 6)) < 0.5
    removed[1, 2] = True                                               # an empty row
    if engine == "tiles":                       # a causal window: the same as removing
        removed |= ~np.tril(np.ones((6, 6), bool))                     # the routes it lacks
    keep = rng.random((2, 6, 6)) >= 0.25 if engine == "dropout" else None
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    scores = (tq @ tk.transpose(-1, -2) / np.sqrt(3)).masked_fill(torch.tensor(removed),
                                                                  -torch.inf)
    empty = torch.tensor(removed.all(axis=-1, keepdims=True))
    weights = torch.where(empty, 0.0, torch.softmax(torch.where(empty, 0.0, scores), dim=-1))
    if keep is not None:
        weights = weights * torch.tensor(keep) / 0.75
    (weights @ tv).mul(torch.tensor(d_out)).sum().backward()
    options = {"score_mod": _removing(removed)}
    if keep is not None:
        options.update(dropout_mask=keep, dropout_p=0.25)
    if engine in ("sparse", "tiles"):
        options["graph"] = rs.patterns.sliding_window(6, 6) if engine == "tiles" else \
            rs.RouteSet.complete(6, 6, (2,))
    if engine == "matrix":
        grads = rs.attention_backward(q, k, v, d_out, **options)
    else:
        result = rs.simulate(q, k, v, **options).backward(d_out)
        grads = (result.query, result.key, result.value)
        np.testing.assert_allclose(rs.attention_backward(q, k, v, d_out, **options),
                                   grads, rtol=1e-12, atol=1e-14)
    for got, tensor in zip(grads, (tq, tk, tv)):
        np.testing.assert_allclose(got, tensor.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("entry", ["attention", "simulate", "sparse", "online"])
def test_a_row_the_mod_empties_follows_empty_rows(entry):
    q, k, v = np.random.default_rng(2).normal(size=(3, 1, 4, 2))
    removed = np.zeros((1, 4, 4), bool)
    removed[0, 1] = True                                               # query 1 loses all
    options = {"score_mod": _removing(removed)}
    if entry == "sparse":
        options["graph"] = rs.RouteSet.complete(4, 4, (1,))
    if entry == "online":
        options["softmax"] = "online"

    def output(**extra):
        if entry == "attention":
            return rs.attention(q, k, v, return_weights=True, **options, **extra)
        run = rs.simulate(q, k, v, **options, **extra)
        return run.output, run.weights

    zero, zero_weights = output()
    assert not zero[0, 1].any() and not zero_weights[0, 1].any()    # as flex_attention: 0
    assert np.isfinite(zero).all()
    nan, nan_weights = output(empty_rows="nan")
    assert np.isnan(nan[0, 1]).all() and np.isnan(nan_weights[0, 1]).all()
    np.testing.assert_array_equal(np.delete(nan, 1, axis=1), np.delete(zero, 1, axis=1))
    with pytest.raises(rs.EmptyRowError, match="query token 1 .*score_mod removed every one"):
        output(empty_rows="error")


@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("entry", ["attention", "simulate", "sparse"])
def test_plus_inf_and_nan_from_a_mod_are_refused_naming_it(entry, bad):
    q, k, v = np.random.default_rng(3).normal(size=(3, 4, 2))

    def spiky(score, b, h, q_idx, kv_idx):
        return np.where(kv_idx == 2, bad, score)

    options = {"score_mod": spiky}
    if entry == "sparse":
        options["graph"] = rs.patterns.sliding_window(4, 4)
    call = rs.attention if entry == "attention" else rs.simulate
    with pytest.raises(rs.InvalidArgumentError,
                       match=rf"score_mod .*spiky returned {bad} .* query [02] and key 2 .*\+inf "
                             "and NaN have no softmax"):
        call(q, k, v, **options)


def test_an_overflow_is_still_an_overflow_not_a_removal():
    q = np.array([[1e200, 1e200]])
    with pytest.raises(rs.NumericalError, match="overflowed"):
        rs.attention(q, q, q, score_mod=mods.alibi([0.5]))
    with pytest.raises(rs.NumericalError, match="overflowed"):
        rs.simulate(q, q, q, score_mod=mods.alibi([0.5]))
