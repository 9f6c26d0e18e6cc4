"""Every model family of the installed transformers, run through the backend: exact or refused.

:func:`sweep` builds one tiny random-init model per text family (a config from the
family's own defaults, its sizes shrunk: hidden size 64, 4 heads of 16, 2 key/value heads,
2 layers, small vocabulary and feed-forward, few experts), in float64, with the routing_sim
backend. A family whose attention does not go through the backend is refused when built
(:class:`~routing_sim.hf.admit.BypassError`) or first called; the error names it. Every
other family must be exact: the same model switched to PyTorch SDPA (or, where the family
has no SDPA path, to :func:`float64_attention`, an independent float64 reference) gives the
same output within 1e-12 of its largest magnitude on a padded batch (left padding for
decoders, right padding for encoders), the same greedy tokens with a KV cache, and every
parameter gradient within 1e-10.

Families that need other inputs than token ids (vision, audio, multimodal, time series)
are listed as not swept, with the input they need.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..errors import InvalidArgumentError, RoutingSimError
from .backend import register
from .record import record

__all__ = ["FLOAT64_REFERENCE", "STATUSES", "FamilyResult", "check_family",
           "family_table", "float64_attention", "sweep", "text_families", "tiny_config"]

TOLERANCE = 1e-12
GRADIENT_TOLERANCE = 1e-10
FLOAT64_REFERENCE = "routing_sim_float64_reference"
STATUSES = ("exact", "refused", "not swept", "failed")
# Forward arguments that mean the family needs more than token ids.
NON_TEXT_INPUTS = frozenset({
    "pixel_values", "pixel_values_videos", "input_features", "input_values", "audio_values",
    "input_audio", "input_points", "image_embeds", "flattened_patches", "past_values",
    "spectrogram", "bbox", "visual_embeds", "audio_features", "input_speech"})
# Canonical config sizes (transformers' attribute_map gives each family's own name).
SIZES = {"hidden_size": 64, "num_attention_heads": 4, "encoder_attention_heads": 4,
         "decoder_attention_heads": 4, "head_dim": 16, "num_key_value_heads": 2,
         "num_hidden_layers": 2, "encoder_layers": 2, "decoder_layers": 2,
         "num_decoder_layers": 2, "num_layers": 2, "intermediate_size": 128,
         "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "ffn_dim": 128, "d_ff": 128,
         "n_inner": 128, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
         "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4,
         "num_experts_per_tok": 2, "n_shared_experts": 1, "kv_lora_rank": 16,
         "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16}
_AT_MOST = ("num_key_value_heads", "num_experts_per_tok", "n_shared_experts")  # never grow
VOCAB = 128
PARAMETERS = 5_000_000          # the most a tiny model may have (most have under 200,000)
LENGTH = 7
PADDING = 3


@dataclass(frozen=True)
class FamilyResult:
    """One family's verdict: ``status`` is one of :data:`STATUSES`, ``detail`` says why."""

    family: str
    status: str
    detail: str


@functools.cache
def text_families() -> dict[str, str | None]:
    """Every family of the installed transformers: ``None`` for a text family (its base
    model takes ``input_ids`` and nothing of another modality), else why it is not one."""
    families: dict[str, str | None] = {}
    for family, names in modeling_auto.MODEL_MAPPING_NAMES.items():
        base = names[0] if isinstance(names, tuple) else names
        try:
            parameters = inspect.signature(getattr(transformers, base).forward).parameters
        except (AttributeError, ImportError) as error:
            families[family] = f"its model class {base} cannot be imported ({error})"
            continue
        other = sorted(NON_TEXT_INPUTS & set(parameters))
        if "input_ids" not in parameters:
            families[family] = f"{base} takes no input_ids"
        elif other:
            families[family] = f"{base} needs {', '.join(other)}"
        else:
            families[family] = None
    return families


def tiny_config(family: str, shrink_depth: bool = True) -> Any:
    """The family's default config with its sizes shrunk to :data:`SIZES`.

    ``shrink_depth=False`` keeps the family's number of layers: some write a per-layer
    pattern for their default depth (GPT-Neo's ``attention_types``, the attention layers of
    a hybrid Mamba model), which two layers would cut. It is also what happens when the
    config does not validate with two.

    Examples
    --------
    >>> config = tiny_config("gpt2")
    >>> config.n_embd, config.n_head, config.n_layer, config.vocab_size
    (64, 4, 2, 128)
    """
    keep = frozenset() if shrink_depth else _LAYERS
    try:
        return _shrunk(CONFIG_MAPPING[family], keep)
    except (ValueError, TypeError, StrictDataclassClassValidationError):
        return _shrunk(CONFIG_MAPPING[family], _LAYERS)


_LAYERS = frozenset(name for name in SIZES if name.endswith("layers"))


def _shrunk(config_class: type, keep: frozenset[str]) -> Any:
    default = config_class()
    renamed = getattr(config_class, "attribute_map", {})
    settable = ({field.name for field in dataclasses.fields(config_class)}
                if dataclasses.is_dataclass(config_class)
                else set(inspect.signature(config_class.__init__).parameters))
    fields: dict[str, Any] = {}
    for name, size in SIZES.items():
        value = getattr(default, name, None)
        field = renamed.get(name, name)
        if name in keep or field not in settable:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            fields[field] = min(value, size) if name in _AT_MOST else size
    if isinstance(getattr(default, "vocab_size", None), int):
        fields[renamed.get("vocab_size", "vocab_size")] = VOCAB
        # Special tokens keep their ids if the small vocabulary has them, else take its last.
        for name in dir(default):
            if name.endswith("_token_id") and name in settable:
                token = getattr(default, name, None)
                if isinstance(token, int) and not isinstance(token, bool) and token >= VOCAB:
                    fields[name] = VOCAB - 1
    for key, sub_class in getattr(default, "sub_configs", {}).items():
        if getattr(default, key, None) is not None and isinstance(sub_class, type):
            fields[key] = _shrunk(sub_class, keep).to_dict()
    return config_class(**fields)


def float64_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None,
                      softcap: float | None = None, position_bias: torch.Tensor | None = None,
                      s_aux: torch.Tensor | None = None, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """An independent float64 reference for families without an SDPA path.

    Plain torch, as transformers' eager attention but in float64 throughout (HF's runs its
    softmax in float32): scores scaled, soft-capped, plus T5's position bias, masked
    (a ``None`` mask is causal when the module is and the query has more than one token),
    softmax over the routes and the attention sinks ``s_aux`` (one logit per head that
    takes a share and pulls no value), then the values. A query row with no allowed key
    gives zeros, the convention of the backend and of SDPA's math path.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = (x.repeat_interleave(groups, dim=1) for x in (key, value))
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = query @ key.transpose(-1, -2) * scaling                  # (B, H, L, S)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is None:
        if query.shape[-2] > 1 and getattr(module, "is_causal", True):
            allowed = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
            scores = scores.masked_fill(~allowed, -torch.inf)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, -torch.inf)
    else:
        scores = scores + attention_mask
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)          # (B, H, L, 1)
    scores = scores.masked_fill(empty, 0.0)
    if s_aux is not None:
        sinks = s_aux.reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)  # (B, H, L, 1)
        weights = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]
    else:
        weights = torch.softmax(scores, dim=-1)
    weights = weights.masked_fill(empty, 0.0)                          # (B, H, L, S)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def check_family(family: str, name: str = "routing_sim") -> FamilyResult:
    """Build ``family``'s tiny model with the backend ``name`` and hold it to the reference."""
    return sweep([family], name)[0]


def sweep(families: Iterable[str] | None = None, name: str = "routing_sim"
          ) -> list[FamilyResult]:
    """:func:`check_family` for each of ``families`` (every family by default), in order.

    Torch runs on one thread meanwhile (the models are tiny; threads only wait on each
    other), and is given back its thread count after.
    """
    register(name)
    kinds = text_families()
    chosen = list(kinds) if families is None else list(families)
    unknown = [family for family in chosen if family not in kinds]
    if unknown:
        raise InvalidArgumentError(f"families must be model types of transformers "
                                   f"{transformers.__version__}, got {unknown}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)         # matrices this small only wait on each other's threads
    try:
        return [FamilyResult(family, "not swept", kinds[family]) if kinds.get(family)
                else _check(family, name) for family in chosen]
    finally:
        torch.set_num_threads(threads)


def family_table(results: Iterable[FamilyResult]) -> str:
    """The results as a markdown table, one row per family, with the first clause of each
    detail (what the docs print; ``routing-sim hf --families`` prints it too).

    Examples
    --------
    >>> print(family_table([FamilyResult("bloom", "refused", "model family 'bloom' computes "
    ...                                  "attention itself in BloomAttention (a softmax)")]))
    | family | status | why |
    | --- | --- | --- |
    | bloom | refused | computes attention itself in BloomAttention |
    """
    rows = ["| family | status | why |", "| --- | --- | --- |"]
    for result in results:
        note = re.sub(r"^model family '[^']*' ", "", result.detail)
        note = re.split(r" \(| \d+ calls|; |, so ", note)[0].replace("|", "/")
        rows.append(f"| {result.family} | {result.status} | {note} |")
    return "\n".join(rows)


def _kind(family: str) -> tuple[str, Any]:
    """What the family is swept as: a decoder (a causal LM), seq2seq, or an encoder (its
    base model; BERT-like families, which also have a causal head, are encoders)."""
    if family in modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "seq2seq", transformers.AutoModelForSeq2SeqLM
    if family in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and \
            family not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "decoder", transformers.AutoModelForCausalLM
    return "encoder", transformers.AutoModel


def _check(family: str, name: str) -> FamilyResult:
    kind, auto = _kind(family)
    _register_reference()
    first: tuple | None = None
    for shrink_depth in (True, False):     # two layers of a hybrid model may hold no attention
        try:
            first = _first_run(family, kind, auto, name, shrink_depth)
        except RoutingSimError as error:
            if f"'{family}'" in str(error):
                return FamilyResult(family, "refused", str(error))
            failure: Exception = error
        except Exception as error:                                     # noqa: BLE001
            failure = error
        else:
            if first[3] > 0:
                break
            failure = RuntimeError("the model never called the backend")
    else:
        return _failure(family, kind, auto, failure)
    model, inputs, ours, calls = first
    try:
        reference = _reference(model, inputs, name)
        with torch.no_grad():
            theirs = _output(model(**inputs))
        gap = _gap(ours, theirs)
        if not gap <= TOLERANCE:
            return FamilyResult(family, "failed", f"output differs from {reference} by {gap:.3g}")
        checks = [f"output within {TOLERANCE:g} of {reference} ({calls} calls)"]
        if kind != "encoder":
            checks.append(_generation(model, inputs, name, reference))
        checks.append(_gradients(model, inputs, name, reference))
    except Exception as error:                                         # noqa: BLE001
        return FamilyResult(family, "failed", f"{type(error).__name__}: {error}")
    failed = [check for check in checks if check.startswith("FAILED")]
    return FamilyResult(family, "failed" if failed else "exact", "; ".join(failed or checks))


class _TooLarge(Exception):
    """The tiny config is still too large to sweep."""


def _failure(family: str, kind: str, auto: Any, failure: Exception) -> FamilyResult:
    """Failed, unless the tiny model does not run on transformers' eager attention either:
    then its generic tiny config is what fails, and the family is not swept."""
    if isinstance(failure, _TooLarge):
        return FamilyResult(family, "not swept", f"its tiny config has {failure}")
    try:
        _first_run(family, kind, auto, "eager", shrink_depth=False)
    except Exception as error:                                         # noqa: BLE001
        return FamilyResult(family, "not swept", f"its tiny config does not run on eager "
                                                 f"attention either ({type(error).__name__}: "
                                                 f"{_first_line(error)})")
    return FamilyResult(family, "failed", f"{type(failure).__name__}: {failure}")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:160]


def _first_run(family: str, kind: str, auto: Any, name: str, shrink_depth: bool
               ) -> tuple[Any, dict, torch.Tensor, int]:
    """The tiny model on implementation ``name``, its inputs, its output and how many
    attention calls reached the routing_sim backend."""
    config = tiny_config(family, shrink_depth)
    with torch.device("meta"):                   # sizes the generic shrink did not reach
        size = sum(p.numel() for p in auto.from_config(copy.deepcopy(config)).parameters())
    if size > PARAMETERS:
        raise _TooLarge(f"{size:,} parameters after shrinking, over the sweep's "
                        f"{PARAMETERS:,}")
    torch.manual_seed(0)
    # Its own copy of the config: from_config writes the implementation into it. Experts
    # run as plain loops: the grouped matrix product has no float64 kernel.
    model = auto.from_config(copy.deepcopy(config), attn_implementation=name,
                             experts_implementation="eager", dtype=torch.float64).eval()
    inputs = _batch(kind, model.config)
    with torch.no_grad(), record(limit=0, trace="summary") as recorder:
        output = _output(model(**inputs))
    return model, inputs, output, recorder.skipped


def _register_reference() -> None:
    AttentionInterface.register(FLOAT64_REFERENCE, float64_attention)
    AttentionMaskInterface.register(FLOAT64_REFERENCE, sdpa_mask)


def _reference(model: Any, inputs: dict, name: str) -> str:
    """Switch ``model`` to SDPA if the family has an SDPA path for it, else to the float64
    reference; return which."""
    if model._supports_sdpa:
        model.set_attn_implementation("sdpa")
        try:
            with torch.no_grad():
                model(**inputs)
            return "sdpa"
        except ValueError:                   # e.g. soft-capping, which SDPA cannot do
            pass
    model.set_attn_implementation(FLOAT64_REFERENCE)
    return "the float64 reference"


def _batch(kind: str, config: Any) -> dict[str, torch.Tensor]:
    """Two rows of token ids, the second padded: on the left for a decoder, else the right."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB - 1, (2, LENGTH), generator=generator)
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    if kind == "decoder":
        mask[1, :PADDING] = 0
    else:
        mask[1, -PADDING:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if kind == "seq2seq" or getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids[:, : LENGTH - PADDING]
    return inputs


def _output(result: Any) -> torch.Tensor:
    for field in ("logits", "last_hidden_state", "prediction_logits"):
        if getattr(result, field, None) is not None:
            return getattr(result, field)
    return result[0]


def _gap(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs| (inf if either is not finite)."""
    if not (torch.isfinite(ours).all() and torch.isfinite(theirs).all()):
        return float("inf")
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _generation(model: Any, inputs: dict, name: str, reference: str) -> str:
    prompt = {key: value for key, value in inputs.items() if key != "decoder_input_ids"}
    settings = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0,
                "eos_token_id": None}
    if getattr(model.config, "is_encoder_decoder", False) and \
            model.generation_config.decoder_start_token_id is None:
        settings["decoder_start_token_id"] = 0
    with torch.no_grad():
        expected = model.generate(**prompt, **settings)
        model.set_attn_implementation(name)
        try:
            produced = model.generate(**prompt, **settings)
        finally:
            model.set_attn_implementation(_implementation(reference))
    if not torch.equal(produced, expected):
        return "FAILED: greedy generation differs"
    return "greedy generation identical"


def _gradients(model: Any, inputs: dict, name: str, reference: str) -> str:
    """Every parameter gradient within 1e-10 of the reference's (relative to its own largest
    magnitude, or the model's largest where softmax makes it zero up to rounding)."""
    grads = []
    for implementation in (_implementation(reference), name):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        output = _output(model(**inputs))
        direction = torch.randn(output.shape, dtype=output.dtype,
                                generator=torch.Generator().manual_seed(7))
        (output * direction).sum().backward()
        grads.append({key: p.grad.clone() for key, p in model.named_parameters()
                      if p.grad is not None})
    theirs, ours = grads
    if ours.keys() != theirs.keys() or not theirs:
        return "FAILED: different parameters received gradients"
    largest = max(float(g.abs().max()) for g in theirs.values())
    worst = 0.0
    for key, expected in theirs.items():
        # Key biases shift a whole row of scores, which softmax ignores: their gradient is
        # zero up to rounding, and is held to the model's largest gradient instead.
        scale = float(expected.abs().max())
        if scale < TOLERANCE * largest:
            scale = largest
        worst = max(worst, float((ours[key] - expected).abs().max()) / scale)
    if not worst <= GRADIENT_TOLERANCE:
        return f"FAILED: a gradient differs by {worst:.3g}"
    return f"gradients within {GRADIENT_TOLERANCE:g}"


def _implementation(reference: str) -> str:
    return "sdpa" if reference == "sdpa" else FLOAT64_REFERENCE
