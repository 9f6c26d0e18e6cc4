"""Layer after layer: two attention layers trained from random weights compose an induction head.

The task is synthetic: token ids 0 to 19 that stand for nothing. In a sequence of 20
tokens a random segment of 3 to 6 tokens appears twice, at random places, and every other
token appears once. The model predicts each next token and is scored where the next token
can be copied: inside the segment's second copy. To copy, a token has to find the earlier
occurrence of itself and pull the token that came right after it.

The model is a two-layer, attention-only Transformer: a token embedding plus learned
positions, two layers of causal multi-head attention that add to a residual stream, and an
unembedding (no MLP, no normalisation). It starts from random weights and is trained with
Adam. Its attention runs through routing_sim, forward and backward (``rs.attention`` and
``rs.attention_backward``: the matrix form of the gradients that ``Run.backward`` sends as
messages, because 1,800 training runs as messages would take minutes); the rest of the
backward pass (unembedding, residual stream, per-head projections, embeddings) is written
out below in numpy. The trained model runs its attention as messages (``rs.simulate``) for
the held-out accuracy, the routing tables and the replay pages.

Two routings compose. A layer-1 head sends each token's budget to the token just before it
(a previous-token head), so each token's stream also carries which token preceded it. A
layer-2 head's query asks for "the token after a token like me", the keys carry that
layer-1 message, and so it routes each token to the token that followed the earlier
occurrence of itself and copies it: an induction head. A one-layer model with twice the
heads (so as many weights), trained on the same batches, has no earlier layer to tell a
token what preceded it, and fails: it guesses from where a token sits and which ids it has
seen.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

import routing_sim as rs

VOCAB, LENGTH = 20, 20               # token ids 0..19, sequences of 20 tokens
SHORTEST, LONGEST = 3, 6             # the repeated segment's length, drawn per sequence
WIDTH, HEADS, HEAD_WIDTH = 32, 2, 8  # residual stream D, heads per layer H, head width d
STEPS, BATCH, RATE = 600, 32, 0.01
HELD_OUT = 256                       # held-out sequences for the accuracy
ENGINES = ("messages", "matrix")
ROLES = {"previous token": "the route to the token just before",
         "induction": "the route to the token that followed the earlier occurrence of itself"}


@dataclass
class Layer:
    """One attention layer's per-head projections.

    ``W_q``, ``W_k``, ``W_v`` ``(H, D, d)`` read the residual stream into each head's
    queries, keys and values; ``W_o`` ``(H, d, D)`` writes each head's output back.
    """

    W_q: np.ndarray
    W_k: np.ndarray
    W_v: np.ndarray
    W_o: np.ndarray


class Pass(NamedTuple):
    """What one layer read and routed in a forward pass (the backward pass needs it)."""

    stream: np.ndarray     # (B, L, D) the residual stream the layer read
    query: np.ndarray      # (B, H, L, d)
    key: np.ndarray        # (B, H, L, d)
    value: np.ndarray      # (B, H, L, d)
    output: np.ndarray     # (B, H, L, d) each head's pulled values
    weights: np.ndarray    # (B, H, L, L) each head's routing tables
    run: rs.Run | None     # the heads' message run (engine="messages")


@dataclass
class Model:
    r"""An attention-only Transformer: ``logits = (E[t] + P + \sum_l attn_l) U``.

    Each layer adds ``\sum_h softmax(causal(q_h k_h^T / \sqrt{d})) v_h W_o[h]`` to the
    residual stream, with ``q_h = x W_q[h]`` (likewise k, v) read from the stream ``x`` as
    the layer finds it. ``embedding`` is ``(V, D)``, ``positions`` ``(L, D)``,
    ``unembedding`` ``(D, V)``.
    """

    embedding: np.ndarray
    positions: np.ndarray
    layers: list[Layer]
    unembedding: np.ndarray

    def forward(self, tokens: np.ndarray, return_weights: bool = False,
                engine: str = "messages") -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
        """Next-token logits for int ``tokens`` ``(B, L)``, and each layer's routing shares.

        ``engine="messages"`` runs every layer's heads as messages (:func:`rs.simulate`),
        ``"matrix"`` in matrix form (:func:`rs.attention`). Returns ``logits`` ``(B, L, V)``,
        or ``(logits, weights)`` with one ``(B, H, L, L)`` array per layer.

        Examples
        --------
        >>> model = initial(np.random.default_rng(0), layers=2, heads=HEADS)
        >>> logits, weights = model.forward(np.arange(6)[None], return_weights=True)
        >>> logits.shape, [w.shape for w in weights]
        ((1, 6, 20), [(1, 2, 6, 6), (1, 2, 6, 6)])
        """
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= len(self.positions):
            raise rs.ShapeError(f"tokens must be (B, L) with 1 <= L <= {len(self.positions)}, "
                                f"got shape {tokens.shape}")
        if tokens.dtype.kind not in "iu" or tokens.min(initial=0) < 0 or tokens.max(
                initial=0) >= len(self.embedding):
            raise rs.InvalidArgumentError(
                f"tokens must be int ids in [0, {len(self.embedding)}), got dtype "
                f"{tokens.dtype} with values from {tokens.min()} to {tokens.max()}")
        if engine not in ENGINES:
            raise rs.InvalidArgumentError(f"engine must be one of {ENGINES}, got {engine!r}")
        logits, passes, _ = _forward(self, tokens, engine)
        if return_weights:
            return logits, [layer.weights for layer in passes]
        return logits

    def parameters(self) -> dict[str, np.ndarray]:
        """Every weight by name (``layers.0.W_q``, ...): the arrays themselves, not copies."""
        weights = {"embedding": self.embedding, "positions": self.positions,
                   "unembedding": self.unembedding}
        for index, layer in enumerate(self.layers):
            for name in ("W_q", "W_k", "W_v", "W_o"):
                weights[f"layers.{index}.{name}"] = getattr(layer, name)
        return weights


class Sequences(NamedTuple):
    """Sequences in which one segment appears twice; every other token appears once.

    ``first`` and ``second`` are where the two copies start, ``length`` how long they are.
    """

    tokens: np.ndarray     # (B, L) int token ids
    first: np.ndarray      # (B,)
    second: np.ndarray     # (B,)
    length: np.ndarray     # (B,)

    @property
    def copied(self) -> np.ndarray:
        """``(B, L)``: positions whose next token can be copied (inside the second copy)."""
        position = np.arange(self.tokens.shape[1])                   # (L,)
        return ((position >= self.second[:, None])
                & (position < (self.second + self.length - 1)[:, None]))

    @property
    def copy_routes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(batch, query, source)``, ``(N,)`` each: every copyable token, and the token
        that followed its earlier occurrence (the one whose id comes next)."""
        batch, query = np.nonzero(self.copied)
        return batch, query, query - (self.second - self.first)[batch] + 1


@dataclass(frozen=True)
class Training:
    """What :func:`train` returns: both trained models, their loss curves, the test data.

    ``accuracy`` and ``baseline_accuracy`` are the shares of the copyable next tokens of
    ``held_out`` that each model predicts (argmax), its attention run as messages;
    ``weights`` are the trained model's routing shares there, one ``(B, H, L, L)`` per layer.
    """

    model: Model
    baseline: Model
    losses: list[float]
    baseline_losses: list[float]
    held_out: Sequences
    weights: list[np.ndarray]
    accuracy: float
    baseline_accuracy: float


def repeats(rng: np.random.Generator, count: int) -> Sequences:
    """``count`` sequences of :data:`LENGTH` ids in which one random segment appears twice.

    The two copies sit at random places and may touch; every other position holds an id
    that appears nowhere else in the sequence, so the earlier occurrence of a token in the
    second copy is unique.

    Examples
    --------
    >>> s = repeats(np.random.default_rng(0), 1)
    >>> s.tokens[0].tolist()
    [4, 19, 6, 2, 13, 16, 3, 11, 10, 8, 4, 19, 6, 2, 13, 16, 0, 12, 7, 5]
    >>> int(s.first[0]), int(s.second[0]), int(s.length[0])
    (0, 10, 6)
    """
    length = rng.integers(SHORTEST, LONGEST + 1, size=count)            # (B,)
    first, second = np.empty((2, count), dtype=np.int64)
    tokens = np.empty((count, LENGTH), dtype=np.int64)
    for b, m in enumerate(length):
        ids = rng.permutation(VOCAB)[:LENGTH - m]                       # distinct ids
        a, c = np.sort(rng.integers(0, LENGTH - 2 * m + 1, size=2))
        first[b], second[b] = a, c + m                                  # copies do not overlap
        once = np.ones(LENGTH, dtype=bool)
        once[a:a + m] = once[c + m:c + 2 * m] = False
        tokens[b, a:a + m] = tokens[b, c + m:c + 2 * m] = ids[:m]
        tokens[b, once] = ids[m:]
    return Sequences(tokens, first, second, length)


def initial(rng: np.random.Generator, layers: int, heads: int) -> Model:
    """A model with random weights, each scaled so that a layer keeps its input's size."""
    def normal(*shape: int, fan_in: int = 1) -> np.ndarray:
        return rng.normal(size=shape) / np.sqrt(fan_in)

    return Model(normal(VOCAB, WIDTH), normal(LENGTH, WIDTH),
                 [Layer(normal(heads, WIDTH, HEAD_WIDTH, fan_in=WIDTH),
                        normal(heads, WIDTH, HEAD_WIDTH, fan_in=WIDTH),
                        normal(heads, WIDTH, HEAD_WIDTH, fan_in=WIDTH),
                        normal(heads, HEAD_WIDTH, WIDTH, fan_in=heads * HEAD_WIDTH))
                  for _ in range(layers)],
                 normal(WIDTH, VOCAB, fan_in=WIDTH))


def train(seed: int = 0, steps: int | None = None) -> Training:
    """Train the two-layer model and, on the same batches, a one-layer model of as many
    heads (so as many weights), then score both on held-out sequences.

    Examples
    --------
    >>> run = train(seed=0, steps=2)
    >>> len(run.losses), len(run.model.layers), run.baseline.layers[0].W_q.shape
    (2, 2, (4, 32, 8))
    """
    steps = STEPS if steps is None else steps
    model, losses = _fit(initial(np.random.default_rng((seed, 1)), 2, HEADS), seed, steps)
    baseline, baseline_losses = _fit(initial(np.random.default_rng((seed, 1)), 1, 2 * HEADS),
                                     seed, steps)
    held_out = repeats(np.random.default_rng((seed, 2)), HELD_OUT)
    logits, weights = model.forward(held_out.tokens, return_weights=True)
    return Training(model, baseline, losses, baseline_losses, held_out, weights,
                    accuracy(logits, held_out),
                    accuracy(baseline.forward(held_out.tokens), held_out))


def accuracy(logits: np.ndarray, sequences: Sequences) -> float:
    """The share of copyable next tokens whose logit ``(B, L, V)`` is the largest."""
    right = logits[:, :-1].argmax(-1) == sequences.tokens[:, 1:]         # (B, L-1)
    return float(right[sequences.copied[:, :-1]].mean())


def previous_token_share(weights: np.ndarray, sequences: Sequences) -> np.ndarray:
    """``(H,)``: each head's mean share on the route to the token just before, at the
    tokens an induction head pulls from (the first copy's, after its first): where layer 2
    reads what layer 1 wrote. ``weights`` ``(B, H, L, L)``."""
    batch, _, source = sequences.copy_routes
    return weights[batch, :, source, source - 1].mean(axis=0)             # (N, H) -> (H,)


def induction_share(weights: np.ndarray, sequences: Sequences) -> np.ndarray:
    """``(H,)``: each head's mean share, over the copyable tokens, on the token that followed
    the earlier occurrence of the token itself. ``weights`` ``(B, H, L, L)``."""
    batch, query, source = sequences.copy_routes
    return weights[batch, :, query, source].mean(axis=0)                  # (N, H) -> (H,)


def guessing_among_seen(sequences: Sequences) -> float:
    """The accuracy of guessing uniformly among the ids already seen, the current one aside:
    what knowing the context without knowing its order gives."""
    chances = [1 / len(set(tokens[:i].tolist()) - {int(tokens[i])})
               for tokens, copied in zip(sequences.tokens, sequences.copied)
               for i in np.flatnonzero(copied)]
    return float(np.mean(chances))


def _fit(model: Model, seed: int, steps: int) -> tuple[Model, list[float]]:
    """Adam on every weight, the attention's gradients from ``rs.attention_backward``."""
    rng = np.random.default_rng((seed, 0))
    weights = model.parameters()
    first = {name: np.zeros_like(w) for name, w in weights.items()}
    second = {name: np.zeros_like(w) for name, w in weights.items()}
    losses: list[float] = []
    for step in range(1, steps + 1):
        batch = repeats(rng, BATCH)
        logits, passes, top = _forward(model, batch.tokens, "matrix")
        loss, d_logits = _loss_and_gradient(logits, batch)
        losses.append(loss)
        for name, gradient in _backward(model, batch.tokens, passes, top, d_logits).items():
            first[name] = 0.9 * first[name] + 0.1 * gradient
            second[name] = 0.999 * second[name] + 0.001 * gradient ** 2
            weights[name] -= RATE * (first[name] / (1 - 0.9 ** step)) / (
                np.sqrt(second[name] / (1 - 0.999 ** step)) + 1e-8)    # in place: the model's
    return model, losses


def _forward(model: Model, tokens: np.ndarray, engine: str, labels: list[str] | None = None,
             trace: str = "summary") -> tuple[np.ndarray, list[Pass], np.ndarray]:
    """Logits ``(..., L, V)`` for tokens ``(..., L)``, what each layer read and routed (with
    its Run when run as messages, labelled and traced as asked), and the final stream."""
    stream = model.embedding[tokens] + model.positions[:tokens.shape[-1]]  # (..., L, D)
    passes = []
    for layer in model.layers:
        reads = stream[..., None, :, :]                                    # (..., 1, L, D)
        query, key, value = (reads @ layer.W_q, reads @ layer.W_k,
                             reads @ layer.W_v)                            # (..., H, L, d)
        run = None
        if engine == "messages":
            run = rs.simulate(query, key, value, is_causal=True, labels=labels, trace=trace)
            output, weights = run.output, run.weights                      # (..., H, L, d|L)
        else:
            output, weights = rs.attention(query, key, value, is_causal=True,
                                           return_weights=True)
        passes.append(Pass(stream, query, key, value, output, weights, run))
        stream = stream + (output @ layer.W_o).sum(axis=-3)                # (..., L, D)
    return stream @ model.unembedding, passes, stream


def _loss_and_gradient(logits: np.ndarray, batch: Sequences) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of the copyable next tokens, and its gradient ``d_logits``."""
    scored = batch.copied[:, :-1]                                      # (B, L-1)
    target = batch.tokens[:, 1:]                                       # (B, L-1)
    shifted = logits[:, :-1] - logits[:, :-1].max(-1, keepdims=True)  # (B, L-1, V)
    log_shares = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_shares, target[..., None], -1)[..., 0]  # (B, L-1)
    count = scored.sum()
    d_logits = np.zeros_like(logits)                                   # (B, L, V)
    d_logits[:, :-1] = np.exp(log_shares) - np.eye(VOCAB)[target]
    d_logits[:, :-1] *= scored[..., None] / count
    return float(-picked[scored].sum() / count), d_logits


def _backward(model: Model, tokens: np.ndarray, passes: list[Pass], top: np.ndarray,
              d_logits: np.ndarray) -> dict[str, np.ndarray]:
    """Every weight's gradient, by name (as :meth:`Model.parameters`), back through the
    residual stream; each layer's attention goes through ``rs.attention_backward``."""
    grads = {"unembedding": top.reshape(-1, WIDTH).T @ d_logits.reshape(-1, VOCAB)}  # (D, V)
    d_stream = d_logits @ model.unembedding.T                          # (B, L, D)
    for index in reversed(range(len(model.layers))):
        layer, read = model.layers[index], passes[index]
        name = f"layers.{index}."
        grads[name + "W_o"] = (read.output.transpose(0, 1, 3, 2)
                               @ d_stream[:, None]).sum(axis=0)        # (H, d, D)
        d_output = d_stream[:, None] @ layer.W_o.transpose(0, 2, 1)    # (B, H, L, d)
        d_projected = rs.attention_backward(read.query, read.key, read.value, d_output,
                                            is_causal=True)            # 3 x (B, H, L, d)
        columns = read.stream.transpose(0, 2, 1)[:, None]              # (B, 1, D, L)
        for weight, d_heads in zip(("W_q", "W_k", "W_v"), d_projected):
            grads[name + weight] = (columns @ d_heads).sum(axis=0)     # (H, D, d)
            # the residual: the layer's input gets the stream's gradient plus its reads'
            d_stream = d_stream + (d_heads @ getattr(layer, weight).transpose(0, 2, 1)
                                   ).sum(axis=1)                       # (B, L, D)
    grads["embedding"] = np.zeros_like(model.embedding)                # (V, D)
    np.add.at(grads["embedding"], tokens, d_stream)
    grads["positions"] = d_stream.sum(axis=0)                          # (L, D)
    return grads



def main(page: str | None = None, seed: int | str = 0) -> None:
    """Train, print both layers' routing and the accuracies, and write one replay page per
    layer when given a path.

    ``routing-sim run induction_heads page.html 3`` passes the seed as text.
    """
    result = train(int(seed))
    held = result.held_out
    print(f"the task (synthetic): {LENGTH} token ids from 0 to {VOCAB - 1} that stand for "
          f"nothing. A segment of {SHORTEST} to {LONGEST}\nids appears twice, every other id "
          "once. Inside the second copy each next token can be copied from\nthe first: "
          "that is where the models are scored.")
    print(f"trained from random weights, {STEPS} steps of {BATCH} sequences (seed {seed}): "
          f"2 layers x {HEADS} heads,\nand 1 layer x {2 * HEADS} heads (as many weights) on "
          "the same batches")
    tokens = held.tokens[0]
    a, b, m = int(held.first[0]), int(held.second[0]), int(held.length[0])
    print(f"\nheld-out sequence 0: a segment of {m} at positions {a}-{a + m - 1} and again "
          f"at {b}-{b + m - 1}")
    _print_row("position", range(LENGTH))
    _print_row("token id", tokens)
    _, passes, _ = _forward(result.model, tokens, "messages",
                            labels=[f"id{token}" for token in tokens], trace="full")
    batch, query, source = held.copy_routes
    after = dict(zip(query[batch == 0].tolist(), source[batch == 0].tolist()))
    sources = set(after.values())              # where layer 2 reads what layer 1 wrote
    expected = {"previous token": [j - 1 if j in sources else "-" for j in range(LENGTH)],
                "induction": [after.get(i, "-") for i in range(LENGTH)]}
    for layer, (read, role) in enumerate(zip(passes, ROLES)):
        print(f"\nlayer {layer + 1}: where each token sends its largest share (sequence 0)")
        _print_row("position", range(LENGTH))
        for head, table in enumerate(read.weights):                        # (L, L) per head
            _print_row(f"head {head}", table.argmax(-1))
        _print_row(role, expected[role])
    shares = [(previous_token_share(weights, held), induction_share(weights, held))
              for weights in result.weights]                             # per layer, (H,) each
    print(f"\neach head's mean share on a role's routes ({HELD_OUT} held-out sequences):")
    print(" " * 16 + "".join(f"{role:>16}" for role in ROLES))
    for layer, pair in enumerate(shares):
        for head in range(HEADS):
            print(f"  layer {layer + 1} head {head}" + "".join(f"{share[head]:>16.2f}"
                                                           for share in pair))
    for role, routes in ROLES.items():
        print(f"  {role}: {routes}")
    previous, induction = int(np.argmax(shares[0][0])), int(np.argmax(shares[1][1]))
    i = sorted(after)[1]                       # the second copyable token of sequence 0
    j = after[i]
    print(f"\nhow the two compose for the token at position {i} (id {tokens[i]}, seen before "
          f"at {j - 1}):")
    print(f"layer 1, head {previous}: position {j} pulls id {tokens[j - 1]} from the token "
          "just before it, so its stream\nnow says which token preceded it")
    print(_indent(passes[0].run.routing_table(j, head=previous)))
    print(f"layer 2, head {induction}: position {i} (id {tokens[i]}) looks for a stream that "
          f"says \"after an id {tokens[i]}\", finds\nposition {j} and copies its id "
          f"{tokens[j]}, the next token")
    print(_indent(passes[1].run.routing_table(i, head=induction)))
    print(f"\ncopying accuracy on {HELD_OUT} held-out sequences ({len(held.copy_routes[0])} "
          "copyable tokens, attention run as messages):")
    print(f"  2 layers x {HEADS} heads  {result.accuracy:6.1%}")
    print(f"  1 layer x {2 * HEADS} heads   {result.baseline_accuracy:6.1%}   no layer before "
          "it to tell a token what preceded it")
    print(f"  guessing           {guessing_among_seen(held):6.1%}   uniformly among the ids "
          "already seen, the current one aside")
    print(f"  chance             {1 / VOCAB:6.1%}   1 in {VOCAB}")
    _print_losses(result.losses, result.baseline_losses)
    if page:
        written = _write_pages(passes, Path(page))
        print("\none replay page per layer, since a page replays one attention run and layer "
              "2's starts\nfrom layer 1's output:")
        for path in written:
            print(f"  wrote {path}")
    for layer, read in enumerate(passes):
        verdict = rs.verify.verdict(read.output, read.weights, read.query, read.key,
                                    read.value, is_causal=True)
        print(f"layer {layer + 1}: {verdict.line()}")


def _print_row(title: str, cells) -> None:
    print(f"  {title:<14}" + "".join(f"{cell:>3}" for cell in cells))


def _indent(table: rs.RoutingTable) -> str:
    return "\n".join("  " + line for line in str(table).splitlines())


def _print_losses(losses: list[float], baseline: list[float]) -> None:
    print(f"\n{'step':>5} | {'loss, 2 layers':>14} | {'loss, 1 layer':>13}")
    for step in sorted({1, 100, 200, 300, 400, 500, len(losses)} & set(range(1, len(losses) + 1))):
        print(f"{step:>5} | {losses[step - 1]:>14.3f} | {baseline[step - 1]:>13.3f}")


def _write_pages(passes: list[Pass], page: Path) -> list[Path]:
    """One replay page per layer, named after ``page``: ``NAME-layer1.html``, ..."""
    written = []
    for layer, read in enumerate(passes):
        assert read.run is not None                                        # run as messages
        written.append(read.run.to_html(page.with_name(
            f"{page.stem}-layer{layer + 1}{page.suffix or '.html'}")))
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", help="write the replay pages to PAGE-layer1.html "
                        "and PAGE-layer2.html")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data (0)")
    arguments = parser.parse_args()
    main(arguments.page, arguments.seed)
