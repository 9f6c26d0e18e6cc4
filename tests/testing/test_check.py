"""check_attention and assert_attention_close: correct kernels pass, planted bugs are caught
and shrunk to the minimal cases docs/en/testing.md shows, a float64 kernel off by 1e-9
relative fails, torch's SDPA passes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.errors import InvalidArgumentError
from routing_sim.testing.cases import FEATURES
from tests.testing import kernels

ROOT = Path(__file__).resolve().parents[2]
EVERY = [f for f in FEATURES if f != "backward"]
FLASH = [f for f in EVERY if f not in ("mask", "bottom_right")]


@pytest.mark.parametrize("fn, layout, features", [(kernels.sdpa, "sdpa", EVERY),
                                                  (kernels.flash, "flash", FLASH)])
def test_a_correct_kernel_passes_every_feature(fn, layout, features):
    report = rs.testing.check_attention(fn, layout=layout, features=features, cases=26)
    assert report.passed, str(report)
    assert set(report.by_feature) == set(features)
    assert all(result.cases > 0 and result.failed == 0 for result in report.by_feature.values())
    # Far inside the tolerance, not at its edge: the two readings agree to a few ULPs.
    assert max(r.worst_ratio for r in report.by_feature.values()) < 0.5


def _planted_section() -> str:
    """The planted bugs' section of docs/en/testing.md, as a fast run writes it."""
    return kernels.planted_section()


def test_every_planted_bug_is_caught_and_the_page_shows_its_minimal_case():
    page = (ROOT / "docs" / "en" / "testing.md").read_text(encoding="utf-8")
    shown = page.split("<!-- planted:begin -->\n")[1].split("<!-- planted:end -->")[0]
    assert shown == _planted_section()
    assert shown.count("FAIL (") == len(kernels.PLANTED)
    zh = (ROOT / "docs" / "zh" / "testing.md").read_text(encoding="utf-8")
    assert shown in zh


@pytest.mark.parametrize("title, stage, key", [
    ("scale 1/d", "scores", 0),
    ("causal off by one", "scores", 1),
    ("wrong GQA head mapping", "output", None),
    ("softmax without subtracting the max", "row max", 0),
    ("top-left and bottom-right swapped", "scores", 1),
    ("bool mask inverted", "scores", 0),
    ("a bug only past 64 keys", "scores", 64),
    ("window off by one", "scores", 0),
    ("lse off by the scale", "lse", None),
    ("a causal-only kernel off by one", "scores", 1),
    ("the sinks' gradient negated", "gradient", None),
    ("softcap's slope left out of the gradients", "gradient", None),
    ("a packed-only kernel reading earlier sequences", "scores", 0),
    ("a packed-only kernel aligning causal on the whole pack", "scores", 1),
    ("a decode-only kernel not rescaling its splits", "scores", 64),
])
def test_each_planted_bug_diverges_where_its_bug_is(title, stage, key):
    fn, layout, features = kernels.PLANTED[title]
    report = rs.testing.check_attention(fn, layout=layout, features=features, cases=0)
    assert not report.passed
    failure = report.failures[0]
    assert (failure.divergence.stage, failure.divergence.key) == (stage, key)
    assert failure.case.shape[3] <= 2 and failure.case.shape[0] == 1    # shrunk: B=1, L<=2


def test_the_reproducer_of_a_failure_fails_and_passes_on_a_correct_kernel():
    report = rs.testing.check_attention(kernels.causal_off_by_one, features=["causal"],
                                        cases=0, name="tests.testing.kernels:causal_off_by_one")
    code = report.failures[0].reproducer
    assert "from tests.testing.kernels import causal_off_by_one as fn" in code
    with pytest.raises(AssertionError, match="output, query 0"):
        exec(compile(code, "<reproducer>", "exec"), {})
    exec(compile(code.replace("causal_off_by_one as fn", "sdpa as fn"), "<ok>", "exec"), {})


def test_a_float64_kernel_off_by_1e_9_relative_fails_on_every_normal_case():
    def off(q, k, v, **kwargs):
        return kernels.sdpa(q, k, v, **kwargs) * (1 + 1e-9)

    report = rs.testing.check_attention(off, cases=0)
    plain = report.by_feature["full"]
    assert plain.failed == plain.cases > 15           # huge scores and subnormal values too
    # Read through one-hot values, the kernel's shares sum to 1 + 1e-9.
    assert report.failures[0].divergence.stage == "normaliser"


def test_torch_sdpa_float64_passes_with_its_features_and_gradients():
    torch = pytest.importorskip("torch")

    def sdpa(q, k, v, **kwargs):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)

    report = rs.testing.check_attention(sdpa, features=["mask", "causal", "bottom_right", "gqa",
                                                        "backward"], cases=12)
    assert report.passed, str(report)
    assert report.kind == "torch" and report.by_feature["backward"].cases > 20


def test_torch_sdpa_float32_passes_and_a_kernel_rounding_scores_to_bfloat16_fails():
    torch = pytest.importorskip("torch")

    def sdpa(q, k, v, **kwargs):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)

    def coarse(q, k, v):
        scores = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).bfloat16().float()
        return torch.softmax(scores, -1) @ v

    assert rs.testing.check_attention(sdpa, dtype="float32", cases=10).passed
    report = rs.testing.check_attention(coarse, dtype=torch.float32, cases=0)
    assert not report.passed and report.dtype == "float32"


def test_the_report_reads_as_a_table_and_as_json():
    report = rs.testing.check_attention(kernels.scale_one_over_d, cases=0, name="mine")
    text = str(report)
    assert text.startswith("mine (numpy, layout sdpa, float64) against the routing_sim oracle: "
                           "FAILED (1 failures)")
    assert re.search(r"^full\s+\d+\s+\d+\s+\S+\s+\S+$", text, re.MULTILINE)
    data = report.to_json()
    assert data["passed"] is False and data["failures"][0]["stage"] == "scores"
    assert data["by_feature"]["full"]["failed"] == report.by_feature["full"].failed


@pytest.mark.parametrize("arguments, message", [
    ({"features": ["causl"]}, "unknown feature 'causl'"),
    ({"features": ["mask"], "layout": "flash"}, "takes no attn_mask"),
    ({"layout": "xla"}, "layout must be"),
    ({"features": ["backward"]}, "fn must take torch tensors"),
    ({"dtype": "bfloat16"}, "numpy has no bfloat16"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"cases": -1}, "cases must be an int >= 0"),
])
def test_bad_arguments_are_refused_by_name(arguments, message):
    with pytest.raises(InvalidArgumentError, match=message):
        rs.testing.check_attention(kernels.sdpa, **arguments)


def test_a_function_of_neither_kind_is_refused():
    with pytest.raises(InvalidArgumentError, match="numpy arrays or torch tensors"):
        rs.testing.check_attention(lambda q, k, v: "no", cases=0)


def test_assert_attention_close_checks_lse_and_gradients():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    q, k, v = (torch.tensor(rng.normal(size=(1, 2, 3, 4)), requires_grad=True)
               for _ in range(3))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    d_out = torch.ones_like(out)
    out.backward(d_out)
    rs.testing.assert_attention_close(out, q, k, v, is_causal=True, d_output=d_out,
                                      gradients=(q.grad, k.grad, v.grad))
    with pytest.raises(AssertionError, match="gradient of key"):
        rs.testing.assert_attention_close(out, q, k, v, is_causal=True, d_output=d_out,
                                          gradients=(q.grad, k.grad * 1.001, v.grad))
    qn, kn, vn = (x.detach().numpy() for x in (q, k, v))
    out, lse = kernels.sdpa(qn, kn, vn, return_lse=True)
    rs.testing.assert_attention_close((out, lse), qn, kn, vn, return_lse=True)
    with pytest.raises(AssertionError, match="lse, query 0"):
        rs.testing.assert_attention_close((out, lse + 1e-12), qn, kn, vn, return_lse=True)


def _causal_ignoring_the_flag(q, k, v, is_causal=False, scale=None):
    """Causal attention, always: its is_causal flag changes nothing."""
    return kernels.sdpa(q, k, v, is_causal=True, scale=scale)


def _flash_causal_only(q, k, v, softmax_scale=None):
    return kernels.flash(q, k, v, causal=True, softmax_scale=softmax_scale)


@pytest.mark.parametrize("fn, layout", [(kernels.causal_only, "sdpa"),
                                        (_causal_ignoring_the_flag, "sdpa"),
                                        (_flash_causal_only, "flash")])
def test_a_causal_only_kernel_is_checked_on_causal_attention_only(fn, layout):
    report = rs.testing.check_attention(fn, layout=layout, features=["causal"], cases=8)
    assert report.passed, str(report)
    assert set(report.by_feature) == {"causal"}
    # The battery's edges (tiles, huge scores, subnormals, ...) run causal too.
    assert report.by_feature["causal"].cases > 25


def test_a_causal_only_kernel_with_a_planted_bug_fails_on_a_causal_case():
    report = rs.testing.check_attention(kernels.causal_only_off_by_one, features=["causal"],
                                        cases=4,
                                        name="tests.testing.kernels:causal_only_off_by_one")
    assert not report.passed
    failure = report.failures[0]
    assert failure.case.causal == "top_left" and failure.divergence.stage == "scores"
    # The reproducer calls it without is_causal and tells the assertion the case is causal.
    assert "kwargs = dict()" in failure.reproducer
    assert "layout='sdpa', is_causal=True, **kwargs)" in failure.reproducer
    with pytest.raises(AssertionError, match="output, query 0"):
        exec(compile(failure.reproducer, "<reproducer>", "exec"), {})


def test_a_kernel_naming_full_and_causal_gets_both_and_a_plain_kernel_gets_full():
    both = rs.testing.check_attention(kernels.sdpa, features=["full", "causal"], cases=4)
    assert both.passed and both.by_feature["full"].cases > 15
    assert both.by_feature["causal"].cases > 4
    plain = rs.testing.check_attention(kernels.sdpa, features=["gqa"], cases=4)
    assert set(plain.by_feature) == {"full", "gqa"}
    # A kernel that is only causal cannot be given a full case: it fails on one.
    wrong = rs.testing.check_attention(_causal_ignoring_the_flag, features=["full"], cases=0)
    assert not wrong.passed


def test_a_feature_that_combines_with_no_named_pattern_is_said_to_get_no_case():
    report = rs.testing.check_attention(_causal_ignoring_the_flag, features=["causal", "mask"],
                                        cases=4)
    assert report.passed and report.by_feature["mask"].cases == 0
    assert any(note.startswith("mask: no case") for note in report.notes)


def test_value_dims_other_than_the_head_dim_in_both_layouts():
    for fn, layout in ((kernels.sdpa, "sdpa"), (kernels.flash, "flash")):
        report = rs.testing.check_attention(fn, layout=layout,
                                            features=["value_dim", "gqa", "causal", "full"],
                                            cases=8)
        assert report.passed, str(report)
        assert report.by_feature["value_dim"].cases >= 4

    def drops_a_value_column(q, k, v, **kwargs):      # right when Ev = E only
        return kernels.sdpa(q, k, v[..., :q.shape[-1]], **kwargs)

    assert rs.testing.check_attention(drops_a_value_column, cases=4).passed
    report = rs.testing.check_attention(drops_a_value_column, features=["value_dim"], cases=0)
    assert not report.passed and report.failures[0].what == "the call"


BACKWARD = ["full", "causal", "gqa", "softcap", "sinks", "backward"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradients_through_softcap_and_of_the_sinks_pass_for_a_correct_kernel(dtype):
    pytest.importorskip("torch")
    report = rs.testing.check_attention(kernels.torch_sdpa, features=BACKWARD, dtype=dtype,
                                        cases=8)
    assert report.passed, str(report)
    assert report.by_feature["backward"].cases > 20
    assert report.by_feature["backward"].worst_ratio < 0.5


@pytest.mark.parametrize("fn, features, what, hint", [
    (kernels.sinks_gradient_negated, ["sinks", "backward"], "gradient of sinks",
     "the oracle's with the sign flipped"),
    (kernels.softcap_slope_omitted, ["softcap", "backward"], "gradient of query", ""),
])
def test_a_planted_backward_bug_is_caught(fn, features, what, hint):
    pytest.importorskip("torch")
    report = rs.testing.check_attention(fn, features=features, cases=0)
    assert not report.passed
    failure = report.failures[0]
    assert failure.what == what and hint in failure.divergence.text
    assert failure.case.shape[0] == 1 and failure.case.shape[3] <= 2         # shrunk
    # Its forward pass is right: only the gradients fail.
    assert all(f.what.startswith("gradient") for f in report.failures)


VARLEN = ["varlen", "causal", "full", "window", "softcap", "alibi", "gqa", "lse"]


def test_a_packed_only_kernel_is_checked_on_packed_sequences_only():
    report = rs.testing.check_attention(kernels.flash_varlen, layout="flash", features=VARLEN,
                                        cases=8)
    assert report.passed, str(report)
    assert "padded" not in report.by_feature
    packed = report.by_feature["varlen"].cases
    # Every case (lse is asked of each) is packed, the battery's edges (tiles, huge
    # scores, ...) included.
    assert packed == report.by_feature["lse"].cases > 40
    # Given padded cases too, it fails their calls: it has no default for cu_seqlens.
    both = rs.testing.check_attention(kernels.flash_varlen, layout="flash",
                                      features=["padded", "varlen"], cases=0)
    assert not both.passed and both.failures[0].what == "the call"
    assert both.by_feature["padded"].failed == both.by_feature["padded"].cases > 15
    assert both.by_feature["varlen"].failed == 0


@pytest.mark.parametrize("fn, features, sequences", [
    # One sequence with a key and no query, then one with a query and no key: the query
    # reads the earlier sequence's key, which it must not.
    (kernels.varlen_reads_earlier_sequences, ["varlen"], [(0, 1), (1, 0)]),
    # Two queries on one key: bottom-right, the first reaches none; aligned on the whole
    # pack (2 queries, 2 keys) it reaches that key.
    (kernels.varlen_causal_on_the_pack, ["varlen", "causal"], [(0, 1), (2, 1)]),
])
def test_a_planted_per_sequence_bug_shrinks_to_a_minimal_packed_case(fn, features, sequences):
    name = f"tests.testing.kernels:{fn.__name__}"
    report = rs.testing.check_attention(fn, layout="flash", features=features, cases=8,
                                        name=name)
    assert not report.passed
    failure = report.failures[0]
    case = failure.case
    assert case.shape[1:3] == (1, 1) and case.shape[5:] == (1, 1)
    assert list(zip(np.diff(case.cu_seqlens[0]).tolist(),
                    np.diff(case.cu_seqlens[1]).tolist())) == sequences
    assert failure.divergence.text.endswith(
        "the route is blocked (another sequence) but the kernel gives it a share of 1"
        if fn is kernels.varlen_reads_earlier_sequences else
        "the route is blocked (causal) but the kernel gives it a share of 1")
    with pytest.raises(AssertionError, match="output, query 0"):
        exec(compile(failure.reproducer, "<reproducer>", "exec"), {})
    fixed = failure.reproducer.replace(f"{fn.__name__} as fn", "flash_varlen as fn")
    exec(compile(fixed, "<ok>", "exec"), {})


def test_a_decode_only_kernel_is_checked_on_one_query_and_a_planted_bug_is_caught():
    report = rs.testing.check_attention(kernels.decode_split_kv, features=["decode", "gqa"],
                                        cases=8)
    assert report.passed, str(report)
    assert report.by_feature["decode"].cases == report.by_feature["full"].cases > 25
    # A kernel that takes both shapes names both; this one refuses L > 1.
    both = rs.testing.check_attention(kernels.decode_split_kv, features=["padded", "decode"],
                                      cases=0)
    assert both.failures[0].what == "the call" and both.by_feature["decode"].failed == 0
    wrong = rs.testing.check_attention(kernels.decode_splits_not_rescaled,
                                       features=["decode", "gqa"], cases=8)
    failure = wrong.failures[0]
    # Right on one split of 64 keys, wrong on two: 65 keys, the first and second split.
    assert failure.case.decode and failure.case.shape == (1, 1, 1, 1, 65, 1, 1)
    assert (failure.divergence.stage, failure.divergence.key) == ("scores", 64)
