"""Every public function and method of routing_sim has a type hint on each parameter
(``self``/``cls`` aside) and on its return, so mypy checks its body and readers see the
types (issue 14 item 5)."""

from __future__ import annotations

import ast
from pathlib import Path

import routing_sim

PACKAGE = Path(routing_sim.__file__).parent
SYMLINKED = {"scenarios", "benchmarks"}              # top-level folders, not the package
# Functions allowed to stay unannotated (none: keep it that way).
NOT_YET: set[str] = set()


def _functions(body: list[ast.stmt], prefix: str = ""):
    """(qualified name, node) of the functions defined in ``body``: module level, in
    classes (nested too) and under ``if`` (``if TYPE_CHECKING:`` and the like)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, ast.If):
            yield from _functions(node.body, prefix)
            yield from _functions(node.orelse, prefix)


def unannotated(tree: ast.Module) -> dict[str, list[str]]:
    """Public functions (name without a leading underscore) -> their parameters without
    a type hint, and ``"return"`` when the return has none."""
    found = {}
    for name, function in _functions(tree.body):
        if function.name.startswith("_"):
            continue
        arguments = function.args
        positional = arguments.posonlyargs + arguments.args
        every = positional + arguments.kwonlyargs + [
            extra for extra in (arguments.vararg, arguments.kwarg) if extra is not None]
        bound = positional[:1] if positional and positional[0].arg in ("self", "cls") else []
        missing = [a.arg for a in every if a.annotation is None and a not in bound]
        if function.returns is None:
            missing.append("return")
        if missing:
            found[name] = missing
    return found


def _package_unannotated() -> dict[str, list[str]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in SYMLINKED:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, missing in unannotated(tree).items():
            found[f"routing_sim/{relative.as_posix()}:{name}"] = missing
    return found


def test_every_public_parameter_and_return_has_a_type_hint():
    found = _package_unannotated()
    assert {name: missing for name, missing in found.items() if name not in NOT_YET} == {}


def test_the_allowlist_names_only_functions_still_unannotated():
    assert NOT_YET <= set(_package_unannotated())


def test_the_finder_finds_an_unannotated_function():
    tree = ast.parse("class A:\n"
                     "    def f(self, x: int, y, *args, z=1, **kw) -> int: ...\n"
                     "    @classmethod\n"
                     "    def g(cls) -> None: ...\n"
                     "    def _private(self, x): ...\n"
                     "def h(a: int, b: str = ''): ...\n"
                     "def k(self) -> None: ...\n"
                     "def _hidden(x): ...\n")
    assert unannotated(tree) == {"A.f": ["y", "z", "args", "kw"], "h": ["return"]}
