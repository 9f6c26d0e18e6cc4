"""The routing-sim command: demo output, help, and one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.cli import main
from routing_sim.cli.demo import SENTENCE


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


@pytest.mark.parametrize("jitter", ["1e200", "1e-9"])
def test_demo_prints_readable_times_at_any_jitter(jitter, capsys):
    assert main(["demo", "--jitter", jitter]) == 0
    times = re.findall(r"t=(\S+?)[,)]?(?:\s|$)", capsys.readouterr().out)
    assert len(times) > 2 * len(SENTENCE)
    assert all(len(time) <= 12 for time in times), max(times, key=len)
    if jitter == "1e200":
        assert any("e+" in time for time in times)


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

    monkeypatch.setattr("routing_sim.cli.demo.demo", broken)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("routing-sim: error: query has E = 2") and err.count("\n") == 1


def test_list_names_every_scenario(capsys):
    from routing_sim import scenarios

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, summary in scenarios.available().items():
        assert name in out and summary in out


def test_run_prints_the_scenario(capsys):
    assert main(["run", "routing_table"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(within the float tolerance)")
    assert main(["run", "nope"]) == 1
    assert "no scenario 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, name", [("perfetto", "t.json"), ("jsonl", "t.jsonl"),
                                       ("csv", "t.csv")])
def test_trace_writes_files(tmp_path, capsys, fmt, name):
    path = tmp_path / name
    assert main(["trace", "--format", fmt, "-o", str(path), "--tokens", "a b c",
                 "--loss", "0.2"]) == 0
    assert path.stat().st_size > 100 and f"wrote {path}" in capsys.readouterr().out


def test_trace_mermaid_to_stdout(capsys):
    assert main(["trace", "--format", "mermaid", "--tokens", "a b", "--causal"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sequenceDiagram") and out.count("QUERY") == 3


def test_plot_writes_an_image(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["plot", "--kind", "graph", "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", "-o", str(tmp_path / "g.gif")]) == 1
    assert ".png or .svg" in capsys.readouterr().err


def test_verify_sweep_passes_and_prints_a_table(capsys):
    assert main(["verify", "--cases", "12"]) == 0
    out = capsys.readouterr().out
    assert "cases                       12" in out and "failures                    0" in out


def test_verify_reports_a_broken_pattern_case_with_a_reproducer(monkeypatch, capsys):
    from routing_sim.cli import verify_cases

    real = verify_cases.simulate

    def off_by_a_little(*args, **options):     # a simulator one output entry off by 1e-9
        run = real(*args, **options)
        output = run.output.copy()
        output.flat[-1] += 1e-9
        return SimpleNamespace(output=output, weights=run.weights)

    monkeypatch.setattr(verify_cases, "simulate", off_by_a_little)
    assert main(["verify", "--cases", "2", "--seed", "5", "--pattern", "longformer"]) == 1
    failures = [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line]
    assert len(failures) == 2 and all("  FAIL longformer(" in line for line in failures)
    assert failures[0].endswith("reproduce with: routing-sim verify --only 5 --pattern longformer")
    # The reproducer rebuilds the same case: the same line again.
    assert main(["verify", "--only", "5", "--pattern", "longformer"]) == 1
    assert [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line] == \
        failures[:1]


def test_verify_pattern_any_runs_only_pattern_cases(monkeypatch, capsys):
    from routing_sim.cli import verify_cases

    drawn = []

    def record(seed, pattern):
        drawn.append(verify_cases.random_case(seed, pattern)[2])
        return verify_cases.CaseResult(seed, drawn[-1], 0.5, True, True)

    monkeypatch.setattr(verify_cases, "check_case", record)
    assert main(["verify", "--cases", "12", "--pattern", "any"]) == 0
    names = {text.split("(")[0] for text in drawn}
    assert len(drawn) == 12 and names <= set(rs.patterns.__all__) and len(names) > 2


def test_verify_refuses_an_unknown_pattern(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--pattern", "window"])
    assert exit_.value.code == 2
    assert "invalid choice: 'window'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["list", "run", "trace", "plot", "verify", "bench"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: routing-sim {command}" in capsys.readouterr().out


def one_line_error(capsys) -> str:
    """The whole stderr of a failed command: one line, no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("routing-sim: error: "), err
    return err


@pytest.mark.parametrize("argv", [["plot", "-o", "/nonexistent/x.png"],
                                  ["trace", "-o", "/nonexistent/t.json"],
                                  ["trace", "--format", "mermaid", "-o", "/nonexistent/m.md"],
                                  ["trace", "--format", "csv", "-o", "/nonexistent/t.csv"]])
def test_unwritable_output_is_one_line(argv, capsys):
    assert main(argv) == 1
    assert "/nonexistent/" in one_line_error(capsys)


def test_output_that_is_a_directory_is_one_line(tmp_path, capsys):
    assert main(["trace", "--format", "jsonl", "-o", str(tmp_path)]) == 1
    assert str(tmp_path) in one_line_error(capsys)


@pytest.mark.parametrize("option", [["--query", "99"], ["--query", "-1"]])
def test_mermaid_query_out_of_range_is_an_error(option, capsys):
    assert main(["trace", "--format", "mermaid", *option]) == 1
    assert "query must be a query token in 0 .. 5" in one_line_error(capsys)


def test_trace_mermaid_fenced(capsys):
    assert main(["trace", "--format", "mermaid", "--query", "1", "--fenced"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("```mermaid\nsequenceDiagram\n") and text.endswith("\n```\n")


def test_run_passes_an_image_name_to_the_scenario(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra draws the loss curve")
    image = tmp_path / "curve.png"
    assert main(["run", "learning_to_route", str(image)]) == 0
    assert f"saved {image}" in capsys.readouterr().out
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_refuses_arguments_a_scenario_does_not_take(capsys):
    assert main(["run", "routing_table", "x.png"]) == 1
    assert "scenario routing_table takes no argument 'x.png'" in one_line_error(capsys)


@pytest.mark.parametrize("command", ["trace", "plot", "demo", "verify", "replay"])
def test_negative_seed_is_refused_while_parsing(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--seed", "-1"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "argument --seed: expected a seed >= 0, got '-1'" in error
    assert "Traceback" not in error


def test_negative_retries_are_refused_while_parsing(capsys):
    with pytest.raises(SystemExit):
        main(["trace", "--retries", "-1"])
    assert "argument --retries: expected a whole number >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "perfetto"])
def test_trace_into_a_directory_names_a_file_instead(fmt, tmp_path, capsys):
    assert main(["trace", "--format", fmt, "-o", str(tmp_path)]) == 1
    assert f"--output {tmp_path} is a directory" in one_line_error(capsys)


def test_huge_sizes_are_refused_before_allocating(capsys):
    assert main(["trace", "--heads", "100000", "--dim", "100000"]) == 1
    assert "--heads 100000 × 6 tokens × --dim 100000 needs about" in one_line_error(capsys)


def test_trace_with_the_plain_engine(tmp_path, capsys):
    """--engine plain writes the same message times as the fast engine; refusals are one line."""
    columns = []
    for engine in ("fast", "plain"):
        path = tmp_path / f"{engine}.csv"
        assert main(["trace", "--format", "csv", "-o", str(path), "--tokens", "a b c",
                     "--engine", engine]) == 0
        columns.append([line.split(",")[:8] for line in path.read_text().splitlines()])
    assert columns[0] == columns[1]
    capsys.readouterr()
    assert main(["trace", "--engine", "plain", "--loss", "0.1"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("routing-sim: error: engine='plain'") and error.count("\n") == 1
