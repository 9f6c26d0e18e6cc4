"""Learning to route: gradients flow back along the routes, the routing table learns; top-1 not.

The task: every token must fetch the value of the token just before it. Queries and keys
are learned projections of (content, position); values are the content. Training uses the
gradients that the backward pass sends back along the routes as messages, and Adam. With
soft routing the loss falls and token 4's routing table goes from nearly uniform to sharp.
The same run with hard top-1 routing stalls: its gradient with respect to the scores is
zero, so the router never learns where to go.
"""

from __future__ import annotations

import sys

import numpy as np

import routing_sim as rs

TOKENS, CONTENT, HEAD = 6, 4, 8
STEPS, BATCH, RATE = 150, 16, 0.05


def batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (content + one-hot position), values (content) and targets (previous)."""
    content = rng.normal(size=(BATCH, TOKENS, CONTENT))
    position = np.broadcast_to(np.eye(TOKENS), (BATCH, TOKENS, TOKENS))
    features = np.concatenate([content, position], axis=-1)           # (B, T, F)
    target = np.concatenate([content[:, :1], content[:, :-1]], axis=1)  # token t-1's value
    return features, content, target


def train(routing: str, seed: int = 0) -> tuple[list[float], rs.Run, tuple]:
    """Adam on W_q and W_k with message-passing gradients. Returns the loss curve, the last
    run and its inputs (query, key, value)."""
    rng = np.random.default_rng(seed)
    width = CONTENT + TOKENS
    weights = {"query": rng.normal(size=(width, HEAD)) * 0.01,
               "key": rng.normal(size=(width, HEAD)) * 0.01}
    moments = {name: (np.zeros_like(w), np.zeros_like(w)) for name, w in weights.items()}
    losses = []
    for step in range(1, STEPS + 1):
        features, values, target = batch(rng)
        inputs = (features @ weights["query"], features @ weights["key"], values)
        run = rs.simulate(*inputs, is_causal=True, routing=routing, trace="summary")
        error = (run.output - target)[:, 1:]                           # token 0 has no previous
        losses.append(float((error ** 2).sum(axis=-1).mean() / 2))
        d_output = np.zeros_like(run.output)
        d_output[:, 1:] = error / (BATCH * (TOKENS - 1))
        grads = run.backward(d_output)
        for name, d_projected in (("query", grads.query), ("key", grads.key)):
            gradient = np.einsum("btf,bth->fh", features, d_projected)
            first, second = moments[name]
            first[:] = 0.9 * first + 0.1 * gradient
            second[:] = 0.999 * second + 0.001 * gradient ** 2
            update = (first / (1 - 0.9 ** step)) / (np.sqrt(second / (1 - 0.999 ** step)) + 1e-8)
            weights[name] -= RATE * update
    return losses, run, inputs


def main(plot_path: str | None = None) -> None:
    if plot_path:
        rs.plots.require_matplotlib()          # before training, not after
    print(f"the task: each of {TOKENS} tokens must pull the value of the token just before "
          "it (token 0 has none);")
    print(f"queries and keys are learned from (content, position), {STEPS} Adam steps of "
          f"{BATCH} random sequences")
    print()
    soft_losses, soft_run, soft_inputs = train("softmax")
    hard_losses, hard_run, _ = train("topk")
    print(f"{'step':>5} | {'soft routing loss':>17} | {'hard top-1 loss':>15}")
    for step in (1, 10, 25, 50, 75, 100, 125, 150):
        print(f"{step:>5} | {soft_losses[step - 1]:>17.4f} | {hard_losses[step - 1]:>15.4f}")
    print()
    first_run = rs.simulate(*_untrained(), is_causal=True)
    print("token 4's routing table before training (sequence 0):")
    print(_shares(first_run.weights[0, 4]))
    print("after training with soft routing:")
    print(_shares(soft_run.weights[0, 4]))
    print()
    print(f"soft routing: loss {soft_losses[0]:.3f} -> {soft_losses[-1]:.3f}; "
          f"hard routing: {hard_losses[0]:.3f} -> {hard_losses[-1]:.3f} (its score gradient "
          "is zero, so the router never moves)")
    if plot_path:
        _plot(soft_losses, hard_losses, soft_run, plot_path)
        print(f"saved {plot_path}")
    print(rs.verify.verdict(soft_run.output, soft_run.weights, *soft_inputs,
                            is_causal=True).line())


def _untrained() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    width = CONTENT + TOKENS
    w_q, w_k = rng.normal(size=(2, width, HEAD)) * 0.01
    features, values, _ = batch(rng)
    return features @ w_q, features @ w_k, values


def _shares(row: np.ndarray) -> str:
    return "  " + "  ".join(f"#{j}: {share:.2f}" for j, share in enumerate(row[:5]))


def _plot(soft: list[float], hard: list[float], run: rs.Run, path: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.4), layout="constrained")
    loss_axis, table_axis = figure.subplots(1, 2)
    loss_axis.plot(soft, label="soft routing (softmax)")
    loss_axis.plot(hard, label="hard routing (top-1)")
    loss_axis.set_xlabel("training step")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    image = table_axis.imshow(run.weights[0], vmin=0, vmax=1)
    table_axis.set_title("learned routing tables (sequence 0)")
    table_axis.set_xlabel("pulls from token")
    table_axis.set_ylabel("token")
    figure.colorbar(image, ax=table_axis)
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
