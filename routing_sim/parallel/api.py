"""``context_parallel``: attention over a sequence sharded across simulated devices."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import simpy
from numpy.typing import ArrayLike

from ..errors import DeliveryError, DTypeError, InvalidArgumentError, ShapeError
from ..inputs.masks import Window, check_window_size
from ..network.conditions import Network
from ..numerics.exact_row import exact_row
from ..options import NUMERICS, TRACE_DETAILS, Numerics, TraceDetail, check_choice
from ..routes.problem import as_float_array, resolve_scale
from ..routes.spans import key_spans
from . import strategies
from .cluster import Cluster
from .fabric import Fabric
from .layouts import LAYOUTS, allowed_routes, shard
from .run import ParallelRun, ParallelStats
from .trace import ParallelTrace

__all__ = ["context_parallel"]

Strategy = Literal["ring", "allgather", "ulysses", "tree"]
TRANSIT_DTYPES = (None, "float32", "float16")


def context_parallel(query: ArrayLike, key: ArrayLike, value: ArrayLike, *,
                     strategy: Strategy, cluster: Cluster,
                     layout: str = "contiguous", is_causal: bool = False,
                     scale: float | None = None, network: Network | None = None,
                     numerics: Numerics = "float",
                     transit_dtype: str | None = None, seed: int = 0,
                     trace: TraceDetail = "auto",
                     window_size: Window | None = None) -> ParallelRun:
    """Attention with the sequence sharded over ``cluster.devices`` simulated devices.

    Every protocol step is an explicit transfer on SimPy, timed by the cluster's model
    (:class:`~routing_sim.Cluster`), and every device merges its partial softmax states in
    a canonical order, so ``output`` is the same for every schedule and fault pattern.

    Parameters
    ----------
    query, key, value : array_like
        ``(..., H, L, d)``, ``(..., H, S, d)``, ``(..., H, S, d_v)``, float32 or float64, with
        the same leading dims (2-D inputs are one head).
    strategy : {"ring", "allgather", "ulysses", "tree"}
        ``"ring"``: K/V blocks travel ``P - 1`` steps around the ring, overlapping compute;
        ``"allgather"``: K/V all-gathered as a ring, then local attention; ``"ulysses"``:
        all-to-all to head shards (``H`` a multiple of ``P``) and back; ``"tree"``:
        decoding against a sharded KV cache, partial states reduced in ``⌈log2 P⌉`` rounds.
    cluster : Cluster
    layout : {"contiguous", "zigzag", "striped"}
        How the sequence is sharded (zigzag needs lengths that are multiples of ``2P``).
        ``"tree"`` shards only the keys; the query rows are on every device.
    is_causal : bool
        Query ``i`` routes to keys ``j <= i`` (top-left, as PyTorch).
    scale : float, optional
        Defaults to ``1 / sqrt(d)``.
    network : Network, optional
        Faults on device links; overrides ``cluster.network``.
    numerics : {"float", "exact"}
        ``"exact"``: the correctly rounded output, as ``attention(..., numerics="exact")``.
    transit_dtype : {None, "float32", "float16"}
        Round what travels (K/V blocks, q/k/v shards, outputs, partial states) and every
        partial state after it is made or merged to this precision, as low-precision
        implementations do (float mode only).
    seed : int
        Mixed into the network's seed: another fault pattern from the same network.
    trace : {"auto", "full", "summary"}
        ``"summary"`` keeps the stats and drops the event records.
    window_size : (int, int), optional
        FlashAttention's local window ``(left, right)``, as in :func:`~routing_sim.attention`
        (aligned bottom-right; ``is_causal`` sets ``right = 0`` and then needs ``L == S``).
        A key block outside every local query's window is never computed (its slice is
        skipped), though ring and all-gather still move it.

    Returns
    -------
    ParallelRun
        ``output`` (``(..., H, L, d_v)``), ``stats``, ``trace``.

    Raises
    ------
    ShapeError
        Lengths not divisible by the shards, heads not divisible by ``P`` for Ulysses,
        shapes that do not fit together.
    DeliveryError
        A transfer still missing after every retry.

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 2, 8, 4))              # H=2 heads, N=8, d=4
    >>> run = rs.context_parallel(q, k, v, strategy="ring",
    ...                           cluster=rs.Cluster(devices=4, bandwidth=1e9))
    >>> bool(np.allclose(run.output, rs.attention(q, k, v), rtol=1e-12, atol=0))
    True
    >>> run.stats.bytes_sent.tolist()                         # 2(P-1)(N/P)·H·d·s
    [768, 768, 768, 768]
    """
    query, key, value, output_shape = _check_inputs(query, key, value)
    _check_options(strategy, cluster, layout, numerics, transit_dtype, trace, seed)
    network = network if network is not None else cluster.network
    if network is not None:
        if not isinstance(network, Network):
            raise InvalidArgumentError(f"network must be a routing_sim.Network or None, got "
                                       f"{type(network).__name__}")
        for crash in network.crashes:
            if crash.token >= cluster.devices:
                raise InvalidArgumentError(f"a crash names device {crash.token}, but the "
                                           f"cluster has {cluster.devices} devices")
        # Reordering holds a transfer back by up to 2·(latency + jitter): the cluster's latency.
        network = dataclasses.replace(network, latency=cluster.latency, bandwidth=None,
                                      contention=False, seed=network.seed * 1_000_003 + seed)
    devices = cluster.devices
    heads, length, keys = query.shape[1], query.shape[2], key.shape[2]
    if strategy == "ulysses" and heads % devices:
        raise ShapeError(f"strategy='ulysses' splits the {heads} heads over {devices} devices: "
                         f"the head count must be a multiple of the device count")
    if strategy in ("ring", "allgather", "ulysses") and length != keys and is_causal:
        raise ShapeError(f"is_causal with strategy={strategy!r} needs as many queries as keys, "
                         f"got {length} and {keys}")
    window = None if window_size is None else check_window_size(window_size)
    spans = key_spans(length, keys, window, None, bool(is_causal), "top_left")
    query_shards = ([np.arange(length)] * devices if strategy == "tree"
                    else shard(length, devices, layout, "query"))
    key_shards = shard(keys, devices, layout, "key")

    env = simpy.Environment()
    transfers: list[dict] = []
    fabric = Fabric(env, cluster, network, transfers)
    dtype = np.result_type(query, key, value)
    job = strategies.Job(env, fabric, cluster, query, key, value, query_shards, key_shards,
                         spans, resolve_scale(scale, query.shape[-1]),
                         numerics == "exact",
                         None if transit_dtype is None else np.dtype(transit_dtype),
                         np.zeros(query.shape[:3] + (value.shape[-1],), dtype))
    for device in range(devices):
        env.process(_timed(job, device, _protocol(job, strategy, device)))
    env.run()
    missing = {device: what for device, what in job.waiting.items()}
    if missing:
        retries = network.retries if network is not None else 0
        raise DeliveryError("transfers never arrived after " f"{retries} retries: " + "; ".join(
            f"device {device} still waits for {what}" for device, what in sorted(missing.items())))
    if job.exact:
        _finish_undecided(job)
    trace_record = ParallelTrace(devices, cluster.bandwidth, job.slices, transfers)
    stats = ParallelStats.collect(trace_record, fabric.link_bytes, job.finished)
    if trace == "summary":
        trace_record = ParallelTrace(devices, cluster.bandwidth, [], [])
    return ParallelRun(job.output.reshape(output_shape), stats, trace_record, strategy, layout,
                       cluster)


def _finish_undecided(job: strategies.Job) -> None:
    """Exact mode: the rows the double-double states could not decide (extreme scores or
    values, weights in the subnormal band; docs/numerics.md), computed in integers from
    the row's keys and values. Not timed: a rare fallback outside the protocol."""
    key_positions = np.arange(job.key.shape[2])
    for batch, head, row in zip(*np.nonzero(np.isnan(job.output).any(axis=-1))):
        keys = allowed_routes(np.array([row]), key_positions, job.spans)[0]
        job.output[batch, head, row] = exact_row(
            job.key[batch, head, keys], job.query[batch, head, row], job.scale, None,
            job.value[batch, head, keys])[1]


def _timed(job: strategies.Job, device: int, protocol):
    """Run one device's protocol and note when the device is done."""
    yield job.env.process(protocol)
    job.finished[device] = job.env.now


def _protocol(job: strategies.Job, strategy: str, device: int):
    return getattr(strategies, strategy)(job, device)


def _check_inputs(query, key, value) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """The inputs as ``(B, H, N, d)`` arrays of one dtype, and the output's shape."""
    arrays = [as_float_array(name, x) for name, x in
              (("query", query), ("key", key), ("value", value))]
    query, key, value = (a.astype(np.result_type(*arrays), copy=False) for a in arrays)
    if not (query.shape[:-2] == key.shape[:-2] == value.shape[:-2]):
        raise ShapeError(f"query, key and value must share their leading (..., H) dims, got "
                         f"query {query.shape}, key {key.shape}, value {value.shape}")
    if query.shape[-1] != key.shape[-1]:
        raise ShapeError(f"query and key must have the same feature dim d, got query "
                         f"{query.shape} and key {key.shape}")
    if key.shape[-2] != value.shape[-2]:
        raise ShapeError(f"key and value must have the same length S, got key {key.shape} and "
                         f"value {value.shape}")
    if 0 in query.shape or 0 in key.shape or 0 in value.shape:
        raise ShapeError(f"inputs must not be empty, got query {query.shape}, key {key.shape}, "
                         f"value {value.shape}")
    output_shape = query.shape[:-1] + value.shape[-1:]
    heads = query.shape[-3] if query.ndim >= 3 else 1
    return (*(a.reshape(-1, heads, *a.shape[-2:]) for a in (query, key, value)), output_shape)


def _check_options(strategy, cluster, layout, numerics, transit_dtype, trace, seed) -> None:
    if strategy not in strategies.STRATEGIES:
        raise InvalidArgumentError(f"strategy must be one of {strategies.STRATEGIES}, got "
                                   f"{strategy!r}")
    if not isinstance(cluster, Cluster):
        raise InvalidArgumentError(f"cluster must be a routing_sim.Cluster, got "
                                   f"{type(cluster).__name__}")
    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    check_choice("numerics", numerics, NUMERICS)
    if transit_dtype not in TRANSIT_DTYPES:
        raise DTypeError(f"transit_dtype must be one of {TRANSIT_DTYPES}, got "
                         f"{transit_dtype!r}")
    if transit_dtype is not None and numerics == "exact":
        raise InvalidArgumentError("transit_dtype rounds what travels, which numerics='exact' "
                                   "rules out; use one or the other")
    check_choice("trace", trace, TRACE_DETAILS)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidArgumentError(f"seed must be an integer, got {seed!r}")
