"""Tokens joining one at a time with a KV cache equal full causal attention, row by row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs


@given(st.integers(1, 8), st.integers(1, 3), st.integers(0, 2**32 - 1),
       st.sampled_from([{}, {"softmax": "online"}, {"numerics": "exact"},
                        {"rope": 100.0, "alibi_slopes": [0.5, 0.25]}]))
def test_each_step_is_a_row_of_causal_attention(n, heads, seed, options):
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(3, heads, n, 4))
    if "alibi_slopes" in options:
        options = {**options, "alibi_slopes": [0.5, 0.25, 0.125][:heads]}
    decoder = rs.Decoder(network=rs.Network(jitter=0.5, seed=seed), **options)
    matrix_options = {name: value for name, value in options.items() if name != "softmax"}
    full = rs.attention(q, k, v, is_causal=True, **matrix_options)
    matrix_options.pop("numerics", None)
    tol = rs.verify.tolerance(q, k, v, is_causal=True, **matrix_options)[0]
    for t in range(n):
        step = decoder.step(q[:, t], k[:, t], v[:, t])
        assert step.position == t and step.output.shape == (heads, 4)
        assert (np.abs(step.output - full[:, t]) <= tol[:, t]).all()
        if options.get("numerics") == "exact":
            np.testing.assert_array_equal(step.output, full[:, t])
        assert step.messages == 4 * heads * (t + 1)
        assert step.recompute_messages == 4 * heads * (t + 1) * (t + 2) // 2
    assert len(decoder) == n and decoder.messages == 4 * heads * n * (n + 1) // 2


def test_routing_table_of_the_new_token():
    rng = np.random.default_rng(0)
    decoder = rs.Decoder()
    for word in ["the", "cat", "sat"]:
        step = decoder.step(*rng.normal(size=(3, 4)), label=word)
    table = str(step.run.routing_table(2))
    assert table.startswith("routing table of token 'sat' (#2)\n")
    assert "token cat:" in table and "token the:" in table and "position 1" in table
    assert str(step.run.routing_table("sat")) == table
    with pytest.raises(rs.InvalidArgumentError, match=r"position in \[2\] .* got 0$"):
        step.run.routing_table(0)      # token 0 asks nothing in this step: it is cached


def test_trace_names_the_new_token_at_its_position():
    rng = np.random.default_rng(0)
    decoder = rs.Decoder(trace="full")
    for word in ["the", "cat", "sat"]:
        step = decoder.step(*rng.normal(size=(3, 4)), label=word)
    assert "participant n0 as query sat (2)" in step.run.trace.to_mermaid()


def test_recompute_count_does_not_depend_on_losses():
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(3, 5, 4))
    lossy = rs.Decoder(network=rs.Network(loss=0.4, retries=40, seed=3))
    steps = [lossy.step(q[t], k[t], v[t]) for t in range(5)]
    assert steps[-1].messages > 4 * 5                   # retransmissions happened
    # Recomputing the causal triangle of 5 tokens: 15 routes, 4 messages each.
    assert [s.recompute_messages for s in steps] == [4, 12, 24, 40, 60]


def test_decoder_rejects_shape_changes_and_masks():
    decoder = rs.Decoder()
    decoder.step(np.ones(4), np.ones(4), np.ones(2))
    with pytest.raises(rs.ShapeError, match="cache holds"):
        decoder.step(np.ones(4), np.ones(3), np.ones(2))
    with pytest.raises(rs.InvalidArgumentError, match="is_causal"):
        rs.Decoder(is_causal=True)
