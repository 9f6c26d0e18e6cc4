"""The routing table: token T splits its budget 0.5 / 0.3 / 0.2 and pulls the weighted values.

The example from the document routing_sim started from. Token T scores three tokens, A,
B and C; softmax turns the scores into shares of a budget of 1; T pulls that share of each
value and adds them up. Then the scale knob (an inverse temperature) sharpens or flattens
the same routing table.
"""

import numpy as np

import routing_sim as rs


def main() -> None:
    # One asking token T and three answering tokens. Scores log 5, log 3, log 2 make the
    # shares 5/10, 3/10 and 2/10.
    graph = rs.graphs.complete(1, 3, labels=["T"], key_labels=["A", "B", "C"])
    query = np.array([[1.0]])
    key = np.log(np.array([[5.0], [3.0], [2.0]]))
    value = np.array([[10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])   # what A, B, C hand out
    run = rs.simulate(query, key, value, scale=1.0, graph=graph)
    print(run.routing_table(0))
    print()
    print("weighted pull: 0.5 * v_A + 0.3 * v_B + 0.2 * v_C")
    for share, row in zip(run.weights[0], value):
        print(f"  {share:.1f} * {row.tolist()}")
    print(f"  = {np.round(run.output[0], 6).tolist()}")
    print()
    print("the scale knob (inverse temperature) on the same scores:")
    for scale in (0.25, 1.0, 4.0):
        shares = rs.simulate(query, key, value, scale=scale, graph=graph).weights[0]
        look = "flat" if scale < 1 else "sharp" if scale > 1 else "as is"
        print(f"  scale {scale:<4}: A {shares[0]:.3f}  B {shares[1]:.3f}  C {shares[2]:.3f}"
              f"   ({look})")
    print()
    print(rs.verify.verdict(run.output, run.weights, query, key, value, scale=1.0).line())


if __name__ == "__main__":
    main()
