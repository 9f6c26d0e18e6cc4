"""Tiles and row blocks: the fast paths' products cover every route once, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.numerics.tiles import SPREAD, RaggedRows, RowBlocks, SpanBlocks, tile_size

shapes = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 5),
                   st.integers(1, 4), st.integers(1, 40))


def small_integers(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Integer-valued floats: every product and sum of a few is exact, whatever the order."""
    return rng.integers(-4, 5, size=shape).astype(np.float64)


@given(shapes)
def test_row_blocks_cover_every_row_once_and_stay_in_bounds(shape):
    groups, n_queries, n_keys, _, _, entries = shape
    blocks = RowBlocks(groups, n_queries, n_keys, entries=entries)
    covered = [(group, row) for group, first, stop in blocks.blocks
               for row in range(first, stop)]
    assert covered == [(g, i) for g in range(groups) for i in range(n_queries)]
    for group, first, stop in blocks.blocks:
        assert stop - first == 1 or (stop - first) * n_keys <= entries
        assert blocks.routes(group, first, stop) == slice((group * n_queries + first) * n_keys,
                                                          (group * n_queries + stop) * n_keys)


@given(shapes, st.integers(0, 2**32 - 1))
def test_row_blocks_compute_every_score_and_pull(shape, seed):
    groups, n_queries, n_keys, dim, value_dim, entries = shape
    rng = np.random.default_rng(seed)
    query = small_integers(rng, groups, n_queries, dim)
    key = small_integers(rng, groups, n_keys, dim)
    value = small_integers(rng, groups, n_keys, value_dim)
    shares = small_integers(rng, groups * n_queries * n_keys)
    blocks = RowBlocks(groups, n_queries, n_keys, entries=entries)
    scores = np.full(groups * n_queries * n_keys, np.nan)              # (R,)
    output = np.full((groups * n_queries, value_dim), np.nan)          # (G·L, Ev)
    for block in blocks.blocks:
        blocks.dots(query, key, *block, out=scores)
        blocks.pull(shares, value, *block, out=output)
    # Route u·S + j of node u = g·L + i: q_i · k_j, one sum per route, in the test.
    expected = [sum(query[g, i, d] * key[g, j, d] for d in range(dim))
                for g in range(groups) for i in range(n_queries) for j in range(n_keys)]
    assert scores.tolist() == expected
    pulled = [[sum(shares[(g * n_queries + i) * n_keys + j] * value[g, j, e]
                   for j in range(n_keys)) for e in range(value_dim)]
              for g in range(groups) for i in range(n_queries)]
    assert output.tolist() == pulled


@given(st.lists(st.integers(0, 300), min_size=1, max_size=50))
def test_tile_size_is_a_small_power_of_two(fan_in):
    size = tile_size(np.concatenate(([0], np.cumsum(fan_in))))
    assert size in (8, 16, 32)


def one_run_rows(rng: np.random.Generator, groups: int, n_queries: int, n_keys: int
                 ) -> np.ndarray:
    """(G, L, S) bool: each row one run of keys or none (causal, padding, windows)."""
    low = rng.integers(0, n_keys + 1, size=(groups, n_queries))
    high = rng.integers(0, n_keys + 1, size=(groups, n_queries))
    column = np.arange(n_keys)
    return (column >= low[..., None]) & (column < high[..., None])


def csr(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = allowed.reshape(-1, allowed.shape[-1])
    return np.concatenate(([0], np.cumsum(rows.sum(axis=1)))), np.nonzero(rows)[1]


@given(shapes, st.integers(0, 2**32 - 1))
def test_span_blocks_compute_every_score_and_pull(shape, seed):
    groups, n_queries, n_keys, dim, value_dim, _ = shape
    rng = np.random.default_rng(seed)
    allowed = one_run_rows(rng, groups, n_queries, n_keys)
    indptr, keys = csr(allowed)
    spans = SpanBlocks.of(indptr, keys, n_queries, n_keys)
    if len(keys) == 0:
        assert spans is None
        return
    assert spans is not None
    query = small_integers(rng, groups * n_queries, dim)
    key = small_integers(rng, groups * n_keys, dim)
    value = small_integers(rng, groups * n_keys, value_dim)
    shares = small_integers(rng, len(keys))
    scores, output = np.full(len(keys), np.nan), np.zeros((groups * n_queries, value_dim))
    covered = []
    for first, stop, lo, hi in spans.blocks:
        assert first // n_queries == (stop - 1) // n_queries            # one group a block
        covered += list(range(first, stop))
        filled = spans.masks(first, stop, lo, hi)[0]
        scores[spans.routes(first, stop)] = spans.dots(query, key, first, stop, lo, hi)[filled]
        weights = np.zeros(filled.shape)
        weights[filled] = shares[spans.routes(first, stop)]
        spans.pull(weights, value, first, stop, lo, hi, out=output)
    busy = np.flatnonzero(np.diff(indptr))
    assert set(busy) <= set(covered) and len(covered) == len(set(covered))
    node = np.repeat(np.arange(groups * n_queries), np.diff(indptr))   # (R,) g·L + i
    key_row = node // n_queries * n_keys + keys                       # (R,) g·S + j
    np.testing.assert_array_equal(scores, np.einsum("re,re->r", query[node], key[key_row]))
    expected = np.zeros_like(output)
    np.add.at(expected, node, shares[:, None] * value[key_row])
    np.testing.assert_array_equal(output[busy], expected[busy])


def test_span_blocks_refuse_a_row_with_a_gap_and_size_a_causal_triangle():
    assert SpanBlocks.of(np.array([0, 1, 3]), np.array([0, 0, 2]), 2, 3) is None
    causal = np.tril(np.ones((2048, 2048), dtype=bool))[None]
    spans = SpanBlocks.of(*csr(causal), 2048, 2048)
    assert spans is not None
    entries = sum((stop - first) * (hi - lo) for first, stop, lo, hi in spans.blocks)
    assert len(spans.blocks) <= 16 and entries <= 1.25 * causal.sum()


@given(st.lists(st.integers(0, 40), min_size=1, max_size=60), st.integers(1, 200))
def test_ragged_rows_cover_every_route_once_in_bands(fan_in, entries):
    indptr = np.concatenate(([0], np.cumsum(fan_in)))
    ragged = RaggedRows(indptr, entries=entries)
    values = np.arange(indptr[-1], dtype=np.float64)
    seen = []
    for first, stop, width in ragged.blocks:
        counts = np.array(fan_in[first:stop])
        assert (counts > 0).all() and width == counts.max()
        assert stop - first == 1 or (stop - first) * width <= entries
        assert counts.max() < SPREAD * counts.min() or \
            np.floor(np.log(counts.max()) / np.log(SPREAD)) == \
            np.floor(np.log(counts.min()) / np.log(SPREAD))
        filled = ragged.filled(first, stop, width)                     # (rows, width)
        assert (filled.sum(axis=1) == counts).all() and filled[:, 0].all()
        assert (filled[:, :-1] | ~filled[:, 1:]).all()                 # routes first, padding after
        seen += values[ragged.routes(first, stop)].tolist()
    assert seen == values.tolist()


def test_ragged_rows_take_a_causal_triangle_not_a_long_window():
    causal = np.tile(np.arange(1, 2049), 4)                           # 4 groups, L = 2048
    assert RaggedRows(np.concatenate(([0], np.cumsum(causal)))).worthwhile()
    window = np.minimum(np.arange(1, 131_073), 132)                   # 128 + 4 from row 131
    assert not RaggedRows(np.concatenate(([0], np.cumsum(window)))).worthwhile()


def test_span_blocks_share_one_work_array_until_released():
    """Every block's work array is a view of one array, the largest block's size; each
    block's parts cover its rows in order; release lets the array go."""
    causal = np.tril(np.ones((40, 40), dtype=bool))
    indptr = np.concatenate(([0], np.cumsum(causal.sum(axis=1))))
    spans = SpanBlocks.of(indptr, np.nonzero(causal)[1], 40)
    assert spans is not None and len(spans.blocks) > 1
    largest = max((stop - first) * (hi - lo) for first, stop, lo, hi in spans.blocks)
    views = [spans.work(*block, np.dtype(np.float64)) for block in spans.blocks]
    assert all(view.base is views[0].base and view.base.size == largest for view in views)
    assert [view.shape for view in views] == [(stop - first, hi - lo)
                                              for first, stop, lo, hi in spans.blocks]
    for first, stop, lo, hi in spans.blocks:
        parts = spans.parts(first, stop, lo, hi)
        assert [row for part, end in parts for row in range(part, end)] == \
            list(range(first, stop))
    spans.release()
    assert spans.work(*spans.blocks[0], np.dtype(np.float64)).base is not views[0].base


@pytest.mark.parametrize("softmax", ["two_phase", "online"])
def test_a_finished_run_keeps_no_span_work_array_or_masks(softmax):
    """Both engines let the span blocks' work array and masks go once the shares are in
    (online pulls without them): a kept Run holds its blocks, not their work."""
    q, k, v = np.random.default_rng(0).normal(size=(3, 2, 40, 8))
    run = rs.simulate(q, k, v, is_causal=True, softmax=softmax)
    spans = run.state.spans
    assert spans is not None
    assert spans._work is None and not spans._geometries
