"""The two-phase barrier's bookkeeping: counting settled routes per query node, keeping
each node's latest arrival and each route's first, whatever form a wave's routes take (the
whole table in canonical order, the whole table in another order, a part), against a loop
over the routes or the trace."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.engines.fast import two_phase
from routing_sim.engines.fast.two_phase import on_routes, settle
from routing_sim.network.messages import Fate
from routing_sim.routes.table import RouteTable


@st.composite
def tables(draw):
    """A route table of 1-3 groups with empty rows, and one arrival time per route."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups, n_queries, n_keys = (draw(st.integers(1, 4)) for _ in range(3))
    allowed = rng.random((groups, n_queries, n_keys)) < draw(st.sampled_from([0.0, 0.5, 1.0]))
    table = RouteTable(allowed)
    times = rng.choice([0.5, 1.0, 1.25, np.nan], len(table)) if draw(st.booleans()) else \
        rng.uniform(0, 4, len(table))
    return table, times


def loop_settle(table: RouteTable, routes: np.ndarray, times: np.ndarray,
                latest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and latest times, one route after the other (NaN: no time, as fmax)."""
    counts, latest = np.zeros(table.n_nodes, np.int64), latest.copy()
    for route, time in zip(routes.tolist(), times.tolist()):
        node = int(table.query_node[route])
        counts[node] += 1
        if not np.isnan(time) and not time <= latest[node]:
            latest[node] = time
    return counts, latest


@given(tables(), st.sampled_from(["canonical", "shuffled", "part"]))
@settings(max_examples=80, deadline=None)
def test_settle_keeps_each_nodes_latest_arrival_as_a_loop_does(case, form):
    table, times = case
    rng = np.random.default_rng(len(table))
    routes = table.every_route()
    if form == "shuffled":
        routes = rng.permutation(len(routes)).astype(routes.dtype)     # every route, shuffled
    elif form == "part":
        routes = routes[rng.random(len(routes)) < 0.5]
    times = times[:len(routes)]
    latest = np.where(rng.random(table.n_nodes) < 0.5, np.nan, 0.75)       # some settled
    settled = np.zeros(table.n_nodes, np.int64)
    needed = table.routes_per_node().copy()
    expected_counts, expected_latest = loop_settle(table, routes, times, latest)
    ready = settle(table, routes, times, settled, needed, latest)
    np.testing.assert_array_equal(settled, expected_counts)
    np.testing.assert_array_equal(latest, expected_latest)
    assert ready.tolist() == np.flatnonzero((expected_counts == needed)
                                            & (expected_counts > 0)).tolist()


@given(tables(), st.booleans())
def test_on_routes_is_each_routes_query_node_entry(case, whole):
    table, _ = case
    routes = table.every_route() if whole else table.every_route()[::2].copy()
    per_node = np.arange(table.n_nodes) * 1.5
    expected = [per_node[int(table.query_node[route])] for route in routes.tolist()]
    assert on_routes(table, routes, per_node).tolist() == expected


def test_a_jittered_whole_wave_settles_in_canonical_order():
    """Selection: with jitter each two-phase wave's routes are the table's own route ids,
    one time each, so the barrier takes the slice-per-node reduction."""
    seen = []
    original = two_phase.settle

    def spy(table, routes, times, *rest):
        seen.append(routes is table.every_route() and len(np.unique(times)) > 1)
        return original(table, routes, times, *rest)

    q, k, v = np.random.default_rng(3).normal(size=(3, 2, 6, 4))
    with mock.patch.object(two_phase, "settle", spy):
        rs.simulate(q, k, v, network=rs.Network(jitter=0.5, seed=1))
    assert seen and all(seen)


@pytest.mark.parametrize("network", [rs.Network(jitter=0.5, seed=2),
                                     rs.Network(latency=0.0, jitter=1.0, seed=4),
                                     rs.Network(jitter=0.5, duplicate=0.3, seed=6)])
def test_routing_tables_show_when_each_value_first_arrived(network):
    """A query node's first VALUE per route, as the trace logged it (a whole jittered wave
    records its arrivals as one copy; copies of a message do not count)."""
    q, k, v = np.random.default_rng(5).normal(size=(3, 7, 4))
    run = rs.simulate(q, k, v, network=network, trace="full", is_causal=True)
    trace = run.trace
    values = (trace.kind == rs.Kind.VALUE) & (trace.fate == Fate.DELIVERED)
    first: dict[tuple[int, int], float] = {}
    for query, key, arrive in zip(trace.dst[values].tolist(), trace.src[values].tolist(),
                                  trace.arrive[values].tolist()):
        first[query, key] = min(arrive, first.get((query, key), np.inf))
    for query in range(7):
        assert {(query, route.source): route.arrived
                for route in run.routing_table(query).routes} == \
            {pair: time for pair, time in first.items() if pair[0] == query}
