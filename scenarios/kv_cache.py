"""Incremental decoding with a KV cache: tokens join the cluster one at a time.

Each new token publishes its key and value (they stay on its node) and queries every token
before it and itself. One round costs 4·t messages for the t-th token, where recomputing
the whole causal sequence would cost 4·t(t+1)/2, and each step's output is row t of full
causal attention.

Then a prompt is prefilled as one chunk (``extend``) and decoding goes on token by token
under a window mask: the mask sees each token's position in the whole sequence, so every
round still equals rows of whole-sequence attention with that window.
"""

import numpy as np

import routing_sim as rs


def main() -> None:
    rng = np.random.default_rng(4)
    words = ["routing", "is", "all", "you", "need"]
    query, key, value = rng.normal(size=(3, len(words), 4))
    full = rs.attention(query, key, value, is_causal=True)
    print("the words name random vectors: the shares show the mechanism, not English")
    print()
    decoder = rs.Decoder(network=rs.Network(latency=1.0))
    for t, word in enumerate(words):
        step = decoder.step(query[t], key[t], value[t], label=word)
        gap = float(np.abs(step.output - full[t]).max())
        print(f"step {t}: '{word}' joins; {step.messages} messages "
              f"(recomputing everything: {step.recompute_messages}); "
              f"equals row {t} of causal attention: {'yes' if gap < 1e-12 else 'NO'}")
    print()
    print(step.run.routing_table(step.position))
    print(f"\ntotal messages with the cache: {decoder.messages}")
    print("\nprefill the first 3 tokens in one round, then decode with a window of 2:")
    alibi = rs.mods.alibi([0.5])                   # a score mod that reads positions, too

    def latest_two(b, h, q_idx, kv_idx):
        return q_idx - kv_idx < 2

    windowed = rs.attention(query, key, value, is_causal=True, mask_mod=latest_two,
                            score_mod=alibi)
    prefilled = rs.Decoder(mask_mod=latest_two, score_mod=alibi)
    rounds = [prefilled.extend(query[:3], key[:3], value[:3], labels=words[:3])]
    rounds += [prefilled.step(query[t], key[t], value[t], label=words[t]) for t in (3, 4)]
    for joined in rounds:
        rows = windowed[joined.positions.start:joined.positions.stop]
        gap = float(np.abs(joined.output - rows.reshape(joined.output.shape)).max())
        print(f"positions {list(joined.positions)}: {joined.messages} messages; equals the "
              f"windowed rows: {'yes' if gap < 1e-12 else 'NO'}")
    print()
    print(rs.verify.verdict(step.output[None], step.run.weights[0], query[-1:], key, value)
          .line())


if __name__ == "__main__":
    main()
