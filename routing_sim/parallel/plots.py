"""Pictures of context-parallel runs: a per-device Gantt chart and sweep curves.

Needs the ``plot`` extra (matplotlib); every function returns a
``matplotlib.figure.Figure`` made without pyplot (save it with ``figure.savefig``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from ..views.plots import new_figure
from .run import ParallelRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["error_curve", "gantt", "makespan_curve"]

_COLOURS = {"compute": "tab:blue", "send": "tab:orange", "receive": "tab:green",
            "lost": "tab:red"}


def gantt(run: ParallelRun) -> Figure:
    """Each device's compute slices and its send/receive NIC busy times, against time.

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> q = k = v = np.ones((1, 8, 2))
    >>> figure = gantt(rs.context_parallel(q, k, v, strategy="ring",
    ...                                    cluster=rs.Cluster(devices=2)))
    >>> [text.get_text() for text in figure.axes[0].get_yticklabels()][:3]
    ['device 0 compute', 'device 0 send', 'device 0 receive']
    """
    trace = run.trace
    if not trace.slices and not trace.transfers:
        raise InvalidArgumentError("gantt needs the run's events; run with trace='auto' or "
                                   "'full', not 'summary'")
    devices = trace.devices
    figure = new_figure(9, 0.9 * devices + 1.2)
    axes = figure.add_subplot()
    scale, unit = _time_unit(run.stats.makespan)
    lanes: dict[tuple[int, str], list[tuple[float, float]]] = {}
    lost: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for piece in trace.slices:
        lanes.setdefault((piece["device"], "compute"), []).append(
            (piece["start"] * scale, (piece["end"] - piece["start"]) * scale))
    for transfer in trace.transfers:
        if transfer["sent"] is None or transfer["fate"] == "duplicate":
            continue
        wire = transfer["bytes"] / trace.bandwidth * scale
        target = lost if transfer["fate"] == "lost" else lanes
        target.setdefault((transfer["src"], "send"), []).append(
            (transfer["sent"] * scale, wire))
        if transfer["fate"] == "delivered":
            lanes.setdefault((transfer["dst"], "receive"), []).append(
                (transfer["arrived"] * scale - wire, wire))
    labels = []
    for device in range(devices):
        for row, lane in enumerate(("compute", "send", "receive")):
            y = -(3 * device + row)
            labels.append((y, f"device {device} {lane}"))
            axes.broken_barh(lanes.get((device, lane), []), (y - 0.4, 0.8),
                             facecolors=_COLOURS[lane], edgecolors="white", linewidth=0.5)
            axes.broken_barh(lost.get((device, lane), []), (y - 0.4, 0.8),
                             facecolors=_COLOURS["lost"])
    axes.set_yticks([y for y, _ in labels], [text for _, text in labels])
    axes.set_xlabel(f"time ({unit})")
    axes.set_title(f"{run.strategy} ({run.layout}) on {devices} devices: makespan "
                   f"{run.stats.makespan * scale:.3g} {unit}, idle share "
                   f"{run.stats.idle_share:.2f}")
    return figure


def makespan_curve(records: Sequence[dict], x: str = "block", y: str = "makespan",
                   group: str | None = "strategy", critical: float | None = None) -> Figure:
    """A line per ``group`` of sweep records, ``y`` against ``x`` on log axes; a vertical
    line at ``critical`` (c*, say)."""
    figure = new_figure(6, 4)
    axes = figure.add_subplot()
    series: dict[object, list[tuple[float, float]]] = {}
    for record in records:
        series.setdefault(record[group] if group else y, []).append((record[x], record[y]))
    for name, points in series.items():
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=str(name))
    if critical is not None:
        axes.axvline(critical, color="grey", linestyle="--", label="c*")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.legend()
    return figure


def error_curve(records: Sequence[dict], group: str = "precision") -> Figure:
    """Relative error against the device count, a line per precision (exact mode, whose
    error is 0, is drawn on the axis floor)."""
    figure = makespan_curve([{**r, "max_relative_error": max(r["max_relative_error"], 1e-17)}
                             for r in records], x="devices", y="max_relative_error",
                            group=group)
    figure.axes[0].set_xscale("log", base=2)
    return figure


def _time_unit(makespan: float) -> tuple[float, str]:
    for scale, unit in ((1.0, "s"), (1e3, "ms"), (1e6, "µs")):
        if makespan * scale >= 1:
            return scale, unit
    return 1e9, "ns"
