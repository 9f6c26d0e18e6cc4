"""Benchmark rows for the transformers backend: a tiny Llama with routing_sim vs with SDPA.

The model: 2 layers, 4 query heads of dimension 16 (2 key/value heads), float64, random
init from a config. Rows: a forward pass of 128, 512 and 2,048 tokens; greedy generation
of 32 tokens after a 128-token prompt (time per token); and one one-query attention call
against 160 cached keys, the per-step overhead. torch runs on one thread, like the
simulator's Python loop: on a shared machine torch's idle worker threads otherwise turn a
millisecond of SDPA into tens. Needs the hf extra; without it the rows say so.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from functools import partial

PROMPT, NEW_TOKENS = 128, 32


def rows(quick: bool) -> list[tuple]:
    """Rows for :func:`benchmarks.suite.table`: (case, sim, ref, ref name, messages, rss, note)."""
    if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers")):
        return [("hf backend", None, None, "", 0, None,
                 "skipped: needs the hf extra (pip install 'routing_sim[hf]' torch==2.13.0)")]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(quick)
    finally:
        torch.set_num_threads(threads)


def _measure(quick: bool) -> list[tuple]:
    import torch

    import routing_sim as rs
    from routing_sim.hf.tiny import tiny_model

    name = rs.hf.register("routing_sim_bench")
    ours, sdpa = tiny_model("llama", 2, attn_implementation=name), tiny_model("llama", 2)
    found = []
    for n in ([128, 512] if quick else [128, 512, 2048]):
        ids = torch.randint(3, 90, (1, n), generator=torch.Generator().manual_seed(n))
        with rs.hf.record(limit=2, trace="summary") as rec, torch.no_grad():
            ours(ids)
        messages = sum(r.run.stats.total_messages for r in rec.runs)
        t_ours, t_sdpa = _best_pair(partial(ours, ids), partial(sdpa, ids),
                                    1 if n > 1024 or quick else 5)
        found.append((f"hf llama forward n={n}", t_ours, t_sdpa, "SDPA", messages, None,
                      "2 layers, target <= 10x at n=512" if n == 512 else "2 layers"))
    found += _generation(ours, sdpa, quick)
    found.append(_one_query_step(ours, name))
    return found


def _generation(ours, sdpa, quick: bool) -> list[tuple]:
    import torch

    import routing_sim as rs

    ids = torch.randint(3, 90, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    settings = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS,
                "do_sample": False, "pad_token_id": 0}
    with rs.hf.record(limit=1000, trace="summary") as rec, torch.no_grad():
        ours.generate(ids, **settings)
    t_ours, t_sdpa = _best_pair(lambda: ours.generate(ids, **settings),
                                lambda: sdpa.generate(ids, **settings), 1 if quick else 3)
    steps = [r for r in rec.runs if r.step > 0]                        # one query each
    per_step = sum(r.run.stats.total_messages for r in steps) // len({r.step for r in steps})
    return [(f"hf greedy {NEW_TOKENS} tokens, per token", t_ours / NEW_TOKENS,
             t_sdpa / NEW_TOKENS, "SDPA", per_step, None,
             f"prompt {PROMPT}; messages per generated token (1 query node per layer and head)")]


def _one_query_step(ours, name: str) -> tuple:
    """One attention call of a decoding step: 1 query, 160 cached keys, 4 heads (GQA 2)."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = ours.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(1, 4, 1, 16, generator=generator, dtype=torch.float64)
    key, value = torch.randn(2, 1, 2, PROMPT + NEW_TOKENS, 16, generator=generator,
                             dtype=torch.float64)
    mask = torch.ones(1, 1, 1, PROMPT + NEW_TOKENS, dtype=torch.bool)
    ours_call = AttentionInterface()[name]
    arguments = (module, query, key, value, mask)
    t_ours, t_sdpa = _best_pair(lambda: ours_call(*arguments, scaling=0.25),
                                lambda: sdpa_attention_forward(*arguments, scaling=0.25), 50)
    messages = 4 * 4 * (PROMPT + NEW_TOKENS)
    return ("hf one-query step, S=160", t_ours, t_sdpa, "SDPA", messages, None,
            f"per-call overhead {1e3 * (t_ours - t_sdpa):.2f} ms")


def _best_pair(ours: Callable[[], object], sdpa: Callable[[], object], repeats: int
               ) -> tuple[float, float]:
    """Best times of both, measured alternately so a busy machine slows both alike."""
    import torch

    best = [float("inf"), float("inf")]
    with torch.no_grad():
        for _ in range(repeats):
            for index, run in enumerate((ours, sdpa)):
                start = time.perf_counter()
                run()
                best[index] = min(best[index], time.perf_counter() - start)
    return best[0], best[1]
