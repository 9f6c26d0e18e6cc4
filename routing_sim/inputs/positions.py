"""Position-dependent routing: ALiBi score biases and rotary embeddings (RoPE).

Both are applied before any message is sent: ALiBi adds ``-m_h · |pos_i - pos_j|`` (or,
with ``alibi_mode="signed"``, ``m_h · (pos_j - pos_i)``) to the score of every route (so
the key node adds it when it answers), and RoPE rotates q and k by their positions before
a token publishes them. Values are never rotated.

Positions follow the causal alignment in use: key ``j`` sits at position ``j``; query ``i``
sits at ``i`` (``"top_left"``) or at ``i + S - L`` (``"bottom_right"``, the KV-cache view
in which the last query is the newest token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InvalidArgumentError, ShapeError
from ..options import CausalAlignment

__all__ = ["ALIBI_MODES", "AlibiMode", "RotaryEmbedding", "alibi_bias", "alibi_distance",
           "check_alibi_mode", "check_alibi_slopes", "query_positions"]

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


ALIBI_MODES = ("symmetric", "signed")
AlibiMode = Literal["symmetric", "signed"]


def alibi_distance(query_position: ArrayLike, key_position: ArrayLike, mode: str
                   ) -> np.ndarray:
    """ALiBi's bias per unit slope: ``-|i - j|`` (``"symmetric"``) or ``j - i`` (``"signed"``).

    ``"symmetric"`` is FlashAttention's ``alibi_slopes`` (``-m · |i - j|``): a key after
    the query costs as much as one the same distance before it. ``"signed"`` is the ALiBi
    paper's and FlexAttention's (attention-gym) ``m · (j - i)``: a key after the query
    gets a *positive* bias. The two agree on every causal route (``j <= i``).

    Examples
    --------
    >>> [alibi_distance(1, np.arange(3), mode).tolist() for mode in ALIBI_MODES]
    [[-1, 0, -1], [-1, 0, 1]]
    """
    check_alibi_mode(mode)
    offset = np.asarray(key_position) - np.asarray(query_position)
    return offset if mode == "signed" else -np.abs(offset)


def check_alibi_mode(mode: str) -> None:
    if mode not in ALIBI_MODES:
        raise InvalidArgumentError(f"alibi_mode must be one of {ALIBI_MODES} (-m·|i-j| as "
                                   f"FlashAttention, or m·(j-i) as the ALiBi paper and "
                                   f"FlexAttention), got {mode!r}")


def check_alibi_slopes(slopes: ArrayLike, batch_shape: tuple[int, ...]) -> np.ndarray:
    """``slopes`` as float64, checked: ``(H,)`` or, as FlashAttention takes them,
    ``(B, H)``, broadcasting to the inputs' batch dims (heads are the last one).

    Examples
    --------
    >>> check_alibi_slopes([[0.5, 1.0], [0.25, 2.0]], (2, 2)).shape
    (2, 2)
    """
    slopes = np.asarray(slopes, dtype=np.float64)
    if slopes.ndim not in (1, 2) or not np.isfinite(slopes).all():
        raise ShapeError(f"alibi_slopes must be (H,) or (B, H) finite slopes, got shape "
                         f"{slopes.shape}")
    if not batch_shape:
        if slopes.size != 1:
            raise ShapeError(f"alibi_slopes has shape {slopes.shape} but the inputs have no "
                             "head dim; give (..., H, L, E) inputs or one slope")
        return slopes.reshape(())
    try:
        fits = np.broadcast_shapes(slopes.shape, batch_shape) == tuple(batch_shape)
    except ValueError:
        fits = False
    if not fits:
        pair = f" or (B, H) = {tuple(batch_shape[-2:])}" if len(batch_shape) > 1 else ""
        raise ShapeError(f"alibi_slopes of shape {slopes.shape} does not fit the inputs' batch "
                         f"dims {tuple(batch_shape)}: give (H,) with H = {batch_shape[-1]} "
                         f"heads (the last batch dim){pair}")
    return slopes


def alibi_bias(slopes: ArrayLike, n_queries: int, n_keys: int,
               alignment: CausalAlignment = "top_left", mode: str = "symmetric"
               ) -> np.ndarray:
    """ALiBi biases ``(..., L, S)`` for slopes ``(...)``: ``slopes · alibi_distance``.

    Examples
    --------
    >>> alibi_bias([0.5], 2, 3)[0].tolist()
    [[0.0, -0.5, -1.0], [-0.5, 0.0, -0.5]]
    >>> alibi_bias([0.5], 2, 3, mode="signed")[0].tolist()
    [[0.0, 0.5, 1.0], [-0.5, 0.0, 0.5]]
    """
    slopes = np.asarray(slopes, dtype=np.float64)
    if not np.isfinite(slopes).all():
        raise ShapeError(f"alibi_slopes must be finite, got {slopes.tolist()}")
    distance = alibi_distance(query_positions(n_queries, n_keys, alignment)[:, None],
                              np.arange(n_keys)[None, :], mode)        # (L, S)
    return 0.0 + slopes[..., None, None] * distance                     # (..., L, S)


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
