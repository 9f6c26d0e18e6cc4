"""routing_sim: attention as a routing protocol between token nodes, on a discrete-event
simulator, proven equal to matrix-form attention.

The subpackages follow the data, from the user's arguments to what is shown of a run:
``inputs`` -> ``routes`` -> ``engines`` (token nodes on the ``network``, with ``numerics``)
-> ``results`` and ``trace`` -> ``views``; ``reference`` is the matrix form every run is
checked against; ``nn``, ``parallel``, ``hf`` and ``cli`` are built on top. docs/design.md
has the map, one line per module. Users import from here: ``import routing_sim as rs``.

>>> import numpy as np, routing_sim as rs
>>> q = k = v = np.eye(3)
>>> bool(np.array_equal(rs.simulate(q, k, v).output.shape, (3, 3)))
True
"""

import importlib as _importlib
import sys as _sys

from . import testing
from .engines import memory as budget
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
from .inputs import masks, mods
from .inputs.positions import RotaryEmbedding
from .network.conditions import Crash, Network
from .network.messages import Kind
from .nn.decoder import Decoder, DecodeStep
from .nn.multihead import MultiHeadAttention
from .options import EngineOptions
from .parallel import ParallelRun, context_parallel
from .parallel.cluster import Cluster
from .parallel.sweep import sweep
from .reference import verify
from .reference.kvcache import attention_with_kvcache
from .reference.matrix import attention, attention_backward
from .results.run import DroppedRoute, Route, RoutingTable, Run
from .routes import graphs, patterns
from .routes.route_set import RouteSet
from .simulation import simulate
from .trace.log import Trace
from .trace.stats import Stats
from .views import plots

__all__ = [
    "Cluster",
    "Crash",
    "DTypeError",
    "DecodeStep",
    "Decoder",
    "DeliveryError",
    "DroppedRoute",
    "EmptyRowError",
    "EngineOptions",
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
    "attention_with_kvcache",
    "budget",
    "context_parallel",
    "graphs",
    "masks",
    "mods",
    "patterns",
    "plots",
    "simulate",
    "sweep",
    "testing",
    "verify",
]

__version__ = "0.1.0"

# The flat layout's module paths (routing_sim 0.1) -> the module that does that job now.
# Each module is registered under its old name too, so ``import routing_sim.graphs``,
# ``from routing_sim.plain import PlainEngine`` and ``rs.run.WEIGHTS_LIMIT`` keep working
# with the very same module object (a patch through either name reaches the code).
_MOVED_MODULES = {
    "arrays": "inputs.arrays",
    "backward": "engines.fast.backward",
    "backward_tiles": "engines.fast.backward_tiles",
    "barrier": "engines.fast.barrier",
    "barrier_whole": "engines.fast.barrier",
    "budget": "engines.memory",
    "cli_args": "cli.arguments",
    "cluster": "parallel.cluster",
    "decoder": "nn.decoder",
    "deliveries": "network.deliveries",
    "demo": "cli.demo",
    "exact": "numerics.exact",
    "exact_row": "numerics.exact_row",
    "exports": "trace.exports",
    "graph_reading": "routes.graphs",
    "graphs": "routes.graphs",
    "masks": "inputs.masks",
    "messages": "network.messages",
    "mha_weights": "nn.multihead",
    "mods": "inputs.mods",
    "modules": "nn.multihead",
    "online": "engines.fast.online",
    "outbox": "network.transport",
    "pages": "engines.pages",
    "pattern_cli": "cli.pattern_options",
    "patterns": "routes.patterns",
    "plain": "engines.plain",
    "plain_run": "engines.plain_record",
    "plots": "views.plots",
    "positions": "inputs.positions",
    "protocol": "engines.fast.two_phase",
    "replay": "views.replay",
    "replay.cluster": "views.replay.cluster",
    "replay.data": "views.replay.data",
    "replay.notebook": "views.replay.notebook",
    "retries": "engines.fast.nodes",
    "routeset": "routes.route_set",
    "routing_table": "results.run",
    "run": "results.run",
    "run_build": "simulation",
    "segments": "reference.segments",
    "sparse": "routes.restrictions",
    "state": "engines.state",
    "stats": "trace.stats",
    "strides": "network.wave_times",
    "sweep": "parallel.sweep",
    "sweep_cli": "cli.sweep",
    "tiles": "numerics.tiles",
    "timers": "network.timers",
    "times": "views.time_format",
    "transport": "network.transport",
    "verify": "reference.verify",
    "verify_cases": "cli.verify_cases",
}
# Flat modules whose path a subpackage of the same name now holds: the subpackage also
# answers every name the old module exported (``routing_sim.numerics.merge_states``,
# ``routing_sim.inputs.prepare``). Set from here, the front door, so that no subpackage
# imports a room above its own to do it.
_TAKEN_PATHS = {
    "cli": "cli.command",
    "inputs": "routes.problem",
    "network": "network.conditions",
    "numerics": "numerics.kernels",
    "reference": "reference.matrix",
    "routes": "routes.table",
    "trace": "trace.log",
}


def _install_old_paths() -> None:
    for old, new in _MOVED_MODULES.items():
        _sys.modules[f"{__name__}.{old}"] = _importlib.import_module(f".{new}", __name__)
    for old, new in _TAKEN_PATHS.items():
        package = _importlib.import_module(f".{old}", __name__)
        module = _importlib.import_module(f".{new}", __name__)
        for name in module.__all__:
            if not hasattr(package, name):
                setattr(package, name, getattr(module, name))


_install_old_paths()


def __getattr__(name: str):
    """``rs.hf`` (torch, transformers) loads on first use, so the core never needs its
    extra; an old module path (``rs.run``, ``rs.messages``) answers with its module."""
    if name == "hf":
        return _importlib.import_module(f".{name}", __name__)
    if name in _MOVED_MODULES:
        return _sys.modules[f"{__name__}.{name}"]
    raise AttributeError(f"module 'routing_sim' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API: what ``__all__`` names, and the ``hf`` subpackage; not the modules
    the package is built from (``rs.engines.fast.barrier`` is there, but not listed)."""
    return sorted([*__all__, "__version__", "hf"])
