"""The ``routing-sim`` command: demo, scenarios, traces, replay pages, plots, verify, sweep,
check.

:mod:`.command` parses the command line and runs each subcommand (``main`` is the console
script); :mod:`.arguments` holds its argument types, :mod:`.pattern_options` the
``--pattern`` options, :mod:`.sweep` the ``sweep`` subcommand, :mod:`.check` the ``check``
subcommand, :mod:`.verify_cases` the random cases of ``verify`` and :mod:`.demo` the demo's
story.
"""

from __future__ import annotations

from .command import main

__all__ = ["main"]
