"""The network between token nodes: how long each message takes to arrive.

A :class:`Network` is a description (latency, jitter, seed); it holds no state. Random
jitter is a pure function of ``(seed, message id)``, so a message takes the same time
whatever order the simulator happens to send things in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["Network"]

_GOLDEN = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class Network:
    """Timing of message delivery between token nodes.

    A message sent at time ``t`` on route ``j -> i`` arrives at
    ``t + latency_ij + jitter · u``, where ``latency_ij`` is the edge's ``latency``
    attribute in the token graph (or ``latency``) and ``u`` is uniform in ``[0, 1)``,
    drawn from ``seed`` and the message's id.

    Parameters
    ----------
    latency : float
        Base one-way latency of every route, in simulated time units (>= 0).
    jitter : float
        Width of the uniform random extra delay (>= 0). 0 means every message of one
        wave arrives at the same instant.
    seed : int
        Seed of the jitter.

    Examples
    --------
    >>> net = Network(latency=2.0, jitter=0.5, seed=7)
    >>> delays = net.delays(np.array([0, 1, 2]), base=np.full(3, 2.0))
    >>> bool(((delays >= 2.0) & (delays < 2.5)).all())
    True
    >>> Network(latency=-1)
    Traceback (most recent call last):
    ...
    routing_sim.errors.InvalidArgumentError: latency must be a finite number >= 0, got -1
    """

    latency: float = 1.0
    jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("latency", "jitter"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, (int, float, np.number)) \
                    or not math.isfinite(number) or number < 0:
                raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {number!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise InvalidArgumentError(f"seed must be an integer, got {self.seed!r}")

    def delays(self, message_ids: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Transit time of each message, given its route's base latency."""
        if self.jitter == 0:
            return base.copy()
        return base + self.jitter * _uniform(self.seed, message_ids)

    def min_delay(self, base: np.ndarray) -> float:
        """A lower bound on every transit time: the simulator's lookahead."""
        return float(base.min()) if base.size else self.latency


def _uniform(seed: int, message_ids: np.ndarray) -> np.ndarray:
    """Counter-based uniform numbers in [0, 1): splitmix64 of ``(seed, id)``."""
    x = message_ids.astype(np.uint64) + np.uint64(seed * _GOLDEN % 2**64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53
