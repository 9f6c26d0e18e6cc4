"""A causal language model told as routing: logits vs SDPA, generation, routing tables, cost.

What the ``real_model`` scenario and ``routing-sim hf`` print. The model runs with the
routing_sim backend and again with PyTorch SDPA (same weights); the logits are compared,
a few tokens are generated greedily with a KV cache, and the last generated token's
routing table is printed for every layer and head, then the messages and bytes per layer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from ..errors import InvalidArgumentError
from .backend import register
from .record import record, token_texts
from .tiny import tiny_model

__all__ = ["WordTokenizer", "load", "tell"]

TOLERANCE = 1e-12


class WordTokenizer:
    """Words to ids for a random-init model: each distinct word gets the next free id.

    Examples
    --------
    >>> words = WordTokenizer("the cat saw the dog", vocab=96)
    >>> words.ids, words.convert_ids_to_tokens([5, 3, 40])
    ([3, 4, 5, 3, 6], ['saw', 'the', 'id40'])
    """

    def __init__(self, text: str, vocab: int):
        self.words: dict[int, str] = {}
        self.ids: list[int] = []
        index: dict[str, int] = {}
        for word in text.split():
            if word not in index:
                if 3 + len(index) >= vocab:
                    raise InvalidArgumentError(f"--tokens has more distinct words than the "
                                               f"model's {vocab - 3} free ids")
                index[word] = 3 + len(index)
                self.words[index[word]] = word
            self.ids.append(index[word])

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.words.get(i, f"id{i}") for i in ids]


def load(family: str = "llama", layers: int = 2, model: str | Path | None = None,
         name: str = "routing_sim") -> tuple[Any, Any, Any]:
    """(routing_sim model, SDPA model, tokenizer or None), float64, in eval mode.

    ``model`` is a local checkpoint directory (``save_pretrained``); otherwise a tiny
    random-init ``family`` model with ``layers`` layers.
    """
    register(name)
    if model is None:
        return (tiny_model(family, layers, attn_implementation=name),
                tiny_model(family, layers), None)
    path = Path(model)
    if not (path / "config.json").is_file():
        raise InvalidArgumentError(f"--model must be a local checkpoint directory with a "
                                   f"config.json, got {str(model)!r}")
    loaded = [transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation=implementation, dtype=torch.float64).eval()
        for implementation in (name, "sdpa")]
    tokenizer = None
    if (path / "tokenizer_config.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return (*loaded, tokenizer)


def tell(ours: Any, sdpa: Any, text: str, tokenizer: Any = None, new_tokens: int = 3) -> str:
    """Run ``text`` through both models and return the story as text."""
    if not text.split():
        raise InvalidArgumentError("--tokens needs at least one word")
    tokenizer_given = tokenizer is not None
    if tokenizer is None:
        tokenizer = WordTokenizer(text, ours.config.vocab_size)
        ids = torch.tensor([tokenizer.ids])
    else:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
    lines = []
    with torch.no_grad():
        logits, expected = ours(ids).logits, sdpa(ids).logits
        gap = float((logits - expected).abs().max() / expected.abs().max())
        lines.append(f"logits ({tuple(logits.shape)}) vs PyTorch SDPA, same weights: "
                     f"{'EQUAL' if gap <= TOLERANCE else 'DIFFERENT'} within "
                     f"{TOLERANCE:g} relative")
        settings = {"max_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0,
                    "eos_token_id": None}
        reference = sdpa.generate(ids, **settings)
        with record(limit=10_000, model=ours, tokenizer=tokenizer) as rec:
            produced = ours.generate(ids, **settings)
    words = token_texts(tokenizer, produced[0].tolist())
    same = "identical to" if torch.equal(produced, reference) else "DIFFERENT from"
    lines.append(f"greedy generation, {new_tokens} tokens with a KV cache: {' '.join(words)}"
                 f" ({same} SDPA's)")
    last = max(r.step for r in rec.runs)
    steps = [r for r in rec.runs if r.step == last]
    _, heads, n_queries, n_keys = steps[0].run.weights.shape
    position = n_keys - n_queries                  # the step's first query, in the sequence
    asking = steps[0].run.labels[0][0]
    lines += ["", f"the last step's routing tables, for token {asking!r} at position "
                  f"{position}:"]
    if not tokenizer_given:                        # WordTokenizer: words on arbitrary ids
        lines.append("(the words are labels on arbitrary token ids: the shares show the "
                     "mechanism, not English)")
    for entry in steps:
        for head in range(heads):
            table = entry.run.routing_table(0, head=head, batch=0)
            # The run numbers its query rows from 0; the table names the token's position.
            lines += ["", f"layer {entry.layer}, head {head}:",
                      str(replace(table, token=position))]
    lines += ["", _cost(rec.runs)]
    verdicts = [entry.verdict() for entry in rec.runs]
    equal = sum(v.within_tolerance for v in verdicts)
    lines.append(f"each of the {len(verdicts)} attention calls against matrix attention on "
                 f"its own inputs: {equal} equal")
    worst = next((v for v in verdicts if not v.within_tolerance), verdicts[0])
    lines.append(worst.line())
    return "\n".join(lines)


def _cost(runs) -> str:
    """Messages and bytes per layer, summed over the forward and every generation step."""
    messages: dict[int, int] = defaultdict(int)
    nbytes: dict[int, int] = defaultdict(int)
    for entry in runs:
        messages[entry.layer] += entry.run.stats.total_messages
        nbytes[entry.layer] += entry.run.stats.total_bytes
    rows = [f"{'layer':<6} {'messages':>10} {'bytes':>12}"]
    rows += [f"{layer:<6} {messages[layer]:>10,} {nbytes[layer]:>12,}" for layer in messages]
    rows.append(f"{'total':<6} {sum(messages.values()):>10,} "
                f"{int(np.sum(list(nbytes.values()))):>12,}")
    return "messages and bytes per layer (all steps of the generation):\n" + "\n".join(rows)
