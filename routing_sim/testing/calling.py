"""How a case reaches the kernel and comes back: the two layouts' shapes and keyword names,
numpy arrays or torch tensors, and the reproducer a user pastes.

``layout="sdpa"``: ``fn(q, k, v, **kwargs)`` with ``(B, H, L, E)`` inputs and
``scaled_dot_product_attention``'s names (``attn_mask``, ``is_causal``, ``scale``,
``enable_gqa``, ``dropout_p``); ``layout="flash"``: ``(B, L, H, E)`` inputs and
``flash_attn_func``'s names (``causal``, ``window_size``, ``softcap``, ``alibi_slopes``,
``softmax_scale``, ``dropout_p``). Where a layout has no name of its own, both use
FlashAttention's (``window_size``, ``softcap``, ``alibi_slopes``), routing_sim's
(``sinks``, ``dropout_mask``, ``return_lse``) or ``flash_attn_varlen_func``'s
(``cu_seqlens_q``, ``cu_seqlens_k``, ``max_seqlen_q``, ``max_seqlen_k``; packed inputs
``(1, H, total, E)`` in the sdpa layout, ``(total, H, E)`` in the flash one). An sdpa
causal diagonal aligned bottom-right is torch's ``causal_lower_right(L, S)`` as
``attn_mask`` for a torch function, ``is_causal=True, causal_alignment="bottom_right"``
(routing_sim's names) for a numpy one.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import InvalidArgumentError
from .cases import PATTERNS, Case, Causal
from .precision import check_dtype

__all__ = ["Outcome", "arguments", "call", "canonical", "case_from_call", "detect", "keywords",
           "leaving_out", "load_function", "reproducer", "unstated"]

Kind = Literal["numpy", "torch"]


@dataclass(frozen=True)
class Outcome:
    """What the kernel returned for a case, in the SDPA layout as float64, or why not."""

    output: np.ndarray | None = None               # (B, Hq, L, Ev)
    lse: np.ndarray | None = None                  # (B, Hq, L)
    gradients: tuple[np.ndarray | None, ...] | None = None   # dq, dk, dv (, d_sinks)
    error: str | None = None


def detect(fn: Callable, layout: str, dtype: str = "float64",
           shapes: Sequence[str] = ("padded",)) -> Kind:
    """Whether ``fn`` takes numpy arrays or torch tensors: it is called on a two-key case
    in ``dtype`` of each of ``shapes`` (padded: two queries; varlen: two packed sequences
    of one query and key each; decode: one query) with numpy arrays first, then with torch
    tensors (if torch is installed); the first call that returns an array of its own kind
    decides.

    >>> import routing_sim as rs
    >>> def packed_only(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    ...     return rs.attention(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    >>> detect(packed_only, "sdpa", shapes=["padded", "varlen"])
    'numpy'
    """
    errors = []
    kinds: list[Kind] = ["numpy", "torch"] if importlib.util.find_spec("torch") else ["numpy"]
    for kind in kinds:
        for shape in shapes:
            probe = Case(np.ones((1, 1, 1 if shape == "decode" else 2, 4)), np.ones((1, 1, 2, 4)),
                         np.eye(2, 4)[None, None], dtype, decode=shape == "decode",
                         cu_seqlens=(np.arange(3), np.arange(3)) if shape == "varlen" else None)
            try:
                args, kwargs = arguments(probe, layout, kind)
                returned = fn(*args, **kwargs)
            except Exception as error:                 # noqa: BLE001 - the user's function
                errors.append(f"with {kind} arrays ({shape}) it raised "
                              f"{type(error).__name__}: {error}")
                continue
            first = returned[0] if isinstance(returned, tuple) else returned
            if kind == "numpy" and isinstance(first, np.ndarray) or \
                    kind == "torch" and type(first).__module__.startswith("torch"):
                return kind
            errors.append(f"with {kind} arrays ({shape}) it returned {type(first).__name__}")
    raise InvalidArgumentError(f"fn must take and return numpy arrays or torch tensors: "
                               f"{'; '.join(errors)}")


def unstated(fn: Callable, chosen: frozenset[str], layout: str) -> frozenset[str]:
    """The keywords that only say "causal" to a kernel that computes causal attention
    and nothing else (``causal`` or ``bottom_right`` its one pattern) and takes no such
    keyword: the checker leaves them out of its calls (:func:`leaving_out`).

    >>> def causal_only(q, k, v, scale=None): ...
    >>> sorted(unstated(causal_only, frozenset({"causal"}), "sdpa"))
    ['is_causal']
    >>> unstated(causal_only, frozenset({"causal", "full"}), "sdpa")
    frozenset()
    """
    patterns = chosen & PATTERNS
    if patterns not in ({"causal"}, {"bottom_right"}):
        return frozenset()
    # A bottom-right diagonal reaches a torch kernel as attn_mask=causal_lower_right(L, S),
    # which no mask shares: in the sdpa layout mask and causal never meet in one case.
    saying = {"sdpa": {"is_causal", "causal_alignment", "attn_mask"}
              if patterns == {"bottom_right"} else {"is_causal"}, "flash": {"causal"}}
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):             # no signature to read: pass them all
        return frozenset()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return frozenset()
    return frozenset(saying[layout] - {parameter.name for parameter in parameters})


def leaving_out(fn: Callable, names: frozenset[str]) -> Callable:
    """``fn`` called without the keywords ``names`` (``fn`` itself when there are none)."""
    if not names:
        return fn

    @functools.wraps(fn)
    def called(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **{name: given for name, given in kwargs.items() if name not in names})

    return called


def load_function(spec: str) -> Callable:
    """The function ``MODULE:FUNCTION`` (importable) or ``path/to/file.py:FUNCTION`` names.

    Examples
    --------
    >>> load_function("routing_sim:attention").__name__
    'attention'
    """
    where, colon, name = spec.rpartition(":")
    if not colon or not where or not name:
        raise InvalidArgumentError(f"give the function as MODULE:FUNCTION or "
                                   f"path/to/file.py:FUNCTION, got {spec!r}")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise InvalidArgumentError(f"no file {where!r} (from {spec!r})")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            assert loader is not None and loader.loader is not None
            module = importlib.util.module_from_spec(loader)
            sys.modules.setdefault(path.stem, module)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        found = module
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise InvalidArgumentError(f"cannot load {spec!r}: {error}") from None
    if not callable(found):
        raise InvalidArgumentError(f"{spec!r} is a {type(found).__name__}, not a function")
    return found


def _torch():
    import torch

    return torch


def _converted(array: np.ndarray, kind: Kind, dtype: str) -> Any:
    """A case's array as the kernel gets it: in ``dtype`` (bool and int arrays as they
    are), numpy or torch."""
    if array.dtype.kind == "f":
        if kind == "numpy":
            if dtype == "bfloat16":
                raise InvalidArgumentError("numpy has no bfloat16: check a torch function in "
                                           "bfloat16, or a numpy one in another dtype")
            return array.astype(dtype)
        torch = _torch()
        return torch.from_numpy(np.ascontiguousarray(array)).to(getattr(torch, dtype))
    if kind == "numpy":
        return array
    return _torch().from_numpy(np.ascontiguousarray(array))


def _to_layout(array: np.ndarray, layout: str, packed: bool) -> np.ndarray:
    """``(B, H, T, F)`` -> the layout's shape."""
    if layout == "sdpa":
        return array
    return array[0].transpose(1, 0, 2) if packed else array.transpose(0, 2, 1, 3)


def _from_layout(array: np.ndarray, layout: str, packed: bool) -> np.ndarray:
    """The layout's shape -> ``(B, H, T, F)``."""
    if layout == "sdpa":
        return array
    return array.transpose(1, 0, 2)[None] if packed else array.transpose(0, 2, 1, 3)


def keywords(case: Case, layout: str) -> dict[str, Any]:
    """The keyword arguments of the case, as plain numbers and numpy arrays (the mask, the
    slopes, the sinks, the dropout mask, ``cu_seqlens`` as int32)."""
    flash = layout == "flash"
    found: dict[str, Any] = {}
    if case.scale is not None:
        found["softmax_scale" if flash else "scale"] = case.scale
    if case.mask is not None:
        found["attn_mask"] = case.mask
    if case.causal is not None:
        found["causal" if flash else "is_causal"] = True
        if not flash and case.causal == "bottom_right" and case.cu_seqlens is None:
            found["causal_alignment"] = "bottom_right"
    if case.shape[1] != case.shape[2] and not flash:
        found["enable_gqa"] = True
    if case.window is not None:
        found["window_size"] = case.window
    if case.softcap:
        found["softcap"] = case.softcap
    if case.alibi is not None:
        found["alibi_slopes"] = case.alibi.astype(np.float32)
    if case.sinks is not None:
        found["sinks"] = case.sinks
    if case.cu_seqlens is not None:
        starts_q, starts_k = case.cu_seqlens
        found.update(cu_seqlens_q=starts_q.astype(np.int32), cu_seqlens_k=starts_k.astype(np.int32),
                     max_seqlen_q=int(np.diff(starts_q).max(initial=0)),
                     max_seqlen_k=int(np.diff(starts_k).max(initial=0)))
    if case.dropout_mask is not None:
        found.update(dropout_p=case.dropout_p, dropout_mask=case.dropout_mask)
    if case.lse:
        found["return_lse"] = True
    return found


def arguments(case: Case, layout: str, kind: Kind, value: np.ndarray | None = None
              ) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` for the kernel (``value`` replaces the case's values: the probes
    of :mod:`~routing_sim.testing.diagnose`)."""
    packed = case.cu_seqlens is not None
    inputs = (case.query, case.key, case.value if value is None else value)
    args = tuple(_converted(_to_layout(x, layout, packed), kind, case.dtype) for x in inputs)
    kwargs = keywords(case, layout)
    alignment = kwargs.get("causal_alignment")
    if alignment is not None and kind == "torch":          # torch says it with a CausalBias
        from torch.nn.attention.bias import causal_lower_right

        del kwargs["causal_alignment"], kwargs["is_causal"]
        with warnings.catch_warnings():   # torch warns of NaNs for L > S: the check judges
            warnings.simplefilter("ignore", UserWarning)
            kwargs["attn_mask"] = causal_lower_right(case.query.shape[2], case.key.shape[2])
    for name, given in kwargs.items():
        if isinstance(given, np.ndarray):
            dtype = "float32" if name == "alibi_slopes" else case.dtype
            kwargs[name] = _converted(given, kind, dtype)
    return args, kwargs


def canonical(array: Any, layout: str, packed: bool) -> np.ndarray:
    """An array or tensor of the layout's shape as float64 ``(B, H, T, F)``."""
    return _from_layout(_numpy(array, "an array"), layout, packed)


def _numpy(returned: Any, what: str) -> np.ndarray:
    """A returned array or tensor as float64 numpy."""
    if type(returned).__module__.startswith("torch"):
        returned = returned.detach().to("cpu").double().numpy()
    if not isinstance(returned, np.ndarray):
        raise TypeError(f"{what} is a {type(returned).__name__}, not an array")
    return returned.astype(np.float64)


def call(fn: Callable, case: Case, layout: str, kind: Kind,
         value: np.ndarray | None = None) -> Outcome:
    """Run the kernel on a case; its answer in the SDPA layout, or what went wrong."""
    args, kwargs = arguments(case, layout, kind, value)
    packed = case.cu_seqlens is not None
    batch, heads, _, n_queries, _, _, _ = case.shape
    value_dim = (case.value if value is None else value).shape[3]
    backward = case.d_output is not None and value is None
    if backward:
        args = tuple(x.requires_grad_() for x in args)
        if case.sinks is not None:
            kwargs["sinks"].requires_grad_()
    try:
        returned = fn(*args, **kwargs)
    except Exception as error:                     # noqa: BLE001 - the user's function
        return Outcome(error=f"raised {type(error).__name__}: {error}")
    if case.lse:
        if not (isinstance(returned, (tuple, list)) and len(returned) == 2):
            return Outcome(error="asked for return_lse=True, it did not return (out, lse)")
        returned, lse = returned
    elif isinstance(returned, (tuple, list)):
        return Outcome(error=f"returned a {type(returned).__name__} of {len(returned)}, "
                             "not the output alone")
    try:
        output = _from_layout(_numpy(returned, "the output"), layout, packed)
        if output.shape != (batch, heads, n_queries, value_dim):
            expected = _to_layout(np.empty((batch, heads, n_queries, value_dim)), layout,
                                  packed).shape
            return Outcome(error=f"returned shape {_to_layout(output, layout, packed).shape}, "
                                 f"expected {expected}")
        lse_array = None
        if case.lse:
            lse_array = _numpy(lse, "the lse")
            expected_lse = (heads, n_queries) if packed and layout == "flash" else \
                (batch, heads, n_queries)
            if lse_array.shape != expected_lse:
                return Outcome(output, error=f"returned an lse of shape {lse_array.shape}, "
                                             f"expected {expected_lse}")
            lse_array = lse_array.reshape(batch, heads, n_queries)
        gradients = None
        if backward:
            assert case.d_output is not None
            upstream = _converted(_to_layout(case.d_output, layout, packed), kind, case.dtype)
            returned.backward(upstream)
            gradients = tuple(None if x.grad is None else
                              _from_layout(_numpy(x.grad, "a gradient"), layout, packed)
                              for x in args)
            if case.sinks is not None:         # (H,) in either layout
                sinks = kwargs["sinks"].grad
                gradients += (None if sinks is None else _numpy(sinks, "a gradient"),)
    except Exception as error:                     # noqa: BLE001 - the user's function
        return Outcome(error=f"{type(error).__name__}: {error}")
    return Outcome(output, lse_array, gradients)


def case_from_call(query: Any, key: Any, value: Any, layout: str = "sdpa",
                   **kwargs: Any) -> Case:
    """The case a kernel was called on, from the same arguments (the inverse of
    :func:`arguments`): what :func:`~routing_sim.testing.assert_attention_close` checks."""
    names = {"sdpa": {"attn_mask", "is_causal", "scale", "enable_gqa", "causal_alignment"},
             "flash": {"causal", "softmax_scale"}}
    if layout not in names:
        raise InvalidArgumentError(f"layout must be 'sdpa' or 'flash', got {layout!r}")
    shared = {"window_size", "softcap", "alibi_slopes", "sinks", "cu_seqlens_q", "cu_seqlens_k",
              "max_seqlen_q", "max_seqlen_k", "dropout_p", "dropout_mask", "return_lse"}
    unknown = sorted(set(kwargs) - names[layout] - shared)
    if unknown:
        raise InvalidArgumentError(f"{unknown[0]!r} is not a keyword of layout {layout!r}; it "
                                   f"takes {', '.join(sorted(names[layout] | shared))}")
    dtype = check_dtype(getattr(query, "dtype", np.float64))
    packed = kwargs.get("cu_seqlens_q") is not None
    dims = 3 if packed and layout == "flash" else 4
    inputs = []
    for name, given in (("query", query), ("key", key), ("value", value)):
        array = _numpy(given, name)
        if array.ndim != dims:
            raise InvalidArgumentError(f"{name} must have {dims} dims in layout {layout!r}"
                                       f"{' (packed)' if packed else ''}, got shape "
                                       f"{array.shape}")
        inputs.append(_from_layout(array, layout, packed))

    def optional(name: str, kind: type = np.float64) -> np.ndarray | None:
        given = kwargs.get(name)
        if given is None:
            return None
        if type(given).__module__.startswith("torch"):
            given = given.detach().cpu().numpy()
        return np.asarray(given, kind)

    mask = kwargs.get("attn_mask")
    causal: Causal | None = None
    if mask is not None and type(mask).__name__ == "CausalBias":   # torch's causal_lower_right
        causal = "bottom_right" if mask.variant.name == "LOWER_RIGHT" else "top_left"
        mask = None
    elif kwargs.get("is_causal") or kwargs.get("causal"):
        causal = "bottom_right" if layout == "flash" or packed or \
            kwargs.get("causal_alignment") == "bottom_right" else "top_left"
    if mask is not None:
        given = optional("attn_mask", None)                # type: ignore[arg-type]
        assert given is not None
        mask = given.astype(bool if given.dtype == bool else np.float64)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    window = kwargs.get("window_size")
    if window is not None and tuple(window) == (-1, -1):
        window = None

    starts = (optional("cu_seqlens_q", np.int64), optional("cu_seqlens_k", np.int64))
    dropout_mask = optional("dropout_mask", bool)
    return Case(inputs[0], inputs[1], inputs[2], dtype,
                scale=kwargs.get("softmax_scale" if layout == "flash" else "scale"),
                causal=causal, mask=mask,
                window=None if window is None else (int(window[0]), int(window[1])),
                softcap=float(kwargs.get("softcap") or 0.0), alibi=optional("alibi_slopes"),
                sinks=optional("sinks"),
                cu_seqlens=None if starts[0] is None else starts,          # type: ignore[arg-type]
                dropout_p=float(kwargs.get("dropout_p", 0.0)) if dropout_mask is not None
                else 0.0, dropout_mask=dropout_mask, lse=bool(kwargs.get("return_lse")))


def reproducer(case: Case, layout: str, kind: Kind, fn_name: str | None,
               left_out: frozenset[str] = frozenset()) -> str:
    """Python a user pastes to see the failure: the case's arrays written out exactly,
    the call (without the keywords ``left_out``: :func:`unstated`), and the one-line
    assertion (with them)."""
    torch_fn = kind == "torch"
    lines = ["import numpy as np", "import routing_sim as rs"]
    if torch_fn:
        lines.append("import torch")
    module, _, name = (fn_name or "").rpartition(":") if fn_name and ":" in fn_name else \
        ("", "", "")
    if module.endswith(".py"):
        lines.append(f"fn = rs.testing.load_function({fn_name!r})")
    elif module:
        lines.append(f"from {module} import {name} as fn")
    else:
        lines.append("# fn: the attention function under test")
    packed = case.cu_seqlens is not None
    for short, array in (("q", case.query), ("k", case.key), ("v", case.value)):
        lines.append(f"{short} = {_literal(_to_layout(array, layout, packed), kind, case.dtype)}")
    kwargs = keywords(case, layout)
    if kwargs.get("causal_alignment") and torch_fn:
        lines.append("from torch.nn.attention.bias import causal_lower_right")
        del kwargs["causal_alignment"], kwargs["is_causal"]
        kwargs["attn_mask"] = _Code(f"causal_lower_right({case.query.shape[2]}, "
                                    f"{case.key.shape[2]})")
    items: list[str] = []
    stated: list[str] = []
    for key, given in kwargs.items():
        if isinstance(given, np.ndarray):
            dtype = "float32" if key == "alibi_slopes" else case.dtype
            given = _Code(_literal(given, kind, dtype))
        (stated if key in left_out else items).append(f"{key}={given!r}")
    lines.append(f"kwargs = dict({', '.join(items)})")
    extra = "".join(f"{item}, " for item in [f"layout={layout!r}", *stated])
    if case.d_output is not None and torch_fn:
        upstream = _literal(_to_layout(case.d_output, layout, packed), kind, case.dtype)
        sinks = case.sinks is not None
        lines += ["q, k, v = (x.requires_grad_() for x in (q, k, v))",
                  *(['kwargs["sinks"].requires_grad_()'] if sinks else []),
                  "actual = fn(q, k, v, **kwargs)",
                  f"d_out = {upstream}",
                  "(actual[0] if isinstance(actual, tuple) else actual).backward(d_out)"]
        sink_grad = ', kwargs["sinks"].grad' if sinks else ""
        extra += f"d_output=d_out, gradients=(q.grad, k.grad, v.grad{sink_grad}), "
    else:
        lines.append("actual = fn(q, k, v, **kwargs)")
    lines.append(f"rs.testing.assert_attention_close(actual, q, k, v, {extra}**kwargs)")
    return "\n".join(lines)


class _Code(str):
    """Text that is written into the reproducer as it is (its repr is itself)."""

    def __repr__(self) -> str:
        return str(self)


def _literal(array: np.ndarray, kind: Kind, dtype: str) -> str:
    """An array as Python that rebuilds it exactly (float reprs round-trip)."""
    def number(x: Any) -> str:
        if isinstance(x, (bool, np.bool_)):
            return str(bool(x))
        if isinstance(x, (int, np.integer)):
            return str(int(x))
        x = float(x)
        return repr(x) if np.isfinite(x) else ("np.inf" if x > 0 else "-np.inf")

    values = f"np.array([{', '.join(number(x) for x in array.ravel())}])"
    shaped = f"{values}.reshape{tuple(array.shape)}"
    if array.dtype.kind == "f" and dtype != "float64":
        if kind == "numpy":
            return f"{shaped}.astype(np.{dtype})"
        return f"torch.from_numpy({shaped}).to(torch.{dtype})"
    if kind == "torch":
        return f"torch.from_numpy({shaped})"
    if array.dtype.kind in "iu":
        return f"{shaped}.astype(np.int32)"
    return shaped

