"""The barrier arithmetic's fast paths: row blocks (a full graph) and span blocks (a dense mask
of one key run per row), any schedule, same bits."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim import simulation
from routing_sim.numerics import tiles
from routing_sim.numerics.tiles import RowBlocks

SCHEDULES = [rs.Network(latency=0.0), rs.Network(jitter=2.0, seed=4),
             rs.Network(loss=0.3, duplicate=0.2, reorder=0.3, retries=30, seed=5)]


@pytest.fixture
def small_blocks(monkeypatch):
    """Row blocks of 12 routes: several blocks per group, blocks of one row at S > 12."""
    monkeypatch.setattr(simulation, "RowBlocks", partial(RowBlocks, entries=12))


def full_inputs(seed: int, batch: tuple[int, ...] = (2,), n_queries: int = 7,
                n_keys: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(*batch, n_queries, 4)) * 2, rng.normal(size=(*batch, n_keys, 4)) * 2,
            rng.normal(size=(*batch, n_keys, 3)))


@pytest.mark.usefixtures("small_blocks")
@given(st.integers(0, 2**32 - 1), st.sampled_from(["two_phase", "online"]),
       st.sampled_from([{}, {"sinks": [0.5, -1.0]}, {"score_mod": rs.mods.softcap(3.0)},
                        {"dropout_p": 0.4, "seed": 3}, {"attn_mask": "bias"}]))
def test_every_schedule_gives_the_same_bits(seed, softmax, options):
    query, key, value = full_inputs(seed)
    if options.get("attn_mask") == "bias":                     # a float mask: every route kept
        options = {"attn_mask": np.random.default_rng(seed).normal(size=(7, 5))}
    runs = [rs.simulate(query, key, value, network=network, softmax=softmax, **options)
            for network in [rs.Network(), *SCHEDULES]]
    assert all(run.state.rows is not None for run in runs)      # the row blocks ran
    for run in runs[1:]:
        np.testing.assert_array_equal(run.weights, runs[0].weights)
        if softmax == "two_phase":                 # online: its last bits follow arrivals
            np.testing.assert_array_equal(run.output, runs[0].output)
    expected = rs.attention(query, key, value, **options)
    tolerance, _ = rs.verify.tolerance(query, key, value, **options)
    assert (np.abs(runs[0].output - expected) <= tolerance).all()


@pytest.mark.usefixtures("small_blocks")
@given(st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_hard_routing_keeps_the_top_k_on_row_blocks(seed, top_k):
    query, key, value = full_inputs(seed, batch=(), n_queries=6, n_keys=6)
    run = rs.simulate(query, key, value, routing="topk", top_k=top_k,
                      network=rs.Network(jitter=1.0, seed=seed % 97))
    assert run.state.rows is not None
    scores = query @ key.T / 2.0                                       # (L, S), scale 1/sqrt(4)
    for row, weights in enumerate(run.weights):
        top = np.sort(np.argsort(-scores[row], kind="stable")[:top_k])
        assert set(np.flatnonzero(weights)) <= set(top)
        exp = np.exp(scores[row, top] - scores[row, top].max())
        np.testing.assert_allclose(weights[top], exp / exp.sum(), rtol=1e-12)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("seed", range(3))
def test_a_node_that_loses_a_route_computes_its_own_row(seed):
    query, key, value = full_inputs(seed)
    lossy = rs.Network(loss=0.3, retries=1, on_missing="degrade", seed=seed)
    run = rs.simulate(query, key, value, network=lossy)
    whole = rs.simulate(query, key, value)
    assert run.dropped and run.state.rows is not None
    allowed = np.ones((2, 7, 5), dtype=bool)
    for route in run.dropped:
        allowed[route.group[0], route.query, route.key] = False
    touched = ~allowed.all(axis=-1)                                    # (2, 7) lost a route
    np.testing.assert_array_equal(run.output[~touched], whole.output[~touched])
    expected = rs.attention(query, key, value, attn_mask=allowed)
    tolerance, _ = rs.verify.tolerance(query, key, value, attn_mask=allowed)
    assert (np.abs(run.output - expected) <= tolerance).all()


def one_run_mask(seed: int, n_queries: int, n_keys: int, kind: str) -> np.ndarray:
    """(L, S): a causal mask, causal with left padding, or any one run per row (some empty,
    never all: a table with no route has no blocks)."""
    rng = np.random.default_rng(seed)
    causal = np.tril(np.ones((n_queries, n_keys), dtype=bool))
    if kind == "causal":
        return causal
    if kind == "padded":                                          # the first keys are padding
        return causal & (np.arange(n_keys) >= rng.integers(0, n_keys))
    low, high = rng.integers(0, n_keys + 1, size=(2, n_queries))
    low[0] = min(low[0], n_keys - 1)                   # one route at least: a table to block
    high[0] = max(high[0], low[0] + 1)
    return (np.arange(n_keys) >= low[:, None]) & (np.arange(n_keys) < high[:, None])


@given(st.integers(0, 2**32 - 1), st.sampled_from(["two_phase", "online"]),
       st.sampled_from(["causal", "padded", "runs"]),
       st.sampled_from([{}, {"sinks": [0.5, -1.0]}, {"dropout_p": 0.4, "seed": 3},
                        {"bias": True}, {"alibi_slopes": [0.5, 0.25]}]), st.booleans())
def test_span_blocks_give_the_same_bits_on_every_schedule(seed, softmax, kind, options, small):
    with pytest.MonkeyPatch.context() as patch:
        if small:                 # blocks of at most 12 entries: several a group, some one row
            patch.setattr(tiles, "BLOCK_ENTRIES", 12)      # and parts of 5: often one row
            patch.setattr(tiles, "SPAN_PART_ENTRIES", 5)
        same_bits_on_span_blocks(seed, softmax, kind, options)


def same_bits_on_span_blocks(seed: int, softmax: str, kind: str, options: dict) -> None:
    query, key, value = full_inputs(seed, n_queries=9, n_keys=9)
    mask = one_run_mask(seed, 9, 9, kind)
    if options.get("bias"):                       # a float mask: -inf drops, the rest adds
        bias = np.random.default_rng(seed).normal(size=(9, 9))
        options = {"attn_mask": np.where(mask, bias, -np.inf)}
    else:
        options = {"attn_mask": mask, **options}
    runs = [rs.simulate(query, key, value, network=network, softmax=softmax, **options)
            for network in [rs.Network(), *SCHEDULES]]
    assert all(run.state.spans is not None and run.state.tiles is None for run in runs)
    for run in runs[1:]:
        np.testing.assert_array_equal(run.weights, runs[0].weights)
        if softmax == "two_phase":                 # online: its last bits follow arrivals
            np.testing.assert_array_equal(run.output, runs[0].output)
            np.testing.assert_array_equal(run.lse, runs[0].lse)
    expected, lse = rs.attention(query, key, value, return_lse=True, **options)
    tolerance, _ = rs.verify.tolerance(query, key, value, **options)
    assert (np.abs(runs[0].output - expected) <= tolerance).all()
    np.testing.assert_allclose(runs[0].lse, lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parts", [5, 2**16])
def test_span_blocks_refuse_a_route_that_overflows_not_a_padded_pair(parts, monkeypatch):
    """A block's product holds pairs that are no route (its padding): their dots may
    overflow, which is no error; a route's may not."""
    monkeypatch.setattr(tiles, "SPAN_PART_ENTRIES", parts)
    query, key, value = full_inputs(0, n_queries=9, n_keys=9)
    query[0, :, 0], key[0, :, 0] = 0.0, 0.0                # dimension 0: only these two
    query[0, 2, 0], key[0, 6, 0] = 1e200, 1e200            # q_2 · k_6 overflows: blocked
    run = rs.simulate(query, key, value, is_causal=True)
    assert run.state.spans is not None
    with np.errstate(over="ignore"):                       # the matrix form computes it too
        expected = rs.attention(query, key, value, is_causal=True)
    np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-12)
    key[0, 1, 0] = 1e200                                   # q_2 · k_1 overflows: a route
    with pytest.raises(rs.NumericalError, match="overflow"):
        rs.simulate(query, key, value, is_causal=True)


@pytest.mark.parametrize("mod", [False, True])
def test_row_blocks_refuse_a_score_that_overflows_not_scores_whose_sum_does(mod):
    """A full table's row block: huge finite scores whose sum overflows, and routes a
    score_mod removed (-inf), are no overflow; one score that overflows is."""
    query, key, value = full_inputs(0, n_queries=9, n_keys=9)
    query[0, :, 0], key[0, :, 0] = 0.0, 0.0                # dimension 0: only these pairs
    query[0, 2, 0], key[0, :4, 0] = 1e154, 1e154           # q_2 · k_j = 1e308 for j < 4
    def causal(score, b, h, q_idx, kv_idx):                 # removes k_3 .. from q_2
        return np.where(kv_idx <= q_idx, score, -np.inf)
    options = {"score_mod": causal} if mod else {}
    run = rs.simulate(query, key, value, scale=1.0, **options)
    assert run.state.rows is not None
    with np.errstate(over="ignore"):                       # the matrix form sums them too
        expected = rs.attention(query, key, value, scale=1.0, **options)
    np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-12)
    key[0, 1, 0] = 1e160                                   # q_2 · k_1 overflows: a route
    with pytest.raises(rs.NumericalError, match="overflow"):
        rs.simulate(query, key, value, scale=1.0, **options)


@pytest.mark.parametrize("padded", [False, True])
def test_span_blocks_refuse_a_bias_that_overflows_a_route(padded):
    """A float mask's finite part is added to the routes' scores on span blocks: a sum
    that overflows is the project's NumericalError, not numpy's RuntimeWarning (an error
    under this suite's filters), on blocks with padding (causal) and without (every row
    whole but the last, which has no route)."""
    query, key, value = full_inputs(0, n_queries=9, n_keys=9)
    query[0, :, 0], key[0, :, 0] = 0.0, 0.0                # dimension 0: only this pair
    query[0, 2, 0], key[0, 1, 0] = 1e154, 1e154            # q_2 · k_1 = 1e308, finite
    mask = np.zeros((9, 9))
    if padded:
        mask[np.triu_indices(9, 1)] = -np.inf              # causal: rows of runs, padded
    else:
        mask[8] = -np.inf                                  # not full: span blocks, no padding
    assert rs.simulate(query, key, value, attn_mask=mask).state.spans is not None
    mask[2, 1] = 1.7e308                                   # the route's score + 1.7e308: inf
    with pytest.raises(rs.NumericalError, match="overflow"):
        rs.simulate(query, key, value, attn_mask=mask)


@pytest.mark.parametrize("seed", range(3))
def test_a_node_that_loses_a_route_on_span_blocks_computes_its_own_row(seed):
    query, key, value = full_inputs(seed, n_queries=9, n_keys=9)
    mask = one_run_mask(seed, 9, 9, "causal")
    lossy = rs.Network(loss=0.3, retries=1, on_missing="degrade", seed=seed)
    run = rs.simulate(query, key, value, attn_mask=mask, network=lossy)
    whole = rs.simulate(query, key, value, attn_mask=mask)
    assert run.dropped and run.state.spans is not None
    allowed = np.broadcast_to(mask, (2, 9, 9)).copy()
    for route in run.dropped:
        allowed[route.group[0], route.query, route.key] = False
    touched = (allowed != mask).any(axis=-1)                           # (2, 9) lost a route
    np.testing.assert_array_equal(run.output[~touched], whole.output[~touched])
    expected = rs.attention(query, key, value, attn_mask=allowed)
    tolerance, _ = rs.verify.tolerance(query, key, value, attn_mask=allowed)
    assert (np.abs(run.output - expected) <= tolerance).all()


def test_a_decoding_step_takes_the_per_node_path():
    """One query row a group: no row blocks (the stacked per-node softmax covers every
    group in one call); the bits still hold under every schedule and the float contract."""
    rng = np.random.default_rng(5)
    query, key, value = rng.normal(size=(4, 1, 16)), *rng.normal(size=(2, 4, 160, 16))
    runs = [rs.simulate(query, key, value, network=network)
            for network in [rs.Network(), *SCHEDULES]]
    assert all(run.state.rows is None and run.state.spans is None for run in runs)
    for run in runs[1:]:
        np.testing.assert_array_equal(run.output, runs[0].output)
    expected = rs.attention(query, key, value)
    tolerance, _ = rs.verify.tolerance(query, key, value)
    assert (np.abs(runs[0].output - expected) <= tolerance).all()
