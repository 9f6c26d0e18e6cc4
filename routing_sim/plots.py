"""Pictures of a run: routing-table heatmaps, the token graph, and a message timeline.

Needs the ``plot`` extra (matplotlib). Every function returns a
``matplotlib.figure.Figure`` made without pyplot, so it works headless; save it with
``figure.savefig("name.png")`` (or ``.svg``).
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from .errors import InvalidArgumentError
from .run import Run

__all__ = ["graph", "heatmap", "timeline"]


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InvalidArgumentError("plots need matplotlib: pip install 'routing_sim[plot]'"
                                   ) from None
    return Figure(figsize=(width, height), layout="constrained")


def _tables(run: Run, batch) -> tuple[np.ndarray, list[str]]:
    """The routing tables ``(heads, L, S)`` of one batch element, and head titles."""
    weights = run.weights
    if weights.ndim == 2:
        return weights[None], ["routing tables"]
    if weights.ndim == 3:
        return weights, [f"head {h}" for h in range(weights.shape[0])]
    index = batch if isinstance(batch, tuple) else (0,) * (weights.ndim - 3) \
        if batch is None else (batch,)
    selected = weights[index]
    return selected, [f"head {h}" for h in range(selected.shape[0])]


def _names(labels: list, count: int) -> list[str]:
    return [f"{label} ({i})" if label is not None else str(i)
            for i, label in enumerate(labels[:count])]


def heatmap(run: Run, batch=None):
    """Routing tables as heatmaps, one panel per head: row i is where token i's budget goes.

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> run = rs.simulate(*np.random.default_rng(0).normal(size=(3, 2, 4, 3)))
    >>> len(heatmap(run).axes)    # two heads, plus a colour bar
    3
    """
    tables, titles = _tables(run, batch)
    query_labels, key_labels = run.labels
    figure = _figure(3.2 * len(tables) + 0.8, 3.4)
    axes = figure.subplots(1, len(tables), squeeze=False)[0]
    image = None
    for axis, table, title in zip(axes, tables, titles):
        image = axis.imshow(table, vmin=0, vmax=1, cmap="viridis")
        axis.set_title(title)
        axis.set_xlabel("pulls from (key token)")
        axis.set_ylabel("query token")
        axis.set_xticks(range(table.shape[1]), _names(key_labels, table.shape[1]),
                        rotation=60, ha="right")
        axis.set_yticks(range(table.shape[0]), _names(query_labels, table.shape[0]))
    figure.colorbar(image, ax=list(axes), label="share of the budget")
    return figure


def graph(run: Run, head: int = 0, batch=None):
    """The token graph, each edge j -> i drawn as wide as i's share for j.

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> run = rs.simulate(*np.random.default_rng(0).normal(size=(3, 4, 3)), is_causal=True)
    >>> graph(run).axes[0].get_title()
    'token graph: edge width = share of the budget'
    """
    tables, titles = _tables(run, batch)
    if not 0 <= head < len(tables):
        raise InvalidArgumentError(f"head must be in 0 .. {len(tables) - 1}, got {head}")
    table = tables[head]
    n_queries, n_keys = table.shape
    query_labels, key_labels = run.labels
    cross = not run.self_attention
    drawing = nx.DiGraph()
    names_q = _names(query_labels, n_queries)
    names_k = _names(key_labels, n_keys) if cross else names_q
    drawing.add_nodes_from(names_q)
    drawing.add_nodes_from(names_k)
    for i in range(n_queries):
        for j in range(n_keys):
            if table[i, j] > 0:
                drawing.add_edge(names_k[j], names_q[i], share=float(table[i, j]))
    if cross:
        layout = nx.bipartite_layout(drawing, names_k)
    else:
        layout = nx.circular_layout(drawing)
    figure = _figure(5, 5)
    axis = figure.subplots()
    widths = [0.5 + 6 * drawing.edges[e]["share"] for e in drawing.edges]
    nx.draw_networkx_nodes(drawing, layout, ax=axis, node_color="#cfe3f5", node_size=900)
    nx.draw_networkx_labels(drawing, layout, ax=axis, font_size=8)
    nx.draw_networkx_edges(drawing, layout, ax=axis, width=widths, arrows=True,
                           connectionstyle="arc3,rad=0.12", node_size=900)
    axis.set_title("token graph: edge width = share of the budget")
    axis.set_axis_off()
    return figure


def timeline(run: Run, bins: int = 40):
    """How many messages of each kind arrived over simulated time (needs a full trace).

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> run = rs.simulate(*np.random.default_rng(0).normal(size=(3, 4, 3)),
    ...                   network=rs.Network(jitter=1.0), trace="full")
    >>> timeline(run).axes[0].get_xlabel()
    'simulated time'
    """
    trace = run.trace
    if not trace.full:
        raise InvalidArgumentError("timeline needs a full trace: simulate with trace='full'")
    arrived = ~np.isnan(trace.arrive)
    figure = _figure(6, 3.2)
    axis = figure.subplots()
    edges = np.linspace(0, max(float(np.nanmax(trace.arrive, initial=0.0)), 1e-9), bins + 1)
    for kind in trace.kinds:
        mine = arrived & (trace.kind == kind)
        counts, _ = np.histogram(trace.arrive[mine], edges)
        axis.step(edges[:-1], counts, where="post", label=kind.name)
    axis.set_xlabel("simulated time")
    axis.set_ylabel("messages arriving")
    axis.legend()
    axis.set_title("messages per kind over time")
    return figure
