"""Regenerate the figures of docs/en/induction.md (needs matplotlib; trains seed 0, ~15 s).

    .venv/bin/python docs/images/induction.py

induction-routing.png: layer 1's previous-token head and layer 2's induction head on held-out
sequence 0, the routes each role predicts circled. induction-why.png: the loss of two layers
against one, and the copying accuracy when layer 2's queries, keys or values are read from
a stream that layer 1 never wrote to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import routing_sim as rs
from routing_sim.scenarios import induction_heads as ih

HERE = Path(__file__).resolve().parent


def ablated_accuracy(model: ih.Model, sequences: ih.Sequences, without: str | None) -> float:
    """Copying accuracy when layer 2's ``without`` read ("query", "key" or "value") sees the
    stream as it was before layer 1 wrote to it; the other reads see the whole stream."""
    tokens = sequences.tokens
    before = model.embedding[tokens] + model.positions                  # (B, L, D)
    first, second = model.layers
    reads = before[:, None]                                              # (B, 1, L, D)
    output = rs.attention(reads @ first.W_q, reads @ first.W_k, reads @ first.W_v,
                          is_causal=True)                                # (B, H, L, d)
    after = before + (output @ first.W_o).sum(axis=1)                    # (B, L, D)
    reads = {name: (before if name == without else after)[:, None] @ weight
             for name, weight in (("query", second.W_q), ("key", second.W_k),
                                  ("value", second.W_v))}                # (B, H, L, d) each
    output = rs.attention(reads["query"], reads["key"], reads["value"], is_causal=True)
    logits = (after + (output @ second.W_o).sum(axis=1)) @ model.unembedding
    return ih.accuracy(logits, sequences)


def routing_figure(result: ih.Training, path: Path) -> None:
    held = result.held_out
    tokens = held.tokens[0]
    batch, query, source = held.copy_routes
    mine = batch == 0
    roles = (ih.previous_token_share(result.weights[0], held),
             ih.induction_share(result.weights[1], held))
    heads = [int(np.argmax(share)) for share in roles]
    routes = ([(j, j - 1) for j in source[mine]], list(zip(query[mine], source[mine])))
    titles = ("layer 1, head {}: previous-token head", "layer 2, head {}: induction head")
    figure = Figure(figsize=(11, 5.4), layout="constrained")
    axes = figure.subplots(1, 2)
    labels = [f"{t}" for t in tokens]
    for axis, weights, head, marked, title in zip(axes, result.weights, heads, routes, titles):
        image = axis.imshow(weights[0, head], vmin=0, vmax=1, cmap="Greys")
        rows, columns = zip(*marked)
        axis.scatter(columns, rows, s=90, facecolors="none", edgecolors="C3", linewidths=1.5,
                     label="the role's route (where it is used)")
        axis.set_title(title.format(head), fontsize=10)
        axis.set_xticks(range(len(tokens)), labels, fontsize=7)
        axis.set_yticks(range(len(tokens)), labels, fontsize=7)
        axis.set_xlabel("pulls from (token id at each position)")
        axis.set_ylabel("token (token id at each position)")
    axes[0].legend(loc="upper right", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the token's budget")
    figure.suptitle("held-out sequence 0: token ids of a synthetic task (a segment appears "
                    "twice)", fontsize=10)
    figure.savefig(path, dpi=100)


def why_figure(result: ih.Training, path: Path) -> None:
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    curves, bars = figure.subplots(1, 2, width_ratios=(1.3, 1))
    curves.plot(result.losses, label=f"2 layers x {ih.HEADS} heads")
    curves.plot(result.baseline_losses, label=f"1 layer x {2 * ih.HEADS} heads")
    curves.set_xlabel("training step")
    curves.set_ylabel("loss on the copyable tokens")
    curves.legend()
    cases = {"whole model": None, "layer 2's queries\nwithout layer 1": "query",
             "layer 2's keys\nwithout layer 1": "key",
             "layer 2's values\nwithout layer 1": "value"}
    scores = [ablated_accuracy(result.model, result.held_out, without)
              for without in cases.values()]
    names = [*cases, "1 layer x 4 heads"]
    scores.append(result.baseline_accuracy)
    bars.barh(names[::-1], scores[::-1], color=["C1", "C0", "C0", "C0", "C0"])
    for y, score in enumerate(scores[::-1]):
        bars.text(score + 0.01, y, f"{score:.0%}", va="center", fontsize=9)
    bars.axvline(1 / ih.VOCAB, color="grey", linestyle=":", label="chance (1 in 20)")
    bars.set_xlim(0, 1.12)
    bars.set_xlabel(f"copying accuracy, {ih.HELD_OUT} held-out sequences")
    bars.legend(loc="lower right", fontsize=8)
    figure.savefig(path, dpi=100)
    for name, score in zip(names, scores):
        print(f"{name.replace(chr(10), ' '):<36} {score:.1%}")


def main() -> None:
    result = ih.train(0)
    routing_figure(result, HERE / "induction-routing.png")
    why_figure(result, HERE / "induction-why.png")


if __name__ == "__main__":
    main()
