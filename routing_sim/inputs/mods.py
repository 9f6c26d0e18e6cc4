"""Score mods: FlexAttention's ``score_mod(score, b, h, q_idx, kv_idx)``, with derivatives.

A score mod changes the scaled score ``q_i · k_j · scale`` of a route before the softmax;
in the routing protocol the key node applies it to the score it sends. Any elementwise
numpy function of ``(score, b, h, q_idx, kv_idx)`` works in the forward pass: routing_sim
calls it with arrays that broadcast together (flat per-route arrays in the simulator,
``(G, 1, 1)`` / ``(1, L, 1)`` / ``(1, 1, S)`` grids in the matrix reference). ``b`` and
``h`` index the leading batch and head dims (see :func:`~routing_sim.routes.route_set.batch_head`).

A mod that returns ``-inf`` removes the route, as FlexAttention users mask: in the
protocol the key node still sends that SCORE (it is the one applying the mod), and the
route then takes no share and pulls no value; its gradient is zero. ``+inf`` and NaN are
refused with an error naming the mod.

A mod written for ``torch.nn.attention.flex_attention`` works unchanged when torch is
installed: a mod that fails on numpy arrays is called again with torch tensors of the same
values (:func:`call_mod`; torch is imported only then). ``mask_mod`` functions go through
the same call.

The backward pass needs ``d score' / d score`` as well, so it accepts only mods that carry
it: the built-ins below (or any object with a matching ``grad`` method). A plain function
gets a clear error there, never a wrong gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InvalidArgumentError, ShapeError

__all__ = ["ScoreMod", "alibi", "call_mod", "derivative", "flash_softcap", "modified",
           "relative_bias", "removed_by", "softcap"]


class ScoreMod:
    """A score mod that knows its derivative with respect to the score.

    Subclasses define ``__call__(score, b, h, q_idx, kv_idx)`` and ``grad(...)`` with the
    same arguments, both elementwise.
    """

    def __call__(self, score, b, h, q_idx, kv_idx):
        raise NotImplementedError

    def grad(self, score: np.ndarray, b: ArrayLike, h: ArrayLike, q_idx: ArrayLike,
             kv_idx: ArrayLike) -> np.ndarray:
        raise NotImplementedError


class softcap(ScoreMod):  # noqa: N801 - named like the function users call
    """Soft-capping ``cap · tanh(score / cap)`` (Gemma 2): scores stay inside ``(-cap, cap)``.

    Examples
    --------
    >>> mod = softcap(2.0)
    >>> float(mod(np.float64(100.0), 0, 0, 0, 0)), float(mod.grad(np.float64(0.0), 0, 0, 0, 0))
    (2.0, 1.0)
    """

    def __init__(self, cap: float) -> None:
        if isinstance(cap, bool) or not isinstance(cap, (int, float, np.floating, np.integer)) \
                or not np.isfinite(cap) or cap <= 0:
            raise InvalidArgumentError(f"softcap cap must be a finite number > 0, got {cap!r}")
        self.cap = float(cap)

    def __call__(self, score, b, h, q_idx, kv_idx):
        return self.cap * np.tanh(score / self.cap)

    def grad(self, score: np.ndarray, b: ArrayLike, h: ArrayLike, q_idx: ArrayLike,
             kv_idx: ArrayLike) -> np.ndarray:
        # sech²(x) = 4 e^{-2|x|} / (1 + e^{-2|x|})²: no cancellation (1 - tanh² has it) and
        # no overflow for large |x|.
        decay = np.exp(-2.0 * np.abs(score / self.cap))
        return 4.0 * decay / (1.0 + decay) ** 2

    def __repr__(self) -> str:
        return f"softcap({self.cap})"


class alibi(ScoreMod):  # noqa: N801
    """ALiBi as a score mod, in either convention (as ``alibi_slopes`` / ``alibi_mode``).

    ``signed=False``: ``score - slopes[h] · |q_idx - kv_idx|``, FlashAttention's
    ``alibi_slopes``. ``signed=True``: ``score + slopes[h] · (kv_idx - q_idx)``, the ALiBi
    paper's and FlexAttention's (attention-gym's ``generate_alibi_bias``); a key after the
    query then gets a positive bias, so without a causal mask the two differ. ``slopes``
    is ``(H,)`` or, per batch element, ``(B, H)``.

    Examples
    --------
    >>> alibi([0.5, 1.0])(np.zeros(2), 0, np.array([0, 1]), 3, 1).tolist()
    [-1.0, -2.0]
    >>> alibi([0.5], signed=True)(np.zeros(3), 0, 0, 1, np.arange(3)).tolist()
    [-0.5, 0.0, 0.5]
    """

    def __init__(self, slopes, signed: bool = False) -> None:
        self.slopes = np.asarray(slopes, dtype=np.float64)
        if self.slopes.ndim not in (1, 2) or not np.isfinite(self.slopes).all():
            raise ShapeError(f"alibi slopes must be (H,) or (B, H) finite numbers, one per "
                             f"head, got shape {self.slopes.shape}")
        if not isinstance(signed, (bool, np.bool_)):
            raise InvalidArgumentError(f"signed must be True or False, got {signed!r}")
        self.signed = bool(signed)

    def __call__(self, score, b, h, q_idx, kv_idx):
        heads = np.asarray(h) % self.slopes.shape[-1]
        slope = self.slopes[heads] if self.slopes.ndim == 1 else \
            self.slopes[np.asarray(b) % len(self.slopes), heads]
        offset = np.asarray(kv_idx) - np.asarray(q_idx)
        return score + slope * offset if self.signed else score - slope * np.abs(offset)

    def grad(self, score: np.ndarray, b: ArrayLike, h: ArrayLike, q_idx: ArrayLike,
             kv_idx: ArrayLike) -> np.ndarray:
        return np.ones(np.broadcast_shapes(*map(np.shape, (score, b, h, q_idx, kv_idx))))

    def __repr__(self) -> str:
        return f"alibi({self.slopes.tolist()}{', signed=True' if self.signed else ''})"


class relative_bias(ScoreMod):  # noqa: N801
    """A learned bias per relative distance: ``score + table[..., q_idx - kv_idx + M - 1]``.

    ``table`` is ``(2M - 1,)`` (shared) or ``(H, 2M - 1)`` (per head) and covers distances
    ``-(M - 1) .. M - 1``; longer distances use the end buckets (as T5 does).

    Examples
    --------
    >>> relative_bias([10.0, 20.0, 30.0])(np.zeros(3), 0, 0, 2, np.array([0, 2, 3])).tolist()
    [30.0, 20.0, 10.0]
    """

    def __init__(self, table) -> None:
        self.table = np.asarray(table, dtype=np.float64)
        if self.table.ndim not in (1, 2) or self.table.shape[-1] % 2 != 1 \
                or not np.isfinite(self.table).all():
            raise ShapeError(f"relative_bias table must be (2M - 1,) or (H, 2M - 1) finite "
                             f"numbers, got shape {self.table.shape}")

    def __call__(self, score, b, h, q_idx, kv_idx):
        reach = self.table.shape[-1] // 2
        bucket = np.clip(np.asarray(q_idx) - np.asarray(kv_idx), -reach, reach) + reach
        if self.table.ndim == 1:
            return score + self.table[bucket]
        return score + self.table[np.asarray(h) % len(self.table), bucket]

    def grad(self, score: np.ndarray, b: ArrayLike, h: ArrayLike, q_idx: ArrayLike,
             kv_idx: ArrayLike) -> np.ndarray:
        return np.ones(np.broadcast_shapes(*map(np.shape, (score, h, q_idx, kv_idx))))

    def __repr__(self) -> str:
        return f"relative_bias(table of shape {self.table.shape})"


def call_mod(mod: Callable, *arguments: ArrayLike) -> np.ndarray:
    """``mod(*arguments)`` as an array: with the numpy arguments, or, for a mod written
    for ``torch.nn.attention.flex_attention`` (torch ops such as ``.abs()``,
    ``torch.where``, ``torch.tanh``, a captured tensor), with torch tensors of the same
    values.

    The numpy call comes first. Only when it fails the way a torch mod fails on numpy
    arrays (a TypeError, AttributeError or torch's RuntimeError, or numpy meeting a tensor)
    or answers with a tensor is torch imported, lazily, and the mod called again on
    tensors, its answer converted back with ``.numpy()``; a mod that fails on whole
    tensors too (it was written for FlexAttention's one-element-at-a-time calls) is called
    element by element under ``torch.vmap``, as FlexAttention calls it. If torch is not
    installed, or every call fails, the first call's error is raised.

    Examples
    --------
    >>> call_mod(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx, 0, 0, np.arange(3)[:, None],
    ...          np.arange(3)[None]).astype(int)
    array([[1, 0, 0],
           [1, 1, 0],
           [1, 1, 1]])
    """
    numpy_error: Exception | None = None
    try:
        with warnings.catch_warnings():               # numpy handed a tensor: a torch mod
            warnings.filterwarnings("error", message=".*__array_wrap__",
                                    category=DeprecationWarning)
            result = mod(*arguments)
        if type(result).__module__.split(".")[0] != "torch":
            return np.asarray(result)
    except (TypeError, AttributeError, RuntimeError, DeprecationWarning) as error:
        numpy_error = error
    try:
        import torch
    except ImportError:
        assert numpy_error is not None, "a tensor answer means torch is loaded"
        raise numpy_error from None
    tensors = [torch.from_numpy(np.ascontiguousarray(argument))
               if isinstance(argument, np.ndarray) else torch.as_tensor(argument)
               for argument in arguments]
    try:
        result = mod(*tensors)
    except Exception as tensor_error:
        try:
            result = _per_element(torch, mod, tensors)
        except Exception:
            raise (tensor_error if numpy_error is None else numpy_error) from None
    if isinstance(result, torch.Tensor):
        return result.detach().cpu().numpy()
    return np.asarray(result)


def _per_element(torch, mod: Callable, tensors: list) -> object:
    """``mod`` called as FlexAttention calls it, one element at a time under
    ``torch.vmap``: for a mod whose ops only make sense on scalars (``torch.dot`` of rows
    picked by ``q_idx``, a row of a captured table indexed twice)."""
    shape = torch.broadcast_shapes(*(tensor.shape for tensor in tensors))
    flat = [tensor.broadcast_to(shape).reshape(-1) for tensor in tensors]     # (R,) each
    return torch.vmap(mod)(*flat).reshape(shape)


def modified(score_mod: Callable, scores: np.ndarray, b: ArrayLike, h: ArrayLike,
             q_idx: ArrayLike, kv_idx: ArrayLike, exists: np.ndarray | None = None
             ) -> np.ndarray:
    """``score_mod`` applied to ``scores``, checked: real, the shape of ``scores``.

    ``-inf`` from a finite score removes the route, as in FlexAttention (see
    :func:`removed_by`); ``+inf`` or NaN from a finite score has no softmax, so it raises
    an :class:`~routing_sim.InvalidArgumentError` naming the mod (only on routes that
    ``exists``, a bool mask broadcasting to ``scores``, when given). A score that was not
    finite before the mod is an overflow, which the callers report.

    Examples
    --------
    >>> modified(softcap(1.0), np.array([0.0, 50.0]), 0, 0, 0, np.array([0, 1])).tolist()
    [0.0, 1.0]
    >>> modified(lambda s, b, h, q, kv: np.where(kv > q, -np.inf, s), np.zeros(2), 0, 0, 0,
    ...          np.array([0, 1])).tolist()
    [0.0, -inf]
    """
    with np.errstate(over="ignore", invalid="ignore"):
        result = call_mod(score_mod, scores, b, h, q_idx, kv_idx)
    if result.dtype.kind not in "fiu":
        raise InvalidArgumentError(f"score_mod must return real scores, got dtype {result.dtype}")
    try:
        result = np.broadcast_to(result, scores.shape)
    except ValueError:
        raise ShapeError(f"score_mod returned shape {result.shape} for scores of shape "
                         f"{scores.shape}; it must work elementwise") from None
    unusable = (np.isnan(result) | np.isposinf(result)) & np.isfinite(scores)
    if exists is not None:
        unusable &= exists
    if unusable.any():
        at = tuple(np.argwhere(unusable)[0])
        b, h, q_idx, kv_idx = (int(np.broadcast_to(index, scores.shape)[at])
                               for index in (b, h, q_idx, kv_idx))
        raise InvalidArgumentError(
            f"score_mod {_name(score_mod)} returned {result[at]} for the score {scores[at]} "
            f"of query {q_idx} and key {kv_idx} (b={b}, h={h}); a score_mod must return "
            "finite scores, or -inf to remove a route (as in FlexAttention): +inf and NaN "
            "have no softmax")
    return result.astype(scores.dtype)


def removed_by(raw: np.ndarray, modded: np.ndarray) -> np.ndarray:
    """Routes a score_mod removed: ``-inf`` from a finite score (FlexAttention's masking).

    Such a route takes no share of the budget and pulls no value; a query whose every
    route is removed is an empty row (``empty_rows``), as flex_attention gives it zeros.

    Examples
    --------
    >>> removed_by(np.array([1.0, 2.0, -np.inf]), np.array([1.0, -np.inf, -np.inf])).tolist()
    [False, True, False]
    """
    return np.isneginf(modded) & np.isfinite(raw)


def _name(score_mod: Callable) -> str:
    """How an error names a mod: a function's qualified name, else its repr."""
    if isinstance(score_mod, ScoreMod):
        return repr(score_mod)
    return getattr(score_mod, "__qualname__", None) or repr(score_mod)


def derivative(score_mod: Callable | None) -> Callable | None:
    """``score_mod.grad``, or a clear error for a mod that does not carry its derivative."""
    if score_mod is None:
        return None
    grad = getattr(score_mod, "grad", None)
    if not callable(grad):
        raise InvalidArgumentError(
            f"the backward pass needs the derivative of score_mod {score_mod!r}; use a "
            "built-in (rs.mods.softcap, alibi, relative_bias) or give an object with a "
            "grad(score, b, h, q_idx, kv_idx) method")
    return partial(call_mod, grad)                 # a grad written with torch works too


def flash_softcap(cap: object, score_mod: Callable | None, numerics: str = "float"
                  ) -> Callable | None:
    """The score mod of a call: FlashAttention's ``softcap=cap`` as :class:`softcap`, or
    ``score_mod`` itself; refuses the two together, and either with ``numerics="exact"``.

    ``softcap=0.0`` or None is off, as in ``flash_attn_func``. Given with a ``score_mod``
    it is refused rather than composed: FlashAttention caps the scaled score and adds
    ALiBi after, but a FlexAttention ``score_mod`` may add a bias that a cap should or
    should not see (Gemma 2 caps, then masks), so no order is the obvious one; write the
    composition as one ``score_mod`` instead. Exact mode refuses both: ``tanh`` and a
    mod's arithmetic are not correctly rounded.

    Examples
    --------
    >>> flash_softcap(30.0, None)
    softcap(30.0)
    >>> flash_softcap(0.0, None) is None
    True
    >>> flash_softcap(-1.0, None)
    Traceback (most recent call last):
    ...
    routing_sim.errors.InvalidArgumentError: softcap must be a finite number >= 0 (0 or \
None: off), got -1.0
    """
    if cap is not None and (isinstance(cap, (bool, np.bool_)) or not isinstance(
            cap, (int, float, np.integer, np.floating)) or not np.isfinite(cap) or cap < 0):
        raise InvalidArgumentError(f"softcap must be a finite number >= 0 (0 or None: off), "
                                   f"got {cap!r}")
    mod = score_mod
    if cap:
        if score_mod is not None:
            raise InvalidArgumentError(
                f"softcap={cap!r} and score_mod={_name(score_mod)} both change the "
                "scores, and the order they apply in is not given: pass one score_mod that "
                "does both (rs.mods.softcap(cap)(score, b, h, q_idx, kv_idx) inside it)")
        mod = softcap(float(cap))
    if numerics == "exact" and mod is not None:
        what = f"softcap={cap!r} (cap · tanh(s / cap))" if cap else "score_mod"
        raise InvalidArgumentError(f"{what} runs in float arithmetic; it cannot be combined "
                                   "with numerics='exact'")
    return mod
