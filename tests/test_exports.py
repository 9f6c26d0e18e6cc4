"""Trace exports: valid Chrome trace JSON, a Mermaid sequence diagram, JSONL and CSV."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.transport import Fate


def small_run(seed: int = 0, **options) -> rs.Run:
    rng = np.random.default_rng(seed)
    graph = rs.graphs.causal(4, labels=["we", "route", "the", "tokens"])
    q, k, v = rng.normal(size=(3, 4, 3))
    return rs.simulate(q, k, v, graph=graph, trace="full",
                       network=rs.Network(jitter=0.5, seed=seed, **options))


def check_chrome_trace(document: dict, run: rs.Run) -> None:
    """The structural rules Perfetto and chrome://tracing rely on."""
    events = document["traceEvents"]
    assert isinstance(events, list) and events
    slices = defaultdict(list)
    flows = defaultdict(dict)
    for event in events:
        assert {"name", "ph", "pid"} <= set(event)
        if event["ph"] == "M":
            assert event["name"] in ("process_name", "thread_name", "thread_sort_index")
            continue
        assert isinstance(event["ts"], float) and event["ts"] >= 0
        if event["ph"] == "X":
            assert event["dur"] > 0 and "tid" in event
            slices[(event["pid"], event["tid"])].append((event["ts"], event["ts"] + event["dur"]))
        elif event["ph"] in ("s", "f"):
            assert event["id"] not in flows[event["ph"]]
            flows[event["ph"]][event["id"]] = event
        else:
            assert event["ph"] == "C" and event["args"]["messages"] >= 0
    for track in slices.values():            # slices on one track never partially overlap
        track.sort()
        assert all(end <= start for (_, end), (start, _) in zip(track, track[1:]))
    assert flows["s"].keys() == flows["f"].keys()
    for flow_id, start in flows["s"].items():
        finish = flows["f"][flow_id]
        assert finish["bp"] == "e" and start["ts"] <= finish["ts"]
        for event in (start, finish):         # every flow end sits inside a slice of its track
            assert any(a <= event["ts"] < b for a, b in slices[(event["pid"], event["tid"])])
    delivered = run.trace.fate == Fate.DELIVERED
    assert len(flows["s"]) == int(delivered.sum())
    # Timestamps are the run's, in microseconds per simulated millisecond.
    arrivals = sorted(round(t * 1000, 6) for t in run.trace.arrive[delivered])
    assert sorted(event["ts"] for event in flows["f"].values()) == arrivals


@settings(max_examples=15)
@given(st.integers(0, 1000), st.sampled_from([{}, {"loss": 0.3, "retries": 30},
                                               {"duplicate": 0.5}]))
def test_perfetto_json_is_a_valid_chrome_trace(tmp_path_factory, seed, faults):
    run = small_run(seed, **faults)
    path = run.trace.to_perfetto(tmp_path_factory.mktemp("trace") / "run.json")
    check_chrome_trace(json.loads(path.read_text()), run)


def test_perfetto_names_tracks_after_tokens_and_shows_the_softmax(tmp_path):
    run = small_run()
    events = json.loads(run.trace.to_perfetto(tmp_path / "t.json").read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names == {"token we (0)", "token route (1)", "token the (2)", "token tokens (3)"}
    assert sum("allocate budget (softmax)" in e["name"] for e in events if e["ph"] == "X") == 4


def test_multihead_runs_get_one_process_per_head(tmp_path):
    q = k = v = np.random.default_rng(0).normal(size=(2, 3, 2))
    run = rs.simulate(q, k, v, trace="full")
    events = json.loads(run.trace.to_perfetto(tmp_path / "t.json").read_text())["traceEvents"]
    assert {e["args"]["name"] for e in events if e["name"] == "process_name"} == {"head 0",
                                                                                  "head 1"}


MERMAID_LINE = re.compile(r"^    n(\d+)(->>|-->>)n(\d+): (QUERY|SCORE|PULL|VALUE) .+$")


def parse_mermaid(text: str) -> tuple[dict[int, str], list[tuple[int, str, int, str]]]:
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "sequenceDiagram"
    participants, messages = {}, []
    for line in lines[1:]:
        if match := re.match(r"^    participant n(\d+) as (.+)$", line):
            assert not messages, "participants come first"
            participants[int(match[1])] = match[2]
        elif match := MERMAID_LINE.match(line):
            assert {int(match[1]), int(match[3])} <= set(participants)
            messages.append((int(match[1]), match[2], int(match[3]), match[4]))
        else:
            assert re.match(r"^    Note over n\d+: .+$", line), line
    return participants, messages


def test_mermaid_sequence_diagram():
    run = small_run()
    participants, messages = parse_mermaid(run.trace.to_mermaid())
    assert sorted(participants.values()) == sorted(
        ["token we (0)", "token route (1)", "token the (2)", "token tokens (3)"])
    assert len(messages) == 4 * 10
    for src, arrow, dst, kind in messages:
        assert (arrow == "->>") == (kind in ("QUERY", "PULL"))
    one = parse_mermaid(run.trace.to_mermaid(query=2))[1]
    assert len(one) == 4 * 3
    assert all((src == 2) if arrow == "->>" else (dst == 2) for src, arrow, dst, _ in one)


def test_mermaid_refuses_huge_diagrams():
    q = k = v = np.eye(20)
    run = rs.simulate(q, k, v, trace="full")
    with pytest.raises(rs.InvalidArgumentError, match="query="):
        run.trace.to_mermaid()
    assert len(parse_mermaid(run.trace.to_mermaid(query=3))[1]) == 80


def test_jsonl_and_csv_hold_every_message(tmp_path):
    run = small_run(3, loss=0.2, retries=20)
    lines = run.trace.to_jsonl(tmp_path / "m.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == len(run.trace.kind)
    assert [row["id"] for row in rows] == run.trace.id.tolist()
    assert {row["fate"] for row in rows} == {"delivered", "lost"}
    with open(run.trace.to_csv(tmp_path / "m.csv"), newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    assert [float(r["sent"]) for r in table] == [row["sent"] for row in rows]


def test_same_seed_byte_identical_files(tmp_path):
    for name, write in (("t.json", "to_perfetto"), ("t.jsonl", "to_jsonl"),
                        ("t.csv", "to_csv")):
        first = getattr(small_run(7, loss=0.2, retries=9).trace, write)(tmp_path / f"a{name}")
        second = getattr(small_run(7, loss=0.2, retries=9).trace, write)(tmp_path / f"b{name}")
        assert first.read_bytes() == second.read_bytes()
    assert small_run(7).trace.to_mermaid() == small_run(7).trace.to_mermaid()


def test_summary_trace_cannot_export(tmp_path):
    run = rs.simulate(np.eye(2), np.eye(2), np.eye(2), trace="summary")
    with pytest.raises(rs.InvalidArgumentError, match="trace='full'"):
        run.trace.to_perfetto(tmp_path / "x.json")


def test_trace_columns_answer_to_their_record_names():
    run = small_run()
    np.testing.assert_array_equal(run.trace.arrives, run.trace.arrive)
    np.testing.assert_array_equal(run.trace.payload, run.trace.value)
