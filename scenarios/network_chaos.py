"""Network chaos: latency, jitter, loss, duplicates and reordering; the answer keeps its bits.

The protocol behaves like an RPC layer: a sender with no answer after a timeout resends,
receivers ignore copies. With enough retries the output is bit-identical to a clean
network. With no retries some routes never deliver: strict mode says which; degrade mode
renormalises over what arrived and reports what was lost.
"""

import numpy as np

import routing_sim as rs


def main() -> None:
    rng = np.random.default_rng(5)
    query, key, value = rng.normal(size=(3, 6, 4))
    clean = rs.simulate(query, key, value, is_causal=True)
    stormy = rs.Network(latency=2.0, jitter=1.5, jitter_dist="exponential", loss=0.3,
                        duplicate=0.2, reorder=0.3, spike=0.05, spike_delay=20.0,
                        retries=20, seed=11)
    run = rs.simulate(query, key, value, is_causal=True, network=stormy)
    print("a stormy network: 30% loss, 20% duplicates, reordering, delay spikes, 20 retries")
    print(run.stats)
    same = np.array_equal(run.output, clean.output)
    print(f"bit-identical to the clean network: {'yes' if same else 'NO'}")
    print()

    fragile = dict(loss=0.3, retries=0, seed=4)
    try:
        rs.simulate(query, key, value, is_causal=True, network=rs.Network(**fragile))
    except rs.DeliveryError as error:
        print("no retries, strict mode:")
        print(f"  DeliveryError: {str(error)[:110]}...")
    degraded = rs.simulate(query, key, value, is_causal=True,
                           network=rs.Network(on_missing="degrade", **fragile))
    print(f"no retries, degrade mode: {len(degraded.dropped)} routes lost for good, e.g.")
    for route in degraded.dropped[:3]:
        print(f"  query {route.query} lost key {route.key} in the {route.phase} phase "
              f"(its share would have been {route.share:.3f})")
    survived = np.tril(np.ones((6, 6), dtype=bool))
    for route in degraded.dropped:
        survived[route.query, route.key] = False
    print("  the output equals attention over the routes that survived:")
    print("  " + rs.verify.verdict(degraded.output, degraded.weights, query, key, value,
                                   attn_mask=survived).line())
    print()
    print(rs.verify.verdict(run.output, run.weights, query, key, value, is_causal=True).line())


if __name__ == "__main__":
    main()
