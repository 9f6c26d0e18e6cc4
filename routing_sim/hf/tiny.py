"""Tiny random-init transformers models, built from configs (no download), for each family.

They are what the scenario, the ``routing-sim hf`` command, the benchmarks and the tests
run: small enough for a laptop, but each the real architecture (GQA and RoPE, sliding
windows, qkv bias, learned positions, encoder-decoder cross-attention, T5's relative
position bias, Gemma-2's soft-capping).
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

from ..errors import InvalidArgumentError

__all__ = ["FAMILIES", "tiny_model"]

VOCAB = 96

# family -> (config class, auto class, config keywords); heads of dimension 16 throughout.
_SPECS: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "AutoModelForCausalLM", {
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096, "initializer_range": 0.2}),
    "mistral": ("MistralConfig", "AutoModelForCausalLM", {
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "sliding_window": 8, "max_position_embeddings": 4096,
        "initializer_range": 0.2}),
    "qwen2": ("Qwen2Config", "AutoModelForCausalLM", {
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096, "initializer_range": 0.2}),
    "gemma2": ("Gemma2Config", "AutoModelForCausalLM", {
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 6,
        "query_pre_attn_scalar": 16, "attn_logit_softcapping": 2.0,
        "final_logit_softcapping": 30.0, "max_position_embeddings": 4096,
        "initializer_range": 0.2}),
    "gpt2": ("GPT2Config", "AutoModelForCausalLM", {
        "n_embd": 64, "n_head": 4, "n_positions": 4096, "attn_pdrop": 0.0,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "bos_token_id": 0, "eos_token_id": 0}),
    "bert": ("BertConfig", "AutoModel", {
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0}),
    "bart": ("BartConfig", "AutoModelForSeq2SeqLM", {
        "d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
        "encoder_attention_heads": 4, "decoder_attention_heads": 4, "dropout": 0.0,
        "attention_dropout": 0.0, "max_position_embeddings": 512, "pad_token_id": 1,
        "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2,
        "forced_eos_token_id": None}),
    "t5": ("T5Config", "AutoModelForSeq2SeqLM", {
        "d_model": 64, "d_kv": 16, "d_ff": 128, "num_heads": 4,
        "relative_attention_num_buckets": 8, "dropout_rate": 0.0, "pad_token_id": 0,
        "eos_token_id": 1, "decoder_start_token_id": 0}),
}
_LAYER_KEYWORDS = {"gpt2": ("n_layer",), "bart": ("encoder_layers", "decoder_layers"),
                   "t5": ("num_layers", "num_decoder_layers")}
FAMILIES = tuple(_SPECS)


def tiny_model(family: str, layers: int = 2, *, attn_implementation: str = "sdpa",
               dtype: torch.dtype = torch.float64, seed: int = 0, **overrides: Any
               ) -> Any:
    """A random-init model of ``family`` with ``layers`` layers, in eval mode.

    Parameters
    ----------
    family : {"llama", "mistral", "qwen2", "gemma2", "gpt2", "bert", "bart", "t5"}
    layers : int
        Hidden layers (each of encoder and decoder for BART and T5).
    attn_implementation : str
        ``"sdpa"``, ``"eager"`` or a name given to :func:`routing_sim.hf.register`.
        Gemma-2 has no SDPA path in transformers (SDPA cannot soft-cap scores): give it
        ``"eager"`` or a registered name.
    dtype : torch.dtype
        float64 by default, so comparisons can hold to 1e-12.
    seed : int
        ``torch.manual_seed`` before the weights are drawn: the same seed, the same weights.
    **overrides
        Config fields to change.

    Examples
    --------
    >>> model = tiny_model("llama", layers=1)
    >>> model.config.num_hidden_layers, model.config.head_dim, model.dtype
    (1, 16, torch.float64)
    """
    if family not in _SPECS:
        raise InvalidArgumentError(f"family must be one of {FAMILIES}, got {family!r}")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise InvalidArgumentError(f"layers must be a positive integer, got {layers!r}")
    if family == "gemma2" and attn_implementation == "sdpa":
        raise InvalidArgumentError("attn_implementation='sdpa': Gemma-2 has no SDPA path in "
                                   "transformers (SDPA cannot soft-cap scores); pass 'eager' or "
                                   "a name from routing_sim.hf.register")
    config_name, auto_name, fields = _SPECS[family]
    layer_fields = dict.fromkeys(_LAYER_KEYWORDS.get(family, ("num_hidden_layers",)), layers)
    config = getattr(transformers, config_name)(vocab_size=VOCAB,
                                                **{**fields, **layer_fields, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, auto_name).from_config(
        config, attn_implementation=attn_implementation, dtype=dtype)
    return model.eval()
