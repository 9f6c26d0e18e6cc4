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
from routing_sim.network.messages import Fate


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
    for _, arrow, _, kind in messages:
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


# Every kind's direction, written out by hand from the protocol (not read from Kind).
TO_KEY = {"QUERY": True, "SCORE": False, "PULL": True, "VALUE": False,
          "GRAD_OUTPUT": True, "GRAD_SHARE": False, "GRAD_SCORE": True, "GRAD_KEY": False}
# Whose vector a vector payload is: the sender's (q_i, v_j, dO_i, k_j).
VECTOR = re.compile(r"^(q|v|dO|s\*dS\*k)\[(\d+)\]$")


def directed_runs(cross: bool):
    """A forward and a backward trace of one masked run with every message kind."""
    rng = np.random.default_rng(5)
    if cross:
        mask = np.array([[True, False, True], [False, True, True]])
        graph = rs.graphs.complete(2, 3)
    else:
        mask = np.tril(np.ones((3, 3), dtype=bool))
        graph = None
    q = rng.normal(size=(mask.shape[0], 2))
    k, v = rng.normal(size=(2, mask.shape[1], 2))
    run = rs.simulate(q, k, v, attn_mask=mask, graph=graph, trace="full")
    grads = run.backward(rng.normal(size=run.output.shape))
    return mask, (run.trace, grads.trace)


def expected_ends(mask: np.ndarray, cross: bool) -> set[tuple[str, str, str]]:
    """(kind, sender name, receiver name) for every kind on every allowed route."""
    ask = "query" if cross else "token"
    answer = "key" if cross else "token"
    ends = set()
    for kind, to_key in TO_KEY.items():
        for i, j in zip(*np.nonzero(mask)):
            asker, answerer = f"{ask} {i}", f"{answer} {j}"
            ends.add((kind, asker, answerer) if to_key else (kind, answerer, asker))
    return ends


@pytest.mark.parametrize("cross", [True, False])
def test_every_kind_travels_its_own_way_in_every_exporter(tmp_path, cross):
    mask, traces = directed_runs(cross)
    expected = expected_ends(mask, cross)
    ask, answer = ("query", "key") if cross else ("token", "token")
    seen = {name: set() for name in ("columns", "mermaid", "perfetto", "jsonl", "csv")}
    for number, trace in enumerate(traces):
        assert {rs.Kind(k).name for k in np.unique(trace.kind)} == \
            set(list(TO_KEY)[4 * number:4 * number + 4])
        for kind, src, dst in zip(trace.kind.tolist(), trace.src.tolist(), trace.dst.tolist()):
            to_key = TO_KEY[rs.Kind(kind).name]
            seen["columns"].add((rs.Kind(kind).name, f"{ask if to_key else answer} {src}",
                                 f"{answer if to_key else ask} {dst}"))
        participants, lines = {}, trace.to_mermaid().splitlines()
        for line in lines[1:]:
            if match := re.match(r"^    participant n(\d+) as (.+)$", line):
                participants[match[1]] = match[2]
            elif match := re.match(r"^    n(\d+)(->>|-->>)n(\d+): (\w+) (\S+) \(t=", line):
                sender, receiver = participants[match[1]], participants[match[3]]
                seen["mermaid"].add((match[4], sender, receiver))
                assert (match[2] == "->>") == TO_KEY[match[4]]
                if vector := VECTOR.match(match[5]):    # a vector is the sender's own
                    assert sender.endswith(f" {vector[2]}"), line
        events = json.loads(trace.to_perfetto(tmp_path / f"{number}.json").read_text())
        threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events["traceEvents"]
                   if e["name"] == "thread_name"}
        starts = {e["id"]: e for e in events["traceEvents"] if e["ph"] == "s"}
        for finish in (e for e in events["traceEvents"] if e["ph"] == "f"):
            start = starts[finish["id"]]
            seen["perfetto"].add((finish["name"], threads[(start["pid"], start["tid"])],
                                  threads[(finish["pid"], finish["tid"])]))
        rows = [json.loads(line) for line in
                trace.to_jsonl(tmp_path / f"{number}.jsonl").read_text().splitlines()]
        with open(trace.to_csv(tmp_path / f"{number}.csv"), newline="") as handle:
            table = list(csv.DictReader(handle))
        for name, records in (("jsonl", rows), ("csv", table)):
            for row in records:
                to_key = TO_KEY[row["kind"]]
                seen[name].add((row["kind"], f"{ask if to_key else answer} {row['src']}",
                                f"{answer if to_key else ask} {row['dst']}"))
    for name, ends in seen.items():
        assert ends == expected, name


@settings(max_examples=20)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_gradient_messages_run_along_the_forward_routes(n_queries, n_keys, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_queries, n_keys)) < 0.7
    mask[:, 0] = True
    q = rng.normal(size=(n_queries, 3))
    k, v = rng.normal(size=(2, n_keys, 3))
    run = rs.simulate(q, k, v, attn_mask=mask, graph=rs.graphs.complete(n_queries, n_keys),
                      trace="full")
    trace = run.backward(rng.normal(size=(n_queries, 3))).trace
    routes = {(int(i), int(j)) for i, j in zip(*np.nonzero(mask))}
    for kind, to_key in TO_KEY.items():
        if kind in ("QUERY", "SCORE", "PULL", "VALUE"):
            continue
        mine = trace.kind == rs.Kind[kind]
        pairs = set(zip(trace.src[mine].tolist(), trace.dst[mine].tolist()))
        assert pairs == (routes if to_key else {(j, i) for i, j in routes}), kind


def test_online_pulls_carry_no_share_two_phase_pulls_do(tmp_path):
    q, k, v = np.random.default_rng(2).normal(size=(3, 4, 3))
    online = rs.simulate(q, k, v, softmax="online", trace="full")
    pulls = online.trace.kind == rs.Kind.PULL
    assert pulls.sum() == 16 and np.isnan(online.trace.value[pulls]).all()
    assert all(m.value is None for m in online.trace if m.kind == "PULL")
    text = online.trace.to_mermaid()
    assert text.count("PULL (no share: online)") == 16 and "w=" not in text
    rows = [json.loads(line) for line in
            online.trace.to_jsonl(tmp_path / "o.jsonl").read_text().splitlines()]
    assert all(row["value"] is None for row in rows if row["kind"] == "PULL")
    two_phase = rs.simulate(q, k, v, trace="full")
    pulls = two_phase.trace.kind == rs.Kind.PULL
    shares = two_phase.weights[two_phase.trace.src[pulls], two_phase.trace.dst[pulls]]
    np.testing.assert_array_equal(two_phase.trace.value[pulls], shares)


def test_mermaid_escapes_token_labels():
    labels = ["x;", "end", "a#b", "c:d", "e\nf"]
    q = k = v = np.eye(5)
    run = rs.simulate(q, k, v, graph=rs.graphs.complete(5, labels=labels), trace="full")
    text = run.trace.to_mermaid(query=0)
    names = re.findall(r"^    participant n\d+ as (.*)$", text, re.MULTILINE)
    assert len(text.splitlines()) == 1 + 5 + 4 * 5 + 1     # header, nodes, messages, note
    for name in names:
        assert not set(re.sub(r"#\d+;", "", name)) & set(";#:\n")
    decoded = {re.sub(r"#(\d+);", lambda m: chr(int(m[1])), name) for name in names}
    assert decoded == {f"token {label} ({i})" for i, label in enumerate(labels)}


def test_mermaid_refuses_a_query_or_group_that_does_not_exist():
    run = small_run()
    for options, name in (({"query": 4}, "query"), ({"query": -1}, "query"),
                          ({"group": 1}, "group"), ({"group": 99}, "group")):
        with pytest.raises(rs.InvalidArgumentError, match=f"^{name} must be .* got -?\\d+$"):
            run.trace.to_mermaid(**options)


def test_mermaid_marks_lost_duplicated_and_retried_messages():
    run = small_run(3, loss=0.3, duplicate=0.3, retries=30)
    trace = run.trace
    lines = trace.to_mermaid(query=3).splitlines()
    mine = np.where(np.isin(trace.kind, [rs.Kind.QUERY, rs.Kind.PULL]), trace.src,
                    trace.dst) == 3
    lost = mine & (trace.fate != Fate.DELIVERED)
    assert lost.any() and (mine & (trace.copy == 1)).any() and (mine & (trace.attempt > 0)).any()
    crossed = [line for line in lines if re.match(r"^    n\d+--?xn\d+: ", line)]
    assert len(crossed) == lost.sum()
    assert all(re.search(r"[(,] ?lost, sent t=", line) for line in crossed)
    assert sum("duplicate" in line for line in lines) == (mine & (trace.copy == 1)).sum()
    assert sum("(retry " in line for line in lines) == (mine & (trace.attempt > 0)).sum()
    assert len([line for line in lines if re.match(r"^    n\d+", line)]) == mine.sum()


def test_mermaid_fenced_for_markdown():
    run = small_run()
    plain = run.trace.to_mermaid(query=1)
    assert run.trace.to_mermaid(query=1, fenced=True) == f"```mermaid\n{plain}```\n"
