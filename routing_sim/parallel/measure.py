"""One context-parallel run on random inputs, summarised as a flat dict: a sweep point."""

from __future__ import annotations

import numpy as np

from ..options import Numerics
from ..reference.matrix import attention
from .api import Strategy, context_parallel
from .cluster import Cluster, Topology
from .layouts import Layout

__all__ = ["measure"]


def measure(strategy: Strategy = "ring", devices: int = 4, tokens: int = 64, heads: int = 4,
            dim: int = 16, queries: int = 1, bandwidth: float = 1e10, latency: float = 1e-6,
            flops: float = 1e12, topology: Topology = "ring", layout: Layout = "contiguous",
            is_causal: bool = False, numerics: Numerics = "float",
            transit_dtype: str | None = None, seed: int = 0) -> dict[str, float]:
    """Run ``strategy`` on seeded normal inputs ``(heads, tokens, dim)`` and summarise it.

    ``queries`` is the number of query rows for ``"tree"`` (decoding); the other strategies
    use ``tokens`` queries. The record holds ``ParallelStats.as_dict()``, the block size
    ``c = tokens / devices``, the cluster's ``c*`` and ``max_relative_error`` against
    :func:`routing_sim.attention` (in exact mode: against its exact output).

    Examples
    --------
    >>> record = measure("ulysses", devices=2, tokens=8, heads=2, dim=4)
    >>> record["bytes_sent"] == 2 * 4 * (2 - 1) * (8 // 2) * (2 // 2) * 4 * 8
    True
    >>> record["max_relative_error"] < 1e-12
    True
    """
    rng = np.random.default_rng(seed)
    rows = queries if strategy == "tree" else tokens
    query = rng.normal(size=(heads, rows, dim))                        # (H, L, d)
    key, value = rng.normal(size=(2, heads, tokens, dim))              # (H, S, d) each
    cluster = Cluster(devices=devices, bandwidth=bandwidth, latency=latency, flops=flops,
                      topology=topology)
    run = context_parallel(query, key, value, strategy=strategy, cluster=cluster, layout=layout,
                           is_causal=is_causal, numerics=numerics, transit_dtype=transit_dtype,
                           trace="summary")
    reference = attention(query, key, value, is_causal=is_causal, numerics=numerics)
    error = float(np.abs(run.output - reference).max() / np.abs(reference).max())
    return {**run.stats.as_dict(), "block": tokens / devices,
            "critical_block": cluster.critical_block(query.dtype.itemsize),
            "max_relative_error": error}
