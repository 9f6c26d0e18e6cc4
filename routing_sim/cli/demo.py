"""The ``routing-sim demo`` story: a six-token sentence routing its attention as messages."""

from __future__ import annotations

import numpy as np

from ..network.conditions import Network
from ..reference.verify import verdict
from ..results.run import display_width, pad
from ..routes.graphs import causal
from ..simulation import simulate
from ..views.time_format import format_time
from .tour import LESSONS

__all__ = ["RANDOM_WORDS", "demo"]

SENTENCE = ["the", "cat", "sat", "on", "the", "mat"]
# Said wherever seeded random vectors carry word labels (the demo, and the trace, replay and
# plot commands): a learner should not read the shares as what "cat" means to "mat".
RANDOM_WORDS = "random vectors named after words: the shares show the mechanism, not English"


def demo(seed: int = 0, jitter: float = 0.3) -> str:
    """Run the demo and return what it prints.

    Each token of a short sentence becomes a node. Its query, key and value come from
    seeded random projections of seeded random embeddings (the two "the" share one
    embedding). Tokens may pull only from themselves and earlier tokens (causal).

    Examples
    --------
    >>> lines = demo().splitlines()
    >>> next(line for line in lines if line.startswith("verdict"))
    'verdict: EQUAL to matrix attention (within the float tolerance); bit-identical across both
    delivery schedules: yes'
    >>> lines[-2]
    'next: `routing-sim tour` walks the idea in 11 lessons; this demo is lesson 1, and lesson 2 is'
    """
    rng = np.random.default_rng(seed)
    vocabulary = sorted(set(SENTENCE))
    embedding = rng.normal(size=(len(vocabulary), 8))                 # (vocab, d_model)
    tokens = embedding[[vocabulary.index(word) for word in SENTENCE]]  # (L, d_model)
    w_query, w_key, w_value = rng.normal(size=(3, 8, 4)) / np.sqrt(8)  # (d_model, d_head)
    query, key, value = tokens @ w_query, tokens @ w_key, tokens @ w_value  # (L, 4)

    graph = causal(len(SENTENCE), labels=SENTENCE)
    network = Network(latency=1.0, jitter=jitter, seed=seed)
    run = simulate(query, key, value, graph=graph, network=network)
    other = simulate(query, key, value, graph=graph,
                     network=Network(latency=2.5, jitter=4.0, seed=seed + 1),
                     delivery="per_message")
    check = verdict(run.output, run.weights, query, key, value, is_causal=True)

    lines = [
        f"routing_sim demo: {' '.join(SENTENCE)!r} as {len(SENTENCE)} token nodes",
        "Each token sends its query to every token it may read (itself and earlier ones),",
        "gets back match scores, splits a budget of 1 over them (softmax), and pulls",
        f"that share of each value. Network: latency 1.0, jitter up to {jitter}.",
        f"The tokens are {RANDOM_WORDS}.",
        "",
    ]
    for i in range(len(SENTENCE)):
        lines += [str(run.routing_table(i)), ""]
    lines += ["messages on the network:", str(run.stats), "",
              "outputs (what each token pulled), rounded:"]
    width = max(map(display_width, SENTENCE))
    for word, row in zip(SENTENCE, run.output):
        lines.append(f"  {pad(word, width)}  [" + ", ".join(f"{x:+.3f}" for x in row) + "]")
    same = np.array_equal(run.output, other.output)
    lines += [
        "",
        f"second run: latency 2.5, jitter up to 4.0, one SimPy event per message "
        f"({other.stats.events:,} events, last output at t={format_time(other.stats.makespan)})",
        f"max abs difference from matrix attention: {check.max_abs_error:.3g}",
        f"{check.line()}; bit-identical across both delivery schedules: "
        f"{'yes' if same else 'NO'}",
        "",
        f"next: `routing-sim tour` walks the idea in {len(LESSONS)} lessons; this demo is "
        "lesson 1, and lesson 2 is",
        f"      {LESSONS[1].command}",
    ]
    return "\n".join(lines)
