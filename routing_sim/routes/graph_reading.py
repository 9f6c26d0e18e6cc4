"""What the simulator reads off a token graph: its mask, edges and shape, node labels and
positions, and per-edge latencies (:mod:`routing_sim.graphs` builds the graphs).

Graphs follow :mod:`routing_sim.graphs`' conventions: an edge ``j -> i`` means query token
``i`` may pull from key token ``j``; cross-attention graphs number key tokens after the
query tokens and carry ``graph.graph["n_queries"]``.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..errors import InvalidArgumentError, ShapeError

__all__ = ["graph_edges", "graph_mask", "graph_shape", "node_labels", "node_positions",
           "route_latency", "to_mask"]


def to_mask(graph: nx.DiGraph) -> np.ndarray:
    """The boolean ``(L, S)`` route mask of a token graph (True = route allowed).

    Raises
    ------
    ShapeError
        If the nodes are not numbered as described in the module docstring.

    Examples
    --------
    >>> from routing_sim.graphs import causal, complete
    >>> to_mask(complete(2, 3)).shape
    (2, 3)
    """
    n_queries, n_keys = graph_shape(graph)
    mask = np.zeros((n_queries, n_keys), dtype=bool)
    query_index, key_index = graph_edges(graph)
    mask[query_index, key_index] = True
    return mask


def graph_edges(graph: nx.DiGraph) -> tuple[np.ndarray, np.ndarray]:
    """``(query_index, key_index)`` of every edge of a token graph, in edge order.

    Raises
    ------
    ShapeError
        If an edge does not run from a key token to a query token.
    """
    n_queries, n_keys = graph_shape(graph)
    key_offset = n_queries if "n_queries" in graph.graph else 0
    edges = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 2)
    source, target = edges[:, 0] - key_offset, edges[:, 1]
    bad = (target < 0) | (target >= n_queries) | (source < 0) | (source >= n_keys)
    if bad.any():
        j, i = edges[np.argmax(bad)]
        raise ShapeError(f"graph edge {int(j)} -> {int(i)} does not run from a key token to a "
                         f"query token (edge j -> i means query i pulls from key j)")
    return target, source


def graph_mask(graph: nx.DiGraph, n_queries: int, n_keys: int) -> np.ndarray:
    """A token graph's ``(L, S)`` route mask, checked against the inputs' L and S.

    Examples
    --------
    >>> from routing_sim.graphs import causal
    >>> graph_mask(causal(2), 2, 2).astype(int)
    array([[1, 0],
           [1, 1]])
    """
    shape = graph_shape(graph)
    if shape != (n_queries, n_keys):
        raise ShapeError(f"graph has {shape[0]} query tokens and {shape[1]} key tokens, "
                         f"but the inputs have L = {n_queries} and S = {n_keys}")
    return to_mask(graph)


def graph_shape(graph: nx.DiGraph) -> tuple[int, int]:
    """``(L, S)``: how many query and key tokens a token graph has."""
    if not isinstance(graph, nx.DiGraph):
        raise InvalidArgumentError(f"graph must be a networkx.DiGraph, got {type(graph).__name__}")
    nodes = list(graph.nodes)
    if not all(isinstance(node, (int, np.integer)) and not isinstance(node, bool)
               for node in nodes):
        bad = next(node for node in nodes if not isinstance(node, (int, np.integer)))
        raise ShapeError(f"graph nodes must be integers, got node {bad!r}")
    n_total = len(nodes)
    if sorted(int(node) for node in nodes) != list(range(n_total)):
        raise ShapeError(f"graph nodes must be numbered 0 .. {n_total - 1} without gaps, "
                         f"got {sorted(nodes)[:8]}{' ...' if n_total > 8 else ''}")
    if "n_queries" in graph.graph:
        n_queries = int(graph.graph["n_queries"])
        if not 0 <= n_queries <= n_total:
            raise ShapeError(f"graph.graph['n_queries'] = {n_queries} is outside 0 .. {n_total}")
        return n_queries, n_total - n_queries
    return n_total, n_total


def node_labels(graph: nx.DiGraph | None, n_queries: int, n_keys: int
                ) -> tuple[list[str | None], list[str | None]]:
    """The ``label`` attributes of the query-side and key-side tokens (None where unset)."""
    if graph is None:
        return [None] * n_queries, [None] * n_keys
    key_offset = n_queries if "n_queries" in graph.graph else 0
    query_labels = [graph.nodes[i].get("label") for i in range(n_queries)]
    key_labels = [graph.nodes[key_offset + j].get("label") for j in range(n_keys)]
    return query_labels, key_labels


def node_positions(graph: nx.DiGraph | None, n_queries: int, n_keys: int
                   ) -> tuple[list[int], list[int]]:
    """Where the query-side and key-side tokens sit in their sequences: each node's integer
    ``position`` attribute (its index where unset or not an integer)."""
    if graph is None:
        return list(range(n_queries)), list(range(n_keys))

    def position(node: int, index: int) -> int:
        value = graph.nodes[node].get("position") if graph is not None else None
        return int(value) if isinstance(value, (int, np.integer)) and \
            not isinstance(value, bool) else index

    key_offset = n_queries if graph is not None and "n_queries" in graph.graph else 0
    return ([position(i, i) for i in range(n_queries)],
            [position(key_offset + j, j) for j in range(n_keys)])


def route_latency(graph: nx.DiGraph, n_queries: int) -> dict[tuple[int, int], float]:
    """Per-route latency overrides: ``{(i, j): latency}`` from edge attributes ``latency``."""
    key_offset = n_queries if "n_queries" in graph.graph else 0
    overrides = {}
    for j, i, latency in graph.edges(data="latency"):
        if latency is None:
            continue
        latency = float(latency)
        if not np.isfinite(latency) or latency < 0:
            raise InvalidArgumentError(f"graph edge {j} -> {i} has latency {latency}; "
                                       "a latency must be finite and >= 0")
        overrides[(int(i), int(j) - key_offset)] = latency
    return overrides
