"""The trace as a REPL object: records, length, iteration, pandas, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.network.messages import Fate, Kind, Message
from routing_sim.trace import log
from routing_sim.trace.log import _COUNTING_PASSES, LATENCY_BINS, _bin_of, _latency_counts


def test_a_summary_trace_has_no_columns_and_hasattr_says_so():
    run = rs.simulate(np.eye(2), np.eye(2), np.eye(2), trace="summary")
    assert not hasattr(run.trace, "kind")
    with pytest.raises(rs.SummaryTraceError, match="trace='full'") as caught:
        _ = run.trace.arrive
    assert isinstance(caught.value, AttributeError)
    assert isinstance(caught.value, rs.InvalidArgumentError)
    for use in (lambda t: t[0], list, lambda t: t.to_mermaid()):
        with pytest.raises(rs.SummaryTraceError):
            use(run.trace)


def test_the_trace_answers_only_to_its_documented_names():
    trace = rs.simulate(np.eye(2), np.eye(2), np.eye(2), trace="full").trace
    assert not hasattr(trace, "arrives") and not hasattr(trace, "payload")
    with pytest.raises(AttributeError, match="'Trace' object has no attribute 'arrives'"):
        _ = trace.arrives


def test_a_full_trace_is_a_sequence_of_named_records():
    q = k = v = np.eye(2)
    trace = rs.simulate(q, k, v, trace="full", network=rs.Network(latency=1.0)).trace
    assert len(trace) == 16
    first = trace[0]
    assert isinstance(first, Message)
    # Route 0 -> 0 asks first: a QUERY of 2 float64 from token 0 to itself, sent at 0.
    assert first == Message(id=0, kind="QUERY", src=0, dst=0, group=0, sent=0.0, arrive=1.0,
                            nbytes=16, value=None, attempt=0, copy=0, fate="delivered",
                            rescale=None)
    assert trace[-1].kind == "VALUE" and trace[-1] == list(trace)[15]
    assert [m.kind for m in trace].count("SCORE") == 4
    assert [m.value for m in trace if m.kind == "SCORE"] == trace.value[trace.kind == 1].tolist()
    with pytest.raises(IndexError, match="16"):
        trace[16]
    with pytest.raises(rs.InvalidArgumentError, match="integer"):
        trace["0"]


def test_len_counts_every_logged_transmission_in_both_details():
    q, k, v = np.random.default_rng(1).normal(size=(3, 4, 2))
    network = dict(loss=0.3, duplicate=0.3, retries=30, seed=4)
    full = rs.simulate(q, k, v, trace="full", network=rs.Network(**network)).trace
    summary = rs.simulate(q, k, v, trace="summary", network=rs.Network(**network)).trace
    assert (full.copy == 1).any() and (full.fate != 0).any()
    assert len(full) == len(full.kind) == len(list(full)) == len(summary)


def test_repr_is_one_short_line():
    trace = rs.simulate(np.eye(3), np.eye(3), np.eye(3), trace="full").trace
    assert repr(trace) == ("<Trace full: 36 transmissions (QUERY 9, SCORE 9, PULL 9, "
                           "VALUE 9)>")


def test_to_pandas_names_kinds_and_fates():
    pandas = pytest.importorskip("pandas", reason="pandas is optional")
    q, k, v = np.random.default_rng(1).normal(size=(3, 3, 2))
    trace = rs.simulate(q, k, v, trace="full",
                        network=rs.Network(loss=0.3, retries=30, seed=2)).trace
    frame = trace.to_pandas()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == len(trace)
    assert list(frame.columns) == list(Message._fields)
    assert frame["kind"].tolist() == [m.kind for m in trace]
    assert frame["fate"].tolist() == [m.fate for m in trace]
    assert "lost" in set(frame["fate"])
    np.testing.assert_array_equal(frame["sent"].to_numpy(), trace.sent)


def searchsorted_bins(latency: np.ndarray) -> np.ndarray:
    """The histogram's definition, independently: each latency's bin by a binary search
    over every edge, clipped to the first and last bin."""
    return np.clip(np.searchsorted(LATENCY_BINS, latency, side="right") - 1, 0,
                   len(LATENCY_BINS) - 2)


def searchsorted_counts(latency: np.ndarray) -> np.ndarray:
    return np.bincount(searchsorted_bins(latency), minlength=len(LATENCY_BINS) - 1)


latencies = st.one_of(st.floats(allow_nan=False, allow_infinity=True),
                      st.sampled_from(LATENCY_BINS.tolist()))


@given(latencies)
def test_one_latency_falls_in_the_bin_the_array_binning_gives(latency):
    assert _bin_of(latency) == int(searchsorted_bins(np.array([latency]))[0])


@given(st.lists(latencies, min_size=1, max_size=50))
def test_latency_counts_bin_each_latency_as_a_binary_search_over_every_edge(values):
    latency = np.array(values)
    np.testing.assert_array_equal(_latency_counts(latency), searchsorted_counts(latency))


@given(st.floats(1e-7, 1e5), st.integers(0, 3 * _COUNTING_PASSES), st.integers(1, 300),
       st.integers(0, 2**32 - 1))
def test_latency_counts_on_narrow_and_wide_spans(low, bins_spanned, size, seed):
    """Both ways of counting (a pass per edge inside the span, a search among those edges)
    against the definition, with latencies on and next to the edges."""
    rng = np.random.default_rng(seed)
    high = low * 10 ** (bins_spanned / 50)
    edges = LATENCY_BINS[(LATENCY_BINS >= low) & (LATENCY_BINS <= high)]
    latency = np.concatenate((rng.uniform(low, high, size), edges, np.nextafter(edges, 0),
                              [low, high]))
    np.testing.assert_array_equal(_latency_counts(latency), searchsorted_counts(latency))


def test_a_nan_latency_takes_the_last_bin_as_the_binary_search_puts_it():
    latency = np.array([1.0, np.nan, 2.0])
    np.testing.assert_array_equal(_latency_counts(latency), searchsorted_counts(latency))


@pytest.mark.parametrize("latency", [0.0, 1e-7, 1.0, 3.7, 1e7])
def test_percentiles_of_one_latency_match_the_histogram_definition(latency):
    run = rs.simulate(np.eye(3), np.eye(3), np.eye(3), trace="summary",
                      network=rs.Network(latency=latency))
    counts = run.trace.latency_histogram[Kind.SCORE]
    cumulative = np.cumsum(counts) / counts.sum()                  # the general definition
    edges = LATENCY_BINS[1:]
    expected = {f"p{q}": float(edges[np.searchsorted(cumulative, q / 100)])
                for q in (0, 50, 90, 99)} | {"max": float(edges[np.flatnonzero(counts)[-1]])}
    assert run.trace.latency_percentiles(Kind.SCORE, (0, 50, 90, 99)) == expected
    assert run.trace.latency_percentiles(Kind.SCORE) == {
        name: expected[name] for name in ("p50", "p90", "p99", "max")}


@pytest.mark.parametrize("chunk", [1, 7, 2**16])
@pytest.mark.parametrize("network", [rs.Network(latency=1.0, jitter=0.5, seed=3),
                                     rs.Network(latency=0.5, bandwidth=64.0, reorder=0.5),
                                     rs.Network(jitter=2.0, loss=0.2, retries=30, seed=5)])
def test_summary_histogram_bins_each_message_by_its_own_latency(network, chunk, monkeypatch):
    """Whatever the slices the latencies are binned in (``chunk``), delivered messages only."""
    monkeypatch.setattr(log, "_LATENCY_CHUNK", chunk)
    q, k, v = np.random.default_rng(4).normal(size=(3, 2, 5, 4))
    full = rs.simulate(q, k, v, trace="full", network=network).trace
    summary = rs.simulate(q, k, v, trace="summary", network=network).trace
    for kind in full.kinds:
        mine = (full.kind == kind) & (full.fate == Fate.DELIVERED)
        latency = full.arrive[mine] - full.sent[mine]
        assert len(np.unique(latency)) > 1                             # they differ
        np.testing.assert_array_equal(summary.latency_histogram[kind],
                                      searchsorted_counts(latency))
