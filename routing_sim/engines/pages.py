"""Memory pages for a run's arrays: ordinary pages, not numpy's huge-page advice.

A run allocates its per-route arrays (scores, shares, arrival times, ...) fresh, and
numpy asks the kernel to back every array of 4 MB and more with transparent huge pages
(``madvise(MADV_HUGEPAGE)``; see numpy's "Global state" page). Where a fresh huge page is
expensive to fault in, that advice dominates a run: in virtual machines that hand free
memory back to their host (free page reporting: Firecracker and many cloud sandboxes) a
free 2 MB block is discarded by the host and faulted in again on its next use, and where
the THP defrag setting is ``madvise`` a fault may stall in compaction. Measured on this
project's 2-core Firecracker machine, n = 131,072 tokens in a causal window of 128 + 4
sinks: 0.9-1.1 s with ordinary pages, 2.6-6.0 s with huge pages; the full graph at
n = 1024 x 8 heads: 25 M routes/s against 3.5 M. Where huge pages are cheap, ordinary
pages cost a run a few percent at most: its arrays are read a few times each.

So :func:`~routing_sim.simulate` and the backward pass run inside :func:`small_pages`.
The setting is numpy's own, process-wide, and restored when the outermost run ends; a
user who sets ``NUMPY_MADVISE_HUGEPAGE`` has chosen, and routing_sim leaves it alone.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable, Iterator

__all__ = ["huge_pages_advised", "small_pages"]


def _numpy_switch() -> Callable[[bool], bool] | None:
    """numpy's runtime switch for the advice (it returns the previous setting), if any."""
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):   # numpy 2, numpy 1
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        switch = getattr(module, "_set_madvise_hugepage", None)
        if switch is not None:
            return switch
    return None


class _Pages:
    """How many runs are inside :func:`small_pages`, and numpy's setting before the first."""

    def __init__(self) -> None:
        self.switch = _numpy_switch()
        self.lock = threading.Lock()
        self.runs = 0
        self.before = True

    def enter(self) -> None:
        with self.lock:
            if self.runs == 0 and self.switch is not None:
                self.before = self.switch(False)
            self.runs += 1

    def leave(self) -> None:
        with self.lock:
            self.runs -= 1
            if self.runs == 0 and self.switch is not None:
                self.switch(self.before)


_PAGES = _Pages()


def huge_pages_advised() -> bool | None:
    """Whether numpy currently advises huge pages for large arrays (None: no switch).

    Examples
    --------
    >>> with small_pages():
    ...     huge_pages_advised()
    False
    """
    if _PAGES.switch is None:
        return None
    with _PAGES.lock:
        setting = _PAGES.switch(False)
        _PAGES.switch(setting)
    return setting


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """Allocate with ordinary pages inside this block; usable as a decorator too.

    Nested and concurrent blocks share one setting, restored when the last one ends.
    Does nothing when ``NUMPY_MADVISE_HUGEPAGE`` is set (the user's choice).

    Examples
    --------
    >>> before = huge_pages_advised()
    >>> with small_pages():
    ...     with small_pages():
    ...         huge_pages_advised()
    False
    >>> huge_pages_advised() == before
    True
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        yield
        return
    _PAGES.enter()
    try:
        yield
    finally:
        _PAGES.leave()
