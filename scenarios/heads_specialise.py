"""Heads specialise by themselves: three heads trained from random weights split three relations.

Eight tokens sit on a ring. Each token carries some content, a name, the name of one other
token it asks for, and its position. Its target output holds three things side by side:
the content of the token before it on the ring, of the token after it, and of the token it
names. No single routing table can fetch all three (one head pulls one mixture, and its
value projection cannot send one source to one slot and another source to another), but
three routing tables can.

A three-head ``rs.MultiHeadAttention`` starts from random weights and is trained with
Adam on the gradients that ``Run.backward`` sends back along the routes as messages
(``MultiHeadAttention.gradients``), output projection included. Nobody tells a head which
relation to follow: after training each head's routing table is measured against the three
relations and heads are matched to relations by the assignment with the largest total
share. A one-head layer of the same width trained the same way learns only part of the
task. Run it with another seed (``--seed N``) and the heads share the relations out
differently.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass

import numpy as np

import routing_sim as rs

TOKENS, CONTENT, NAMES = 8, 6, 8
WIDTH = CONTENT + 2 * NAMES + TOKENS      # content | own name | name asked for | position
RELATIONS = ("previous token", "next token", "named token")
STEPS, BATCH, EVALUATION_BATCH, RATE = 300, 16, 64, 0.03
LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Training:
    """What :func:`train` returns: both trained layers, their loss curves and the test data.

    ``relations`` maps each relation's name to a boolean array, ``(L, S)`` or ``(B, L, S)``,
    that marks its routes in ``batch``; every token has exactly one route of each relation,
    so a head's share on a relation is the mean over tokens of the weight on that route.
    ``history[t, h, r]`` is head h's share on relation r in training step t's batch.
    """

    model: rs.MultiHeadAttention
    untrained: rs.MultiHeadAttention
    baseline: rs.MultiHeadAttention
    losses: list[float]
    baseline_losses: list[float]
    batch: np.ndarray
    relations: dict[str, np.ndarray]
    history: np.ndarray


def sentences(rng: np.random.Generator, count: int
              ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``count`` ring sentences: features ``x``, the content alone, and each relation's routes."""
    content = rng.normal(size=(count, TOKENS, CONTENT))
    names = np.argsort(rng.random((count, TOKENS)), axis=1)        # (B, L) distinct per sentence
    token = np.arange(TOKENS)
    # the named token is any token but the asker and its two ring neighbours
    named = (token + rng.integers(2, TOKENS - 1, size=(count, TOKENS))) % TOKENS  # (B, L)
    own = np.eye(NAMES)[names]                                     # (B, L, NAMES)
    asked = np.take_along_axis(own, named[..., None], axis=1)     # (B, L, NAMES)
    position = np.broadcast_to(np.eye(TOKENS), (count, TOKENS, TOKENS))
    x = np.concatenate([content, own, asked, position], axis=-1)  # (B, L, WIDTH)
    ring = np.eye(TOKENS, dtype=bool)
    relations = {"previous token": np.roll(ring, -1, axis=1),     # (L, S): j = i - 1 mod L
                 "next token": np.roll(ring, 1, axis=1),          # (L, S): j = i + 1 mod L
                 "named token": np.eye(TOKENS, dtype=bool)[named]}  # (B, L, S)
    return x, content, relations


def targets(content: np.ndarray, relations: dict[str, np.ndarray]) -> np.ndarray:
    """Each token's target: the contents its three relations point at, side by side."""
    pulled = [np.broadcast_to(routes, content.shape[:1] + routes.shape[-2:]).astype(float)
              @ content for routes in relations.values()]          # each (B, L, CONTENT)
    return np.concatenate(pulled, axis=-1)                         # (B, L, 3·CONTENT)


def loss_and_gradient(output: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Half the mean squared error over the target slots, and its gradient ``d_output``."""
    error = output[..., :target.shape[-1]] - target                 # (B, L, 3·CONTENT)
    d_output = np.zeros_like(output)                               # other features are free
    d_output[..., :target.shape[-1]] = error / error.size
    return float((error ** 2).mean() / 2), d_output


def shares(weights: np.ndarray, relations: dict[str, np.ndarray]) -> np.ndarray:
    """``(H, R)``: each head's mean share on each relation's routes; weights ``(B, H, L, S)``."""
    return np.stack([(weights * routes[:, None] if routes.ndim == 3 else weights * routes)
                     .sum(axis=-1).mean(axis=(0, 2))               # (H,)
                     for routes in relations.values()], axis=1)


def match(share: np.ndarray) -> tuple[int, ...]:
    """The relation of each head, in the assignment that maximises the total share."""
    heads, relations = share.shape
    return max(itertools.permutations(range(relations), heads),
               key=lambda pick: share[np.arange(heads), pick].sum())


def train(seed: int = 0, steps: int | None = None) -> Training:
    """Train three heads and, on the same batches, one head of the same width.

    Examples
    --------
    >>> run = train(seed=0, steps=2)
    >>> run.batch.shape, len(run.losses), run.relations["named token"].shape
    ((64, 8, 30), 2, (64, 8, 8))
    """
    steps = STEPS if steps is None else steps
    model, losses, history = _fit(len(RELATIONS), seed, steps)
    baseline, baseline_losses, _ = _fit(1, seed, steps)
    batch, _, relations = sentences(np.random.default_rng((seed, 1)), EVALUATION_BATCH)
    return Training(model, rs.MultiHeadAttention(WIDTH, len(RELATIONS), seed=seed), baseline,
                    losses, baseline_losses, batch, relations, history)


def _fit(heads: int, seed: int, steps: int
         ) -> tuple[rs.MultiHeadAttention, list[float], np.ndarray]:
    """Adam on every weight of a fresh layer, with the gradients from the message run."""
    rng = np.random.default_rng((seed, 0))
    layer = rs.MultiHeadAttention(WIDTH, heads, seed=seed)
    weights = layer.state_dict()
    first = {name: np.zeros_like(w) for name, w in weights.items()}
    second = {name: np.zeros_like(w) for name, w in weights.items()}
    losses: list[float] = []
    history: list[np.ndarray] = []
    for step in range(1, steps + 1):
        x, content, relations = sentences(rng, BATCH)
        output, _ = layer(x, x, x, need_weights=False, trace="summary")
        loss, d_output = loss_and_gradient(output, targets(content, relations))
        losses.append(loss)
        grads = layer.gradients(x, x, x, d_output, trace="summary")
        run = layer.last_run                                       # the heads, run as messages
        assert run is not None
        history.append(shares(run.weights, relations))             # (H, R) on this batch
        for name, gradient in grads.items():
            if name in weights:
                first[name] = 0.9 * first[name] + 0.1 * gradient
                second[name] = 0.999 * second[name] + 0.001 * gradient ** 2
                weights[name] = weights[name] - RATE * (first[name] / (1 - 0.9 ** step)) / (
                    np.sqrt(second[name] / (1 - 0.999 ** step)) + 1e-8)
        layer.load_state_dict(weights)
    return layer, losses, np.array(history)                        # history (steps, H, R)


def main(plot_path: str | None = None, seed: int | str = 0, steps: int | str | None = None
         ) -> None:
    """Train, print the tables and the losses, and save the figure when given a path.

    ``routing-sim run heads_specialise heads.png 3`` passes the seed as text.
    """
    if plot_path:
        rs.plots.require_matplotlib()          # before 300 steps of training, not after
    result = train(int(seed), None if steps is None else int(steps))
    x, relations = result.batch, result.relations
    before, after = (_routing(layer, x) for layer in (result.untrained, result.model))
    share = shares(after.weights, relations)                       # (H, R)
    pick = match(share)
    _print_sentence(x[0])
    token = 5
    for title, run in (("before training (random weights)", before), ("after training", after)):
        print(f"\ntoken {token}'s routing table in each head, {title}:")
        _print_tables(run.weights[0, :, token], {name: routes[0, token] if routes.ndim == 3
                                                 else routes[token]
                                                 for name, routes in relations.items()})
    print("\nafter training, where each token of sentence 0 sends its biggest share:")
    print("          token " + "".join(f"{i:>3}" for i in range(TOKENS)))
    for head, table in enumerate(after.weights[0]):                # (L, S) per head
        print(f"  head {head}        " + "".join(f"{j:>3}" for j in table.argmax(-1)))
    print(f"\nshare of each head's budget on each relation ({len(x)} test sentences):")
    print(" " * 12 + "".join(f"{name:>16}" for name in RELATIONS) + "   matched to")
    one_head = shares(_routing(result.baseline, x).weights, relations)[0]
    for head, row in enumerate(share):
        print(f"  head {head}   " + "".join(f"{s:>16.2f}" for s in row)
              + f"   {RELATIONS[pick[head]]}")
    print("  one head " + "".join(f"{s:>16.2f}" for s in one_head) + "   (the baseline)")
    print("\nthe matching is found after training: the assignment of heads to relations with "
          "the largest total share")
    _print_losses(result.losses, result.baseline_losses)
    if plot_path:
        _plot(result, before, after, plot_path)
        print(f"saved {plot_path}")
    q, k, v = _heads(result.model, x)
    print(rs.verify.verdict(after.output, after.weights, q, k, v).line())


def _heads(layer: rs.MultiHeadAttention, x: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The layer's queries, keys and values per head ``(B, H, L, d)``, projected by hand."""
    biases = np.split(layer.state_dict()["in_proj_bias"], 3)
    q, k, v = (x @ weight.T + bias for weight, bias in zip(layer.projections(), biases))

    def split(p: np.ndarray) -> np.ndarray:                        # (B, L, E) -> (B, H, L, d)
        return p.reshape(*p.shape[:2], layer.num_heads, -1).transpose(0, 2, 1, 3)

    return split(q), split(k), split(v)


def _routing(layer: rs.MultiHeadAttention, x: np.ndarray) -> rs.Run:
    """The layer's heads run as messages over the test sentences."""
    return rs.simulate(*_heads(layer, x), trace="summary")


def _print_sentence(x: np.ndarray) -> None:
    names = x[:, CONTENT:CONTENT + NAMES].argmax(-1)               # (L,)
    asked = x[:, CONTENT + NAMES:CONTENT + 2 * NAMES].argmax(-1)  # (L,)
    print("sentence 0: eight tokens on a ring, each with a name and the name it asks for")
    print("  token     " + "".join(f"{i:>3}" for i in range(TOKENS)))
    print("  name      " + "".join(f"{LETTERS[n]:>3}" for n in names))
    print("  asks for  " + "".join(f"{LETTERS[n]:>3}" for n in asked))
    print("  target: [content of the token before, of the token after, of the named token]")


def _print_tables(rows: np.ndarray, routes: dict[str, np.ndarray]) -> None:
    """One line per head: its shares ``rows (H, S)``; a header marks each relation's route."""
    marks = ["" for _ in range(TOKENS)]
    for name, route in routes.items():
        marks[int(route.argmax())] = name.split()[0]
    print("          " + "".join(f"{'#' + str(j):>10}" for j in range(TOKENS)))
    print("          " + "".join(f"{mark:>10}" for mark in marks))
    for head, row in enumerate(rows):
        print(f"  head {head}  " + "".join(f"{s:>10.2f}" for s in row))


def _print_losses(losses: list[float], baseline: list[float]) -> None:
    print(f"\n{'step':>5} | {'loss, 3 heads':>13} | {'loss, 1 head of the same width':>30}")
    for step in sorted({1, 10, 25, 50, 100, 200, len(losses)} & set(range(1, len(losses) + 1))):
        print(f"{step:>5} | {losses[step - 1]:>13.4f} | {baseline[step - 1]:>30.4f}")
    print(f"3 heads: loss {losses[0]:.3f} -> {losses[-1]:.4f} "
          f"({losses[-1] / losses[0]:.2%} of the start); one head: "
          f"{baseline[0]:.3f} -> {baseline[-1]:.4f} ({baseline[-1] / baseline[0]:.0%})")


def _plot(result: Training, before: rs.Run, after: rs.Run, path: str) -> None:
    from matplotlib.figure import Figure

    heads = len(RELATIONS)
    figure = Figure(figsize=(11, 2.9 * heads), layout="constrained")
    axes = figure.subplots(heads, 3, width_ratios=(2.2, 1, 1))
    marker = dict(zip(RELATIONS, ("<", ">", "o")))
    for head in range(heads):
        curve, first, last = axes[head]
        for r, name in enumerate(RELATIONS):
            curve.plot(result.history[:, head, r], label=name)
        curve.set_ylim(0, 1)
        curve.set_ylabel(f"head {head}: share")
        for axis, run, title in ((first, before, "before"), (last, after, "after")):
            axis.imshow(run.weights[0, head], vmin=0, vmax=1, cmap="Greys")
            for name, routes in result.relations.items():
                queries, keys = np.nonzero(routes[0] if routes.ndim == 3 else routes)
                axis.scatter(keys, queries, marker=marker[name], s=18, facecolors="none",
                             edgecolors=f"C{RELATIONS.index(name)}")
            axis.set_title(f"head {head}, {title} (sentence 0)", fontsize=9)
            axis.set_ylabel("token")
        if head == heads - 1:
            curve.set_xlabel("training step")
            first.set_xlabel("pulls from token")
            last.set_xlabel("pulls from token")
    axes[0, 0].legend(loc="center right", fontsize=8)
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", nargs="?", help="write the figure to this file (matplotlib)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data (0)")
    parser.add_argument("--steps", type=int, help=f"training steps (default {STEPS})")
    arguments = parser.parse_args()
    main(arguments.figure, arguments.seed, arguments.steps)
