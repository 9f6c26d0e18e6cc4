"""The public API is exactly what __all__ says, and the core never imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import routing_sim as rs


def test_public_names_are_exactly_all():
    public = {name for name in vars(rs) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(rs, name)).__name__ == "module"}
    assert rs.__all__ == sorted(rs.__all__)
    assert set(rs.__all__) == (public - modules) | {"budget", "graphs", "masks", "mods",
                                                    "patterns", "plots", "verify"}


def package_imports(module: str) -> set[str]:
    """Modules of routing_sim (dotted, below the package) that ``module`` imports, directly
    or through others."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = Path(rs.__file__).parent.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                todo.append(".".join(base[:len(base) - node.level + 1] + [node.module]))
    return seen


def test_reference_does_not_import_the_simulator():
    reached = package_imports("reference.matrix")
    assert "routes.problem" in reached
    # numerics is shared arithmetic (exact mode must round identically in both);
    # nothing that sends, routes or times a message may be reached.
    assert not reached & {"engines.fast.two_phase", "network.transport", "network.conditions",
                          "simulation", "results.run", "routes.table", "engines.state",
                          "engines.fast.barrier", "engines.fast.nodes", "engines.fast.online",
                          "trace.stats", "network.wave_times", "trace.log", "nn.multihead",
                          "nn.decoder", "network.messages", "network.deliveries",
                          "engines.plain", "parallel.cluster", "engines.fast.backward",
                          "reference.verify", "parallel.sweep"}


def test_plots_are_reachable_from_the_package_without_importing_matplotlib():
    code = ("import sys, routing_sim as rs; figure = rs.plots.heatmap; "
            "print(figure.__module__, 'matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["routing_sim.views.plots", "False"]


def test_core_does_not_import_torch_or_matplotlib():
    code = "import sys, routing_sim; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]
