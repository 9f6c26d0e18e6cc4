"""Retransmission timers: when a sender resends a request, and when it gives a route up.

A request's timer starts when the request leaves its sender's NIC, not when it joins the
NIC's queue (RFC 6298, section 5.1: the timer runs from transmission). Attempt ``a`` waits
``timeout · 2^a`` (section 5.5, exponential back-off), bounded by ``give_up``: the longest
an answer can take, counting the longest the three NIC queues after the sender's (the key
node's receive and send queues, the query node's receive queue) can hold a message. The
last attempt always waits ``give_up``, so a route is given up only when no answer can
still arrive: a :class:`~routing_sim.DeliveryError` means every attempt was really lost,
and contention can delay a run but never fail it. Without contention ``give_up`` is the
default timeout, and nothing backs off.

The timers take no round-trip samples, so Karn's rule (never time a retransmitted
request) holds trivially; every delay is a pure function of the parameters and the
message, which keeps timers identical under every delivery schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .conditions import Network
from .messages import Kind

__all__ = ["RetransmissionTimer", "retransmission_timer"]

@dataclass(frozen=True)
class RetransmissionTimer:
    """``timeout``: the first attempt's wait; ``give_up``: the longest, the last attempt's.

    Examples
    --------
    >>> timer = RetransmissionTimer(timeout=2.0, give_up=10.0, retries=3)
    >>> timer.due(np.zeros(4), np.arange(4)).tolist()
    [2.0, 4.0, 8.0, 10.0]
    """

    timeout: float
    give_up: float
    retries: int

    def due(self, leave: np.ndarray, attempts: np.ndarray) -> np.ndarray:
        """When the timers of requests that left their NICs at ``leave`` fire."""
        doublings = max(0, math.ceil(math.log2(self.give_up / self.timeout)))
        wait = np.minimum(np.ldexp(self.timeout, np.minimum(attempts, doublings)),
                          self.give_up)
        return leave + np.where(attempts >= self.retries, self.give_up, wait)


def retransmission_timer(network: Network, route_latency: np.ndarray, nbytes: dict,
                         endpoints: Callable[[Kind, np.ndarray], tuple]
                         ) -> RetransmissionTimer:
    """The timers of a run: its routes' latencies, its message sizes and their endpoints.

    Refuses (InvalidArgumentError) a run whose times could pass the float64 range.

    Examples
    --------
    >>> ends = lambda kind, routes: (np.zeros(len(routes), int), 1 + routes)  # 1 query node
    >>> quiet = Network(latency=1.0, loss=0.1)
    >>> retransmission_timer(quiet, np.ones(10), {Kind.QUERY: 64}, ends)
    RetransmissionTimer(timeout=4.0, give_up=4.0, retries=3)
    >>> busy = Network(latency=1.0, bandwidth=64, contention=True, loss=0.1)
    >>> retransmission_timer(busy, np.ones(10), {Kind.QUERY: 64}, ends).give_up  # 4 + 3·40·1
    124.0
    """
    max_latency = float(route_latency.max(initial=network.latency))
    max_bytes = max(nbytes.values())
    timeout = network.round_trip_timeout(max_latency, max_bytes)
    round_trip = network.slowest_round_trip(max_latency, max_bytes)
    queues = 0.0
    if network.contention and len(route_latency):
        senders, receivers = endpoints(next(iter(nbytes)), np.arange(len(route_latency)))
        fan = int(np.bincount(np.concatenate([senders, receivers])).max())  # busiest node
        copies = 2 if network.duplicate > 0 else 1
        messages = fan * len(nbytes) * (network.retries + 1) * copies  # through one NIC
        queues = 3 * messages * (max_bytes / network.bandwidth)
    timer = RetransmissionTimer(timeout, max(timeout, round_trip + queues), network.retries)
    network.check_clock(timer.timeout, timer.give_up)
    return timer
