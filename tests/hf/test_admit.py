"""Which transformers models the backend accepts (routing_sim.hf.admit)."""

from __future__ import annotations

import copy
import os
import warnings

import pytest

torch = pytest.importorskip("torch", reason="the hf extra (torch) is not installed")
transformers = pytest.importorskip("transformers",
                                   reason="the hf extra (transformers) is not installed")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import routing_sim as rs  # noqa: E402
from routing_sim.hf.admit import BypassError, SharedConfigWarning, self_computing_attention  # noqa: E402
from routing_sim.hf.families import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def backend():
    return rs.hf.register("routing_sim_admit")


# family -> the attention class that computes attention itself (the error names both)
BYPASS = {"bloom": "BloomAttention", "mpt": "MptAttention",
          "deberta-v2": "DisentangledSelfAttention", "longt5": "LongT5LocalAttention",
          "mra": "MraSelfAttention"}


@pytest.mark.parametrize("family", BYPASS)
def test_a_family_computing_attention_itself_is_refused_when_built(backend, family):
    with pytest.raises(BypassError, match=rf"family '{family}' computes attention itself in "
                                          rf".*{BYPASS[family]}"):
        transformers.AutoModel.from_config(tiny_config(family), attn_implementation=backend)


@pytest.mark.parametrize("family, table", [("gpt_neo", "GPT_NEO_ATTENTION_CLASSES"),
                                           ("falcon", "FALCON_ATTENTION_CLASSES")])
def test_a_family_with_its_own_class_table_is_refused_not_a_key_error(backend, family, table):
    with pytest.raises(BypassError, match=rf"family '{family}' picks its attention class "
                                          rf"from its own table {table}"):
        transformers.AutoModel.from_config(tiny_config(family), attn_implementation=backend)


def test_setting_the_backend_on_a_bypassing_model_is_refused(backend):
    """transformers would only log a warning and keep SDPA: the user would believe the
    model runs routing_sim."""
    model = transformers.AutoModel.from_config(tiny_config("bloom"))
    with pytest.raises(BypassError, match="'bloom'"):
        model.set_attn_implementation(backend)
    assert model.config._attn_implementation == "eager"              # BLOOM's own


def test_the_check_reads_each_attention_class():
    from transformers.models.bert.modeling_bert import BertAttention, BertSelfAttention
    from transformers.models.longt5.modeling_longt5 import LongT5Attention, LongT5LocalAttention
    from transformers.models.mistral.modeling_mistral import MistralMLP

    assert [self_computing_attention(c) for c in (
        LongT5LocalAttention, LongT5Attention, BertSelfAttention, BertAttention,
        MistralMLP)] == [True, False, False, False, False]


def test_a_model_built_on_a_config_another_model_holds_warns(backend):
    """from_config writes the implementation into the config it is given: the SDPA model
    built first would silently run routing_sim, and a comparison compare it with itself."""
    config = tiny_config("llama")
    sdpa = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.warns(SharedConfigWarning, match="'sdpa'.*copy.deepcopy") as caught:
        ours = transformers.AutoModelForCausalLM.from_config(config,
                                                             attn_implementation=backend)
    assert len(caught) == 1
    assert sdpa.config._attn_implementation == backend                # what was warned about
    with pytest.warns(SharedConfigWarning, match=f"{backend!r}"):     # and the other way round
        transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    assert ours.config._attn_implementation == "sdpa"


def test_models_from_their_own_copies_do_not_warn(backend):
    config = tiny_config("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sdpa = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config))
        ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config),
                                                             attn_implementation=backend)
    assert (sdpa.config._attn_implementation, ours.config._attn_implementation) == (
        "sdpa", backend)


def test_a_family_passing_the_init_check_its_own_arguments_builds(backend):
    """HRM's override of _check_and_adjust_attn_implementation passes allow_all_kernels by
    position: the admission check must pass it on, for every implementation."""
    config = tiny_config("hrm_text")
    for implementation in ("eager", backend):
        model = transformers.AutoModelForCausalLM.from_config(
            copy.deepcopy(config), attn_implementation=implementation)
        assert model.config._attn_implementation == implementation
