"""The --pattern options of trace/replay/plot: routes from the definitions, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from routing_sim.cli import main

WORDS = "a b c d e f g h".split()          # 8 tokens


def allowed(name: str) -> np.ndarray:
    """The (8, 8) route mask of each pattern below, written from its definition."""
    i, j = np.arange(8)[:, None], np.arange(8)[None, :]
    return {
        "full": np.ones((8, 8), bool),
        "sliding_window": (j <= i) & ((i - j < 3) | (j < 1)),
        "longformer": (abs(i - j) <= 1) | (i < 2) | (j < 2),
        "dilated": (j <= i) & ((i - j) % 2 == 0) & (i - j < 2 * 2),
        "prefix_lm": (j < 3) | (j <= i),
        # Blocks of one token: 0 and 7 global, the others see their neighbours and them.
        "bigbird": (abs(i - j) <= 1) | np.isin(i, [0, 7]) | np.isin(j, [0, 7]),
    }[name]


OPTIONS = {
    "full": [],
    "sliding_window": ["--window", "3", "--sinks", "1"],
    "longformer": ["--window", "2", "--global-tokens", "2"],
    "dilated": ["--window", "2", "--dilation", "2"],
    "prefix_lm": ["--prefix", "3"],
    "bigbird": ["--block", "1", "--random-blocks", "0"],
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_trace_sends_messages_on_the_pattern_routes_only(name, tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    argv = ["trace", "--tokens", " ".join(WORDS), "--heads", "2", "--jitter", "0",
            "--pattern", name, *OPTIONS[name], "--format", "jsonl", "-o", str(path)]
    assert main(argv) == 0
    expected = allowed(name)
    assert f"{4 * 2 * int(expected.sum())} messages" in capsys.readouterr().out
    queries = [json.loads(line) for line in path.read_text().splitlines()]
    pairs = {(m["src"], m["dst"]) for m in queries if m["kind"] == "QUERY"}
    assert pairs == {(i, j) for i, j in zip(*np.nonzero(expected))}


@pytest.mark.parametrize("argv, message", [
    (["--pattern", "sliding_window"], "--pattern sliding_window needs --window N"),
    (["--window", "3"], "--window does not apply to --pattern full"),
    (["--pattern", "sliding_window", "--window", "3", "--dilation", "2"],
     "--dilation does not apply to --pattern sliding_window (it takes --window [--sinks])"),
    (["--pattern", "dilated", "--window", "2"], "--pattern dilated needs --dilation N"),
    (["--pattern", "prefix_lm", "--prefix", "2", "--causal"],
     "--causal does not combine with --pattern prefix_lm"),
    (["--pattern", "longformer", "--window", "2", "--global-tokens", "9"],
     "--global-tokens 9 is more than the 6 tokens"),
])
def test_bad_combinations_are_one_line_errors(argv, message, capsys):
    assert main(["trace", "--format", "mermaid", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("routing-sim: error: ") and message in err and err.count("\n") == 1


def test_bad_values_are_argument_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plot", "--pattern", "sliding_window", "--window", "0"])
    assert exit_.value.code == 2
    assert "argument --window: expected a whole number >= 1, got '0'" in capsys.readouterr().err
