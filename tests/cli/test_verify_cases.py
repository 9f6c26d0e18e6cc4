"""The random cases of routing-sim verify: reproducible, restricted as asked, and a broken
simulator (off outputs, off routing tables, schedule-dependent bits, a crash) fails them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from routing_sim import RouteSet
from routing_sim.cli import verify_cases
from routing_sim.cli.verify_cases import check_case, random_case
from routing_sim.options import PATTERN_NAMES


def same_case(first, second) -> bool:
    (arrays, options, text), (arrays2, options2, text2) = first, second
    graphs = [o.pop("graph", None) for o in (options, options2)]
    return (text == text2 and all(np.array_equal(a, b) for a, b in zip(arrays, arrays2))
            and (graphs[0] is None) == (graphs[1] is None)
            and (graphs[0] is None or np.array_equal(graphs[0].to_mask(), graphs[1].to_mask()))
            and repr(options) == repr(options2))


@pytest.mark.parametrize("pattern", [None, "any", "full", *PATTERN_NAMES])
def test_a_seed_rebuilds_its_case_exactly(pattern):
    for seed in (0, 7, 118):
        assert same_case(random_case(seed, pattern), random_case(seed, pattern))


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_a_pattern_restriction_draws_only_that_pattern(name):
    for seed in range(6):
        (q, k, _), options, text = random_case(seed, name)
        assert text.startswith(f"{name}(") and isinstance(options["graph"], RouteSet)
        assert q.shape[-2] == k.shape[-2] == options["graph"].to_mask().shape[-1]


def test_the_default_mix_is_the_union_of_its_restrictions():
    kinds = set()
    for seed in range(30):
        case = random_case(seed)
        sparse = "graph" in case[1]
        kinds.add(sparse)
        name = case[2].split("(")[0] if sparse else "full"
        assert same_case(random_case(seed), random_case(seed, name))
        if sparse:
            assert same_case(random_case(seed), random_case(seed, "any"))
    assert kinds == {True, False}


def test_pattern_cases_with_mods_pass():
    descriptions = []
    for seed in range(60):
        result = check_case(seed, "any")
        assert result.passed, result
        descriptions.append(result.description)
    text = " ".join(descriptions)
    for drawn in ("softcap(", "alibi(", "relative_bias(", "mask_mod=per_head",
                  "mask_mod=near", "mask_mod=per_batch", *PATTERN_NAMES):
        assert drawn in text, drawn


def broken(monkeypatch, change):
    """Make verify_cases.simulate return ``change(run, call)`` for its ``call``-th call."""
    real, calls = verify_cases.simulate, []

    def simulate(*args, **options):
        calls.append(None)
        return change(real(*args, **options), len(calls))

    monkeypatch.setattr(verify_cases, "simulate", simulate)


def nudged(array, by):
    array = array.copy()
    array.flat[array.size // 2] += by
    return array


@pytest.mark.parametrize("seed", [1, 2, 4])
def test_an_output_off_by_1e_9_fails_a_pattern_case(monkeypatch, seed):
    broken(monkeypatch, lambda run, _: SimpleNamespace(output=nudged(run.output, 1e-9),
                                                        weights=run.weights))
    result = check_case(seed, "any")
    assert not result.passed and result.error_ratio > 1 and "(" in result.description


def test_a_routing_table_off_by_1e_9_fails_a_pattern_case(monkeypatch):
    broken(monkeypatch, lambda run, _: SimpleNamespace(output=run.output,
                                                        weights=nudged(run.weights, 1e-9)))
    result = check_case(3, "bigbird")
    assert not result.passed and result.error_ratio > 1


def test_bits_that_depend_on_the_schedule_fail(monkeypatch):
    def second_differs(run, call):
        tiny = np.spacing(np.abs(run.output).max()) if call == 2 else 0.0
        return SimpleNamespace(output=nudged(run.output, tiny), weights=run.weights)

    broken(monkeypatch, second_differs)
    result = check_case(5, "sliding_window")
    assert result.error_ratio <= 1 and not result.bit_identical and not result.passed


def test_a_simulator_that_raises_fails_the_case_with_its_message(monkeypatch):
    def crash(run, _):
        raise IndexError("planted")

    broken(monkeypatch, crash)
    result = check_case(0, "document")
    assert not result.passed and result.error == "IndexError: planted"
