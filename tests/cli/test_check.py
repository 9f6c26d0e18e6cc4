"""routing-sim check: one line per feature, each failure with its reproducer, exit 0 only
on a pass, --json."""

from __future__ import annotations

import json

from routing_sim.cli import main


def test_a_correct_function_passes_with_one_line_per_feature(capsys):
    status = main(["check", "tests.testing.kernels:sdpa", "--features", "full,causal,gqa",
                   "--cases", "6"])
    text = capsys.readouterr().out
    assert status == 0
    lines = text.splitlines()
    assert lines[0] == ("tests.testing.kernels:sdpa (numpy, layout sdpa, float64) against the "
                        "routing_sim oracle: PASSED")
    assert [line.split()[0] for line in lines[2:5]] == ["full", "causal", "gqa"]


def test_a_planted_bug_fails_with_its_reproducer_and_json(capsys, tmp_path):
    report = tmp_path / "report.json"
    status = main(["check", "tests.testing.kernels:window_off_by_one", "--layout", "flash",
                   "--features", "window", "--cases", "0", "--json", str(report)])
    text = capsys.readouterr().out
    assert status == 1
    assert "FAIL (output)" in text and "the route is blocked (window)" in text
    assert "from tests.testing.kernels import window_off_by_one as fn" in text
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["failures"][0]["key"] == 0


def test_a_function_from_a_file(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text("import numpy as np\n"
                    "def attention(q, k, v, scale=None):\n"
                    "    s = q @ np.swapaxes(k, -1, -2) * (scale or q.shape[-1] ** -0.5)\n"
                    "    w = np.exp(s - s.max(-1, keepdims=True))\n"
                    "    return w / w.sum(-1, keepdims=True) @ v\n")
    assert main(["check", f"{path}:attention", "--cases", "3"]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_bad_input_is_one_line(capsys):
    assert main(["check", "tests.testing.kernels:nothing"]) == 1
    assert "routing-sim: error: cannot load 'tests.testing.kernels:nothing'" in \
        capsys.readouterr().err
    assert main(["check", "tests.testing.kernels:sdpa", "--features", "mask",
                 "--layout", "flash"]) == 1
    assert "not in layout 'flash'" in capsys.readouterr().err


def test_a_causal_only_function_is_checked_on_causal_cases_only(capsys):
    assert main(["check", "tests.testing.kernels:causal_only", "--features", "causal",
                 "--cases", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["causal", "tolerance:"]


def test_a_packed_only_function_is_checked_on_packed_cases_only(capsys):
    assert main(["check", "tests.testing.kernels:flash_varlen", "--layout", "flash",
                 "--features", "varlen,causal", "--cases", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["causal", "varlen", "tolerance:"]
    assert main(["check", "tests.testing.kernels:flash_varlen", "--features",
                 "varlen,bottom_right"]) == 1
    assert "no case takes a shape named (varlen) with a pattern named (bottom_right)" in \
        capsys.readouterr().err
