"""Key spans: one key range per query from a window, packed sequences and causality."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from routing_sim.routes.spans import key_spans
from tests.test_windows import definition_mask, offsets


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=4),
       st.one_of(st.none(), st.tuples(st.one_of(st.none(), st.integers(0, 4)),
                                      st.one_of(st.none(), st.integers(0, 4)))),
       st.booleans(), st.sampled_from(["top_left", "bottom_right"]))
def test_spans_hold_exactly_the_definitions_routes(lengths, window, causal, alignment):
    q_lengths, k_lengths = (list(side) for side in zip(*lengths))
    if window is not None and causal:
        alignment = "bottom_right"             # the other alignment is refused with a window
    cu_q, cu_k = offsets(q_lengths), offsets(k_lengths)
    spans = key_spans(int(cu_q[-1]), int(cu_k[-1]), window, (cu_q, cu_k), causal, alignment)
    expected = definition_mask(cu_q, cu_k, window or (None, None), causal, alignment)
    assert np.array_equal(spans.routes().to_mask(), expected)
    assert len(spans.routes()) == int(expected.sum())
    queries, keys = np.nonzero(np.ones_like(expected))
    assert np.array_equal(spans.holds(queries, keys), expected[queries, keys])
    local_keys = np.concatenate([np.arange(n) for n in k_lengths])
    assert np.array_equal(spans.key_positions, local_keys)
    local_queries = np.concatenate([np.arange(nq) + (nk - nq if alignment == "bottom_right"
                                                     else 0)
                                    for nq, nk in zip(q_lengths, k_lengths)])
    assert np.array_equal(spans.query_positions, local_queries)


def test_one_sequence_is_the_whole_axis():
    spans = key_spans(2, 4, (0, 1), None, False, "top_left")       # positions 2 and 3
    assert spans.routes().to_mask().astype(int).tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]]
    assert spans.key_positions.tolist() == [0, 1, 2, 3]
