"""The oracle's answers and tolerances: the log-sum-exp, the correctly rounded rows, the
gradients, and tolerances that tell a last-bit difference from a wrong answer."""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.testing.cases import FEATURES, battery, check_features
from routing_sim.testing.oracle import correctly_rounded, expect

EVERY = frozenset(f for f in FEATURES if f != "backward")


def test_the_lse_is_the_log_of_the_normaliser_written_out():
    for case in battery(check_features("mask, sinks, lse, window", "sdpa"), "sdpa", "float64"):
        expected = expect(case)
        assert expected.lse is not None
        scores = expected.scores                                       # -inf off the routes
        if case.sinks is not None:
            sinks = np.broadcast_to(case.sinks[None, :, None, None], scores.shape[:3] + (1,))
            scores = np.concatenate([scores, sinks], axis=-1)
        with np.errstate(divide="ignore"):
            theirs = np.logaddexp.reduce(scores, axis=-1)              # another summation
        np.testing.assert_array_equal(np.isneginf(expected.lse), np.isneginf(theirs))
        finite = np.isfinite(theirs)
        assert (np.abs(expected.lse[finite] - theirs[finite])
                <= expected.lse_tolerance[finite]).all()


def test_correctly_rounded_rows_are_exact_modes():
    case = next(c for c in battery(check_features("full, gqa, sinks", "sdpa"), "sdpa", "float64")
                if c.sinks is not None)
    batch, heads, _, n_queries, *_ = case.shape
    rows = np.array([(b, h, i) for b in range(batch) for h in range(heads)
                     for i in range(n_queries)])
    repeat = heads // case.shape[2]
    whole = rs.attention(case.query, np.repeat(case.key, repeat, 1),
                         np.repeat(case.value, repeat, 1), sinks=case.sinks, numerics="exact")
    np.testing.assert_array_equal(correctly_rounded(case, rows),
                                  whole.reshape(-1, whole.shape[-1]))


def test_a_float64_tolerance_is_a_few_ulps_scaled_by_the_rows_conditioning():
    relative = []
    for case in battery(EVERY, "sdpa", "float64"):
        expected = expect(case)
        normal = expected.magnitude > np.finfo(np.float64).smallest_normal * 1e3
        relative.append((expected.tolerance[normal] / expected.magnitude[normal]).max(initial=0))
        # Nothing close to 1e-9 relative: an error that large is always caught.
        assert (expected.tolerance[normal] < 1e-10 * expected.magnitude[normal]).all(), \
            case.label
    assert min(relative) < 2e-15                   # a few ULPs where nothing is ill-conditioned


def test_a_bfloat16_tolerance_grows_with_the_scores_it_cannot_resolve():
    small, huge = (next(c for c in battery(check_features("full", "sdpa"), "sdpa", "bfloat16")
                        if c.label == label) for label in ("L = S", "huge scores"))
    assert (expect(small).tolerance < 0.1 * expect(small).magnitude).all()
    assert (expect(huge).tolerance > expect(huge).magnitude).any()


def test_gradients_are_torch_autograds_within_the_bound_and_1e_9_is_outside():
    torch = pytest.importorskip("torch")
    for case in battery(check_features("full, gqa, backward, causal, dropout_mask", "sdpa"), "sdpa",
                        "float64")[::3]:
        expected = expect(case)
        assert expected.gradients is not None and expected.gradient_tolerance is not None
        q, k, v = (torch.tensor(x, requires_grad=True) for x in (case.query, case.key,
                                                                 case.value))
        repeat = case.shape[1] // case.shape[2]
        keys, values = (x.repeat_interleave(repeat, 1) for x in (k, v))
        scores = q @ keys.transpose(-1, -2) * case.effective_scale
        if case.causal:
            rows, cols = scores.shape[-2:]
            scores = scores.masked_fill(~torch.ones(rows, cols, dtype=torch.bool).tril(), -1e300)
        weights = torch.softmax(scores, -1)
        if case.dropout_mask is not None:
            weights = weights * torch.tensor(case.dropout_mask) / (1 - case.dropout_p)
        (weights @ values).backward(torch.tensor(case.d_output))
        assert expected.gradient_magnitude is not None
        for theirs, ours, tolerance, size in zip((q.grad, k.grad, v.grad), expected.gradients,
                                                 expected.gradient_tolerance,
                                                 expected.gradient_magnitude):
            error = np.abs(theirs.numpy() - ours)
            assert (error <= tolerance).all(), case.label
            # 1e-9 of the magnitude the gradient is summed from is always outside.
            assert ((size * 1e-9 > tolerance) | (size < 1e-290)).all(), case.label
