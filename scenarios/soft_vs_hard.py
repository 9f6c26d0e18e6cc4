"""Soft vs hard routing: a tiny score change flips a top-1 route and jumps the output.

Two keys score almost the same. Hard routing (top-1: pull only the best) sends the whole
budget to whichever is ahead, so nudging B's key by 0.002 (its score moves by query·nudge =
0.004) swaps the route and the output jumps from one value to the other. Soft routing
(softmax) moves the shares, and the output, smoothly. That smoothness is what lets training
learn where to route.
"""

import numpy as np

import routing_sim as rs


def main() -> None:
    value = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])   # A, B, C
    graph = rs.graphs.complete(1, 3, labels=["q"], key_labels=["A", "B", "C"])
    query = np.array([[2.0]])
    print("the query is 2.0; keys A = 1.0, B = 1.0 + nudge, C = 0.2, so A scores 2.0 and B")
    print("scores 2.0 + query·nudge: the nudge moves B's key, and B's score by twice as much")
    print()
    print(f"{'nudge':>7} | {'soft output':>16} | {'hard (top-1) output':>20} | hard route")
    for nudge in (-0.002, -0.001, 0.0, 0.001, 0.002):
        key = np.array([[1.0], [1.0 + nudge], [0.2]])           # B's key nudged around A's
        soft = rs.simulate(query, key, value, scale=1.0, graph=graph)
        hard = rs.simulate(query, key, value, scale=1.0, graph=graph, routing="topk",
                           top_k=1)
        route = "A" if hard.weights[0, 0] else "B"
        print(f"{nudge:+7.3f} | {np.round(soft.output[0], 4).tolist()!s:>16} | "
              f"{np.round(hard.output[0], 4).tolist()!s:>20} | {route}")
    print()
    print("soft: the output moves by about half the nudge; hard: it jumps by 1.0.")
    print("top-2 keeps both near-ties and renormalises over them:")
    key = np.array([[1.0], [1.001], [0.2]])
    two = rs.simulate(query, key, value, scale=1.0, graph=graph, routing="topk", top_k=2)
    print(f"  shares {np.round(two.weights[0], 4).tolist()}, "
          f"{two.stats.messages['PULL']} PULLs instead of 3")
    print(rs.verify.verdict(soft.output, soft.weights, query,
                            np.array([[1.0], [1.002], [0.2]]), value, scale=1.0).line())


if __name__ == "__main__":
    main()
