"""Peak RSS of one simulation in a fresh interpreter: ``python -m benchmarks.rss N HEADS``.

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
    n, heads = int(sys.argv[1]), int(sys.argv[2])
    q, k, v = np.random.default_rng(0).normal(size=(3, heads, n, 64))
    rs.simulate(q, k, v, trace="summary")
    print(peak_bytes())


if __name__ == "__main__":
    main()
