"""Pictures of a run: routing-table heatmaps, the token graph, and a message timeline.

Needs the ``plot`` extra (matplotlib). Every function returns a
``matplotlib.figure.Figure`` made without pyplot, so it works headless; save it with
``figure.savefig("name.png")`` (or ``.svg``).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from ..errors import InvalidArgumentError
from ..network.messages import towards_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..results.run import Run

__all__ = ["graph", "heatmap", "require_matplotlib", "timeline"]

MASKED = "#dddddd"        # the heatmap's colour for cells with no route


def require_matplotlib() -> None:
    """Raise a clear error now if matplotlib is missing: call it before a long computation
    whose result is to be drawn, so the missing extra is not found after the work.

    Examples
    --------
    >>> require_matplotlib()          # the plot extra is installed here
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise InvalidArgumentError("plots need matplotlib: pip install 'routing_sim[plot]'")


def new_figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _tables(run: Run, batch: int | tuple[int, ...] | None
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The routing tables ``(heads, L, S)`` of one batch element, which of their cells
    are routes (bool, same shape), and head titles."""
    weights = run.weights
    exists = np.zeros(weights.shape, dtype=bool)
    routes = run.route_weights()
    exists.reshape(-1, *weights.shape[-2:])[routes.group, routes.query, routes.key] = True
    if weights.ndim == 2:
        return weights[None], exists[None], ["routing tables"]
    if weights.ndim == 3:
        return weights, exists, [f"head {h}" for h in range(weights.shape[0])]
    index = batch if isinstance(batch, tuple) else (0,) * (weights.ndim - 3) \
        if batch is None else (batch,)
    selected = weights[index]
    return selected, exists[index], [f"head {h}" for h in range(selected.shape[0])]


def _names(labels: list, count: int) -> list[str]:
    return [f"{label} ({i})" if label is not None else str(i)
            for i, label in enumerate(labels[:count])]


def heatmap(run: Run, batch: int | tuple[int, ...] | None = None) -> Figure:
    """Routing tables as heatmaps, one panel per head: row i is where token i's budget goes.

    Cells with no route (masked by the attention mask, causality or the graph) are drawn
    hatched grey, apart from routes that exist but got a share near zero.

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> run = rs.simulate(*np.random.default_rng(0).normal(size=(3, 2, 4, 3)), is_causal=True)
    >>> figure = heatmap(run)
    >>> len(figure.axes)    # two heads, plus a colour bar
    3
    >>> int(figure.axes[0].images[0].get_array().mask.sum())    # 6 masked cells per head
    6
    """
    from matplotlib.patches import Patch, Rectangle

    tables, exists, titles = _tables(run, batch)
    query_labels, key_labels = run.labels
    figure = new_figure(3.2 * len(tables) + 0.8, 3.6)
    axes = figure.subplots(1, len(tables), squeeze=False)[0]
    image = None
    for axis, table, routed, title in zip(axes, tables, exists, titles):
        axis.add_patch(Rectangle((-0.5, -0.5), table.shape[1], table.shape[0],
                                 facecolor=MASKED, edgecolor="grey", hatch="///", zorder=0))
        image = axis.imshow(np.ma.masked_array(table, ~routed), vmin=0, vmax=1,
                            cmap="viridis", zorder=1)
        axis.set_title(title)
        axis.set_xlabel("pulls from (key token)")
        axis.set_ylabel("query token")
        axis.set_xticks(range(table.shape[1]), _names(key_labels, table.shape[1]),
                        rotation=60, ha="right")
        axis.set_yticks(range(table.shape[0]), _names(query_labels, table.shape[0]))
    if not exists.all():
        figure.legend(handles=[Patch(facecolor=MASKED, hatch="///", edgecolor="grey",
                                     label="no route (masked)")], loc="outside lower center")
    assert image is not None, "a run has at least one routing table to draw"
    figure.colorbar(image, ax=list(axes), label="share of the budget")
    return figure


def graph(run: Run, head: int | None = None, batch: int | tuple[int, ...] | None = None
          ) -> Figure:
    """The token graph, each edge j -> i drawn as wide as i's share for j.

    One panel per head (``head=None``, the default), or only head ``head``.

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> run = rs.simulate(*np.random.default_rng(0).normal(size=(3, 4, 3)), is_causal=True)
    >>> graph(run).axes[0].get_title()
    'token graph: edge width = share of the budget'
    >>> heads = rs.simulate(*np.random.default_rng(0).normal(size=(3, 2, 4, 3)))
    >>> [axis.get_title() for axis in graph(heads).axes]
    ['head 0: edge width = share', 'head 1: edge width = share']
    """
    tables, _, titles = _tables(run, batch)
    if head is not None and not (isinstance(head, (int, np.integer)) and
                                 0 <= head < len(tables)):
        raise InvalidArgumentError(f"head must be None (every head) or in 0 .. "
                                   f"{len(tables) - 1}, got {head!r}")
    shown = range(len(tables)) if head is None else [int(head)]
    figure = new_figure(4.6 * len(shown), 4.8)
    axes = figure.subplots(1, len(shown), squeeze=False)[0]
    for axis, index in zip(axes, shown):
        _draw_graph(axis, run, tables[index])
        axis.set_title("token graph: edge width = share of the budget" if len(tables) == 1
                       else f"{titles[index]}: edge width = share")
    return figure


def _draw_graph(axis, run: Run, table: np.ndarray) -> None:
    """One head's token graph on ``axis``."""
    n_queries, n_keys = table.shape
    query_labels, key_labels = run.labels
    cross = not run.self_attention
    drawing = nx.DiGraph()
    names_q = _names(query_labels, n_queries)
    names_k = _names(key_labels, n_keys) if cross else names_q
    drawing.add_nodes_from(names_q)
    drawing.add_nodes_from(names_k)
    for i, j in zip(*np.nonzero(table > 0)):
        drawing.add_edge(names_k[j], names_q[i], share=float(table[i, j]))
    layout = nx.bipartite_layout(drawing, names_k) if cross else nx.circular_layout(drawing)
    widths = [0.5 + 6 * drawing.edges[e]["share"] for e in drawing.edges]
    nx.draw_networkx_nodes(drawing, layout, ax=axis, node_color="#cfe3f5", node_size=900)
    nx.draw_networkx_labels(drawing, layout, ax=axis, font_size=8)
    nx.draw_networkx_edges(drawing, layout, ax=axis, width=widths, arrows=True,
                           connectionstyle="arc3,rad=0.12", node_size=900)
    axis.set_axis_off()


def timeline(run: Run, bins: int = 40, group: int = 0) -> Figure:
    """Messages over simulated time (needs a full trace).

    The top panel counts the messages of each kind arriving per time bin (integer counts,
    every group). The bottom panel has one lane per token of routing group ``group``: a
    dot where a message reached that token, a red cross where one sent to it was lost
    (at its send time), a triangle for a retry and a square for a network duplicate.

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> run = rs.simulate(*np.random.default_rng(0).normal(size=(3, 4, 3)),
    ...                   network=rs.Network(jitter=1.0, loss=0.2, retries=10, seed=1),
    ...                   trace="full")
    >>> figure = timeline(run)
    >>> figure.axes[0].get_ylabel(), figure.axes[1].get_xlabel()
    ('messages arriving', 'simulated time')
    >>> [collection.get_label() for collection in figure.axes[1].collections]
    ['delivered', 'lost', 'retry']
    """
    from matplotlib.ticker import MaxNLocator

    trace = run.trace
    if not trace.full:
        raise InvalidArgumentError("timeline needs a full trace: simulate with trace='full'")
    if not isinstance(group, (int, np.integer)) or not 0 <= group <= int(trace.group.max(
            initial=0)):
        raise InvalidArgumentError(f"group must be a routing group (flat batch/head index) "
                                   f"in 0 .. {int(trace.group.max(initial=0))}, got {group!r}")
    arrived = ~np.isnan(trace.arrive)
    lanes, names = _lanes(run)
    figure = new_figure(6.4, 3.0 + 0.22 * len(names))
    counts_axis, lane_axis = figure.subplots(2, 1, sharex=True,
                                             height_ratios=[2, 1 + 0.15 * len(names)])
    edges = np.linspace(0, max(float(np.nanmax(trace.arrive, initial=0.0)), 1e-9), bins + 1)
    for kind in trace.kinds:
        mine = arrived & (trace.kind == kind)
        counts, _ = np.histogram(trace.arrive[mine], edges)
        counts_axis.step(edges[:-1], counts, where="post", label=kind.name)
    counts_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    counts_axis.set_ylabel("messages arriving")
    counts_axis.legend(fontsize=7)
    counts_axis.set_title("messages per kind over time")
    ours = trace.group == group
    lost = ours & ~arrived
    marks = [("delivered", ours & arrived, trace.arrive, dict(marker=".", color="#1f77b4")),
             ("lost", lost, trace.sent, dict(marker="x", color="#d62728")),
             ("retry", ours & arrived & (trace.attempt > 0), trace.arrive,
              dict(marker="^", facecolors="none", edgecolors="#ff7f0e")),
             ("duplicate", ours & arrived & (trace.copy > 0), trace.arrive,
              dict(marker="s", facecolors="none", edgecolors="grey"))]
    for label, chosen, times, style in marks:
        if chosen.any():
            lane_axis.scatter(times[chosen], lanes[chosen], s=14, label=label, **style)
    lane_axis.set_yticks(range(len(names)), names, fontsize=7)
    lane_axis.set_ylim(len(names) - 0.5, -0.5)
    lane_axis.set_xlabel("simulated time")
    lane_axis.set_ylabel("receiving token")
    lane_axis.legend(fontsize=7, loc="upper right")
    return figure


def _lanes(run: Run) -> tuple[np.ndarray, list[str]]:
    """Each message's receiving lane, and the lanes' names (queries, then keys if cross)."""
    trace = run.trace
    query_labels, key_labels = run.labels
    names = _names(query_labels, len(query_labels))
    if run.self_attention:
        return trace.dst, names
    to_key = towards_key(trace.kind)
    return np.where(to_key, trace.dst + len(query_labels), trace.dst), \
        names + [f"key {name}" for name in _names(key_labels, len(key_labels))]
