"""Multi-head attention: parallel routing strategies (previous token, same word, the first token).

Three hand-built heads run over the same sentence at once. Head 0 routes each token to
the token before it, head 1 to earlier copies of the same word, head 2 to the first
token. Each head is its own routing table; together they are one multi-head layer.
"""

import numpy as np

import routing_sim as rs

SENTENCE = ["the", "cat", "saw", "the", "dog"]
SHARP = 8.0   # large scores make the intended route win clearly


def heads() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(SENTENCE)
    position = np.eye(n)                                   # one-hot position features
    vocabulary = sorted(set(SENTENCE))
    word = np.eye(len(vocabulary))[[vocabulary.index(w) for w in SENTENCE]]
    # Head 0, previous token: query i looks for position i-1.
    q0, k0 = SHARP * np.roll(position, -1, axis=1), position
    # Head 1, same word: query and key are the word's identity.
    q1, k1 = SHARP * word, word
    # Head 2, attend to the first token: every key but token 0 is invisible.
    q2, k2 = SHARP * np.ones((n, 1)), np.eye(n)[:, :1]
    width = max(q0.shape[1], q1.shape[1], q2.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])))  # noqa: E731
    query = np.stack([pad(q0), pad(q1), pad(q2)])          # (3 heads, L, E)
    key = np.stack([pad(k0), pad(k1), pad(k2)])
    value = np.stack([position] * 3)                       # value = "which token I am"
    return query, key, value


def main() -> None:
    query, key, value = heads()
    graph = rs.graphs.causal(len(SENTENCE), labels=SENTENCE)
    run = rs.simulate(query, key, value, is_causal=True, scale=1.0, graph=graph)
    names = ["previous token", "same word", "first token"]
    for head, name in enumerate(names):
        print(f"head {head} ({name}):")
        table = run.routing_table(3, head=head)
        # "the" occurs twice (#0 and #3): each route names its position, not just its word.
        shares = [f"{route.share:.0%} to {route.name} (#{route.source}"
                  f"{', itself' if route.source == 3 else ''})"
                  for route in table.routes if route.share >= 0.01]
        print("  token 'the' (#3) sends " + ", ".join(shares))
    print()
    print("every token, every head (where the biggest share goes):")
    for i, token in enumerate(SENTENCE):
        biggest = [int(np.argmax(run.weights[h, i])) for h in range(3)]
        picks = [f"{SENTENCE[j]}#{j}" for j in biggest]
        print(f"  {token:<4} #{i}:  " + "   ".join(f"{name}: {p:<6}" for name, p in
                                                   zip(names, picks)))
    print(f"\n{run.stats.total_messages} messages: 3 heads x {run.stats.routes // 3} routes x 4")
    print(rs.verify.verdict(run.output, run.weights, query, key, value, is_causal=True,
                            scale=1.0).line())


if __name__ == "__main__":
    main()
