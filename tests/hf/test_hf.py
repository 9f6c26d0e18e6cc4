"""routing_sim as a transformers attention backend, against PyTorch SDPA in float64.

Every model here is a tiny random-init one built from a config (no download); the SDPA
model is the same architecture with the same seed, so it has the same weights.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the hf extra (torch) is not installed")
pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import routing_sim as rs  # noqa: E402
from routing_sim.hf.families import float64_attention as float64_eager  # noqa: E402
from routing_sim.hf.families import tiny_config  # noqa: E402
from routing_sim.hf.tiny import tiny_model  # noqa: E402

RTOL = 1e-12
GRAD_RTOL = 1e-10
CAUSAL = ("llama", "mistral", "qwen2", "gemma2", "gpt2")
SEQ2SEQ = ("bart", "t5")
FLOAT64_EAGER = "float64_eager_reference"


@pytest.fixture(scope="module")
def backend():
    return rs.hf.register("routing_sim_test")


@pytest.fixture(scope="module")
def models(backend):
    """family -> (routing_sim model, reference model), built once for the whole module.

    The reference is the same architecture with the same seed, so the same weights, on
    SDPA; for Gemma-2 (no SDPA path: soft-capping) on the independent float64 reference
    (plain torch, HF's eager computation in float64 throughout).
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(FLOAT64_EAGER, float64_eager)
    AttentionMaskInterface.register(FLOAT64_EAGER, sdpa_mask)
    pairs = {}
    for family in (*CAUSAL, "bert", *SEQ2SEQ):
        reference = FLOAT64_EAGER if family == "gemma2" else "sdpa"
        pairs[family] = (tiny_model(family, attn_implementation=backend),
                         tiny_model(family, attn_implementation=reference))
    return pairs


def batch(family: str, length: int = 11, seed: int = 0) -> dict:
    """Two rows, the second padded (left for decoders, right for encoders)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (2, length), generator=generator)
    mask = torch.ones(2, length, dtype=torch.long)
    if family in CAUSAL:
        mask[1, :4] = 0
    else:
        mask[1, -4:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family in SEQ2SEQ:
        inputs["decoder_input_ids"] = torch.randint(3, 90, (2, 6), generator=generator)
    return inputs


def output_of(model, inputs: dict) -> torch.Tensor:
    result = model(**inputs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = RTOL) -> None:
    """Relative to the largest magnitude: |ours - theirs| <= rtol * max|theirs|."""
    ours, theirs = ours.detach().numpy(), theirs.detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=rtol * np.abs(theirs).max())


@pytest.mark.parametrize("family", [*CAUSAL, "bert", *SEQ2SEQ])
def test_forward_equals_sdpa(models, family):
    ours, sdpa = models[family]
    inputs = batch(family)
    with torch.no_grad():
        assert_close(output_of(ours, inputs), output_of(sdpa, inputs))


def test_mistral_window_binds(models):
    """11 tokens and a window of 8: the mask really cuts routes (no window, other logits)."""
    ours, _ = models["mistral"]
    inputs = batch("mistral")
    with torch.no_grad(), rs.hf.record() as rec:
        windowed = output_of(ours, inputs)
    weights = rec.runs[0].run.weights                                  # (B, H, L, S)
    assert not weights[0, :, 10, :3].any() and (weights[0, :, 10, 3:] > 0).all()
    with torch.no_grad():
        unwindowed = output_of(tiny_model("mistral", sliding_window=None), inputs)
    assert not torch.allclose(windowed, unwindowed, rtol=1e-6)


@pytest.mark.parametrize("family", [*CAUSAL, *SEQ2SEQ])
def test_greedy_generation_is_identical(models, family):
    ours, sdpa = models[family]
    inputs = batch(family, length=7, seed=1)
    inputs.pop("decoder_input_ids", None)
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0,
                "eos_token_id": None}
    with torch.no_grad():
        expected = sdpa.generate(**inputs, **settings)
        with rs.hf.record(limit=1000) as rec:
            produced = ours.generate(**inputs, **settings)
    assert torch.equal(produced, expected)
    one_token_steps = [r for r in rec.runs if r.step > 0 and r.attention == "self"]
    assert one_token_steps and all(r.run.output.shape[-2] == 1 for r in one_token_steps)


def loss_of(output: torch.Tensor) -> torch.Tensor:
    """A loss that depends on every output (a sum of squares after LayerNorm would not)."""
    direction = torch.randn(output.shape, generator=torch.Generator().manual_seed(7),
                            dtype=output.dtype)
    return (output * direction).sum()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma2", "gpt2", "bert", "t5",
                                    "bart"])
def test_gradients_equal_sdpa(models, family):
    ours, sdpa = models[family]
    inputs = batch(family, length=6, seed=2)
    for model in (ours, sdpa):
        model.zero_grad()
        loss_of(output_of(model, inputs)).backward()
    # Key biases shift a whole row of scores, which softmax ignores: their gradient is zero
    # up to rounding, so a relative comparison of two roundings would be meaningless. Those
    # are held to the model's largest gradient instead.
    largest = max(p.grad.abs().max() for p in sdpa.parameters() if p.grad is not None)
    compared = 0
    for (name, mine), theirs in zip(ours.named_parameters(), sdpa.parameters()):
        if theirs.grad is None:
            assert mine.grad is None, name
            continue
        scale = theirs.grad.abs().max()
        if scale < 1e-12 * largest:
            scale = largest
        assert (mine.grad - theirs.grad).abs().max() <= GRAD_RTOL * scale, name
        compared += 1
    assert compared > 10


def test_gemma2_soft_caps_and_alternates_sliding_and_global_layers(backend, models):
    """Layer 0 slides (window 6 of 11 tokens), layer 1 is global; both soft-cap at 2."""
    ours, _ = models["gemma2"]
    assert ours.config.layer_types == ["sliding_attention", "full_attention"]
    inputs = batch("gemma2")
    with torch.no_grad(), rs.hf.record() as rec:
        capped = output_of(ours, inputs)
    sliding, full = (rec.layer(i)[0].run.weights for i in (0, 1))    # (B, H, L, S) each
    assert not sliding[0, :, 10, :5].any() and (sliding[0, :, 10, 5:] > 0).all()
    assert (full[0, :, 10] > 0).all()
    for entry in rec.runs:
        assert entry.verdict().within_tolerance
        assert repr(entry.inputs["score_mod"]) == "softcap(2.0)"
    with torch.no_grad():
        uncapped = output_of(tiny_model("gemma2", attn_implementation=backend,
                                        attn_logit_softcapping=None), inputs)
    assert not torch.allclose(capped, uncapped, rtol=1e-3)


def test_tiny_gemma2_on_sdpa_is_a_clear_error():
    with pytest.raises(rs.InvalidArgumentError, match="Gemma-2 has no SDPA path"):
        tiny_model("gemma2", layers=1)


def test_t5_position_bias_gradient_is_the_score_gradient(models):
    """The relative-attention-bias table learns through the backend's score gradient."""
    ours, sdpa = models["t5"]
    inputs = batch("t5", length=6, seed=3)
    table = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    grads = []
    for model in (ours, sdpa):
        model.zero_grad()
        loss_of(output_of(model, inputs)).backward()
        grads.append(dict(model.named_parameters())[table].grad)
    assert grads[1].abs().max() > 0
    assert_close(grads[0], grads[1], GRAD_RTOL)


def test_exact_numerics_and_faults_are_bit_identical(backend, models):
    """Exact mode matches SDPA; loss, duplication and jitter change no bit of the logits."""
    inputs = batch("llama", length=6)
    ours, sdpa = models["llama"]
    with torch.no_grad():
        plain = output_of(ours, inputs)
        for options in ({"numerics": "exact"},
                        {"network": rs.Network(loss=0.2, duplicate=0.2, jitter=0.5,
                                               retries=50, seed=3)}):
            rs.hf.register("routing_sim_variant", **options)
            ours.set_attn_implementation("routing_sim_variant")
            try:
                logits = output_of(ours, inputs)
            finally:
                ours.set_attn_implementation(backend)
            if "numerics" in options:
                assert_close(logits, output_of(sdpa, inputs))
            else:
                assert torch.equal(logits, plain)


def test_from_pretrained_local_dir(tmp_path, backend):
    import transformers

    tiny_model("qwen2", layers=1).save_pretrained(tmp_path)
    ours = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation=backend, dtype=torch.float64)
    sdpa = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    inputs = batch("qwen2", length=5)
    with torch.no_grad():
        assert_close(output_of(ours, inputs), output_of(sdpa, inputs))
    assert ours.config._attn_implementation == backend


def test_record_counts_layers_and_steps(models):
    ours, _ = models["bart"]
    inputs = batch("bart", length=5)
    with torch.no_grad(), rs.hf.record(limit=7) as rec:
        output_of(ours, inputs)
    # 2 encoder layers (self), 2 decoder layers (self + cross): 6 calls in one step.
    assert [(r.layer, r.step, r.attention) for r in rec.runs] == [
        (0, 0, "self"), (1, 0, "self"), (0, 0, "self"), (0, 0, "cross"),
        (1, 0, "self"), (1, 0, "cross")]
    assert rec.skipped == 0
    with torch.no_grad(), rs.hf.record(limit=2) as rec:
        output_of(ours, inputs)
    assert len(rec.runs) == 2 and rec.skipped == 4 and "limit 2 reached" in str(rec)


def test_record_labels_tokens(models):
    class Words:
        def convert_ids_to_tokens(self, ids):
            return [f"w{i}" for i in ids]

    ours, _ = models["gpt2"]
    ids = torch.tensor([[10, 11, 12]])
    with torch.no_grad(), rs.hf.record(model=ours, tokenizer=Words()) as rec:
        produced = ours.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    table = rec.runs[-1].run.routing_table(0, head=0, batch=0)
    assert table.label == f"w{int(produced[0, 3])}"                   # the newest token
    assert {route.label for route in table.routes} >= {"w10", "w11", "w12"}
    assert len(table.routes) == 4


def test_dropout_follows_routing_sim_semantics(models):
    """Training dropout drops routes after the softmax and rescales the survivors."""
    ours, _ = models["llama"]
    model = tiny_model("llama", layers=1, attn_implementation="routing_sim_test",
                       attention_dropout=0.5).train()
    inputs = batch("llama", length=6)
    torch.manual_seed(5)
    with rs.hf.record() as rec:
        first = output_of(model, inputs)
    torch.manual_seed(5)
    assert torch.equal(output_of(model, inputs), first)                 # seeded by torch
    weights = rec.runs[0].run.weights                                  # (B, H, L, S)
    kept = weights[0, :, -1] != 0
    assert 0 < kept.sum() < kept.size
    first.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    del ours


@pytest.mark.parametrize("options, message", [
    ({"is_causal": True}, "supplies"),
    ({"attn_mask": None}, "supplies"),
    ({"bandwidth": 3}, "no option"),
    ({"numerics": "fast"}, "numerics"),
    ({"top_k": 2}, 'routing="topk"'),
])
def test_register_refuses(options, message):
    with pytest.raises(rs.RoutingSimError, match=message):
        rs.hf.register("routing_sim_bad", **options)


def test_call_refuses_what_it_cannot_do_exactly(backend):
    from transformers import AttentionInterface

    attention = AttentionInterface()[backend]
    module = torch.nn.Module()
    q = k = v = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    exact = AttentionInterface()[rs.hf.register("routing_sim_exact", numerics="exact")]
    with pytest.raises(rs.InvalidArgumentError, match="softcap=30.0: soft-capping"):
        exact(module, q, k, v, None, softcap=30.0)
    capped = AttentionInterface()[rs.hf.register("routing_sim_capped",
                                                 score_mod=rs.mods.softcap(5.0))]
    with pytest.raises(rs.InvalidArgumentError, match="register it without score_mod"):
        capped(module, q, k, v, None, softcap=30.0)
    with pytest.raises(rs.InvalidArgumentError, match="sliding_window=2"):
        attention(module, q, k, v, None, sliding_window=2)
    with pytest.raises(rs.InvalidArgumentError, match="mystery"):
        attention(module, q, k, v, None, mystery=1)
    with pytest.raises(rs.DTypeError, match="bfloat16"):
        attention(module, *(x.to(torch.bfloat16) for x in (q, k, v)), None)


def test_cli_hf_with_a_local_checkpoint(tmp_path, capsys):
    from routing_sim.cli import main

    tiny_model("gpt2", layers=1).save_pretrained(tmp_path)
    assert main(["hf", "--model", str(tmp_path), "--tokens", "one two one",
                 "--new-tokens", "2"]) == 0
    printed = capsys.readouterr().out
    assert "EQUAL within 1e-12" in printed and "identical to SDPA's" in printed
    # 1 layer x 4 heads, each the routing table of the last step's query over 4 keys.
    assert printed.count("routing table of token") == 4
    assert printed.count("4 routes, 16 messages") == 4
    assert printed.rstrip().endswith("verdict: EQUAL to matrix attention (within the float "
                                     "tolerance)")


def test_cli_hf_with_a_checkpoint_and_its_tokenizer(tmp_path, capsys):
    """A checkpoint directory with a tokenizer: tables name the words; ids the tokenizer
    does not know (this model has 96, the tokenizer 8) print as idN (# is a position)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from routing_sim.cli import main

    words = ["<pad>", "<unk>", "<s>", "routing", "is", "all", "you", "need"]
    wordlevel = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                           unk_token="<unk>"))
    wordlevel.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=wordlevel, pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(tmp_path)
    tiny_model("llama", layers=1).save_pretrained(tmp_path)
    assert main(["hf", "--model", str(tmp_path), "--tokens", "routing is all you need",
                 "--new-tokens", "2"]) == 0
    printed = capsys.readouterr().out
    generated = next(line for line in printed.splitlines() if line.startswith("greedy"))
    new = generated.split("KV cache: routing is all you need ")[1].split(" (")[0].split()
    assert len(new) == 2 and all(w in words or re.fullmatch(r"id\d+", w) for w in new)
    assert generated.endswith("(identical to SDPA's)")
    # the last step's query is the 6th token; it routes to all 6, the first five by name
    assert printed.count("6 routes, 24 messages") == 4
    assert printed.count(f"routing table of token {new[0]!r} (#5), batch 0, head ") == 4
    assert f"the last step's routing tables, for token {new[0]!r} at position 5:" in printed
    assert "arbitrary token ids" not in printed          # the checkpoint's own tokenizer
    for word in words[3:]:
        assert printed.count(f"  token {word}: ") >= 4


def test_cli_hf_refuses_bad_input(tmp_path, capsys):
    from routing_sim.cli import main

    assert main(["hf", "--model", str(tmp_path)]) == 1
    assert main(["hf", "--tokens", "  "]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"routing-sim: error: --model must be a local checkpoint directory with "
                      f"a config.json, got {str(tmp_path)!r}",
                      "routing-sim: error: --tokens needs at least one word"]


def _sdpa_reference(module, q, k, v, mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, q, k, v, mask, **kwargs)[0]


@pytest.mark.parametrize("seed", range(12))
def test_every_mask_form_equals_sdpa(backend, seed):
    """The backend reads each argument form transformers sends as SDPA does.

    Bool and float masks (padding rows included), None with and without causal inference,
    a KV cache (query shorter than keys, L = 1 or L > 1 with a mask), GQA, scaling and T5's
    position_bias, on random inputs.
    """
    from transformers import AttentionInterface

    rng = np.random.default_rng(seed)
    batch_size, kv_heads, groups = 2, 2, int(rng.choice([1, 2]))
    n_keys = int(rng.integers(2, 9))
    n_queries = int(rng.choice([1, n_keys, max(1, n_keys - 3)]))
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = bool(rng.integers(2)), groups
    tensor = lambda *shape: torch.from_numpy(rng.normal(size=shape) * 2)  # noqa: E731
    q = tensor(batch_size, kv_heads * groups, n_queries, 16)
    k, v = tensor(batch_size, kv_heads, n_keys, 16), tensor(batch_size, kv_heads, n_keys, 16)
    form = ["none", "bool", "float"][seed % 3]
    mask = None
    if form == "bool":
        offset = n_keys - n_queries                                   # cached tokens
        allowed = np.tril(np.ones((n_queries, n_keys), bool), k=offset)  # bottom-right
        allowed = np.broadcast_to(allowed, (batch_size, 1, n_queries, n_keys)).copy()
        allowed[1, ..., : n_keys // 2] = False                        # left padding
        mask = torch.from_numpy(allowed)
    elif form == "float":
        mask = tensor(batch_size, 1, n_queries, n_keys)
        mask[rng.random(mask.shape) < 0.3] = -torch.inf
        mask[..., -1] = 0.0                                           # no empty row
    kwargs = {"scaling": float(rng.uniform(0.1, 1.0))}
    if seed % 4 == 3:
        kwargs["position_bias"] = tensor(1, kv_heads * groups, n_queries, n_keys)
    ours = AttentionInterface()[backend](module, q, k, v, mask, **kwargs)[0]
    assert_close(ours, _sdpa_reference(module, q, k, v, mask, **kwargs))
    if "position_bias" not in kwargs:                                 # as Gemma-2 calls it
        cap = float(rng.uniform(0.5, 3.0))
        capped = AttentionInterface()[backend](module, q, k, v, mask, softcap=cap, **kwargs)
        assert_close(capped[0], float64_eager(module, q, k, v, mask, softcap=cap,
                                              **kwargs)[0])


@pytest.mark.parametrize("seed", range(9))
def test_sparse_attention_indices_remove_the_unselected_routes(backend, seed):
    """DeepSeek sparse attention hands a backend other than eager/SDPA the keys each
    query's indexer chose (``indices`` (B, L, k)) beside the mask; its eager/SDPA path
    merges them into the mask instead. Both ways must give the same attention."""
    from transformers import AttentionInterface

    rng = np.random.default_rng(seed)
    batch_size, heads, n_keys = 2, 2, int(rng.integers(2, 9))
    n_queries = int(rng.choice([1, n_keys]))
    module = torch.nn.Module()
    module.is_causal = True
    tensor = lambda *shape: torch.from_numpy(rng.normal(size=shape) * 2)  # noqa: E731
    q, k, v = (tensor(batch_size, heads, length, 16) for length in (n_queries, n_keys, n_keys))
    top_k = int(rng.integers(1, n_keys + 1))
    order = np.argsort(rng.random((batch_size, n_queries, n_keys)), axis=-1)
    order[..., 0] = n_keys - 1                          # the last key in every selection
    indices = torch.from_numpy(order[..., :top_k]).to(torch.int32)      # (B, L, k)
    selected = np.zeros((batch_size, 1, n_queries, n_keys), bool)
    for row, query in np.ndindex(batch_size, n_queries):
        selected[row, 0, query, order[row, query, :top_k]] = True
    causal = np.tril(np.ones((n_queries, n_keys), bool), k=n_keys - n_queries)
    form = ["none", "bool", "float"][seed % 3]
    if form == "none":
        mask, merged = None, torch.from_numpy(selected & causal)
    elif form == "bool":
        allowed = np.broadcast_to(causal, selected.shape).copy()
        allowed[1, ..., : n_keys // 2] = False                        # left padding
        mask, merged = torch.from_numpy(allowed), torch.from_numpy(allowed & selected)
    else:
        mask = tensor(batch_size, 1, n_queries, n_keys)
        mask[torch.from_numpy(rng.random(mask.shape) < 0.3)] = -torch.inf
        mask[..., -1] = 0.0                                           # no empty row
        merged = mask.masked_fill(torch.from_numpy(~selected), -torch.inf)
    ours = AttentionInterface()[backend](module, q, k, v, mask, indices=indices, scaling=0.25)
    assert_close(ours[0], _sdpa_reference(module, q, k, v, merged, scaling=0.25))
    reference = float64_eager(module, q, k, v, mask, indices=indices, scaling=0.25)
    assert_close(reference[0], _sdpa_reference(module, q, k, v, merged, scaling=0.25))


@pytest.mark.parametrize("family", ["opt", "gpt_bigcode", "stablelm", "llama", "bart"])
def test_output_attentions_returns_the_routing_tables(backend, family):
    """Whenever eager returns weights: OPT, GPT-BigCode and StableLM do not pass
    output_attentions down to the attention function, transformers collects what it
    returns. The weights are each call's routing tables, equal to the float64 reference's."""
    import copy

    import transformers

    from routing_sim.hf.families import FLOAT64_REFERENCE, _register_reference

    _register_reference()
    config = tiny_config(family)
    auto = transformers.AutoModel
    models = []
    for implementation in (backend, FLOAT64_REFERENCE):
        torch.manual_seed(0)
        models.append(auto.from_config(copy.deepcopy(config), attn_implementation=implementation,
                                       dtype=torch.float64).eval())
    inputs = batch(family if family == "bart" else "llama", length=6)
    inputs["input_ids"] = inputs["input_ids"] % 100
    with torch.no_grad(), rs.hf.record() as rec:
        ours = models[0](**inputs, output_attentions=True)
        theirs = models[1](**inputs, output_attentions=True)
    names = ["attentions", "cross_attentions", "encoder_attentions", "decoder_attentions"]
    got = [w for key in names for w in (getattr(ours, key, None) or ())]
    expected = [w for key in names for w in (getattr(theirs, key, None) or ())]
    assert len(got) == len(expected) >= 2
    for mine, reference in zip(got, expected):
        assert_close(mine, reference)
    tables = [torch.from_numpy(r.run.weights) for r in rec.runs]
    assert all(any(torch.equal(w, table) for table in tables) for w in got)


def test_modernbert_runs_and_its_flash_only_keyword_is_accepted(backend):
    """ModernBERT passes deterministic=False (flash-attention's choice of backward kernel):
    accepted, since it cannot change the result; unknown keywords are still refused."""
    import copy

    import transformers
    from transformers import AttentionInterface

    config = tiny_config("modernbert")
    models = []
    for implementation in (backend, "sdpa"):
        torch.manual_seed(0)
        models.append(transformers.AutoModel.from_config(
            copy.deepcopy(config), attn_implementation=implementation,
            dtype=torch.float64).eval())
    inputs = batch("bert")
    inputs["input_ids"] = inputs["input_ids"] % 100
    with torch.no_grad():
        assert_close(output_of(models[0], inputs), output_of(models[1], inputs))
    attention = AttentionInterface()[backend]
    q = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    attention(torch.nn.Module(), q, q, q, None, deterministic=True)
    with pytest.raises(rs.InvalidArgumentError, match="deterministically"):
        attention(torch.nn.Module(), q, q, q, None, deterministically=True)


def test_gpt_oss_sinks_and_their_gradient_equal_the_float64_reference(backend):
    """gpt-oss's s_aux (one learned logit per head in the softmax denominator) is simulate's
    sinks: outputs and every gradient, the sinks' own included, equal the reference's."""
    import copy

    import transformers

    from routing_sim.hf.families import FLOAT64_REFERENCE, _register_reference

    _register_reference()
    config = tiny_config("gpt_oss")
    models = []
    for implementation in (backend, FLOAT64_REFERENCE):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(
            copy.deepcopy(config), attn_implementation=implementation,
            experts_implementation="eager", dtype=torch.float64).eval()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("sinks"):
                    parameter.uniform_(-2.0, 2.0)                     # zeros at init
        models.append(model)
    inputs = batch("llama", length=6)
    inputs["input_ids"] = inputs["input_ids"] % 100
    outputs = []
    with rs.hf.record() as rec:
        for model in models:
            output = output_of(model, inputs)
            loss_of(output).backward()
            outputs.append(output)
    assert_close(*outputs)
    assert len(rec.runs) == 2                                          # the backend's layers
    for entry in rec.runs:
        table = entry.run.routing_table(5, head=0, batch=0)
        assert 0 < table.sink < 1 and entry.verdict().within_tolerance
    sinks = [dict(m.named_parameters())["model.layers.0.self_attn.sinks"].grad for m in models]
    assert sinks[1].abs().max() > 0
    assert_close(sinks[0], sinks[1], GRAD_RTOL)
