"""routing_sim: attention as a routing protocol between token nodes, on a discrete-event
simulator, proven equal to matrix-form attention.

>>> import numpy as np, routing_sim as rs
>>> q = k = v = np.eye(3)
>>> bool(np.array_equal(rs.simulate(q, k, v).output.shape, (3, 3)))
True
"""


from . import budget, graphs, masks, mods, patterns, verify
from .cluster import Cluster
from .decoder import Decoder, DecodeStep
from .errors import (
    DeliveryError,
    DTypeError,
    EmptyRowError,
    InvalidArgumentError,
    MaskWarning,
    MemoryBudgetError,
    NumericalError,
    RoutingSimError,
    ShapeError,
    SummaryTraceError,
)
from .messages import Kind
from .modules import MultiHeadAttention
from .network import Crash, Network
from .parallel import ParallelRun, context_parallel
from .positions import RotaryEmbedding
from .reference import attention, attention_backward
from .routeset import RouteSet
from .run import DroppedRoute, Route, RoutingTable, Run
from .simulation import simulate
from .stats import Stats
from .sweep import sweep
from .trace import Trace

__all__ = [
    "Cluster",
    "Crash",
    "DTypeError",
    "DecodeStep",
    "Decoder",
    "DeliveryError",
    "DroppedRoute",
    "EmptyRowError",
    "InvalidArgumentError",
    "Kind",
    "MaskWarning",
    "MemoryBudgetError",
    "MultiHeadAttention",
    "Network",
    "NumericalError",
    "ParallelRun",
    "RotaryEmbedding",
    "Route",
    "RouteSet",
    "RoutingSimError",
    "RoutingTable",
    "Run",
    "ShapeError",
    "Stats",
    "SummaryTraceError",
    "Trace",
    "attention",
    "attention_backward",
    "budget",
    "context_parallel",
    "graphs",
    "masks",
    "mods",
    "patterns",
    "plots",
    "simulate",
    "sweep",
    "verify",
]

__version__ = "0.1.0"


def __getattr__(name: str):
    """``rs.hf`` (torch, transformers) and ``rs.plots`` (matplotlib when a plot is drawn)
    load on first use, so the core never needs their extras."""
    if name in ("hf", "plots"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'routing_sim' has no attribute {name!r}")
