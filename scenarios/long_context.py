"""Long context: a million tokens in a causal window of 16 plus 4 sinks, every route a message.

Mistral's sliding window with StreamingLLM's attention sinks: token i reads the 16 tokens
ending at itself and the first 4 tokens of the sequence, so its fan-in is at most 20
however long the context grows. The route set is stored sparsely (one key index per
route), so the simulation and its memory grow with the routes, 20 per token, never with
the n² pairs a dense routing table would hold. The check on sampled rows is an independent
banded computation: each row's softmax over its own few keys, written from the definition.

``python scenarios/long_context.py [TOKENS]`` or ``routing-sim run long_context [TOKENS]``
(default 1,048,576 tokens: about a minute and 1.6 GB of memory); the golden file holds
4,096 tokens.
"""

import numpy as np

import routing_sim as rs

WINDOW, SINKS, DIM = 16, 4, 8


def banded_rows(query, key, value, rows: np.ndarray) -> np.ndarray:
    """Each sampled row's attention over its window and sinks, one row at a time."""
    found = []
    for i in rows.tolist():
        keys = sorted(set(range(min(SINKS, i + 1))) | set(range(max(i - WINDOW + 1, 0), i + 1)))
        scores = key[keys] @ query[i] / np.sqrt(DIM)                   # (fan-in,)
        weights = np.exp(scores - scores.max())
        found.append(weights / weights.sum() @ value[keys])            # (DIM,)
    return np.array(found)


def size(count: float) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:,.1f} {unit}"
        count /= 1024
    return f"{count:,.1f} TB"


def main(tokens: str = "1048576") -> None:
    n = int(tokens)
    routes = rs.patterns.sliding_window(n, WINDOW, sinks=SINKS)
    fan_in = routes.routes_per_query()
    print(f"{n:,} tokens, causal window {WINDOW} + {SINKS} attention sinks, head dim {DIM}")
    print(f"routes: {len(routes):,} ({len(routes) / n:.2f} per token; a full causal table "
          f"would hold {n * (n + 1) // 2:,})")
    budget = WINDOW + SINKS
    print(f"fan-in: token i reads min(i + 1, {budget}) keys; {int((fan_in == budget).sum()):,} "
          f"tokens read all {budget}")
    held = routes.indptr.nbytes + routes.indices.nbytes
    print(f"memory: route set {size(held)}, inputs q, k, v {size(3 * 8 * n * DIM)}")
    print(f"  dense instead: a bool mask {size(n * n)}, a float64 routing table {size(8 * n * n)}")
    print()

    rng = np.random.default_rng(0)
    query, key, value = rng.normal(size=(3, n, DIM))
    run = rs.simulate(query, key, value, graph=routes, trace="summary")
    stats = run.stats
    print(f"messages: {stats.total_messages:,} ({stats.total_messages / n:.2f} per token)")
    for kind, count in stats.messages.items():
        print(f"  {kind:<6} {count:>14,}")
    print(f"bytes on the network: {size(stats.total_bytes)}; makespan "
          f"{stats.makespan:g} time units")
    print()

    # Sampled rows: the first tokens, the window edge, the sinks' edge, the last token, and
    # 24 drawn at random; scores stay far inside ±100, so rtol = atol = 1e-12 holds.
    drawn = rng.choice(n, size=min(n, 24), replace=False)
    rows = np.unique(np.concatenate([np.arange(min(n, WINDOW + SINKS + 1)), drawn, [n - 1]]))
    expected = banded_rows(query, key, value, rows)
    error = np.abs(run.output[rows] - expected)
    within = bool((error <= 1e-12 * np.abs(expected) + 1e-12).all())
    print(f"checked {len(rows)} sampled rows against a banded softmax of their own keys")
    verdict = rs.verify.Verdict(float(error.max()), 0.0, within,
                                bool(np.array_equal(run.output[rows], expected)))
    print(verdict.line())


if __name__ == "__main__":
    import sys

    main(*sys.argv[1:])
