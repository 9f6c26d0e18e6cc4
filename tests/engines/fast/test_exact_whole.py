"""Exact mode's block path in the fast engine: whatever blocks the nodes fall into (down
to one route each), the outputs, shares and lse are the bits of the matrix reference's
row-by-row exact mode; ordinary inputs never leave the blocks; inputs the blocks cannot
decide still come out right."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.engines.fast import exact_whole, two_phase


def assert_same_as_reference(query, key, value, network=None, **options):
    run = rs.simulate(query, key, value, numerics="exact", network=network, **options)
    output, weights = rs.attention(query, key, value, numerics="exact", return_weights=True,
                                   **options)
    _, lse = rs.attention(query, key, value, numerics="exact", return_lse=True, **options)
    np.testing.assert_array_equal(run.output, output)
    np.testing.assert_array_equal(run.weights, weights)
    np.testing.assert_array_equal(run.lse, lse)


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_any_blocks_give_the_reference_bits(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    heads, n, dim = data.draw(st.integers(1, 2)), data.draw(st.integers(2, 12)), 4
    query, key, value = rng.normal(size=(3, heads, n, dim)) * data.draw(
        st.sampled_from([1.0, 20.0]))
    options = data.draw(st.sampled_from([
        {}, {"is_causal": True}, {"attn_mask": rng.random((n, n)) < 0.6},
        {"window_size": (3, 1)}, {"sinks": [0.3] * heads},
        {"dropout_p": 0.25, "dropout_mask": rng.random((heads, n, n)) < 0.75}]))
    network = rs.Network(jitter=data.draw(st.sampled_from([0.0, 3.0])), seed=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exact_whole, "BLOCK_ROUTES", data.draw(st.sampled_from([1, 5, 2**15])))
        assert_same_as_reference(query, key, value, network, **options)


def test_ordinary_inputs_never_leave_the_blocks():
    rng = np.random.default_rng(7)
    query, key, value = rng.normal(size=(3, 2, 48, 64))
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exact_whole, "exact_scores", lambda *args: calls.append(args))
        pulled = exact_whole.exact_pull_whole       # what the two-phase nodes call
        patch.setattr(two_phase, "exact_pull_whole",
                      lambda *args: calls.extend(pulled(*args)) or np.zeros(0, np.int64))
        run = rs.simulate(query, key, value, numerics="exact", is_causal=True)
    assert calls == []
    np.testing.assert_array_equal(run.output, rs.attention(query, key, value, numerics="exact",
                                                           is_causal=True))


@pytest.mark.parametrize("huge_values", [False, True])
def test_rows_the_blocks_cannot_decide_are_still_exact(huge_values):
    rng = np.random.default_rng(8)
    query, key, value = rng.normal(size=(3, 6, 4))
    query[1] *= 1e250                          # past the slices' range: fsum, then integers
    key[2, 0] = 5e-324                         # a subnormal in a key row: more than 4 slices
    key[3] = key[4]                            # tied scores: results on a midpoint
    value[3, 0], value[4, 0] = 1.0, 1.0 + 2.0**-52
    if huge_values:                            # value columns past 2^200: no block output
        value[5] = 1e300
    bias = np.zeros((6, 6))
    bias[0] = [0.0, -1e300, np.finfo(np.float64).min, 3.0, 3.0, -745.0]
    assert_same_as_reference(query, key, value, attn_mask=bias, scale=0.5)
