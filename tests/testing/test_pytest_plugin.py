"""The pytest plugin, in a real inner pytest run: a correct kernel's test passes, a planted
bug's fails with its minimal case, and the command-line options set the defaults."""

from __future__ import annotations

import re

pytest_plugins = ["pytester"]

KERNELS = '''
import numpy as np

def mine(q, k, v, is_causal=False, scale=None, off_by_one=False):
    scores = q @ np.swapaxes(k, -1, -2) * (scale or q.shape[-1] ** -0.5)
    if is_causal:
        allowed = np.tri(*scores.shape[-2:], k=1 if off_by_one else 0, dtype=bool)
        scores = np.where(allowed, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True) @ v

def off_by_one(q, k, v, **kwargs):
    return mine(q, k, v, off_by_one=True, **kwargs)

def test_correct(attention_oracle):
    report = attention_oracle(mine, features=["full", "causal"])
    assert report.passed and report.by_feature["causal"].cases > 0
    print("searched", report.by_feature["full"].cases, "full cases")

def test_planted(attention_oracle):
    attention_oracle(off_by_one, features=["causal"], cases=0)
'''


def test_a_correct_kernel_passes_and_a_planted_bug_fails(pytester):
    pytester.makeconftest('pytest_plugins = ["routing_sim.testing.pytest_plugin"]\n')
    pytester.makepyfile(test_kernels=KERNELS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-s", "--oracle-cases", "4")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*FAILED (1 failures)*",
        "FAIL (output) battery case 'L = S, causal': shrunk to B=1 Hq=1 Hkv=1 L=1 S=2*",
        "*the route is blocked (causal)*"])
    # Four search cases (the option) split over the two patterns, beside the battery's.
    fewer = pytester.runpytest("-p", "no:cacheprovider", "-s", "--oracle-cases", "0",
                               "-k", "correct")
    fewer.assert_outcomes(passed=1)
    counts = [int(found) for run in (result, fewer)
              for found in re.findall(r"searched (\d+) full cases", run.stdout.str())]
    assert counts[0] == counts[1] + 2


def test_the_options_are_in_the_help(pytester):
    pytester.makeconftest('pytest_plugins = ["routing_sim.testing.pytest_plugin"]\n')
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--oracle-cases=N*", "*--oracle-seed=N*"])
