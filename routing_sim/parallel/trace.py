"""The record of a context-parallel run: compute slices and transfers, and their exporters.

Perfetto (Chrome trace events) shows one process per device with three tracks, compute,
send NIC and receive NIC, and a flow arrow for each delivered transfer; Mermaid draws a
sequence diagram for a few devices; JSONL writes one event a line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InvalidArgumentError

__all__ = ["MERMAID_MAX_DEVICES", "ParallelTrace"]

MERMAID_MAX_DEVICES = 8
_COMPUTE, _SEND, _RECEIVE = 0, 1, 2


class ParallelTrace:
    """Compute slices (device, name, start, end, routes) and transfers (id, kind, src, dst,
    tag, bytes, attempt, sent, arrived, fate) of one run, times in seconds.

    ``fate`` is ``"delivered"``, ``"lost"`` (dropped by the network or by a crashed device)
    or ``"duplicate"`` (a second copy the network made, ignored by the receiver).
    """

    def __init__(self, devices: int, bandwidth: float, slices: list[dict],
                 transfers: list[dict]) -> None:
        self.devices = devices
        self.bandwidth = bandwidth
        self.slices = slices
        self.transfers = transfers

    def __len__(self) -> int:
        return len(self.slices) + len(self.transfers)

    def __repr__(self) -> str:
        return (f"ParallelTrace(devices={self.devices}, compute slices={len(self.slices)}, "
                f"transfers={len(self.transfers)})")

    def events(self) -> list[dict]:
        """Every slice and transfer as one record with a ``type``, in time order."""
        records = [{"type": "compute", **piece} for piece in self.slices]
        records += [{"type": "transfer", **transfer} for transfer in self.transfers]
        return sorted(records, key=lambda r: (r.get("start", r.get("sent")) or 0.0,
                                              r["type"], r.get("id", -1)))

    def to_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write one event a line (JSON)."""
        path = Path(path)
        with path.open("w", encoding="utf-8") as stream:
            for record in self.events():
                stream.write(json.dumps(record) + "\n")
        return path

    def to_perfetto(self, path: str | os.PathLike[str]) -> Path:
        """Write Chrome trace event JSON (open it in ui.perfetto.dev or chrome://tracing)."""
        path = Path(path)
        path.write_text(json.dumps(self.perfetto_events()), encoding="utf-8")
        return path

    def perfetto_events(self) -> dict:
        """The Chrome trace event document: a process per device, flows for transfers."""
        events: list[dict] = []
        for device in range(self.devices):
            events.append({"ph": "M", "name": "process_name", "pid": device,
                           "args": {"name": f"device {device}"}})
            for tid, name in ((_COMPUTE, "compute"), (_SEND, "send NIC"),
                              (_RECEIVE, "receive NIC")):
                events.append({"ph": "M", "name": "thread_name", "pid": device, "tid": tid,
                               "args": {"name": name}})
        for piece in self.slices:
            events.append({"ph": "X", "cat": "compute", "name": piece["name"],
                           "pid": piece["device"], "tid": _COMPUTE, "ts": _us(piece["start"]),
                           "dur": _us(piece["end"] - piece["start"]),
                           "args": {"routes": piece["routes"]}})
        for transfer in self.transfers:
            if transfer["sent"] is None:
                continue
            wire = transfer["bytes"] / self.bandwidth
            label = _label(transfer)
            args = {key: transfer[key] for key in ("bytes", "attempt", "fate", "dst")}
            events.append({"ph": "X", "cat": transfer["kind"], "name": label,
                           "pid": transfer["src"], "tid": _SEND, "ts": _us(transfer["sent"]),
                           "dur": _us(wire), "args": args})
            if transfer["fate"] != "delivered":
                continue
            start = transfer["arrived"] - wire
            events.append({"ph": "X", "cat": transfer["kind"], "name": label,
                           "pid": transfer["dst"], "tid": _RECEIVE, "ts": _us(start),
                           "dur": _us(wire), "args": {**args, "src": transfer["src"]}})
            events.append({"ph": "s", "cat": "transfer", "name": label, "id": transfer["id"],
                           "pid": transfer["src"], "tid": _SEND, "ts": _us(transfer["sent"])})
            events.append({"ph": "f", "bp": "e", "cat": "transfer", "name": label,
                           "id": transfer["id"], "pid": transfer["dst"], "tid": _RECEIVE,
                           "ts": _us(start)})
        return {"traceEvents": events, "displayTimeUnit": "ns"}

    def to_mermaid(self) -> str:
        """A Mermaid sequence diagram of the run (for at most 8 devices)."""
        if self.devices > MERMAID_MAX_DEVICES:
            raise InvalidArgumentError(
                f"to_mermaid draws at most {MERMAID_MAX_DEVICES} devices, this run has "
                f"{self.devices}; use to_perfetto for larger runs")
        lines = ["sequenceDiagram"]
        lines += [f"    participant d{device} as device {device}"
                  for device in range(self.devices)]
        for record in self.events():
            if record["type"] == "compute":
                lines.append(f"    Note over d{record['device']}: {record['name']} "
                             f"({record['routes']} routes)")
            elif record["sent"] is not None and record["kind"] != "ack":
                arrow = "->>" if record["fate"] != "lost" else "-x"
                lines.append(f"    d{record['src']}{arrow}d{record['dst']}: {_label(record)} "
                             f"{record['bytes']} B"
                             + (" (lost)" if record["fate"] == "lost" else ""))
        return "\n".join(lines) + "\n"


def _label(transfer: dict) -> str:
    """``kv[3]``: the kind and the rest of the tag (whose block, whose state)."""
    return f"{transfer['kind']}[{','.join(str(part) for part in transfer['tag'][1:])}]"


def _us(seconds: float) -> float:
    return seconds * 1e6
