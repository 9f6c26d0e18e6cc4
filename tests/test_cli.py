"""The routing-sim command: demo output, help, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.cli import main
from routing_sim.demo import SENTENCE


def test_demo_prints_tables_counts_and_verdict(capsys):
    assert main(["demo"]) == 0
    text = capsys.readouterr().out
    assert text.count("routing table of token") == len(SENTENCE)
    n_routes = len(SENTENCE) * (len(SENTENCE) + 1) // 2
    for kind in ("QUERY", "SCORE", "PULL", "VALUE"):
        assert f"{kind:<6} {n_routes:>10,}" in text
    assert "max abs difference from matrix attention" in text
    assert text.rstrip().endswith("bit-identical across both delivery schedules: yes")


def test_demo_shares_match_matrix_attention(capsys):
    main(["demo", "--seed", "3"])
    text = capsys.readouterr().out
    first_table = text.split("routing table of token 'cat' (#1)\n")[1].split("\n  2 routes")[0]
    shares = sorted(float(line.split(":")[1].split()[0]) for line in first_table.splitlines())
    assert abs(sum(shares) - 1) < 0.011 and len(shares) == 2


def test_bad_option_is_one_line_and_nonzero():
    result = subprocess.run([sys.executable, "-m", "routing_sim.cli", "demo", "--jitter", "-1"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "expected a finite number >= 0, got '-1'" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert "usage: routing-sim" in capsys.readouterr().out


def test_library_errors_become_one_line(monkeypatch, capsys):
    def broken(**_):
        rs.simulate(np.ones((2, 2)), np.ones((3, 3)), np.ones((3, 1)))

    monkeypatch.setattr("routing_sim.demo.demo", broken)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("routing-sim: error: query has E = 2") and err.count("\n") == 1
