"""The result of a context-parallel run: the output, its timing and bytes, and the trace."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cluster import Cluster
from .trace import ParallelTrace

__all__ = ["ParallelRun", "ParallelStats"]


@dataclass(frozen=True)
class ParallelStats:
    """Per-device timing and traffic of one run (times in seconds, arrays of length P).

    ``bytes_sent[r]`` counts every transmission device ``r`` originates (retransmissions
    and acks included; bytes a device only forwards on a ring topology are in
    ``link_bytes``). ``exposed_communication[r]`` is the part of device ``r``'s own work
    span (time 0 to ``finished[r]``) not covered by compute: waiting for transfers.
    ``idle_time[r] = makespan - compute_time[r]`` adds the wait for the slowest device.
    """

    bytes_sent: np.ndarray
    link_bytes: np.ndarray
    compute_time: np.ndarray
    finished: np.ndarray
    makespan: float
    messages: dict[str, int]
    bytes: dict[str, int]
    retransmissions: int

    @property
    def idle_time(self) -> np.ndarray:
        return self.makespan - self.compute_time

    @property
    def exposed_communication(self) -> np.ndarray:
        return self.finished - self.compute_time

    @property
    def idle_share(self) -> float:
        """Mean share of the makespan the devices spend not computing."""
        return float(self.idle_time.mean() / self.makespan) if self.makespan > 0 else 0.0

    @property
    def imbalance(self) -> float:
        """The busiest device's compute over the mean (1 = balanced)."""
        mean = self.compute_time.mean()
        return float(self.compute_time.max() / mean) if mean > 0 else 1.0

    def as_dict(self) -> dict[str, float]:
        """Scalar summary, for sweeps and tables."""
        return {"makespan": self.makespan, "bytes_sent": int(self.bytes_sent.sum()),
                "compute_time_mean": float(self.compute_time.mean()),
                "compute_time_max": float(self.compute_time.max()),
                "idle_share": self.idle_share, "imbalance": self.imbalance,
                "exposed_communication_mean": float(self.exposed_communication.mean()),
                "retransmissions": self.retransmissions}

    @classmethod
    def collect(cls, trace: ParallelTrace, link_bytes: np.ndarray,
                finished: dict[int, float]) -> ParallelStats:
        devices = len(link_bytes)
        sent = np.zeros(devices, dtype=np.int64)
        compute = np.zeros(devices)
        messages: dict[str, int] = {}
        by_kind: dict[str, int] = {}
        for transfer in trace.transfers:
            if transfer["fate"] == "duplicate":
                continue
            sent[transfer["src"]] += transfer["bytes"]
            messages[transfer["kind"]] = messages.get(transfer["kind"], 0) + 1
            by_kind[transfer["kind"]] = by_kind.get(transfer["kind"], 0) + transfer["bytes"]
        for piece in trace.slices:
            compute[piece["device"]] += piece["end"] - piece["start"]
        done = np.array([finished[device] for device in range(devices)])
        retries = sum(1 for t in trace.transfers if t["attempt"] > 0 and t["kind"] != "ack")
        return cls(sent, link_bytes.copy(), compute, done, float(done.max(initial=0.0)),
                   messages, by_kind, retries)


@dataclass(frozen=True)
class ParallelRun:
    """What :func:`~routing_sim.context_parallel` returns.

    ``output`` has the shape ``rs.attention`` gives for the same inputs; ``lse``
    (``(..., H, L)``) each row's log-sum-exp, with ``return_lse=True`` (else None).
    """

    output: np.ndarray
    stats: ParallelStats
    trace: ParallelTrace
    strategy: str
    layout: str
    cluster: Cluster
    lse: np.ndarray | None = None

    def to_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the offline replay page of this run: the devices as nodes and every
        transfer moving between them in simulated time (see ``docs/en/watching.md``).
        Needs ``trace="full"`` (or ``"auto"`` below its limit). Returns the path."""
        from ..views.replay import write_cluster_html

        return write_cluster_html(self, path)

    def __repr__(self) -> str:
        stats = self.stats
        return (f"ParallelRun(strategy={self.strategy!r}, layout={self.layout!r}, "
                f"devices={self.cluster.devices}, output={self.output.shape}, "
                f"makespan={stats.makespan:.6g} s, bytes_sent={int(stats.bytes_sent.sum())}, "
                f"idle_share={stats.idle_share:.3f})")
