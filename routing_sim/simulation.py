"""``simulate``: build the token graph, nodes and network, run the protocol, return a Run
(assembled by :mod:`routing_sim.run_build`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import networkx as nx
import numpy as np
import simpy
from numpy.typing import ArrayLike

from . import budget
from .errors import EmptyRowError, InvalidArgumentError, ShapeError
from .graph_reading import node_labels, node_positions, route_latency
from .inputs import Problem, prepare
from .messages import FORWARD, payload_bytes
from .network import Network
from .numerics import Kernels
from .online import OnlineNodes
from .options import (
    DELIVERY_MODES,
    ENGINES,
    NUMERICS,
    ROUTING,
    SOFTMAX,
    TRACE_DETAILS,
    CausalAlignment,
    Delivery,
    EmptyRows,
    Engine,
    Numerics,
    Routing,
    Softmax,
    TraceDetail,
    check_choice,
)
from .pages import small_pages
from .plain import PlainEngine, check_plain
from .positions import RotaryEmbedding
from .protocol import ForwardNodes, TwoPhaseNodes
from .routes import RouteTable
from .routeset import RouteSet
from .run import Run
from .run_build import collect
from .strides import uniform
from .tiles import Tiles
from .trace import AUTO_FULL_LIMIT, Trace
from .transport import Transport

__all__ = ["simulate"]


@small_pages()
def simulate(query: ArrayLike, key: ArrayLike, value: ArrayLike,
             attn_mask: ArrayLike | None = None, dropout_p: float = 0.0, is_causal: bool = False,
             scale: float | None = None, enable_gqa: bool = False, *,
             graph: nx.DiGraph | None = None, network: Network | None = None,
             numerics: Numerics = "float", softmax: Softmax = "two_phase",
             causal_alignment: CausalAlignment = "top_left", empty_rows: EmptyRows = "zero",
             dropout_mask: ArrayLike | None = None, seed: int | None = 0,
             alibi_slopes: ArrayLike | None = None, rope: RotaryEmbedding | float | None = None,
             routing: Routing = "softmax", top_k: int = 1, trace: TraceDetail = "auto",
             delivery: Delivery = "window",
             labels: Sequence[str] | None = None, key_labels: Sequence[str] | None = None,
             mask_mod: Callable | None = None, score_mod: Callable | None = None,
             engine: Engine = "fast", sinks: ArrayLike | None = None) -> Run:
    r"""Run attention as messages between token nodes and return what they computed.

    Every allowed route ``j -> i`` carries four messages (QUERY, SCORE, PULL, VALUE; see
    :mod:`routing_sim.protocol`) over a simulated network. The output equals
    :func:`~routing_sim.attention` on the same arguments, and is bit-identical under
    every delivery schedule (two-phase softmax).

    Parameters
    ----------
    query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
        As in :func:`~routing_sim.attention` (PyTorch's ``scaled_dot_product_attention``).
    graph : networkx.DiGraph or RouteSet, optional
        The token graph (edge ``j -> i``: token ``i`` may pull from token ``j``); see
        :mod:`routing_sim.graphs`. A route exists only if the graph, ``attn_mask``,
        ``is_causal`` and ``mask_mod`` all allow it. An edge's ``latency`` attribute
        overrides the network's. A :class:`~routing_sim.RouteSet` (or a ``mask_mod``) runs
        sparsely: memory and time grow with the routes, never with ``L · S``.
    network : Network, optional
        Timing and faults of the simulated network; ``Network()`` by default.
    numerics : {"float", "exact"}
        Float arithmetic in a fixed order per node, or correctly rounded dot products and
        sums (bit-identical to ``attention(..., numerics="exact")``).
    softmax : {"two_phase", "online"}
        Wait for every score (a barrier), then allocate the budget; or stream: update a
        running max, normaliser and accumulator as each (score, value) pair arrives.
    causal_alignment, empty_rows, dropout_mask, seed, alibi_slopes, rope
        As in :func:`~routing_sim.attention`. RoPE rotates q and k before a token
        publishes them; ALiBi is added by the key node to the score it sends. Not taken:
        ``return_weights`` (a Run always has ``weights``).
    routing : {"softmax", "topk"}
        Soft routing (attention), or hard routing: each query pulls only its ``top_k``
        best-scoring routes (ties: lower source first), with the softmax renormalised
        over them. Hard routing equals attention with those routes as the mask; its
        gradient with respect to the scores is zero almost everywhere.
    top_k : int
        How many routes hard routing keeps per query.
    trace : {"auto", "full", "summary"}
        Keep every message (``"full"``), only totals (``"summary"``), or full up to
        200,000 messages (``"auto"``: four per route, so up to 50,000 routes; retries and
        network duplicates are not foreseen).
    delivery : {"window", "instant", "per_message"}
        How the transport groups deliveries into SimPy events (see
        :mod:`routing_sim.transport`); it changes speed, never results or timestamps.
    mask_mod : callable, optional
        FlexAttention's ``mask_mod(b, h, q_idx, kv_idx) -> bool``: True where the route
        exists. A masked route carries no message. Called as in
        :meth:`RouteSet.from_mask_mod <routing_sim.RouteSet.from_mask_mod>` (or with flat
        per-route arrays when combined with a ``graph``).
    score_mod : callable, optional
        FlexAttention's ``score_mod(score, b, h, q_idx, kv_idx) -> score``: the key node
        applies it to the scaled score it sends, before the bias is added. It is called
        with flat per-route arrays (see :mod:`routing_sim.mods`); ``run.backward`` needs
        a mod that carries its derivative (``rs.mods.softcap``, ``alibi``,
        ``relative_bias``).
    labels, key_labels : sequence of str, optional
        Token texts for routing tables, traces and plots, without building a graph:
        ``labels`` names the query tokens (and the key tokens too when ``L == S``),
        ``key_labels`` the key tokens. A graph's ``label`` attributes do the same.
    engine : {"fast", "plain"}
        ``"plain"`` runs :mod:`routing_sim.plain`, the protocol as a learner reads it (one
        SimPy process per token node, messages carrying their payloads): the same
        messages at the same times, on a reliable network, two-phase softmax only.
    sinks : array_like, shape (H,) or (1,), optional
        As in :func:`~routing_sim.attention`: one logit per head in every query node's
        softmax. A sink is a route that takes a share of the budget and pulls no value; it
        needs no message (the query node knows its head's logit). ``weights`` and
        ``route_weights()`` hold the real keys' shares (a row sums to less than 1),
        ``routing_table(i).sink`` the sink's share, and ``run.backward`` the sinks'
        gradient as ``grads.sinks``. Every engine, softmax, numerics and route set takes it.

    Returns
    -------
    Run
        ``output`` (..., L, Ev), ``weights`` (..., L, S; dense, for runs up to
        :data:`~routing_sim.run.WEIGHTS_LIMIT` entries), ``route_weights()`` (per route, any
        size), ``trace``, ``stats``, ``routing_table(i)``, ``dropped`` and (online)
        ``stream(i)``.

    Raises
    ------
    MemoryBudgetError
        The run would need more memory than is available (see :mod:`routing_sim.budget`);
        raised before anything large is allocated.
    DeliveryError
        ``on_missing="strict"`` and some answers never arrived, after every retry; the
        message names each missing (query token, key token, group).

    Examples
    --------
    >>> import numpy as np
    >>> import routing_sim as rs
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 4, 8))
    >>> run = rs.simulate(q, k, v, is_causal=True)
    >>> float(np.abs(run.output - rs.attention(q, k, v, is_causal=True)).max()) < 1e-12
    True
    >>> run.stats.messages
    {'QUERY': 10, 'SCORE': 10, 'PULL': 10, 'VALUE': 10}
    >>> lossy = rs.Network(loss=0.3, duplicate=0.2, retries=20, seed=1)
    >>> np.array_equal(rs.simulate(q, k, v, is_causal=True, network=lossy).output, run.output)
    True
    >>> window = rs.patterns.sliding_window(4, 2, sinks=1)          # a sparse RouteSet
    >>> capped = rs.simulate(q, k, v, graph=window, score_mod=rs.mods.softcap(1.0))
    >>> expected = rs.attention(q, k, v, graph=window, score_mod=rs.mods.softcap(1.0))
    >>> capped.stats.routes, bool(np.allclose(capped.output, expected, rtol=1e-12))
    (9, True)
    >>> named = rs.simulate(q, k, v, is_causal=True, labels=["we", "route", "the", "tokens"])
    >>> [route.label for route in named.routing_table("route").routes]
    ['we', 'route']
    >>> sunk = rs.simulate(q, k, v, is_causal=True, sinks=[1.0])    # one head, one sink
    >>> table = sunk.routing_table(1)
    >>> bool(np.isclose(sum(route.share for route in table.routes) + table.sink, 1.0))
    True
    """
    check_choice("numerics", numerics, NUMERICS)
    check_choice("softmax", softmax, SOFTMAX)
    check_choice("trace", trace, TRACE_DETAILS)
    check_choice("delivery", delivery, DELIVERY_MODES)
    check_choice("routing", routing, ROUTING)
    check_choice("engine", engine, ENGINES)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InvalidArgumentError(f"top_k must be a positive integer, got {top_k!r}")
    if routing == "topk" and softmax == "online":
        raise InvalidArgumentError("routing='topk' needs every score first: use "
                                   "softmax='two_phase'")
    if numerics == "exact" and score_mod is not None:
        raise InvalidArgumentError("score_mod runs in float arithmetic; it cannot be combined "
                                   "with numerics='exact'")
    if numerics == "exact" and softmax == "online":
        raise InvalidArgumentError("numerics='exact' needs softmax='two_phase': the online "
                                   "rescaling rounds at every arrival")
    if network is None:
        network = Network()
    elif not isinstance(network, Network):
        raise InvalidArgumentError(f"network must be a routing_sim.Network, got "
                                   f"{type(network).__name__}")
    problem = prepare(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                      causal_alignment=causal_alignment, empty_rows=empty_rows,
                      dropout_mask=dropout_mask, seed=seed, graph=graph,
                      alibi_slopes=alibi_slopes, rope=rope, mask_mod=mask_mod,
                      score_mod=score_mod, sinks=sinks)
    token_graph = graph if isinstance(graph, nx.DiGraph) else None
    tokens = _token_names(token_graph, labels, key_labels, problem.shape[1], problem.shape[2])
    n_routes = int(np.count_nonzero(problem.dense_allowed)) if problem.sparse is None else \
        len(problem.sparse.routes)
    if trace == "auto":
        trace = "full" if len(FORWARD) * n_routes <= AUTO_FULL_LIMIT else "summary"
    budget.check_simulation(problem.shape, n_routes, trace=trace, softmax=softmax,
                            numerics=numerics, itemsize=problem.dtype.itemsize,
                            transmissions=(1 + network.duplicate) / (1 - network.loss),
                            dense=problem.sparse is None)
    routes = _route_table(problem, graph)
    _check_empty_rows(problem, routes)
    _check_crashes(network, routes)

    groups, n_queries, n_keys, dim, value_dim = problem.shape
    nbytes = {kind: payload_bytes(kind, problem.dtype.itemsize, dim, value_dim,
                                  2 if numerics == "exact" else 1) for kind in FORWARD}
    log = Trace(trace, routes, nbytes)
    latency = _route_latency(network, token_graph, routes)
    if engine == "plain":
        check_plain(softmax, network, problem)
        plain = PlainEngine(problem, routes, network, latency, nbytes, Kernels(numerics),
                            int(top_k) if routing == "topk" else None)
        plain.run(log)
        return collect(problem, routes, plain, log, plain.wire, tokens)
    env = simpy.Environment()
    transport = Transport(env, network, latency, nbytes,
                          routes.endpoints, routes.crash_filter(network.crashes), log.record,
                          delivery)
    arguments = (problem, routes, transport, Kernels(numerics))
    nodes: ForwardNodes
    if softmax == "online":
        nodes = OnlineNodes(*arguments, on_missing=network.on_missing,
                            keep_stream=log.full)
    else:
        nodes = TwoPhaseNodes(*arguments, on_missing=network.on_missing,
                              top_k=int(top_k) if routing == "topk" else None)
    if problem.sparse is not None and numerics == "float" and routing == "softmax" \
            and not routes.full:
        tiles = Tiles(routes.indptr, routes.key_index, routes.n_queries, routes.n_keys,
                      dim=max(problem.shape[3:]))
        nodes.state.tiles = tiles if tiles.worthwhile() else None
    nodes.start()
    env.process(transport.run())
    env.run()
    return collect(problem, routes, nodes, log, transport, tokens)


def _route_table(problem: Problem, graph) -> RouteTable:
    """The run's routes: from the sparse route set (CSR), or from the dense mask."""
    if isinstance(graph, RouteSet):
        self_attention = not graph.cross
    else:
        self_attention = graph is None or "n_queries" not in graph.graph
    if problem.sparse is None:
        return RouteTable(problem.dense_allowed, self_attention)
    groups, n_queries, n_keys, _, _ = problem.shape
    routes = problem.sparse.routes
    return RouteTable.from_csr(routes.indptr, None if routes.full else routes.indices,
                               groups, n_queries, n_keys, self_attention)


def _token_names(graph: nx.DiGraph | None, labels, key_labels, n_queries: int, n_keys: int
                 ) -> tuple[tuple[list, list], tuple[list[int], list[int]]]:
    """((query labels, key labels), (query positions, key positions)) of a run's tokens."""
    names = node_labels(graph, n_queries, n_keys)
    if labels is None and key_labels is None:
        return names, node_positions(graph, n_queries, n_keys)
    if any(label is not None for side in names for label in side):
        raise InvalidArgumentError("the graph already labels its tokens; pass labels= or a "
                                   "labelled graph, not both")
    given = []
    for name, texts, count in (("labels", labels, n_queries), ("key_labels", key_labels,
                                                               n_keys)):
        texts = None if texts is None else [str(text) for text in texts]
        if texts is not None and len(texts) != count:
            raise ShapeError(f"{name} has {len(texts)} entries for {count} tokens")
        given.append(texts)
    query_labels, key_names = given
    if key_names is None and n_queries == n_keys and graph is None:
        key_names = query_labels                                       # one sequence
    return ((query_labels or [None] * n_queries, key_names or [None] * n_keys),
            node_positions(graph, n_queries, n_keys))


def _route_latency(network: Network, graph: nx.DiGraph | None, routes: RouteTable) -> np.ndarray:
    """Base latency of every route: the network's, unless the graph's edge overrides it."""
    if graph is None:                                  # one latency: a zero-stride view
        return uniform(float(network.latency), len(routes))
    latency = np.full(len(routes), float(network.latency))             # (R,)
    for (token, source), edge_latency in route_latency(graph, routes.n_queries).items():
        for group in range(routes.n_groups):
            node = group * routes.n_queries + token
            start, stop = routes.indptr[node], routes.indptr[node + 1]
            at = start + int(np.searchsorted(routes.key_index[start:stop], source))
            if at < stop and routes.key_index[at] == source:
                latency[at] = edge_latency
    return latency


def _check_empty_rows(problem: Problem, routes: RouteTable) -> None:
    if problem.empty_rows != "error":
        return
    empty = np.flatnonzero(routes.routes_per_node() == 0)
    if empty.size:
        group, token = divmod(int(empty[0]), routes.n_queries)
        raise EmptyRowError(f"query token {token} (group {group}) has no route to any key "
                            f"token ({empty.size} such tokens); empty_rows='error' was asked for")


def _check_crashes(network: Network, routes: RouteTable) -> None:
    for crash in network.crashes:
        limit = routes.n_queries if crash.side == "query" else routes.n_keys \
            if crash.side == "key" else max(routes.n_queries, routes.n_keys)
        if crash.token >= limit:
            raise InvalidArgumentError(f"crash of token {crash.token} ({crash.side} side): "
                                       f"there are only {limit} such tokens")
