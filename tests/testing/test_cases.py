"""The battery and the shrinking: cases use only the chosen features, every feature has
its edges, and every smaller case is a valid, smaller case."""

from __future__ import annotations

import numpy as np
import pytest

from routing_sim.errors import InvalidArgumentError
from routing_sim.testing.cases import (
    FEATURES,
    OUTPUTS,
    Case,
    battery,
    check_features,
    compatible,
    smaller,
)
from routing_sim.testing.oracle import expect

SDPA = frozenset(f for f in FEATURES if f != "backward")
FLASH = SDPA - {"mask", "bottom_right"}


@pytest.mark.parametrize("layout, chosen", [("sdpa", SDPA), ("flash", FLASH)])
def test_the_battery_uses_only_chosen_features_and_covers_each(layout, chosen):
    cases = battery(chosen, layout, "float64")
    used = [case.features(layout) for case in cases]
    assert all(features <= chosen for features in used)
    assert set().union(*used) == chosen
    assert all(case.lse for case in cases)
    plain = battery(check_features((), layout), layout, "float64")
    assert all(case.features(layout) == {"full"} for case in plain)
    edges = {case.shape[4] for case in plain}
    assert {63, 64, 65, 127, 128, 129, 257} <= edges          # rows past tiles of 64, 128
    assert any(case.shape[3] == 1 for case in plain)           # the decode shape


def test_the_battery_reaches_the_edges_it_names():
    cases = {case.label: case for case in battery(SDPA, "sdpa", "float64")}
    scores = {label: expect(case).scores for label, case in cases.items()}
    assert np.abs(scores["huge scores"][np.isfinite(scores["huge scores"])]).max() > 1e3
    assert scores["every score far below zero"].max() < -745          # exp underflows
    subnormal = cases["subnormal queries, keys and values"]
    assert 0 < np.abs(subnormal.value).max() < np.finfo(np.float64).smallest_normal
    empty = expect(cases["bool mask with an empty row"])
    assert (np.isneginf(empty.scores).all(-1)).any()
    ratios = {c.shape[1] // c.shape[2] for c in cases.values() if "gqa" in c.features("sdpa")}
    assert ratios == {2, 3, 4}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_a_case_holds_values_its_dtype_holds(dtype):
    from routing_sim.testing.precision import round_to

    for case in battery(frozenset({"full", "sinks", "mask"}), "sdpa", dtype):
        for array in (case.query, case.key, case.value, case.sinks):
            if array is not None:
                np.testing.assert_array_equal(round_to(array, dtype), array)
        assert np.isfinite(case.query).all()


def test_every_smaller_case_is_valid_and_smaller():
    for case in battery(SDPA, "sdpa", "float64")[::5]:
        size = np.prod(case.shape)
        for candidate in smaller(case):
            expect(candidate)                      # the oracle takes it
            assert np.prod(candidate.shape) <= size
            # Dropping a restriction leaves full attention, cutting one head dim Ev != E:
            # the checker shrinks through them only for a kernel that names them.
            assert candidate.features("sdpa") - OUTPUTS <= \
                case.features("sdpa") | {"full", "value_dim"}


def test_shrinking_a_gqa_case_keeps_the_head_mapping():
    case = next(c for c in battery(frozenset({"full", "gqa"}), "sdpa", "float64")
                if c.shape[1:3] == (6, 3))
    for candidate in smaller(case):
        heads, kv_heads = candidate.shape[1:3]
        assert heads % kv_heads == 0


def test_features_are_checked_by_name_and_combined_as_a_layout_allows():
    assert check_features("causal,gqa", "flash") == {"causal", "gqa"}
    with pytest.raises(InvalidArgumentError, match="'bottom_right' is not in layout 'flash'"):
        check_features(["bottom_right"], "flash")
    assert compatible({"window", "causal"}, "sdpa") == {"causal"}
    assert compatible({"window", "causal"}, "flash") == {"window", "causal"}
    assert compatible({"varlen", "mask"}, "sdpa", first=["varlen"]) == {"varlen"}


def test_describe_names_the_shape_and_the_options():
    case = Case(np.zeros((1, 2, 3, 4)), np.zeros((1, 1, 5, 4)), np.zeros((1, 1, 5, 4)),
                causal="bottom_right", window=(2, 0), scale=0.5)
    assert case.describe() == ("B=1 Hq=2 Hkv=1 L=3 S=5 E=4 Ev=4 float64, scale=0.5, causal "
                               "(bottom-right), window_size=(2, 0)")
    assert case.features("sdpa") == {"gqa", "bottom_right", "window"}
    assert case.features("flash") == {"gqa", "causal", "window"}
