"""Benchmark rows for the transformers backend: a tiny Llama with routing_sim vs with SDPA.

The model: 2 layers, 4 query heads of dimension 16 (2 key/value heads), float64, random
init from a config. Rows: a forward pass of 128, 512 and 2,048 tokens; greedy generation
of 32 tokens after a 128-token prompt (time per token); and one one-query attention call
against 160 cached keys, the per-step overhead. Each row runs ours and SDPA in turns, both
on one thread: torch's (``torch.set_num_threads``) and numpy's BLAS, which ours calls for
its products (``threadpoolctl``). One core a side is the fair comparison, SDPA's 1 against
ours' 1, and it holds under load: on a shared machine idle worker threads that spin at a
barrier otherwise turn a millisecond of SDPA into tens, and numpy's BLAS on two threads made
ours 2-3x slower while another process ran. Needs the hf extra and threadpoolctl (the test
extra); without them the rows say so.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from functools import partial
from typing import Any

from .harness import Case, Row, interleave, skipped

PROMPT, NEW_TOKENS = 128, 32
STEP_RUNS = 50       # runs per side of the one-query step (at least --repeats): ~1 ms each


def cases(quick: bool) -> list[Case]:
    """The transformers rows, or one row saying which extra is missing."""
    if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers")):
        return [Case("hf backend", skipped("skipped: needs the hf extra (pip install "
                                           "'routing_sim[hf]' torch==2.13.0)"))]
    if importlib.util.find_spec("threadpoolctl") is None:
        return [Case("hf backend", skipped("skipped: needs threadpoolctl to run numpy's BLAS "
                                           "on one thread, as torch (pip install "
                                           "threadpoolctl)"))]
    return ([Case(f"hf llama forward n={n}", _one_thread(partial(_forward, n)))
             for n in ([128, 512] if quick else [128, 512, 2048])]
            + [Case(f"hf greedy {NEW_TOKENS} tokens, per token", _one_thread(_generation)),
               Case("hf one-query step, S=160", _one_thread(_one_query_step))])


def _one_thread(measure: Callable[[str, int], Row]) -> Callable[[str, int], Row]:
    """``measure`` with torch and numpy's BLAS on one thread each."""
    def measured(case: str, repeats: int) -> Row:
        import torch
        from threadpoolctl import threadpool_limits

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad(), threadpool_limits(limits=1, user_api="blas"):
                return measure(case, repeats)
        finally:
            torch.set_num_threads(threads)
    return measured


@functools.cache
def _models() -> tuple[Any, Any, str]:
    """The tiny Llama with routing_sim as its backend, the same on SDPA, the backend's name."""
    import routing_sim as rs
    from routing_sim.hf.tiny import tiny_model

    name = rs.hf.register("routing_sim_bench")
    return tiny_model("llama", 2, attn_implementation=name), tiny_model("llama", 2), name


def _forward(n: int, case: str, repeats: int) -> Row:
    import torch

    import routing_sim as rs

    ours, sdpa, _ = _models()
    ids = torch.randint(3, 90, (1, n), generator=torch.Generator().manual_seed(n))
    with rs.hf.record(limit=2, trace="summary") as rec:
        ours(ids)
    messages = sum(r.run.stats.total_messages for r in rec.runs)
    (t_ours, t_sdpa), _ = interleave([partial(ours, ids), partial(sdpa, ids)], repeats)
    return Row(case, t_ours, t_sdpa, "SDPA", messages=messages,
               note="2 layers, target <= 10x at n=512" if n == 512 else "2 layers")


def _generation(case: str, repeats: int) -> Row:
    import torch

    import routing_sim as rs

    ours, sdpa, _ = _models()
    ids = torch.randint(3, 90, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    settings = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS,
                "do_sample": False, "pad_token_id": 0}
    with rs.hf.record(limit=1000, trace="summary") as rec:
        ours.generate(ids, **settings)
    (t_ours, t_sdpa), _ = interleave([partial(ours.generate, ids, **settings),
                                      partial(sdpa.generate, ids, **settings)], repeats)
    steps = [r for r in rec.runs if r.step > 0]                        # one query each
    per_step = sum(r.run.stats.total_messages for r in steps) // len({r.step for r in steps})
    return Row(case, t_ours.scaled(1 / NEW_TOKENS), t_sdpa.scaled(1 / NEW_TOKENS), "SDPA",
               messages=per_step, note=f"prompt {PROMPT}; messages per generated token "
                                       f"(1 query node per layer and head)")


def _one_query_step(case: str, repeats: int) -> Row:
    """One attention call of a decoding step: 1 query, 160 cached keys, 4 heads (GQA 2)."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    ours, _, name = _models()
    module = ours.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(1, 4, 1, 16, generator=generator, dtype=torch.float64)
    key, value = torch.randn(2, 1, 2, PROMPT + NEW_TOKENS, 16, generator=generator,
                             dtype=torch.float64)
    mask = torch.ones(1, 1, 1, PROMPT + NEW_TOKENS, dtype=torch.bool)
    arguments = (module, query, key, value, mask)
    (t_ours, t_sdpa), _ = interleave(
        [partial(AttentionInterface()[name], *arguments, scaling=0.25),
         partial(sdpa_attention_forward, *arguments, scaling=0.25)], max(STEP_RUNS, repeats))
    return Row(case, t_ours, t_sdpa, "SDPA", messages=4 * 4 * (PROMPT + NEW_TOKENS),
               note=f"per-call overhead {1e3 * (t_ours.best - t_sdpa.best):.2f} ms (best), "
                    f"{1e3 * (t_ours.median - t_sdpa.median):.2f} ms (median)")
