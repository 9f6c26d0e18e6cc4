"""rs.sweep: grid order, records, executors (concurrent.futures, Dask), progress, errors."""

from __future__ import annotations

import io
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import routing_sim as rs
from routing_sim.parallel import measure

GRID = {"strategy": ["ring", "ulysses"], "devices": [2, 4], "bandwidth": [1e9, 1e11]}


def _point(strategy: str, devices: int, bandwidth: float) -> dict:
    return measure(strategy=strategy, devices=devices, bandwidth=bandwidth, tokens=16,
                   heads=4, dim=4)


def test_records_follow_the_grid_order_with_the_point_first():
    records = rs.sweep(_point, GRID)
    assert [(r["strategy"], r["devices"], r["bandwidth"]) for r in records] == [
        (s, d, b) for s in GRID["strategy"] for d in GRID["devices"] for b in GRID["bandwidth"]]
    assert list(records[0])[:3] == ["strategy", "devices", "bandwidth"]
    assert all(r["max_relative_error"] < 1e-12 for r in records)
    # more bandwidth, shorter makespan; the same bytes
    slow, fast = records[0], records[1]
    assert fast["makespan"] < slow["makespan"] and fast["bytes_sent"] == slow["bytes_sent"]


def test_a_thread_pool_gives_the_in_process_records():
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert rs.sweep(_point, GRID, executor=pool) == rs.sweep(_point, GRID)


def test_a_dask_local_cluster_gives_the_in_process_records():
    distributed = pytest.importorskip("distributed", reason="the 'distributed' extra "
                                      "(dask.distributed) is not installed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  protocol="tcp", host="127.0.0.1", dashboard_address=None,
                                  ) as cluster, distributed.Client(cluster) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert rs.sweep(_point, GRID, executor=client) == rs.sweep(_point, GRID)


def test_the_progress_bar_is_drawn_only_when_asked(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    rs.sweep(lambda x: {"y": x}, {"x": [1, 2, 3, 4]})
    assert stream.getvalue() == ""                     # not a terminal
    rs.sweep(lambda x: {"y": x}, {"x": [1, 2, 3, 4]}, progress=True)
    assert stream.getvalue().endswith("\rsweep [" + "#" * 30 + "] 4/4\n")


@pytest.mark.parametrize("grid, message", [
    ({}, "non-empty dict"), ([("x", [1])], "non-empty dict"), ({"x": []}, r"grid\['x'\]"),
    ({"x": "abc"}, r"grid\['x'\]"), ({"not a name": [1]}, "identifiers"),
])
def test_bad_grids_are_named(grid, message):
    with pytest.raises(rs.InvalidArgumentError, match=message):
        rs.sweep(lambda **point: {}, grid)


def test_bad_functions_and_executors_are_named():
    with pytest.raises(rs.InvalidArgumentError, match="returned int"):
        rs.sweep(lambda x: x, {"x": [1]})
    with pytest.raises(rs.InvalidArgumentError, match="callable"):
        rs.sweep(3, {"x": [1]})
    with pytest.raises(rs.InvalidArgumentError, match="submit"):
        rs.sweep(lambda x: {}, {"x": [1]}, executor="dask")
