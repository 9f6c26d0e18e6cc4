"""The package metadata installs quietly: an SPDX license string, a setuptools that reads it."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_string_and_setuptools_can_read_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"      # not the deprecated {text = ...} table
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    (setuptools,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    minimum = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools)
    assert minimum and int(minimum[1]) >= 77           # SPDX strings arrived in setuptools 77



def test_every_subpackage_and_the_replay_assets_are_installed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package = ROOT / "routing_sim"
    found = {".".join(("routing_sim",) + path.parent.relative_to(package).parts)
             for path in package.rglob("__init__.py")
             if path.relative_to(package).parts[0] not in ("scenarios", "benchmarks")}
    found |= {"routing_sim.scenarios", "routing_sim.benchmarks"}       # the symlinked folders
    assert set(project["tool"]["setuptools"]["packages"]) == found
    patterns = project["tool"]["setuptools"]["package-data"]["routing_sim.views.replay"]
    assets = [path for path in (package / "views" / "replay").iterdir() if path.suffix != ".py"
              and path.name != "__pycache__"]
    assert len(assets) == 4 and all(any(a.match(glob) for glob in patterns) for a in assets)
