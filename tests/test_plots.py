"""Plots are real figures of the run's numbers, and save as PNG and SVG."""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs
from routing_sim import plots

pytest.importorskip("matplotlib")


def run_of(heads: int = 2, **options) -> rs.Run:
    q, k, v = np.random.default_rng(0).normal(size=(3, heads, 4, 3))
    return rs.simulate(q, k, v, trace="full", network=rs.Network(jitter=1.0), **options)


def test_heatmap_shows_the_weights():
    run = run_of()
    figure = plots.heatmap(run)
    images = [axis.images[0] for axis in figure.axes if axis.images]
    assert len(images) == 2
    for head, image in enumerate(images):
        np.testing.assert_array_equal(image.get_array(), run.weights[head])


def test_graph_edges_are_the_routes():
    run = run_of(1, is_causal=True)
    figure = plots.graph(run)
    patches = [p for p in figure.axes[0].patches]
    assert len(patches) == 4 * 5 // 2       # one arrow per causal route


def test_timeline_counts_every_arrival():
    run = run_of()
    figure = plots.timeline(run)
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["QUERY", "SCORE", "PULL", "VALUE"]
    assert sum(line.get_ydata().sum() for line in lines) == len(run.trace.kind)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_figures_save(tmp_path, suffix):
    path = tmp_path / f"heat{suffix}"
    plots.heatmap(run_of()).savefig(path)
    assert path.stat().st_size > 1000


def test_timeline_needs_a_full_trace():
    q = k = v = np.eye(2)
    with pytest.raises(rs.InvalidArgumentError, match="full trace"):
        plots.timeline(rs.simulate(q, k, v, trace="summary"))
