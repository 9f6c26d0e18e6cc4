"""``context_parallel``: attention over a sequence sharded across simulated devices."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import simpy
from numpy.typing import ArrayLike

from ..errors import DeliveryError, DTypeError, InvalidArgumentError, ShapeError
from ..inputs.masks import Window, check_cu_seqlens, check_window_size
from ..inputs.mods import flash_softcap
from ..inputs.positions import check_alibi_slopes
from ..inputs.sinks import group_sinks
from ..network.conditions import Network
from ..numerics.exact_row import exact_row, exact_row_lse
from ..options import (
    CAUSAL_ALIGNMENTS,
    NUMERICS,
    TRACE_DETAILS,
    CausalAlignment,
    Numerics,
    TraceDetail,
    check_choice,
)
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
                     window_size: Window | None = None,
                     causal_alignment: CausalAlignment = "top_left",
                     softcap: float | None = 0.0, sinks: ArrayLike | None = None,
                     alibi_slopes: ArrayLike | None = None,
                     cu_seqlens_q: ArrayLike | None = None,
                     cu_seqlens_k: ArrayLike | None = None,
                     return_lse: bool = False) -> ParallelRun:
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
        Query ``i`` routes to keys ``j <= i`` (top-left, as PyTorch; see
        ``causal_alignment``), per sequence with ``cu_seqlens``.
    scale : float, optional
        Defaults to ``1 / sqrt(d)``.
    network : Network, optional
        Faults on device links; overrides ``cluster.network``.
    numerics : {"float", "exact"}
        ``"exact"``: the correctly rounded output, as ``attention(..., numerics="exact")``.
    transit_dtype : {None, "float32", "float16"}
        Round what travels (K/V blocks, q/k/v shards, outputs, partial states) and every
        partial state after it is made or merged to this precision, as low-precision
        implementations do (float mode only). The running max ``m`` and the lse are kept.
    seed : int
        Mixed into the network's seed: another fault pattern from the same network.
    trace : {"auto", "full", "summary"}
        ``"summary"`` keeps the stats and drops the event records.
    window_size : (int, int), optional
        FlashAttention's local window ``(left, right)``, as in :func:`~routing_sim.attention`
        (aligned bottom-right; ``is_causal`` sets ``right = 0`` and then needs the
        bottom-right alignment, which ``L == S`` gives). A key block outside every local
        query's window is never computed (its slice is skipped), though ring and
        all-gather still move it.
    causal_alignment : {"top_left", "bottom_right"}
        Where ``is_causal``'s diagonal starts when a sequence has ``L != S``, as in
        :func:`~routing_sim.attention` (FlashAttention's ``causal`` is bottom-right).
    softcap : float, optional
        FlashAttention's ``softcap``: each block's scaled scores go through ``cap ·
        tanh(s / cap)`` before ALiBi is added. ``0.0`` or None: off. Float mode only.
    sinks : array_like, shape (H,) or (1,), optional
        One logit per head in every row's softmax denominator (no value, not scaled), as
        :func:`~routing_sim.attention`'s ``sinks``. It has no key block: the device that
        finishes a row (the row's owner; Ulysses: its head's device; tree: device 0)
        merges the sink's state ``(logit, 1, 0)`` into the row's state once, last. A
        row with no key gets output 0 (and its lse is the logit).
    alibi_slopes : array_like, shape (H,) or (B, H), optional
        FlashAttention's ALiBi: ``-alibi_slopes[h] · |pos_i - j|`` added to head ``h``'s
        scores, positions within each sequence (``causal_alignment`` places the queries).
        Each device computes the bias of its blocks from the tokens' positions: nothing
        more travels.
    cu_seqlens_q, cu_seqlens_k : array_like of int, shape (N + 1,), optional
        FlashAttention's varlen: packed sequences along ``L`` and ``S`` (both or neither).
        No route crosses sequences; causality, the window, ALiBi positions and sinks
        apply per sequence. The layout shards the packed tokens, so a device may hold the
        ends of several sequences; a block with no route inside a sequence is skipped.
    return_lse : bool
        Also give ``run.lse`` ``(..., H, L)``: each row's log-sum-exp ``m + log l`` from
        its final state (the sink's term included; -inf, or the sink's logit, for a row
        with no key), as ``attention(..., return_lse=True)`` returns it; correctly rounded
        in exact mode. Ulysses sends the rows' lse back with their outputs (counted in
        the bytes).

    Returns
    -------
    ParallelRun
        ``output`` (``(..., H, L, d_v)``), ``lse`` (``(..., H, L)`` with ``return_lse``,
        else None), ``stats``, ``trace``.

    Raises
    ------
    ShapeError
        Lengths not divisible by the shards, heads not divisible by ``P`` for Ulysses,
        shapes that do not fit together (``sinks``, ``alibi_slopes``, ``cu_seqlens``).
    InvalidArgumentError
        An option the run cannot honour, e.g. ``softcap`` with ``numerics="exact"``.
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

    The kernels' options, as :func:`~routing_sim.attention` takes them: two packed
    sequences of 4 tokens, causal, with a sink per head and ALiBi.

    >>> options = dict(is_causal=True, cu_seqlens_q=[0, 4, 8], cu_seqlens_k=[0, 4, 8],
    ...                sinks=[0.5, -1.0], alibi_slopes=[0.25, 0.5])
    >>> run = rs.context_parallel(q, k, v, strategy="ulysses", return_lse=True,
    ...                           cluster=rs.Cluster(devices=2), **options)
    >>> out, lse = rs.attention(q, k, v, return_lse=True, **options)
    >>> bool(np.allclose(run.output, out, rtol=1e-12, atol=0)), run.lse.shape
    (True, (2, 8))
    >>> bool(np.allclose(run.lse, lse, rtol=1e-12, atol=0))
    True
    """
    query, key, value, output_shape = _check_inputs(query, key, value)
    _check_options(strategy, cluster, layout, numerics, transit_dtype, trace, seed)
    check_choice("causal_alignment", causal_alignment, CAUSAL_ALIGNMENTS)
    cap = flash_softcap(softcap, None, numerics)                       # mods.softcap or None
    if not isinstance(return_lse, (bool, np.bool_)):
        raise InvalidArgumentError(f"return_lse must be True or False, got {return_lse!r}")
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
    sequences = check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, length, keys)
    spans = key_spans(length, keys, window, sequences, bool(is_causal), causal_alignment)
    batch_shape, dtype = output_shape[:-2], query.dtype
    per_head = (query.shape[0], heads)                                 # (B, H)
    slopes = None if alibi_slopes is None else np.broadcast_to(
        check_alibi_slopes(alibi_slopes, batch_shape), batch_shape).reshape(per_head)
    logits = None if sinks is None else \
        group_sinks(sinks, batch_shape, dtype)[1].reshape(per_head)
    query_shards = ([np.arange(length)] * devices if strategy == "tree"
                    else shard(length, devices, layout, "query"))
    key_shards = shard(keys, devices, layout, "key")

    env = simpy.Environment()
    transfers: list[dict] = []
    fabric = Fabric(env, cluster, network, transfers)
    job = strategies.Job(env, fabric, cluster, query, key, value, query_shards, key_shards,
                         spans, resolve_scale(scale, query.shape[-1]),
                         numerics == "exact",
                         None if transit_dtype is None else np.dtype(transit_dtype),
                         np.zeros(query.shape[:3] + (value.shape[-1],), dtype),
                         np.zeros(query.shape[:3], dtype) if return_lse else None,
                         slopes, logits, cap)
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
    lse = None if job.lse is None else job.lse.reshape(output_shape[:-1])
    return ParallelRun(job.output.reshape(output_shape), stats, trace_record, strategy, layout,
                       cluster, lse)


def _finish_undecided(job: strategies.Job) -> None:
    """Exact mode: the outputs and lse the double-double states could not decide (extreme
    scores or values, weights in the subnormal band; docs/numerics.md), computed in
    integers from the row's keys, bias, sink and values. Not timed: a rare fallback
    outside the protocol."""
    undecided = np.isnan(job.output).any(axis=-1)                      # (B, H, L)
    if job.lse is not None:
        undecided |= np.isnan(job.lse)
    key_positions = np.arange(job.key.shape[2])
    for batch, head, row in zip(*np.nonzero(undecided)):
        keys = np.flatnonzero(allowed_routes(np.array([row]), key_positions, job.spans)[0])
        sink = None if job.sinks is None else float(job.sinks[batch, head])
        if len(keys) == 0:                     # the sink alone: output 0, lse its logit
            job.output[batch, head, row] = 0
            if job.lse is not None:
                job.lse[batch, head, row] = -np.inf if sink is None else sink
            continue
        bias = job.alibi(slice(head, head + 1), np.array([row]), keys)
        row_bias = None if bias is None else bias[batch, 0]              # (n,)
        row_keys, query = job.key[batch, head, keys], job.query[batch, head, row]
        if np.isnan(job.output[batch, head, row]).any():
            job.output[batch, head, row] = exact_row(
                row_keys, query, job.scale, row_bias, job.value[batch, head, keys], None,
                sink)[1]
        if job.lse is not None and np.isnan(job.lse[batch, head, row]):
            job.lse[batch, head, row] = exact_row_lse(row_keys, query, job.scale, row_bias,
                                                      sink)


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
