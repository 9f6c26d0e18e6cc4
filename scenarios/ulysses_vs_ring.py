"""Ulysses vs Ring on 4 devices: a bandwidth sweep shows where each wins.

Ring Attention moves 2(P-1)(N/P)·H·d·s bytes per device but overlaps them with compute;
DeepSpeed-Ulysses moves 4(P-1)(N/P)(H/P)·d·s (half as much at P = 4) in two all-to-alls
that nothing overlaps. On a slow network the smaller volume wins (Ulysses); once the ring's
transfers hide behind compute (block c >= c*), the ring wins. The sweep runs with
rs.sweep; `routing-sim sweep ulysses_vs_ring -g strategy=ring,ulysses -g bandwidth=1e9,1e12`
runs the same points from the command line.
"""

from __future__ import annotations

import numpy as np

import routing_sim as rs
from routing_sim.parallel import measure

DEVICES, TOKENS, HEADS, DIM = 4, 256, 8, 16


def point(strategy: str = "ring", bandwidth: float = 1e10, devices: int = DEVICES,
          tokens: int = TOKENS, latency: float = 1e-7) -> dict:
    """One run on a switch of ``devices`` (flops 1e12), summarised (a sweep point)."""
    return measure(strategy, devices=devices, tokens=tokens, heads=HEADS, dim=DIM,
                   bandwidth=bandwidth, latency=latency, flops=1e12, topology="switch")


def main() -> None:
    bandwidths = [1e9, 1e10, 1e11, 1e12, 1e13]
    records = rs.sweep(point, {"bandwidth": bandwidths, "strategy": ["ring", "ulysses"]})
    by_point = {(r["bandwidth"], r["strategy"]): r for r in records}
    block = TOKENS // DEVICES
    print(f"P = {DEVICES}, N = {TOKENS}, H = {HEADS}, d = {DIM}, float64, F = 1e12 FLOP/s, "
          f"block c = {block}")
    ring_bytes = by_point[(1e9, "ring")]["bytes_sent"] // DEVICES
    ulysses_bytes = by_point[(1e9, "ulysses")]["bytes_sent"] // DEVICES
    print(f"bytes per device: ring {ring_bytes} = 2(P-1)(N/P)·H·d·s, ulysses {ulysses_bytes} "
          f"= 4(P-1)(N/P)(H/P)·d·s")
    print(" bandwidth (B/s)   c*      ring (µs)  ulysses (µs)  winner   ring idle share")
    for bandwidth in bandwidths:
        ring, ulysses = by_point[(bandwidth, "ring")], by_point[(bandwidth, "ulysses")]
        winner = "ring" if ring["makespan"] < ulysses["makespan"] else "ulysses"
        print(f"  {bandwidth:9.0e}   {ring['critical_block']:7.3g} {ring['makespan'] * 1e6:10.3f}"
              f" {ulysses['makespan'] * 1e6:12.3f}   {winner:7s}  {ring['idle_share']:6.3f}")
    worst = max(r["max_relative_error"] for r in records)
    print(f"largest relative error against matrix attention over the sweep: "
          f"{'below 1e-13' if worst < 1e-13 else worst}")
    print()
    query, key, value = np.random.default_rng(2).normal(size=(3, HEADS, TOKENS, DIM))
    run = rs.context_parallel(query, key, value, strategy="ulysses", is_causal=True,
                              cluster=rs.Cluster(devices=DEVICES, topology="switch"))
    print(f"causal Ulysses: every device attends over all N tokens for H/P = "
          f"{HEADS // DEVICES} heads, so the work is balanced: busiest/mean "
          f"{run.stats.imbalance:.2f}")
    print(rs.verify.verdict(run.output, None, query, key, value, is_causal=True).line())


if __name__ == "__main__":
    main()
