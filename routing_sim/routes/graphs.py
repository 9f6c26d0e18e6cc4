"""Token graphs: which token may pull from which, as a ``networkx.DiGraph``.

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
from .graph_reading import graph_edges, to_mask

__all__ = ["causal", "complete", "from_mask", "from_routes", "graph_edges", "padding",
           "reads", "sliding_window", "to_mask"]


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
