"""Exact numerics: why float order changes last bits, and how exact mode pins every one of them.

Adding the same shares in another order changes the last bits. routing_sim's float mode
fixes the order per node, so every delivery schedule gives the same bits; exact mode goes
further: every dot product and sum is correctly rounded, so the simulation and the matrix
form agree bit for bit.
"""

import math

import numpy as np

import routing_sim as rs


def main() -> None:
    terms = [0.1, 0.2, 0.3]
    print(f"sum in order: {sum(terms)!r}; reversed: {sum(reversed(terms))!r}; "
          f"math.fsum: {math.fsum(terms)!r}")
    rng = np.random.default_rng(9)
    query, key, value = rng.normal(size=(3, 12, 16)) * 3
    schedules = [rs.Network(jitter=j, seed=s) for j, s in ((0.0, 0), (2.0, 1), (5.0, 2))]
    floats = [rs.simulate(query, key, value, network=n).output for n in schedules]
    exacts = [rs.simulate(query, key, value, network=n, numerics="exact").output
              for n in schedules]
    matrix = rs.attention(query, key, value)
    print(f"float mode, 3 schedules bit-identical: "
          f"{all(np.array_equal(floats[0], f) for f in floats)}")
    tolerance, _ = rs.verify.tolerance(query, key, value)
    print("float mode vs matrix form: not all bits equal (BLAS adds in another order), "
          f"all within the tolerance: {bool((np.abs(floats[0] - matrix) <= tolerance).all())}")
    exact_matrix = rs.attention(query, key, value, numerics="exact")
    print(f"exact mode, 3 schedules and the matrix form bit-identical: "
          f"{all(np.array_equal(exact_matrix, e) for e in exacts)}")
    run = rs.simulate(query, key, value, numerics="exact")
    print(f"exact SCORE messages carry two floats: {run.stats.bytes['SCORE'] // run.stats.routes}"
          " bytes each")
    print(rs.verify.verdict(run.output, run.weights, query, key, value).line())


if __name__ == "__main__":
    main()
