"""Tiles and row blocks: the fast paths' products cover every route once, exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from routing_sim.numerics.tiles import RowBlocks, tile_size

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
