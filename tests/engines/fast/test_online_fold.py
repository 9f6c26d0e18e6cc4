"""The streaming fold's bits: the engine's vectorised update equals the per-key definition.

The spec below folds one (score, value) pair at a time, per query node, in arrival order
(ties by route), as the online softmax reads: m' = max(m, s), c = exp(m - m'),
p = exp(s - m'), l' = c·l + p, o' = o·c + p·v, output o / l. It multiplies by every
factor, 1 included, and takes each pair's score from the trace (the score the SCORE
message carried), so it shares no shortcut with the engine. The engine's output must equal
it bit for bit (signed zeros included) under every schedule: the spec follows each
schedule's own arrival order.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.engines.fast import online
from routing_sim.engines.fast.online import rescale_rows
from tests.conftest import route_masks


def per_key_fold(run: rs.Run, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(output, lse) of the online softmax, one pair at a time: ``value`` is ``(G, S, Ev)``
    (key/value heads already repeated for the query heads), the pairs those of ``run``'s
    full trace."""
    trace = run.trace
    asked = trace.kind == rs.Kind.SCORE
    score_of = dict(zip(trace.route[asked].tolist(), trace.value[asked].tolist()))
    pairs = trace.kind == rs.Kind.VALUE
    group, node, route, arrive, key = (trace.group[pairs], trace.dst[pairs], trace.route[pairs],
                                       trace.arrive[pairs], trace.src[pairs])
    n_groups, n_queries = run.output.reshape(-1, *run.output.shape[-2:]).shape[:2]
    output = np.zeros((n_groups, n_queries, value.shape[-1]))          # (G, L, Ev)
    lse = np.full((n_groups, n_queries), -np.inf)                       # (G, L)
    states: dict[tuple[int, int], tuple[np.float64, np.float64, np.ndarray]] = {}
    for at in np.lexsort((route, arrive, node, group)):          # per node, arrival, route
        g, i = int(group[at]), int(node[at])
        m, l, o = states.get((g, i), (np.float64(-np.inf), np.float64(0.0),   # noqa: E741
                                      np.zeros(value.shape[-1])))
        s = np.float64(score_of[int(route[at])])
        new = max(m, s)
        c, p = np.exp(m - new), np.exp(s - new)
        states[g, i] = (new, c * l + p, o * c + p * value[g, key[at]])
    for (g, i), (m, l, o) in states.items():                        # noqa: E741
        output[g, i], lse[g, i] = o / l, m + np.log(l)
    return output, lse


@st.composite
def fold_cases(draw):
    """Inputs, keyword arguments and the (G, S, Ev) values the spec reads: batch and
    heads, GQA, masks, scores that tie, rise at every key (the max moves each time) or
    are random, values with signed zeros."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.sampled_from([(), (2,)]))
    kv_heads, repeat = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2]))
    n_queries, n_keys = draw(st.integers(1, 40)), draw(st.integers(1, 48))
    dim, value_dim = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    query = rng.normal(size=(*batch, kv_heads * repeat, n_queries, dim))
    key = rng.normal(size=(*batch, kv_heads, n_keys, dim))
    scores = draw(st.sampled_from(["random", "rising", "ties"]))
    if scores == "rising":                       # q·k_j grows with j: a new max every key
        query = np.abs(query) + 1
        key[:] = np.linspace(-3, 3, n_keys)[:, None]
    elif scores == "ties":
        key[:] = 0.0
    else:
        query *= draw(st.sampled_from([1.0, 10.0]))
    value = rng.normal(size=(*batch, kv_heads, n_keys, value_dim))
    zeros = rng.random(value.shape) < 0.2
    value[zeros] = rng.choice([0.0, -0.0], size=int(zeros.sum()))
    options = dict(draw(route_masks(n_queries, n_keys)), enable_gqa=repeat > 1)
    if draw(st.booleans()) and "attn_mask" not in options:       # ALiBi: rising with causal
        options["score_mod"] = rs.mods.alibi(np.linspace(0.5, 2.0, kv_heads * repeat))
    spec_value = np.repeat(value, repeat, axis=-3).reshape(-1, n_keys, value_dim)
    return query, key, value, options, spec_value


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert np.array_equal(actual, expected)
    assert np.array_equal(np.signbit(actual), np.signbit(expected))


@given(fold_cases(), st.sampled_from([0.0, 2.0]), st.integers(0, 100))
def test_online_output_is_the_per_key_fold(case, jitter, seed):
    query, key, value, options, spec_value = case
    run = rs.simulate(query, key, value, softmax="online", trace="full",
                      network=rs.Network(jitter=jitter, seed=seed), **options)
    output, lse = per_key_fold(run, spec_value)
    assert_same_bits(run.output.reshape(output.shape), output)
    assert_same_bits(run.lse.reshape(lse.shape), lse)


@pytest.mark.parametrize("network", [rs.Network(), rs.Network(jitter=0.5, seed=7),
                                     rs.Network(latency=0.0, jitter=2.0, seed=3)])
def test_every_rescale_branch_keeps_the_fold(monkeypatch, network):
    """n = 64: steps where many rows rescale and steps where a few do (steps where none
    does skip the call), on the column-major (one key a step) and the row-major (jitter)
    accumulator."""
    seen = []

    def spy(kept, factor, moved):
        seen.append((4 * len(moved) > len(kept), len(moved), kept.flags.f_contiguous
                     and kept.shape[1] > 1))
        rescale_rows(kept, factor, moved)

    monkeypatch.setattr(online, "rescale_rows", spy)
    rng = np.random.default_rng(64)
    query, key, value = rng.normal(size=(3, 64, 8))            # one head: one key a step
    run = rs.simulate(query, key, value, softmax="online", trace="full", network=network)
    output, lse = per_key_fold(run, value[None])
    assert_same_bits(run.output, output[0])
    assert_same_bits(run.lse, lse[0])
    assert {s[0] for s in seen} == {True, False}                # many rows, a few rows
    assert min(s[1] for s in seen) > 0                          # never called for none
    assert {s[2] for s in seen} == {network.jitter == 0}        # the layout follows the steps


@pytest.mark.parametrize("n", [50, 200])
def test_column_major_update_keeps_the_fold_and_numpy_buffer(n):
    """The column-major update shrinks numpy's ufunc buffer while it runs: columns
    shorter and longer than that buffer keep the fold's bits, and the caller's buffer size
    is what it was afterwards."""
    rng = np.random.default_rng(n)
    query, key, value = rng.normal(size=(3, n, 8))
    value[rng.random(value.shape) < 0.1] = -0.0
    before = np.getbufsize()
    np.setbufsize(4096)
    try:
        run = rs.simulate(query, key, value, softmax="online", trace="full", is_causal=n > 100)
        assert np.getbufsize() == 4096
    finally:
        np.setbufsize(before)
    output, lse = per_key_fold(run, value[None])
    assert_same_bits(run.output, output[0])
    assert_same_bits(run.lse, lse[0])


finite_or_not = st.sampled_from([0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.nan, 1e-310])


@given(st.lists(st.tuples(finite_or_not, finite_or_not, st.sampled_from([1.0, 0.5, 0.0, np.nan,
                                                                          np.inf])),
                min_size=1, max_size=12),
       st.booleans())
def test_rescale_rows_is_a_multiply_by_every_factor(rows, column_major):
    kept = np.array([[a, b] for a, b, _ in rows], order="F" if column_major else "C")
    factor = np.array([f for _, _, f in rows])
    with np.errstate(invalid="ignore"):                 # inf · 0 is NaN on both sides
        expected = kept * factor[:, None]
        rescale_rows(kept, factor, np.flatnonzero(factor != 1))
    assert np.array_equal(kept, expected, equal_nan=True)
    assert np.array_equal(np.signbit(kept), np.signbit(expected))


@pytest.mark.parametrize("network", [rs.Network(), rs.Network(jitter=0.5, seed=5)])
@pytest.mark.parametrize("band", [1, 7 * 24, 2**16])
def test_grid_bands_keep_the_fold(monkeypatch, network, band):
    """A grid goes in bands of steps (``band`` pairs, so 1, 7 or all 30 steps a band at
    24 queries; the last band shorter): the output and lse are the per-key fold's, and the
    rescale column and partial outputs are those of one band, whatever the band."""
    rng = np.random.default_rng(band)
    query = rng.normal(size=(2, 24, 4)) * 3                    # two heads on one kv head
    key, value = rng.normal(size=(2, 1, 30, 4))
    value[rng.random(value.shape) < 0.1] = -0.0
    options = dict(softmax="online", trace="full", network=network, enable_gqa=True)
    whole = rs.simulate(query, key, value, **options)
    calls = []
    grid_scalars = online.OnlineNodes._grid_scalars

    def spy(self, nodes, scores, keep_normalisers):
        calls.append(len(scores))
        return grid_scalars(self, nodes, scores, keep_normalisers)

    monkeypatch.setattr(online, "_BAND", band)
    monkeypatch.setattr(online.OnlineNodes, "_grid_scalars", spy)
    run = rs.simulate(query, key, value, **options)
    output, lse = per_key_fold(run, np.repeat(value, 2, axis=0))
    assert_same_bits(run.output, output)
    assert_same_bits(run.lse, lse)
    assert np.array_equal(run.trace.rescale, whole.trace.rescale, equal_nan=True)  # NaN: no VALUE
    for token in range(24):
        for head in range(2):
            for (time, partial), (whole_time, whole_partial) in zip(
                    run.stream(token, head=head), whole.stream(token, head=head), strict=True):
                assert time == whole_time
                assert_same_bits(partial, whole_partial)
    if network.jitter == 0:                      # one wave: each head a grid of 30 steps
        assert calls == 2 * {1: [1] * 30, 7 * 24: [7, 7, 7, 7, 2], 2**16: [30]}[band]
    else:                                        # a band holds at most ``band`` pairs
        assert max(calls, default=1) <= max(1, band)
