"""routing-sim sweep: grids from the command line, CSV and JSON Lines, one-line errors."""

from __future__ import annotations

import csv
import json

import pytest

from routing_sim import sweep
from routing_sim.cli import main
from routing_sim.parallel import measure


def test_csv_holds_one_row_per_point_equal_to_the_library_sweep(tmp_path, capsys):
    path = tmp_path / "sweep.csv"
    assert main(["sweep", "context_parallel", "-g", "strategy=ring,allgather",
                 "-g", "devices=2,4", "-g", "tokens=16", "-o", str(path)]) == 0
    assert capsys.readouterr().out == f"wrote 4 records to {path}\n"
    rows = list(csv.DictReader(path.read_text().splitlines()))
    expected = sweep(measure, {"strategy": ["ring", "allgather"], "devices": [2, 4],
                               "tokens": [16]})
    assert [(r["strategy"], int(r["devices"]), float(r["makespan"])) for r in rows] == \
        [(e["strategy"], e["devices"], e["makespan"]) for e in expected]


def test_jsonl_to_stdout(capsys):
    assert main(["sweep", "routing_sim.parallel:measure", "-g", "strategy=tree",
                 "-g", "devices=2,3", "-g", "tokens=12", "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["devices"] for r in records] == [2, 3]
    assert all(r["max_relative_error"] < 1e-12 for r in records)


@pytest.mark.parametrize("argv, message", [
    (["sweep", "context_parallel"], "at least one --grid"),
    (["sweep", "context_parallel", "-g", "devices"], "NAME=V1,V2"),
    (["sweep", "context_parallel", "-g", "colour=red"], "does not fit context_parallel"),
    (["sweep", "nope", "-g", "x=1"], "no scenario 'nope'"),
    (["sweep", "routing_sim:nothing", "-g", "x=1"], "cannot find"),
    (["sweep", "routing_table", "-g", "x=1"], "no point"),
    (["sweep", "context_parallel", "-g", "devices=0"], "devices must be an integer >= 1"),
])
def test_misuse_is_a_one_line_error(argv, message, capsys):
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("routing-sim: error: ") and message in error
    assert error.count("\n") == 1
