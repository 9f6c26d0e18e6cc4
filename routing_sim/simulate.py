"""``simulate``: build the token graph, nodes and network, run the protocol, return a Run."""

from __future__ import annotations

import networkx as nx
import numpy as np
import simpy

from .errors import DeliveryError, EmptyRowError, InvalidArgumentError
from .graphs import node_labels, route_latency
from .inputs import Problem, prepare
from .messages import Kind, payload_bytes
from .network import Network
from .protocol import TwoPhaseNode
from .routes import RouteTable
from .run import Run, Stats
from .trace import AUTO_FULL_LIMIT, TRACE_DETAILS, Trace
from .transport import DELIVERY_MODES, Transport

__all__ = ["simulate"]

NUMERICS = ("float",)
SOFTMAX = ("two_phase",)


def simulate(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
             scale: float | None = None, enable_gqa: bool = False, *,
             graph: nx.DiGraph | None = None, network: Network | None = None,
             numerics: str = "float", softmax: str = "two_phase",
             causal_alignment: str = "top_left", empty_rows: str = "zero", dropout_mask=None,
             seed: int | None = 0, alibi_slopes=None, rope=None, trace: str = "auto",
             delivery: str = "window") -> Run:
    r"""Run attention as messages between token nodes and return what they computed.

    Every allowed route ``j -> i`` carries four messages (QUERY, SCORE, PULL, VALUE; see
    :mod:`routing_sim.protocol`) over a simulated network. The output equals
    :func:`~routing_sim.attention` on the same arguments, and is bit-identical under
    every delivery schedule.

    Parameters
    ----------
    query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
        As in :func:`~routing_sim.attention` (PyTorch's ``scaled_dot_product_attention``).
    graph : networkx.DiGraph, optional
        The token graph (edge ``j -> i``: token ``i`` may pull from token ``j``); see
        :mod:`routing_sim.graphs`. A route exists only if the graph, ``attn_mask`` and
        ``is_causal`` all allow it. An edge's ``latency`` attribute overrides the network's.
    network : Network, optional
        Latency and jitter of the simulated network; ``Network()`` by default.
    numerics : {"float"}
        Float arithmetic in a fixed order per node.
    softmax : {"two_phase"}
        Wait for every score (a barrier), then allocate the budget.
    causal_alignment, empty_rows, dropout_mask, seed, alibi_slopes, rope
        As in :func:`~routing_sim.attention`. RoPE rotates q and k before a token
        publishes them; ALiBi is added by the key node to the score it sends.
    trace : {"auto", "full", "summary"}
        Keep every message (``"full"``), only totals (``"summary"``), or full up to
        200,000 messages (``"auto"``).
    delivery : {"window", "instant", "per_message"}
        How the transport groups deliveries into SimPy events (see
        :mod:`routing_sim.transport`); it changes speed, never results or timestamps.

    Returns
    -------
    Run
        ``output`` (..., L, Ev), ``weights`` (..., L, S), ``trace``, ``stats`` and
        ``routing_table(i)``.

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
    """
    _check_choice("numerics", numerics, NUMERICS)
    _check_choice("softmax", softmax, SOFTMAX)
    _check_choice("trace", trace, TRACE_DETAILS)
    _check_choice("delivery", delivery, DELIVERY_MODES)
    if network is None:
        network = Network()
    elif not isinstance(network, Network):
        raise InvalidArgumentError(f"network must be a routing_sim.Network, got "
                                   f"{type(network).__name__}")
    problem = prepare(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                      causal_alignment=causal_alignment, empty_rows=empty_rows,
                      dropout_mask=dropout_mask, seed=seed, graph=graph,
                      alibi_slopes=alibi_slopes, rope=rope)
    routes = RouteTable(problem.allowed)
    _check_empty_rows(problem, routes)

    groups, n_queries, n_keys, dim, value_dim = problem.shape
    nbytes = {kind: payload_bytes(kind, problem.dtype.itemsize, dim, value_dim) for kind in Kind}
    if trace == "auto":
        trace = "full" if len(Kind) * len(routes) <= AUTO_FULL_LIMIT else "summary"
    log = Trace(trace, routes, nbytes)
    env = simpy.Environment()
    transport = Transport(env, network, _route_latency(network, graph, routes), log.record,
                          delivery)
    nodes = TwoPhaseNode(problem, routes, transport)
    transport.deliver = nodes.deliver
    nodes.start()
    env.process(transport.run())
    env.run()
    return _collect(problem, routes, nodes, log, transport, graph)


def _collect(problem: Problem, routes: RouteTable, nodes: TwoPhaseNode, log: Trace,
             transport: Transport, graph: nx.DiGraph | None) -> Run:
    """Check every node finished, then assemble the Run."""
    groups, n_queries, n_keys, _, _ = problem.shape
    has_routes = routes.routes_per_node() > 0
    unfinished = np.flatnonzero(has_routes & np.isnan(nodes.done_time))
    if unfinished.size:
        group, token = divmod(int(unfinished[0]), n_queries)
        raise DeliveryError(f"{unfinished.size} query tokens never received all their values "
                            f"(first: token {token}, group {group})")
    log.close(nodes.scores, nodes.shares)
    dense_index = (routes.query_node, routes.key_index)

    def dense(per_route: np.ndarray, fill: float, dtype) -> np.ndarray:
        array = np.full((groups * n_queries, n_keys), fill, dtype=dtype)  # (G·L, S)
        array[dense_index] = per_route
        return array.reshape(groups, n_queries, n_keys)

    weights = dense(nodes.shares, 0, problem.dtype)
    output = nodes.output.reshape(groups, n_queries, problem.shape[4])
    if problem.empty_rows == "nan":
        empty = ~has_routes.reshape(groups, n_queries)
        output[empty] = np.nan
        weights[empty] = np.nan
    completed = np.where(has_routes, nodes.done_time, 0.0)
    stats = Stats(
        messages={kind.name: log.counts[kind] for kind in Kind},
        bytes={kind.name: count for kind, count in log.bytes.items()},
        makespan=float(completed.max(initial=0.0)),
        events=transport.events, delivery=transport.mode, routes=len(routes),
    )
    return Run(
        output=problem.unflatten(output), weights=problem.unflatten(weights), trace=log,
        stats=stats, _scores=dense(nodes.scores, np.nan, np.float64),
        _arrived=dense(nodes.value_arrived, np.nan, np.float64),
        _completed=completed.reshape(groups, n_queries),
        _labels=node_labels(graph, n_queries, n_keys),
        _value_bytes=log.nbytes_of[Kind.VALUE],
    )


def _route_latency(network: Network, graph: nx.DiGraph | None, routes: RouteTable) -> np.ndarray:
    """Base latency of every route: the network's, unless the graph's edge overrides it."""
    latency = np.full(len(routes), float(network.latency))             # (R,)
    if graph is None:
        return latency
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


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidArgumentError(f"{name} must be one of {choices}, got {value!r}")
