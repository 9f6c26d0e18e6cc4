"""Causal balance on 8 devices: a contiguous ring is imbalanced, zigzag and striped balance it.

With a causal mask the device holding the last block attends to every earlier token while
the first attends only to its own block: masked routes cost nothing, so the last device
does about twice the mean work and every ring step waits for it. Zigzag (device r holds
chunks r and 2P-1-r) balances the work exactly, striped (token t on device t mod P)
nearly, and the compute-bound speedup of striped over contiguous follows the closed form
(c + 1 + 2(P-1)c) / (P(c + 1)), approaching 2 as P grows (the Striped Attention paper's
theoretical maximum).
"""

from __future__ import annotations

import math

import numpy as np

import routing_sim as rs

HEADS, DIM, BLOCK = 2, 8, 32


def _run(layout: str, devices: int, query, key, value) -> rs.ParallelRun:
    cluster = rs.Cluster(devices=devices, bandwidth=math.inf, latency=0.0, flops=1e12)
    return rs.context_parallel(query, key, value, strategy="ring", layout=layout,
                               is_causal=True, cluster=cluster)


def main() -> None:
    devices = 8
    rng = np.random.default_rng(8)
    query, key, value = rng.normal(size=(3, HEADS, devices * BLOCK, DIM))
    print(f"causal ring attention, P = {devices}, N = {devices * BLOCK}, compute-bound "
          f"(free network)")
    print("compute per device, relative to the mean:")
    runs = {}
    for layout in ("contiguous", "zigzag", "striped"):
        runs[layout] = run = _run(layout, devices, query, key, value)
        share = run.stats.compute_time / run.stats.compute_time.mean()
        print(f"  {layout:10s} " + " ".join(f"{x:4.2f}" for x in share)
              + f"   busiest/mean {run.stats.imbalance:4.2f}")
    base = runs["contiguous"].stats.makespan
    print("makespan (µs) and speedup over contiguous:")
    for layout, run in runs.items():
        print(f"  {layout:10s} {run.stats.makespan * 1e6:8.4f}   "
              f"{base / run.stats.makespan:4.2f}x")
    gap = max(float(np.abs(run.output - runs["contiguous"].output).max()) for run in runs.values())
    print(f"the layouts' outputs agree to 1e-14 (other blocks, other roundings): "
          f"{'yes' if gap < 1e-14 else 'NO'}")
    print()
    print("striped speedup vs P (block c = 32): simulated and closed form")
    for count in (2, 4, 8, 16):
        q, k, v = (x[:, :count * BLOCK] for x in (query, key, value))
        if count * BLOCK > query.shape[1]:
            q, k, v = rng.normal(size=(3, HEADS, count * BLOCK, DIM))
        speedup = (_run("contiguous", count, q, k, v).stats.makespan
                   / _run("striped", count, q, k, v).stats.makespan)
        closed = (BLOCK + 1 + 2 * (count - 1) * BLOCK) / (count * (BLOCK + 1))
        print(f"  P = {count:2d}: {speedup:5.3f}x   (c + 1 + 2(P-1)c)/(P(c + 1)) = {closed:5.3f}")
    print()
    print(rs.verify.verdict(runs["zigzag"].output, None, query, key, value,
                            is_causal=True).line())


if __name__ == "__main__":
    main()
