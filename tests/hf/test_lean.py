"""The backend's lean decoding step: simulate's bits without a Run, only when nobody looks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="the hf extra (torch) is not installed")
pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import routing_sim as rs  # noqa: E402
from routing_sim.hf import backend as hf_backend  # noqa: E402
from routing_sim.hf.tiny import tiny_model  # noqa: E402

MASKS = ("none", "all", "padding", "float padding", "bias", "gap")


@pytest.fixture(scope="module")
def attention():
    from transformers import AttentionInterface

    return AttentionInterface()[rs.hf.register("routing_sim_lean_test")]


@pytest.fixture
def simulations(monkeypatch):
    """How many calls ran simulate (the lean step did not)."""
    calls = []
    full_path = hf_backend.simulated_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return full_path(*args, **kwargs)

    monkeypatch.setattr(hf_backend, "simulated_attention", counted)
    return calls


def step(seed: int, batch: int, kv_heads: int, share: int, n_keys: int, dim: int,
         mask: str) -> tuple:
    """A module and the tensors of one decoding call: query (B, H, 1, E), the cache and
    a mask ``(B, 1, 1, S)`` of kind ``mask`` (what sdpa_mask hands a backend)."""
    rng = np.random.default_rng(seed)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, share
    tensor = lambda *shape: torch.from_numpy(rng.normal(size=shape))  # noqa: E731
    query = tensor(batch, kv_heads * share, 1, dim)
    key, value = tensor(batch, kv_heads, n_keys, dim), tensor(batch, kv_heads, n_keys, dim)
    padded = np.arange(n_keys) >= rng.integers(0, n_keys, size=(batch, 1, 1, 1))
    masks = {"none": None, "all": np.ones((batch, 1, 1, n_keys), bool), "padding": padded,
             "float padding": np.where(padded, rng.normal(size=padded.shape), -np.inf),
             "bias": rng.normal(size=(batch, 1, 1, n_keys)),
             "gap": np.broadcast_to(np.arange(n_keys) != n_keys // 2, padded.shape)}
    allowed = masks[mask]
    return module, query, key, value, None if allowed is None else torch.from_numpy(
        np.array(allowed))                                            # writable, contiguous


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 2), kv_heads=st.integers(1, 2),
       share=st.integers(1, 3), n_keys=st.integers(1, 40), dim=st.integers(1, 16),
       mask=st.sampled_from(MASKS), scaling=st.none() | st.floats(0.05, 2.0),
       softcap=st.none() | st.floats(0.5, 30.0), sinks=st.booleans())
def test_a_step_has_the_bits_of_simulate(attention, seed, batch, kv_heads, share, n_keys, dim,
                                         mask, scaling, softcap, sinks):
    module, query, key, value, allowed = step(seed, batch, kv_heads, share, n_keys, dim, mask)
    s_aux = torch.linspace(-1.0, 1.0, kv_heads * share, dtype=torch.float64) if sinks else None
    with torch.no_grad():
        ours, weights = attention(module, query, key, value, allowed, scaling=scaling,
                                  softcap=softcap, s_aux=s_aux)
    run = rs.simulate(query.numpy(), key.numpy(), value.numpy(),
                      None if allowed is None else allowed.numpy(), scale=scaling,
                      enable_gqa=share > 1, sinks=None if s_aux is None else s_aux.numpy(),
                      score_mod=None if softcap is None else rs.mods.softcap(softcap))
    assert weights is None
    assert np.array_equal(ours.numpy(), run.output.transpose(0, 2, 1, 3))


@pytest.mark.parametrize("mask", MASKS)
def test_an_unobserved_step_builds_no_run(attention, simulations, mask):
    module, query, key, value, allowed = step(0, 2, 2, 2, 12, 8, mask)
    with torch.no_grad():
        attention(module, query, key, value, allowed, scaling=0.25)
        attention(module, query, key, value, allowed, scaling=0.25, softcap=5.0)
    assert simulations == []


@pytest.mark.parametrize("observer", ["record", "weights", "gradient", "two queries",
                                      "dropout", "exact", "network", "full trace"])
def test_whoever_looks_gets_the_simulation(attention, simulations, observer):
    """Recording, attention weights, a gradient, more than one query, dropout, or options
    asking for numerics, a network or every message: simulate runs."""
    module, query, key, value, allowed = step(1, 2, 2, 2, 12, 8, "padding")
    options = {"exact": {"numerics": "exact"}, "network": {"network": rs.Network(latency=2.0)},
               "full trace": {"trace": "full"}}.get(observer)
    call = attention if options is None else __import__("transformers").AttentionInterface(
    )[rs.hf.register(f"routing_sim_lean_{observer.replace(' ', '_')}", **options)]
    arguments = {"scaling": 0.25}
    if observer == "two queries":
        query = torch.cat([query, query], dim=2)
    if observer == "dropout":
        arguments["dropout"] = 0.1
    if observer == "weights":
        arguments["output_attentions"] = True
    if observer == "gradient":
        query.requires_grad_()
    with rs.hf.record() if observer == "record" else torch.enable_grad() as rec:
        output, weights = call(module, query, key, value, allowed, **arguments)
    assert simulations == [1]
    if observer == "record":
        assert np.array_equal(rec.runs[0].run.output.transpose(0, 2, 1, 3), output.numpy())
    if observer == "weights":
        assert weights is not None and weights.shape == (2, 4, 1, 12)
    if observer == "gradient":
        output.sum().backward()
        assert query.grad is not None and torch.isfinite(query.grad).all()


def test_bad_input_is_refused_as_before(attention):
    module, query, key, value, allowed = step(2, 1, 1, 1, 6, 4, "padding")
    query[0, 0, 0, 1] = torch.nan
    with torch.no_grad(), pytest.raises(rs.InvalidArgumentError, match="query holds nan"):
        attention(module, query, key, value, allowed)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "bart", "t5"])
def test_generation_without_a_recorder_has_the_recorded_bits(monkeypatch, family):
    """Greedy generation: every step's logits with the lean step (nobody records) equal,
    bit for bit, the logits of the same generation recorded (every step simulated)."""
    name = rs.hf.register("routing_sim_lean_generation")
    model = tiny_model(family, attn_implementation=name)
    ids = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0                                                  # a padded row
    settings = {"attention_mask": mask, "max_new_tokens": 4, "do_sample": False,
                "pad_token_id": 0, "eos_token_id": None, "output_logits": True,
                "return_dict_in_generate": True}
    lean = []
    lean_step = hf_backend.lean_step

    def spied(*args, **kwargs):
        output = lean_step(*args, **kwargs)
        lean.append(output is not None)
        return output

    monkeypatch.setattr(hf_backend, "lean_step", spied)
    with torch.no_grad():
        unobserved = model.generate(ids, **settings)
        with rs.hf.record(limit=1000) as rec:
            recorded = model.generate(ids, **settings)
    assert any(lean) and rec.runs
    assert torch.equal(unobserved.sequences, recorded.sequences)
    assert all(torch.equal(a, b) for a, b in zip(unobserved.logits, recorded.logits, strict=True))
