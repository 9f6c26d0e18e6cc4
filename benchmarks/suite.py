"""The benchmark table: simulate against the matrix form, everything measured in one run.

Ratios are taken between timings of the same process run, all of them with numpy's
huge-page advice off, as :func:`routing_sim.simulate` runs (see ``routing_sim/pages.py``):
the matrix-form timings allocate under the same page policy as the simulator's. Peak RSS
is measured in a fresh interpreter per configuration (``benchmarks.rss``) so one
configuration's memory does not hide behind another's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np

import routing_sim as rs
from routing_sim.pages import small_pages

from .hf import rows as hf_rows
from .sparse import rows as sparse_rows

D_HEAD = 64

Result = TypeVar("Result")


def best_time(run: Callable[[], Result], repeats: int) -> tuple[float, Result]:
    """The fastest of ``repeats`` calls (at least one), and the last call's result."""
    start = time.perf_counter()
    result = run()
    best = time.perf_counter() - start
    for _ in range(repeats - 1):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


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
    """Measured: about 60 bytes per route for simulate, plus three (h, n, n) float64
    matrices for the matrix form, must stay under 70% of physical memory."""
    routes = heads * n * n
    needed = 60 * routes + 3 * 8 * routes
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return needed < 0.7 * physical


def inputs(n: int, heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.random.default_rng(n * 10 + heads).normal(size=(3, heads, n, D_HEAD)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes only (n <= 1024), one repeat: a smoke run")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS column")
    arguments = parser.parse_args(argv)
    with small_pages():                                # what simulate itself runs with
        rows = measure(arguments.quick, arguments.no_rss)
    print(table(rows))
    return 0


def measure(quick: bool, no_rss: bool) -> list[tuple]:
    """Every row of the table: (case, sim, ref, ref name, messages, rss, note)."""
    sizes = [256, 1024] if quick else [256, 1024, 4096]
    rows = []

    def row(case: str, sim: float | None, ref: float | None, ref_name: str, messages: int,
            rss: float | None = None, note: str = "") -> None:
        rows.append((case, sim, ref, ref_name, messages, rss, note))
        print(f"  measured {case}", file=sys.stderr, flush=True)

    for n in sizes:
        for heads in (1, 8):
            if not fits_in_memory(n, heads):
                rows.append((f"full n={n} h={heads}", None, None, "", 0, None,
                             "skipped: would not fit in this machine's memory"))
                continue
            q, k, v = inputs(n, heads)
            repeats = 1 if n * n * heads > 4_000_000 or quick else 3
            t_numpy, _ = best_time(partial(plain_numpy, q, k, v), repeats)
            t_matrix, _ = best_time(partial(rs.attention, q, k, v), repeats)
            t_sim, run = best_time(partial(rs.simulate, q, k, v, trace="summary"), repeats)
            rss = None if no_rss else peak_rss(n, heads)
            row(f"full n={n} h={heads}", t_sim, t_numpy, "numpy", run.stats.total_messages, rss,
                f"rs.attention {t_matrix:.3f} s ({t_sim / t_matrix:.1f}x)")

    q, k, v = inputs(1024, 1)
    jitter = rs.Network(jitter=0.5, seed=1)
    t_jitter, run = best_time(lambda: rs.simulate(q, k, v, network=jitter, trace="summary"), 1)
    t_plain, plain = best_time(lambda: rs.simulate(q, k, v, trace="summary"), 1)
    row("jitter n=1024 h=1", t_jitter, t_plain, "no jitter", run.stats.total_messages, None,
        f"{run.stats.events:,} SimPy events")

    zero_latency_rows(row)

    q, k, v = inputs(256, 1)
    t_exact, run = best_time(lambda: rs.simulate(q, k, v, numerics="exact", trace="summary"), 1)
    t_float, _ = best_time(lambda: rs.simulate(q, k, v, trace="summary"), 3)
    row("exact n=256 h=1", t_exact, t_float, "float mode", run.stats.total_messages, None,
        f"{run.stats.routes / t_exact:,.0f} query-key pairs/s")

    q, k, v = inputs(1024, 1)
    t_online, run = best_time(lambda: rs.simulate(q, k, v, softmax="online", trace="summary"), 1)
    row("online n=1024 h=1", t_online, t_plain, "two-phase", run.stats.total_messages)

    q, k, v = inputs(128, 1)
    t_naive, run = best_time(lambda: rs.simulate(q, k, v, delivery="per_message",
                                                 trace="summary"), 1)
    t_window, _ = best_time(lambda: rs.simulate(q, k, v, trace="summary"), 3)
    row("per-message baseline n=128", t_naive, t_window, "batched", run.stats.total_messages,
        None, "one SimPy event per message")

    for found in sparse_rows(quick, None if no_rss else peak_rss):
        row(*found)
    rows += hf_rows(quick)
    return rows


def zero_latency_rows(row: Callable[..., None]) -> None:
    """Issue 16: zero latency keeps the batched path (target: within 3x of latency 1, at
    the same jitter, in both softmax modes, measured in the same run)."""
    rng = np.random.default_rng(16)
    q, k, v = rng.normal(size=(45, 8)), rng.normal(size=(150, 8)), rng.normal(size=(150, 8))
    for softmax in ("two_phase", "online"):
        times, events = {}, {}
        for latency in (1.0, 0.0):
            network = rs.Network(latency=latency, jitter=2.0, seed=1)
            times[latency], run = best_time(partial(
                rs.simulate, q, k, v, network=network, softmax=softmax, trace="summary"), 3)
            events[latency] = run.stats.events
        row(f"latency 0 {softmax} 45x150", times[0.0], times[1.0], "latency 1",
            run.stats.total_messages, None, f"jitter 2, target <= 3x; SimPy events "
            f"{events[0.0]} (latency 1: {events[1.0]})")
    q, k, v = (rng.normal(size=(9, n, 8)) for n in (5, 150, 150))
    times, events = {}, {}
    for latency in (1.0, 0.0):
        network = rs.Network(latency=latency, jitter=2.0, loss=0.1, duplicate=0.1, reorder=0.2,
                             retries=20, seed=1)
        times[latency], run = best_time(partial(rs.simulate, q, k, v, network=network,
                                                softmax="online", trace="summary"), 1)
        events[latency] = run.stats.events
    row("latency 0 faults 9x5x150", times[0.0], times[1.0], "latency 1",
        run.stats.total_messages, None, f"loss, copies, reordering; SimPy events "
        f"{events[0.0]} (latency 1: {events[1.0]})")


def seconds(duration: float) -> str:
    """``0.123 s``, or milliseconds below a tenth of a second (per-token and per-call rows)."""
    return f"{duration:.3f} s" if duration >= 0.1 else f"{1e3 * duration:.2f} ms"


def table(rows: list[tuple]) -> str:
    header = (f"| {'case':<27} | {'simulate':>9} | {'reference':>20} | {'ratio':>7} | "
              f"{'messages':>11} | {'messages/s':>11} | {'peak RSS':>9} | notes")
    lines = [header, "|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1])
             + "|---"]
    for case, sim, ref, ref_name, messages, rss, note in rows:
        if sim is None:
            lines.append(f"| {case:<27} | {'-':>9} | {'-':>20} | {'-':>7} | {'-':>11} | "
                         f"{'-':>11} | {'-':>9} | {note}")
            continue
        ratio = f"{sim / ref:.2f}x" if ref else "-"
        reference = f"{seconds(ref)} {ref_name}" if ref else "-"
        lines.append(f"| {case:<27} | {seconds(sim):>9} | {reference:>20} | {ratio:>7} | "
                     f"{messages:>11,} | {messages / sim:>11,.0f} | "
                     f"{(f'{rss:,.0f} MB' if rss else '-'):>9} | {note}")
    return "\n".join(lines)
