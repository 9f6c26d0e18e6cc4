"""Exporters of a full trace: Chrome trace JSON (Perfetto), Mermaid, JSON Lines and CSV.

Every exporter is deterministic: the same run gives byte-identical files.

Perfetto / chrome://tracing: one process per routing group (batch/head), one thread
(track) per token node. Each instant a node is busy is one slice, named after what it did
(received, allocated its budget, sent); messages are flow arrows from the sender's slice to
the receiver's; a counter track shows the messages in flight. One simulated time unit is
shown as one millisecond. A message that never arrived shows as its send alone, named
after its fate (``send QUERY (lost)``).

Mermaid: one arrow per transmission, from sender to receiver, in arrival order; requests
(to the key token) solid, answers dotted. A message that never arrived ends in a cross and
says why; retries and network duplicates say so. An online PULL carries no share (its
node does not know it yet), so none is shown.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidArgumentError
from ..network.messages import Fate, Kind, Message, towards_key
from ..views.time_format import format_time

if TYPE_CHECKING:
    from .log import Trace

__all__ = ["mermaid_text", "to_csv", "to_jsonl", "to_mermaid", "to_perfetto"]

MICROSECONDS_PER_UNIT = 1000.0
MERMAID_LIMIT = 400
_PAYLOAD = {Kind.QUERY: "q", Kind.SCORE: "s", Kind.PULL: "w", Kind.VALUE: "v",
            Kind.GRAD_OUTPUT: "dO", Kind.GRAD_SHARE: "dP", Kind.GRAD_SCORE: "dS",
            Kind.GRAD_KEY: "s*dS*k"}
_SCALAR = (Kind.SCORE, Kind.PULL, Kind.GRAD_SHARE, Kind.GRAD_SCORE)
_MERMAID_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.,()'-")


def to_jsonl(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Write one JSON object per transmission, in trace order."""
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for message in trace.rows():
            out.write(json.dumps(message._asdict(), separators=(",", ":")) + "\n")
    return path


def to_csv(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Write every transmission as a CSV row (header first): ready for pandas."""
    path = Path(path)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(Message._fields)
    writer.writerows(trace.rows())
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return path


def to_perfetto(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Write Chrome trace event JSON that Perfetto UI and chrome://tracing open."""
    path = Path(path)
    path.write_text(json.dumps(perfetto_events(trace), separators=(",", ":")) + "\n",
                    encoding="utf-8")
    return path


def perfetto_events(trace: Trace) -> dict:
    """The trace as a Chrome trace event document (``{"traceEvents": [...]}``)."""
    info = trace.context
    delivered = trace.fate == Fate.DELIVERED
    # Every instant a node acts: (group, node) -> time -> list of what it did there.
    acts: dict[tuple[int, int], dict[float, list[str]]] = defaultdict(lambda: defaultdict(list))
    ends = []
    for index in range(len(trace.kind)):
        kind, group = Kind(int(trace.kind[index])), int(trace.group[index])
        sender, receiver = _nodes(info, kind, int(trace.src[index]), int(trace.dst[index]))
        fate = "" if delivered[index] else f" ({Fate(int(trace.fate[index])).label})"
        acts[(group, sender)][float(trace.sent[index])].append(f"send {kind.name}{fate}")
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


def to_mermaid(trace: Trace, query: int | None = None, group: int = 0, fenced: bool = False) -> str:
    """A Mermaid ``sequenceDiagram`` of group ``group``: every message, or one query's.

    ``fenced`` wraps it in a Markdown code fence (```` ```mermaid ````), ready to paste.
    The caller checks that ``query`` and ``group`` exist.

    Raises
    ------
    InvalidArgumentError
        More than 400 messages would be drawn: pick one ``query`` token.
    """
    info = trace.context
    mine = trace.group == group
    if query is not None:
        mine &= np.where(towards_key(trace.kind), trace.src, trace.dst) == query
    rows = np.flatnonzero(mine)
    if len(rows) > MERMAID_LIMIT:
        raise InvalidArgumentError(f"{len(rows)} messages are too many for a sequence diagram "
                                   f"(limit {MERMAID_LIMIT}); pass query= to draw one token's "
                                   "conversation")
    delivered = trace.fate[rows] == Fate.DELIVERED
    when = np.where(delivered, trace.arrive[rows], trace.sent[rows])
    order = rows[np.lexsort((trace.copy[rows], trace.id[rows], when))]
    involved: set[int] = set()
    lines = []
    allocations = {node: time for (g, node), time, what in info["node_events"]
                   if g == group and what == "allocate budget (softmax)"}
    noted = set()
    for index in order.tolist():
        kind = Kind(int(trace.kind[index]))
        sender, receiver = _nodes(info, kind, int(trace.src[index]), int(trace.dst[index]))
        involved.update((sender, receiver))
        asker = sender if kind.to_key else receiver
        if kind == Kind.PULL and asker not in noted and asker in allocations:
            lines.append(f"    Note over n{asker}: all scores in: softmax, budget shares")
            noted.add(asker)
        fate = int(trace.fate[index])
        arrow = ("-" if kind.to_key else "--") + (">>" if fate == Fate.DELIVERED else "x")
        marks = [f"retry {int(trace.attempt[index])}"] if trace.attempt[index] else []
        marks += ["duplicate"] if trace.copy[index] else []
        if fate == Fate.DELIVERED:
            marks.append(f"t={format_time(trace.arrive[index])}")
        else:
            marks.append(f"{Fate(fate).label}, sent t={format_time(trace.sent[index])}")
        lines.append(f"    n{sender}{arrow}n{receiver}: {kind.name} "
                     f"{_payload(kind, trace, index)} ({', '.join(marks)})")
    header = ["sequenceDiagram"]
    for node in sorted(involved):
        header.append(f"    participant n{node} as {mermaid_text(info['node_names'][node])}")
    text = "\n".join(header + lines) + "\n"
    return f"```mermaid\n{text}```\n" if fenced else text


def mermaid_text(text: str) -> str:
    """``text`` safe inside a Mermaid statement: anything but letters, digits, spaces and
    ``_.,()'-`` becomes an entity code (``;`` -> ``#59;``), as Mermaid documents.

    Examples
    --------
    >>> mermaid_text("token x; end (1)")
    'token x#59; end (1)'
    """
    return "".join(char if char in _MERMAID_PLAIN else f"#{ord(char)};" for char in text)


def _nodes(info: dict, kind: Kind, src: int, dst: int) -> tuple[int, int]:
    """Thread ids of a message's sender and receiver (key tokens after query tokens in
    cross-attention)."""
    offset = info["key_offset"]
    if kind.to_key:
        return src, dst + offset
    return src + offset, dst


def _payload(kind: Kind, trace, index: int) -> str:
    if kind in _SCALAR:
        value = float(trace.value[index])
        return f"{_PAYLOAD[kind]}={value:.3f}" if value == value else "(no share: online)"
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
