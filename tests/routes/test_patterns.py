"""Each pattern against an independent dense construction from its definition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.routes import patterns


def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n)[:, None], np.arange(n)[None, :]                # i (n, 1), j (1, n)


def check(routes: rs.RouteSet, expected: np.ndarray) -> None:
    assert np.array_equal(routes.to_mask(), expected)
    assert len(routes) == int(expected.sum())
    assert np.array_equal(routes.routes_per_query(), expected.sum(axis=1))


@given(st.integers(0, 40), st.integers(1, 12), st.integers(0, 6))
def test_sliding_window(n, window, sinks):
    i, j = grid(n)
    expected = (j <= i) & ((i - j < window) | (j < sinks))
    routes = patterns.sliding_window(n, window, sinks=sinks)
    check(routes, expected)
    assert (routes.routes_per_query() == np.minimum(np.arange(n) + 1, window + sinks)).all()


@given(st.integers(1, 40), st.integers(0, 12), st.data())
def test_longformer(n, window, data):
    chosen = data.draw(st.lists(st.integers(0, n - 1), max_size=4))
    i, j = grid(n)
    is_global = np.isin(np.arange(n), chosen)
    expected = (np.abs(i - j) <= window // 2) | is_global[:, None] | is_global[None, :]
    routes = patterns.longformer(n, window, chosen)
    check(routes, expected)
    # The docstring's fan-in: n for a global token, else the band plus the global keys.
    fan_in = routes.routes_per_query()
    assert (fan_in[is_global] == n).all()
    assert (fan_in[~is_global] <= 2 * (window // 2) + 1 + len(set(chosen))).all()
    first = min(n, len(chosen))
    check(patterns.longformer(n, window, first),
          (np.abs(i - j) <= window // 2) | (i < first) | (j < first))


@given(st.integers(1, 50), st.integers(1, 7), st.integers(0, 5), st.integers(0, 3),
       st.integers(0, 3), st.integers(0, 99))
def test_bigbird(n, block, window_blocks, global_blocks, random_blocks, seed):
    n_blocks = -(-n // block)
    front, back = -(-global_blocks // 2), global_blocks // 2
    is_global = (np.arange(n_blocks) < front) | (np.arange(n_blocks) >= n_blocks - back)
    sees = np.zeros((n_blocks, n_blocks), bool)                        # block-level mask
    rng = np.random.default_rng(seed)
    for row in range(n_blocks):
        if is_global[row]:
            sees[row] = True
            continue
        window = np.abs(np.arange(n_blocks) - row) <= window_blocks // 2
        sees[row] = window | is_global
        candidates = [b for b in range(n_blocks) if not window[b] and not is_global[b]]
        drawn = rng.choice(np.array(candidates, dtype=np.int64),
                           size=min(random_blocks, len(candidates)), replace=False)
        sees[row, drawn] = True
    i, j = grid(n)
    routes = patterns.bigbird(n, block, window_blocks=window_blocks, global_blocks=global_blocks,
                              random_blocks=random_blocks, seed=seed)
    check(routes, sees[i // block, j // block])
    # The docstring's fan-in: n for a global token, else at most the blocks it may see.
    fan_in, token_is_global = routes.routes_per_query(), is_global[np.arange(n) // block]
    assert (fan_in[token_is_global] == n).all()
    seen_blocks = 2 * (window_blocks // 2) + 1 + global_blocks + random_blocks
    assert (fan_in[~token_is_global] <= block * seen_blocks).all()


def test_bigbird_seed_changes_only_the_random_blocks():
    a, b = (patterns.bigbird(64, 4, seed=seed).to_mask() for seed in (0, 1))
    assert not np.array_equal(a, b)
    assert a[:4].all() and a[:, :4].all() and a[-4:].all() and a[:, -4:].all()
    # Blocks away from the ends: 3 window + 2 global + 3 random blocks of 4 tokens.
    assert (a.sum(axis=1)[8:-8] == 4 * (3 + 2 + 3)).all()


@given(st.integers(0, 40), st.integers(1, 6), st.integers(1, 5))
def test_dilated(n, window, dilation):
    i, j = grid(n)
    expected = (j <= i) & ((i - j) % dilation == 0) & (i - j < window * dilation)
    routes = patterns.dilated(n, window, dilation)
    check(routes, expected)
    assert (routes.routes_per_query() == np.minimum(window, np.arange(n) // dilation + 1)).all()


@given(st.lists(st.integers(0, 6), max_size=6), st.booleans())
def test_document(lengths, causal):
    n = sum(lengths)
    owner = np.repeat(np.arange(len(lengths)), lengths)                # document of each token
    i, j = grid(n)
    expected = owner[:, None] == owner[None, :]
    if causal:
        expected &= j <= i
    routes = patterns.document(lengths, causal=causal)
    check(routes, expected)
    sizes = np.asarray(lengths, dtype=np.int64)
    start = np.repeat(np.cumsum(sizes) - sizes, sizes)                 # first token of its doc
    fan_in = np.arange(n) - start + 1 if causal else np.repeat(sizes, sizes)
    assert (routes.routes_per_query() == fan_in).all()


@given(st.integers(0, 30), st.integers(0, 35))
def test_prefix_lm(n, prefix):
    i, j = grid(n)
    routes = patterns.prefix_lm(n, prefix)
    check(routes, (j < prefix) | (j <= i))
    assert (routes.routes_per_query() == np.minimum(n, np.maximum(prefix, np.arange(n) + 1))).all()


def test_patterns_scale_with_routes_not_n_squared():
    routes = patterns.sliding_window(1_000_000, 8, sinks=2)
    assert len(routes) == 10 * 1_000_000 - (10 * 11 // 2 - 10)      # rows 0..8 are short
    assert routes.indices.nbytes == 4 * len(routes)


@pytest.mark.parametrize("call, message", [
    (lambda: patterns.sliding_window(4, 0), "window must be at least 1"),
    (lambda: patterns.sliding_window(-1, 2), "n must be a non-negative integer"),
    (lambda: patterns.longformer(4, 2, [7]), "positions in 0 .. 3"),
    (lambda: patterns.longformer(4, 2, 9), "count in 0 .. 4"),
    (lambda: patterns.bigbird(4, 0), "block must be at least 1"),
    (lambda: patterns.dilated(4, 2, 0), "dilation must be at least 1"),
    (lambda: patterns.document([2, -1]), "non-negative integers"),
    (lambda: patterns.prefix_lm(4, 1.5), "prefix must be a non-negative integer"),
])
def test_errors(call, message):
    with pytest.raises(rs.InvalidArgumentError, match=message):
        call()
