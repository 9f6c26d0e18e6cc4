"""Incremental decoding: tokens join the cluster one at a time, with a KV cache.

Each new token publishes its key and value into the registry (they stay on its node:
publishing costs no message), then queries every token before it and itself, with the
bottom-right causal alignment of a KV cache. That is one routing round of O(t) messages
per new token, instead of the O(t²) of recomputing the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InvalidArgumentError, ShapeError
from ..network.messages import FORWARD
from ..results.run import Run
from ..routes.graphs import complete
from ..simulation import simulate

__all__ = ["Decoder", "DecodeStep"]


@dataclass(frozen=True)
class DecodeStep:
    """One token joining: its output, its Run (routing table, trace) and message counts."""

    position: int
    output: np.ndarray
    run: Run                    # its query is token ``position``: run.routing_table(position)
    messages: int               # sent this step, retransmissions included
    recompute_messages: int     # what recomputing the causal sequence sends, fault-free


class Decoder:
    """A growing cluster of token nodes with a KV cache.

    Parameters
    ----------
    **options
        Passed to every :func:`~routing_sim.simulate` round (``network``, ``scale``,
        ``numerics``, ``softmax``, ``alibi_slopes``, ``rope``, ``trace``, ...). Positions
        follow the bottom-right alignment: the new token sits at position ``t``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 4))
    >>> decoder = Decoder()
    >>> steps = [decoder.step(q[t], k[t], v[t]) for t in range(5)]
    >>> from routing_sim import attention
    >>> full = attention(q, k, v, is_causal=True)
    >>> all(np.allclose(s.output, full[s.position], rtol=1e-12, atol=1e-12) for s in steps)
    True
    >>> [s.messages for s in steps], steps[-1].recompute_messages
    ([4, 8, 12, 16, 20], 60)
    >>> steps[-1].run.routing_table(4).token
    4
    """

    def __init__(self, **options) -> None:
        for reserved in ("attn_mask", "is_causal", "causal_alignment", "graph"):
            if reserved in options:
                raise InvalidArgumentError(f"Decoder decides {reserved} itself (bottom-right "
                                           "causal over the cache); do not pass it")
        self.options = options
        self.keys: np.ndarray | None = None      # (..., t, E) the registry of published keys
        self.values: np.ndarray | None = None    # (..., t, Ev)
        self.labels: list[str] = []
        self.messages = 0                        # sent over all steps so far

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def step(self, query: ArrayLike, key: ArrayLike, value: ArrayLike,
             label: str | None = None) -> DecodeStep:
        """Add one token (its query ``(..., E)``, key ``(..., E)``, value ``(..., Ev)``)."""
        query, key, value = (np.asarray(x)[..., None, :] for x in (query, key, value))
        if self.keys is not None and self.values is not None and (
                key.shape[:-2] != self.keys.shape[:-2] or key.shape[-1] != self.keys.shape[-1]
                or value.shape[-1] != self.values.shape[-1]):
            raise ShapeError(f"token {len(self)} has key {key.shape[:-2] + key.shape[-1:]} and "
                             f"value {value.shape[:-2] + value.shape[-1:]}, but the cache holds "
                             f"keys {self.keys.shape} and values {self.values.shape}")
        keys = key if self.keys is None else np.concatenate([self.keys, key], axis=-2)
        values = value if self.values is None else np.concatenate([self.values, value], axis=-2)
        position = keys.shape[-2] - 1
        labels = [*self.labels, label if label is not None else f"t{position}"]
        graph = complete(1, position + 1, labels=[labels[-1]], key_labels=labels)
        graph.nodes[0]["position"] = position        # the new token, not the cache's first
        run = simulate(query, keys, values, graph=graph, causal_alignment="bottom_right",
                       **self.options)
        self.keys, self.values, self.labels = keys, values, labels
        self.messages += run.stats.total_messages
        tokens = position + 1
        groups = run.stats.routes // tokens
        # Every route of the causal triangle, each with its four messages, none resent.
        recompute = len(FORWARD) * groups * tokens * (tokens + 1) // 2
        return DecodeStep(position, run.output[..., 0, :], run, run.stats.total_messages,
                          recompute)
