"""Every model family of the installed transformers, run through the backend: exact or refused.

:func:`sweep` builds one tiny random-init model per text family (a config from the
family's own defaults, its sizes shrunk: hidden size 64, 4 heads of 16, 2 key/value heads
where the family groups them, 2 layers, small vocabularies, feed-forward, state and experts;
then the family's entry in ``_OVERRIDES``, where the generic shrink breaks it), in float64,
with the routing_sim backend. A family whose attention does not go through the
backend is refused when built (:class:`~routing_sim.hf.admit.BypassError`) or first called;
the error names it. Every other family must be exact: the same model switched to PyTorch
SDPA (or, where the family has no SDPA path, to :func:`float64_attention`, an independent
float64 reference) gives the same output within 1e-12 of its largest magnitude on a padded
batch (left padding for decoders, right padding for encoders), the same greedy tokens with
a KV cache, and every parameter gradient within 1e-10.

Listed as not swept, each with its reason: families that need other inputs than token ids
(vision, audio, proteins, time series; token ids that are audio codebook tokens), families
with no softmax attention, and, until an override fixes it, a family whose tiny config
does not run on transformers' eager attention either or stays over :data:`PARAMETERS`.
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
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedConfig
from transformers.masking_utils import sdpa_mask
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..errors import InvalidArgumentError, RoutingSimError
from .admit import BypassError
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
    "spectrogram", "bbox", "visual_embeds", "audio_features", "input_speech",
    "protein_input_ids"})
# Families whose token ids are audio codebook tokens (so their docs say, with the shape).
AUDIO_TOKENS = {"dia": "decoder_input_ids", "kyutai_speech_to_text": "input_ids",
                "musicgen": "input_ids", "musicgen_melody": "input_ids"}
# Canonical config sizes (transformers' attribute_map gives each family's own name).
SIZES = {"hidden_size": 64, "num_attention_heads": 4, "encoder_attention_heads": 4,
         "decoder_attention_heads": 4, "head_dim": 16, "num_key_value_heads": 2,
         "num_hidden_layers": 2, "encoder_layers": 2, "decoder_layers": 2,
         "num_decoder_layers": 2, "num_layers": 2, "intermediate_size": 128,
         "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "ffn_dim": 128, "d_ff": 128,
         "n_inner": 128, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
         "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4,
         "num_experts_per_tok": 2, "n_shared_experts": 1, "kv_lora_rank": 16,
         "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
         "n_group": 1, "topk_group": 1, "rotary_dim": 16,
         "moe_shared_expert_intermediate_size": 32, "linear_key_head_dim": 16,
         "linear_value_head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
         "mamba_d_state": 16, "ssm_state_size": 16, "mamba_n_heads": 16, "mamba_d_ssm": 128,
         "mamba_num_heads": 8, "mamba_head_dim": 16, "mamba_chunk_size": 16, "chunk_size": 16,
         "first_k_dense_replace": 1}
# Never grown: a count that must not exceed another, or a size some families tie to others.
_AT_MOST = frozenset({
    "num_key_value_heads", "num_experts_per_tok", "n_shared_experts", "n_group",
    "topk_group", "rotary_dim", "linear_key_head_dim", "linear_value_head_dim",
    "linear_num_key_heads", "linear_num_value_heads", "mamba_d_state", "ssm_state_size",
    "mamba_n_heads", "mamba_d_ssm", "mamba_num_heads", "mamba_head_dim", "mamba_chunk_size",
    "chunk_size", "first_k_dense_replace"})
# Base models swept as encoders (no causal-LM head) whose padded queries have no route
# either: GLM-5-Next's indexer selects no key for them.
_UNROUTED_PADDING = frozenset({"glm5_next_text"})
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
        base = str(names[0] if isinstance(names, tuple) else names)
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
        elif family in AUDIO_TOKENS:
            families[family] = f"{base}'s {AUDIO_TOKENS[family]} are audio codebook tokens"
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
    # Grouped key/value heads first; then as many as query heads (ESMC's config refuses
    # groups); then the family's own depth.
    attempts = [(keep, True), (keep, False), (_LAYERS, True), (_LAYERS, False)]
    for kept, grouped in attempts[:-1]:
        try:
            return _shrunk(CONFIG_MAPPING[family], kept, grouped)
        except (ValueError, TypeError, StrictDataclassClassValidationError):
            continue
    return _shrunk(CONFIG_MAPPING[family], *attempts[-1])


_LAYERS = frozenset(name for name in SIZES if name.endswith("layers"))
# Config fields the generic shrink cannot get right, by model type (a sub-config's own
# model type for its fields; a dict merges into what the shrink made of that field).
_OVERRIDES: dict[str, dict[str, Any]] = {
    # hybrids: two layers of their default pattern hold no softmax attention (or, for
    # Bamba, LFM2-MoE and Granite's, the default has none at all), so one of each kind
    "bailing_hybrid": {"layer_types": ["linear_attention", "full_attention"],
                       "mlp_layer_types": ["dense", "sparse"]},
    "bamba": {"attn_layer_indices": [1]},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"]},
    "kimi_linear": {"layer_types": ["linear_attention", "full_attention"],
                    "mlp_layer_types": ["dense", "sparse"], "linear_num_heads": 4,
                    "linear_head_dim": 16},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    # sizes the defaults leave None, which the model then divides by or builds from
    "dots1": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1},
    "esm": {"vocab_size": VOCAB, "pad_token_id": 1},
    "diffusion_gemma_text": {"num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 32},
    # indexed attention: its indexer's sizes default to None; and a hybrid, as above
    "qwen4_exp_text": {"layer_types": ["linear_attention", "indexed_attention"],
                       "indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16,
                       "indexer_budget": 4, "indexer_compress_ratio": 2},
    # its indexed (DSA) attention layers take no rotary part; and a hybrid, as above
    "glm5_next_text": {"qk_rope_head_dim": 0,
                       "layer_types": ["linear_attention", "indexed_attention"],
                       "mlp_layer_types": ["dense", "sparse"], "indexer_types": ["full", "full"],
                       "linear_num_heads": 4, "linear_head_dim": 16, "index_n_heads": 2,
                       "index_head_dim": 16, "index_topk": 4, "index_kpool": 2},
    # rotary parameters per layer type, which the multimodal sections join (the generic
    # shrink writes them at the top, for families with one set of parameters)
    "cohere_compass_text": {"rope_parameters": {"full_attention": {
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}}},
    # AutoModel maps Funnel to two classes and picks by the config's architectures
    "funnel": {"architectures": ["FunnelModel"], "block_sizes": [1, 1], "d_head": 16},
    # transformers 5.24's BltModel builds its cache from the top config, which has no depth
    "blt": {"num_hidden_layers": 2},
    "blt_local_encoder": {"hidden_size_global": 64},     # the global transformer's width
    "blt_local_decoder": {"hidden_size_global": 64},
    # Gemma-3n's last layers reuse the keys and values of earlier ones of their kind: four
    # layers, two that share; its per-layer sizes are lists as long as the depth
    "gemma3n_text": {"num_hidden_layers": 4, "num_kv_shared_layers": 2,
                     "layer_types": ["sliding_attention", "full_attention"] * 2,
                     "intermediate_size": [128] * 4,
                     "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0],
                     "hidden_size_per_layer_input": 16, "laurel_rank": 8},
    # transformers 5.24's xLSTM cache rounds the keys' width up to a multiple of 64 and its
    # layers do not: half of a hidden size of 64 (its default factor) is not one, all of it is
    "xlstm": {"qk_dim_factor": 1.0},
    # the audio encoder a text-only batch does not run, but whose weights count
    "phi4_multimodal_audio": {"num_blocks": 2, "ext_pw_out_channel": 64,
                              "depthwise_separable_out_channel": 64, "nemo_conv_channels": 64},
    # its noised canvas of 256 tokens, every one a query: 16 keep the sweep fast
    "diffusion_gemma": {"canvas_length": 16},
    # X-MOD's adapters need a language: its only default one
    "xmod": {"default_language": "en_XX"},
    "nemotron": {"num_key_value_heads": 2},
    # its rotary embedding is as wide as head_dim, which its latent attention rotates only
    # the qk_rope_head_dim part of (64 and 64 by default)
    "longcat_flash": {"head_dim": 8},
    # sizes the config ties to the hidden size of 64
    "squeezebert": {"embedding_size": 64},
    "reformer": {"axial_pos_embds_dim": [32, 32], "axial_pos_shape": [8, 8],
                 "max_position_embeddings": 64, "attention_head_size": 16},
    "pocket_tts": {"flow_head_config": {"condition_dim": 64}},
    "gradium_phonon_tts": {"flow_head_config": {"condition_dim": 64}},
    # transformers 5.24's DbrxAttention reads attn_config.rope_theta, which the attention
    # config no longer declares: its default does not build either
    "dbrx": {"attn_config": {"rope_theta": 10000.0, "clip_qkv": 8.0},
             "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2}},
    "mamba2": {"num_heads": 8, "head_dim": 16, "n_groups": 1},
    # Gemma-4's full-attention layers have wider heads (512 to the sliding ones' 256);
    # kept twice as wide, and one layer of each kind
    "gemma4_text": {"global_head_dim": 32, "layer_types": ["sliding_attention",
                                                          "full_attention"]},
}


def _shrunk(config_class: type, keep: frozenset[str], grouped: bool = True) -> Any:
    default = config_class()
    # Per-layer families (Gemma-4's wider full-attention heads) refuse to read a per-layer
    # size globally; the global value is the one to shrink, the family's own rule (its
    # override below) derives the per-layer ones.
    default.allow_global_per_layer_attribute_access = True
    renamed = getattr(config_class, "attribute_map", {})
    settable = ({field.name for field in dataclasses.fields(config_class)}
                if dataclasses.is_dataclass(config_class)
                else set(inspect.signature(config_class).parameters))
    fields: dict[str, Any] = {}
    for name, size in SIZES.items():
        value = getattr(default, name, None)
        field = renamed.get(name, name)
        if name in keep or field not in settable:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            fields[field] = min(value, size) if name in _AT_MOST else size
            if name == "num_key_value_heads" and (not grouped or isinstance(
                    getattr(default, "kv_lora_rank", None), int)):
                # ungrouped; and always for latent attention (DeepSeek's MLA), which expands
                # its keys to every query head itself: groups would repeat them again
                fields[field] = SIZES["num_attention_heads"]
        elif value is None and (name == "head_dim" or name == "num_experts_per_tok" and
                                isinstance(getattr(default, "num_experts", None), int)):
            fields[field] = size        # None: some models derive it, some fail on it
    # Every vocabulary (entities', hashed byte groups', ...) as small as the tokens'.
    for name in dir(default):
        value = getattr(default, name, None)
        if ("vocab_size" in name or name.endswith("_vocab")) and name in settable \
                and isinstance(value, int) and not isinstance(value, bool) and value > VOCAB:
            fields[name] = VOCAB
    if isinstance(getattr(default, "vocab_size", None), int):
        fields[renamed.get("vocab_size", "vocab_size")] = VOCAB
        # Special tokens keep their ids if the small vocabulary has them, else take its last.
        for name in dir(default):
            if name.endswith("_token_id") and name in settable:
                token = getattr(default, name, None)
                if isinstance(token, int) and not isinstance(token, bool) and token >= VOCAB:
                    fields[name] = VOCAB - 1
    overrides = _OVERRIDES.get(getattr(config_class, "model_type", ""), {})
    if "mrope_section" in getattr(config_class, "ignore_keys_at_rope_validation", ()) and \
            "rope_parameters" not in overrides:
        # multimodal rotary sections (time, height, width) of a head of 16's frequencies
        rope = dict(getattr(default, "rope_parameters", None) or {})
        if isinstance(getattr(default, "qk_rope_head_dim", None), int):
            rotated = SIZES["qk_rope_head_dim"] // 2        # latent attention's rotary part
        else:
            rotated = int(SIZES["head_dim"] * rope.get("partial_rotary_factor", 1.0)) // 2
        third = 3 * rotated // 8
        fields["rope_parameters"] = {**rope, "mrope_section": [rotated - 2 * third, third,
                                                               third]}
    for key, sub_class in getattr(default, "sub_configs", {}).items():
        sub_default = getattr(default, key, None)
        if sub_default is not None and isinstance(sub_class, type):
            # an AutoConfig slot (MusicGen's text and audio encoders) holds the family's
            # default choice: its own class shrinks it
            own = sub_class if issubclass(sub_class, PreTrainedConfig) else type(sub_default)
            fields[key] = _shrunk(own, keep, grouped).to_dict()
    for name, value in overrides.items():
        merged = isinstance(value, dict) and isinstance(fields.get(name), dict)
        fields[name] = {**fields[name], **value} if merged else value
    return config_class(**fields)


def float64_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None,
                      softcap: float | None = None, position_bias: torch.Tensor | None = None,
                      s_aux: torch.Tensor | None = None, indices: torch.Tensor | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """An independent float64 reference for families without an SDPA path.

    Plain torch, as transformers' eager attention but in float64 throughout (HF's runs its
    softmax in float32): scores scaled, soft-capped, plus T5's position bias, masked
    (a ``None`` mask is causal when the module is and the query has more than one token),
    only the keys each query selected where DeepSeek sparse attention's ``indices`` say,
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
    if indices is not None:
        for row, chosen in enumerate(indices.long().unbind(0)):      # (L, k) per batch row
            unchosen = torch.ones(scores.shape[-2:], dtype=torch.bool)
            unchosen[torch.arange(len(chosen)).unsqueeze(1), chosen] = False
            scores[row] = scores[row].masked_fill(unchosen, -torch.inf)
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)          # (B, H, L, 1)
    scores = scores.masked_fill(empty, 0.0)
    if s_aux is not None:
        # in the scores' dtype before the sum over rows of the backward pass: a float32
        # s_aux (DeepSeek-V4 keeps it so) would otherwise sum its gradient in float32
        sinks = s_aux.to(scores.dtype).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
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
        return [_check(family, name) if kinds[family] is None
                else FamilyResult(family, "not swept", str(kinds[family])) for family in chosen]
    finally:
        torch.set_num_threads(threads)


def family_table(results: Iterable[FamilyResult], language: str = "en") -> str:
    """The results as a markdown table, one row per family, with a short note on each
    detail, in English (``"en"``) or Chinese (``"zh"``): what the docs print and
    ``routing-sim hf --families`` prints.

    Examples
    --------
    >>> bloom = FamilyResult("bloom", "refused", "model family 'bloom' computes attention "
    ...                      "itself in BloomAttention (a softmax of its own)")
    >>> print(family_table([bloom]))
    | family | status | why |
    | --- | --- | --- |
    | bloom | refused | computes attention itself in BloomAttention |
    >>> print(family_table([bloom], "zh"))
    | 模型族 | 状态 | 说明 |
    | --- | --- | --- |
    | bloom | 拒绝 | 在 BloomAttention 中自己计算注意力 |
    """
    if language not in _TABLE_HEADERS:
        raise InvalidArgumentError(f"language must be one of {sorted(_TABLE_HEADERS)}, "
                                   f"got {language!r}")
    rows = [_TABLE_HEADERS[language], "| --- | --- | --- |"]
    for result in results:
        status = _STATUS_WORDS[language].get(result.status, result.status)
        rows.append(f"| {result.family} | {status} | {_note(result, language)} |")
    return "\n".join(rows)


_TABLE_HEADERS = {"en": "| family | status | why |", "zh": "| 模型族 | 状态 | 说明 |"}
_STATUS_WORDS = {"en": {}, "zh": {"exact": "精确", "refused": "拒绝", "not swept": "未扫描",
                                  "failed": "失败"}}
# (pattern on a result's detail, English note, Chinese note): the first that matches.
_NOTES = [
    (r"output within \S+ of sdpa(?!.*generation)", "= SDPA: output, gradients",
     "= SDPA：输出、梯度"),
    (r"output within \S+ of sdpa", "= SDPA: output, generation, gradients",
     "= SDPA：输出、生成、梯度"),
    (r"output within \S+ of the float64 reference(?!.*generation)",
     "= float64 reference: output, gradients", "= float64 参考：输出、梯度"),
    (r"output within \S+ of the float64 reference",
     "= float64 reference: output, generation, gradients", "= float64 参考：输出、生成、梯度"),
    (r"holds a refused model: model family '(\w+)' computes attention itself in (\w+)",
     r"its \1 model computes attention itself in \2", r"其中的 \1 模型在 \2 中自己计算注意力"),
    (r"computes attention itself in (\w+)", r"computes attention itself in \1",
     r"在 \1 中自己计算注意力"),
    (r"picks its attention class from its own table (\w+)",
     r"picks its attention class from its own table \1", r"从自己的表 \1 中选注意力类"),
    (r"does not know the attention argument (\w+)", r"unknown attention argument `\1`",
     r"未知的注意力参数 `\1`"),
    (r"no softmax attention", "no softmax attention", "没有 softmax 注意力"),
    (r"its tiny config has ([\d,]+) parameters", r"tiny config still has \1 parameters",
     r"缩小后的配置仍有 \1 个参数"),
    (r"does not run on eager attention either \((\w+)",
     r"tiny config fails on eager too (\1)", r"缩小后的配置在 eager 下同样失败（\1）"),
    (r"^(\w+) takes no input_ids", r"\1 takes no input_ids", r"\1 不接受 input_ids"),
    (r"^(\w+)'s (\w+) are audio codebook tokens", r"\1's \2 are audio codebook tokens",
     r"\1 的 \2 是音频码本 token"),
    (r"^(\w+) needs ([\w, ]+)", r"\1 needs \2", r"\1 需要 \2"),
    (r"^its model class (\w+) cannot be imported", r"\1 cannot be imported",
     r"无法导入 \1"),
]


def _note(result: FamilyResult, language: str) -> str:
    column = 1 if language == "en" else 2
    for pattern, *notes in _NOTES:
        found = re.search(pattern, result.detail)
        if found:
            return found.expand(notes[column - 1])
    return result.detail.split(" (")[0].replace("|", "/")     # a failure: its own words


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
    failure: Exception | None = None
    for shrink_depth in (True, False):  # two layers of a hybrid model may hold no attention
        try:
            first = _first_run(family, kind, auto, name, shrink_depth)
        except BypassError as error:
            # a composite (FastSpeech2 with its vocoder) is refused for the family of the
            # model inside it whose attention bypasses the backend
            named = f"'{family}'" in str(error)
            return FamilyResult(family, "refused", str(error) if named else
                                f"model family '{family}' holds a refused model: {error}")
        except RoutingSimError as error:
            if f"'{family}'" in str(error):
                return FamilyResult(family, "refused", str(error))
            first, failure = None, error
        except Exception as error:                                     # noqa: BLE001
            first, failure = None, error
        else:
            if first[3] > 0:
                break
    else:
        if first is None:
            assert failure is not None
            return _failure(family, kind, auto, failure)
        # Admission refused every module computing a softmax attention of its own, so what
        # is left has none (state-space, recurrent, FFT or hashing layers). The test holds
        # this list to the families known to be so.
        return FamilyResult(family, "not swept", "no softmax attention: no call reached the "
                                                 "backend")
    assert first is not None
    model, inputs, ours, calls = first
    try:
        reference = _reference(model, inputs, name)
        with torch.no_grad():
            theirs = _output(_forward(model, inputs))
        real_only = kind == "decoder" or family in _UNROUTED_PADDING
        gap = _gap(_real(ours, inputs, real_only), _real(theirs, inputs, real_only))
        if not gap <= TOLERANCE:
            return FamilyResult(family, "failed", f"output differs from {reference} by {gap:.3g}")
        checks = [f"output within {TOLERANCE:g} of {reference} ({calls} calls)"]
        if kind != "encoder":
            checks.append(_generation(model, inputs, name, reference))
        checks.append(_gradients(model, inputs, real_only, name, reference))
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
    except _TooLarge as error:
        return FamilyResult(family, "not swept", f"its tiny config has {error}")
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
    # Sizes the generic shrink did not reach, counted without weights; built with ``name``,
    # so a family the backend refuses is refused whatever its size.
    with torch.device("meta"):
        size = sum(p.numel() for p in auto.from_config(
            copy.deepcopy(config), attn_implementation=name).parameters())
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
        output = _output(_forward(model, inputs))
    return model, inputs, output, recorder.skipped


def _forward(model: Any, inputs: dict) -> Any:
    """The model on ``inputs`` after the same seed each time: a family whose forward draws
    random numbers (DiffusionGemma's noised canvas) draws the same ones under either
    implementation."""
    torch.manual_seed(1)
    return model(**inputs)


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


def _real(output: torch.Tensor, inputs: dict, real_only: bool) -> torch.Tensor:
    """A decoder's output at its real tokens (``real_only``). A left-padded token's query
    node has no route, and what it gets is a convention (routing_sim's zeros, SDPA's
    average of every value where a position bias fills blocked routes with the dtype's
    minimum, eager's NaN)."""
    if not real_only:
        return output
    return output[inputs["attention_mask"].bool()]                    # (real tokens, ...)


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


def _gradients(model: Any, inputs: dict, real_only: bool, name: str, reference: str) -> str:
    """Every parameter gradient within 1e-10 of the reference's (relative to its own largest
    magnitude, or the model's largest where softmax makes it zero up to rounding)."""
    grads = []
    for implementation in (_implementation(reference), name):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        output = _real(_output(_forward(model, inputs)), inputs, real_only)
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
