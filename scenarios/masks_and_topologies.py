"""Masks and topologies: causal, sliding window or a custom networkx graph decide the routes.

The same six tokens under three route sets. A route exists only where the mask or graph
allows it, and only existing routes carry messages, so the message count is the route
count times four.
"""

import networkx as nx
import numpy as np

import routing_sim as rs


def show(name: str, graph: nx.DiGraph, query, key, value) -> None:
    run = rs.simulate(query, key, value, graph=graph)
    mask = rs.graphs.to_mask(graph)
    print(f"{name}: {int(mask.sum())} routes, {run.stats.total_messages} messages")
    for i, row in enumerate(mask.astype(int)):
        shares = " ".join(f"{w:.2f}" if allowed else "  . " for w, allowed in
                          zip(run.weights[i], row))
        print(f"  token {i}: {shares}")
    check = rs.verify.verdict(run.output, run.weights, query, key, value, attn_mask=mask)
    print(f"  {check.line()}")
    print()


def main() -> None:
    rng = np.random.default_rng(3)
    query, key, value = rng.normal(size=(3, 6, 4))
    show("causal (token i reads tokens 0..i)", rs.graphs.causal(6), query, key, value)
    show("sliding window of 3 (i reads i-2..i)", rs.graphs.sliding_window(6, 3), query, key,
         value)
    # A custom topology: two racks of three tokens, each token reads its own rack, and the
    # first token of each rack also reads the other rack's first token (a gateway link).
    racks = nx.DiGraph()
    racks.add_nodes_from(range(6))
    for rack in ((0, 1, 2), (3, 4, 5)):
        racks.add_edges_from((j, i) for i in rack for j in rack)
    racks.add_edges_from([(3, 0), (0, 3)])
    show("two racks with a gateway (a networkx DiGraph)", racks, query, key, value)


if __name__ == "__main__":
    main()
