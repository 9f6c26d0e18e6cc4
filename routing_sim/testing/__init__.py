"""The oracle for other attention kernels: check yours against routing_sim.

:func:`check_attention` runs a function (numpy or torch, in SDPA's or FlashAttention's
layout) on a battery of edge cases and a hypothesis search, compares every answer with
the correctly rounded result within a derived tolerance, shrinks each failure to a
minimal case and says where it first diverges (the scores, the row max, the normaliser,
a share, the output). :func:`assert_attention_close` is the one-line assertion for your
own tests, :mod:`~routing_sim.testing.strategies` (hypothesis) their inputs.

:mod:`.cases` holds the cases and the battery, :mod:`.oracle` the expected answers and
tolerances, :mod:`.calling` the layouts and the reproducers, :mod:`.diagnose` the probes,
:mod:`.check` the checks, :mod:`.report` the report, :mod:`.precision` the dtypes;
:mod:`.pytest_plugin` is the fixture ``attention_oracle`` (``pytest_plugins = [...]``).
"""

from __future__ import annotations

import importlib

from .calling import load_function
from .cases import FEATURES, Case
from .check import assert_attention_close, check_attention
from .report import Failure, FeatureResult, Report

__all__ = ["FEATURES", "Case", "Failure", "FeatureResult", "Report", "assert_attention_close",
           "check_attention", "load_function", "strategies"]


def __getattr__(name: str):
    """``rs.testing.strategies`` imports hypothesis on first use only."""
    if name == "strategies":
        return importlib.import_module(f"{__name__}.strategies")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
