"""Peak RSS of one simulation in a fresh interpreter: ``python -m benchmarks.rss N HEADS``.

``python -m benchmarks.rss N HEADS WINDOW SINKS`` simulates on the causal sliding window
``rs.patterns.sliding_window(N, WINDOW, sinks=SINKS)`` instead of the full graph.

Prints bytes. Reads VmHWM (the high-water mark of this address space) rather than
``ru_maxrss``: the latter survives ``exec`` and so counts the resident pages of whatever
process forked this one.
"""

from __future__ import annotations

import resource
import sys

import numpy as np

import routing_sim as rs


def peak_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # not Linux


def main() -> None:
    n, heads, *pattern = (int(word) for word in sys.argv[1:])
    q, k, v = np.random.default_rng(0).normal(size=(3, heads, n, 64))
    graph = rs.patterns.sliding_window(n, pattern[0], sinks=pattern[1]) if pattern else None
    rs.simulate(q, k, v, graph=graph, trace="summary")
    print(peak_bytes())


if __name__ == "__main__":
    main()
