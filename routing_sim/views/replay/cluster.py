"""The replay page's data for a context-parallel run: devices as the nodes, transfers as
the messages, and for each device where the bytes it received came from."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from ...errors import InvalidArgumentError
from .data import steps

if TYPE_CHECKING:
    from ...parallel.run import ParallelRun

__all__ = ["cluster_data", "cluster_title"]

_ANSWERS = ("delivered", "duplicate")      # transfers that reached their receiver


def cluster_data(prun: ParallelRun) -> dict:
    """Page data for a :class:`~routing_sim.parallel.ParallelRun` (see :mod:`.data`)."""
    trace, stats = prun.trace, prun.stats
    if sum(stats.messages.values()) and not trace.transfers:
        raise InvalidArgumentError("to_html needs the transfers: this context-parallel run "
                                   "kept a summary trace; pass trace='full'")
    devices = trace.devices
    sent = [t for t in trace.transfers if t["sent"] is not None]
    kinds = sorted({t["kind"] for t in sent})
    arrived = [t for t in sent if t["fate"] in _ANSWERS]
    busy: list[list[list[float]]] = [[] for _ in range(devices)]
    for piece in trace.slices:
        busy[piece["device"]].append([float(piece["start"]), float(piece["end"])])
    head = {"name": "cluster", "tables": _tables(arrived, devices), "values": [], "outputs": [],
            "completed": [float(x) for x in stats.finished], "busy": busy,
            "inFlight": {"sent": steps([t["sent"] for t in arrived]),
                         "arrive": steps([t["arrived"] for t in arrived])}}
    times = [float(t["sent"]) for t in sent] + [float(t["arrived"]) for t in arrived]
    return {
        "phase": "cluster", "selfAttention": True, "whatIf": False,
        "queries": [f"device {d}" for d in range(devices)],
        "keys": [f"device {d}" for d in range(devices)],
        "kinds": kinds, "toKey": [False] * len(kinds), "fates": ["delivered", "lost"],
        "columns": ["sender", "-", "share of the bytes received", "bytes", "last arrival"],
        "heads": [head], "stats": repr(prun), "makespan": float(stats.makespan),
        "detail": "full", "sample": None, "end": max([float(stats.makespan), *times]),
        "messages": {
            "kind": [kinds.index(t["kind"]) for t in sent],
            "src": [t["src"] for t in sent], "dst": [t["dst"] for t in sent],
            "group": [0] * len(sent), "sent": [float(t["sent"]) for t in sent],
            "arrive": [float(t["arrived"]) if t["fate"] in _ANSWERS else None for t in sent],
            "fate": [0 if t["fate"] in _ANSWERS else 1 for t in sent],
            "attempt": [t["attempt"] for t in sent],
            "copy": [int(t["fate"] == "duplicate") for t in sent],
        },
    }


def cluster_title(prun: ParallelRun) -> str:
    return (f"routing_sim replay: context-parallel {prun.strategy} ({prun.layout} layout), "
            f"{prun.cluster.devices} devices")


def _tables(arrived: list[dict], devices: int) -> list[list[list]]:
    """Per device, one row per sender: bytes delivered (first copies), their share of all
    the device received, and when the last one arrived."""
    received: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    last: dict[tuple[int, int], float] = {}
    for transfer in arrived:
        if transfer["fate"] != "delivered":
            continue
        pair = (transfer["dst"], transfer["src"])
        received[transfer["dst"]][transfer["src"]] += transfer["bytes"]
        last[pair] = max(last.get(pair, 0.0), float(transfer["arrived"]))
    tables = []
    for device in range(devices):
        total = sum(received[device].values())
        senders = sorted(received[device].items(), key=lambda item: (-item[1], item[0]))
        tables.append([[src, None, repr(size / total), size, last[(device, src)]]
                       for src, size in senders])
    return tables
