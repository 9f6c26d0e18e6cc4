"""The memory budget: runs that would not fit are refused before allocating."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.engines import memory as budget
from routing_sim.errors import InvalidArgumentError, MemoryBudgetError


def test_estimate_grows_with_routes_and_a_full_trace():
    small = budget.estimate(1, 100, 100, 5_000)
    large = budget.estimate(1, 100, 100, 10_000)
    full = budget.estimate(1, 100, 100, 10_000, trace="full")
    assert small.total < large.total < full.total
    assert full.parts["trace rows"] > 0 == large.parts["trace rows"]
    lossy = budget.estimate(1, 100, 100, 10_000, trace="full", transmissions=2.0)
    assert lossy.parts["trace rows"] == 2 * full.parts["trace rows"]


def test_a_run_over_the_budget_is_refused_with_the_way_out(monkeypatch):
    q = k = v = np.random.default_rng(0).normal(size=(64, 4))
    monkeypatch.setenv(budget.ENVIRONMENT, "5M")             # above the fixed 4 MB
    with pytest.raises(MemoryBudgetError) as refused:
        rs.simulate(q, k, v, trace="full")
    message = str(refused.value)
    assert "trace='full'" in message and "trace='summary'" in message
    assert "rs.patterns" in message and f"{budget.ENVIRONMENT}=5M" in message
    assert not isinstance(refused.value, MemoryError)
    summary = rs.simulate(q, k, v, trace="summary")                   # fits in 5 MB
    np.testing.assert_allclose(summary.output, rs.attention(q, k, v), rtol=1e-12, atol=0)


def test_the_budget_override_is_checked(monkeypatch):
    monkeypatch.setenv(budget.ENVIRONMENT, "lots")
    with pytest.raises(InvalidArgumentError, match=budget.ENVIRONMENT):
        budget.available_memory()
    monkeypatch.setenv(budget.ENVIRONMENT, "2g")
    assert budget.available_memory()[0] == 2 * 2**30


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as on Linux")
def test_a_full_trace_at_24000_tokens_under_an_8_gb_address_space_limit():
    script = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))
        import numpy as np, routing_sim as rs
        q = k = v = np.ones((24_000, 2))
        try:
            rs.simulate(q, k, v, trace="full")
        except rs.MemoryBudgetError as error:
            print("refused:", error)
    """)
    environment = {name: value for name, value in __import__("os").environ.items()
                   if name != budget.ENVIRONMENT}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused:"), done.stdout
    assert "RLIMIT_AS" in done.stdout and "576,000,000 routes" in done.stdout


@pytest.mark.parametrize("n_keys, detail", [(50_000, "full"), (50_001, "summary")])
def test_auto_keeps_a_full_trace_up_to_200000_messages(n_keys, detail):
    q = np.ones((1, 1))
    k = v = np.ones((n_keys, 1))
    run = rs.simulate(q, k, v)
    assert run.trace.detail == detail
    assert sum(run.stats.messages.values()) == 4 * n_keys
    if detail == "full":
        assert len(run.trace) == 200_000


def test_a_backward_pass_over_the_budget_is_refused(monkeypatch):
    q = k = v = np.random.default_rng(0).normal(size=(64, 4))
    run = rs.simulate(q, k, v, trace="full")
    monkeypatch.setenv(budget.ENVIRONMENT, "4M")             # the fixed 4 MB and no more
    with pytest.raises(MemoryBudgetError, match="run.backward with 4,096 routes"):
        run.backward(np.ones((64, 4)))
    monkeypatch.setenv(budget.ENVIRONMENT, "64M")
    grads = run.backward(np.ones((64, 4)))
    expected = rs.attention_backward(q, k, v, np.ones((64, 4)))
    np.testing.assert_allclose(grads.query, expected[0], rtol=1e-10, atol=1e-12)


def test_a_small_run_skips_rereading_the_system_budget_but_a_large_one_reads_it(monkeypatch):
    reads = []
    real = budget.available_memory

    def system_budget():
        reads.append(1)
        return 2**30, "memory available"                       # 1 GB

    monkeypatch.delenv(budget.ENVIRONMENT, raising=False)
    monkeypatch.setattr(budget, "available_memory", system_budget)
    monkeypatch.setattr(budget, "_LAST_READING", [0])
    small = budget.MemoryEstimate({"routes": 2**30 // budget.SMALL_SHARE})
    budget.check(small, "a small run", "nothing")              # nothing read yet: reads
    budget.check(small, "a small run", "nothing")              # 1/1024 of 1 GB: no read
    assert len(reads) == 1
    larger = budget.MemoryEstimate({"routes": 2**30 // budget.SMALL_SHARE + 1})
    budget.check(larger, "a larger run", "nothing")
    assert len(reads) == 2
    with pytest.raises(MemoryBudgetError, match="a huge run"):
        budget.check(budget.MemoryEstimate({"routes": 2**31}), "a huge run", "fewer routes")
    monkeypatch.setattr(budget, "available_memory", real)
    monkeypatch.setenv(budget.ENVIRONMENT, "1K")               # a user's budget: always read
    with pytest.raises(MemoryBudgetError, match="a small run"):
        budget.check(small, "a small run", "nothing")
