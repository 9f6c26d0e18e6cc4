"""The package's shape, as a reviewer reads it from the imports: one-way dependencies,
short modules, and no module reading another's private members."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import routing_sim

PACKAGE = Path(routing_sim.__file__).parent
MAX_LINES = 350
# Names a leading underscore does not make private: NamedTuple's public API, dunders.
PUBLIC_UNDERSCORE = {"_asdict", "_fields", "_replace", "_make", "_field_defaults",
                     "_repr_html_", "_ipython_display_"}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``routing_sim.x.y``), symlinked
    subpackages (scenarios, benchmarks) included."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(("routing_sim",) + parts)] = path
    return modules


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name an ``ImportFrom`` refers to."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".")
    is_package = MODULES[module].name == "__init__.py"
    base = package if is_package else package[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> set[str]:
    """The package modules ``module`` imports at load time (module level, not inside a
    function: a deferred import is how a module reaches an optional or later layer)."""
    found: set[str] = set()
    for node in TREES[module].body:
        statements = [node]
        if isinstance(node, ast.If):                          # if TYPE_CHECKING: ...
            continue
        if isinstance(node, ast.Try):
            statements = node.body
        for statement in statements:
            if isinstance(statement, ast.Import):
                found.update(a.name for a in statement.names)
            elif isinstance(statement, ast.ImportFrom):
                base = _resolve(module, statement)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in statement.names)
    return {name for name in found if name in MODULES and name != module}


def _graph() -> dict[str, set[str]]:
    graph = {module: _imports(module) for module in MODULES}
    # Importing routing_sim.a.b first runs routing_sim/a/__init__.py: a parent package
    # is not an edge of its own child, or every package would be a cycle.
    return {module: {t for t in targets if not module.startswith(t + ".")}
            for module, targets in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for target in sorted(graph[node]):
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


def test_the_package_imports_have_no_cycles():
    graph = _graph()
    assert graph["routing_sim.simulation"], "the import graph is empty: the parser is wrong"
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Modules over the limit, each waiting to be split by job (empty: every module fits). The
# test fails when one of them gets short (take it off the list) or another one gets long.
OVER_LIMIT: set[str] = set()


def test_no_module_is_longer_than_350_lines():
    long = {module for module, path in MODULES.items()
            if len(path.read_text().splitlines()) > MAX_LINES}
    assert long == OVER_LIMIT


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


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_reads_another_modules_private_members(module):
    assert _private_reads(TREES[module]) == []


def test_the_private_read_finder_finds_them():
    tree = ast.parse("import argparse\nfrom .graphs import _count\nclass A:\n"
                     "    def f(self, run, g: argparse._ArgumentGroup):\n"
                     "        return self._x, run._y\n")
    assert _private_reads(tree) == [(2, "import _count"), (5, "run._y")]
