"""Attention across machines: context-parallel protocols on simulated devices.

:func:`context_parallel` shards a sequence over a :class:`~routing_sim.Cluster` and runs
Ring Attention, all-gather context parallelism, DeepSpeed-Ulysses or tree decoding as
explicit transfers on SimPy, returning the exact output with the timing and bytes of every
step (:class:`ParallelRun`). :mod:`.cluster` describes the devices and their links
(:class:`~routing_sim.Cluster`).

:mod:`.sweep` runs any experiment over a grid of parameters, in this process or across real
machines (``concurrent.futures``, Dask): :func:`~routing_sim.sweep`, with :func:`measure` as
the context-parallel sweep point.
"""

from __future__ import annotations

from .api import context_parallel
from .cluster import Cluster
from .layouts import LAYOUTS, shard
from .measure import measure
from .run import ParallelRun, ParallelStats
from .strategies import STRATEGIES
from .trace import ParallelTrace

__all__ = ["LAYOUTS", "STRATEGIES", "Cluster", "ParallelRun", "ParallelStats", "ParallelTrace",
           "context_parallel", "measure", "shard"]
