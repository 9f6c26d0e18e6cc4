"""Plots are real figures of the run's numbers, and save as PNG and SVG."""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.views import plots

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


def test_heatmap_marks_cells_without_a_route():
    q, k, v = np.random.default_rng(1).normal(size=(3, 2, 5, 3))
    mask = np.random.default_rng(2).random((2, 5, 5)) < 0.6
    mask[..., 0] = True
    run = rs.simulate(q, k, v, attn_mask=mask)
    figure = plots.heatmap(run)
    images = [axis.images[0] for axis in figure.axes if axis.images]
    for head, image in enumerate(images):
        data = image.get_array()
        np.testing.assert_array_equal(data.mask, ~mask[head])        # masked = no route
        np.testing.assert_array_equal(data.data[mask[head]], run.weights[head][mask[head]])
    texts = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert texts == ["no route (masked)"]


def test_graph_draws_every_head_unless_one_is_asked_for():
    run = run_of(2, is_causal=True)
    figure = plots.graph(run)
    assert [axis.get_title() for axis in figure.axes] == ["head 0: edge width = share",
                                                          "head 1: edge width = share"]
    for head, axis in enumerate(figure.axes):
        assert len(axis.patches) == int((run.weights[head] > 0).sum())
    assert len(plots.graph(run, head=1).axes) == 1
    with pytest.raises(rs.InvalidArgumentError, match="head"):
        plots.graph(run, head=2)


def test_timeline_counts_are_integers_and_lanes_mark_losses_and_retries():
    q, k, v = np.random.default_rng(0).normal(size=(3, 4, 3))
    run = rs.simulate(q, k, v, trace="full", network=rs.Network(loss=0.3, retries=20, seed=4))
    figure = plots.timeline(run)
    counts_axis, lane_axis = figure.axes[:2]
    assert all(float(tick).is_integer() for tick in counts_axis.get_yticks())
    marks = {collection.get_label(): collection.get_offsets() for collection in
             lane_axis.collections}
    trace = run.trace
    lost = np.isnan(trace.arrive)
    assert lost.any() and (trace.attempt > 0).any()
    np.testing.assert_array_equal(marks["lost"], np.column_stack([trace.sent[lost],
                                                                   trace.dst[lost]]))
    assert len(marks["retry"]) == int(((trace.attempt > 0) & ~lost).sum())
    assert len(marks["delivered"]) == int((~lost).sum())
    assert [label.get_text() for label in lane_axis.get_yticklabels()] == ["0", "1", "2", "3"]


def test_timeline_lanes_of_cross_attention_name_both_sides():
    rng = np.random.default_rng(0)
    run = rs.simulate(rng.normal(size=(2, 3)), rng.normal(size=(3, 3)), rng.normal(size=(3, 3)),
                      graph=rs.graphs.complete(2, 3), trace="full")
    lane_axis = plots.timeline(run).axes[1]
    assert len(lane_axis.get_yticklabels()) == 5
    lanes = lane_axis.collections[0].get_offsets()[:, 1]
    scores = run.trace.kind == rs.Kind.SCORE                          # they reach queries
    assert set(lanes.tolist()) == {0, 1, 2, 3, 4}
    assert set(run.trace.dst[scores].tolist()) == {0, 1}
