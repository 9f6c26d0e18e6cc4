"""What an engine receives: one simulation, set up.

:func:`~routing_sim.simulate` checks the arguments, builds the route table and each route's
latency, and hands an engine one :class:`Setup` in place of a long argument list. Both
engines read the same object: the plain engine (:mod:`.plain`) and the fast nodes
(:mod:`.fast.two_phase`, :mod:`.fast.online`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..network.conditions import Network
from ..network.messages import Kind
from ..numerics.kernels import Kernels
from ..options import EngineOptions
from ..routes.problem import Problem
from ..routes.table import RouteTable

__all__ = ["Setup"]


@dataclass(frozen=True)
class Setup:
    """One simulation as an engine receives it.

    Attributes
    ----------
    problem : Problem
        The checked inputs: q, k, v per group, masks and biases, dropout, mods, sinks.
    routes : RouteTable
        Every route ``j -> i`` in canonical order (what messages are addressed by).
    network : Network
        Timing and faults.
    latency : ndarray, shape (R,)
        Each route's base latency: the network's, or the token graph's edge attribute.
    nbytes : dict of Kind to int
        Each message kind's payload size in bytes.
    options : EngineOptions
        The engine's choices (softmax, numerics, routing, top_k, delivery), checked.
    keep_stream : bool
        Online softmax: keep each arrival's state for ``run.stream(i)`` (a full trace).
    """

    problem: Problem
    routes: RouteTable
    network: Network
    latency: np.ndarray                                                # (R,)
    nbytes: dict[Kind, int]
    options: EngineOptions
    keep_stream: bool = False

    @property
    def kernels(self) -> Kernels:
        """The per-node arithmetic of ``options.numerics`` (float or exact)."""
        return Kernels(self.options.numerics)
