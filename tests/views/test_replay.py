"""The replay page's file and data, without a browser (test_replay_browser.py opens it)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.cli import main
from routing_sim.network.messages import Fate
from routing_sim.views.replay import ANIMATED_LIMIT

DATA = re.compile(r'<script type="application/json" id="replay-data">(.*?)</script>', re.DOTALL)


def page_of(path) -> tuple[str, dict]:
    text = path.read_text(encoding="utf-8")
    return text, json.loads(DATA.search(text).group(1))


@pytest.fixture(scope="module")
def jitter_run():
    """16 tokens, 2 heads, head dim 64, causal, jittery network: the size budget's case."""
    q, k, v = np.random.default_rng(7).normal(size=(3, 2, 16, 64))
    return rs.simulate(q, k, v, is_causal=True,
                       network=rs.Network(latency=1.0, jitter=0.5, seed=3), trace="full")


def test_page_is_one_file_that_asks_for_nothing(jitter_run, tmp_path):
    text, _ = page_of(jitter_run.to_html(tmp_path / "run.html"))
    assert len(text.encode("utf-8")) <= 2_000_000
    # The one URL in the page is the SVG namespace name, which is never fetched.
    assert set(re.findall(r"https?://[^\s\"'`)]+", text)) == {"http://www.w3.org/2000/svg"}
    assert not re.search(r"<(link|img|iframe|object|embed)\b|\bsrc=|@import|url\(", text)
    assert "default-src 'none'" in text            # the browser refuses any fetch anyway


def test_tables_carry_the_exact_weights_of_every_head(jitter_run, tmp_path):
    _, data = page_of(jitter_run.to_html(tmp_path / "run.html"))
    assert [head["name"] for head in data["heads"]] == ["head 0", "head 1"]
    for head, weights in zip(data["heads"], jitter_run.weights):
        for i, rows in enumerate(head["tables"]):
            assert sorted(row[0] for row in rows) == list(range(i + 1))   # causal routes
            for j, _, share, _, _ in rows:
                assert share == repr(float(weights[i, j]))
                assert float(share) == weights[i, j]


def test_in_flight_steps_count_the_trace_at_any_time(jitter_run, tmp_path):
    _, data = page_of(jitter_run.to_html(tmp_path / "run.html"))
    trace = jitter_run.trace
    delivered = trace.fate == Fate.DELIVERED
    edges = np.unique(np.concatenate((trace.sent, trace.arrive)))
    times = np.concatenate((edges, (edges[:-1] + edges[1:]) / 2, [-1.0, edges[-1] + 1]))
    for group, head in enumerate(data["heads"]):
        sent, arrive = (np.array(head["inFlight"][side][0]) for side in ("sent", "arrive"))
        sent_counts, arrive_counts = (np.array(head["inFlight"][side][1])
                                      for side in ("sent", "arrive"))
        def below(steps: np.ndarray, counts: np.ndarray, t: float) -> int:
            """The step function's value at t: the count of the last step at or before t."""
            i = np.searchsorted(steps, t, side="right")
            return counts[i - 1] if i else 0

        for t in times:
            expected = np.sum(delivered & (trace.group == group) & (trace.sent <= t)
                              & (t < trace.arrive))
            assert below(sent, sent_counts, t) - below(arrive, arrive_counts, t) == expected


def test_labels_cannot_break_out_of_the_data(tmp_path):
    labels = ["</script><b>x</b>", "<!--", "a&b"]
    q, k, v = np.random.default_rng(0).normal(size=(3, 3, 2))
    run = rs.simulate(q, k, v, graph=rs.graphs.complete(3, labels=labels), trace="full")
    text, data = page_of(run.to_html(tmp_path / "run.html"))
    assert data["queries"] == labels
    assert text.count("</script>") == 2                  # the data's and the script's own


def test_large_runs_animate_whole_routes_of_a_sample(tmp_path):
    q, k, v = np.random.default_rng(1).normal(size=(3, 2, 40, 4))
    run = rs.simulate(q, k, v, network=rs.Network(jitter=0.2, seed=1), trace="full")
    _, data = page_of(run.to_html(tmp_path / "run.html"))
    sample, messages = data["sample"], data["messages"]
    assert sample["of"] == len(run.trace) > ANIMATED_LIMIT
    assert 0 < sample["messages"] == len(messages["kind"]) < sample["of"]
    routes = {(g, s, d) if to_key else (g, d, s) for g, s, d, to_key in zip(
        messages["group"], messages["src"], messages["dst"],
        (data["toKey"][kind] for kind in messages["kind"]))}
    assert len(messages["kind"]) == 4 * len(routes) == 4 * sample["routes"]
    assert sum(len(rows) for head in data["heads"] for rows in head["tables"]) == 2 * 40 * 40


def test_summary_trace_keeps_exact_tables_and_no_messages(tmp_path):
    q, k, v = np.random.default_rng(2).normal(size=(3, 4, 3))
    run = rs.simulate(q, k, v, trace="summary")
    _, data = page_of(run.to_html(tmp_path / "run.html"))
    assert data["messages"] is None and data["heads"][0]["inFlight"] is None
    assert [[float(row[2]) for row in sorted(rows)] for rows in data["heads"][0]["tables"]] \
        == run.weights.tolist()


def test_backward_page_carries_the_gradient_messages(tmp_path):
    q, k, v = np.random.default_rng(3).normal(size=(3, 2, 4, 3))
    run = rs.simulate(q, k, v, is_causal=True, trace="full")
    grads = run.backward(np.ones_like(run.output))
    _, data = page_of(grads.to_html(tmp_path / "grads.html"))
    assert data["phase"] == "backward"
    names = {data["kinds"][kind] for kind in data["messages"]["kind"]}
    assert names == {"GRAD_OUTPUT", "GRAD_SHARE", "GRAD_SCORE", "GRAD_KEY"}
    assert len(data["messages"]["kind"]) == len(grads.trace)
    assert float(data["heads"][1]["tables"][3][0][2]) == run.weights[1, 3].max()


def test_to_html_refuses_a_missing_directory(tmp_path):
    run = rs.simulate(*np.ones((3, 2, 2)))
    with pytest.raises(rs.InvalidArgumentError, match="does not exist"):
        run.to_html(tmp_path / "nowhere" / "run.html")
    with pytest.raises(rs.InvalidArgumentError, match="path must be a file path"):
        run.to_html(42)


def test_cli_replay_writes_forward_and_backward_pages(tmp_path, capsys):
    forward, backward = tmp_path / "run.html", tmp_path / "grads.html"
    assert main(["replay", "--heads", "2", "--tokens", "a b c", "-o", str(forward)]) == 0
    assert main(["replay", "--backward", "--tokens", "a b c", "-o", str(backward)]) == 0
    assert capsys.readouterr().out.count("wrote") == 2
    _, data = page_of(forward)
    assert data["queries"] == ["a", "b", "c"] and len(data["heads"]) == 2
    assert page_of(backward)[1]["phase"] == "backward"


def test_run_html_shows_summary_grids_and_the_page_inline(jitter_run):
    text = jitter_run._repr_html_()
    assert "<b>Run</b>: output (2, 16, 64), weights (2, 16, 16)" in text
    assert text.count("<caption>head ") == 2
    share = float(jitter_run.weights[1, 5, 2])
    assert f"title='{share!r}'" in text
    assert "<iframe srcdoc=" in text and "data-role=&quot;routing-table&quot;" in text


def test_run_html_points_elsewhere_when_too_big_to_inline():
    q, k, v = np.random.default_rng(4).normal(size=(3, 40, 2))
    text = rs.simulate(q, k, v, trace="summary")._repr_html_()
    assert "too many to draw here" in text and "summary trace" in text
    assert "<iframe" not in text


def test_routing_table_html_lists_every_route_with_its_share():
    q, k, v = np.random.default_rng(5).normal(size=(3, 3, 2))
    run = rs.simulate(q, k, v, graph=rs.graphs.complete(3, labels=["x", "<y>", "z"]))
    table = run.routing_table(1)
    text = table._repr_html_()
    assert "routing table of token &lt;y&gt; (#1)" in text
    for route in table.routes:
        assert f"{route.share:.4f} ({100 * route.share:.1f}%)" in text
    assert text.count("<tr><td>") == 3


def context_parallel_run(trace="full"):
    q, k, v = np.random.default_rng(8).normal(size=(3, 2, 32, 8))
    return rs.context_parallel(q, k, v, strategy="ring", cluster=rs.Cluster(devices=4),
                               is_causal=True, trace=trace, network=rs.Network(
                                   loss=0.2, duplicate=0.2, retries=20, seed=1))


def test_context_parallel_page_has_devices_transfers_and_byte_shares(tmp_path):
    prun = context_parallel_run()
    _, data = page_of(prun.to_html(tmp_path / "cp.html"))
    transfers = prun.trace.transfers
    assert data["queries"] == [f"device {d}" for d in range(4)] and data["whatIf"] is False
    assert len(data["messages"]["kind"]) == len(transfers)
    received = np.zeros((4, 4))                                         # (dst, src) bytes
    for t in transfers:
        if t["fate"] == "delivered":
            received[t["dst"], t["src"]] += t["bytes"]
    for device, rows in enumerate(data["heads"][0]["tables"]):
        shares = {row[0]: float(row[2]) for row in rows}
        assert shares == {src: received[device, src] / received[device].sum()
                          for src in np.flatnonzero(received[device])}
    with pytest.raises(rs.InvalidArgumentError, match="summary trace"):
        context_parallel_run("summary").to_html(tmp_path / "summary.html")


def test_cli_pages_say_their_words_name_random_vectors(tmp_path, jitter_run, capsys):
    for extra in ([], ["--backward"]):
        path = tmp_path / f"page{len(extra)}.html"
        assert main(["replay", "--tokens", "the cat sat", *extra, "-o", str(path)]) == 0
        assert page_of(path)[1]["note"] == ("The tokens are random vectors named after words: "
                                            "the shares show the mechanism, not English.")
    assert page_of(jitter_run.to_html(tmp_path / "own.html"))[1]["note"] is None


def test_a_page_refused_for_size_says_how_to_get_one(tmp_path, monkeypatch):
    q, k, v = np.random.default_rng(5).normal(size=(3, 2, 6, 4))
    run = rs.simulate(q, k, v, is_causal=True)
    monkeypatch.setattr(rs.run, "WEIGHTS_LIMIT", 71)                 # 2 x 6 x 6 = 72 entries
    with pytest.raises(rs.InvalidArgumentError) as refused:
        run.to_html(tmp_path / "run.html")
    message = str(refused.value)
    assert message.startswith("the replay page (forward pass) needs the dense routing tables "
                              "(2, 6, 6) (72 entries)")
    for way in ("one head (q[h], k[h], v[h])", "a smaller slice (q[..., :n, :]",
                "a range of queries against every key (q[..., a:b, :]", "attn_mask=mask[a:b]"):
        assert way in message
    assert "route_weights" not in message
    # What it suggests does make a page: one head, and a range of queries with its mask rows.
    monkeypatch.setattr(rs.run, "WEIGHTS_LIMIT", 36)
    rs.simulate(q[0], k[0], v[0], is_causal=True).to_html(tmp_path / "head.html")
    mask = np.tril(np.ones((6, 6), dtype=bool))
    part = rs.simulate(q[:, 2:4], k, v, attn_mask=mask[2:4])
    np.testing.assert_array_equal(part.output, run.output[:, 2:4])
    part.to_html(tmp_path / "queries.html")
