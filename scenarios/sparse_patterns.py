"""Sparse patterns: full vs sliding window vs Longformer vs BigBird at 4,096 tokens, in messages.

Each pattern is a routing-table design: how many keys each query may pull from (its
fan-in), and which. Every route costs four messages (QUERY, SCORE, PULL, VALUE), so the
messages and the bytes follow the fan-in; the busiest node (bytes sent plus received)
shows the hot spots a pattern makes: Longformer's global tokens and BigBird's global
blocks talk to every token. The makespan, the simulated time until the last token has
its answer, is four latencies for every pattern on a network without bandwidth limits:
sparsity saves messages and bytes, not round trips. Every output is checked against the
matrix reference run on the same route set.

``python scenarios/sparse_patterns.py [TOKENS]`` or ``routing-sim run sparse_patterns
[TOKENS]`` (default 4,096 tokens: a few seconds); the golden file holds 512.
"""

import numpy as np

import routing_sim as rs

DIM = 16


def designs(n: int) -> dict[str, rs.RouteSet]:
    """The four route sets, with fan-in budgets that scale with n as in their papers."""
    window = max(n // 16, 2)
    return {
        "full": rs.RouteSet.complete(n, n),
        f"sliding_window(window={window}, sinks=4)":
            rs.patterns.sliding_window(n, window, sinks=4),
        f"longformer(window={window}, global_tokens=4)":
            rs.patterns.longformer(n, window, 4),
        f"bigbird(block={max(n // 64, 1)})": rs.patterns.bigbird(n, max(n // 64, 1)),
    }


def main(tokens: str = "4096") -> None:
    n = int(tokens)
    query, key, value = np.random.default_rng(0).normal(size=(3, n, DIM)) / 2
    print(f"{n:,} tokens, one head of dimension {DIM}; every route is 4 messages")
    print()
    header = (f"{'pattern':<40} {'routes':>11} {'fan-in':>11} {'msgs/token':>10} "
              f"{'messages':>12} {'bytes':>14} {'busiest node':>13} {'makespan':>8}")
    print(header)
    print("-" * len(header))
    worst, within = 0.0, True
    for name, routes in designs(n).items():
        fan_in = routes.routes_per_query()
        run = rs.simulate(query, key, value, graph=routes, trace="summary")
        stats = run.stats
        busiest = int(stats.node_bytes.sum(axis=-1).max())            # sent + received
        print(f"{name:<40} {len(routes):>11,} {f'{fan_in.min()}..{fan_in.max()}':>11} "
              f"{stats.total_messages / n:>10.1f} {stats.total_messages:>12,} "
              f"{stats.total_bytes:>14,} {busiest:>13,} {stats.makespan:>8g}")
        expected = rs.attention(query, key, value, graph=routes)
        error = np.abs(run.output - expected)
        worst = max(worst, float(error.max()))
        within &= bool((error <= 1e-12 * np.abs(expected) + 1e-12).all())
    print()
    print("fan-in is min..max over the tokens; Longformer's global tokens and BigBird's")
    print("global blocks read every token, and every token reads them: their nodes are the")
    print("busiest; the makespan is 4 latencies (QUERY, SCORE, PULL, VALUE) for every pattern")
    print(rs.verify.Verdict(worst, 0.0, within, worst == 0.0).line())


if __name__ == "__main__":
    import sys

    main(*sys.argv[1:])
