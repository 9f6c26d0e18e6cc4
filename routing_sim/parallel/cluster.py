"""Simulated devices for attention across machines: their speed and the links between them.

A :class:`Cluster` is a description, like :class:`~routing_sim.Network`: it holds no state.
:func:`routing_sim.context_parallel` runs a protocol on it with SimPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import InvalidArgumentError
from ..network.conditions import Network

__all__ = ["Cluster"]

Topology = Literal["ring", "switch"]
TOPOLOGIES = ("ring", "switch")


@dataclass(frozen=True)
class Cluster:
    """``devices`` machines with ``flops`` FLOP/s each, joined by links of ``bandwidth``
    bytes/s and ``latency`` seconds.

    The timing model, used exactly:

    * attention between a query block and a key block costs
      ``2 · routes · (d + d_v) · heads / flops`` seconds (``4 · routes · d · heads / flops``
      when ``d_v = d``), where ``routes`` counts the allowed (query, key) pairs of the block;
      masked routes cost nothing and fully masked blocks are skipped;
    * a transfer of ``b`` bytes takes ``latency + b / bandwidth`` on its link. Each device
      has one NIC per direction: what it sends leaves one transfer at a time (each holding the
      NIC for ``b / bandwidth``), what it receives comes in one transfer at a time, first come
      first served.

    ``topology="switch"`` links every pair of devices directly; ``"ring"`` links device
    ``r`` to ``r ± 1 (mod P)`` only, so a transfer to a farther device is stored and forwarded
    by each device on the shorter way round (one ``latency + b / bandwidth`` per hop).

    Parameters
    ----------
    devices : int
        Number of devices ``P`` (>= 1).
    bandwidth : float
        Bytes per second of every link, > 0 (``math.inf``: transfers cost only latency).
    latency : float
        Seconds per hop, >= 0.
    flops : float
        Floating-point operations per second of every device, > 0.
    topology : {"ring", "switch"}
    network : Network, optional
        Faults on the device links (loss, duplication, reordering, jitter, crash windows of
        devices, retries, timeout); its own latency and bandwidth are not used.

    Examples
    --------
    >>> cluster = Cluster(devices=4, bandwidth=1e9, latency=1e-6, flops=1e12)
    >>> cluster.transfer_time(2_000_000)
    0.002001
    >>> cluster.critical_block(itemsize=8)      # c* = s · F / (2B)
    4000.0
    >>> Cluster(devices=0)
    Traceback (most recent call last):
    ...
    routing_sim.errors.InvalidArgumentError: devices must be an integer >= 1, got 0
    """

    devices: int = 4
    bandwidth: float = 1e10
    latency: float = 1e-6
    flops: float = 1e12
    topology: Topology = "ring"
    network: Network | None = None

    def __post_init__(self) -> None:
        if isinstance(self.devices, bool) or not isinstance(self.devices, (int, np.integer)) \
                or self.devices < 1:
            raise InvalidArgumentError(f"devices must be an integer >= 1, got {self.devices!r}")
        if not _real(self.bandwidth) or math.isnan(self.bandwidth) or self.bandwidth <= 0:
            raise InvalidArgumentError(f"bandwidth must be a number > 0 (bytes/s; inf allowed), "
                                       f"got {self.bandwidth!r}")
        if not _real(self.latency) or not math.isfinite(self.latency) or self.latency < 0:
            raise InvalidArgumentError(f"latency must be a finite number >= 0 (seconds), got "
                                       f"{self.latency!r}")
        if not _real(self.flops) or not math.isfinite(self.flops) or self.flops <= 0:
            raise InvalidArgumentError(f"flops must be a finite number > 0 (FLOP/s), got "
                                       f"{self.flops!r}")
        if self.topology not in TOPOLOGIES:
            raise InvalidArgumentError(f"topology must be one of {TOPOLOGIES}, got "
                                       f"{self.topology!r}")
        if self.network is not None and not isinstance(self.network, Network):
            raise InvalidArgumentError(f"network must be a routing_sim.Network or None, got "
                                       f"{type(self.network).__name__}")

    def transfer_time(self, nbytes: float) -> float:
        """Seconds one transfer of ``nbytes`` takes on one idle link: ``latency + b / B``."""
        return self.latency + nbytes / self.bandwidth

    def attention_time(self, routes: int, dim: int, value_dim: int, heads: int) -> float:
        """Seconds of attention over ``routes`` allowed pairs per head on one device."""
        return 2.0 * routes * (dim + value_dim) * heads / self.flops

    def critical_block(self, itemsize: int) -> float:
        """``c* = s · F / (2B)``: the ring's block size (tokens) at which one step's compute,
        ``4c²dH/F``, equals its transfer, ``2cHds/B`` (latency left out)."""
        return itemsize * self.flops / (2.0 * self.bandwidth)

    def path(self, source: int, target: int) -> list[tuple[int, int]]:
        """The hops ``(from, to)`` a transfer from ``source`` to ``target`` takes."""
        if self.topology == "switch" or source == target:
            return [(source, target)]
        count = self.devices
        forward = (target - source) % count
        step = 1 if forward <= count - forward else -1
        hops, here = [], source
        while here != target:
            hops.append((here, (here + step) % count))
            here = (here + step) % count
        return hops


def _real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
