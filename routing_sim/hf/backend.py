"""routing_sim as a transformers attention backend: every attention call runs as messages.

(A one-query call that nobody records, asks weights of or differentiates takes the lean
step of :mod:`routing_sim.hf.lean`: the same bits, without building a Run.)

``register(name, **options)`` puts two functions into transformers' registries under
``name``: the attention function (``AttentionInterface``) and the mask function
(``AttentionMaskInterface``, transformers' own ``sdpa_mask``). The mask function matters:
without one, transformers hands a custom backend ``attention_mask=None`` even when there
is padding or a sliding window. With ``sdpa_mask`` the backend receives exactly the masks
PyTorch SDPA receives, and reads them the way SDPA does:

- a bool mask ``(B, 1, L, S)``, True = route allowed, is ``attn_mask``;
- a float mask is added to the scores (``-inf`` blocks a route);
- ``None`` means "infer causality as SDPA does": causal (top-left) when the query has
  more than one token and the module is causal, otherwise every key; with a KV cache and
  a one-token query this is the bottom-right alignment (the new token sees every key);
- ``position_bias`` (T5) is an additive per-head bias on the allowed routes;
- ``softcap`` (Gemma-2) is ``score_mod=rs.mods.softcap(cap)``: ``cap · tanh(s / cap)`` on
  the scaled score ``s`` before the mask is added, with its derivative for training;
- ``s_aux`` (gpt-oss) is ``sinks``: one logit per head in every row's softmax
  denominator, a route that takes a share of the budget and pulls no value; its gradient
  is ``Gradients.sinks``;
- ``indices`` (DeepSeek sparse attention's indexer: the keys ``(B, L, k)`` each query
  selected) removes every route to a key its query did not select, as the family's own
  eager path does with its mask;
- ``scaling``, grouped-query heads (``module.num_key_value_groups``: ``enable_gqa``, each
  key/value head serving its group of query heads) and, in training, ``dropout`` (routing_sim's
  dropout: routes dropped out after the softmax, the kept ones scaled by ``1 / (1 - p)``, the draw
  seeded from torch's generator) carry over.

What it cannot do exactly it refuses with :class:`~routing_sim.InvalidArgumentError`:
soft-capping in exact mode (``tanh`` is not correctly rounded), a sliding window that
would bind while no mask arrived, flex-attention block masks, dtypes other than
float32/float64, and any other argument it does not know (naming it and the model family).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask
from transformers.utils import output_capturing

from ..errors import DTypeError, InvalidArgumentError
from ..inputs import mods
from ..reference.matrix import attention
from ..simulation import simulate
from . import admit, record
from .autograd import simulated_attention
from .lean import lean_options, lean_step

__all__ = ["HF_ARGUMENTS", "register", "registered_options"]

# simulate() arguments the model supplies on every call: an option may not set them.
HF_ARGUMENTS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa", "graph",
                "causal_alignment", "dropout_mask", "seed", "alibi_slopes", "rope", "sinks")
# Keywords transformers passes that do not change what attention computes: positions are
# already in q and k, the masks already carry packing, the token ids (GLM-5-Next passes
# them down every layer) are already embedded, and the rest is bookkeeping.
_BOOKKEEPING = frozenset({
    "position_ids", "use_cache", "cache_position", "output_attentions",
    "output_hidden_states", "output_router_logits", "return_dict", "num_items_in_batch",
    "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx",
    "encoder_hidden_states", "past_key_values", "cache", "token_type_ids", "input_ids"})
# Keywords only flash-attention kernels read, which cannot change what attention computes:
# ModernBERT's ``deterministic`` picks flash-attention's deterministic backward kernel.
_KERNEL_ONLY = frozenset({"deterministic"})
_KNOWN = _BOOKKEEPING | _KERNEL_ONLY
_DTYPES = (torch.float32, torch.float64)
_ATTENTION_KEYWORDS = frozenset(inspect.signature(attention).parameters)
_OPTIONS: dict[str, dict[str, Any]] = {}
_LEAN: dict[str, bool] = {}            # whether a name's options allow the lean decoding step


def register(name: str = "routing_sim", **options: Any) -> str:
    """Make ``attn_implementation=name`` run every attention call as ``simulate``'s messages
    (an unobserved one-query call takes the lean step: the same bits, no Run).

    Parameters
    ----------
    name : str
        The name to register under (registering again replaces the options).
    **options
        Keyword options of :func:`~routing_sim.simulate`: ``network``, ``numerics``,
        ``softmax``, ``routing``, ``top_k``, ``trace`` (``"summary"`` unless given),
        ``delivery``, ``empty_rows``. The model supplies the rest (masks, causality,
        scale, GQA, dropout), so those are refused here.

    Returns
    -------
    str
        ``name``, to pass as ``attn_implementation``.

    Raises
    ------
    InvalidArgumentError
        An option ``simulate`` does not take, one the model supplies, or a bad value.

    Examples
    --------
    >>> import torch, routing_sim as rs
    >>> from routing_sim.hf.tiny import tiny_model
    >>> name = rs.hf.register("routing_sim_doctest", numerics="exact")
    >>> model = tiny_model("llama", layers=1, attn_implementation=name)
    >>> reference = tiny_model("llama", layers=1)              # same seed, same weights
    >>> ids = torch.tensor([[5, 17, 42, 8]])
    >>> with torch.no_grad():
    ...     ours, theirs = model(ids).logits, reference(ids).logits
    >>> bool(torch.allclose(ours, theirs, rtol=1e-12, atol=0))
    True
    """
    if not isinstance(name, str) or not name or name in ("sdpa", "eager") or "|" in name:
        raise InvalidArgumentError(f"name must be a new attention implementation name, got "
                                   f"{name!r}")
    taken = set(options) & set(HF_ARGUMENTS)
    if taken:
        raise InvalidArgumentError(f"the model supplies {sorted(taken)} on every call; "
                                   "register() takes only simulate's other options")
    known = set(inspect.signature(simulate).parameters) - {"query", "key", "value"}
    unknown = set(options) - known
    if unknown:
        raise InvalidArgumentError(f"simulate has no option {sorted(unknown)}; options are "
                                   f"{sorted(known - set(HF_ARGUMENTS))}")
    options = {"trace": "summary", **options}
    probe = np.zeros((1, 1, 1))                                        # (G, L, E)
    simulate(probe, probe, probe, **options)                           # bad values fail here
    _OPTIONS[name] = options
    _LEAN[name] = lean_options(options)
    admit.install(_OPTIONS)
    AttentionInterface.register(name, _attention_function(name))
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def registered_options(name: str) -> dict[str, Any]:
    """The ``simulate`` options registered under ``name`` (a copy)."""
    if name not in _OPTIONS:
        raise InvalidArgumentError(f"no routing_sim backend is registered as {name!r}; "
                                   f"registered: {sorted(_OPTIONS)}")
    return dict(_OPTIONS[name])


def _attention_function(name: str):
    """The function transformers calls in place of its attention, for ``name``."""

    def routing_sim_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, is_causal: bool | None = None,
                              position_bias=None, sliding_window: int | None = None,
                              softcap: float | None = None, s_aux=None, indices=None,
                              **kwargs):
        _refuse_unknown(module, kwargs)
        _check_tensors(query, key, value)
        n_queries, n_keys = query.shape[-2], key.shape[-2]
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            raise InvalidArgumentError(
                f"attention_mask must be a tensor (from sdpa_mask), got "
                f"{type(attention_mask).__name__}; flex-attention block masks are not supported")
        if attention_mask is None and sliding_window is not None and n_keys > sliding_window:
            raise InvalidArgumentError(
                f"sliding_window={sliding_window} binds for {n_keys} keys but no mask arrived; "
                "register the backend with routing_sim.hf.register (it registers the mask "
                "function too)")
        causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        causal = bool(n_queries > 1 and attention_mask is None and causal)
        if indices is not None:
            attention_mask = _selected(attention_mask, indices, causal, n_keys)
            causal = False                                  # the mask now holds it
        bias = _additive_bias(attention_mask, position_bias, causal, n_queries, n_keys)
        # Each key/value head serves `num_key_value_groups` query heads: simulate repeats
        # them (the routes and bits of HF's repeat_kv) and sums their gradients back.
        gqa = getattr(module, "num_key_value_groups", 1) > 1
        options = dict(_OPTIONS[name])
        if softcap is not None:
            options["score_mod"] = _softcap(softcap, options)
        recorder = record.active()
        mask = bias if bias is not None else attention_mask
        if n_queries == 1 and _LEAN[name] and recorder is None and not dropout \
                and not _weights_requested(kwargs):
            # A decoding step nobody observes: the same bits without building a Run.
            output = lean_step(query, key, value, mask, scaling, gqa, s_aux,
                               options.get("score_mod"))
            if output is not None:
                return output, None
        if recorder is not None:
            options["trace"] = recorder.trace
            options.update(recorder.labels(module, n_queries, n_keys))
        seed = 0
        if dropout:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        arguments = {"is_causal": causal and bias is None, "scale": scaling,
                     "dropout_p": float(dropout), "seed": seed, "enable_gqa": gqa, **options}
        output, run = simulated_attention(query, key, value, mask, arguments, s_aux)
        if recorder is not None:
            inputs = _attention_inputs(query, key, value, mask, arguments)
            if s_aux is not None:
                inputs["sinks"] = s_aux.detach().cpu().numpy().copy()
            recorder.add(module, run, inputs)
        weights = None
        if _weights_requested(kwargs):
            weights = torch.from_numpy(run.weights).to(query.device)        # (B, H, L, S)
        return output.transpose(1, 2).contiguous(), weights

    return routing_sim_attention


def _softcap(cap, options: dict) -> mods.softcap:
    """Gemma-2's logit soft-capping, ``cap · tanh(score / cap)`` on the scaled score before
    the mask, as a score mod that carries its derivative for the backward pass."""
    if options.get("score_mod") is not None:
        raise InvalidArgumentError(
            f"the model soft-caps its scores (softcap={cap}) and the backend was registered "
            f"with score_mod={options['score_mod']!r}; register it without score_mod")
    if options.get("numerics") == "exact":
        raise InvalidArgumentError(
            f"softcap={cap}: soft-capping runs tanh in float arithmetic, so it cannot be "
            "combined with numerics='exact'; register the backend with numerics='float'")
    return mods.softcap(float(cap))


def _attention_inputs(query, key, value, mask, arguments: dict) -> dict[str, Any]:
    """Copies of what this call computed on, as keywords of :func:`~routing_sim.attention`."""
    tensors = {"query": query, "key": key, "value": value, "attn_mask": mask}
    inputs = {name: None if tensor is None else tensor.detach().cpu().numpy().copy()
              for name, tensor in tensors.items()}
    return {**inputs, **{name: value for name, value in arguments.items()
                         if name in _ATTENTION_KEYWORDS}}


def _weights_requested(kwargs: dict) -> bool:
    """Whether the model returns attention weights (``output_attentions=True``).

    Some families (OPT, GPT-BigCode, StableLM) do not pass ``output_attentions`` down to
    the attention function: transformers collects whatever the function returns, which
    eager always fills. So the output collector transformers sets up for the call is asked
    too; without one, the dense routing tables are not built (they cost time).
    """
    if kwargs.get("output_attentions"):
        return True
    collecting = output_capturing._active_collector.get()
    return bool(collecting) and bool({"attentions", "cross_attentions"} & set(collecting))


def _refuse_unknown(module, kwargs: dict) -> None:
    for argument, value in kwargs.items():
        if argument not in _KNOWN and value is not None:
            family = getattr(getattr(module, "config", None), "model_type", None)
            of_family = f" of model family {family!r}" if family else ""
            shown = (f"a {type(value).__name__} of shape {tuple(value.shape)}"
                     if isinstance(value, torch.Tensor) else repr(value))
            raise InvalidArgumentError(
                f"the routing_sim backend does not know the attention argument "
                f"{argument}{of_family} ({shown}); refusing rather than ignoring something "
                "that may change the result")


def _check_tensors(query, key, value) -> None:
    for argument, tensor in (("query", query), ("key", key), ("value", value)):
        if tensor.dtype not in _DTYPES:
            raise DTypeError(f"{argument} is {tensor.dtype}; the routing_sim backend computes "
                             "in float32 or float64 (model.to(torch.float64))")


def _selected(attention_mask, indices, causal: bool, n_keys: int):
    """The mask with only the routes to the keys each query's indexer selected.

    ``indices`` ``(B, L, k)`` are DeepSeek sparse attention's top-k keys per query. A float
    mask blocks the others with ``-inf`` (the family's eager path writes the dtype's
    minimum, which differs only on a row with no route left, whose query gets zeros here).
    """
    batch_size, n_queries = indices.shape[:2]
    selected = torch.zeros(batch_size, n_queries, n_keys, dtype=torch.bool,
                           device=indices.device).scatter(-1, indices.long(), True)
    selected = selected.unsqueeze(1)                                   # (B, 1, L, S)
    if attention_mask is None:
        if causal:
            selected = selected & torch.ones(n_queries, n_keys, dtype=torch.bool).tril()
        return selected
    if attention_mask.dtype == torch.bool:
        return attention_mask & selected                               # (B, 1, L, S)
    return attention_mask.masked_fill(~selected, -torch.inf)


def _additive_bias(attention_mask, position_bias, causal: bool, n_queries: int,
                   n_keys: int):
    """One float mask holding T5's ``position_bias`` on the allowed routes (-inf elsewhere).

    Built with torch operations so autograd carries the score gradient back to
    ``position_bias``. None when there is no position bias (the mask goes as it came).
    """
    if position_bias is None:
        return None
    blocked = torch.tensor(-torch.inf, dtype=position_bias.dtype)
    if attention_mask is None:
        if not causal:
            return position_bias
        allowed = torch.ones(n_queries, n_keys, dtype=torch.bool).tril()  # (L, S) top-left
        return torch.where(allowed, position_bias, blocked)
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, position_bias, blocked)
    return position_bias + attention_mask
