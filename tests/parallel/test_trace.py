"""The context-parallel trace: Perfetto with a process per device, Mermaid, JSONL."""

from __future__ import annotations

import json

import numpy as np
import pytest

import routing_sim as rs


def _run(devices: int = 4, **options):
    rng = np.random.default_rng(0)
    query, key, value = rng.normal(size=(3, 2, 4 * devices, 4))
    return rs.context_parallel(query, key, value, strategy="ring",
                               cluster=rs.Cluster(devices=devices), **options)


def test_perfetto_has_one_process_per_device_and_a_flow_per_delivered_transfer(tmp_path):
    run = _run(network=rs.Network(loss=0.3, retries=20, seed=3))
    document = json.loads(run.trace.to_perfetto(tmp_path / "ring.json").read_text())
    events = document["traceEvents"]
    processes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert processes == {device: f"device {device}" for device in range(4)}
    delivered = [t for t in run.trace.transfers if t["fate"] == "delivered"]
    starts = sorted(e["id"] for e in events if e["ph"] == "s")
    ends = sorted(e["id"] for e in events if e["ph"] == "f")
    assert starts == ends == sorted(t["id"] for t in delivered)
    compute = [e for e in events if e["ph"] == "X" and e["cat"] == "compute"]
    assert sorted((e["pid"], e["name"]) for e in compute) == sorted(
        (d, f"q{d}·kv{h}") for d in range(4) for h in range(4))
    total = sum(e["dur"] for e in compute) / 1e6
    assert total == pytest.approx(run.stats.compute_time.sum(), rel=1e-12)


def test_mermaid_draws_every_data_transfer_and_compute_slice():
    run = _run(devices=2)
    text = run.trace.to_mermaid()
    assert text.splitlines()[:3] == ["sequenceDiagram", "    participant d0 as device 0",
                                     "    participant d1 as device 1"]
    assert text.count("->>") == 2 and text.count("Note over") == 4
    assert "d0->>d1: kv[0] 512 B" in text


def test_mermaid_refuses_many_devices():
    with pytest.raises(rs.InvalidArgumentError, match="at most 8 devices, this run has 9"):
        _run(devices=9).trace.to_mermaid()


def test_jsonl_writes_every_event_in_time_order(tmp_path):
    run = _run()
    lines = run.trace.to_jsonl(tmp_path / "ring.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(run.trace) == 16 + 12
    times = [r["start"] if r["type"] == "compute" else r["sent"] for r in records]
    assert times == sorted(times)


def test_a_summary_trace_keeps_the_stats_only():
    full, summary = _run(), _run(trace="summary")
    assert len(summary.trace) == 0
    assert summary.stats.makespan == full.stats.makespan
    assert np.array_equal(summary.stats.bytes_sent, full.stats.bytes_sent)


def test_repr_names_the_run():
    text = repr(_run())
    assert text.startswith("ParallelRun(strategy='ring', layout='contiguous', devices=4, "
                           "output=(2, 16, 4), makespan=")
