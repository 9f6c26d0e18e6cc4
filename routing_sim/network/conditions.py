"""The network between token nodes: how long each message takes, and what goes wrong.

A :class:`Network` is a description; it holds no state. Every random draw (jitter, loss,
duplication, reordering, spikes) is a pure function of ``(seed, message id, purpose)``,
so a message meets the same fate whatever order the simulator happens to send things in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidArgumentError
from ..options import ON_MISSING
from .wave_times import earliest

__all__ = ["Crash", "Network", "nic_queue", "whole_waves"]

JITTER_DISTRIBUTIONS = ("uniform", "exponential")
_GOLDEN = 0x9E3779B97F4A7C15
# Independent random streams, one per purpose.
_JITTER, _LOSS, _DUPLICATE, _DUPLICATE_JITTER, _REORDER, _REORDER_DELAY, _SPIKE = range(7)
# The largest exponential jitter draw: -log1p(-u) for u = 1 - 2^-53.
_EXPONENTIAL_TAIL = 53 * math.log(2)
# splitmix64's finaliser: (shift, multiplier) per round, x ^= x >> shift; x *= multiplier.
_SPLITMIX_ROUNDS = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, 0))


@dataclass(frozen=True)
class Crash:
    """Token ``token`` is down during ``[start, end)``: it drops what arrives and sends nothing.

    ``side`` picks the query-side or key-side token in cross-attention ("both" in
    self-attention means the one token). The node's state survives the restart.
    """

    token: int
    start: float
    end: float
    side: str = "both"

    def __post_init__(self) -> None:
        if isinstance(self.token, bool) or not isinstance(self.token, (int, np.integer)) \
                or self.token < 0:
            raise InvalidArgumentError(f"crash token must be a token index >= 0, got "
                                       f"{self.token!r}")
        if not (_finite(self.start) and _finite(self.end) and 0 <= self.start < self.end):
            raise InvalidArgumentError(f"crash window must satisfy 0 <= start < end, got "
                                       f"[{self.start!r}, {self.end!r})")
        if self.side not in ("both", "query", "key"):
            raise InvalidArgumentError(f"crash side must be 'both', 'query' or 'key', got "
                                       f"{self.side!r}")


@dataclass(frozen=True)
class Network:
    """Timing and faults of message delivery between token nodes.

    A message of ``b`` bytes sent at ``t`` on route ``j -> i`` arrives at
    ``t + latency_ij + b / bandwidth + jitter_draw (+ reorder and spike delays)``, where
    ``latency_ij`` is the edge's ``latency`` in the token graph (or ``latency``). With
    ``contention=True`` a node's NIC sends one message at a time and receives one at a
    time, each taking ``b / bandwidth``, first come first served.

    Parameters
    ----------
    latency : float
        Base one-way latency of every route (>= 0).
    jitter : float
        Random extra delay: uniform in ``[0, jitter)``, or exponential with mean ``jitter``.
    jitter_dist : {"uniform", "exponential"}
    bandwidth : float, optional
        Bytes per time unit of every link (None: size costs no time).
    processing : float
        Time a node takes to handle a message before its reply leaves.
    contention : bool
        One message at a time per NIC and direction (needs ``bandwidth``).
    loss, duplicate : float
        Probability that a transmission is lost / delivered twice.
    reorder : float
        Probability that a message is held back by up to ``2 · (latency + jitter)`` extra,
        so that later messages overtake it (``True`` means 0.5).
    spike, spike_delay : float
        Probability of a delay spike and its length.
    crashes : sequence of Crash
        Node crash/restart windows.
    retries : int
        How many times a sender resends a request (QUERY, PULL) that got no answer
        (default 3; the command line uses 10, because its ``--loss`` runs are meant to
        finish: at loss 0.2 a request stays lost after 3 retries with probability
        0.2⁴ = 0.0016, which a run of a few hundred routes already meets).
    timeout : float, optional
        How long a sender waits for an answer, from the moment the request leaves its
        NIC; by default twice the slowest round trip the network's parameters allow
        (jitter taken at its mean plus 4 standard deviations when exponential). With
        contention each expiry doubles the next wait, and the last attempt waits for the
        slowest answer the NIC queues allow (:mod:`routing_sim.network.timers`), so contention
        never makes a route fail. Parameters whose times could pass the float64 range
        are refused with an InvalidArgumentError naming them.
    on_missing : {"strict", "degrade"}
        When answers are still missing after every retry: raise a
        :class:`~routing_sim.DeliveryError` naming each missing route, or renormalise over
        what arrived and list the routes lost for good in ``Run.dropped``.
    seed : int
        Seed of every random draw.

    Examples
    --------
    >>> net = Network(latency=2.0, jitter=0.5, seed=7)
    >>> delays = net.delays(np.array([0, 1, 2]), base=np.full(3, 2.0), nbytes=np.full(3, 8))
    >>> bool(((delays >= 2.0) & (delays < 2.5)).all())
    True
    >>> Network(latency=-1)
    Traceback (most recent call last):
    ...
    routing_sim.errors.InvalidArgumentError: latency must be a finite number >= 0, got -1
    """

    latency: float = 1.0
    jitter: float = 0.0
    jitter_dist: str = "uniform"
    bandwidth: float | None = None
    processing: float = 0.0
    contention: bool = False
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    spike: float = 0.0
    spike_delay: float = 0.0
    crashes: tuple[Crash, ...] = field(default=())
    retries: int = 3
    timeout: float | None = None
    on_missing: str = "strict"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("latency", "jitter", "processing", "spike_delay"):
            _check_non_negative(name, getattr(self, name))
        if self.bandwidth is not None and (not _number(self.bandwidth) or not
                                           _finite(self.bandwidth) or self.bandwidth <= 0):
            raise InvalidArgumentError(f"bandwidth must be a finite number > 0 (bytes per time "
                                       f"unit) or None, got {self.bandwidth!r}")
        if self.timeout is not None and (not _number(self.timeout) or not
                                         _finite(self.timeout) or self.timeout <= 0):
            raise InvalidArgumentError(f"timeout must be a finite number > 0 or None, got "
                                       f"{self.timeout!r}")
        if isinstance(self.reorder, bool):
            object.__setattr__(self, "reorder", 0.5 if self.reorder else 0.0)
        for name in ("loss", "duplicate", "reorder", "spike"):
            probability = getattr(self, name)
            if not _number(probability) or not 0 <= probability <= 1 or \
                    (name == "loss" and probability == 1):
                raise InvalidArgumentError(f"{name} must be a probability in [0, 1"
                                           f"{')' if name == 'loss' else ']'}, got "
                                           f"{probability!r}")
        if self.jitter_dist not in JITTER_DISTRIBUTIONS:
            raise InvalidArgumentError(f"jitter_dist must be one of {JITTER_DISTRIBUTIONS}, "
                                       f"got {self.jitter_dist!r}")
        if self.contention and self.bandwidth is None:
            raise InvalidArgumentError("contention=True needs a bandwidth: a NIC is busy for "
                                       "bytes / bandwidth per message")
        if isinstance(self.retries, bool) or not isinstance(self.retries, (int, np.integer)) \
                or self.retries < 0:
            raise InvalidArgumentError(f"retries must be an integer >= 0, got {self.retries!r}")
        if self.on_missing not in ON_MISSING:
            raise InvalidArgumentError(f"on_missing must be one of {ON_MISSING}, got "
                                       f"{self.on_missing!r}")
        crashes = tuple(self.crashes)
        if not all(isinstance(crash, Crash) for crash in crashes):
            raise InvalidArgumentError("crashes must be a sequence of routing_sim.Crash")
        object.__setattr__(self, "crashes", crashes)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise InvalidArgumentError(f"seed must be an integer, got {self.seed!r}")
        timeout = self.round_trip_timeout(self.latency, 0)
        self.check_clock(timeout, max(timeout, self.slowest_round_trip(self.latency, 0)))

    @property
    def faulty(self) -> bool:
        """Can a request go unanswered? Then senders arm retry timers."""
        return self.loss > 0 or bool(self.crashes)

    @property
    def randomised(self) -> bool:
        """Do message ids feed any random draw (jitter, loss, reordering, spikes, copies)?"""
        return self.random_delays or self.loss > 0 or self.duplicate > 0

    @property
    def random_delays(self) -> bool:
        """Is a transit time drawn per message (jitter, reordering, spikes)?"""
        return self.jitter > 0 or self.reorder > 0 or self.spike > 0

    def delays(self, message_ids: np.ndarray | None, base: np.ndarray | float,
               nbytes: np.ndarray | float,
               sized: bool = True) -> np.ndarray | np.float64:
        """Transit time of each message (before NIC queueing), given its route's latency.

        ``base`` and ``nbytes`` are per-message arrays or scalars; without randomness the
        result is a scalar when they are, and ``message_ids`` may be None. With
        :attr:`random_delays` the result is a new array, one delay per message id, that the
        caller may change in place. ``sized=False`` leaves out ``nbytes / bandwidth`` (a
        sender's NIC already spent it).
        """
        delay = np.asarray(base, np.float64) if isinstance(base, np.ndarray) and base.ndim \
            else np.float64(base)
        if self.bandwidth is not None and sized:
            delay = delay + np.asarray(nbytes, np.float64) / self.bandwidth
        if not self.random_delays:
            return delay
        assert message_ids is not None, "random delays are drawn per message id"
        if self.jitter > 0:
            jitter = self._jitter(message_ids, _JITTER)                # (m,) a new array
            jitter += delay                     # delay + jitter, in the memory of the draw
            delay = jitter
        if self.reorder > 0:
            held = self.draw(message_ids, _REORDER) < self.reorder
            delay = delay + held * self.draw(message_ids, _REORDER_DELAY) * 2 * (
                self.latency + self.jitter)
        if self.spike > 0:
            delay = delay + (self.draw(message_ids, _SPIKE) < self.spike) * self.spike_delay
        return delay

    def lost(self, message_ids: np.ndarray) -> np.ndarray:
        """Which transmissions the network loses."""
        if self.loss == 0:
            return np.zeros(len(message_ids), dtype=bool)
        return self.draw(message_ids, _LOSS) < self.loss

    def duplicated(self, message_ids: np.ndarray) -> np.ndarray:
        """Which transmissions arrive twice."""
        if self.duplicate == 0:
            return np.zeros(len(message_ids), dtype=bool)
        return self.draw(message_ids, _DUPLICATE) < self.duplicate

    def duplicate_lag(self, message_ids: np.ndarray) -> np.ndarray:
        """How much later than the original a duplicate arrives."""
        return self._jitter(message_ids, _DUPLICATE_JITTER) + self.latency * self.draw(
            message_ids, _DUPLICATE_JITTER + 100)

    def min_delay(self, base: np.ndarray, min_bytes: int) -> float:
        """A lower bound on every transit time: the simulator's lookahead."""
        floor = earliest(base) if base.size else self.latency
        if self.bandwidth is not None:
            floor += min_bytes / self.bandwidth
        return floor

    def round_trip_timeout(self, max_latency: float, max_bytes: int) -> float:
        """The default timeout: twice the slowest round trip the parameters allow."""
        if self.timeout is not None:
            return float(self.timeout)
        spread = self.jitter if self.jitter_dist == "uniform" else 5 * self.jitter
        one_way = (max_latency + spread + self.spike_delay * (self.spike > 0)
                   + 2 * (self.latency + self.jitter) * (self.reorder > 0)
                   + (max_bytes / self.bandwidth if self.bandwidth else 0.0))
        return 2 * (2 * one_way + self.processing) or 1.0

    def slowest_round_trip(self, max_latency: float, max_bytes: int) -> float:
        """An upper bound on a round trip without queueing: every draw at its largest."""
        jitter = self.jitter * (1.0 if self.jitter_dist == "uniform" else _EXPONENTIAL_TAIL)
        one_way = (max_latency + jitter + self.spike_delay * (self.spike > 0)
                   + 2 * (self.latency + self.jitter) * (self.reorder > 0)
                   + (max_bytes / self.bandwidth if self.bandwidth else 0.0))
        return 2 * one_way + self.processing

    def check_clock(self, timeout: float, give_up: float) -> None:
        """Refuse parameters under which a run's times could pass the largest float64.

        A run has two phases; each waits at most ``retries + 1`` retry timers of at most
        ``give_up`` (after crash windows). Later times would be infinite.
        """
        end = max((crash.end for crash in self.crashes), default=0.0)
        horizon = end + 2 * ((self.retries + 1) * give_up + timeout)
        if math.isfinite(4 * horizon):
            return
        scales = {name: float(getattr(self, name)) for name in
                  ("latency", "jitter", "processing", "spike_delay")}
        if self.timeout is not None:
            scales["timeout"] = float(self.timeout)
        if self.bandwidth is not None:
            scales["1 / bandwidth"] = 1.0 / self.bandwidth
        largest = max(scales.values())
        named = ", ".join(f"{name}={value:g}" for name, value in scales.items()
                          if value >= largest * 1e-3)
        length = f"about {horizon:.3g}" if math.isfinite(horizon) else "more than 1.8e308"
        raise InvalidArgumentError(
            f"{named}: a run on this network may last {length} time units (with retries="
            f"{self.retries} and its NIC queues), past a quarter of the largest float64 "
            "(1.8e308), so its events cannot share one clock; scale these parameters down")

    def draw(self, message_ids: np.ndarray, purpose: int) -> np.ndarray:
        """Uniform numbers in [0, 1): splitmix64 of ``(seed, purpose, message id)``.

        One new array of uniforms per call (callers may scale it in place); the mixing runs
        in place, in it and one more.
        """
        mix = (self.seed * _GOLDEN + purpose * 0xD1B54A32D192ED03) % 2**64
        ids = np.asarray(message_ids, np.int64).view(np.uint64)       # (m,) two's complement
        x = np.add(ids, np.uint64(mix))                                # (m,) mod 2**64
        shifted = np.empty_like(x)
        for shift, multiplier in _SPLITMIX_ROUNDS:
            x ^= np.right_shift(x, np.uint64(shift), out=shifted)
            if multiplier:
                x *= np.uint64(multiplier)
        x >>= np.uint64(11)                                            # 53 random bits
        uniform = shifted.view(np.float64)                             # (m,) reuses memory
        # Exact below 2**53; as int64, which converts to float in SIMD (uint64 does not).
        np.copyto(uniform, x.view(np.int64))
        uniform *= 2.0**-53
        return uniform

    def _jitter(self, message_ids: np.ndarray, purpose: int) -> np.ndarray:
        """``jitter · u`` (uniform) or ``-jitter · log1p(-u)`` (exponential), as a new array."""
        u = self.draw(message_ids, purpose)
        if self.jitter_dist == "uniform":
            u *= self.jitter
            return u
        np.log1p(np.negative(u, out=u), out=u)
        u *= -self.jitter
        return u


def _number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _finite(x) -> bool:
    return _number(x) and math.isfinite(x)


def _check_non_negative(name: str, number) -> None:
    if not _finite(number) or number < 0:
        raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {number!r}")


def nic_queue(free: dict[int, float], nodes: np.ndarray, times: np.ndarray,
              busy: np.ndarray, uses_nic: np.ndarray, start_based: bool) -> np.ndarray:
    """First-come-first-served NICs; message ``m`` holds its node's NIC for ``busy[m]``.

    Sending (``start_based``): a message can start at its ready time and leaves when
    its last byte is out. Receiving: a message whose last byte arrives at ``t`` is
    received at ``t`` unless the NIC is still busy with the previous one. ``free`` maps
    a node to the time its NIC is next free, and is updated.

    Examples
    --------
    >>> nic_queue({}, np.array([0, 0]), np.array([0.0, 0.0]), np.array([2.0, 2.0]),
    ...           np.array([True, True]), start_based=True).tolist()
    [2.0, 4.0]
    """
    done = np.array(times, dtype=np.float64)
    for index in np.flatnonzero(uses_nic):
        node, hold = int(nodes[index]), float(busy[index])
        previous = free.get(node, -np.inf)
        if start_based:
            finish = max(float(times[index]), previous) + hold
        else:
            finish = max(float(times[index]), previous + hold)
        free[node] = finish
        done[index] = finish
    return done


def whole_waves(network: Network) -> bool:
    """Can every wave on ``network`` be delivered at once, each message at its own time?

    Yes when no message can be lost (so no retry timer), copied or queued at a NIC; the
    handlers must commute as well (a transport's ``order_free``).

    Examples
    --------
    >>> whole_waves(Network(latency=2.0, bandwidth=64.0, jitter=0.5))
    True
    >>> whole_waves(Network(loss=0.1)), whole_waves(Network(duplicate=0.1))
    (False, False)
    """
    return not (network.faulty or network.duplicate > 0 or network.contention)
