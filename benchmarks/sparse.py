"""Benchmark rows for sparse route sets: long contexts in a causal window with sinks.

Rows (issue 27's targets): n = 131,072 tokens in a causal window of 128 + 4 sinks, one
head, d = 64, ``trace="summary"``: its routes per second against the full graph's
(n = 1024, 8 heads), the two simulations run in turns (target: at least 50%), and its peak
RSS in a fresh process (target: at most 1 GB); n = 1,048,576 in a window of 16 + 4 sinks:
time and peak RSS (targets: at most 3 s and 3.5 GB); and, with PyTorch Geometric installed,
``TransformerConv`` on the same kind of graph (8,192 tokens: its float64 gathers hold a
(routes, d) array each). The spread
between runs is mostly the kernel faulting in fresh memory (docs/design.md, memory pages).
``--quick`` runs the window row at 16,384 tokens and skips the others.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial

import numpy as np

import routing_sim as rs

from .harness import Case, Row, interleave, skipped

D_HEAD = 64
PYG_TOKENS = 8192    # TransformerConv gathers (routes, d) float64 arrays: ~0.5 GB each here
FULL = "full n=1024 h=8"


def cases(quick: bool, peak_rss: Callable[..., float] | None) -> list[Case]:
    """The sparse rows. ``peak_rss(n, heads, window, sinks)`` measures a fresh process
    (None: no RSS column)."""
    n = 16_384 if quick else 131_072
    found = [Case(f"window n={n:,} w=128+4", partial(_window_row, n, 128, 4, peak_rss,
                                                   "target >= 50% of full, RSS <= 1 GB"))]
    if quick:
        return found + [Case("window n=1,048,576 w=16+4", skipped("skipped in --quick"))]
    return found + [
        Case("window n=1,048,576 w=16+4", partial(_window_row, 1_048_576, 16, 4, peak_rss,
                                                  "target <= 3 s, RSS <= 3.5 GB")),
        Case(f"PyG TransformerConv n={PYG_TOKENS:,}",
             partial(_transformer_conv_row, PYG_TOKENS, 128, 4)
             if importlib.util.find_spec("torch_geometric") is not None
             else skipped("skipped: needs PyTorch Geometric (pip install torch_geometric)"))]


def window_inputs(n: int, heads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.random.default_rng(n + 7).normal(size=(3, heads, n, D_HEAD)))


def _window_row(n: int, window: int, sinks: int, peak_rss: Callable[..., float] | None,
                target: str, case: str, repeats: int) -> Row:
    """The window against the full graph (n = 1024, 8 heads), run in turns; the reference
    column is the time the full graph's routes/s would take for the window's routes."""
    q, k, v = window_inputs(n)
    full_q, full_k, full_v = np.random.default_rng(0).normal(size=(3, 8, 1024, D_HEAD))
    graph = rs.patterns.sliding_window(n, window, sinks=sinks)
    (t_window, t_full), (run, full) = interleave(
        [partial(rs.simulate, q, k, v, graph=graph, trace="summary"),
         partial(rs.simulate, full_q, full_k, full_v, trace="summary")], repeats)
    at_full_rate = t_full.scaled(run.stats.routes / full.stats.routes)
    rate, full_rate = (run.stats.routes / t_window.best, full.stats.routes / t_full.best)
    rss = None if peak_rss is None else peak_rss(n, 1, window, sinks)
    return Row(case, t_window, at_full_rate, "full rate", messages=run.stats.total_messages,
               rss=rss, note=f"best: {rate / 1e6:.2f} M routes/s = {rate / full_rate:.0%} of "
                             f"{FULL} ({full_rate / 1e6:.2f} M/s); median: "
                             f"{at_full_rate.median / t_window.median:.0%}; {target}")


def _transformer_conv_row(n: int, window: int, sinks: int, case: str, repeats: int) -> Row:
    import torch
    from torch_geometric.nn import TransformerConv

    graph = rs.patterns.sliding_window(n, window, sinks=sinks)
    q, k, v = window_inputs(n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        conv = TransformerConv(D_HEAD, D_HEAD, heads=1, root_weight=False).double()
        x = torch.from_numpy(q[0])
        # Edge j -> i: row 0 the key (source), row 1 the query (target).
        edges = torch.from_numpy(np.stack([graph.indices, graph.query_node]).astype(np.int64))
        with torch.no_grad():
            (ours, theirs), (run, _) = interleave(
                [partial(rs.simulate, q, k, v, graph=graph, trace="summary"),
                 partial(conv, x, edges)], repeats)
    finally:
        torch.set_num_threads(threads)
    return Row(case, ours, theirs, "TransformerConv", messages=run.stats.total_messages,
               note=f"window {window}+{sinks}, d={D_HEAD}, float64, 1 torch thread: "
                    f"{len(graph) / theirs.best / 1e6:.2f} M routes/s vs ours "
                    f"{len(graph) / ours.best / 1e6:.2f}")
