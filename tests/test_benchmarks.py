"""The benchmark harness (benchmarks/harness.py, suite.py): sides run in turns, best and
median, the noisy flag, the table, the dated block and the README's copy of it.

No test here asserts a speed: speed targets live in the benchmark's own table.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.benchmarks import suite
from routing_sim.benchmarks.harness import (
    BEGIN,
    COLUMNS,
    END,
    MIN_PUBLISHED,
    Row,
    Timing,
    block,
    header_cells,
    interleave,
    table,
    with_small_pages,
)
from routing_sim.cli import main as cli_main
from routing_sim.engines.pages import huge_pages_advised

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """A clock that moves only while a side runs, by that run's own duration; it logs
    every reading and every run."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[object] = []

    def __call__(self) -> float:
        self.log.append(("clock", self.now))
        return self.now

    def side(self, name: str, durations: list[float]):
        runs = iter(durations)

        def run() -> str:
            self.log.append(name)
            self.now += next(runs)
            return name
        return run


def test_sides_run_in_turns_and_each_run_is_timed_alone():
    durations = {"sim": [3.0, 1.0, 2.0], "ref": [10.0, 30.0, 20.0], "default": [5.0, 5.0, 6.0]}
    clock = FakeClock()
    timings, results = interleave([clock.side(name, runs) for name, runs in durations.items()],
                                  3, clock=clock)
    expected, now = [], 0.0
    for repeat in range(3):
        for name, runs in durations.items():
            expected += [("clock", now), name, ("clock", now + runs[repeat])]
            now += runs[repeat]
    assert clock.log == expected
    assert [timing.times for timing in timings] == [tuple(runs) for runs in durations.values()]
    assert results == ["sim", "ref", "default"]


@given(st.lists(st.floats(1e-6, 1e3), min_size=1, max_size=15))
def test_best_is_the_fastest_run_and_median_the_middle_one(times):
    timing = Timing(tuple(times))
    ordered, middle = sorted(times), len(times) // 2
    median = ordered[middle] if len(times) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    assert timing.best == ordered[0]
    assert timing.median == median


def test_scaling_a_timing_scales_every_run():
    assert Timing((2.0, 4.0, 8.0)).scaled(0.25) == Timing((0.5, 1.0, 2.0))


@pytest.mark.parametrize(("sim", "ref", "default", "notes"), [
    ((1.0, 2.0, 2.0), (1.0, 1.0, 1.0), None, "n=8"),                   # exactly 2x: not noisy
    ((1.0, 2.5, 3.0), (1.0, 1.0, 1.0), None, "noisy: simulate median 2.5x best; n=8"),
    ((1.0, 1.0, 1.0), (0.1, 0.31, 0.5), None, "noisy: numpy median 3.1x best; n=8"),
    ((1.0, 3.0, 3.0), (1.0, 1.0, 1.0), (1.0, 4.0, 4.0),
     "noisy: simulate median 3.0x best; noisy: numpy default median 4.0x best; n=8"),
])
def test_a_side_whose_median_passes_twice_its_best_is_flagged(sim, ref, default, notes):
    row = Row("full n=8 h=1", Timing(sim), Timing(ref), "numpy",
              None if default is None else Timing(default), note="n=8")
    assert row.notes() == notes


def test_the_table_has_the_columns_and_each_cell_from_its_own_timing():
    row = Row("full n=8 h=1", Timing((0.2, 0.4, 0.3)), Timing((0.1, 0.1, 0.2)), "numpy",
              Timing((0.05, 0.06, 0.05)), messages=256, rss=54.4, note="n=8")
    skipped = Row("full n=9 h=1", note="skipped: too big")
    lines = table([row, skipped]).splitlines()
    assert header_cells(lines[0]) == list(COLUMNS)
    assert set(lines[1]) == {"|", "-"} and lines[1].count("|") == len(COLUMNS) + 1
    assert dict(zip(COLUMNS, header_cells(lines[2]))) == {
        "case": "full n=8 h=1", "runs": "3", "simulate best": "0.200 s",
        "simulate median": "0.300 s", "reference": "numpy", "reference best": "0.100 s",
        "reference median": "0.100 s", "ratio best": "2.00x", "ratio median": "3.00x",
        "numpy default best": "50.00 ms", "ratio to default": "4.00x", "messages": "256",
        "messages/s": "1,280", "peak RSS": "54 MB", "notes": "n=8"}
    assert header_cells(lines[3]) == ["full n=9 h=1"] + ["-"] * (len(COLUMNS) - 2) + [
        "skipped: too big"]


def test_the_block_is_dated_and_says_where_and_how_it_was_measured():
    rows = [Row("x", Timing((1.0,) * 5), Timing((0.5,) * 5), "numpy", messages=4)]
    text = block([("Dense", rows), ("Sparse", rows)], 5, "python -m benchmarks --markdown",
                 754.4, (1.25, 3.5), note="busy machine",
                 now=datetime.datetime(2026, 12, 7, 6, 30))
    lines = text.splitlines()
    assert lines[:2] == [BEGIN, "- Measured 2026-12-07 06:30 UTC by `python -m benchmarks "
                                "--markdown` (12 min 34 s in all; load average 1.2 at the "
                                "start, 3.5 at the end)."]
    assert lines[2].startswith("- Machine: ") and " cores (" in lines[2]
    assert "numpy " in lines[2] and "BLAS " in lines[2] and "; Python 3." in lines[2]
    assert lines[3].startswith("- Method: every row is the best and the median of 5 runs")
    assert lines[4:8] == ["- Notes: busy machine", "", "**Dense**", ""]
    assert lines[8:11] == table(rows).splitlines()
    assert lines[11:14] == ["", "**Sparse**", ""]
    assert lines[-1] == END
    assert "- Notes:" not in block([("Dense", rows)], 5, "c", 1.0, (0.0, 0.0))


@pytest.mark.skipif("NUMPY_MADVISE_HUGEPAGE" in os.environ,
                    reason="the user's page setting: small_pages leaves it alone")
def test_a_dense_row_runs_simulate_numpy_and_numpy_default_in_turns(monkeypatch):
    default = huge_pages_advised()
    log = []

    def simulate(q, k, v, **options):
        log.append("simulate")
        return SimpleNamespace(stats=SimpleNamespace(total_messages=4 * q.shape[-2] ** 2))

    def plain_numpy(q, k, v):
        log.append(("numpy", huge_pages_advised()))

    monkeypatch.setattr(rs, "simulate", simulate)
    monkeypatch.setattr(suite, "plain_numpy", plain_numpy)
    row = suite.full_row(8, 1, None, "full n=8 h=1", 3)
    assert log == ["simulate", ("numpy", False), ("numpy", default)] * 3
    assert huge_pages_advised() == default
    assert (row.reference_name, row.messages, row.rss) == ("numpy", 256, None)
    assert [len(t.times) for t in (row.simulate, row.reference, row.default)] == [3, 3, 3]


def test_small_pages_wraps_a_side_and_leaves_the_next_one_alone():
    default = huge_pages_advised()
    _, results = interleave([with_small_pages(huge_pages_advised), huge_pages_advised], 2)
    expected = default if "NUMPY_MADVISE_HUGEPAGE" in os.environ else False
    assert results == [expected, default]


@pytest.mark.parametrize(("argv", "message"), [
    (["--repeats", "2"], "--repeats must be at least 3"),
    (["--markdown", "--repeats", "4"], "--repeats >= 5 (got 4)"),
    (["--markdown", "--quick"], "(got 3, --quick)"),
    (["--only", "no such row"], "--only 'no such row' matches no row"),
    (["--only", "("], "--only '(' is not a regular expression"),
])
def test_bad_options_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        suite.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_routing_sim_bench_refuses_in_one_line(capsys):
    assert cli_main(["bench", "--repeats", "1"]) == 1
    err = capsys.readouterr().err
    assert err == "routing-sim: error: --repeats must be at least 3 (a best and a median of " \
                  "fewer say little), got 1\n"


def test_only_runs_the_matching_rows(capsys):
    assert suite.main(["--quick", "--no-rss", "--only", "latency 0 two_phase"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["Dense: the full graph and the slower modes", ""]
    assert header_cells(lines[2]) == list(COLUMNS) and len(lines) == 5
    cells = dict(zip(COLUMNS, header_cells(lines[4])))
    assert (cells["case"], cells["runs"], cells["reference"]) == (
        "latency 0 two_phase 45x150", "3", "latency 1")


def readme_block() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[text.index(BEGIN):text.index(END) + len(END)].splitlines()


def seconds_of(cell: str) -> float:
    number, unit = cell.split()
    return float(number) / (1e3 if unit == "ms" else 1)


def test_readme_performance_holds_the_commands_block():
    lines = readme_block()
    assert re.fullmatch(r"- Measured \d{4}-\d\d-\d\d \d\d:\d\d UTC by `python -m benchmarks "
                        r"--markdown` \(\d+ min \d+ s in all; load average [\d.]+ at the "
                        r"start, [\d.]+ at the end\)\.", lines[1]), lines[1]
    assert lines[2].startswith("- Machine: ") and lines[3].startswith(
        f"- Method: every row is the best and the median of {MIN_PUBLISHED} runs")
    sections = suite.sections(quick=False, rss=False)
    assert [line.strip("*") for line in lines if line.startswith("**")] == [
        title for title, _ in sections]
    headers = [header_cells(line) for line in lines if line.startswith("| case ")]
    assert headers == [list(COLUMNS)] * len(sections)
    rows = [header_cells(line) for line in lines
            if line.startswith("| ") and not line.startswith("| case ")]
    assert all(len(cells) == len(COLUMNS) for cells in rows)
    if importlib.util.find_spec("transformers") is not None:
        assert [cells[0] for cells in rows] == [case.name for _, cases in sections
                                                for case in cases]
    for cells in rows:
        row = dict(zip(COLUMNS, cells))
        if row["runs"] == "-":
            continue
        assert int(row["runs"]) >= MIN_PUBLISHED
        for side, name in (("simulate", "simulate"), ("reference", row["reference"])):
            spread = seconds_of(row[f"{side} median"]) / seconds_of(row[f"{side} best"])
            if abs(spread - 2) > 0.02:                 # the cells are rounded for display
                assert (f"noisy: {name} median" in row["notes"]) == (spread > 2), row



def test_a_dense_row_runs_only_where_the_memory_budget_lets_simulate_start(monkeypatch):
    assert suite.fits_in_memory(8, 1)

    def refuse(*args, **kwargs):
        raise rs.MemoryBudgetError("simulate would need more than is available")

    monkeypatch.setattr(rs.budget, "check_simulation", refuse)
    assert not suite.fits_in_memory(8, 1)
