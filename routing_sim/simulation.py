"""``simulate``: build the token graph, nodes and network, run the protocol, return a Run.

After ``simulate``: :func:`collect`, which it calls last, from finished nodes to a
:class:`~routing_sim.Run`: check every query node finished (or name what never arrived),
close the trace, and gather the outputs, routing data and :class:`~routing_sim.Stats`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import networkx as nx
import numpy as np
import simpy
from numpy.typing import ArrayLike

from .engines import memory as budget
from .engines.fast.online import OnlineNodes
from .engines.fast.two_phase import ForwardNodes, TwoPhaseNodes
from .engines.pages import small_pages
from .engines.plain import PlainEngine, Wire, check_plain
from .engines.setup import Setup
from .engines.state import SCORE_PHASE, ForwardState
from .errors import DeliveryError, EmptyRowError, InvalidArgumentError, ShapeError
from .inputs.masks import Window
from .inputs.mods import flash_softcap
from .inputs.positions import AlibiMode, RotaryEmbedding
from .network.conditions import Network, whole_waves
from .network.messages import FORWARD, Fate, Kind, payload_bytes
from .network.transport import Transport
from .network.wave_times import uniform
from .network.waves import WaveTransport
from .numerics.tiles import ROW_BLOCK_ROWS, RowBlocks, SpanBlocks, Tiles
from .options import (
    TRACE_DETAILS,
    CausalAlignment,
    Delivery,
    EmptyRows,
    Engine,
    EngineOptions,
    Numerics,
    Routing,
    Softmax,
    TraceDetail,
    check_choice,
    engine_options,
)
from .results.run import DroppedRoute, Run
from .routes.graphs import node_labels, node_positions, route_latency
from .routes.problem import Problem, prepare
from .routes.route_set import RouteSet
from .routes.table import RouteTable
from .trace.log import AUTO_FULL_LIMIT, Trace
from .trace.stats import Stats

__all__ = ["collect", "simulate"]

# The network when none is given: a Network is frozen, so one instance serves every run.
_IDEAL_NETWORK = Network()


@small_pages()
def simulate(query: ArrayLike, key: ArrayLike, value: ArrayLike,
             attn_mask: ArrayLike | None = None, dropout_p: float = 0.0, is_causal: bool = False,
             scale: float | None = None, enable_gqa: bool = False, *,
             graph: nx.DiGraph | None = None, network: Network | None = None,
             numerics: Numerics = "float", softmax: Softmax = "two_phase",
             causal_alignment: CausalAlignment = "top_left", empty_rows: EmptyRows = "zero",
             dropout_mask: ArrayLike | None = None, seed: int | None = 0,
             alibi_slopes: ArrayLike | None = None, alibi_mode: AlibiMode = "symmetric",
             rope: RotaryEmbedding | float | None = None,
             routing: Routing = "softmax", top_k: int | None = None, trace: TraceDetail = "auto",
             delivery: Delivery = "window",
             labels: Sequence[str] | None = None, key_labels: Sequence[str] | None = None,
             mask_mod: Callable | None = None, score_mod: Callable | None = None,
             engine: Engine | EngineOptions = "fast", sinks: ArrayLike | None = None,
             position_ids: ArrayLike | None = None, key_position_ids: ArrayLike | None = None,
             window_size: Window | None = None, cu_seqlens_q: ArrayLike | None = None,
             cu_seqlens_k: ArrayLike | None = None,
             softcap: float | None = 0.0) -> Run:
    r"""Run attention as messages between token nodes and return what they computed.

    Every allowed route ``j -> i`` carries four messages (QUERY, SCORE, PULL, VALUE; see
    :mod:`routing_sim.engines.fast.two_phase`) over a simulated network. The output equals
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
    causal_alignment, empty_rows, dropout_mask, seed, alibi_slopes, alibi_mode, rope
        As in :func:`~routing_sim.attention`. RoPE rotates q and k before a token
        publishes them; ALiBi is added by the key node to the score it sends. Not taken:
        ``return_weights`` (a Run always has ``weights``) and ``return_lse`` (a Run has
        ``lse``).
    routing : {"softmax", "topk"}
        Soft routing (attention), or hard routing: each query pulls only its ``top_k``
        best-scoring routes (ties: lower source first), with the softmax renormalised
        over them. Hard routing equals attention with those routes as the mask; its
        gradient with respect to the scores is zero almost everywhere.
    top_k : int, optional
        How many routes hard routing keeps per query; 1 (the single best route) when
        ``routing="topk"`` is given without it. Only with ``routing="topk"``: soft routing
        pulls every route, so ``top_k`` there is refused with an InvalidArgumentError
        rather than ignored.
    trace : {"auto", "full", "summary"}
        Keep every message (``"full"``), only totals (``"summary"``), or full up to
        200,000 messages (``"auto"``: four per route, so up to 50,000 routes; retries and
        network duplicates are not foreseen).
    delivery : {"window", "instant", "per_message"}
        How the transport groups deliveries into SimPy events (see
        :mod:`routing_sim.network.transport`); it changes speed, never results or timestamps.
    mask_mod : callable, optional
        FlexAttention's ``mask_mod(b, h, q_idx, kv_idx) -> bool``: True where the route
        exists. A masked route carries no message. Called as in
        :meth:`RouteSet.from_mask_mod <routing_sim.RouteSet.from_mask_mod>` (or with flat
        per-route arrays when combined with a ``graph``).
    score_mod : callable, optional
        FlexAttention's ``score_mod(score, b, h, q_idx, kv_idx) -> score``: the key node
        applies it to the scaled score it sends, before the bias is added; ``-inf``
        removes the route (that SCORE is sent, then no PULL or VALUE). It is called
        with flat per-route arrays (see :mod:`routing_sim.mods`); ``run.backward`` needs
        a mod that carries its derivative (``rs.mods.softcap``, ``alibi``,
        ``relative_bias``).
    labels, key_labels : sequence of str, optional
        Token texts for routing tables, traces and plots, without building a graph:
        ``labels`` names the query tokens (and the key tokens too when ``L == S``),
        ``key_labels`` the key tokens. A graph's ``label`` attributes do the same.
    engine : {"fast", "plain"} or EngineOptions
        ``"plain"`` runs :mod:`routing_sim.engines.plain`, the protocol as a learner reads
        it (one SimPy process per token node, messages carrying their payloads): the same
        messages at the same times, on a reliable network, two-phase softmax only. An
        :class:`~routing_sim.EngineOptions` gives every engine choice at once (engine,
        softmax, numerics, routing, top_k, delivery), checked together when it is made;
        the flat keywords for those are then left out (one given beside it is refused).
    sinks : array_like, shape (H,) or (1,), optional
        As in :func:`~routing_sim.attention`: one logit per head in every query node's
        softmax. A sink is a route that takes a share of the budget and pulls no value; it
        needs no message (the query node knows its head's logit). ``weights`` and
        ``route_weights()`` hold the real keys' shares (a row sums to less than 1),
        ``routing_table(i).sink`` the sink's share, and ``run.backward`` the sinks'
        gradient as ``grads.sinks``. Every engine, softmax, numerics and route set takes it.
    position_ids, key_position_ids : array_like of int, optional
        As in :func:`~routing_sim.attention`: where RoPE places each query (``(L,)`` or
        ``(B, L)``) and key. A token rotates its query and key before it publishes them,
        so the messages carry rotated vectors, and ``run.backward`` carries the gradients
        back through the same rotations.
    window_size, cu_seqlens_q, cu_seqlens_k
        As in :func:`~routing_sim.attention`: FlashAttention's local window and packed
        sequences. Both are route sets: messages travel only on the routes inside a
        query's window and its own sequence, so memory and time grow with the routes. The
        trace and the replay page show the routes; tokens keep their packed indices.
    softcap : float, optional
        As in :func:`~routing_sim.attention`: ``score_mod=rs.mods.softcap(cap)`` under
        FlashAttention's name (the key node caps the scaled score it sends).

    Returns
    -------
    Run
        ``output`` (..., L, Ev), ``weights`` (..., L, S; after dropout; dense, for runs up
        to :data:`~routing_sim.run.WEIGHTS_LIMIT` entries), ``probabilities`` (the same
        before dropout, rows summing to 1), ``route_weights()`` (per route, any
        size), ``lse`` (..., L; each query node's log-sum-exp), ``trace``, ``stats``,
        ``routing_table(i)``, ``dropped`` and (online) ``stream(i)``.

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
    >>> local = rs.simulate(q, k, v, window_size=(1, 0))            # each token and the one before
    >>> local.stats.messages["QUERY"], bool(np.array_equal(
    ...     local.output, rs.simulate(q, k, v, graph=rs.patterns.sliding_window(4, 2)).output))
    (7, True)
    >>> sunk = rs.simulate(q, k, v, is_causal=True, sinks=[1.0])    # one head, one sink
    >>> table = sunk.routing_table(1)
    >>> bool(np.isclose(sum(route.share for route in table.routes) + table.sink, 1.0))
    True
    """
    options = engine_options(engine, softmax=softmax, numerics=numerics, routing=routing,
                             top_k=top_k, delivery=delivery)
    numerics, softmax = options.numerics, options.softmax
    check_choice("trace", trace, TRACE_DETAILS)
    score_mod = flash_softcap(softcap, score_mod, numerics)
    if network is None:
        network = _IDEAL_NETWORK
    elif not isinstance(network, Network):
        raise InvalidArgumentError(f"network must be a routing_sim.Network, got "
                                   f"{type(network).__name__}")
    problem = prepare(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                      causal_alignment=causal_alignment, empty_rows=empty_rows,
                      dropout_mask=dropout_mask, seed=seed, graph=graph,
                      alibi_slopes=alibi_slopes, alibi_mode=alibi_mode, rope=rope,
                      mask_mod=mask_mod, score_mod=score_mod, sinks=sinks,
                      position_ids=position_ids, key_position_ids=key_position_ids,
                      window_size=window_size, cu_seqlens_q=cu_seqlens_q,
                      cu_seqlens_k=cu_seqlens_k)
    token_graph = graph if isinstance(graph, nx.DiGraph) else None
    tokens = _token_names(token_graph, labels, key_labels, problem.shape[1], problem.shape[2])
    n_routes = int(np.count_nonzero(problem.dense_allowed)) if problem.sparse is None else \
        len(problem.sparse.routes)
    if trace == "auto":
        trace = "full" if len(FORWARD) * n_routes <= AUTO_FULL_LIMIT else "summary"
    budget.check_simulation(problem.shape, n_routes, trace=trace, softmax=softmax,
                            numerics=numerics, engine=options.engine,
                            features=budget.run_features(problem, network, options.top_k,
                                                         options.delivery),
                            itemsize=problem.dtype.itemsize,
                            transmissions=(1 + network.duplicate) / (1 - network.loss),
                            dense=problem.sparse is None)
    routes = _route_table(problem, graph)
    _check_empty_rows(problem, routes)
    _check_crashes(network, routes)

    groups, n_queries, n_keys, dim, value_dim = problem.shape
    nbytes = {kind: payload_bytes(kind, problem.dtype.itemsize, dim, value_dim,
                                  2 if numerics == "exact" else 1) for kind in FORWARD}
    log = Trace(trace, routes, nbytes)
    setup = Setup(problem, routes, network, _route_latency(network, token_graph, routes),
                  nbytes, options, keep_stream=log.full)
    if options.engine == "plain":
        check_plain(network, problem)
        plain = PlainEngine(setup)
        plain.run(log)
        return collect(problem, routes, plain, log, plain.wire, tokens)
    nodes: ForwardNodes
    transport: Transport | WaveTransport
    if softmax == "two_phase" and options.delivery == "window" and whole_waves(network):
        # A barrier on a network that never loses, copies or queues: whole waves, no SimPy.
        transport = WaveTransport(network, setup.latency, nbytes, log.record)
        nodes = TwoPhaseNodes(setup, transport)
    else:
        general = Transport(simpy.Environment(), network, setup.latency, nbytes,
                            routes.endpoints, routes.crash_filter(network.crashes),
                            log.record, options.delivery)
        nodes = OnlineNodes(setup, general) if softmax == "online" else \
            TwoPhaseNodes(setup, general)
        transport = general
    spans = None
    if problem.sparse is None and numerics == "float" and not routes.full and \
            problem.score_mod is None and options.routing == "softmax":
        # A dense table whose rows are each one run of keys (else runs is None: a gap)
        spans = None if routes.runs is None else \
            SpanBlocks.of_runs(routes.indptr, routes.runs, routes.n_queries, routes.n_keys)
    if spans is not None:                              # a dense mask of one run per row
        nodes.state.spans = spans
    elif problem.sparse is not None and numerics == "float" and not routes.full:
        tiles = Tiles(routes.indptr, routes.key_index, routes.n_queries, routes.n_keys,
                      dim=max(problem.shape[3:]), runs=routes.key_runs())
        if tiles.worthwhile():
            nodes.state.tiles = tiles
        else:                                          # keys too scattered for tiles: about
            routes.forget_key_runs()                   # a run a route, not worth keeping
    elif routes.full and numerics == "float" and routes.n_queries >= ROW_BLOCK_ROWS:
        nodes.state.rows = RowBlocks(routes.n_groups, routes.n_queries, routes.n_keys)
    nodes.start()
    if isinstance(transport, WaveTransport):
        transport.run()
    else:
        transport.env.process(transport.run())
        transport.env.run()
    nodes.detach()
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
                               groups, n_queries, n_keys, self_attention, routes.key_runs)


def _token_names(graph: nx.DiGraph | None, labels, key_labels, n_queries: int, n_keys: int
                 ) -> tuple[tuple[list, list], tuple[Sequence[int], Sequence[int]]]:
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


def collect(problem: Problem, routes: RouteTable, nodes: ForwardNodes | PlainEngine,
             log: Trace, transport: Transport | WaveTransport | Wire, tokens: tuple) -> Run:
    """Check every node finished (or say what is missing), then assemble the Run."""
    groups, n_queries, _, _, _ = problem.shape
    state = nodes.state
    has_routes = routes.routes_per_node() > 0
    dead = np.flatnonzero(state.dead)
    if transport.network.on_missing == "strict" and dead.size:
        raise DeliveryError(_missing_message(problem, routes, state, dead,
                                             transport.network.retries, tokens[1]))
    unfinished = np.flatnonzero(has_routes & np.isnan(state.done_time))
    if unfinished.size:
        group, token = divmod(int(unfinished[0]), n_queries)
        raise AssertionError(f"{unfinished.size} query tokens never finished (first: token "
                             f"{token}, group {group}) with no route reported missing")
    online = isinstance(nodes, OnlineNodes)
    labels, positions = tokens
    state.context = _context(problem, routes, state, online, tokens) if log.full else None
    state.route_latency = transport.route_latency
    # An online PULL leaves before its node has every score, so it carries no share.
    log.close({Kind.SCORE: state.scores} if online else
              {Kind.SCORE: state.scores, Kind.PULL: state.shares},
              nodes.rescale if isinstance(nodes, OnlineNodes) else None, state.context)
    output = state.output.reshape(groups, n_queries, problem.shape[4])
    if problem.empty_rows == "nan":
        output[routes.empty_nodes(state.scores).reshape(groups, n_queries)] = np.nan
    completed = np.where(has_routes, state.done_time, 0.0)
    return Run(
        output=problem.unflatten(output), trace=log,
        stats=_stats(log, transport, nodes, routes, completed),
        _routes=routes, _scores=state.scores, _arrived=state.value_time,
        _completed=completed.reshape(groups, n_queries),
        _labels=labels,
        _value_bytes=log.nbytes_of[Kind.VALUE],
        dropped=[_dropped(problem, routes, state, int(route), positions) for route in dead],
        _stream=nodes.stream if isinstance(nodes, OnlineNodes) else None,
        _forward=(state, transport.network, transport.mode),
        _positions=positions,
        _empty_nan=problem.empty_rows == "nan",
    )


def _context(problem: Problem, routes: RouteTable, state: ForwardState, online: bool,
             tokens: tuple) -> dict:
    """Names of nodes and groups, and per-node events, for the trace exporters."""
    (query_labels, key_labels), (query_positions, key_positions) = tokens
    if routes.self_attention:
        names = [_token_name("token", i, label) for i, label in zip(query_positions,
                                                                    query_labels)]
    else:
        names = [_token_name("query", i, label) for i, label in zip(query_positions,
                                                                    query_labels)]
        names += [_token_name("key", j, label) for j, label in zip(key_positions, key_labels)]
    groups = [", ".join(f"{name} {value}" for name, value in
                        zip(("batch",) * (len(problem.batch_shape) - 1) + ("head",),
                            _where(problem, group))) or "attention"
              for group in range(routes.n_groups)]
    events = []
    for node in np.flatnonzero(routes.routes_per_node() > 0).tolist():
        group, token = divmod(node, routes.n_queries)
        if np.isfinite(state.barrier_time[node]) and not online:
            events.append(((group, token), float(state.barrier_time[node]),
                           "allocate budget (softmax)"))
        if np.isfinite(state.done_time[node]):
            events.append(((group, token), float(state.done_time[node]), "output complete"))
    return {"node_names": names, "group_names": groups, "node_events": events,
            "key_offset": 0 if routes.self_attention else routes.n_queries}


def _token_name(side: str, position: int, label: str | None) -> str:
    return f"{side} {label} ({position})" if label is not None else f"{side} {position}"


def _stats(log: Trace, transport: Transport | WaveTransport | Wire,
           nodes: ForwardNodes | PlainEngine, routes: RouteTable, completed: np.ndarray) -> Stats:
    kinds = log.kinds
    names = [kind.name for kind in kinds]
    fates = [log.fates[kind].tolist() for kind in kinds]               # (kinds, fates)
    retransmissions = nodes.retransmissions
    return Stats(
        messages={name: int(log.counts[kind]) for name, kind in zip(names, kinds)},
        bytes={kind.name: int(count) for kind, count in log.bytes.items()},
        makespan=float(completed.max(initial=0.0)),
        events=transport.events, delivery=transport.mode, routes=len(routes),
        lost={name: fate[Fate.LOST] for name, fate in zip(names, fates)},
        duplicated={name: int(log.duplicates[kind]) for name, kind in zip(names, kinds)},
        retransmitted={name: int(retransmissions.get(kind, 0)) for name, kind in zip(names, kinds)},
        dropped={name: fate[Fate.SENDER_DOWN] + fate[Fate.RECEIVER_DOWN]
                 for name, fate in zip(names, fates)},
        ignored=nodes.ignored,
        latency={name: log.latency_percentiles(kind) for name, kind in zip(names, kinds)},
        node_bytes=log.node_bytes.reshape(routes.n_groups, routes.span, 2),
    )


def _where(problem: Problem, group: int) -> tuple[int, ...]:
    return tuple(int(x) for x in np.unravel_index(group, problem.batch_shape)) \
        if problem.batch_shape else ()


def _dropped(problem: Problem, routes: RouteTable, state: ForwardState, route: int,
             positions: tuple[Sequence[int], Sequence[int]]) -> DroppedRoute:
    """Route ``route`` lost for good, named by its tokens' positions (a Decoder round's
    queries sit after the cache)."""
    group, token = divmod(int(routes.query_node[route]), routes.n_queries)
    query_positions, key_positions = positions
    assert state.would_have is not None, "routes die only on a faulty network"
    return DroppedRoute(_where(problem, group), query_positions[token],
                        key_positions[int(routes.key_index[route])],
                        "score" if state.dead[route] == SCORE_PHASE else "value",
                        float(state.would_have[route]))


def _missing_message(problem: Problem, routes: RouteTable, state: ForwardState,
                     dead: np.ndarray, retries: int, positions: tuple[Sequence[int], Sequence[int]]
                     ) -> str:
    shown = []
    for route in dead[:20].tolist():
        item = _dropped(problem, routes, state, route, positions)
        where = f", group {item.group}" if item.group else ""
        shown.append(f"(query {item.query}, key {item.key}{where}: {item.phase} lost)")
    more = f" and {dead.size - 20} more" if dead.size > 20 else ""
    return (f"{dead.size} routes never delivered after {retries} retries: "
            + ", ".join(shown) + more + "; every attempt was lost or dropped (the last one "
            "waited for the slowest answer the network and its NIC queues allow): raise "
            "Network(retries=...), or pass on_missing='degrade' to renormalise over what "
            "arrived")
