"""What a kernel is checked on: a :class:`Case` (one attention call), the fixed battery of
cases at the edges where kernels break, and the smaller cases a failure shrinks through.

A case holds its inputs in the SDPA layout ``(B, H, L, E)`` as float64 values the checked
dtype holds exactly (:func:`~routing_sim.testing.precision.round_to`), so the oracle sees
the very numbers the kernel sees. Its features are the options it uses; a check runs only
cases whose features the kernel claims (``features=`` of
:func:`~routing_sim.testing.check_attention`).

Every case has one **pattern** (:data:`PATTERNS`), the routes it allows before any mask:
``full`` (every query reaches every key), ``causal``, ``bottom_right`` or ``window``
(in the flash layout ``causal`` and ``window`` together), and one **shape**
(:data:`SHAPES`), how its sequences reach the kernel: ``padded`` (a batch of ``B``
sequences of ``L`` queries and ``S`` keys each), ``varlen`` (sequences of their own
lengths packed into one, with ``cu_seqlens``) or ``decode`` (one query per sequence). A
kernel is checked on the patterns and shapes it names, and only on those: one that names
``causal`` alone may apply its causal mask always, so it gets causal cases only, the
battery's edges included; one that names ``varlen`` alone may need ``cu_seqlens``, so it
gets packed cases only. Naming no pattern means ``full``, naming no shape ``padded``. The
other features are options a kernel takes and can do without, so cases without them run
too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ..errors import InvalidArgumentError
from .precision import round_to

__all__ = ["FEATURES", "LAYOUTS", "PATTERNS", "SHAPES", "Case", "battery", "check_features",
           "compatible", "forms", "ordered", "smaller"]

FEATURES = ("full", "mask", "causal", "bottom_right", "gqa", "window", "softcap", "alibi",
            "sinks", "padded", "varlen", "lse", "dropout_mask", "decode", "value_dim",
            "backward")
LAYOUTS = ("sdpa", "flash")
Layout = Literal["sdpa", "flash"]
Causal = Literal["top_left", "bottom_right"]
# Asked of every case of a check, not drawn per case: more outputs of the same call.
OUTPUTS = frozenset({"lse", "backward"})
# The routes a case allows before any mask; a kernel is checked on the ones it names.
PATTERNS = frozenset({"full", "causal", "bottom_right", "window"})
# How a case's sequences reach the kernel; a kernel is checked on the ones it names.
SHAPES = frozenset({"padded", "varlen", "decode"})
# The lengths of the sequence a padded battery case gets before its own when it is packed
# for a kernel that takes packed sequences only: other lengths than most cases' own.
_LEAD = (2, 3)
# The window a battery case gets for a kernel that computes windows only: it reaches past
# a tile of 64 keys, and it is lopsided, so left and right cannot be swapped unseen.
_WINDOW = (50, 3)
# flash_attn_func has no attn_mask, and its causal is aligned bottom-right already.
_NOT_IN = {"flash": {"mask": "flash_attn_func takes no attn_mask",
                     "bottom_right": "its causal is aligned bottom-right already "
                                     "(FlashAttention's convention): use 'causal'"}}
# Features one case cannot combine, per layout: SDPA refuses attn_mask beside is_causal, a
# top-left causal diagonal and a (bottom-right) window disagree when L != S, and packed
# sequences carry their own masks.
# ``full`` is the absence of the other patterns; a case has one shape.
_APART = {"sdpa": [{"mask", "causal", "bottom_right"}, {"window", "causal"},
                   {"varlen", "mask"}, {"varlen", "bottom_right"}, {"varlen", "dropout_mask"},
                   {"padded", "varlen", "decode"}, {"full", "causal", "bottom_right"},
                   {"full", "window"}],
          "flash": [{"varlen", "dropout_mask"}, {"padded", "varlen", "decode"},
                    {"full", "causal"}, {"full", "window"}]}


def check_features(features: Iterable[str] | str, layout: str) -> frozenset[str]:
    """The features a check runs, validated: names from :data:`FEATURES` that ``layout``
    can express (a comma-separated string works too), with ``full`` added when no
    pattern (:data:`PATTERNS`) is named and ``padded`` when no shape (:data:`SHAPES`) is.

    Examples
    --------
    >>> sorted(check_features("causal, gqa", "sdpa"))
    ['causal', 'gqa', 'padded']
    >>> sorted(check_features("varlen", "flash")), sorted(check_features("padded, decode", "sdpa"))
    (['full', 'varlen'], ['decode', 'full', 'padded'])
    """
    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout must be 'sdpa' or 'flash', got {layout!r}")
    names = features.split(",") if isinstance(features, str) else list(features)
    chosen = frozenset(name.strip() for name in names if name.strip())
    unknown = sorted(chosen - set(FEATURES))
    if unknown:
        raise InvalidArgumentError(f"unknown feature {unknown[0]!r}; the features are "
                                   f"{', '.join(FEATURES)}")
    for name in sorted(chosen):
        if name in _NOT_IN.get(layout, {}):
            raise InvalidArgumentError(f"feature {name!r} is not in layout {layout!r}: "
                                       f"{_NOT_IN[layout][name]}")
    chosen |= set() if chosen & PATTERNS else {"full"}
    chosen |= set() if chosen & SHAPES else {"padded"}
    if not forms(None, chosen, layout):
        raise InvalidArgumentError(
            f"no case takes a shape named ({', '.join(ordered(chosen & SHAPES))}) with a "
            f"pattern named ({', '.join(ordered(chosen & PATTERNS))}) in layout {layout!r}: "
            f"features {', '.join(ordered(chosen))}")
    return chosen


def forms(feature: str | None, chosen: frozenset[str], layout: str
          ) -> list[tuple[str, str]]:
    """The ``(shape, pattern)`` pairs of the chosen ones that a case using ``feature`` can
    take, in the order of :data:`FEATURES` (none: ``feature`` never runs, e.g. ``mask``
    beside ``causal`` alone in the sdpa layout, whose ``attn_mask`` and ``is_causal``
    exclude each other, or beside ``varlen`` alone).

    >>> forms("mask", frozenset({"mask", "causal", "full", "padded"}), "sdpa")
    [('padded', 'full')]
    >>> forms("mask", frozenset({"mask", "full", "varlen"}), "sdpa")
    []
    >>> forms(None, frozenset({"causal", "padded", "varlen"}), "flash")
    [('padded', 'causal'), ('varlen', 'causal')]
    """
    first = () if feature is None else (feature,)
    return [(shape, pattern) for shape in ordered(chosen & SHAPES)
            for pattern in ordered(chosen & PATTERNS)
            if compatible((), layout, first=(*first, shape, pattern)) == {*first, shape, pattern}]


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in the order of :data:`FEATURES`.

    Examples
    --------
    >>> ordered({"causal", "full", "padded"})
    ['full', 'causal', 'padded']
    """
    return sorted(names, key=FEATURES.index)


def compatible(wanted: Iterable[str], layout: str, first: Iterable[str] = ()
               ) -> frozenset[str]:
    """``wanted`` and ``first`` without the features one case cannot combine with an
    earlier one (in the order of :data:`FEATURES`, the names in ``first`` before all).

    >>> sorted(compatible({"mask", "causal", "gqa"}, "sdpa"))
    ['gqa', 'mask']
    >>> sorted(compatible({"mask", "causal", "gqa"}, "sdpa", first=["causal"]))
    ['causal', 'gqa']
    """
    wanted = set(wanted)
    kept: set[str] = set()
    for name in (*first, *(name for name in FEATURES if name in wanted)):
        if not any(name in group and kept & (group - {name}) for group in _APART[layout]):
            kept.add(name)
    return frozenset(kept)


@dataclass(frozen=True, eq=False)
class Case:
    """One attention call to check, in the SDPA layout.

    The float arrays are rounded to ``dtype`` when the case is made (ALiBi slopes to
    float32, as FlashAttention takes them), so the oracle and the kernel see the same
    numbers. ``causal`` is the diagonal's alignment; with ``cu_seqlens`` (packed
    sequences, ``B = 1``) every sequence is aligned bottom-right on its own, as
    FlashAttention does. ``window = (left, right)`` is FlashAttention's sliding window:
    query ``i`` reaches keys ``i + S - L - left ..= i + S - L + right`` (-1: unbounded).
    ALiBi adds ``-slope · |i + S - L - j|`` (FlashAttention's). ``mask`` is SDPA's
    ``attn_mask`` (bool: True = allowed; float: added). ``dropout_mask`` (True = kept)
    with ``dropout_p`` scales the kept shares by ``1 / (1 - p)``. A ``decode`` case is a
    decode step: one query per sequence (``L = 1``), never packed.
    """

    query: np.ndarray                     # (B, Hq, L, E)
    key: np.ndarray                       # (B, Hkv, S, E)
    value: np.ndarray                     # (B, Hkv, S, Ev)
    dtype: str = "float64"
    scale: float | None = None
    causal: Causal | None = None
    mask: np.ndarray | None = None        # bool or float, broadcastable to (B, Hq, L, S)
    window: tuple[int, int] | None = None
    softcap: float = 0.0
    alibi: np.ndarray | None = None       # (Hq,) or (B, Hq)
    sinks: np.ndarray | None = None       # (Hq,)
    cu_seqlens: tuple[np.ndarray, np.ndarray] | None = None   # (n + 1,) for q and k
    dropout_p: float = 0.0
    dropout_mask: np.ndarray | None = None   # (B, Hq, L, S) True = kept
    lse: bool = False
    d_output: np.ndarray | None = None    # (B, Hq, L, Ev): check the gradients too
    decode: bool = False
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        def rounded(values: np.ndarray | None, dtype: str) -> np.ndarray | None:
            return None if values is None else round_to(values, dtype)

        for name in ("query", "key", "value", "sinks", "d_output"):
            object.__setattr__(self, name, rounded(getattr(self, name), self.dtype))
        if self.mask is not None and self.mask.dtype != bool:
            object.__setattr__(self, "mask", rounded(self.mask, self.dtype))
        object.__setattr__(self, "alibi", rounded(self.alibi, "float32"))
        if self.scale is not None:
            object.__setattr__(self, "scale", float(self.scale))
        if self.decode and (self.query.shape[2] != 1 or self.cu_seqlens is not None):
            raise InvalidArgumentError(f"a decode case has one query and no cu_seqlens, got "
                                       f"query shape {self.query.shape}")

    @property
    def shape(self) -> tuple[int, int, int, int, int, int, int]:
        """``(B, Hq, Hkv, L, S, E, Ev)``."""
        batch, heads, n_queries, dim = self.query.shape
        return (batch, heads, self.key.shape[1], n_queries, self.key.shape[2], dim,
                self.value.shape[3])

    @property
    def effective_scale(self) -> float:
        """The scale the scores use: ``scale``, or ``1 / sqrt(E)``."""
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.query.shape[3])

    def features(self, layout: str) -> frozenset[str]:
        """The features this case uses, as ``layout`` names them."""
        _, heads, kv_heads, *_ = self.shape
        aligned = self.causal == "bottom_right" and layout == "sdpa" and \
            self.cu_seqlens is None
        used = {"full": self.causal is None and self.window is None,
                "mask": self.mask is not None, "causal": self.causal is not None and not aligned,
                "bottom_right": aligned, "gqa": heads != kv_heads,
                "window": self.window is not None, "softcap": self.softcap > 0,
                "alibi": self.alibi is not None, "sinks": self.sinks is not None,
                "padded": self.cu_seqlens is None and not self.decode,
                "varlen": self.cu_seqlens is not None, "lse": self.lse,
                "dropout_mask": self.dropout_mask is not None, "decode": self.decode,
                "value_dim": self.value.shape[3] != self.query.shape[3],
                "backward": self.d_output is not None}
        return frozenset(name for name, on in used.items() if on)

    def describe(self) -> str:
        """One line: the shape and the options, e.g. ``B=1 Hq=2 Hkv=1 L=3 S=5 E=4 Ev=4,
        causal (top-left)``."""
        batch, heads, kv_heads, n_queries, n_keys, dim, value_dim = self.shape
        parts = [f"B={batch} Hq={heads} Hkv={kv_heads} L={n_queries} S={n_keys} E={dim} "
                 f"Ev={value_dim} {self.dtype}"]
        if self.scale is not None:
            parts.append(f"scale={self.scale:.6g}")
        if self.causal:
            parts.append(f"causal ({self.causal.replace('_', '-')})")
        if self.mask is not None:
            parts.append(f"{'bool' if self.mask.dtype == bool else 'float'} mask "
                         f"{tuple(self.mask.shape)}")
        if self.window is not None:
            parts.append(f"window_size={self.window}")
        if self.softcap:
            parts.append(f"softcap={self.softcap:g}")
        if self.alibi is not None:
            parts.append(f"alibi_slopes {tuple(self.alibi.shape)}")
        if self.sinks is not None:
            parts.append("sinks")
        if self.decode:
            parts.append("decode")
        if self.cu_seqlens is not None:
            parts.append(f"cu_seqlens_q={self.cu_seqlens[0].tolist()} "
                         f"cu_seqlens_k={self.cu_seqlens[1].tolist()}")
        if self.dropout_mask is not None:
            parts.append(f"dropout_p={self.dropout_p:g} with dropout_mask")
        if self.lse:
            parts.append("return_lse")
        if self.d_output is not None:
            parts.append("backward")
        return ", ".join(parts)


def battery(features: frozenset[str], layout: str, dtype: str) -> list[Case]:
    """The fixed cases at the edges where kernels break, for the chosen features.

    Every case of the plain battery; then for each chosen feature its own edges (a case
    may use other chosen features too); then one case with every chosen feature that
    combines. A case that follows no chosen pattern gets the first one chosen (causal
    for a kernel that names only causal), a padded case for a kernel that takes no padded
    input the first chosen shape (:func:`_packed`, :func:`_decoded`); a case that cannot
    take them is left out.
    ``lse`` and ``backward`` are asked of every case. ``features`` are
    :func:`check_features`'s.
    """
    rng = np.random.default_rng(20240624)
    huge, tiny = _extremes(dtype)
    draw = _Inputs(rng, dtype)
    cases = [
        draw("L = S", 2, 2, 2, 5, 5, 8),
        draw("L < S", 1, 2, 2, 3, 7, 4),
        draw("L > S", 1, 1, 1, 7, 3, 4),
        draw("one query, one key", 1, 1, 1, 1, 1, 4),
        draw("one feature", 1, 1, 1, 3, 4, 1),
        *(draw(f"{n} keys (tiles of 64 and 128)", 1, 1, 1, 2, n, 4)
          for n in (63, 64, 65, 127, 128, 129, 257)),
        draw("129 queries (query tiles)", 1, 1, 1, 129, 6, 4),
        draw("130 queries and keys", 1, 1, 1, 130, 130, 2),
        replace(draw("an explicit scale", 1, 2, 2, 4, 6, 4), scale=0.3),
        draw("huge scores", 1, 1, 1, 4, 6, 4, magnitude=huge),
        draw("tiny scores", 1, 1, 1, 4, 6, 4, magnitude=tiny),
        draw("subnormal queries, keys and values", 1, 1, 1, 3, 5, 4, subnormal=True),
        draw("every score far below zero", 1, 1, 1, 3, 5, 4, far_below=True),
        draw("values that cancel", 1, 1, 1, 3, 6, 4, cancelling=True),
    ]
    if "value_dim" in features:      # every feature takes Ev != E: nothing else changes
        cases += [draw("value dim 3 < head dim 8", 1, 2, 2, 4, 6, 8, value_dim=3),
                  draw("value dim 6 > head dim 2", 1, 2, 2, 4, 6, 2, value_dim=6),
                  draw("value dim 1, 70 keys", 1, 1, 1, 3, 70, 4, value_dim=1)]
    if "gqa" in features:
        cases += [draw(f"GQA {heads} query heads on {kv_heads} KV heads", 2, heads, kv_heads,
                       3, 5, 4) for heads, kv_heads in ((2, 1), (4, 1), (4, 2), (6, 2),
                                                         (6, 3), (8, 2), (9, 3))]
    if "mask" in features:
        bool_case = draw("bool mask with an empty row", 2, 2, 2, 4, 6, 4)
        mask = rng.random((2, 2, 4, 6)) < 0.6
        mask[0, 1, 2] = False
        float_mask = np.where(rng.random((1, 2, 4, 6)) < 0.3, -np.inf,
                              rng.normal(size=(1, 2, 4, 6)))
        float_mask[0, 0, 3] = -np.inf
        padding = np.ones((2, 1, 1, 70), bool)
        padding[1, :, :, 50:] = False
        cases += [replace(bool_case, mask=mask),
                  replace(draw("broadcast (L, S) bool mask", 1, 2, 2, 5, 5, 4),
                          mask=abs(np.subtract.outer(range(5), range(5)))[None, None] <= 1),
                  replace(draw("float mask with -inf and an empty row", 2, 2, 2, 4, 6, 4),
                          mask=float_mask),
                  replace(draw("key padding past 64 keys", 2, 2, 2, 3, 70, 4), mask=padding)]
    causal: Causal = "bottom_right" if layout == "flash" else "top_left"
    if "causal" in features:
        cases += [replace(draw(f"causal, {name}", 1, 2, 2, n_queries, n_keys, 4), causal=causal)
                  for name, n_queries, n_keys in (("L = S", 5, 5), ("L < S", 3, 7),
                                                  ("L > S: empty rows", 7, 3),
                                                  ("130 queries", 130, 130))]
    if "bottom_right" in features:
        cases += [replace(draw(f"bottom-right causal, {name}", 1, 2, 2, n_queries, n_keys, 4),
                          causal="bottom_right")
                  for name, n_queries, n_keys in (("L < S", 3, 7), ("L > S: empty rows", 7, 3),
                                                  ("one query", 1, 9))]
    if "window" in features:
        windows = [(2, 0), (0, 2), (1, 1), (3, -1), (-1, 2), (0, 0)]
        cases += [replace(draw(f"window {w}, L = S", 1, 2, 2, 9, 9, 4), window=w)
                  for w in windows]
        cases += [replace(draw(f"window (2, 1), {name}", 1, 1, 1, n_queries, n_keys, 4),
                          window=(2, 1)) for name, n_queries, n_keys in
                  (("L < S", 4, 9), ("L > S: empty rows", 9, 4), ("past 64 keys", 3, 80))]
        if layout == "flash" and "causal" in features:
            cases.append(replace(draw("window (3, 0) with causal", 1, 2, 2, 6, 9, 4),
                                 window=(3, 0), causal=causal))
    if "softcap" in features:
        cases += [replace(draw("softcap 5 on scores near 20", 1, 2, 2, 4, 6, 4,
                               magnitude=3.0), softcap=5.0),
                  replace(draw("softcap 30 on huge scores", 1, 1, 1, 4, 6, 4,
                               magnitude=huge), softcap=30.0)]
    if "alibi" in features:
        slopes = 2.0 ** (-8.0 * np.arange(1, 5) / 4)
        cases += [replace(draw("ALiBi slopes (H,), L < S", 1, 4, 4, 3, 7, 4), alibi=slopes),
                  replace(draw("ALiBi slopes (B, H), L > S", 2, 2, 2, 6, 4, 4),
                          alibi=rng.random((2, 2)))]
    if "sinks" in features:
        cases += [replace(draw("sinks", 2, 3, 3, 4, 5, 4), sinks=rng.normal(size=3)),
                  replace(draw("a sink above every score", 1, 2, 2, 3, 5, 4),
                          sinks=np.array([40.0, -3.0]))]
    if "varlen" in features:
        packed = [("three sequences", [0, 3, 4, 9], [0, 2, 7, 9]),
                  ("a sequence with no keys", [0, 2, 5], [0, 0, 4]),
                  ("a sequence with no queries", [0, 0, 3, 5], [0, 3, 5, 8]),
                  ("sequences past tiles of 64 and 128", [0, 3, 3, 73, 74],
                   [0, 130, 134, 199, 199])]
        for name, starts_q, starts_k in packed:
            base = draw(f"varlen, {name}", 1, 2, 2, starts_q[-1], starts_k[-1], 4)
            cases.append(replace(base, cu_seqlens=(np.array(starts_q), np.array(starts_k))))
            if "causal" in features:
                cases.append(replace(base, label=f"varlen, {name}, causal",
                                     cu_seqlens=(np.array(starts_q), np.array(starts_k)),
                                     causal="bottom_right"))
    if "dropout_mask" in features:
        cases += [replace(draw("dropout", 2, 2, 2, 4, 6, 4), dropout_p=0.25,
                          dropout_mask=rng.random((2, 2, 4, 6)) >= 0.25),
                  replace(draw("dropout past 64 keys", 1, 1, 1, 2, 70, 4), dropout_p=0.5,
                          dropout_mask=rng.random((1, 1, 2, 70)) >= 0.5)]
    if "decode" in features:
        heads, kv_heads = (4, 2) if "gqa" in features else (2, 2)
        cases += [replace(draw(f"decode: one query, {n} keys", 2, heads, kv_heads, 1, n, 4),
                          decode=True) for n in (1, 64, 65, 129, 300)]
    cases.append(_everything(draw, rng, features, layout, causal))
    followed = [_following(case, features, layout, draw) for case in cases]
    return [_outputs(case, features, layout, rng) for case in followed if case is not None]


def _following(case: Case, features: frozenset[str], layout: str,
               draw: _Inputs) -> Case | None:
    """``case`` as a kernel that takes only the chosen shapes and computes only the chosen
    patterns gets it: as it is, or in the first chosen shape and with the first chosen
    pattern it combines with; None if it uses a feature that is not chosen or combines
    with no chosen shape and pattern."""
    if "padded" in case.features(layout) and "padded" not in features:
        for shape in ordered(features & SHAPES):
            converted = _packed(case, draw) if shape == "varlen" else _decoded(case)
            followed = None if converted is None else \
                _following(converted, features, layout, draw)
            if followed is not None:
                return followed
        return None
    used = case.features(layout) - OUTPUTS
    if "full" in used and "full" not in features:
        options = used - {"full"}
        shape = next(iter(options & SHAPES))
        pattern = next((name for _, name in forms(shape, features, layout)
                        if compatible(options, layout, first=[name]) == options | {name}),
                       None)
        if pattern is None:
            return None
        if pattern == "window":
            case = replace(case, window=_WINDOW)
        else:
            aligned = pattern == "bottom_right" or layout == "flash" or \
                case.cu_seqlens is not None
            case = replace(case, causal="bottom_right" if aligned else "top_left")
        case = replace(case, label=f"{case.label}, {pattern.replace('_', '-')}")
    return case if case.features(layout) - OUTPUTS <= features else None


def _packed(case: Case, draw: _Inputs) -> Case | None:
    """A padded ``case`` as packed sequences: a sequence of :data:`_LEAD` queries and keys
    (drawn), then each batch element as a sequence, so lengths differ and a route that
    crosses sequences shows; its causal diagonal is aligned bottom-right in each sequence.
    None for a case with a mask or a dropout mask (packed sequences carry their own)."""
    if case.mask is not None or case.dropout_mask is not None:
        return None
    if case.alibi is not None and case.alibi.ndim == 2:    # slopes per batch element: one
        case = _take(case, batch=slice(0, 1))
    batch, heads, kv_heads, n_queries, n_keys, dim, value_dim = case.shape
    lead = draw(case.label, 1, heads, kv_heads, *_LEAD, dim, value_dim=value_dim)

    def packed(first: np.ndarray, rest: np.ndarray) -> np.ndarray:
        # (1, H, n, F) and (B, H, m, F) -> (1, H, n + B·m, F)
        return np.concatenate([first[0], *rest], axis=1)[None]

    starts_q = np.r_[0, _LEAD[0] + n_queries * np.arange(batch + 1)]
    starts_k = np.r_[0, _LEAD[1] + n_keys * np.arange(batch + 1)]
    return replace(case, query=packed(lead.query, case.query), key=packed(lead.key, case.key),
                   value=packed(lead.value, case.value), cu_seqlens=(starts_q, starts_k),
                   causal=None if case.causal is None else "bottom_right",
                   label=f"{case.label}, packed")


def _decoded(case: Case) -> Case:
    """A padded ``case`` as a decode step: its last query alone, every key."""
    n_queries = case.shape[3]
    return replace(_take(case, queries=slice(n_queries - 1, n_queries)), decode=True,
                   label=f"{case.label}, decode")


def _everything(draw: _Inputs, rng: np.random.Generator, features: frozenset[str],
                layout: str, causal: Causal) -> Case:
    """One case with every chosen feature that combines with the others."""
    # Packed or decode if chosen (padded is every other case), and a kernel that cannot
    # compute full attention its first pattern, before the rest.
    form = next((form for form in forms(None, features, layout) if form[0] != "padded"),
                forms(None, features, layout)[0])
    first = [form[0]] if "full" in features else list(form)
    on = compatible(features - OUTPUTS - {"full"}, layout, first=first)
    heads, kv_heads = (4, 2) if "gqa" in on else (2, 2)
    n_queries, n_keys = (1, 70) if "decode" in on else (5, 70)
    value_dim = 6 if "value_dim" in on else 4
    case = replace(draw("every feature at once", 1, heads, kv_heads, n_queries, n_keys, 4,
                        value_dim=value_dim), scale=0.4, decode="decode" in on)
    if "varlen" in on:
        case = replace(draw("every feature at once", 1, heads, kv_heads, 7, 75, 4,
                            value_dim=value_dim), scale=0.4,
                       cu_seqlens=(np.array([0, 2, 7]), np.array([0, 5, 75])))
        n_queries, n_keys = 7, 75
    shape = (1, heads, n_queries, n_keys)
    if "mask" in on:
        case = replace(case, mask=rng.random(shape) < 0.8)
    if "causal" in on or "bottom_right" in on:
        aligned = "bottom_right" in on or "varlen" in on
        case = replace(case, causal="bottom_right" if aligned else causal)
    if "window" in on:
        case = replace(case, window=(40, 0 if case.causal else 3))
    if "softcap" in on:
        case = replace(case, softcap=2.0)
    if "alibi" in on:
        case = replace(case, alibi=rng.random(heads) / 4)
    if "sinks" in on:
        case = replace(case, sinks=rng.normal(size=heads))
    if "dropout_mask" in on:
        case = replace(case, dropout_p=0.2, dropout_mask=rng.random(shape) >= 0.2)
    return case


def _outputs(case: Case, features: frozenset[str], layout: str,
             rng: np.random.Generator) -> Case:
    """Ask ``case`` for the log-sum-exp and the gradients, when the check does."""
    if "lse" in features:
        case = replace(case, lse=True)
    if "backward" in features:
        case = replace(case, d_output=rng.normal(size=case.query.shape[:3]
                                                 + case.value.shape[3:]))
    return case


def _extremes(dtype: str) -> tuple[float, float]:
    """Input magnitudes that give huge scores (about ±1e4 in float64, ±1e3 below) and
    tiny ones (far below the dtype's epsilon) without leaving its range."""
    return {"float64": (50.0, 1e-100), "float32": (12.0, 1e-12),
            "float16": (10.0, 1e-3), "bfloat16": (12.0, 1e-12)}[dtype]


@dataclass
class _Inputs:
    """Draws a case's query, key and value from one generator."""

    rng: np.random.Generator
    dtype: str

    def __call__(self, label: str, batch: int, heads: int, kv_heads: int, n_queries: int,
                 n_keys: int, dim: int, magnitude: float = 1.0,
                 subnormal: bool = False, far_below: bool = False,
                 cancelling: bool = False, value_dim: int | None = None) -> Case:
        normal = self.rng.normal
        query = normal(size=(batch, heads, n_queries, dim)) * magnitude
        key = normal(size=(batch, kv_heads, n_keys, dim)) * magnitude
        value = normal(size=(batch, kv_heads, n_keys, value_dim or dim))
        if subnormal:
            smallest = float(np.finfo(np.float64 if self.dtype == "float64" else
                                      np.float16 if self.dtype == "float16" else
                                      np.float32).smallest_normal)
            query, key, value = (x * smallest / 8 for x in (query, key, value))
        if far_below:        # every score near -800 (or the dtype's range): exp underflows
            depth = {"float64": 800.0, "float32": 110.0, "float16": 30.0,
                     "bfloat16": 110.0}[self.dtype]
            query = np.abs(query) + 1
            key = -np.abs(key) - 1
            query *= math.sqrt(depth / (dim ** 0.5 * 2))
            key *= math.sqrt(depth / (dim ** 0.5 * 2))
        if cancelling:       # values of both signs whose weighted sum is far smaller
            value = np.where(self.rng.random(value.shape) < 0.5, 1e3, -1e3) + value
        return Case(query, key, value, self.dtype, label=label)


def smaller(case: Case) -> Iterator[Case]:
    """Cases a little simpler than ``case``, most promising first: fewer batch elements,
    heads, sequences, queries, keys and features; then simpler values and options. A
    failure keeps the first of them that still fails (:func:`~routing_sim.testing.check`)."""
    batch, heads, kv_heads, n_queries, n_keys, dim, value_dim = case.shape
    for b in range(batch if batch > 1 else 0):
        yield _take(case, batch=slice(b, b + 1))
    ratio = heads // kv_heads
    for g in range(kv_heads if kv_heads > 1 else 0):
        yield _take(case, kv_heads=slice(g, g + 1), heads=slice(g * ratio, (g + 1) * ratio))
    for fewer in _fewer(ratio):
        yield _take(case, ratio=fewer)
    if case.cu_seqlens is not None:
        yield from _fewer_sequences(case)
        yield from _shorter_sequences(case)
    else:
        for fewer in _fewer(n_queries):
            yield _take(case, queries=slice(0, fewer))
            yield _take(case, queries=slice(n_queries - fewer, n_queries))
        for fewer in _fewer(n_keys):
            yield _take(case, keys=slice(0, fewer))
            yield _take(case, keys=slice(n_keys - fewer, n_keys))
    for fewer in _fewer(min(dim, value_dim)):      # both head dims at once: Ev = E stays
        yield replace(case, query=case.query[..., :fewer], key=case.key[..., :fewer],
                      value=case.value[..., :fewer],
                      d_output=None if case.d_output is None else case.d_output[..., :fewer])
    for fewer in _fewer(dim):
        yield replace(case, query=case.query[..., :fewer], key=case.key[..., :fewer])
    for fewer in _fewer(value_dim):
        yield replace(case, value=case.value[..., :fewer],
                      d_output=None if case.d_output is None else case.d_output[..., :fewer])
    for simpler in (np.zeros_like, np.sign, np.round, _one_decimal):
        for name in ("query", "key", "value"):
            values = getattr(case, name)
            if not np.array_equal(simpler(values), values):
                changed: dict[str, Any] = {name: simpler(values)}
                yield replace(case, **changed)
    plain: dict[str, dict[str, Any]] = {
        "scale": {"scale": None}, "mask": {"mask": None}, "window": {"window": None},
        "alibi": {"alibi": None}, "sinks": {"sinks": None}, "causal": {"causal": None},
        "dropout_mask": {"dropout_mask": None, "dropout_p": 0.0}}
    for name, options in plain.items():
        if getattr(case, name) is not None:
            yield replace(case, **options)
    if case.window is not None:             # narrower, on one side at a time
        left, right = case.window
        for narrower in sorted({0, *_fewer(left)}) if left > 0 else []:
            yield replace(case, window=(narrower, right))
        for narrower in sorted({0, *_fewer(right)}) if right > 0 else []:
            yield replace(case, window=(left, narrower))
    if case.softcap:
        yield replace(case, softcap=0.0)


def _one_decimal(values: np.ndarray) -> np.ndarray:
    return np.round(values, 1)


def _fewer(n: int) -> list[int]:
    """Smaller sizes to try, smallest first: 1, 2, n // 2, n - 1."""
    return sorted({size for size in (1, 2, n // 2, n - 1) if 0 < size < n})


def _take(case: Case, batch: slice | None = None, heads: slice | None = None,
          kv_heads: slice | None = None, queries: slice | None = None,
          keys: slice | None = None, ratio: int | None = None) -> Case:
    """``case`` cut down to some batch elements, heads, queries or keys (``ratio``: keep
    the first ``ratio`` query heads of every KV head's group)."""
    every = slice(None)
    if ratio is not None:
        group = case.shape[1] // case.shape[2]
        heads = np.concatenate([np.arange(g * group, g * group + ratio)
                                for g in range(case.shape[2])])          # type: ignore[assignment]
    b, h, kv, q, k = (x if x is not None else every for x in (batch, heads, kv_heads, queries,
                                                              keys))

    def cut(array: np.ndarray | None, *index: Any) -> np.ndarray | None:
        if array is None:
            return None
        # A broadcast dim (size 1) stays as it is.
        return array[tuple(i if n > 1 else every for i, n in zip(index, array.shape))]

    alibi = case.alibi
    if alibi is not None:
        alibi = alibi[h] if alibi.ndim == 1 else cut(alibi, b, h)
    return replace(case, query=case.query[b][:, h][:, :, q], key=case.key[b][:, kv][:, :, k],
                   value=case.value[b][:, kv][:, :, k], mask=cut(case.mask, b, h, q, k),
                   alibi=alibi, sinks=None if case.sinks is None else case.sinks[h],
                   dropout_mask=cut(case.dropout_mask, b, h, q, k),
                   d_output=cut(case.d_output, b, h, q))


def _fewer_sequences(case: Case) -> Iterator[Case]:
    """``case`` with one packed sequence left out."""
    assert case.cu_seqlens is not None
    starts_q, starts_k = case.cu_seqlens
    for n in range(len(starts_q) - 1 if len(starts_q) > 2 else 0):
        yield from _kept(case, np.r_[0:starts_q[n], starts_q[n + 1]:starts_q[-1]],
                         np.r_[0:starts_k[n], starts_k[n + 1]:starts_k[-1]], dropped=n)


def _shorter_sequences(case: Case) -> Iterator[Case]:
    """``case`` with one packed sequence cut to fewer queries or keys (none too: a
    sequence without queries or without keys is a case), its first or its last ones."""
    assert case.cu_seqlens is not None
    for side, starts in enumerate(case.cu_seqlens):
        every, others = np.arange(starts[-1]), np.arange(case.cu_seqlens[1 - side][-1])
        for start, stop in zip(starts[:-1], starts[1:]):
            for fewer in [0, *_fewer(int(stop - start))] if stop > start else []:
                ends = (every[start:start + fewer], every[stop - fewer:stop])
                for kept in ends[:1] if fewer == 0 else ends:
                    cut = np.r_[every[:start], kept, every[stop:]]
                    yield from _kept(case, *((cut, others) if side == 0 else (others, cut)))


def _kept(case: Case, rows: np.ndarray, columns: np.ndarray,
          dropped: int | None = None) -> Iterator[Case]:
    """The packed ``case`` with the queries ``rows`` and the keys ``columns`` alone, and
    without sequence ``dropped`` (nothing when no query or no key is left: no case)."""
    assert case.cu_seqlens is not None
    if not len(rows) or not len(columns):
        return

    def lengths(kept: np.ndarray, starts: np.ndarray) -> np.ndarray:
        found = np.searchsorted(starts, kept, side="right") - 1       # sequence of each
        counts = np.bincount(found, minlength=len(starts) - 1)
        return np.r_[0, np.cumsum(np.delete(counts, dropped) if dropped is not None
                                  else counts)]

    yield replace(case, query=case.query[:, :, rows], key=case.key[:, :, columns],
                  value=case.value[:, :, columns],
                  d_output=None if case.d_output is None else case.d_output[:, :, rows],
                  cu_seqlens=(lengths(rows, case.cu_seqlens[0]),
                              lengths(columns, case.cu_seqlens[1])))
