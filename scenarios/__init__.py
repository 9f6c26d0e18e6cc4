"""The scenario library: short scripts that each tell one story of attention as routing.

Run one as ``python scenarios/NAME.py`` or ``routing-sim run NAME``; ``routing-sim list``
shows them all. Each ends with its verdict against matrix attention.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["available", "load"]


def available() -> dict[str, str]:
    """Scenario names and their one-line summaries, in alphabetical order."""
    summaries = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        doc = load(module.name).__doc__ or ""
        summaries[module.name] = doc.strip().splitlines()[0] if doc.strip() else ""
    return summaries


def load(name: str):
    """Import one scenario module by name."""
    return importlib.import_module(f"{__name__}.{name}")
