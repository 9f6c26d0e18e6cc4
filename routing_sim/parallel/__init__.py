"""Attention across machines: context-parallel protocols on simulated devices.

:func:`context_parallel` shards a sequence over a :class:`~routing_sim.Cluster` and runs
Ring Attention, all-gather context parallelism, DeepSpeed-Ulysses or tree decoding as
explicit transfers on SimPy, returning the exact output with the timing and bytes of every
step (:class:`ParallelRun`).
"""

from __future__ import annotations

from .api import context_parallel
from .layouts import LAYOUTS, shard
from .measure import measure
from .run import ParallelRun, ParallelStats
from .strategies import STRATEGIES
from .trace import ParallelTrace

__all__ = ["LAYOUTS", "STRATEGIES", "ParallelRun", "ParallelStats", "ParallelTrace",
           "context_parallel", "measure", "shard"]
