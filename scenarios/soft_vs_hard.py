"""Soft vs hard routing: a tiny score change flips a top-1 route and jumps the output.

Two keys score almost the same. Hard routing (top-1: pull only the best) sends the whole
budget to whichever is ahead, so nudging one score by 0.002 swaps the route and the output
jumps from one value to the other. Soft routing (softmax) moves the shares, and the output,
smoothly. That smoothness is what lets training learn where to route.
"""

import numpy as np

import routing_sim as rs


def main() -> None:
    value = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])   # A, B, C
    graph = rs.graphs.complete(1, 3, labels=["q"], key_labels=["A", "B", "C"])
    print(f"{'nudge':>7} | {'soft output':>16} | {'hard (top-1) output':>20} | hard route")
    for nudge in (-0.002, -0.001, 0.0, 0.001, 0.002):
        key = np.array([[1.0], [1.0 + nudge], [0.2]])           # B nudged around A
        query = np.array([[2.0]])
        soft = rs.simulate(query, key, value, scale=1.0, graph=graph)
        hard = rs.simulate(query, key, value, scale=1.0, graph=graph, routing="topk",
                           top_k=1)
        route = "A" if hard.weights[0, 0] else "B"
        print(f"{nudge:+7.3f} | {np.round(soft.output[0], 4).tolist()!s:>16} | "
              f"{np.round(hard.output[0], 4).tolist()!s:>20} | {route}")
    print()
    print("soft: the output moves by about a thousandth per nudge; hard: it jumps by 1.0.")
    print("top-2 keeps both near-ties and renormalises over them:")
    key = np.array([[1.0], [1.001], [0.2]])
    two = rs.simulate(np.array([[2.0]]), key, value, scale=1.0, graph=graph, routing="topk",
                      top_k=2)
    print(f"  shares {np.round(two.weights[0], 4).tolist()}, "
          f"{two.stats.messages['PULL']} PULLs instead of 3")
    print(rs.verify.verdict(soft.output, soft.weights, np.array([[2.0]]),
                            np.array([[1.0], [1.002], [0.2]]), value, scale=1.0).line())


if __name__ == "__main__":
    main()
