"""Transfers between devices on SimPy: NICs that serialise, hops, faults, acks and retries.

One transfer of ``b`` bytes from ``a`` to ``b`` (one hop) holds ``a``'s sending NIC for
``b / B`` from its start ``t``, reaches ``b`` at ``t + latency`` and then holds ``b``'s
receiving NIC for ``b / B``: alone on idle NICs it takes ``latency + b / B``; NICs serve
transfers one at a time, first come first served.

Under a faulty :class:`~routing_sim.Network` (loss or crash windows) every data transfer is
acknowledged; a sender that has no ack ``timeout`` after the transfer left resends it, up
to ``retries`` times. Receivers keep the first copy of each transfer and ignore the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import simpy

from ..network.conditions import Network
from .cluster import Cluster

__all__ = ["ACK_BYTES", "Fabric"]

ACK_BYTES = 8


class Fabric:
    """The device links of one run, with each device's inbox of delivered payloads."""

    def __init__(self, env: simpy.Environment, cluster: Cluster, network: Network | None,
                 transfers: list[dict]) -> None:
        self.env, self.cluster, self.network = env, cluster, network
        self.sending = [simpy.Resource(env, capacity=1) for _ in range(cluster.devices)]
        self.receiving = [simpy.Resource(env, capacity=1) for _ in range(cluster.devices)]
        self.link_bytes = np.zeros(cluster.devices, dtype=np.int64)
        self.transfers = transfers
        self._inbox: dict[tuple[int, tuple], simpy.Event] = {}
        self._ids = itertools.count()

    def inbox(self, device: int, tag: tuple) -> simpy.Event:
        """The event that fires with the payload tagged ``tag`` once it reaches ``device``."""
        return self._inbox.setdefault((device, tag), self.env.event())

    def send(self, kind: str, source: int, target: int, tag: tuple, payload: object, nbytes: int
             ) -> simpy.Process:
        """Carry ``payload`` to ``target``'s inbox; the process ends when it is delivered
        (acknowledged, under faults) or every retry is spent."""
        return self.env.process(self._send(kind, source, target, tag, payload, nbytes))

    def _send(self, kind, source, target, tag, payload, nbytes):
        box = self.inbox(target, tag)
        if self.network is None or not self.network.faulty:
            yield self.env.process(self._carry(kind, source, target, tag, nbytes, 0,
                                               lambda: _fill(box, payload)))
            return
        acked = self.env.event()
        timeout = self._timeout(source, target, nbytes)
        for attempt in range(self.network.retries + 1):
            started = self.env.event()

            def deliver(attempt=attempt) -> None:
                _fill(box, payload)
                self.env.process(self._carry("ack", target, source, tag, ACK_BYTES, attempt,
                                             lambda: _fill(acked, None)))

            self.env.process(self._carry(kind, source, target, tag, nbytes, attempt, deliver,
                                         started))
            yield started
            yield acked | self.env.timeout(timeout)
            if acked.triggered:
                return

    def _carry(self, kind: str, source: int, target: int, tag: tuple, nbytes: int,
               attempt: int, deliver: Callable[[], None], started: simpy.Event | None = None):
        """One transmission along the path; drops it if lost or if a device is down."""
        ident = next(self._ids)
        network, cluster = self.network, self.cluster
        lost = bool(network is not None and network.lost(np.array([ident]))[0])
        extra = 0.0
        if network is not None and network.randomised:
            extra = float(np.asarray(network.delays(np.array([ident]), base=np.zeros(1),
                                                    nbytes=np.zeros(1)))[0])
        record = {"id": ident, "kind": kind, "src": source, "dst": target, "tag": list(tag),
                  "bytes": nbytes, "attempt": attempt, "sent": None, "arrived": None,
                  "fate": "delivered"}
        self.transfers.append(record)
        hops = cluster.path(source, target)
        for index, (here, there) in enumerate(hops):
            yield from self._wait_while_down(here)
            request = self.sending[here].request()
            yield request
            if index == 0:
                record["sent"] = self.env.now
                if started is not None:
                    started.succeed()
            self.link_bytes[here] += nbytes
            self.env.process(self._release(self.sending[here], request, nbytes))
            yield self.env.timeout(cluster.latency + (extra if index == 0 else 0.0))
            request = self.receiving[there].request()
            yield request
            yield self.env.timeout(nbytes / cluster.bandwidth)
            self.receiving[there].release(request)
            if self._down(there) or (lost and index == len(hops) - 1):
                record["fate"] = "lost"
                return
        record["arrived"] = self.env.now
        deliver()
        if network is not None and network.duplicated(np.array([ident]))[0]:
            self.env.process(self._duplicate(record, float(
                network.duplicate_lag(np.array([ident]))[0]), deliver))

    def _duplicate(self, original: dict, lag: float, deliver: Callable[[], None]):
        yield self.env.timeout(lag)
        self.transfers.append({**original, "id": next(self._ids), "fate": "duplicate",
                               "arrived": self.env.now})
        if not self._down(original["dst"]):
            deliver()

    def _release(self, nic: simpy.Resource, request, nbytes: int):
        yield self.env.timeout(nbytes / self.cluster.bandwidth)
        nic.release(request)

    def _down(self, device: int) -> bool:
        now = self.env.now
        return self.network is not None and any(
            crash.token == device and crash.start <= now < crash.end
            for crash in self.network.crashes)

    def _wait_while_down(self, device: int):
        while self._down(device):
            now = self.env.now
            assert self.network is not None                            # _down says so
            end = min(crash.end for crash in self.network.crashes
                      if crash.token == device and crash.start <= now < crash.end)
            yield self.env.timeout(end - now)

    def _timeout(self, source: int, target: int, nbytes: int) -> float:
        """Twice the slowest round trip: hops × (2 latency + (b + ack) / B), plus the
        network's own spread (jitter, reordering, spikes)."""
        network = self.network
        assert network is not None, "only a network with faults retries"
        if network.timeout is not None:
            return float(network.timeout)
        hops = len(self.cluster.path(source, target))
        round_trip = hops * (2 * self.cluster.latency + (nbytes + ACK_BYTES)
                             / self.cluster.bandwidth)
        varied = network.jitter or network.reorder or network.spike
        spread = network.round_trip_timeout(0.0, 0) if varied else 0.0
        return 2 * round_trip + spread


def _fill(event: simpy.Event, payload) -> None:
    """Deliver the first copy; later copies of the same transfer change nothing."""
    if not event.triggered:
        event.succeed(payload)
