"""A pytest plugin: the fixture ``attention_oracle`` checks a kernel in one line of a test.

Load it from your ``conftest.py``::

    pytest_plugins = ["routing_sim.testing.pytest_plugin"]

then ask for the fixture::

    def test_my_kernel(attention_oracle):
        attention_oracle(my_kernel, features=["causal", "gqa"])

``attention_oracle(fn, **options)`` runs :func:`~routing_sim.testing.check_attention` with
the options (``layout``, ``features``, ``dtype``, ``cases``, ``seed``, ``name``) and
returns the report when ``fn`` passes; otherwise the test fails with the report (each
failure's minimal case, where it diverges and its reproducer). The plugin adds two
command-line options: ``--oracle-cases N`` (the search's size when a test gives no
``cases``; default 100, 0: the battery only) and ``--oracle-seed N`` (the seed when a
test gives none). It needs pytest, not hypothesis (without hypothesis the battery runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .check import check_attention
from .report import Report

__all__ = ["attention_oracle", "pytest_addoption"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--oracle-cases`` and ``--oracle-seed``: the defaults of ``attention_oracle``."""
    group = parser.getgroup("routing_sim", "routing_sim's attention oracle")
    group.addoption("--oracle-cases", type=int, default=100, metavar="N",
                    help="hypothesis cases per attention_oracle check when the test gives "
                         "no cases= (default 100; 0: the fixed battery only)")
    group.addoption("--oracle-seed", type=int, default=0, metavar="N",
                    help="the seed of attention_oracle's search when the test gives none "
                         "(default 0)")


@pytest.fixture
def attention_oracle(request: pytest.FixtureRequest) -> Callable[..., Report]:
    """Check an attention kernel against routing_sim's oracle; fail the test if it fails.

    Returns a function ``check(fn, **options)`` taking
    :func:`~routing_sim.testing.check_attention`'s options, which returns the report
    of a kernel that passes.
    """
    defaults = {"cases": request.config.getoption("--oracle-cases"),
                "seed": request.config.getoption("--oracle-seed")}

    def check(fn: Callable, **options: Any) -> Report:
        report = check_attention(fn, **{**defaults, **options})
        if not report.passed:
            pytest.fail(str(report), pytrace=False)
        return report

    return check
