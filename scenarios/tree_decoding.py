"""Tree decoding on 8 devices: a KV cache sharded over devices, states reduced in ⌈log2 P⌉ rounds.

When decoding, a few query tokens meet a long KV cache. Each device attends to its shard
of the cache and keeps a partial state (max, denominator, numerator); the states meet up a
binary tree in ⌈log2 P⌉ rounds. What travels is the state of the query rows, so the bytes
do not depend on the cache length, while an all-gather of the cache would grow with it.
Rounding the states to float16 in transit shows the error such a reduction suffers.
"""

from __future__ import annotations

import math

import numpy as np

import routing_sim as rs

HEADS, DIM, DEVICES = 4, 16, 8
CLUSTER = rs.Cluster(devices=DEVICES, bandwidth=1e10, latency=2e-6, flops=1e12,
                     topology="switch")


def main() -> None:
    rng = np.random.default_rng(6)
    query = rng.normal(size=(HEADS, 1, DIM))                 # one new token
    print(f"decoding one token, H = {HEADS}, d = {DIM}, on P = {DEVICES} devices "
          f"({math.ceil(math.log2(DEVICES))} rounds)")
    print(" cache length   tree bytes   all-gather bytes   tree makespan (µs)")
    print("                             2(P-1)·S·H·d·s")
    for cache in (256, 1024, 4096):
        key, value = rng.normal(size=(2, HEADS, cache, DIM))
        tree = rs.context_parallel(query, key, value, strategy="tree", cluster=CLUSTER)
        gather = 2 * (DEVICES - 1) * cache * HEADS * DIM * 8   # all-gathering the cache
        print(f"  {cache:10d}   {int(tree.stats.bytes_sent.sum()):10d}   "
              f"{gather:16d}   {tree.stats.makespan * 1e6:12.3f}")
    print(f"tree messages: {tree.stats.messages['state']} = P - 1; each holds m, l and o "
          f"of the query rows: H·(d + 2)·s = {HEADS * (DIM + 2) * 8} bytes")
    print()
    print("who sends to whom (round: sender -> receiver):")
    for transfer in tree.trace.transfers:
        level = int(math.log2(transfer["src"] & -transfer["src"]))
        print(f"  round {level + 1}: device {transfer['src']} -> device {transfer['dst']}")
    low = rs.context_parallel(query, key, value, strategy="tree", cluster=CLUSTER,
                              transit_dtype="float16")
    reference = rs.attention(query, key, value)
    error = np.abs(low.output - reference).max() / np.abs(reference).max()
    print(f"states rounded to float16 in transit: relative error {error:.1e}")
    exact = rs.context_parallel(query, key, value, strategy="tree", cluster=CLUSTER,
                                numerics="exact")
    same = np.array_equal(exact.output, rs.attention(query, key, value, numerics="exact"))
    print(f"exact mode: bit-identical to attention(numerics='exact'): {'yes' if same else 'NO'}")
    print()
    print(rs.verify.verdict(tree.output, None, query, key, value).line())


if __name__ == "__main__":
    main()
