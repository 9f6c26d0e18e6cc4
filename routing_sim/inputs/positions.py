"""Position-dependent routing: ALiBi score biases and rotary embeddings (RoPE).

Both are applied before any message is sent: ALiBi adds ``-m_h · |pos_i - pos_j|`` (or,
with ``alibi_mode="signed"``, ``m_h · (pos_j - pos_i)``) to the score of every route (so
the key node adds it when it answers), and RoPE rotates q and k by their positions before
a token publishes them. Values are never rotated.

Positions follow the causal alignment in use: key ``j`` sits at position ``j``; query ``i``
sits at ``i`` (``"top_left"``) or at ``i + S - L`` (``"bottom_right"``, the KV-cache view
in which the last query is the newest token). RoPE can instead take the positions a model
gives (``position_ids``, per batch element, and ``key_position_ids``; see
:func:`rotary_positions`); they move the rotation only, never ALiBi or a mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from ..errors import DTypeError, InvalidArgumentError, ShapeError
from ..options import CausalAlignment
from .arrays import as_numpy

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
    if not _broadcasts_into(slopes.shape, tuple(batch_shape)):
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
    r"""Rotary position embedding (RoPE): queries and keys rotated by their positions.

    The first ``rotary_dim`` features of a token at position ``p`` form ``rotary_dim / 2``
    pairs ``(a, b)``, and pair ``d`` turns by the angle ``θ = p · base^(-2d / rotary_dim)``:

    .. math:: a' = a \cos θ - b \sin θ,\qquad b' = a \sin θ + b \cos θ

    The other features pass unchanged (partial rotary, as GPT-NeoX, GPT-J and Phi). This is
    FlashAttention's ``apply_rotary_emb`` and transformers' ``apply_rotary_pos_emb``.

    Parameters
    ----------
    base : float
        The frequency base (10000 in most models); the pairs' inverse frequencies are
        ``1 / base ** (arange(0, rotary_dim, 2) / rotary_dim)``, as transformers and
        FlashAttention compute them.
    layout : {"half", "interleaved"}
        Which features form a pair: ``(x[d], x[d + rotary_dim/2])`` as GPT-NeoX and
        Llama (transformers' ``rotate_half``; FlashAttention's ``interleaved=False``), or
        ``(x[2d], x[2d + 1])`` as GPT-J and the RoFormer paper (``rotate_every_two``;
        ``interleaved=True``, ``flash_attn_with_kvcache``'s default).
    rotary_dim : int, optional
        How many leading features rotate: even, at least 2, at most the head dim ``E``
        (checked when a head dim is seen). All ``E`` by default.
    cos, sin : array_like, shape (positions, rotary_dim / 2), optional
        The tables themselves, row ``p`` for position ``p``, as ``flash_attn_with_kvcache``
        takes ``rotary_cos``/``rotary_sin``; they replace ``base`` (see
        :meth:`from_tables`).

    Raises
    ------
    InvalidArgumentError
        A base that is not a finite number > 0, an unknown layout, a ``rotary_dim`` that is
        odd or < 2, tables that are not finite or not given together.
    ShapeError
        Tables that are not 2-D of one shape, or a ``rotary_dim`` that disagrees with them.

    Examples
    --------
    >>> rope = RotaryEmbedding(base=10000.0, layout="interleaved")
    >>> rope.rotate(np.array([[1.0, 0.0]]), np.array([1])).round(4).tolist()
    [[0.5403, 0.8415]]

    With ``rotary_dim=2`` only the first pair of four features turns:

    >>> RotaryEmbedding(rotary_dim=2).rotate(np.ones((1, 4)), np.array([1])).round(4).tolist()
    [[-0.3012, 1.3818, 1.0, 1.0]]
    """

    base: float = 10000.0
    layout: str = "half"
    rotary_dim: int | None = None
    cos: np.ndarray | None = field(default=None, repr=False, compare=False)
    sin: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.base, (int, float)) and np.isfinite(self.base) and self.base > 0):
            raise InvalidArgumentError(f"rope base must be a finite number > 0, got {self.base!r}")
        if self.layout not in ROPE_LAYOUTS:
            raise InvalidArgumentError(f"rope layout must be one of {ROPE_LAYOUTS}, got "
                                       f"{self.layout!r}")
        rotary_dim = self.rotary_dim
        if rotary_dim is not None and (isinstance(rotary_dim, bool) or not isinstance(
                rotary_dim, (int, np.integer)) or rotary_dim < 2 or rotary_dim % 2):
            raise InvalidArgumentError(f"rotary_dim must be an even number of features >= 2 "
                                       f"(they rotate in pairs), got {self.rotary_dim!r}")
        if (self.cos is None) != (self.sin is None):
            raise InvalidArgumentError("rope tables come as a pair: give both cos and sin")
        if self.cos is not None:
            self._set_tables()

    def _set_tables(self) -> None:
        """Check the cos/sin tables and store them as read-only float64 arrays."""
        tables = []
        for name in ("cos", "sin"):
            table = np.array(as_numpy(f"rope {name}", getattr(self, name)), dtype=np.float64)
            if table.ndim != 2 or 0 in table.shape:
                raise ShapeError(f"rope {name} must be a table (positions, rotary_dim / 2), as "
                                 f"flash_attn_with_kvcache's rotary_{name}; got shape "
                                 f"{table.shape}")
            if not np.isfinite(table).all():
                raise InvalidArgumentError(f"rope {name} must be finite")
            table.flags.writeable = False
            tables.append(table)
        cos, sin = tables
        if cos.shape != sin.shape:
            raise ShapeError(f"rope cos and sin must have one shape, got {cos.shape} and "
                             f"{sin.shape}")
        if self.rotary_dim is not None and self.rotary_dim != 2 * cos.shape[1]:
            raise ShapeError(f"rotary_dim = {self.rotary_dim} but the tables have "
                             f"{cos.shape[1]} columns, one per pair (rotary_dim / 2)")
        object.__setattr__(self, "cos", cos)
        object.__setattr__(self, "sin", sin)
        object.__setattr__(self, "rotary_dim", 2 * cos.shape[1])

    @classmethod
    def from_tables(cls, cos: ArrayLike, sin: ArrayLike, layout: str = "half"
                    ) -> RotaryEmbedding:
        """RoPE from cos/sin tables ``(positions, rotary_dim / 2)``, row ``p`` for position ``p``.

        FlashAttention's ``rotary_cos``/``rotary_sin`` (``rotary_interleaved=True`` is
        ``layout="interleaved"``); any scaling a model applies (linear, NTK, YaRN's
        attention factor) is already in them. From transformers' ``cos``/``sin``
        ``(..., positions, head_dim)`` (each angle twice), take ``cos[..., :head_dim // 2]``
        of one sequence. Positions index the rows, so they must lie in ``[0, positions)``.

        Examples
        --------
        >>> angle = np.arange(3)[:, None] * np.array([1.0, 0.5])     # (positions, pairs)
        >>> rope = RotaryEmbedding.from_tables(np.cos(angle), np.sin(angle))
        >>> rope.rotary_dim, rope == RotaryEmbedding(base=4.0)
        (4, False)
        >>> bool(np.allclose(rope.rotate(np.ones((3, 4)), np.arange(3)),
        ...                  RotaryEmbedding(base=4.0).rotate(np.ones((3, 4)), np.arange(3))))
        True
        """
        return cls(layout=layout, cos=cos, sin=sin)    # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RotaryEmbedding):
            return NotImplemented
        return self._computes() == other._computes()

    def __hash__(self) -> int:
        return hash(self._computes())

    def _computes(self) -> tuple:
        """What the rotation depends on: the layout, and the base and rotary_dim or the
        tables themselves (``base`` means nothing beside tables)."""
        if self.cos is None or self.sin is None:
            return self.layout, self.base, self.rotary_dim
        return self.layout, self.cos.shape, self.cos.tobytes(), self.sin.tobytes()

    def __repr__(self) -> str:
        if self.cos is None:
            return (f"RotaryEmbedding(base={self.base!r}, layout={self.layout!r}, "
                    f"rotary_dim={self.rotary_dim!r})")
        return f"RotaryEmbedding.from_tables(<cos, sin {self.cos.shape}>, layout={self.layout!r})"

    def rotated_features(self, dim: int) -> int:
        """How many of ``dim`` features rotate: ``rotary_dim``, or all of them."""
        rotary_dim = dim if self.rotary_dim is None else self.rotary_dim
        if rotary_dim > dim:
            raise ShapeError(f"rotary_dim = {rotary_dim} is more than the head dim E = {dim} "
                             "of query and key")
        if rotary_dim % 2:
            raise ShapeError(f"rotary embeddings need an even feature dim E, got E = {dim}; "
                             "give an even rotary_dim to rotate only the first features")
        return rotary_dim

    def check_positions(self, name: str, positions: np.ndarray) -> None:
        """Refuse positions the tables have no row for (any position has an angle)."""
        if self.cos is None or not positions.size:
            return
        rows = self.cos.shape[0]
        if positions.min() < 0 or positions.max() >= rows:
            bad = positions.max() if positions.max() >= rows else positions.min()
            raise InvalidArgumentError(f"{name} reach position {bad}, but rope's cos/sin "
                                       f"tables have rows for positions 0..{rows - 1}")

    def angles(self, positions: ArrayLike, rotary_dim: int) -> tuple[np.ndarray, np.ndarray]:
        """``cos θ`` and ``sin θ`` ``(..., T, rotary_dim / 2)`` for tokens at ``positions``."""
        positions = np.asarray(positions)
        if self.cos is not None and self.sin is not None:
            self.check_positions("positions", positions)
            return self.cos[positions], self.sin[positions]
        inverse_frequency = 1.0 / self.base ** (np.arange(0, rotary_dim, 2) / rotary_dim)
        angle = positions[..., None] * inverse_frequency               # (..., T, R/2)
        return np.cos(angle), np.sin(angle)

    def rotate(self, x: np.ndarray, positions: ArrayLike, *, transpose: bool = False
               ) -> np.ndarray:
        """Rotate ``x (..., T, E)`` for tokens at ``positions (..., T)`` (broadcasting with
        ``x``'s leading dims); ``transpose=True`` applies each rotation's transpose, which
        carries a gradient back (FlashAttention's ``conjugate``)."""
        dim = x.shape[-1]
        rotary_dim = self.rotated_features(dim)
        cos, sin = (table.astype(x.dtype) for table in self.angles(positions, rotary_dim))
        if transpose:
            sin = -sin
        rotary = x[..., :rotary_dim]                                   # (..., T, R)
        if self.layout == "half":
            first, second = rotary[..., : rotary_dim // 2], rotary[..., rotary_dim // 2:]
        else:
            first, second = rotary[..., 0::2], rotary[..., 1::2]
        rotated_first = first * cos - second * sin                     # (..., T, R/2)
        rotated_second = first * sin + second * cos
        if self.layout == "half":
            rotated = np.concatenate([rotated_first, rotated_second], axis=-1)  # (..., T, R)
        else:
            rotated = np.stack([rotated_first, rotated_second], axis=-1
                               ).reshape(*rotated_first.shape[:-1], rotary_dim)
        if rotary_dim == dim:
            return rotated
        passed = np.broadcast_to(x[..., rotary_dim:], (*rotated.shape[:-1], dim - rotary_dim))
        return np.concatenate([rotated, passed], axis=-1)              # (..., T, E)


def as_rotary(rope: RotaryEmbedding | float | None) -> RotaryEmbedding | None:
    """Accept ``None``, a base (float) or a :class:`RotaryEmbedding`."""
    if rope is None or isinstance(rope, RotaryEmbedding):
        return rope
    if isinstance(rope, (int, float)) and not isinstance(rope, bool):
        return RotaryEmbedding(base=float(rope))
    raise InvalidArgumentError(f"rope must be None, a base (float) or a RotaryEmbedding, got "
                               f"{rope!r}")


def check_position_ids(name: str, position_ids: ArrayLike, n_tokens: int) -> np.ndarray:
    """``position_ids`` as int64 ``(..., T)``, checked: integers >= 0, ``T = n_tokens``.

    Examples
    --------
    >>> check_position_ids("position_ids", [[0, 1, 2], [5, 6, 7]], 3).shape
    (2, 3)
    """
    ids = as_numpy(name, position_ids)
    if ids.dtype.kind not in "iu":
        raise DTypeError(f"{name} must hold integer token positions, got dtype {ids.dtype}")
    if ids.ndim < 1 or ids.shape[-1] != n_tokens:
        raise ShapeError(f"{name} must be (T,) or (B, T) with T = {n_tokens} tokens, got shape "
                         f"{ids.shape}")
    if ids.size and ids.min() < 0:
        raise InvalidArgumentError(f"{name} must be positions >= 0, got {ids.min()}")
    return ids.astype(np.int64)


def rotary_positions(rotary: RotaryEmbedding | None, position_ids: ArrayLike | None,
                     key_position_ids: ArrayLike | None, batch_shape: tuple[int, ...],
                     n_queries: int, n_keys: int, alignment: CausalAlignment,
                     defaults: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The positions RoPE rotates queries ``(..., L)`` and keys ``(..., S)`` by.

    By default key ``j`` sits at ``j`` and queries follow ``alignment``
    (:func:`query_positions`), or ``defaults`` gives both ``((L,), (S,))`` (packed
    sequences: each token's position in its own sequence). ``position_ids`` places the
    queries, and the keys too when ``S == L`` (self-attention, as transformers'
    ``apply_rotary_pos_emb(q, k, ...)``); with ``S != L`` the keys need
    ``key_position_ids``. A ``(B, T)`` array gives each
    batch element its own positions: it broadcasts over the heads (the last batch dim).

    Examples
    --------
    >>> rope = RotaryEmbedding()
    >>> at_query, at_key = rotary_positions(rope, [[0, 1], [7, 8]], None, (2, 3), 2, 2,
    ...                                     "top_left")
    >>> at_query.shape, at_key.tolist()                   # (B, 1, L): every head alike
    ((2, 1, 2), [[[0, 1]], [[7, 8]]])
    """
    if rotary is None:
        given = [name for name, ids in (("position_ids", position_ids),
                                        ("key_position_ids", key_position_ids))
                 if ids is not None]
        if given:
            raise InvalidArgumentError(f"{' and '.join(given)} place tokens for RoPE only; "
                                       "pass rope= too (a base or a RotaryEmbedding)")
        return defaults or (query_positions(n_queries, n_keys, alignment), np.arange(n_keys))
    if key_position_ids is None and position_ids is not None and n_keys != n_queries:
        raise InvalidArgumentError(f"position_ids places the L = {n_queries} queries; with "
                                   f"S = {n_keys} keys (S != L) give key_position_ids (S,) or "
                                   "(B, S) too")
    at_query, at_key = defaults or (query_positions(n_queries, n_keys, alignment),
                                    np.arange(n_keys))
    query_name = "the query positions"
    if position_ids is not None:
        query_name = "position_ids"
        at_query = _fit_positions(query_name, position_ids, batch_shape, n_queries)
    key_name = "the key positions"
    if key_position_ids is not None:
        key_name = "key_position_ids"
        at_key = _fit_positions(key_name, key_position_ids, batch_shape, n_keys)
    elif position_ids is not None:
        key_name, at_key = query_name, at_query
    rotary.check_positions(query_name, at_query)
    rotary.check_positions(key_name, at_key)
    return at_query, at_key


def _fit_positions(name: str, position_ids: ArrayLike, batch_shape: tuple[int, ...],
                   n_tokens: int) -> np.ndarray:
    """``(T,)`` as given; ``(B, T)`` (or more batch dims) with a head axis before ``T``."""
    ids = check_position_ids(name, position_ids, n_tokens)
    if ids.ndim == 1:
        return ids
    placed = ids[..., None, :]                                         # (B, 1, T)
    if not _broadcasts_into(placed.shape, (*batch_shape, n_tokens)):
        batch = f"B = {batch_shape[-2]}" if len(batch_shape) > 1 else "inputs (B, H, T, E)"
        raise ShapeError(f"{name} of shape {ids.shape} does not fit the inputs' batch dims "
                         f"{tuple(batch_shape)}: (B, T) gives each batch element its "
                         f"positions and needs {batch} (the batch dim before the heads); "
                         "(T,) gives every sequence the same")
    return placed


def _broadcasts_into(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to ``target`` without growing it."""
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False
