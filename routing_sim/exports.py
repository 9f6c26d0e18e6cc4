"""Exporters of a full trace: Chrome trace JSON (Perfetto), Mermaid, JSON Lines and CSV.

Every exporter is deterministic: the same run gives byte-identical files.

Perfetto / chrome://tracing: one process per routing group (batch/head), one thread
(track) per token node. Each instant a node is busy is one slice, named after what it did
(received, allocated its budget, sent); messages are flow arrows from the sender's slice to
the receiver's; a counter track shows the messages in flight. One simulated time unit is
shown as one millisecond.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import InvalidArgumentError
from .messages import Kind
from .transport import Fate

__all__ = ["to_csv", "to_jsonl", "to_mermaid", "to_perfetto"]

MICROSECONDS_PER_UNIT = 1000.0
MERMAID_LIMIT = 400
_PAYLOAD = {Kind.QUERY: "q", Kind.SCORE: "s", Kind.PULL: "w", Kind.VALUE: "v",
            Kind.GRAD_OUTPUT: "dO", Kind.GRAD_SHARE: "dP", Kind.GRAD_SCORE: "dS",
            Kind.GRAD_KEY: "s*dS*k"}
_SCALAR = (Kind.SCORE, Kind.PULL, Kind.GRAD_SHARE, Kind.GRAD_SCORE)


def to_jsonl(trace, path: str | Path) -> Path:
    """Write one JSON object per transmission, in trace order."""
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for row in trace.rows():
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
    return path


def to_csv(trace, path: str | Path) -> Path:
    """Write every transmission as a CSV row (header first): ready for pandas."""
    path = Path(path)
    rows = list(trace.rows())
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["id"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return path


def to_perfetto(trace, path: str | Path) -> Path:
    """Write Chrome trace event JSON that Perfetto UI and chrome://tracing open."""
    path = Path(path)
    path.write_text(json.dumps(perfetto_events(trace), separators=(",", ":")) + "\n",
                    encoding="utf-8")
    return path


def perfetto_events(trace) -> dict:
    """The trace as a Chrome trace event document (``{"traceEvents": [...]}``)."""
    info = trace.context
    delivered = trace.fate == Fate.DELIVERED
    # Every instant a node acts: (group, node) -> time -> list of what it did there.
    acts: dict[tuple[int, int], dict[float, list[str]]] = defaultdict(lambda: defaultdict(list))
    ends = []
    for index in range(len(trace.kind)):
        kind, group = Kind(int(trace.kind[index])), int(trace.group[index])
        sender, receiver = _nodes(info, kind, int(trace.src[index]), int(trace.dst[index]))
        acts[(group, sender)][float(trace.sent[index])].append(f"send {kind.name}")
        if delivered[index]:
            acts[(group, receiver)][float(trace.arrive[index])].append(f"recv {kind.name}")
        ends.append((sender, receiver))
    for (group, node), time, what in info["node_events"]:
        acts[(group, node)][time].append(what)

    events: list[dict] = []
    for group in sorted({g for g, _ in acts}):
        events.append({"name": "process_name", "ph": "M", "pid": group, "tid": 0,
                       "args": {"name": info["group_names"][group]}})
    for group, node in sorted(acts):
        events.append({"name": "thread_name", "ph": "M", "pid": group, "tid": node,
                       "args": {"name": info["node_names"][node]}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": group, "tid": node,
                       "args": {"sort_index": node}})
    width = _slice_width(acts)
    for (group, node), instants in sorted(acts.items()):
        for time, what in sorted(instants.items()):
            events.append({"name": _summary(what), "cat": "node", "ph": "X", "pid": group,
                           "tid": node, "ts": _us(time), "dur": _us(width),
                           "args": {"did": what}})
    for index, (sender, receiver) in enumerate(ends):
        if not delivered[index]:
            continue
        group, flow = int(trace.group[index]), int(trace.id[index]) * 2 + int(trace.copy[index])
        name = Kind(int(trace.kind[index])).name
        events.append({"name": name, "cat": "message", "ph": "s", "id": flow, "pid": group,
                       "tid": sender, "ts": _us(float(trace.sent[index]))})
        events.append({"name": name, "cat": "message", "ph": "f", "bp": "e", "id": flow,
                       "pid": group, "tid": receiver, "ts": _us(float(trace.arrive[index]))})
    events.extend(_in_flight(trace, delivered))
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"time unit": "1 simulated time unit = 1 ms"}}


def to_mermaid(trace, query: int | None = None, group: int = 0) -> str:
    """A Mermaid ``sequenceDiagram`` of group ``group``: every message, or one query's.

    Raises
    ------
    InvalidArgumentError
        More than 400 messages would be drawn: pick one ``query`` token.
    """
    info = trace.context
    mine = trace.group == group
    if query is not None:
        to_key = (trace.kind == Kind.QUERY) | (trace.kind == Kind.PULL)
        mine &= np.where(to_key, trace.src, trace.dst) == query
    rows = np.flatnonzero(mine & (trace.fate == Fate.DELIVERED))
    if len(rows) > MERMAID_LIMIT:
        raise InvalidArgumentError(f"{len(rows)} messages are too many for a sequence diagram "
                                   f"(limit {MERMAID_LIMIT}); pass query= to draw one token's "
                                   "conversation")
    order = rows[np.lexsort((trace.id[rows], trace.arrive[rows]))]
    involved = set()
    lines = []
    allocations = {node: time for (g, node), time, what in info["node_events"]
                   if g == group and what == "allocate budget (softmax)"}
    noted = set()
    for index in order:
        kind = Kind(int(trace.kind[index]))
        sender, receiver = _nodes(info, kind, int(trace.src[index]), int(trace.dst[index]))
        involved.update((sender, receiver))
        asker = sender if kind.to_key else receiver
        if kind == Kind.PULL and asker not in noted and asker in allocations:
            lines.append(f"    Note over n{asker}: all scores in: softmax, budget shares")
            noted.add(asker)
        arrow = "->>" if kind.to_key else "-->>"
        payload = _payload(kind, trace, index, info)
        lines.append(f"    n{sender}{arrow}n{receiver}: {kind.name} {payload} "
                     f"(t={float(trace.arrive[index]):g})")
    header = ["sequenceDiagram"]
    for node in sorted(involved):
        header.append(f"    participant n{node} as {info['node_names'][node]}")
    return "\n".join(header + lines) + "\n"


def _nodes(info: dict, kind: Kind, src: int, dst: int) -> tuple[int, int]:
    """Thread ids of a message's sender and receiver (key tokens after query tokens in
    cross-attention)."""
    offset = info["key_offset"]
    if kind.to_key:
        return src, dst + offset
    return src + offset, dst


def _payload(kind: Kind, trace, index: int, info: dict) -> str:
    if kind in _SCALAR:
        return f"{_PAYLOAD[kind]}={float(trace.value[index]):.3f}"
    return f"{_PAYLOAD[kind]}[{int(trace.src[index])}]"


def _summary(what: list[str]) -> str:
    counts: dict[str, int] = {}
    for item in what:
        counts[item] = counts.get(item, 0) + 1
    return ", ".join(f"{item} x{n}" if n > 1 else item for item, n in counts.items())


def _slice_width(acts) -> float:
    """Slices narrow enough never to overlap on one track: a quarter of the closest gap."""
    gaps = []
    for instants in acts.values():
        times = np.array(sorted(instants))
        if len(times) > 1:
            gaps.append(np.diff(times).min())
    return min(0.1, 0.25 * min(gaps)) if gaps else 0.1


def _in_flight(trace, delivered: np.ndarray) -> list[dict]:
    """A counter of messages in flight, per group, at every send and arrival."""
    events = []
    for group in np.unique(trace.group).tolist():
        mine = trace.group == group
        changes = [(float(t), 1) for t in trace.sent[mine]]
        changes += [(float(t), -1) for t in trace.arrive[mine & delivered]]
        changes += [(float(t), -1) for t in trace.sent[mine & ~delivered]]
        level = 0
        for time, step in _collapse(sorted(changes)):
            level += step
            events.append({"name": "messages in flight", "ph": "C", "pid": group,
                           "ts": _us(time), "args": {"messages": level}})
    return events


def _collapse(changes: list[tuple[float, int]]) -> list[tuple[float, int]]:
    merged: list[tuple[float, int]] = []
    for time, step in changes:
        if merged and merged[-1][0] == time:
            merged[-1] = (time, merged[-1][1] + step)
        else:
            merged.append((time, step))
    return merged


def _us(time: float) -> float:
    return round(time * MICROSECONDS_PER_UNIT, 6)
