"""The benchmark harness: interleaved runs, their best and median, and the table they fill.

A row times two or three sides (the simulation, its reference and, for the dense rows,
plain numpy under numpy's default page policy) in turns, ``a, b, c, a, b, c, ...``, so a
machine that is busy for a while slows every side alike, and reports the best and the
median of each side's runs. A side whose median is more than :data:`NOISY` times its best
is flagged in the row's notes: its best is then a lucky run, not a typical one.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from routing_sim.engines.pages import huge_pages_advised, small_pages

NOISY = 2.0          # a median above this many times its best is flagged "noisy"
MIN_PUBLISHED = 5    # runs per side of a table pasted into the README

COLUMNS = ("case", "runs", "simulate best", "simulate median", "reference",
           "reference best", "reference median", "ratio best", "ratio median",
           "numpy default best", "ratio to default", "messages", "messages/s", "peak RSS",
           "notes")
BEGIN = "<!-- benchmarks: begin (python -m benchmarks --markdown; pasted verbatim) -->"
END = "<!-- benchmarks: end -->"


@dataclass(frozen=True)
class Timing:
    """The seconds of each run of one side of a row, in the order they ran.

    Examples
    --------
    >>> timing = Timing((0.5, 0.2, 0.3, 0.9, 0.2))
    >>> timing.best, timing.median
    (0.2, 0.3)
    >>> timing.scaled(0.5).times
    (0.25, 0.1, 0.15, 0.45, 0.1)
    """

    times: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def scaled(self, factor: float) -> Timing:
        """Every run times ``factor``: per generated token, or at another rate."""
        return Timing(tuple(factor * seconds for seconds in self.times))


def interleave(sides: Sequence[Callable[[], Any]], repeats: int,
               clock: Callable[[], float] = time.perf_counter
               ) -> tuple[list[Timing], list[Any]]:
    """Run every side ``repeats`` times in turns (a, b, a, b, ...): each side's timing,
    and each side's last result.

    Examples
    --------
    >>> log = []
    >>> ticks = iter(range(100))
    >>> timings, results = interleave([lambda: log.append("sim") or 1,
    ...                                lambda: log.append("ref") or 2], 3,
    ...                               clock=lambda: next(ticks))
    >>> log
    ['sim', 'ref', 'sim', 'ref', 'sim', 'ref']
    >>> [timing.times for timing in timings], results
    ([(1, 1, 1), (1, 1, 1)], [1, 2])
    """
    times: list[list[float]] = [[] for _ in sides]
    results: list[Any] = [None] * len(sides)
    for _ in range(repeats):
        for index, side in enumerate(sides):
            results[index] = None         # a big run's last result is not held twice
            start = clock()
            results[index] = side()
            times[index].append(clock() - start)
    return [Timing(tuple(runs)) for runs in times], results


def with_small_pages(run: Callable[[], Any]) -> Callable[[], Any]:
    """``run`` under the page policy :func:`routing_sim.simulate` runs with (ordinary
    pages), so a reference allocates as the simulation does."""
    def paged() -> Any:
        with small_pages():
            return run()
    return paged


@dataclass(frozen=True)
class Row:
    """One line of the table. ``simulate`` None: the row did not run, ``note`` says why.

    ``default``: plain numpy under numpy's default page policy (huge-page advice on),
    interleaved with the two other sides; ``rss`` in MB.
    """

    case: str
    simulate: Timing | None = None
    reference: Timing | None = None
    reference_name: str = ""
    default: Timing | None = None
    messages: int = 0
    rss: float | None = None
    note: str = ""

    def notes(self) -> str:
        """The row's note, after a "noisy" flag for each side whose median is more than
        :data:`NOISY` times its best.

        Examples
        --------
        >>> Row("x", Timing((1.0, 3.1, 3.5)), Timing((1.0, 1.0, 1.1)), "numpy",
        ...     note="n=8").notes()
        'noisy: simulate median 3.1x best; n=8'
        """
        sides = (("simulate", self.simulate), (self.reference_name, self.reference),
                 ("numpy default", self.default))
        flags = [f"noisy: {name} median {timing.median / timing.best:.1f}x best"
                 for name, timing in sides
                 if timing is not None and timing.median > NOISY * timing.best]
        return "; ".join(flags + [self.note] if self.note else flags)

    def cells(self) -> tuple[str, ...]:
        """The row's cells, in the order of :data:`COLUMNS`."""
        if self.simulate is None:
            return (self.case, *["-"] * (len(COLUMNS) - 2), self.notes())
        sim, ref, default = self.simulate, self.reference, self.default
        return (self.case, str(len(sim.times)), seconds(sim.best), seconds(sim.median),
                self.reference_name or "-",
                seconds(ref.best) if ref else "-", seconds(ref.median) if ref else "-",
                f"{sim.best / ref.best:.2f}x" if ref else "-",
                f"{sim.median / ref.median:.2f}x" if ref else "-",
                seconds(default.best) if default else "-",
                f"{sim.best / default.best:.2f}x" if default else "-",
                f"{self.messages:,}", f"{self.messages / sim.best:,.0f}",
                f"{self.rss:,.0f} MB" if self.rss else "-", self.notes())


@dataclass(frozen=True)
class Case:
    """A row to measure: its name (what ``--only`` matches) and how to measure it."""

    name: str
    measure: Callable[[str, int], Row]      # (case name, repeats) -> its row

    def run(self, repeats: int) -> Row:
        return self.measure(self.name, repeats)


def skipped(reason: str) -> Callable[[str, int], Row]:
    """The measure of a row that cannot run here: the row says why."""
    return lambda case, repeats: Row(case, note=reason)


def seconds(duration: float) -> str:
    """``0.123 s``, or milliseconds below a tenth of a second.

    Examples
    --------
    >>> seconds(0.4441), seconds(0.0453)
    ('0.444 s', '45.30 ms')
    """
    return f"{duration:.3f} s" if duration >= 0.1 else f"{1e3 * duration:.2f} ms"


def table(rows: Sequence[Row]) -> str:
    """A markdown table of ``rows``, each column as wide as its widest cell.

    Examples
    --------
    >>> text = table([Row("full n=8 h=1", Timing((0.2, 0.3, 0.4)), Timing((0.1,) * 3),
    ...                   "numpy", messages=64)])
    >>> header_cells(text.splitlines()[2])[:9]
    ['full n=8 h=1', '3', '0.200 s', '0.300 s', 'numpy', '0.100 s', '0.100 s', '2.00x', '3.00x']
    """
    lines = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(COLUMNS) - 1)]
    text = ["| " + " | ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                              for column, (cell, width) in enumerate(zip(line, widths)))
            + f" | {line[-1]} |".rstrip() for line in lines]
    text.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|---|")
    return "\n".join(text)


def header_cells(line: str) -> list[str]:
    """The stripped cells of one markdown table line.

    Examples
    --------
    >>> header_cells("| case  | runs | notes |")
    ['case', 'runs', 'notes']
    """
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def machine() -> str:
    """Cores, CPU, memory, numpy and its BLAS (threadpoolctl's view if installed), python."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import numpy as np

    return (f"{cores} cores ({_cpu_name()}, {platform.machine()}), {memory:.0f} GB; numpy "
            f"{np.__version__}, {_blas()}; Python {platform.python_version()}")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _blas() -> str:
    if importlib.util.find_spec("threadpoolctl") is not None:
        from threadpoolctl import threadpool_info

        pools = [f"{pool['internal_api']} {pool['version']} ({pool['num_threads']} threads)"
                 for pool in threadpool_info() if pool.get("user_api") == "blas"]
        if pools:
            return "BLAS " + ", ".join(pools)
    import numpy as np

    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    threads = ", ".join(f"{name}={os.environ[name]}" for name in
                        ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if name in os.environ)
    return (f"BLAS {blas['name']} {blas.get('version', '')} "
            f"({threads or 'threads: its default'}; numpy.show_config)")


def block(sections: Sequence[tuple[str, Sequence[Row]]], repeats: int, command: str,
          elapsed: float, load: tuple[float, float], note: str = "",
          now: datetime.datetime | None = None) -> str:
    """The dated markdown block pasted verbatim into the README: when, where, how, tables.

    ``load``: the 1-minute load average when the run started and when it ended.

    Examples
    --------
    >>> text = block([("Dense", [Row("x", note="skipped")])], 5, "python -m benchmarks",
    ...              90.0, (0.5, 2.0), now=datetime.datetime(2026, 12, 7, 6, 30))
    >>> print(text.splitlines()[1])
    - Measured 2026-12-07 06:30 UTC by `python -m benchmarks` (1 min 30 s in all; load
      average 0.5 at the start, 2.0 at the end).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    minutes, rest = divmod(round(elapsed), 60)
    advice = {True: "on", False: "off", None: "not switchable"}[huge_pages_advised()]
    lines = [BEGIN,
             f"- Measured {now:%Y-%m-%d %H:%M} UTC by `{command}` ({minutes} min {rest} s in "
             f"all; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end).",
             f"- Machine: {machine()}.",
             f"- Method: every row is the best and the median of {repeats} runs per side (more "
             f"where the runs column says so), the sides run in turns (simulate, reference, "
             f"numpy default, simulate, ...). simulate and its reference allocate with "
             f"ordinary pages (`routing_sim.engines.pages.small_pages`); \"numpy default\" "
             f"is plain numpy under numpy's own page policy (huge-page advice {advice} here). "
             f"Ratios: simulate / reference, best to best and median to median. Peak RSS: a fresh "
             f"process running the one simulation. A side whose median is more than "
             f"{NOISY:g}x its best is flagged noisy.",
             *([f"- Notes: {note}"] if note else [])]
    for title, rows in sections:
        lines += ["", f"**{title}**", "", table(rows)]
    return "\n".join(lines + [END])
