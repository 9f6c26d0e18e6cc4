"""The public API is exactly what __all__ says, every module path a user wrote still
imports, and the core never imports torch."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import routing_sim as rs

ROOT = Path(__file__).resolve().parent.parent
# The flat layout of routing_sim 0.1 (before the subpackages): every module path and the
# names its __all__ exported, read from the last flat commit (ebd1d92) with ast.
FLAT_LAYOUT = json.loads((Path(__file__).parent / "flat_layout.json").read_text())


def test_public_names_are_exactly_all():
    public = {name for name in vars(rs) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(rs, name)).__name__ == "module"}
    assert rs.__all__ == sorted(rs.__all__)
    assert set(rs.__all__) == (public - modules) | {"budget", "graphs", "masks", "mods",
                                                    "patterns", "plots", "testing", "verify"}


def test_dir_shows_the_public_api_not_the_modules_it_is_built_from():
    assert dir(rs) == sorted([*rs.__all__, "__version__", "hf"])
    assert not {"barrier_whole", "exact_row", "strides", "engines", "run"} & set(dir(rs))


@pytest.mark.parametrize("old", sorted(FLAT_LAYOUT))
def test_every_module_path_of_the_flat_layout_still_imports_with_its_names(old):
    module = importlib.import_module(f"routing_sim.{old}")
    missing = [name for name in FLAT_LAYOUT[old] if not hasattr(module, name)]
    assert missing == []
    # the module itself, under the name of its new home, not a copy or a stub (no flat
    # file is left at the root: tests/test_structure.py lists the root)
    assert sys.modules[module.__name__] is module


def test_an_old_path_and_the_new_one_are_one_module():
    from routing_sim.engines.plain import PlainEngine
    from routing_sim.plain import PlainEngine as old

    assert old is PlainEngine
    import routing_sim.backward
    import routing_sim.engines.fast.backward

    assert routing_sim.backward is routing_sim.engines.fast.backward
    assert rs.run is sys.modules["routing_sim.results.run"]


def _documented_paths() -> list[str]:
    """Every dotted path below ``routing_sim.`` or ``rs.`` the README, the docs, the
    scenarios, the benchmarks and the package's own docstrings and code name."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "routing_sim").rglob("*.py")),
             *sorted((ROOT / "scenarios").rglob("*.py")),
             *sorted((ROOT / "benchmarks").rglob("*.py"))]
    found = set()
    for page in pages:
        for match in re.finditer(r"(?<![\w.])(routing_sim|rs)((?:\.[A-Za-z_]\w*)+)",
                                 page.read_text(encoding="utf-8")):
            found.add("routing_sim" + match.group(2))
    return sorted(found)


DOCUMENTED = _documented_paths()
HAS_HF = all(importlib.util.find_spec(name) for name in ("torch", "transformers"))


@pytest.mark.parametrize("path", DOCUMENTED)
def test_every_documented_path_resolves(path):
    if path.startswith("routing_sim.hf") and not HAS_HF:
        pytest.skip("routing_sim.hf needs torch and transformers")
    found: object = rs
    walked = "routing_sim"
    for part in path.split(".")[1:]:
        walked += f".{part}"
        if not hasattr(found, part) and type(found).__name__ == "module":
            found = importlib.import_module(walked)
        else:
            found = getattr(found, part)


def test_the_documented_paths_were_found():
    assert {"routing_sim.graphs", "routing_sim.run.WEIGHTS_LIMIT", "routing_sim.hf.tiny",
            "routing_sim.numerics.merge_states", "routing_sim.pages"} <= set(
        DOCUMENTED)


def test_plots_are_reachable_from_the_package_without_importing_matplotlib():
    code = ("import sys, routing_sim as rs; figure = rs.plots.heatmap; "
            "print(figure.__module__, 'matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["routing_sim.views.plots", "False"]


def test_core_does_not_import_torch_or_matplotlib():
    code = "import sys, routing_sim; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]
