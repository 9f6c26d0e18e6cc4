"""What the replay page shows, gathered from a run as JSON-ready data.

The page gets three things per routing group (head): every query token's routing table
(exact: the shares are ``repr`` strings of ``run.weights``), the step functions behind
the "messages in flight" counter (exact: every delivered message), and the values and
outputs the what-if panel needs. Messages to animate come from the full trace; above
:data:`ANIMATED_LIMIT` the page animates a seeded sample of whole routes and says so.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..messages import Fate, Kind

if TYPE_CHECKING:
    from ..run import Run
    from ..stats import Stats
    from ..trace import Trace

__all__ = ["ANIMATED_LIMIT", "group_name", "page_data", "steps"]

ANIMATED_LIMIT = 6000    # messages the page animates; beyond, a seeded sample of routes


def page_data(run: Run, trace: Trace | None = None, stats: Stats | None = None,
              phase: str = "forward") -> dict:
    """The page's data for ``run``: its tables, and the messages of ``trace`` (default
    ``run.trace``; the backward pass passes its own trace and ``stats``)."""
    trace = run.trace if trace is None else trace
    stats = run.stats if stats is None else stats
    weights = np.asarray(run.weights)
    batch_shape, (n_queries, n_keys) = weights.shape[:-2], weights.shape[-2:]
    query_labels, key_labels = run.labels
    groups = [group_name(batch_shape, group) for group in range(_size(batch_shape))]
    values = np.asarray(run.state.problem.value)                  # (G, S, Ev)
    outputs = np.asarray(run.output).reshape(len(groups), n_queries, -1)  # (G, L, Ev)
    state = run.state
    heads = [{"name": name,
              "tables": [_table(run, batch_shape, group, i) for i in range(n_queries)],
              "values": _numbers(values[group]), "outputs": _numbers(outputs[group]),
              "completed": _numbers(run.completed.reshape(-1, n_queries)[group]),
              "inFlight": None,
              # With sinks: each token's sink share, and the head's logit (the what-if's).
              "sinks": None if state.sink_shares is None else _numbers(
                  state.sink_shares.reshape(-1, n_queries)[group]),
              "sinkLogit": None if state.problem.sinks is None else _number(
                  state.problem.sinks[group])}
             for group, name in enumerate(groups)]
    data = {
        "phase": phase,
        "selfAttention": run.self_attention and n_queries == n_keys,
        "queries": [_label(label, i) for i, label in enumerate(query_labels)],
        "keys": [_label(label, j) for j, label in enumerate(key_labels)],
        "kinds": [kind.name for kind in Kind],
        "toKey": [kind.to_key for kind in Kind],
        "fates": [fate.label for fate in Fate],
        "heads": heads,
        "stats": str(stats),
        "makespan": float(stats.makespan),
        "detail": trace.detail,
        "messages": None,
        "sample": None,
        "end": float(stats.makespan),
    }
    if trace.full:
        _add_messages(data, trace)
    return data


def _add_messages(data: dict, trace) -> None:
    """Messages to animate (sampled by route when many) and the exact in-flight steps."""
    delivered = trace.fate == Fate.DELIVERED                            # (M,)
    for group, head in enumerate(data["heads"]):
        mine = delivered & (trace.group == group)
        head["inFlight"] = {"sent": steps(trace.sent[mine]), "arrive": steps(trace.arrive[mine])}
    shown = np.ones(len(trace.kind), bool)                              # (M,)
    if len(trace.kind) > ANIMATED_LIMIT:
        routes = np.unique(trace.route)
        kept = routes[np.random.default_rng(0).random(len(routes)) <
                      ANIMATED_LIMIT / len(trace.kind)]
        shown = np.isin(trace.route, kept)
        data["sample"] = {"messages": int(shown.sum()), "of": len(trace.kind),
                          "routes": len(kept), "ofRoutes": len(routes)}
    times = np.concatenate((trace.sent, trace.arrive[delivered]))
    data["end"] = max(data["end"], float(times.max(initial=0.0)))
    data["messages"] = {
        "kind": trace.kind[shown].tolist(), "src": trace.src[shown].tolist(),
        "dst": trace.dst[shown].tolist(), "group": trace.group[shown].tolist(),
        "sent": trace.sent[shown].tolist(), "arrive": _numbers(trace.arrive[shown]),
        "fate": trace.fate[shown].tolist(), "attempt": trace.attempt[shown].tolist(),
        "copy": trace.copy[shown].tolist(),
    }


def _table(run, batch_shape: tuple[int, ...], group: int, token: int) -> list[list]:
    """One row per route of ``token``: key, score, share (repr), bytes pulled, arrival."""
    table = run.routing_table(token, **_address(batch_shape, group))
    return [[route.source, _number(route.score), repr(route.share), route.bytes_pulled,
             _number(route.arrived)] for route in table.routes]


def steps(times: np.ndarray | list[float]) -> list[list]:
    """``[distinct times, how many are <= each]``: a count of times <= t by bisection."""
    distinct, counts = np.unique(times, return_counts=True)
    return [distinct.tolist(), np.cumsum(counts).tolist()]


def _address(batch_shape: tuple[int, ...], group: int) -> dict:
    if not batch_shape:
        return {}
    index = tuple(int(x) for x in np.unravel_index(group, batch_shape))
    if len(index) == 1:
        return {"head": index[0]}
    return {"batch": index[:-1], "head": index[-1]}


def group_name(batch_shape: tuple[int, ...], group: int) -> str:
    if not batch_shape:
        return "attention"
    index = [int(x) for x in np.unravel_index(group, batch_shape)]
    names = ["batch"] * (len(index) - 1) + ["head"]
    return ", ".join(f"{name} {value}" for name, value in zip(names, index))


def _size(batch_shape: tuple[int, ...]) -> int:
    return int(np.prod(batch_shape, dtype=np.int64)) if batch_shape else 1


def _label(label: str | None, position: int) -> str:
    return str(label) if label is not None else f"#{position}"


def _number(x: float) -> float | None:
    """JSON has no NaN or infinity: they travel as null."""
    return float(x) if math.isfinite(x) else None


def _numbers(array: np.ndarray) -> list:
    """An array as (nested) lists of floats, with null for NaN and infinities."""
    array = np.asarray(array, dtype=np.float64)
    if np.isfinite(array).all():
        return array.tolist()
    numbers = array.astype(object)
    numbers[~np.isfinite(array)] = None
    return numbers.tolist()
