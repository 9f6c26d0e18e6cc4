"""RouteTable from a dense mask: the same routes, in canonical order, whatever the mask."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from routing_sim.routes.table import RouteTable


@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_a_dense_mask_gives_every_allowed_route_in_canonical_order(groups, n_queries, n_keys,
                                                                    runs, seed):
    rng = np.random.default_rng(seed)
    if runs:                                   # one run of keys per row (causal, padding)
        low, high = rng.integers(0, n_keys + 1, size=(2, groups, n_queries))
        column = np.arange(n_keys)
        allowed = (column >= low[..., None]) & (column < high[..., None])
    else:                                      # any mask: gaps inside rows
        allowed = rng.random((groups, n_queries, n_keys)) < 0.5
    table = RouteTable(allowed)
    rows = allowed.reshape(groups * n_queries, n_keys)
    expected_node = [u for u in range(len(rows)) for j in range(n_keys) if rows[u, j]]
    expected_key = [j for u in range(len(rows)) for j in range(n_keys) if rows[u, j]]
    assert table.query_node.tolist() == expected_node
    assert table.key_index.tolist() == expected_key
    assert table.key_index.dtype == table.index_type
    assert table.indptr.tolist() == [0, *np.cumsum(rows.sum(axis=1)).tolist()]


@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.booleans(), st.booleans(),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_route_counts_count_each_nodes_routes(groups, n_queries, n_keys, runs, self_attention,
                                              key_runs, seed):
    """Asking and answering counts per physical node, from the mask itself: the same
    whether the table holds one run a row, its runs of keys (the tiles asked for them;
    both counted from where runs open) or neither."""
    rng = np.random.default_rng(seed)
    if runs:
        low, high = rng.integers(0, n_keys + 1, size=(2, groups, n_queries))
        column = np.arange(n_keys)
        allowed = (column >= low[..., None]) & (column < high[..., None])
    else:
        allowed = rng.random((groups, n_queries, n_keys)) < 0.5
    table = RouteTable(allowed, self_attention)
    assert table.runs is not None or table.full or not runs           # the runs' own count
    if key_runs and not table.full:
        table.key_runs()
    asking, answering = table.route_counts()
    span = n_queries if table.self_attention else n_queries + n_keys
    offset = 0 if table.self_attention else n_queries
    expected_asking, expected_answering = np.zeros((2, groups, span), dtype=np.int64)
    expected_asking[:, :n_queries] = allowed.sum(axis=2)              # (G, L) routes it asks
    expected_answering[:, offset:offset + n_keys] += allowed.sum(axis=1)  # (G, S) it answers
    assert asking.tolist() == expected_asking.reshape(-1).tolist()
    assert answering.tolist() == expected_answering.reshape(-1).tolist()


@given(st.integers(2, 4), st.integers(1, 9), st.integers(1, 9), st.sampled_from(
    ["causal", "runs", "gaps", "full", "keys"]), st.integers(0, 2**32 - 1))
def test_one_mask_shared_by_every_group_gives_the_same_table(groups, n_queries, n_keys, kind,
                                                             seed):
    """A mask broadcast across groups (a view of stride 0) is read once: the same table
    as its copy in every group."""
    rng = np.random.default_rng(seed)
    column = np.arange(n_keys)
    if kind == "causal":
        mask = column <= np.arange(n_queries)[:, None]
    elif kind == "runs":
        low, high = rng.integers(0, n_keys + 1, size=(2, n_queries))
        mask = (column >= low[:, None]) & (column < high[:, None])
    elif kind == "gaps":
        mask = rng.random((n_queries, n_keys)) < 0.5
    elif kind == "full":
        mask = np.ones((1, 1), dtype=bool)
    else:                                         # one padding mask for every query
        mask = column[None, :] < rng.integers(0, n_keys + 1)
    shared = np.broadcast_to(mask, (groups, n_queries, n_keys))
    table, copied = RouteTable(shared), RouteTable(shared.copy())
    assert shared.strides[0] == 0 and copied.full == table.full
    assert table.indptr.tolist() == copied.indptr.tolist()
    assert table.query_node.tolist() == copied.query_node.tolist()
    assert table.key_index.tolist() == copied.key_index.tolist()
    assert [a.tolist() for a in table.route_counts()] == \
        [a.tolist() for a in copied.route_counts()]


@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_key_runs_are_the_runs_of_consecutive_keys_in_each_row(groups, n_queries, n_keys, seed):
    """Every run: a row's keys k, k + 1, ... that no gap splits, found route by route."""
    allowed = np.random.default_rng(seed).random((groups, n_queries, n_keys)) < 0.6
    table = RouteTable(allowed)
    assume(not table.full)                        # a full table keeps its keys implicit
    expected = []                                 # (first route, length, node), route order
    route = 0
    for node, row in enumerate(allowed.reshape(-1, n_keys)):
        keys = np.flatnonzero(row).tolist()
        for at, key in enumerate(keys):
            if at and key == keys[at - 1] + 1:
                expected[-1][1] += 1
            else:
                expected.append([route, 1, node])
            route += 1
    first, length, node = table.key_runs()
    assert [list(run) for run in zip(first.tolist(), length.tolist(), node.tolist())] == \
        expected
