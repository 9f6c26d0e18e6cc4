"""From finished nodes to a :class:`~routing_sim.Run`: check every query node finished (or
name what never arrived), close the trace, and gather the outputs, routing data and
:class:`~routing_sim.Stats`. :func:`~routing_sim.simulate` calls :func:`collect` last."""

from __future__ import annotations

import numpy as np

from .errors import DeliveryError
from .inputs import Problem
from .messages import Fate, Kind
from .online import OnlineNodes
from .plain import PlainEngine, Wire
from .protocol import ForwardNodes
from .routes import RouteTable
from .run import DroppedRoute, Run
from .state import SCORE_PHASE, ForwardState
from .stats import Stats
from .trace import Trace
from .transport import Transport

__all__ = ["collect"]


def collect(problem: Problem, routes: RouteTable, nodes: ForwardNodes | PlainEngine,
             log: Trace, transport: Transport | Wire, tokens: tuple) -> Run:
    """Check every node finished (or say what is missing), then assemble the Run."""
    groups, n_queries, _, _, _ = problem.shape
    state = nodes.state
    has_routes = routes.routes_per_node() > 0
    dead = np.flatnonzero(state.dead)
    if transport.network.on_missing == "strict" and dead.size:
        raise DeliveryError(_missing_message(problem, routes, state, dead,
                                             transport.network.retries))
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
        output=problem.unflatten(output), _shares=state.shares, trace=log,
        stats=_stats(log, transport, nodes, routes, completed),
        _routes=routes, _scores=state.scores, _arrived=state.value_time,
        _completed=completed.reshape(groups, n_queries),
        _labels=labels,
        _value_bytes=log.nbytes_of[Kind.VALUE],
        dropped=[_dropped(problem, routes, state, int(route)) for route in dead],
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


def _stats(log: Trace, transport: Transport | Wire, nodes: ForwardNodes | PlainEngine,
           routes: RouteTable, completed: np.ndarray) -> Stats:
    per_kind = lambda numbers: {kind.name: int(numbers[kind]) for kind in log.kinds}  # noqa: E731
    return Stats(
        messages=per_kind(log.counts),
        bytes={kind.name: count for kind, count in log.bytes.items()},
        makespan=float(completed.max(initial=0.0)),
        events=transport.events, delivery=transport.mode, routes=len(routes),
        lost=per_kind({kind: log.fates[kind][Fate.LOST] for kind in log.kinds}),
        duplicated=per_kind(log.duplicates),
        retransmitted=per_kind({kind: nodes.retransmissions.get(kind, 0) for kind in log.kinds}),
        dropped=per_kind({kind: log.fates[kind][Fate.SENDER_DOWN]
                          + log.fates[kind][Fate.RECEIVER_DOWN] for kind in log.kinds}),
        ignored=nodes.ignored,
        latency={kind.name: log.latency_percentiles(kind) for kind in log.kinds},
        node_bytes=log.node_bytes.reshape(routes.n_groups, routes.span, 2),
    )


def _where(problem: Problem, group: int) -> tuple[int, ...]:
    return tuple(int(x) for x in np.unravel_index(group, problem.batch_shape)) \
        if problem.batch_shape else ()


def _dropped(problem: Problem, routes: RouteTable, state: ForwardState, route: int
             ) -> DroppedRoute:
    group, token = divmod(int(routes.query_node[route]), routes.n_queries)
    assert state.would_have is not None, "routes die only on a faulty network"
    return DroppedRoute(_where(problem, group), token, int(routes.key_index[route]),
                        "score" if state.dead[route] == SCORE_PHASE else "value",
                        float(state.would_have[route]))


def _missing_message(problem: Problem, routes: RouteTable, state: ForwardState,
                     dead: np.ndarray, retries: int) -> str:
    shown = []
    for route in dead[:20].tolist():
        item = _dropped(problem, routes, state, route)
        where = f", group {item.group}" if item.group else ""
        shown.append(f"(query {item.query}, key {item.key}{where}: {item.phase} lost)")
    more = f" and {dead.size - 20} more" if dead.size > 20 else ""
    return (f"{dead.size} routes never delivered after {retries} retries: "
            + ", ".join(shown) + more + "; every attempt was lost or dropped (the last one "
            "waited for the slowest answer the network and its NIC queues allow): raise "
            "Network(retries=...), or pass on_missing='degrade' to renormalise over what "
            "arrived")
