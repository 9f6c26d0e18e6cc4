"""What each device does in each context-parallel protocol, as SimPy processes.

Every protocol step is an explicit transfer on the :class:`~.fabric.Fabric`; every block of
attention is a compute slice of ``cluster.attention_time(...)`` seconds. Devices merge the
partial states of their key blocks in a canonical order (by the block's home device, or by
the reduction tree), never in arrival order. The device that finishes a query row merges
its head's sink (if any) last, once, and reads the row's log-sum-exp from the same state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from ..inputs.positions import alibi_distance
from ..routes.spans import KeySpans
from .cluster import Cluster
from .fabric import Fabric
from .layouts import allowed_routes
from .states import (
    PartialState,
    block_state,
    empty_state,
    finish,
    log_sum_exp,
    merge,
    rounded,
    sink_state,
)

__all__ = ["STRATEGIES", "Job"]


@dataclass
class Job:
    """One run's inputs ``(B, H, N, d)``, shards, options, and what devices record."""

    env: simpy.Environment
    fabric: Fabric
    cluster: Cluster
    query: np.ndarray                        # (B, H, L, d)
    key: np.ndarray                          # (B, H, S, d)
    value: np.ndarray                        # (B, H, S, Ev)
    query_shards: list[np.ndarray]           # positions of each device's queries
    key_shards: list[np.ndarray]             # positions of each device's keys and values
    spans: KeySpans                          # each query's keys: causal, window, varlen
    scale: float
    exact: bool
    transit: np.dtype | None
    output: np.ndarray                       # (B, H, L, Ev)
    lse: np.ndarray | None = None            # (B, H, L), when asked for
    slopes: np.ndarray | None = None         # (B, H) float64 ALiBi slopes
    sinks: np.ndarray | None = None          # (B, H) sink logits, the inputs' dtype
    cap: Callable | None = None              # FlashAttention's softcap (a mods.softcap)
    slices: list[dict] = field(default_factory=list)
    finished: dict[int, float] = field(default_factory=dict)
    waiting: dict[int, str] = field(default_factory=dict)
    milestones: dict[str, list[list[simpy.Event]]] = field(default_factory=dict)

    @property
    def devices(self) -> int:
        return self.cluster.devices

    def milestone(self, name: str, device: int, step: int) -> simpy.Event:
        """A per-(device, step) event shared by all devices, e.g. "computed"."""
        if name not in self.milestones:
            self.milestones[name] = [[self.env.event() for _ in range(self.devices)]
                                     for _ in range(self.devices)]
        return self.milestones[name][device][step]

    @property
    def itemsize(self) -> int:
        return self.query.dtype.itemsize

    def attend(self, device: int, query: np.ndarray, query_positions: np.ndarray,
               key_positions: np.ndarray, keys: np.ndarray, values: np.ndarray, label: str,
               heads: slice = slice(None)) -> Generator[simpy.Event, Any, PartialState | None]:
        """Compute the partial state of ``query`` ``(B, h, cq, d)`` (the heads ``heads``)
        over one key block ``(B, h, ck, d)`` as a compute slice; None if the block is fully
        masked."""
        allowed = allowed_routes(query_positions, key_positions, self.spans)  # (cq, ck)
        routes = int(allowed.sum())
        if routes == 0:
            return None
        state = block_state(_groups(query), _groups(keys), _groups(values), allowed,
                            self.scale, self.exact,
                            self.alibi(heads, query_positions, key_positions), self.cap)
        cost = self.cluster.attention_time(routes, self.query.shape[-1], self.value.shape[-1],
                                           query.shape[0] * query.shape[1])
        start = self.env.now
        yield self.env.timeout(cost)
        self.slices.append({"device": device, "name": label, "start": start,
                            "end": self.env.now, "routes": routes})
        return rounded(state, self.transit)

    def receive(self, device: int, tag: tuple, what: str) -> Generator[simpy.Event, Any, Any]:
        """Wait for a tagged payload, noting what the device waits for (for errors)."""
        self.waiting[device] = what
        payload = yield self.fabric.inbox(device, tag)
        del self.waiting[device]
        return payload

    def in_transit(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Arrays as they arrive: rounded to the transit precision, if one is set."""
        if self.transit is None:
            return arrays
        return tuple(a.astype(self.transit).astype(a.dtype) for a in arrays)

    def kv_bytes(self, device: int) -> int:
        keys = self.key[:, :, self.key_shards[device]]
        values = self.value[:, :, self.key_shards[device]]
        return (keys.size + values.size) * self.itemsize

    def local_query(self, device: int) -> np.ndarray:
        return self.query[:, :, self.query_shards[device]]             # (B, H, cq, d)

    def local_kv(self, device: int) -> tuple[np.ndarray, np.ndarray]:
        positions = self.key_shards[device]
        return self.key[:, :, positions], self.value[:, :, positions]

    def alibi(self, heads: slice, query_positions: np.ndarray, key_positions: np.ndarray
              ) -> np.ndarray | None:
        """``(B·h, cq, ck)``: ALiBi's ``slope · -|i - j|`` of a block, between the tokens'
        positions in their sequences, as :func:`routing_sim.attention` computes it."""
        if self.slopes is None:
            return None
        distance = alibi_distance(self.spans.query_positions[query_positions][:, None],
                                  self.spans.key_positions[key_positions][None, :],
                                  "symmetric")                         # (cq, ck)
        bias = 0.0 + self.slopes[:, heads, None, None] * distance      # (B, h, cq, ck)
        return bias.astype(self.output.dtype).reshape(-1, *distance.shape)

    def complete(self, state: PartialState | None, heads: slice, rows: int
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """The output ``(B, h, c, Ev)`` and, when asked for, the log-sum-exp ``(B, h, c)``
        of finished query rows: their key blocks' merged state, with the sink merged last."""
        batch, width = self.query.shape[0], len(range(self.query.shape[1])[heads])
        value_dim = self.value.shape[-1]
        if self.sinks is not None:
            sink = sink_state(self.sinks[:, heads].reshape(-1), rows, value_dim, self.exact)
            state = sink if state is None else merge([state, sink], self.transit)
        if state is None:
            state = empty_state(batch * width, rows, value_dim, self.output.dtype, self.exact)
        output = finish(state, self.output.dtype, self.value_bound(heads))
        lse = None if self.lse is None else log_sum_exp(state).reshape(batch, width, rows)
        return output.reshape(batch, width, rows, value_dim), lse

    def place(self, state: PartialState | None, rows: np.ndarray) -> None:
        """Write a device's finished query rows (all heads) into the output."""
        output, lse = self.complete(state, slice(None), len(rows))
        self.output[:, :, rows] = output
        if self.lse is not None:
            self.lse[:, :, rows] = lse

    def value_bound(self, heads: slice = slice(None)) -> np.ndarray:
        """``(B·h, 1, 1)``: the largest |value| of each head, which bounds exact mode's
        rounding error (:func:`~routing_sim.parallel.states.finish`)."""
        size = np.abs(self.value[:, heads]).max(axis=(-2, -1), initial=0.0)  # (B, h)
        return size.reshape(-1, 1, 1).astype(np.float64)


def _groups(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, *x.shape[-2:])                                # (B·h, n, e)


def _merged(states: dict[int, PartialState], transit) -> PartialState | None:
    return merge([states[k] for k in sorted(states)], transit) if states else None


def ring(job: Job, device: int) -> Generator[simpy.Event, Any, None]:
    """Keep the query block; K/V blocks travel ``P - 1`` steps around the ring, each
    forwarded while it is computed on (double buffering)."""
    count, env = job.devices, job.env
    successor = (device + 1) % count
    states, sends = {}, []

    def forward(step: int, home: int, kv: tuple):
        if step >= 1:       # the successor's second buffer frees after its step - 1
            yield (job.milestone("computed", successor, step - 1)
                   & job.milestone("forwarded", successor, step - 1))
        yield job.fabric.send("kv", device, successor, ("kv", home), job.in_transit(*kv),
                              job.kv_bytes(home))
        job.milestone("forwarded", device, step).succeed()

    for step in range(count):
        home = (device - step) % count
        kv = job.local_kv(device) if step == 0 else (
            yield from job.receive(device, ("kv", home), f"the K/V block of device {home}"))
        if step < count - 1:
            sends.append(env.process(forward(step, home, kv)))
        keys, values = kv
        state = yield from job.attend(device, job.local_query(device), job.query_shards[device],
                                      job.key_shards[home], keys, values, f"q{device}·kv{home}")
        if state is not None:
            states[home] = state
        job.milestone("computed", device, step).succeed()
    yield env.all_of(sends)
    job.place(_merged(states, job.transit), job.query_shards[device])


def allgather(job: Job, device: int) -> Generator[simpy.Event, Any, None]:
    """All-gather K/V as a ring of ``P - 1`` steps, then attend to every block."""
    count, env = job.devices, job.env
    successor = (device + 1) % count
    blocks, sends = {device: job.local_kv(device)}, []
    for step in range(count - 1):
        home = (device - step) % count
        sends.append(job.fabric.send("kv", device, successor, ("kv", home),
                                     job.in_transit(*blocks[home]), job.kv_bytes(home)))
        incoming = (home - 1) % count
        blocks[incoming] = yield from job.receive(device, ("kv", incoming),
                                                  f"the K/V block of device {incoming}")
    yield env.all_of(sends)
    states = {}
    for home in range(count):
        state = yield from job.attend(device, job.local_query(device), job.query_shards[device],
                                      job.key_shards[home], *blocks[home], f"q{device}·kv{home}")
        if state is not None:
            states[home] = state
    job.place(_merged(states, job.transit), job.query_shards[device])


def ulysses(job: Job, device: int) -> Generator[simpy.Event, Any, None]:
    """All-to-all from sequence shards to head shards (q, k, v), full attention over
    ``H / P`` heads, all-to-all of the output back."""
    count, env = job.devices, job.env
    width = job.query.shape[1] // count
    heads = [slice(p * width, (p + 1) * width) for p in range(count)]
    rows, keys = job.query_shards[device], job.key_shards[device]
    sends = []
    for target in [(device + step) % count for step in range(1, count)]:
        parts = job.in_transit(job.query[:, heads[target]][:, :, rows],
                               job.key[:, heads[target]][:, :, keys],
                               job.value[:, heads[target]][:, :, keys])
        sends.append(job.fabric.send("qkv", device, target, ("qkv", device), parts,
                                     sum(p.size for p in parts) * job.itemsize))
    gathered = {device: (job.query[:, heads[device]][:, :, rows],
                         job.key[:, heads[device]][:, :, keys],
                         job.value[:, heads[device]][:, :, keys])}
    for source in [(device - step) % count for step in range(1, count)]:
        gathered[source] = yield from job.receive(device, ("qkv", source),
                                                  f"the q/k/v shard of device {source}")
    order = range(count)
    query_positions = np.concatenate([job.query_shards[p] for p in order])
    key_positions = np.concatenate([job.key_shards[p] for p in order])
    query, key, value = (np.concatenate([gathered[p][i] for p in order], axis=2)
                         for i in range(3))
    state = yield from job.attend(device, query, query_positions, key_positions, key, value,
                                  f"heads {heads[device].start}–{heads[device].stop - 1}",
                                  heads[device])
    output, lse = job.complete(state, heads[device], len(query_positions))  # (B, h, L, ·)
    offsets = np.cumsum([0] + [len(job.query_shards[p]) for p in order])
    shares = [(output[:, :, offsets[p]:offsets[p + 1]],
               None if lse is None else lse[:, :, offsets[p]:offsets[p + 1]]) for p in order]
    for target in [(device + step) % count for step in range(1, count)]:
        (out,), rows_lse = job.in_transit(shares[target][0]), shares[target][1]
        # the lse is not rounded in transit, as kernels keep it in float32 or better
        sends.append(job.fabric.send("out", device, target, ("out", device), (out, rows_lse),
                                     (out.size + (0 if rows_lse is None else rows_lse.size))
                                     * job.itemsize))
    received = {device: shares[device]}
    for source in [(device - step) % count for step in range(1, count)]:
        received[source] = yield from job.receive(device, ("out", source),
                                                  f"the output of device {source}")
    for source, (out, rows_lse) in received.items():
        job.output[:, heads[source], rows] = out
        if job.lse is not None:
            job.lse[:, heads[source], rows] = rows_lse
    yield env.all_of(sends)


def tree(job: Job, device: int) -> Generator[simpy.Event, Any, None]:
    """Decoding: each device attends to its KV-cache shard, then the partial states are
    reduced up a binary tree in ``⌈log2 P⌉`` rounds to device 0."""
    everything = np.arange(job.query.shape[2])
    state = yield from job.attend(device, job.query, everything, job.key_shards[device],
                                  *job.local_kv(device), f"q·kv{device}")
    if state is None:
        state = empty_state(job.query.shape[0] * job.query.shape[1], job.query.shape[2],
                            job.value.shape[-1], job.output.dtype, job.exact)
    for level in range(math.ceil(math.log2(job.devices))):
        span = 2 ** level
        if device % (2 * span) == span:
            sent = rounded(state, job.transit)
            yield job.fabric.send("state", device, device - span, ("state", device), sent,
                                  sent.nbytes(job.itemsize))
            return
        if device % (2 * span) == 0 and device + span < job.devices:
            other = yield from job.receive(device, ("state", device + span),
                                           f"the partial state of device {device + span}")
            state = merge([state, other], job.transit)
    job.place(state, everything)


STRATEGIES = ("ring", "allgather", "ulysses", "tree")
