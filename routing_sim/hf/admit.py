"""Which models the backend accepts: checked when a model is built or its backend is set.

A transformers family either hands every attention call to the function registered in
``AttentionInterface`` (``ALL_ATTENTION_FUNCTIONS.get_interface(...)``), or some of its
attention modules compute ``softmax(Q Kᵀ) V`` themselves (BLOOM, MPT, DeBERTa-v2, Falcon,
GPT-Neo, LongT5's local encoder attention, ...). Such a model built with the routing_sim
backend would run, print logits and never route a message, or read routing_sim's boolean
mask as a float one. So :func:`install` wraps two methods of ``PreTrainedModel``, once:

- ``post_init`` (the end of every model's ``__init__``) and ``set_attn_implementation``
  refuse a model set to a registered routing_sim backend if one of its modules computes
  attention itself;
- ``_check_and_adjust_attn_implementation``, at the start of ``__init__``, refuses a family
  that picks its attention class from its own table (GPT-Neo's
  ``GPT_NEO_ATTENTION_CLASSES``), before the table lookup fails with ``KeyError``;
- ``post_init`` warns with :class:`SharedConfigWarning` when the new model's config
  already belongs to a live model built with another implementation: ``from_config``
  writes ``attn_implementation`` into the config object it is given, so the older model
  now runs the new implementation too, and a comparison would compare a backend with
  itself.

An attention module "computes attention itself" when its class (or a transformers base
class of it) is named ``*Attention*``/``*Attn*``, contains a softmax and never consults
``ALL_ATTENTION_FUNCTIONS``, or is one of the few whose softmax sits in a helper function
(MRA's). The family sweep (:mod:`routing_sim.hf.families`) holds every
family that passes this check to SDPA within 1e-12, so a miss cannot stay silent.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
import weakref
from collections.abc import Collection
from typing import Any

import torch
from transformers import PreTrainedModel

from ..errors import InvalidArgumentError

__all__ = ["BypassError", "SharedConfigWarning", "install", "self_computing_attention"]


class BypassError(InvalidArgumentError):
    """A model family whose attention does not go through the backend (it is refused)."""


class SharedConfigWarning(UserWarning):
    """A model was built on a config object that a model of another implementation holds."""


# id(config) -> [(weakref to a model built on it, the implementation it was built with)]
_BUILT: dict[int, list[tuple[weakref.ref, str | None]]] = {}
# Models already warned about: a causal LM's inner model is built (and warned about) first.
_WARNED: weakref.WeakSet = weakref.WeakSet()


def install(backends: Collection[str]) -> None:
    """Wrap ``PreTrainedModel``'s build hooks (once) to check models using ``backends``."""
    if getattr(PreTrainedModel.post_init, "_routing_sim_backends", None) is not None:
        return
    post_init = PreTrainedModel.post_init
    adjust = PreTrainedModel._check_and_adjust_attn_implementation
    set_implementation = PreTrainedModel.set_attn_implementation

    @functools.wraps(post_init)
    def checked_post_init(model: PreTrainedModel) -> None:
        post_init(model)
        implementation = model.config._attn_implementation
        if implementation in backends:
            _refuse_bypass(model, implementation)
        _warn_shared_config(model, implementation, backends)

    @functools.wraps(adjust)
    def checked_adjust(model: PreTrainedModel, attn_implementation: str | None,
                       is_init_check: bool = False, *args: Any, **kwargs: Any) -> str:
        # the rest passes through as given: HRM's override passes allow_all_kernels by
        # position
        if is_init_check and attn_implementation is not None and \
                attn_implementation in backends:
            _refuse_own_class_table(type(model), model.config, attn_implementation)
        return adjust(model, attn_implementation, is_init_check, *args, **kwargs)

    @functools.wraps(set_implementation)
    def checked_set(model: PreTrainedModel, attn_implementation: str | dict,
                    **kwargs: Any) -> None:
        # transformers only logs a warning and keeps the old implementation for a family
        # it cannot switch (BLOOM): the user would believe the model runs routing_sim.
        if isinstance(attn_implementation, str) and attn_implementation in backends:
            _refuse_bypass(model, attn_implementation)
        set_implementation(model, attn_implementation, **kwargs)

    checked_post_init._routing_sim_backends = backends                   # type: ignore[attr-defined]
    PreTrainedModel.post_init = checked_post_init                        # type: ignore[method-assign]
    PreTrainedModel._check_and_adjust_attn_implementation = checked_adjust  # type: ignore
    PreTrainedModel.set_attn_implementation = checked_set                # type: ignore


def self_computing_attention(module_class: type) -> bool:
    """Whether ``module_class`` is an attention module that computes attention itself.

    Examples
    --------
    >>> from transformers.models.bloom.modeling_bloom import BloomAttention
    >>> from transformers.models.llama.modeling_llama import LlamaAttention
    >>> self_computing_attention(BloomAttention), self_computing_attention(LlamaAttention)
    (True, False)
    """
    return _self_computing(module_class)


# Attention classes whose softmax sits in a helper function the source check cannot see:
# MRA's multi-resolution approximation (mra2_attention: exponentials of the scores less
# their row maxima, over a sum of them).
_SOFTMAX_IN_A_HELPER = frozenset({"MraSelfAttention"})


@functools.cache
def _self_computing(module_class: type) -> bool:
    name = module_class.__name__
    if name in _SOFTMAX_IN_A_HELPER and module_class.__module__.startswith("transformers."):
        return True
    if "Attention" not in name and "Attn" not in name:
        return False
    sources = []
    for base in module_class.__mro__:
        if base is torch.nn.Module:
            break
        if base.__module__.startswith("transformers."):
            try:
                sources.append(inspect.getsource(base))
            except (OSError, TypeError):
                continue
    text = "\n".join(sources)
    return "softmax" in text.lower() and "ALL_ATTENTION_FUNCTIONS" not in text


def _family(config: Any) -> str:
    return getattr(config, "model_type", "") or type(config).__name__


def _refuse_bypass(model: torch.nn.Module, implementation: str) -> None:
    """Refuse ``model`` if one of its attention modules computes attention itself."""
    bypassing = sorted({type(module).__name__ for module in model.modules()
                        if self_computing_attention(type(module))})
    if bypassing:
        raise BypassError(
            f"model family {_family(model.config)!r} computes attention itself in "
            f"{', '.join(bypassing)} (a softmax of its own, never the attention interface), "
            f"so attn_implementation={implementation!r} would not route its attention; "
            "refusing rather than running it silently without routing_sim")


def _refuse_own_class_table(model_class: type, config: Any, implementation: str) -> None:
    """Refuse a family that looks its attention class up in its own table (GPT-Neo)."""
    module = sys.modules.get(model_class.__module__)
    tables = {name: table for name, table in vars(module).items()
              if name.endswith("ATTENTION_CLASSES") and isinstance(table, dict)} if module else {}
    for name, table in tables.items():
        if implementation not in table:
            raise BypassError(
                f"model family {_family(config)!r} picks its attention class from its own "
                f"table {name} ({', '.join(map(repr, table))}), whose classes compute "
                f"attention themselves, so attn_implementation={implementation!r} cannot "
                "route its attention; refusing")


def _warn_shared_config(model: PreTrainedModel, implementation: str | None,
                        backends: Collection[str]) -> None:
    """Warn if a live model built with another implementation holds ``model.config``."""
    config = model.config
    built = [(ref, used) for ref, used in _BUILT.get(id(config), []) if ref() is not None]
    others = {used for ref, used in built if used != implementation and ref() is not model}
    inner_warned = any(module in _WARNED for module in model.modules())
    if others and (implementation in backends or others & set(backends)) and not inner_warned:
        _WARNED.add(model)
        warnings.warn(SharedConfigWarning(
            f"a {_family(config)} model was built on a config object that a model built "
            f"with attn_implementation={sorted(map(str, others))[0]!r} holds; building "
            f"switched that config to {implementation!r}, so both models now run it and a "
            "comparison would compare it with itself: build each model from its own copy "
            "(copy.deepcopy(config))"), stacklevel=4)
    if id(config) not in _BUILT:
        weakref.finalize(config, _BUILT.pop, id(config), None)
    _BUILT[id(config)] = [*built, (weakref.ref(model), implementation)]
