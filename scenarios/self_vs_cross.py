"""Self- vs cross-attention: nodes of one cluster talk to each other; one service calls another.

Self-attention: queries, keys and values all come from one sequence, so every node both
asks and answers. Cross-attention: an "orders" service (the queries) calls an "inventory"
service (the keys and values); the token graph is bipartite and messages cross between
the two clusters only.
"""

import numpy as np

import routing_sim as rs


def main() -> None:
    rng = np.random.default_rng(7)
    words = ["ship", "two", "red", "boxes"]
    x = rng.normal(size=(4, 6))
    w_q, w_k, w_v = rng.normal(size=(3, 6, 4)) / np.sqrt(6)
    inside = rs.simulate(x @ w_q, x @ w_k, x @ w_v, graph=rs.graphs.complete(4, labels=words))
    print("self-attention: one cluster of 4 nodes, every node asks and answers")
    print("(random vectors named after words: the shares show the mechanism, not English)")
    print(inside.routing_table(3))
    print(f"  {inside.stats.total_messages} messages between {len(words)} nodes")
    print()

    orders = ["order-1", "order-2", "order-3"]
    shelves = ["bolts", "nuts", "gears", "belts", "chains"]
    need = rng.normal(size=(3, 4))                    # what each order is looking for
    labels = rng.normal(size=(5, 4))                  # how each shelf can be found
    stock = rng.normal(size=(5, 2))                   # what each shelf hands out
    graph = rs.graphs.complete(3, 5, labels=orders, key_labels=shelves)
    call = rs.simulate(need, labels, stock, graph=graph, trace="full")
    print("cross-attention: the orders service calls the inventory service")
    print("(random vectors again: the names tell who calls whom, the shares carry no meaning)")
    print(call.routing_table(1))
    crossing = {(int(s), int(d)) for s, d, k in zip(call.trace.src, call.trace.dst,
                                                     call.trace.kind) if k == rs.Kind.QUERY}
    print(f"  {len(crossing)} order->shelf routes, {call.stats.total_messages} messages; "
          f"queries {need.shape} vs keys {labels.shape} and values {stock.shape} (L != S, "
          "Ev != E)")
    print()
    print("self :", rs.verify.verdict(inside.output, inside.weights, x @ w_q, x @ w_k,
                                     x @ w_v).line())
    print("cross:", rs.verify.verdict(call.output, call.weights, need, labels, stock).line())


if __name__ == "__main__":
    main()
