"""Regular tile panels (a window, a band): taken where tiles repeat, and the same bits as
the general tile path, which builds the same operands by index arrays."""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.numerics import tiles
from routing_sim.numerics.tiles import Tiles
from routing_sim.routes import patterns


@contextmanager
def general_path():
    """Every panel through the general path (index gathers and scatters)."""
    with mock.patch.object(Tiles, "_regular", return_value=None):
        yield


def grouped(indptr: np.ndarray, keys: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """One group's table repeated for ``groups`` groups (heads, batch): ``(G·L + 1,)``,
    ``(G·R,)``."""
    counts = np.tile(np.diff(indptr), groups)
    return np.concatenate(([0], np.cumsum(counts))), np.tile(keys, groups)


def per_route_dots(indptr, keys, query, key, n_queries, n_keys):
    """q_u · k_j route by route, in the test: one short dot product each."""
    node = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    rows = node // n_queries * n_keys + keys
    return np.einsum("re,re->r", query[node], key[rows])


def test_a_window_takes_regular_panels_and_a_random_pattern_does_not():
    window = patterns.sliding_window(4096, 64, sinks=4)
    tiles = Tiles(window.indptr, window.indices, 4096, 4096)
    regular = [panel for panel in tiles.regular if panel is not None]
    assert regular and sum(panel.tiles for panel in regular) > 0.9 * len(tiles.first)
    assert all(len(panel.intervals) == 2 for panel in regular)          # sinks, window
    assert [step for panel in regular for *_, step in panel.intervals][:2] == [0, tiles.size]
    rng = np.random.default_rng(0)
    scattered = rng.random((256, 256)) < 0.2
    indptr = np.concatenate(([0], np.cumsum(scattered.sum(axis=1))))
    tiles = Tiles(indptr, np.nonzero(scattered)[1], 256, 256, size=8)
    assert all(panel is None for panel in tiles.regular)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 400), st.integers(1, 90), st.integers(0, 12), st.integers(1, 3),
       st.sampled_from([None, 8, 16, 32]), st.integers(1, 80), st.integers(0, 2**32 - 1))
def test_regular_panels_have_the_general_paths_bits(n, window, sinks, groups, size, dim,
                                                    seed):
    """Windows longer than the sequence, sinks as many as the window or more, short last
    tiles, several groups, keys wider and narrower than 64 columns."""
    routes = patterns.sliding_window(n, window, sinks=sinks)
    indptr, keys = grouped(routes.indptr, routes.indices, groups)
    rng = np.random.default_rng(seed)
    query, key = rng.normal(size=(2, groups * n, dim))                 # (G·L, E)
    value = rng.normal(size=(groups * n, 1 + seed % 70))               # (G·S, Ev)
    shares = rng.random(len(keys))                                     # (R,)
    fast = Tiles(indptr, keys, n, n, size=size, dim=max(dim, value.shape[1]))
    with general_path():
        general = Tiles(indptr, keys, n, n, size=size, dim=max(dim, value.shape[1]))
    assert all(panel is None for panel in general.regular)
    dots = fast.dots(query, key)
    np.testing.assert_array_equal(dots, general.dots(query, key), strict=True)
    np.testing.assert_allclose(dots, per_route_dots(indptr, keys, query, key, n, n),
                               rtol=1e-12, atol=1e-12 * dim)
    pulled = fast.pull(shares, value)
    np.testing.assert_array_equal(pulled, general.pull(shares, value), strict=True)
    node = np.repeat(np.arange(groups * n), np.diff(indptr))
    expected = np.zeros_like(pulled)
    np.add.at(expected, node, shares[:, None] * value[node // n * n + keys])
    np.testing.assert_allclose(pulled, expected, rtol=1e-12, atol=1e-12 * window)


def window_inputs(seed: int, batch: int = 1, heads: int = 2, kv_heads: int = 2, n: int = 160,
                  dim: int = 16):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, heads, n, dim)), rng.normal(size=(batch, kv_heads, n, dim)),
            rng.normal(size=(batch, kv_heads, n, dim + 3)))


@pytest.mark.parametrize("kv_heads", [2, 1])                          # heads, GQA
def test_a_window_run_keeps_its_bits_under_schedules_and_meets_the_contract(kv_heads):
    q, k, v = window_inputs(1, kv_heads=kv_heads)
    graph = patterns.sliding_window(160, 24, sinks=4)
    options = {"graph": graph, "enable_gqa": kv_heads != 2}
    first = rs.simulate(q, k, v, **options)
    assert first.state.tiles is not None
    assert any(panel is not None for panel in first.state.tiles.regular)
    with general_path():
        general = rs.simulate(q, k, v, **options)
    np.testing.assert_array_equal(first.output, general.output, strict=True)
    np.testing.assert_array_equal(first.weights, general.weights, strict=True)
    reference = rs.attention(q, k, v, **options)
    np.testing.assert_allclose(first.output, reference, rtol=1e-12, atol=1e-13)
    for network, delivery in (
            (rs.Network(latency=0.5, jitter=0.9, reorder=True, seed=3), "window"),
            (rs.Network(jitter=0.4, seed=5), "per_message"),
            (rs.Network(loss=0.2, duplicate=0.2, retries=30, seed=4), "window")):
        again = rs.simulate(q, k, v, network=network, delivery=delivery, **options)
        np.testing.assert_array_equal(again.output, first.output, strict=True)
        np.testing.assert_array_equal(again.route_weights().share,
                                      first.route_weights().share, strict=True)


def test_a_window_with_padding_and_minus_infinity_in_the_mask():
    """A float mask with -inf (padded keys, a removed route) on a window: the same bits as
    the general path, and the matrix form's result."""
    q, k, v = window_inputs(2, batch=1, heads=2, kv_heads=2, n=260)
    mask = np.zeros((260, 260))
    mask[:, 250:] = -np.inf                                            # padded keys
    mask[100, 90] = -np.inf
    graph = patterns.sliding_window(260, 33, sinks=2)
    run = rs.simulate(q, k, v, mask, graph=graph)
    with general_path():
        general = rs.simulate(q, k, v, mask, graph=graph)
    np.testing.assert_array_equal(run.output, general.output, strict=True)
    np.testing.assert_allclose(run.output, rs.attention(q, k, v, mask, graph=graph),
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("entries", [2**10, 2**12])                  # several batches a group
def test_regular_pulls_cut_into_batches_keep_the_general_paths_bits(entries, monkeypatch):
    """Batches of one group share the first batch's slots (a shorter last batch takes a
    prefix of them); the next group builds its own, even where its panels have the same
    shape and route count (a window of 40 + 3 sinks, then one of 43 without): the same
    weights, so the same bits."""
    monkeypatch.setattr(tiles, "REGULAR_ENTRIES", entries)
    parts = [patterns.sliding_window(700, 40, sinks=3), patterns.sliding_window(700, 43),
             patterns.sliding_window(700, 40, sinks=3)]
    counts = np.concatenate([np.diff(part.indptr) for part in parts])
    indptr = np.concatenate(([0], np.cumsum(counts)))                  # (3·L + 1,)
    keys = np.concatenate([part.indices for part in parts])            # (R,)
    rng = np.random.default_rng(7)
    value, shares = rng.normal(size=(3 * 700, 5)), rng.random(len(keys))
    fast = Tiles(indptr, keys, 700, 700, size=8, dim=8)
    regular = [panel for panel in fast.regular if panel is not None]
    assert len(regular) > 3 * 2 and len({panel.tiles for panel in regular}) > 1
    with general_path():
        general = Tiles(indptr, keys, 700, 700, size=8, dim=8)
    np.testing.assert_array_equal(fast.pull(shares, value), general.pull(shares, value),
                                  strict=True)
