"""Streaming softmax: the answer forms as messages arrive, each arrival rescaling the running state.

With softmax="online" a token does not wait for every score. Each arriving (score, value)
pair updates its running max m, normaliser l and accumulator o; when a bigger score
arrives, what was gathered so far is rescaled by exp(m_old - m_new). Watch one token's
output converge to the matrix-form answer.
"""

import numpy as np

import routing_sim as rs


def main() -> None:
    rng = np.random.default_rng(2)
    query, key, value = rng.normal(size=(3, 6, 3)) * 1.5
    run = rs.simulate(query, key, value, softmax="online", trace="full",
                      network=rs.Network(latency=1.0, jitter=3.0, seed=8))
    expected = rs.attention(query, key, value)
    token = 5
    trace = run.trace
    values = (trace.kind == rs.Kind.VALUE) & (trace.dst == token)
    print(f"token {token}'s answer forming (target {np.round(expected[token], 3).tolist()}):")
    print(f"{'time':>7}  {'from':>4}  {'rescale':>8}  partial output o / l")
    for (time, partial), source, factor in zip(run.stream(token), trace.src[values],
                                               trace.rescale[values]):
        print(f"{time:7.3f}  {int(source):>4}  {factor:8.4f}  {np.round(partial, 3).tolist()}")
    two_phase = rs.simulate(query, key, value)
    gap = float(np.abs(run.output - two_phase.output).max())
    print(f"\nonline vs two-phase: max difference {'< 1e-12' if gap < 1e-12 else gap}")
    print(rs.verify.verdict(run.output, run.weights, query, key, value).line())


if __name__ == "__main__":
    main()
