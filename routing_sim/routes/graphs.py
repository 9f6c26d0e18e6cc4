"""Token graphs: which token may pull from which, as a ``networkx.DiGraph``; built here,
and read here (the mask, edges and shape, node labels and positions, per-edge latencies).

An edge ``j -> i`` means "query token ``i`` may pull from key token ``j``" (data flows
along the edge, from the key/value holder to the asker). That is the opposite of the
QUERY message, which goes from ``i`` to ``j``: a graph built with "``i`` asks ``j``"
edges silently transposes the pattern (a causal one becomes anti-causal). :func:`reads`
takes "who reads whom" and draws the edges the right way round.

Two numberings are used:

* **self-attention** (one sequence): nodes ``0 .. n-1``; node ``i`` is token ``i``,
  asking and answering.
* **cross-attention** (two sequences): query tokens are nodes ``0 .. L-1`` and key/value
  tokens are nodes ``L .. L+S-1``; the graph carries ``graph.graph["n_queries"] = L``.

Every node has a ``position`` attribute (its index inside its own sequence), a ``side``
(``"token"``, ``"query"`` or ``"key"``) and optionally a ``label`` (for example the token's
text). An edge may carry a ``latency`` that overrides the network's latency on that route.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import networkx as nx
import numpy as np

from ..errors import InvalidArgumentError, ShapeError
from ..inputs.masks import causal_mask

__all__ = ["causal", "complete", "from_mask", "from_routes", "graph_edges", "graph_mask",
           "graph_shape", "node_labels", "node_positions", "padding", "reads", "route_latency",
           "sliding_window", "to_mask"]


def complete(n_queries: int, n_keys: int | None = None, *, labels: Sequence[str] | None = None,
             key_labels: Sequence[str] | None = None) -> nx.DiGraph:
    """Every query token may pull from every key token (full attention).

    Parameters
    ----------
    n_queries : int
        Number of tokens (self-attention) or of query tokens (cross-attention).
    n_keys : int, optional
        Number of key/value tokens. Omit it for self-attention over ``n_queries`` tokens.
    labels, key_labels : sequence of str, optional
        Token texts for the query side (or the single sequence) and for the key side.

    Returns
    -------
    networkx.DiGraph
        Edge ``j -> i`` for every allowed route.

    Examples
    --------
    >>> g = complete(3, labels=["the", "cat", "sat"])
    >>> g.number_of_edges(), g.nodes[1]["label"]
    (9, 'cat')
    >>> cross = complete(2, 3)
    >>> cross.graph["n_queries"], sorted(cross.predecessors(0))
    (2, [2, 3, 4])
    """
    allowed = np.ones((check_count("n_queries", n_queries),
                       check_count("n_keys", n_queries if n_keys is None else n_keys)), dtype=bool)
    return from_mask(allowed, cross=n_keys is not None, labels=labels, key_labels=key_labels)


def causal(n: int, *, labels: Sequence[str] | None = None) -> nx.DiGraph:
    """Token ``i`` may pull from tokens ``0 .. i`` (decoder self-attention).

    Examples
    --------
    >>> sorted(causal(3).predecessors(2))
    [0, 1, 2]
    >>> to_mask(causal(3)).astype(int)
    array([[1, 0, 0],
           [1, 1, 0],
           [1, 1, 1]])
    """
    n = check_count("n", n)
    return from_mask(np.tril(np.ones((n, n), dtype=bool)), labels=labels)


def sliding_window(n_queries: int, window: int, n_keys: int | None = None, *,
                   alignment: str = "top_left", labels: Sequence[str] | None = None
                   ) -> nx.DiGraph:
    """Causal sliding window: token ``i`` pulls from the ``window`` latest tokens up to itself.

    Query ``i`` sits at position ``p = i`` (``"top_left"``) or ``p = i + S - L``
    (``"bottom_right"``, the KV-cache view) and may pull from keys ``p - window < j <= p``.

    Examples
    --------
    >>> to_mask(sliding_window(4, 2)).astype(int)
    array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [0, 1, 1, 0],
           [0, 0, 1, 1]])
    >>> to_mask(sliding_window(2, 2, 4, alignment="bottom_right")).astype(int)
    array([[0, 1, 1, 0],
           [0, 0, 1, 1]])
    """
    n_queries = check_count("n_queries", n_queries)
    n_keys = n_queries if n_keys is None else check_count("n_keys", n_keys)
    window = check_count("window", window)
    offset = n_keys - n_queries if alignment == "bottom_right" else 0
    mask = causal_mask(n_queries, n_keys, alignment)
    mask &= ~np.tril(np.ones((n_queries, n_keys), dtype=bool), k=offset - window)
    return from_mask(mask, cross=n_keys != n_queries, labels=labels)


def padding(n: int, length: int, *, labels: Sequence[str] | None = None) -> nx.DiGraph:
    """``n`` tokens of which only the first ``length`` are real: nobody pulls from padding.

    Padded tokens still ask (their rows are computed, as in PyTorch's key_padding_mask).

    Examples
    --------
    >>> to_mask(padding(3, 2)).astype(int)
    array([[1, 1, 0],
           [1, 1, 0],
           [1, 1, 0]])
    """
    n, length = check_count("n", n), check_count("length", length)
    if length > n:
        raise InvalidArgumentError(f"length {length} is more than the {n} tokens")
    mask = np.zeros((n, n), dtype=bool)
    mask[:, :length] = True
    return from_mask(mask, labels=labels)


def reads(table: Mapping[int, Iterable[int]], n_queries: int, n_keys: int | None = None, *,
          labels: Sequence[str] | None = None, key_labels: Sequence[str] | None = None
          ) -> nx.DiGraph:
    """Build a token graph from "who reads whom": query ``i`` reads the keys ``table[i]``.

    Each pair becomes the edge ``j -> i`` (data flows from key ``j`` to reader ``i``).
    Queries missing from ``table`` read nothing; ``n_keys`` makes a cross-attention graph,
    and ``labels``/``key_labels`` are as in :func:`complete`.

    Examples
    --------
    >>> g = reads({0: [0], 1: [0, 1]}, 2)       # token 1 reads tokens 0 and 1
    >>> sorted(g.edges())                        # edges point from the read to the reader
    [(0, 0), (0, 1), (1, 1)]
    >>> to_mask(g).astype(int)                   # mask[i, j]: i reads j
    array([[1, 0],
           [1, 1]])
    """
    n_queries = check_count("n_queries", n_queries)
    width = n_queries if n_keys is None else check_count("n_keys", n_keys)
    if not isinstance(table, Mapping):
        raise InvalidArgumentError(f"table must map each query token to the key tokens it "
                                   f"reads ({{0: [0], 1: [0, 1]}}), got {type(table).__name__}")
    pairs = []
    for query, keys in table.items():
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise InvalidArgumentError(f"table[{query!r}] must list the key tokens query "
                                       f"{query!r} reads, got {keys!r}")
        pairs += [(query, key) for key in keys]
    for query, key in pairs:
        if not (_is_index(query, n_queries) and _is_index(key, width)):
            raise InvalidArgumentError(f"query {query!r} reads key {key!r}: queries must be in "
                                       f"0 .. {n_queries - 1} and keys in 0 .. {width - 1}")
    query_index, key_index = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    return from_routes(n_queries, width, query_index, key_index, cross=n_keys is not None,
                       labels=labels, key_labels=key_labels)


def from_mask(mask: np.ndarray, *, cross: bool | None = None, labels: Sequence[str] | None = None,
              key_labels: Sequence[str] | None = None) -> nx.DiGraph:
    """Build the token graph of a boolean ``(L, S)`` mask (True = route allowed).

    Parameters
    ----------
    mask : array_like of bool, shape (L, S)
        ``mask[i, j]`` allows query token ``i`` to pull from key token ``j``.
    cross : bool, optional
        Number the key tokens separately (cross-attention). Defaults to ``L != S``.
    labels, key_labels : sequence of str, optional
        Token texts, as in :func:`complete`.

    Examples
    --------
    >>> g = from_mask([[True, False], [True, True]])
    >>> sorted(g.edges())
    [(0, 0), (0, 1), (1, 1)]
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ShapeError(f"mask must be a 2-D bool array (L, S), got dtype {mask.dtype} "
                         f"and shape {mask.shape}")
    n_queries, n_keys = mask.shape
    return from_routes(n_queries, n_keys, *np.nonzero(mask), cross=cross, labels=labels,
                       key_labels=key_labels)


def from_routes(n_queries: int, n_keys: int, query_index: np.ndarray, key_index: np.ndarray, *,
                cross: bool | None = None, labels: Sequence[str] | None = None,
                key_labels: Sequence[str] | None = None) -> nx.DiGraph:
    """Build the token graph of a list of routes ``key_index[r] -> query_index[r]``.

    Takes the keywords of :func:`from_mask`; never builds an ``(L, S)`` array.

    Examples
    --------
    >>> sorted(from_routes(2, 2, np.array([0, 1]), np.array([0, 0])).edges())
    [(0, 0), (0, 1)]
    """
    cross = n_queries != n_keys if cross is None else bool(cross)
    if not cross and n_queries != n_keys:
        raise ShapeError(f"a self-attention graph needs L == S, got L = {n_queries} and "
                         f"S = {n_keys}")
    graph = nx.DiGraph()
    key_offset = n_queries if cross else 0
    if cross:
        graph.graph["n_queries"] = n_queries
    query_side = "query" if cross else "token"
    for i in range(n_queries):
        graph.add_node(i, position=i, side=query_side)
    for j in range(n_keys if cross else 0):
        graph.add_node(key_offset + j, position=j, side="key")
    _set_labels(graph, "labels", labels, range(n_queries))
    if key_labels is not None:
        if not cross:
            raise InvalidArgumentError("key_labels is only for cross-attention graphs; "
                                       "use labels for a single sequence")
        _set_labels(graph, "key_labels", key_labels, range(key_offset, key_offset + n_keys))
    graph.add_edges_from(zip((np.asarray(key_index) + key_offset).tolist(),
                             np.asarray(query_index).tolist()))
    return graph



def check_count(name: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative integer, got {n!r}")
    return int(n)


def _is_index(value, size: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and \
        bool(0 <= value < size)


def _set_labels(graph: nx.DiGraph, name: str, labels: Sequence[str] | None, nodes: range) -> None:
    if labels is None:
        return
    labels = list(labels)
    if len(labels) != len(nodes):
        raise ShapeError(f"{name} has {len(labels)} entries for {len(nodes)} tokens")
    for node, label in zip(nodes, labels):
        graph.nodes[node]["label"] = str(label)


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
                   ) -> tuple[Sequence[int], Sequence[int]]:
    """Where the query-side and key-side tokens sit in their sequences: each node's integer
    ``position`` attribute (its index where unset or not an integer; with no graph, every
    token's index: ranges, not lists of a million ints)."""
    if graph is None:
        return range(n_queries), range(n_keys)

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
