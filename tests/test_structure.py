"""The package's shape, as a reviewer reads it from the imports: rooms (subpackages and the
root modules) on floors, imports running one way down the floors, the matrix reference
independent of the simulator, no import cycle, and no module reading another's private
members."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import routing_sim

PACKAGE = Path(routing_sim.__file__).parent
# The scenario library and the benchmarks are symlinked in from the top of the checkout:
# scripts that use the package as a user does, not rooms of it.
OUTSIDE = {"scenarios", "benchmarks"}
# The floors, bottom up, in the order the data flows (docs/design.md draws them). A room
# imports, at load time or inside a function, only itself and rooms on lower floors. An
# import under ``if TYPE_CHECKING:`` only names a type for the checker (a view annotating
# the Run it draws) and may point anywhere. The views sit low: they read a finished run by
# its attributes and need only the message kinds and the time format, while the results
# (``run.to_html()``, the notebook view) call them. ``routing_sim/__init__`` is the front door:
# it re-exports from every room.
FLOORS = [
    {"errors"},
    {"options"},
    {"network"},
    {"inputs", "views"},
    {"routes"},
    {"numerics", "trace"},
    {"reference"},
    {"engines"},
    {"results"},
    {"simulation"},
    {"nn", "parallel", "hf", "testing"},
    {"cli"},
]
FLOOR = {room: number for number, rooms in enumerate(FLOORS) for room in rooms}
# What the matrix reference may reach: the arguments, the routes and the arithmetic it
# shares with the simulator (exact mode must round identically in both), never a module
# that sends, numbers or times a message, nor the route table the simulator addresses
# messages with.
REFERENCE_MAY_REACH = {"errors", "options", "inputs", "routes", "numerics", "reference"}
# Names a leading underscore does not make private: NamedTuple's public API, dunders.
PUBLIC_UNDERSCORE = {"_asdict", "_fields", "_replace", "_make", "_field_defaults",
                     "_repr_html_", "_ipython_display_"}


def modules(package: Path, outside: set[str] = OUTSIDE) -> dict[str, Path]:
    """Every module of a package by dotted name (``routing_sim.x.y``), but those in the
    folders ``outside``."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[0] in outside:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package.name,) + parts)] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name an ``ImportFrom`` refers to."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def imports(module: str, path: Path, known: set[str]) -> dict[str, str]:
    """The package modules ``module`` imports, each with how: ``"load"`` (module level),
    ``"deferred"`` (inside a function) or ``"typing"`` (under ``if TYPE_CHECKING:``)."""
    found: dict[str, str] = {}
    rank = {"load": 0, "deferred": 1, "typing": 2}

    def add(target: str, how: str) -> None:
        while target and target not in known:       # routing_sim.a.b.name -> routing_sim.a.b
            target = target.rpartition(".")[0]
        # Importing routing_sim.a.b first runs routing_sim/a/__init__.py: a parent package
        # is not an import of its own child, or every package would be a cycle.
        if target and target != module and not module.startswith(target + "."):
            if target not in found or rank[how] < rank[found[target]]:
                found[target] = how

    def visit(node: ast.AST, how: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for statement in child.body:
                    visit_one(statement, "typing")
                for statement in child.orelse:
                    visit_one(statement, how)
                continue
            inner = how
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = "deferred" if how == "load" else how
            visit_one(child, inner)

    def visit_one(node: ast.AST, how: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, how)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node)
            for alias in node.names:                      # a module, or a name in one
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base, how)
        visit(node, how)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), "load")
    return found


def arrows(package: Path) -> list[tuple[str, str, str]]:
    """``(importer, imported, how)`` for every import between modules of the package."""
    found = modules(package)
    return sorted((module, target, how) for module, path in found.items()
                  for target, how in imports(module, path, set(found)).items())


def room(module: str) -> str:
    """The subpackage or root module a module lives in (``routing_sim.engines.fast.barrier``
    -> ``engines``); the package itself for ``routing_sim/__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward(found: list[tuple[str, str, str]]) -> list[str]:
    """The imports that run up (or across) the floors, as sentences."""
    wrong = []
    for module, target, how in found:
        here, there = room(module), room(target)
        if how == "typing" or here == there or here not in FLOOR or there in OUTSIDE:
            continue
        if there not in FLOOR or FLOOR[there] >= FLOOR[here]:
            wrong.append(f"{module} ({here}, floor {FLOOR[here]}) imports {target} "
                         f"({there}, floor {FLOOR.get(there)}) {how}")
    return wrong


def reach(found: list[tuple[str, str, str]], start: set[str]) -> set[str]:
    """Every module that importing ``start`` runs (load-time and deferred imports, and
    the ``__init__`` of each package on the way)."""
    runtime: dict[str, set[str]] = {}
    for module, target, how in found:
        if how != "typing":
            runtime.setdefault(module, set()).add(target)
    seen: set[str] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += runtime.get(module, set())
        parts = module.split(".")
        todo += [".".join(parts[:cut]) for cut in range(2, len(parts))]     # parents
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


MODULES = modules(PACKAGE)
ARROWS = arrows(PACKAGE)
# Every module for the private-read check, the symlinked scenarios and benchmarks too.
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path))
         for name, path in modules(PACKAGE, outside=set()).items()}


def test_every_module_lives_in_a_room_on_a_floor():
    assert len(MODULES) > 60 and len(ARROWS) > 200, "the parser found too little"
    assert {room(module) for module in MODULES} - {"routing_sim"} == set(FLOOR)
    # At the root only the front door and three modules; every other job has its room.
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == [
        "__init__.py", "errors.py", "options.py", "simulation.py"]


def test_imports_run_one_way_down_the_floors():
    assert upward(ARROWS) == []


def test_a_planted_import_up_the_floors_is_caught(tmp_path):
    package = tmp_path / "routing_sim"
    files = {
        "__init__.py": "from .simulation import simulate\n",
        "simulation.py": "from .engines.plain import step\ndef simulate(): return step()\n",
        "engines/__init__.py": "",
        "engines/plain.py": "from ..reference.matrix import attention\n"
                            "def step(): return attention()\n",
        "reference/__init__.py": "",
        # the planted violation: the reference reaching the engines inside a function,
        # beside an allowed type-only import of them
        "reference/matrix.py": "from typing import TYPE_CHECKING\n"
                               "if TYPE_CHECKING:\n    from ..engines.plain import step\n"
                               "def attention():\n    from ..engines import plain\n"
                               "    return plain\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    found = arrows(package)
    assert ("routing_sim.reference.matrix", "routing_sim.engines.plain", "typing") not in found
    assert upward(found) == ["routing_sim.reference.matrix (reference, floor 6) imports "
                             "routing_sim.engines.plain (engines, floor 7) deferred"]
    assert "routing_sim.engines.plain" in reach(found, {"routing_sim.reference.matrix"})


def test_the_matrix_reference_never_reaches_the_simulator():
    reference = {module for module in MODULES if room(module) == "reference"}
    reached = reach(ARROWS, reference)
    assert "routing_sim.routes.problem" in reached and "routing_sim.numerics.exact" in reached
    assert {room(module) for module in reached} <= REFERENCE_MAY_REACH
    assert "routing_sim.routes.table" not in reached


def test_the_package_imports_have_no_cycles():
    load_time: dict[str, set[str]] = {}
    for module, target, how in ARROWS:
        if how == "load":
            load_time.setdefault(module, set()).add(target)
    assert load_time["routing_sim.simulation"], "the import graph is empty: the parser is wrong"
    assert cycles(load_time) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _private_reads(tree: ast.Module) -> list[tuple[int, str]]:
    """``x._name`` where ``x`` is not ``self``/``cls`` and ``_name`` is not defined in
    this module: a read of some other module's private member. Names imported from the
    package (``from .graphs import _count``) count too; a third-party module's private
    type in an annotation (``argparse._ArgumentGroup``) is not ours to rename."""
    own: set[str] = set()
    external: set[str] = set()
    reads = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            external.update((alias.asname or alias.name).split(".")[0] for alias in node.names
                            if not alias.name.startswith("routing_sim"))
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "")
                                                   .startswith("routing_sim")):
            reads += [(node.lineno, f"import {alias.name}") for alias in node.names
                      if alias.name.startswith("_") and not alias.name.startswith("__")]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            own.add(node.target.id)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        name = node.attr
        if name.startswith("__") and name.endswith("__") or name in PUBLIC_UNDERSCORE:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", *external):
            continue
        if name in own:
            continue
        reads.append((node.lineno, f"{ast.unparse(node.value)}.{name}"))
    return reads


# transformers keeps these on its own objects (a model's config, its output collector, a
# model class) with no public twin; the backend reads them to know which attention a model
# runs, where attention weights are collected and whether a family has an SDPA path.
TRANSFORMERS_PRIVATE = {"_attn_implementation", "_active_collector", "_supports_sdpa"}


@pytest.mark.parametrize("module", sorted(TREES))
def test_no_module_reads_another_modules_private_members(module):
    reads = _private_reads(TREES[module])
    if module.startswith("routing_sim.hf"):
        reads = [(line, read) for line, read in reads
                 if read.rsplit(".", 1)[-1] not in TRANSFORMERS_PRIVATE]
    assert reads == []


def test_the_private_read_finder_finds_them():
    tree = ast.parse("import argparse\nfrom .graphs import _count\nclass A:\n"
                     "    def f(self, run, g: argparse._ArgumentGroup):\n"
                     "        return self._x, run._y\n")
    assert _private_reads(tree) == [(2, "import _count"), (5, "run._y")]
