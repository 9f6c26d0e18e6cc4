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
