"""Position-dependent routing: ALiBi score biases and rotary embeddings (RoPE).

Both are applied before any message is sent: ALiBi adds ``-m_h · |pos_i - pos_j|`` to the
score of every route (so the key node adds it when it answers), and RoPE rotates q and k
by their positions before a token publishes them. Values are never rotated.

Positions follow the causal alignment in use: key ``j`` sits at position ``j``; query ``i``
sits at ``i`` (``"top_left"``) or at ``i + S - L`` (``"bottom_right"``, the KV-cache view
in which the last query is the newest token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InvalidArgumentError, ShapeError
from ..options import CausalAlignment

__all__ = ["RotaryEmbedding", "alibi_bias", "query_positions"]

ROPE_LAYOUTS = ("half", "interleaved")


def query_positions(n_queries: int, n_keys: int, alignment: str) -> np.ndarray:
    """Positions of the query tokens on the key axis.

    Examples
    --------
    >>> query_positions(2, 5, "bottom_right").tolist()
    [3, 4]
    """
    offset = n_keys - n_queries if alignment == "bottom_right" else 0
    return np.arange(n_queries) + offset


def alibi_bias(slopes: ArrayLike, n_queries: int, n_keys: int,
               alignment: CausalAlignment = "top_left") -> np.ndarray:
    """ALiBi biases ``(H, L, S)``: ``-slopes[h] · |pos_i - j|``.

    Examples
    --------
    >>> alibi_bias([0.5], 2, 3)[0].tolist()
    [[0.0, -0.5, -1.0], [-0.5, 0.0, -0.5]]
    """
    slopes = np.asarray(slopes, dtype=np.float64)
    if slopes.ndim != 1 or not np.isfinite(slopes).all():
        raise ShapeError(f"alibi_slopes must be a 1-D array of finite slopes, one per head, "
                         f"got shape {slopes.shape}")
    distance = np.abs(query_positions(n_queries, n_keys, alignment)[:, None]
                      - np.arange(n_keys)[None, :])                   # (L, S)
    return 0.0 - slopes[:, None, None] * distance                      # (H, L, S)


@dataclass(frozen=True)
class RotaryEmbedding:
    """Rotary position embedding applied to queries and keys.

    Feature pairs are rotated by ``position · base^(-2d/E)`` for pair ``d``.

    Parameters
    ----------
    base : float
        The frequency base (10000 in most models).
    layout : {"half", "interleaved"}
        Which features form a pair: ``(x[d], x[d + E/2])`` as GPT-NeoX and Hugging Face
        Llama (``rotate_half``), or ``(x[2d], x[2d + 1])`` as GPT-J and the RoFormer paper.

    Examples
    --------
    >>> rope = RotaryEmbedding(base=10000.0, layout="interleaved")
    >>> rope.rotate(np.array([[1.0, 0.0]]), np.array([1])).round(4).tolist()
    [[0.5403, 0.8415]]
    """

    base: float = 10000.0
    layout: str = "half"

    def __post_init__(self) -> None:
        if not (isinstance(self.base, (int, float)) and np.isfinite(self.base) and self.base > 0):
            raise InvalidArgumentError(f"rope base must be a finite number > 0, got {self.base!r}")
        if self.layout not in ROPE_LAYOUTS:
            raise InvalidArgumentError(f"rope layout must be one of {ROPE_LAYOUTS}, got "
                                       f"{self.layout!r}")

    def rotate(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Rotate ``x (..., T, E)`` for tokens at ``positions (T,)``."""
        dim = x.shape[-1]
        if dim % 2:
            raise ShapeError(f"rotary embeddings need an even feature dim E, got E = {dim}")
        frequency = self.base ** (-np.arange(0, dim, 2) / dim)        # (E/2,)
        angle = positions[:, None] * frequency[None, :]               # (T, E/2)
        cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
        if self.layout == "half":
            first, second = x[..., : dim // 2], x[..., dim // 2:]
        else:
            first, second = x[..., 0::2], x[..., 1::2]
        rotated_first = first * cos - second * sin                    # (..., T, E/2)
        rotated_second = first * sin + second * cos
        if self.layout == "half":
            return np.concatenate([rotated_first, rotated_second], axis=-1)
        return np.stack([rotated_first, rotated_second], axis=-1).reshape(x.shape)


def as_rotary(rope: RotaryEmbedding | float | None) -> RotaryEmbedding | None:
    """Accept ``None``, a base (float) or a :class:`RotaryEmbedding`."""
    if rope is None or isinstance(rope, RotaryEmbedding):
        return rope
    if isinstance(rope, (int, float)) and not isinstance(rope, bool):
        return RotaryEmbedding(base=float(rope))
    raise InvalidArgumentError(f"rope must be None, a base (float) or a RotaryEmbedding, got "
                               f"{rope!r}")
