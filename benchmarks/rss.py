"""Peak RSS of one simulation in a fresh interpreter: ``python -m benchmarks.rss N HEADS``."""

from __future__ import annotations

import resource
import sys

import numpy as np

import routing_sim as rs


def main() -> None:
    n, heads = int(sys.argv[1]), int(sys.argv[2])
    q, k, v = np.random.default_rng(0).normal(size=(3, heads, n, 64))
    rs.simulate(q, k, v, trace="summary")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


if __name__ == "__main__":
    main()
