"""Run: routing tables, stats, and the trace's columns."""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs


def seed_example() -> rs.Run:
    """The reference document's table: token T routes 0.5 / 0.3 / 0.2 to A / B / C."""
    graph = rs.graphs.complete(1, 3, labels=["T"], key_labels=["A", "B", "C"])
    key = np.log(np.array([[3.0], [5.0], [2.0]]))
    return rs.simulate(np.ones((1, 1)), key, np.eye(3), scale=1.0, graph=graph)


def test_routing_table_prints_like_the_seed_example():
    lines = str(seed_example().routing_table(0)).splitlines()
    assert lines[0] == "routing table of token 'T' (#0)"
    assert [line.split(":")[0].strip() for line in lines[1:4]] == ["token B", "token A",
                                                                   "token C"]
    assert "token B: 0.50" in lines[1] and "position 1" in lines[1]
    assert [line.split(":")[1].split()[0] for line in lines[1:4]] == ["0.50", "0.30", "0.20"]
    assert lines[4] == "  3 routes, 12 messages, output complete at t=4.000"


def test_routing_table_rows():
    table = seed_example().routing_table(0)
    assert [route.source for route in table.routes] == [1, 0, 2]
    np.testing.assert_allclose([route.share for route in table.routes], [0.5, 0.3, 0.2])
    np.testing.assert_allclose([route.score for route in table.routes], np.log([5, 3, 2]))
    assert {route.bytes_pulled for route in table.routes} == {24}
    assert {route.arrived for route in table.routes} == {4.0}


def test_routing_table_for_heads_and_batches():
    rng = np.random.default_rng(0)
    query, key, value = rng.normal(size=(3, 2, 3, 4, 5))
    run = rs.simulate(query, key, value)
    table = run.routing_table(2, head=1, batch=0)
    shares = sorted((route.source, route.share) for route in table.routes)
    np.testing.assert_array_equal([share for _, share in shares], run.weights[0, 1, 2])
    assert "batch 0, head 1" in str(table)
    with pytest.raises(rs.InvalidArgumentError, match="batch="):
        run.routing_table(0, head=1)
    with pytest.raises(rs.InvalidArgumentError, match="does not fit"):
        run.routing_table(0, head=3, batch=0)
    with pytest.raises(rs.InvalidArgumentError, match="0 .. 3"):
        run.routing_table(4, head=0, batch=0)


def test_dropped_routes_show_in_the_table():
    keep = np.array([[True, False, True]])
    run = rs.simulate(np.ones((1, 2)), np.ones((3, 2)), np.eye(3), dropout_p=0.5,
                      dropout_mask=keep)
    table = run.routing_table(0)
    assert table.messages == 2 * 3 + 2 * 2
    assert "not pulled" in str(table)


def test_trace_columns_follow_the_protocol():
    run = rs.simulate(np.eye(2), np.eye(2), np.ones((2, 3)), trace="full")
    trace = run.trace
    assert len(trace) == 16 and len(trace.kind) == 16
    queries = trace.kind == rs.Kind.QUERY
    scores = trace.kind == rs.Kind.SCORE
    assert set(zip(trace.src[queries].tolist(), trace.dst[queries].tolist())) == \
        {(0, 0), (0, 1), (1, 0), (1, 1)}
    # SCORE payloads are the scores the routing tables report.
    for src, dst, score in zip(trace.src[scores], trace.dst[scores], trace.value[scores]):
        table = {route.source: route.score for route in run.routing_table(int(dst)).routes}
        assert table[int(src)] == score
    assert trace.nbytes[trace.kind == rs.Kind.VALUE].tolist() == [24] * 4
    assert np.isnan(trace.value[queries]).all()


def test_summary_trace_keeps_totals_only():
    run = rs.simulate(np.eye(2), np.eye(2), np.eye(2), trace="summary")
    assert len(run.trace) == 16
    with pytest.raises(rs.InvalidArgumentError, match="trace='full'"):
        _ = run.trace.arrive


def test_auto_trace_switches_to_summary_for_large_runs():
    small = rs.simulate(np.ones((4, 1)), np.ones((4, 1)), np.ones((4, 1)))
    assert small.trace.detail == "full"
    n = int(np.sqrt(rs.trace.AUTO_FULL_LIMIT / 4)) + 1
    large = rs.simulate(np.ones((n, 1)), np.ones((n, 1)), np.ones((n, 1)))
    assert large.trace.detail == "summary"


def test_stats_text():
    text = str(rs.simulate(np.eye(2), np.eye(2), np.eye(2)).stats)
    assert "QUERY" in text and "total" in text and "last output complete at t=4.000" in text


def test_repr_of_a_run_is_one_line_of_shapes_and_totals():
    q, k, v = np.random.default_rng(0).normal(size=(3, 2, 300, 4))
    run = rs.simulate(q, k, v, trace="summary")
    text = repr(run)
    assert "\n" not in text and len(text) < 200
    assert text == ("<Run output (2, 300, 4), weights (2, 300, 300): 180,000 routes, "
                    "720,000 messages, 14,400,000 bytes, done at t=4.000, summary trace>")


def test_routing_table_repr_is_the_table():
    run = rs.simulate(np.eye(3), np.eye(3), np.eye(3), labels=["the", "cat", "sat"])
    table = run.routing_table(1)
    assert repr(table) == str(table)
    assert repr(table).startswith("routing table of token 'cat' (#1)\n")


def test_routing_table_by_label_and_labels_without_a_graph():
    q, k, v = np.random.default_rng(1).normal(size=(3, 4, 2))
    words = ["the", "cat", "sat", "down"]
    named = rs.simulate(q, k, v, is_causal=True, labels=words)
    graphed = rs.simulate(q, k, v, graph=rs.graphs.causal(4, labels=words))
    assert str(named.routing_table("sat")) == str(graphed.routing_table(2))
    assert [r.label for r in named.routing_table("sat").routes] == \
        [words[r.source] for r in graphed.routing_table(2).routes]
    with pytest.raises(rs.InvalidArgumentError, match="no query token is labelled 'dog'"):
        named.routing_table("dog")
    repeated = rs.simulate(q, k, v, labels=["a", "b", "a", "c"])
    with pytest.raises(rs.InvalidArgumentError, match=r"positions \[0, 2\]"):
        repeated.routing_table("a")
    with pytest.raises(rs.ShapeError, match="labels has 3 entries for 4 tokens"):
        rs.simulate(q, k, v, labels=words[:3])
    with pytest.raises(rs.InvalidArgumentError, match="not both"):
        rs.simulate(q, k, v, graph=rs.graphs.causal(4, labels=words), labels=words)


def test_cross_attention_labels_name_both_sides():
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(2, 2)), rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    run = rs.simulate(q, k, v, labels=["x", "y"], key_labels=["a", "b", "c"], trace="full")
    assert {r.label for r in run.routing_table("y").routes} == {"a", "b", "c"}
    assert "participant n1 as query y (1)" in run.trace.to_mermaid()
    assert "participant n4 as key c (2)" in run.trace.to_mermaid()


@pytest.mark.parametrize("options", [{}, {"softmax": "online"}, {"numerics": "exact"},
                                     {"graph": "window"}, {"routing": "topk", "top_k": 2}])
def test_run_probabilities_are_the_softmax_before_dropout(options):
    rng = np.random.default_rng(6)
    q, k, v = rng.normal(size=(3, 2, 6, 4))
    keep = rng.random((2, 6, 6)) >= 0.3
    if options.get("graph") == "window":
        options = {"graph": rs.patterns.sliding_window(6, 3)}
    run = rs.simulate(q, k, v, dropout_p=0.3, dropout_mask=keep, **options)
    plain = rs.simulate(q, k, v, **options)                            # no dropout
    np.testing.assert_allclose(run.probabilities, plain.weights, rtol=1e-12)
    np.testing.assert_allclose(run.probabilities.sum(-1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(run.weights, run.probabilities * keep / 0.7, rtol=1e-15)
    assert plain.probabilities is plain.weights


def test_probabilities_follow_empty_rows():
    q, k, v = np.random.default_rng(7).normal(size=(3, 3, 2))
    mask = np.array([[True, False, False], [False, False, False], [True, True, True]])
    run = rs.simulate(q, k, v, attn_mask=mask, dropout_p=0.5, empty_rows="nan")
    assert np.isnan(run.probabilities[1]).all() and not np.isnan(run.probabilities[[0, 2]]).any()
    assert run.probabilities[0].tolist() == [1.0, 0.0, 0.0]
