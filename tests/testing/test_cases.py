"""The battery and the shrinking: cases use only the chosen features, every feature has
its edges, and every smaller case is a valid, smaller case."""

from __future__ import annotations

import numpy as np
import pytest

from routing_sim.errors import InvalidArgumentError
from routing_sim.testing.cases import (
    FEATURES,
    OUTPUTS,
    SHAPES,
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
    assert all(case.features(layout) == {"full", "padded"} for case in plain)
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

    for case in battery(check_features("sinks, mask", "sdpa"), "sdpa", dtype):
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
            # A shape stays: padded, packed and decode cases shrink to their own kind.
            assert candidate.features("sdpa") & SHAPES == case.features("sdpa") & SHAPES


def test_shrinking_a_gqa_case_keeps_the_head_mapping():
    case = next(c for c in battery(check_features("gqa", "sdpa"), "sdpa", "float64")
                if c.shape[1:3] == (6, 3))
    for candidate in smaller(case):
        heads, kv_heads = candidate.shape[1:3]
        assert heads % kv_heads == 0


def test_features_are_checked_by_name_and_combined_as_a_layout_allows():
    assert check_features("causal,gqa", "flash") == {"causal", "gqa", "padded"}
    with pytest.raises(InvalidArgumentError, match="'bottom_right' is not in layout 'flash'"):
        check_features(["bottom_right"], "flash")
    assert compatible({"window", "causal"}, "sdpa") == {"causal"}
    assert compatible({"window", "causal"}, "flash") == {"window", "causal"}
    assert compatible({"varlen", "mask"}, "sdpa", first=["varlen"]) == {"varlen"}
    assert check_features("varlen", "flash") == {"varlen", "full"}      # no padded implied
    with pytest.raises(InvalidArgumentError, match="no case takes a shape named"):
        check_features("varlen, bottom_right", "sdpa")


def test_describe_names_the_shape_and_the_options():
    case = Case(np.zeros((1, 2, 3, 4)), np.zeros((1, 1, 5, 4)), np.zeros((1, 1, 5, 4)),
                causal="bottom_right", window=(2, 0), scale=0.5)
    assert case.describe() == ("B=1 Hq=2 Hkv=1 L=3 S=5 E=4 Ev=4 float64, scale=0.5, causal "
                               "(bottom-right), window_size=(2, 0)")
    assert case.features("sdpa") == {"gqa", "bottom_right", "window", "padded"}
    assert case.features("flash") == {"gqa", "causal", "window", "padded"}
    with pytest.raises(InvalidArgumentError, match="a decode case has one query"):
        Case(np.zeros((1, 1, 2, 4)), np.zeros((1, 1, 5, 4)), np.zeros((1, 1, 5, 4)),
             decode=True)


def _sequences(case):
    """The ``(queries, keys)`` lengths of a packed case's sequences."""
    return list(zip(np.diff(case.cu_seqlens[0]).tolist(), np.diff(case.cu_seqlens[1]).tolist()))


@pytest.mark.parametrize("layout", ["sdpa", "flash"])
def test_a_packed_only_battery_packs_every_edge(layout):
    chosen = check_features("varlen, causal, gqa, sinks", layout)
    cases = battery(chosen, layout, "float64")
    assert all(case.features(layout) & SHAPES == {"varlen"} for case in cases)
    labels = {case.label: case for case in cases}
    # The plain battery's edges, packed after a sequence of 2 queries and 3 keys: the
    # tiles, the empty causal rows of L > S, the huge scores.
    for n in (63, 64, 65, 127, 128, 129, 257):
        assert _sequences(labels[f"{n} keys (tiles of 64 and 128), packed, causal"]) == \
            [(2, 3), (2, n)]
    assert _sequences(labels["causal, L > S: empty rows, packed"]) == [(2, 3), (7, 3)]
    huge = labels["huge scores, packed, causal"]
    assert np.abs(huge.query[:, :, 2:]).max() > 10 * np.abs(huge.query[:, :, :2]).max()
    assert all(case.causal in (None, "bottom_right") for case in cases)
    # Its own edges: empty sequences, lengths past the tiles, unequal lengths.
    lengths = [pair for case in cases for pair in _sequences(case)]
    assert (0, 4) in lengths and (2, 0) in lengths and (70, 65) in lengths
    assert sum(L != S for L, S in lengths) > len(cases)


def test_a_decode_only_battery_has_one_query_with_keys_across_the_edges():
    cases = battery(check_features("decode, gqa, mask", "sdpa"), "sdpa", "float64")
    assert all(case.decode and case.shape[3] == 1 for case in cases)
    assert {63, 64, 65, 127, 128, 129, 257, 300} <= {case.shape[4] for case in cases}
    assert any("mask" in case.features("sdpa") for case in cases)
    both = battery(check_features("padded, decode", "sdpa"), "sdpa", "float64")
    assert {case.decode for case in both} == {True, False}


def test_a_packed_case_shrinks_to_shorter_and_fewer_sequences():
    case = next(c for c in battery(check_features("varlen", "sdpa"), "sdpa", "float64")
                if c.label == "varlen, three sequences")
    shrunk = [_sequences(candidate) for candidate in smaller(case)]
    assert [(3, 2), (5, 2)] in shrunk                     # one sequence left out
    assert [(0, 2), (1, 5), (5, 2)] in shrunk              # one cut to no query
    assert [(3, 2), (1, 1), (5, 2)] in shrunk              # one cut to one key
    for candidate in smaller(case):
        expect(candidate)
        assert candidate.cu_seqlens[0][-1] == candidate.shape[3]
        assert candidate.cu_seqlens[1][-1] == candidate.shape[4]
