"""Pictures of context-parallel runs: the Gantt chart's lanes and the sweep curves."""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs

pytest.importorskip("matplotlib", reason="the 'plot' extra (matplotlib) is not installed")

from routing_sim.parallel import plots  # noqa: E402


def test_gantt_draws_what_the_trace_holds():
    rng = np.random.default_rng(0)
    query, key, value = rng.normal(size=(3, 2, 12, 4))
    run = rs.context_parallel(query, key, value, strategy="ring",
                              cluster=rs.Cluster(devices=3),
                              network=rs.Network(loss=0.3, retries=20, seed=1))
    axes = plots.gantt(run).axes[0]
    bars = {}
    for collection, label in zip(axes.collections, [f"{d} {lane} {kind}" for d in range(3)
                                                    for lane in ("compute", "send", "receive")
                                                    for kind in ("ok", "lost")]):
        bars[label] = len(collection.get_paths())
    assert sum(bars[f"{d} compute ok"] for d in range(3)) == len(run.trace.slices)
    sends = [t for t in run.trace.transfers if t["fate"] in ("delivered", "lost")]
    assert sum(bars[f"{d} send ok"] + bars[f"{d} send lost"] for d in range(3)) == len(sends)
    assert sum(bars[f"{d} send lost"] for d in range(3)) == sum(
        t["fate"] == "lost" for t in sends)


def test_gantt_needs_the_events():
    query = key = value = np.ones((1, 4, 2))
    run = rs.context_parallel(query, key, value, strategy="ring",
                              cluster=rs.Cluster(devices=2), trace="summary")
    with pytest.raises(rs.InvalidArgumentError, match="trace='auto'"):
        plots.gantt(run)


def test_curves_draw_a_line_per_group():
    records = rs.sweep(lambda strategy, block: {"makespan": block ** (1 + (strategy == "a"))},
                       {"strategy": ["a", "b"], "block": [1.0, 2.0, 4.0]})
    axes = plots.makespan_curve(records, critical=2.0).axes[0]
    lines = {line.get_label(): np.asarray(line.get_ydata()).tolist() for line in axes.get_lines()}
    assert lines["a"] == [1.0, 4.0, 16.0] and lines["b"] == [1.0, 2.0, 4.0]
    errors = [{"devices": d, "max_relative_error": e, "precision": p}
              for d, e, p in ((2, 1e-4, "float16"), (4, 2e-4, "float16"), (2, 0.0, "exact"))]
    axes = plots.error_curve(errors).axes[0]
    curves = {line.get_label(): np.asarray(line.get_ydata()).tolist()
              for line in axes.get_lines()}
    assert curves == {"float16": [1e-4, 2e-4], "exact": [1e-17]}
