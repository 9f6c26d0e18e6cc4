"""The benchmark table: simulate against its reference, every row measured in one run.

Every row runs its sides in turns, ``--repeats`` times each (at least 5 for the table the
README publishes), and reports the best and the median of each side (``benchmarks.harness``).
The simulation and its reference allocate under the same page policy, ordinary pages, as
:func:`routing_sim.simulate` runs (``routing_sim/engines/pages.py``); the dense rows add plain numpy
under numpy's default policy (huge-page advice on) as a third side. Peak RSS is measured in
a fresh interpreter per configuration (``benchmarks.rss``) so one configuration's memory does
not hide behind another's. ``--markdown`` prints the dated block the README's Performance
section holds, verbatim.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import NoReturn

import numpy as np

import routing_sim as rs
from routing_sim.options import Softmax

from . import hf, sparse
from .harness import MIN_PUBLISHED, Case, Row, block, interleave, skipped, table, with_small_pages

D_HEAD = 64
DENSE = ((256, 1), (256, 8), (1024, 1), (1024, 8), (4096, 1), (4096, 2), (4096, 8))
QUICK_DENSE = DENSE[:4]


def plain_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """softmax(Q Kᵀ / sqrt(d)) V in plain numpy: the independent matrix-form timing."""
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])            # (h, n, n)
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v                                                 # (h, n, d)


def peak_rss(n: int, heads: int, *pattern: int) -> float:
    """Peak RSS in MB of a fresh interpreter running one simulation (``pattern``: the
    window and sinks of a causal sliding window; none: the full graph)."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", f"{__package__}.rss", str(n), str(heads),
                             *map(str, pattern)],
                            capture_output=True, text=True, check=True, cwd=folder)
    return int(result.stdout.strip()) / 2**20


def fits_in_memory(n: int, heads: int) -> bool:
    """Whether a dense row can run here: plain numpy fits in 70% of physical memory (its two
    (h, n, n) float64 matrices, 16 bytes a route), and simulate's own memory budget
    (``rs.budget``: 36 bytes a route on the full graph's row blocks, which peak at about 31;
    it counts what other processes hold) lets it start. The sides run one at a time and a
    side's last result is dropped before its next run (``harness.interleave``; a dropped
    run's memory returns at once), so no two of them add up."""
    routes = heads * n * n
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 16 * routes >= 0.7 * physical:
        return False
    try:
        rs.budget.check_simulation((heads, n, n, D_HEAD, D_HEAD), routes, trace="summary")
    except rs.MemoryBudgetError:
        return False
    return True


def inputs(n: int, heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.random.default_rng(n * 10 + heads).normal(size=(3, heads, n, D_HEAD)))


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m benchmarks`` (and ``routing-sim bench``)."""
    parser.add_argument("--quick", action="store_true",
                        help="small sizes only (n <= 1024, the long window at 16,384 tokens), "
                             "3 runs per side unless --repeats says otherwise: a smoke run")
    parser.add_argument("--repeats", type=int, metavar="N",
                        help=f"runs per side of every row (default {MIN_PUBLISHED}, 3 with "
                             f"--quick; at least 3, and at least {MIN_PUBLISHED} with "
                             f"--markdown)")
    parser.add_argument("--only", metavar="PATTERN",
                        help="run only the rows whose case matches this regular expression "
                             "(e.g. 'full n=1024|window')")
    parser.add_argument("--markdown", action="store_true",
                        help="print the dated block for the README's Performance section")
    parser.add_argument("--note", default="",
                        help="a notes line for the --markdown block (e.g. how busy the "
                             "machine was)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS column")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    arguments = parser.parse_args(argv)
    return run(arguments, parser.error)


def run(arguments: argparse.Namespace, error: Callable[[str], NoReturn]) -> int:
    """Measure the rows ``arguments`` select and print their table (or the dated block)."""
    repeats = arguments.repeats or (3 if arguments.quick else MIN_PUBLISHED)
    if repeats < 3:
        error(f"--repeats must be at least 3 (a best and a median of fewer say little), "
              f"got {repeats}")
    if arguments.markdown and (repeats < MIN_PUBLISHED or arguments.quick):
        error(f"--markdown prints the published table: it needs the full sizes and --repeats "
              f">= {MIN_PUBLISHED} (got {repeats}{', --quick' if arguments.quick else ''})")
    try:
        only = re.compile(arguments.only) if arguments.only else None
    except re.error as bad:
        error(f"--only {arguments.only!r} is not a regular expression: {bad}")
    chosen = [(title, [case for case in cases if only is None or only.search(case.name)])
              for title, cases in sections(arguments.quick, not arguments.no_rss)]
    if not any(cases for _, cases in chosen):
        error(f"--only {arguments.only!r} matches no row")
    started, load = time.perf_counter(), os.getloadavg()[0]
    measured = [(title, [measure(case, repeats) for case in cases])
                for title, cases in chosen if cases]
    elapsed = time.perf_counter() - started
    if arguments.markdown:
        command = " ".join(["python -m benchmarks", *argv_of(arguments)])
        print(block(measured, repeats, command, elapsed, (load, os.getloadavg()[0]),
                    arguments.note))
    else:
        print("\n\n".join(f"{title}\n\n{table(rows)}" for title, rows in measured))
        print(f"\n{elapsed:.0f} s in all", file=sys.stderr)
    return 0


def argv_of(arguments: argparse.Namespace) -> list[str]:
    """The options that shaped the published block, as they would be typed (not --note)."""
    words = ["--markdown"]
    if arguments.repeats:
        words += ["--repeats", str(arguments.repeats)]
    if arguments.only:
        words += ["--only", repr(arguments.only)]
    if arguments.no_rss:
        words.append("--no-rss")
    return words


def sections(quick: bool, rss: bool) -> list[tuple[str, list[Case]]]:
    """The table's sections: a title and its rows, in the order they run."""
    peak = peak_rss if rss else None
    return [("Dense: the full graph and the slower modes", dense_cases(quick, peak)),
            ("Sparse route sets", sparse.cases(quick, peak)),
            ("Inside Hugging Face models", hf.cases(quick))]


def measure(case: Case, repeats: int) -> Row:
    start = time.perf_counter()
    row = case.run(repeats)
    print(f"  measured {case.name} ({time.perf_counter() - start:.1f} s)", file=sys.stderr,
          flush=True)
    return row


def dense_cases(quick: bool, rss: Callable[..., float] | None) -> list[Case]:
    """The full graph at several sizes, then the slower modes against the default one."""
    found = [Case(f"full n={n} h={heads}",
                  partial(full_row, n, heads, rss) if fits_in_memory(n, heads)
                  else skipped("skipped: would not fit in this machine's memory"))
             for n, heads in (QUICK_DENSE if quick else DENSE)]
    found += [Case("jitter n=1024 h=1", jitter_row),
              Case("latency 0 two_phase 45x150", partial(zero_latency_row, "two_phase")),
              Case("latency 0 online 45x150", partial(zero_latency_row, "online")),
              Case("latency 0 faults 9x5x150", faults_row),
              Case("exact n=128 h=1", exact_row),
              Case("online n=1024 h=1", online_row),
              Case("per-message baseline n=64", per_message_row)]
    return found


def full_row(n: int, heads: int, rss: Callable[..., float] | None, case: str,
             repeats: int) -> Row:
    q, k, v = inputs(n, heads)
    (t_sim, t_numpy, t_default), (run, _, _) = interleave(
        [partial(rs.simulate, q, k, v, trace="summary"),
         with_small_pages(partial(plain_numpy, q, k, v)),
         partial(plain_numpy, q, k, v)], repeats)
    return Row(case, t_sim, t_numpy, "numpy", t_default, run.stats.total_messages,
               None if rss is None else rss(n, heads))


def versus(case: str, repeats: int, ours: Callable[[], rs.Run], theirs: Callable[[], rs.Run],
           reference_name: str, note: Callable[[rs.Run, rs.Run], str] | None = None) -> Row:
    """A row of two simulations: a slower mode against the one it is measured by."""
    (t_ours, t_theirs), (run, other) = interleave([ours, theirs], repeats)
    return Row(case, t_ours, t_theirs, reference_name, messages=run.stats.total_messages,
               note="" if note is None else note(run, other))


def jitter_row(case: str, repeats: int) -> Row:
    q, k, v = inputs(1024, 1)
    jitter = rs.Network(jitter=0.5, seed=1)
    return versus(case, repeats,
                  partial(rs.simulate, q, k, v, network=jitter, trace="summary"),
                  partial(rs.simulate, q, k, v, trace="summary"), "no jitter",
                  lambda run, _: f"{run.stats.events:,} SimPy events")


def zero_latency_row(softmax: Softmax, case: str, repeats: int) -> Row:
    """Issue 16: zero latency keeps the batched path (target: within 3x of latency 1, at
    the same jitter, in both softmax modes)."""
    rng = np.random.default_rng(16)
    q, k, v = rng.normal(size=(45, 8)), rng.normal(size=(150, 8)), rng.normal(size=(150, 8))
    at = {latency: partial(rs.simulate, q, k, v, softmax=softmax, trace="summary",
                           network=rs.Network(latency=latency, jitter=2.0, seed=1))
          for latency in (0.0, 1.0)}
    return versus(case, repeats, at[0.0], at[1.0], "latency 1",
                  lambda run, other: f"jitter 2, target <= 3x; SimPy events "
                                     f"{run.stats.events} (latency 1: {other.stats.events})")


def faults_row(case: str, repeats: int) -> Row:
    rng = np.random.default_rng(16)
    q, k, v = (rng.normal(size=(9, n, 8)) for n in (5, 150, 150))
    at = {latency: partial(rs.simulate, q, k, v, softmax="online", trace="summary",
                           network=rs.Network(latency=latency, jitter=2.0, loss=0.1,
                                              duplicate=0.1, reorder=0.2, retries=20, seed=1))
          for latency in (0.0, 1.0)}
    return versus(case, repeats, at[0.0], at[1.0], "latency 1",
                  lambda run, other: f"loss, copies, reordering; SimPy events "
                                     f"{run.stats.events} (latency 1: {other.stats.events})")


def exact_row(case: str, repeats: int) -> Row:
    q, k, v = inputs(128, 1)          # 0.1 s a run in blocks (1.4 s with one fsum per score)
    row = versus(case, repeats, partial(rs.simulate, q, k, v, numerics="exact", trace="summary"),
                 partial(rs.simulate, q, k, v, trace="summary"), "float mode")
    pairs = q.shape[-2] * k.shape[-2]
    assert row.simulate is not None
    return replace(row, note=f"{pairs / row.simulate.best:,.0f} query-key pairs/s (median "
                             f"{pairs / row.simulate.median:,.0f}); target >= 100,000")


def online_row(case: str, repeats: int) -> Row:
    q, k, v = inputs(1024, 1)
    return versus(case, repeats, partial(rs.simulate, q, k, v, softmax="online", trace="summary"),
                  partial(rs.simulate, q, k, v, trace="summary"), "two-phase")


def per_message_row(case: str, repeats: int) -> Row:
    q, k, v = inputs(64, 1)           # n = 128: 3 s a run on a quiet VM, 30 s under load
    return versus(case, repeats,
                  partial(rs.simulate, q, k, v, delivery="per_message", trace="summary"),
                  partial(rs.simulate, q, k, v, trace="summary"), "batched",
                  lambda run, _: "one SimPy event per message")
