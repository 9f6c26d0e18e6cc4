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
from routing_sim.cli.tour import lesson_of


def test_demo_prints_tables_counts_and_verdict(capsys):
    assert main(["demo"]) == 0
    text = capsys.readouterr().out
    assert text.count("routing table of token") == len(SENTENCE)
    n_routes = len(SENTENCE) * (len(SENTENCE) + 1) // 2
    for kind in ("QUERY", "SCORE", "PULL", "VALUE"):
        assert f"{kind:<6} {n_routes:>10,}" in text
    assert "max abs difference from matrix attention" in text
    assert "verdict: EQUAL to matrix attention (within the float tolerance); bit-identical " \
           "across both delivery schedules: yes\n" in text
    assert "random vectors named after words: the shares show the mechanism, not English" \
        in text.splitlines()[4]
    # The last lines say what to run next: the tour, and lesson 2's command.
    assert text.splitlines()[-2].startswith("next: `routing-sim tour` walks the idea")
    assert text.splitlines()[-1].strip() == lesson_of(2).command


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


def test_list_groups_the_scenarios_under_the_tour_lessons_in_order(capsys):
    from routing_sim import scenarios
    from routing_sim.cli.tour import LESSONS

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    headings = [line for line in lines if line[:1].isdigit()]
    assert headings == [f"{lesson.number}. {lesson.en.title}" for lesson in LESSONS]
    under, lesson = {}, None                         # scenario -> the heading above it
    for line in lines:
        if line[:1].isdigit():
            lesson = int(line.split(".")[0])
        elif line.startswith("   ") and line.split()[0] in scenarios.available():
            under[line.split()[0]] = lesson
    assert set(under) == set(scenarios.available())
    assert under["routing_table"] == 3 and under["soft_vs_hard"] == 5
    assert under["self_vs_cross"] == 6 and under["learning_to_route"] == 8
    assert under["heads_specialise"] == under["multi_head"] == 7
    assert under["ring_attention"] == 11 and under["network_chaos"] == 10
    # Lesson 1 has no scenario: the list shows its command (the demo).
    assert lines[lines.index("1. A token is a node") + 1] == "   routing-sim demo"


def test_tour_prints_every_lesson_or_one(capsys):
    from routing_sim.cli.tour import LESSONS

    assert main(["tour"]) == 0
    text = capsys.readouterr().out
    assert [line for line in text.splitlines() if line.startswith("Lesson ")] == \
        [f"Lesson {n} of 11: {lesson.en.title}" for n, lesson in enumerate(LESSONS, 1)]
    assert main(["tour", "9"]) == 0
    one = capsys.readouterr().out
    assert one.startswith("Lesson 9 of 11: Layer after layer\n")
    assert "  run:      routing-sim run induction_heads\n" in one
    assert one.rstrip().endswith("next:     routing-sim tour 10")
    assert main(["tour", "11", "--lang", "zh"]) == 0
    assert capsys.readouterr().out.startswith("第 11 课（共 11 课）：跨机器\n")


@pytest.mark.parametrize("lesson", ["0", "12", "two"])
def test_tour_refuses_a_lesson_it_does_not_have(lesson, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tour", lesson])
    assert exit_.value.code == 2
    assert "argument N: " in capsys.readouterr().err


def test_run_without_a_name_lists_the_scenarios_and_fails(capsys):
    assert main(["run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "1. A token is a node" in captured.err and "routing_table" in captured.err
    assert captured.err.splitlines()[-1] == ("routing-sim: error: name a scenario to run, e.g. "
                                             "`routing-sim run routing_table`")


def test_run_without_a_name_as_a_command_has_no_traceback():
    result = subprocess.run([sys.executable, "-m", "routing_sim.cli", "run"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "name a scenario to run" in result.stderr


@pytest.mark.parametrize("typed, meant", [("routing-table", "routing_table"),
                                          ("soft_vs_hrd", "soft_vs_hard"),
                                          ("multihead", "multi_head")])
def test_a_near_miss_gets_did_you_mean(typed, meant, capsys):
    assert main(["run", typed]) == 1
    assert f"no scenario {typed!r}; did you mean {meant}? " in one_line_error(capsys)


def test_a_missing_extra_names_the_extra_that_installs_it():
    """Without torch, `run real_model` names the hf extra only; without matplotlib, `plot`
    names the plot extra, before simulating."""
    hide = ("import sys; sys.modules.update({m: None for m in %r}); "
            "from routing_sim.cli import main; sys.exit(main(%r))")
    for modules, argv, extra in [(("torch", "transformers"), ["run", "real_model"], "hf"),
                                 (("matplotlib",), ["plot", "-o", "x.png"], "plot")]:
        result = subprocess.run([sys.executable, "-c", hide % (modules, argv)],
                                capture_output=True, text=True)
        assert result.returncode == 1, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert f"pip install 'routing_sim[{extra}]'" in result.stderr
        assert result.stderr.count("pip install 'routing_sim[") == 1


def test_plot_checks_for_matplotlib_before_simulating(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr("routing_sim.cli.command._simulate",
                        lambda arguments: pytest.fail("simulated"))
    assert main(["plot", "-o", "x.png"]) == 1
    assert "plots need matplotlib: pip install 'routing_sim[plot]'" in one_line_error(capsys)


@pytest.mark.parametrize("name, argv", [("heads_specialise", ("heads.png",)),
                                        ("learning_to_route", ("curve.png",)),
                                        ("ring_attention", ("figures",))])
def test_scenarios_check_for_matplotlib_before_training(name, argv, monkeypatch, capsys):
    from routing_sim import scenarios

    scenario = scenarios.load(name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    # Each of them starts its work by drawing random data: it must not get that far.
    monkeypatch.setattr(np.random, "default_rng", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(rs.InvalidArgumentError, match=r"pip install 'routing_sim\[plot\]'"):
        scenario.main(*argv)
    assert capsys.readouterr().out == ""


def test_run_prints_the_scenario(capsys):
    assert main(["run", "routing_table"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(within the float tolerance)")
    assert main(["run", "nope"]) == 1
    assert "no scenario 'nope'; `routing-sim list` shows them all" in one_line_error(capsys)


@pytest.mark.parametrize("fmt, name", [("perfetto", "t.json"), ("jsonl", "t.jsonl"),
                                       ("csv", "t.csv")])
def test_trace_writes_files(tmp_path, capsys, fmt, name):
    path = tmp_path / name
    assert main(["trace", "--format", fmt, "-o", str(path), "--tokens", "a b c",
                 "--loss", "0.2"]) == 0
    out = capsys.readouterr().out
    assert path.stat().st_size > 100 and f"wrote {path}" in out
    assert out.rstrip().endswith("the tokens are random vectors named after words: the shares "
                                 "show the mechanism, not English")


def test_trace_mermaid_to_stdout(capsys):
    assert main(["trace", "--format", "mermaid", "--tokens", "a b", "--causal"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sequenceDiagram") and out.count("QUERY") == 3
    # The words name random vectors, and the diagram says so in a Mermaid comment.
    assert out.splitlines()[1] == ("    %% random vectors named after words: the shares show "
                                   "the mechanism, not English")


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


@pytest.mark.parametrize("command", ["tour", "list", "run", "trace", "plot", "verify", "bench"])
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
