"""The memory budget: runs that would not fit are refused before allocating."""

import gc
import subprocess
import sys
import textwrap
import tracemalloc

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


def _taken(run: rs.Run) -> str:
    """The path the forward run took, read from its state (what route_path predicts)."""
    state = run.state
    if state.rows is not None:
        return "row blocks"
    if state.spans is not None:
        return "span blocks"
    return "tiles" if state.tiles is not None else "per node"


def _inputs(n: int, heads: int, dim: int = 64) -> tuple[np.ndarray, ...]:
    return tuple(np.random.default_rng(n + heads).normal(size=(3, heads, n, dim)))


def _random_mask(n: int, density: float) -> np.ndarray:
    mask = np.random.default_rng(n).random((n, n)) < density            # (L, S), gaps
    mask[:, 0] = True                                                    # no empty row
    return mask


# (case, simulate's keywords at n, heads; the path route_path names; the path taken)
PATHS = [
    ("full graph", 512, 2, lambda n: {}, "row blocks", "row blocks"),
    ("causal", 512, 2, lambda n: {"is_causal": True}, "masked", "span blocks"),
    ("random mask", 512, 2, lambda n: {"attn_mask": _random_mask(n, 0.5)}, "masked",
     "per node"),
    ("window", 4096, 2, lambda n: {"graph": rs.patterns.sliding_window(n, 128, sinks=4)},
     "sparse", "tiles"),
    ("random route set", 2048, 2,
     lambda n: {"graph": rs.RouteSet.from_mask(_random_mask(n, 0.05))}, "sparse", "per node"),
    ("online", 512, 2, lambda n: {"softmax": "online"}, "online", None),
    ("online window", 4096, 2, lambda n: {"softmax": "online", "graph":
                                          rs.patterns.sliding_window(n, 128, sinks=4)},
     "online", None),
    ("exact", 256, 2, lambda n: {"numerics": "exact"}, "exact", None),
    ("plain", 96, 1, lambda n: {"engine": "plain"}, "plain", None),
    ("bias, dropout, score_mod", 512, 2,
     lambda n: {"attn_mask": np.random.default_rng(1).normal(size=(n, n)), "dropout_p": 0.1,
                "score_mod": rs.mods.softcap(30.0)}, "row blocks", "row blocks"),
    ("top_k", 512, 2, lambda n: {"routing": "topk", "top_k": 8}, "row blocks", "row blocks"),
    ("lossy network", 256, 2,
     lambda n: {"network": rs.Network(loss=0.05, duplicate=0.05, retries=20, seed=1)},
     "row blocks", None),
    ("full trace", 256, 2, lambda n: {"trace": "full"}, "row blocks", "row blocks"),
    ("online full trace", 128, 2, lambda n: {"softmax": "online", "trace": "full"}, "online",
     None),
    ("jitter", 512, 2, lambda n: {"network": rs.Network(jitter=0.5, seed=1)}, "row blocks",
     "row blocks"),
    ("causal, reordering", 512, 2,
     lambda n: {"is_causal": True, "network": rs.Network(reorder=0.3, jitter=0.2, seed=1)},
     "masked", "span blocks"),
    ("random mask, spikes", 512, 2,
     lambda n: {"attn_mask": _random_mask(n, 0.5),
                "network": rs.Network(spike=0.1, jitter=0.1, seed=1)}, "masked", "per node"),
    ("window, jitter", 4096, 2,
     lambda n: {"graph": rs.patterns.sliding_window(n, 128, sinks=4),
                "network": rs.Network(jitter=0.5, seed=1)}, "sparse", "tiles"),
    ("online, jitter", 512, 2,
     lambda n: {"softmax": "online", "network": rs.Network(jitter=0.5, seed=1)}, "online",
     None),
    ("online causal, jitter", 512, 2,
     lambda n: {"softmax": "online", "is_causal": True,
                "network": rs.Network(jitter=0.5, seed=1)}, "online", None),
    ("per message", 48, 1, lambda n: {"delivery": "per_message"}, "row blocks", None),
]

BACKWARD = {
    "full graph": lambda n: {},
    "window": lambda n: {"graph": rs.patterns.sliding_window(n, 128, sinks=4)},
    "jitter": lambda n: {"network": rs.Network(jitter=0.5, seed=1)},
    "causal, jitter": lambda n: {"is_causal": True, "network": rs.Network(jitter=0.5, seed=1)},
    "window, jitter": lambda n: {"graph": rs.patterns.sliding_window(n, 128, sinks=4),
                                 "network": rs.Network(jitter=0.5, seed=1)},
}


def _estimated(monkeypatch) -> list[budget.MemoryEstimate]:
    """The estimates the entry points check (nothing is refused meanwhile)."""
    seen: list[budget.MemoryEstimate] = []
    monkeypatch.setattr(budget, "check", lambda needed, what, way_out: seen.append(needed))
    return seen


def _traced_peak(work) -> tuple[object, int]:
    """``work()``'s result and the tracemalloc peak of what it allocated (bytes)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("case, n, heads, keywords, path, taken", PATHS,
                         ids=[case[0] for case in PATHS])
def test_the_estimate_covers_the_measured_peak_of_each_path(monkeypatch, case, n, heads,
                                                            keywords, path, taken):
    q, k, v = _inputs(n, heads)
    options = {"trace": "summary", **keywords(n)}
    rs.simulate(q[:, :8], k[:, :8], v[:, :8], **{name: value for name, value in options.items()
                                                 if name not in ("attn_mask", "graph")})
    seen = _estimated(monkeypatch)
    run, peak = _traced_peak(lambda: rs.simulate(q, k, v, **options))
    (needed,) = seen
    groups = heads
    assert budget.route_path(groups, n, n, run.stats.routes, dense="graph" not in options,
                             softmax=options.get("softmax", "two_phase"),
                             numerics=options.get("numerics", "float"),
                             engine=options.get("engine", "fast")) == path
    if taken is not None:
        assert _taken(run) == taken
    # Not counting the fixed part: in this process the first-call imports are done.
    assert needed.total - needed.parts["fixed"] >= peak, (case, str(needed), peak)


@pytest.mark.parametrize("keywords", BACKWARD.values(), ids=BACKWARD.keys())
def test_the_estimate_covers_the_measured_peak_of_a_backward_pass(monkeypatch, keywords):
    n = 2048 if "graph" in keywords(8) else 512
    q, k, v = _inputs(n, 2)
    run = rs.simulate(q, k, v, trace="summary", **keywords(n))
    d_output = np.random.default_rng(2).normal(size=run.output.shape)
    run.backward(d_output)                                               # first-call imports
    seen = _estimated(monkeypatch)
    _, peak = _traced_peak(lambda: run.backward(d_output))
    (needed,) = seen
    assert needed.total - needed.parts["fixed"] >= peak, (str(needed), peak)


def test_the_full_graph_with_8_heads_at_4096_tokens_fits_in_10_gb_but_not_in_4():
    shape, routes = (8, 4096, 4096, 64, 64), 8 * 4096**2               # 134 M routes
    needed = budget.estimate(*shape[:3], routes, dim=64, value_dim=64)
    assert budget.route_path(*shape[:3], routes) == "row blocks"
    assert needed.parts["dense route mask"] == 0                         # one broadcast True
    assert 4 * 2**30 < needed.total < 10 * 2**30
    online = budget.estimate(*shape[:3], routes, dim=64, value_dim=64, softmax="online")
    assert online.total > 3 * needed.total                               # its own path


def test_a_run_that_cannot_fit_is_refused_before_it_allocates(monkeypatch):
    q, k, v = _inputs(2048, 2, dim=4)                                    # 8.4 M routes
    monkeypatch.setenv(budget.ENVIRONMENT, "256M")
    needed = budget.estimate(2, 2048, 2048, 2 * 2048**2, dim=4, value_dim=4)
    assert needed.total > 256 * 2**20                                    # row blocks: 36 B
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(MemoryBudgetError, match="8,388,608 routes"):
            rs.simulate(q, k, v, trace="summary")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Refused before the per-route state: what came first is about a bool a (G, L, S) entry.
    assert peak < 2 * (2 * 2048**2) < needed.parts["per-route state"] / 4
    for keywords in ({"softmax": "online"}, {"numerics": "exact"}):
        with pytest.raises(MemoryBudgetError):
            rs.simulate(q, k, v, trace="summary", **keywords)


def test_unknown_features_are_refused():
    with pytest.raises(InvalidArgumentError, match="features"):
        budget.estimate(1, 4, 4, 16, features={"bias"})
