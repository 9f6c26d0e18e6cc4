"""What a run reports besides its output: message totals, and the backward pass's result."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .times import format_time
from .trace import Trace

if TYPE_CHECKING:
    from .run import Run

__all__ = ["Gradients", "Stats"]


@dataclass(frozen=True)
class Stats:
    """Totals of one run.

    ``messages`` and ``bytes`` count transmissions put on the wire, by kind name (QUERY,
    SCORE, PULL, VALUE), retransmissions included and network duplicates not. ``lost``,
    ``duplicated``, ``retransmitted``, ``dropped`` (at a crashed node: never sent or
    arrived while down) and ``ignored`` (copies and late answers an idempotent receiver
    discarded) say what the network did. ``makespan`` is the simulated time at which the
    last output was complete; ``latency`` holds per-kind delivery latency percentiles;
    ``node_bytes`` is ``(bytes sent, bytes received)`` per physical node; ``events`` counts
    the SimPy events the transport processed.
    """

    messages: dict[str, int]
    bytes: dict[str, int]
    makespan: float
    events: int
    delivery: str
    routes: int
    lost: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    retransmitted: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    node_bytes: np.ndarray | None = field(default=None, repr=False)

    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def __str__(self) -> str:
        faults = any(sum(d.values()) for d in (self.lost, self.duplicated, self.retransmitted,
                                                self.dropped))
        header = f"{'kind':<6} {'messages':>10} {'bytes':>12}"
        if faults:
            header += f" {'lost':>6} {'dup':>6} {'resent':>6} {'down':>6}"
        lines = [header]
        for kind in self.messages:
            line = f"{kind:<6} {self.messages[kind]:>10,} {self.bytes[kind]:>12,}"
            if faults:
                line += (f" {self.lost.get(kind, 0):>6,} {self.duplicated.get(kind, 0):>6,}"
                         f" {self.retransmitted.get(kind, 0):>6,} {self.dropped.get(kind, 0):>6,}")
            lines.append(line)
        lines.append(f"{'total':<6} {self.total_messages:>10,} {self.total_bytes:>12,}")
        lines.append(f"{self.routes:,} routes, last output complete at "
                     f"t={format_time(self.makespan)}, {self.events:,} SimPy events "
                     f"({self.delivery} delivery)")
        if self.ignored:
            lines.append(f"{self.ignored:,} duplicate or late answers ignored by idempotent "
                         "receivers")
        return "\n".join(lines)


@dataclass(frozen=True)
class Gradients:
    """Gradients with respect to the simulated inputs, and the messages that carried them."""

    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    stats: Stats
    trace: Trace
    _score: Callable[[], np.ndarray] = field(repr=False, compare=False)
    _run: Run | None = field(default=None, repr=False, compare=False)   # the forward Run
    sinks: np.ndarray | None = None     # the sinks' gradient (their shape), if the run had sinks

    def score(self) -> np.ndarray:
        """The gradient of every score ``s_ij`` (scaled, bias included), shape (..., L, S).

        It is what the GRAD_SCORE messages carried, zero where there is no route, and the
        gradient of an additive ``attn_mask`` or bias (a float mask enters the score as is).

        Examples
        --------
        >>> import numpy as np, routing_sim as rs
        >>> q, k, v = np.random.default_rng(0).normal(size=(3, 3, 2))
        >>> d_output = np.ones((3, 2))
        >>> d_score = rs.simulate(q, k, v, is_causal=True).backward(d_output).score()
        >>> d_score.shape, bool(d_score[0, 1] == 0)
        ((3, 3), True)
        >>> weights = rs.attention(q, k, v, is_causal=True, return_weights=True)[1]
        >>> d_share = d_output @ v.T                                   # (L, S)
        >>> expected = weights * (d_share - (weights * d_share).sum(-1, keepdims=True))
        >>> bool(np.allclose(d_score, expected, rtol=1e-12, atol=1e-15))
        True
        """
        return self._score()

    def to_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the offline replay page of the backward pass: the gradient messages moving
        back along the routes, with the forward pass's routing tables (see
        :meth:`Run.to_html <routing_sim.Run.to_html>`). Returns the path."""
        from .replay import write_html

        assert self._run is not None, "Run.backward keeps the forward Run"
        return write_html(self._run, path, self.trace, self.stats, phase="backward")
