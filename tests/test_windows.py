"""FlashAttention's ``window_size=(left, right)`` and varlen ``cu_seqlens_q``/``cu_seqlens_k``.

The oracle is written here from the published definitions, not through routing_sim: a dense
bool mask built by looping over the packed sequences and their local indices
(FlashAttention's ``construct_local_mask``: query ``i`` of a sequence with ``L_b`` queries
and ``S_b`` keys reaches local keys ``i + S_b - L_b - left <= j <= i + S_b - L_b + right``;
``causal`` sets ``right = 0``; a row with no key outputs zeros), then a plain numpy softmax.
Gradients are checked against torch autograd, and window / document masks against torch
``flex_attention`` where it is installed.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.errors import InvalidArgumentError, ShapeError


def definition_mask(cu_q, cu_k, window, causal, alignment="bottom_right"):
    """Bool ``(total_q, total_k)``: which routes the definition allows, sequence by sequence."""
    left, right = (None if side in (None, -1) else side for side in window)
    mask = np.zeros((cu_q[-1], cu_k[-1]), dtype=bool)
    for b in range(len(cu_q) - 1):
        n_q, n_k = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
        for i in range(n_q):
            bottom = i + n_k - n_q                     # FlashAttention's key position of i
            for j in range(n_k):
                allowed = True
                if causal:
                    allowed &= j <= (bottom if alignment == "bottom_right" else i)
                if left is not None:
                    allowed &= j >= bottom - left
                if right is not None:
                    allowed &= j <= bottom + right
                mask[cu_q[b] + i, cu_k[b] + j] = allowed
    return mask


def definition_bias(cu_q, cu_k, slopes, alignment="bottom_right"):
    """ALiBi ``-slope_h · |pos_i - j|`` with positions counted inside each sequence:
    ``(H, total_q, total_k)`` (zero across sequences, where no route exists)."""
    bias = np.zeros((len(slopes), cu_q[-1], cu_k[-1]))
    for b in range(len(cu_q) - 1):
        n_q, n_k = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
        for i in range(n_q):
            position = i + n_k - n_q if alignment == "bottom_right" else i
            for j in range(n_k):
                bias[:, cu_q[b] + i, cu_k[b] + j] = -np.asarray(slopes) * abs(position - j)
    return bias


def masked_softmax_attention(query, key, value, mask, scale=None, bias=None):
    """``softmax(q kᵀ scale + bias)`` over the allowed routes, times ``v``; empty rows 0."""
    scale = 1 / np.sqrt(query.shape[-1]) if scale is None else scale
    scores = query @ np.swapaxes(key, -1, -2) * scale
    if bias is not None:
        scores = scores + bias
    scores = np.where(mask, scores, -np.inf)
    has_key = mask.any(axis=-1, keepdims=True)
    top = np.where(has_key, scores.max(axis=-1, keepdims=True, initial=-np.inf), 0.0)
    weights = np.exp(scores - top)
    weights /= np.where(has_key, weights.sum(axis=-1, keepdims=True), 1.0)
    return weights @ value, weights


def offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@st.composite
def windows(draw):
    """A FlashAttention window: each side -1, None or 0..4."""
    side = st.one_of(st.just(-1), st.none(), st.integers(0, 4))
    return draw(side), draw(side)


@st.composite
def packed_problems(draw, max_sequences: int = 3, max_len: int = 5):
    """Packed (B, H, total, E) inputs, offsets, a window, causality, an alignment."""
    count = draw(st.integers(1, max_sequences))
    q_lengths = draw(st.lists(st.integers(0, max_len), min_size=count, max_size=count))
    k_lengths = draw(st.lists(st.integers(0, max_len), min_size=count, max_size=count))
    assume(sum(q_lengths) > 0 and sum(k_lengths) > 0)
    batch, heads = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    dim, value_dim = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = draw(st.sampled_from([1.0, 3.0]))
    query = rng.normal(size=(batch, heads, sum(q_lengths), dim)) * size
    key = rng.normal(size=(batch, heads, sum(k_lengths), dim)) * size
    value = rng.normal(size=(batch, heads, sum(k_lengths), value_dim))
    window = draw(windows())
    causal = draw(st.booleans())
    alignment = draw(st.sampled_from(["top_left", "bottom_right"]))
    # is_causal with a window is FlashAttention's bottom-right causal; the other alignment
    # is refused when some sequence has L_b != S_b (tested below).
    assume(not (causal and alignment == "top_left" and window != (-1, -1)
                and window != (None, None) and q_lengths != k_lengths))
    return query, key, value, offsets(q_lengths), offsets(k_lengths), window, causal, alignment


# ---------------------------------------------------------------- matrix form


@given(packed_problems())
def test_attention_equals_the_definition(problem):
    query, key, value, cu_q, cu_k, window, causal, alignment = problem
    mask = definition_mask(cu_q, cu_k, window, causal, alignment)
    expected, weights = masked_softmax_attention(query, key, value, mask)
    out, w = rs.attention(query, key, value, is_causal=causal, causal_alignment=alignment,
                          window_size=window, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                          return_weights=True)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(w, weights, rtol=1e-12, atol=1e-300)
    assert np.array_equal(w > 0, np.broadcast_to(mask, w.shape) & (weights > 0))


@given(st.integers(1, 7), st.integers(1, 7), windows(), st.booleans(), st.integers(0, 2**32 - 1))
def test_a_window_alone_is_flash_attentions_local_mask(n_queries, n_keys, window, causal, seed):
    rng = np.random.default_rng(seed)
    query, key, value = (rng.normal(size=(2, n, 3)) for n in (n_queries, n_keys, n_keys))
    mask = definition_mask([0, n_queries], [0, n_keys], window, causal)
    expected, _ = masked_softmax_attention(query, key, value, mask)
    out = rs.attention(query, key, value, is_causal=causal, causal_alignment="bottom_right",
                       window_size=window)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    exact = rs.attention(query, key, value, is_causal=causal, causal_alignment="bottom_right",
                         window_size=window, numerics="exact")
    np.testing.assert_allclose(exact, expected, rtol=1e-13, atol=1e-15)


def test_is_causal_sets_the_windows_right_side_to_zero():
    rng = np.random.default_rng(0)
    query, key, value = rng.normal(size=(3, 6, 4))
    causal = rs.attention(query, key, value, is_causal=True, window_size=(2, 3))
    assert np.array_equal(causal, rs.attention(query, key, value, window_size=(2, 0)))


@given(packed_problems(), st.sampled_from(["attn_mask", "mask_mod", "graph"]))
def test_window_and_sequences_combine_with_other_route_restrictions(problem, form):
    query, key, value, cu_q, cu_k, window, causal, alignment = problem
    assume(not (causal and form == "attn_mask"))                      # PyTorch refuses both
    n_q, n_k = query.shape[-2], key.shape[-2]
    other = (np.add.outer(np.arange(n_q), 2 * np.arange(n_k)) % 3) != 1  # (L, S)
    restriction = {"attn_mask": {"attn_mask": other},
                   "mask_mod": {"mask_mod": lambda b, h, q, kv: (q + 2 * kv) % 3 != 1},
                   "graph": {"graph": rs.RouteSet.from_mask(other)}}[form]
    mask = definition_mask(cu_q, cu_k, window, causal, alignment) & other
    expected, _ = masked_softmax_attention(query, key, value, mask)
    out = rs.attention(query, key, value, is_causal=causal, causal_alignment=alignment,
                       window_size=window, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **restriction)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_alibi_and_sinks_apply_per_sequence(alignment):
    """ALiBi places query ``i'`` of a sequence as ``causal_alignment`` says, inside its
    sequence; the window stays bottom-right; the sink joins every row."""
    rng = np.random.default_rng(3)
    cu_q, cu_k = offsets([3, 0, 2, 4]), offsets([2, 3, 4, 4])
    query = rng.normal(size=(2, cu_q[-1], 4))
    key, value = rng.normal(size=(2, 2, cu_k[-1], 4))
    slopes, sinks = np.array([0.5, 0.25]), np.array([0.3, -1.0])
    mask = definition_mask(cu_q, cu_k, (2, 1), False)
    bias = definition_bias(cu_q, cu_k, slopes, alignment)
    scores = np.where(mask, query @ np.swapaxes(key, -1, -2) / 2 + bias, -np.inf)
    row = np.concatenate([scores, np.broadcast_to(sinks[:, None, None], (2, cu_q[-1], 1))], -1)
    row = np.exp(row - row.max(-1, keepdims=True))
    expected = (row / row.sum(-1, keepdims=True))[..., :-1] @ value
    out = rs.attention(query, key, value, causal_alignment=alignment, window_size=(2, 1),
                       cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, alibi_slopes=slopes, sinks=sinks)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)


@settings(deadline=None)
@given(packed_problems(), st.integers(0, 2**32 - 1), st.sampled_from(["float", "exact"]))
def test_alibi_slopes_per_packed_sequence(problem, seed, numerics):
    """``flash_attn_varlen_func``'s ``alibi_slopes`` of shape ``(batch_size, nheads)``: with
    ``(H, total, E)`` inputs the table has one row per packed sequence; the simulation
    agrees."""
    query, key, value, cu_q, cu_k, window, causal, alignment = problem
    query, key, value = query[0], key[0], value[0]                    # (H, total, E)
    heads, n_seqs = query.shape[0], len(cu_q) - 1
    slopes = np.random.default_rng(seed).random((n_seqs, heads))      # (n_seqs, H)
    bias = np.zeros((heads, cu_q[-1], cu_k[-1]))
    for b in range(n_seqs):                     # each sequence's bias with its own slopes
        one = definition_bias(cu_q, cu_k, slopes[b], alignment)
        bias[:, cu_q[b]:cu_q[b + 1]] = one[:, cu_q[b]:cu_q[b + 1]]
    mask = definition_mask(cu_q, cu_k, window, causal, alignment)
    expected, _ = masked_softmax_attention(query, key, value, mask, bias=bias)
    options = dict(is_causal=causal, causal_alignment=alignment, window_size=window,
                   cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, alibi_slopes=slopes)
    out = rs.attention(query, key, value, numerics=numerics, **options)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    run = rs.simulate(query, key, value, numerics=numerics, **options)
    np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-14)


def test_a_slope_table_of_other_rows_than_sequences_is_refused():
    query = np.zeros((2, 5, 3))
    with pytest.raises(ShapeError, match=r"alibi_slopes of shape \(3, 2\) does not fit 2 "
                                         r"packed sequences of 2 heads"):
        rs.attention(query, query, query, cu_seqlens_q=[0, 2, 5], cu_seqlens_k=[0, 2, 5],
                     alibi_slopes=np.ones((3, 2)))


def test_rope_positions_start_again_in_every_sequence():
    rng = np.random.default_rng(4)
    lengths = [3, 5]
    cu = offsets(lengths)
    query, key, value = rng.normal(size=(3, cu[-1], 4))

    def rotate(x, positions, base=10000.0):                # half layout, as GPT-NeoX
        half = x.shape[-1] // 2
        angle = positions[:, None] * base ** (-np.arange(half) * 2 / x.shape[-1])
        first, second = x[:, :half], x[:, half:]
        return np.concatenate([first * np.cos(angle) - second * np.sin(angle),
                               first * np.sin(angle) + second * np.cos(angle)], axis=-1)

    local = np.concatenate([np.arange(n) for n in lengths])
    mask = definition_mask(cu, cu, (-1, -1), True)
    expected, _ = masked_softmax_attention(rotate(query, local), rotate(key, local), value, mask)
    out = rs.attention(query, key, value, is_causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu,
                       rope=10000.0)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)


def test_a_long_window_builds_only_its_routes():
    n, window = 2**17, 128            # a dense (L, S) bool mask alone would be 16 GiB
    rng = np.random.default_rng(5)
    query = rng.normal(size=(n, 2))
    tracemalloc.start()
    try:
        out = rs.attention(query, query, query, window_size=(window, 0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**30
    for i in (0, 5, n - 1):                                            # rows by the formula
        keys = query[max(i - window, 0):i + 1]
        scores = keys @ query[i] / np.sqrt(2)
        weights = np.exp(scores - scores.max())
        np.testing.assert_allclose(out[i], weights @ keys / weights.sum(), rtol=1e-12)


# ---------------------------------------------------------------- torch flex_attention


def test_flex_attention_agrees_on_windows_and_packed_sequences():
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    rng = np.random.default_rng(6)
    q_lengths, k_lengths, (left, right) = [5, 9, 2], [7, 9, 6], (3, 1)
    cu_q, cu_k = offsets(q_lengths), offsets(k_lengths)
    query = rng.normal(size=(2, 2, cu_q[-1], 8))
    key, value = rng.normal(size=(2, 2, 2, cu_k[-1], 8))
    q_document = torch.tensor(np.repeat(np.arange(3), q_lengths))
    k_document = torch.tensor(np.repeat(np.arange(3), k_lengths))
    q_bottom = torch.tensor(np.concatenate([np.arange(nq) + nk - nq for nq, nk in
                                            zip(q_lengths, k_lengths)]))
    k_local = torch.tensor(np.concatenate([np.arange(n) for n in k_lengths]))

    def document_window(b, h, q_idx, kv_idx):              # attention-gym's document mask
        return (q_document[q_idx] == k_document[kv_idx]) & \
            (k_local[kv_idx] >= q_bottom[q_idx] - left) & \
            (k_local[kv_idx] <= q_bottom[q_idx] + right)

    block_mask = flex.create_block_mask(document_window, 2, 2, cu_q[-1], cu_k[-1], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # eager flex, on purpose
        expected = flex.flex_attention(*(torch.from_numpy(x) for x in (query, key, value)),
                                       block_mask=block_mask).numpy()
    out = rs.attention(query, key, value, window_size=(left, right), cu_seqlens_q=cu_q,
                       cu_seqlens_k=cu_k)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- gradients


def torch_gradients(query, key, value, mask, d_output):
    """Gradients of ``sum(output · d_output)`` by torch autograd over the dense mask."""
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(x, requires_grad=True) for x in (query, key, value)]
    q, k, v = tensors
    allowed = torch.tensor(np.broadcast_to(mask, (*q.shape[:-1], k.shape[-2])))
    has_key = allowed.any(dim=-1, keepdim=True)
    scores = q @ k.transpose(-1, -2) / np.sqrt(q.shape[-1])
    # An empty row softmaxes zeros and is then multiplied by 0: no NaN reaches backward.
    scores = scores.masked_fill(~allowed & has_key, -torch.inf).masked_fill(~has_key, 0.0)
    weights = torch.softmax(scores, dim=-1) * has_key
    (weights @ v * torch.tensor(d_output)).sum().backward()
    return [t.grad.numpy() for t in tensors]


@given(packed_problems())
def test_gradients_equal_torch_autograd(problem):
    pytest.importorskip("torch")
    query, key, value, cu_q, cu_k, window, causal, alignment = problem
    mask = definition_mask(cu_q, cu_k, window, causal, alignment)
    d_output = np.random.default_rng(1).normal(size=(*query.shape[:-1], value.shape[-1]))
    expected = torch_gradients(query, key, value, mask, d_output)
    options = {"is_causal": causal, "causal_alignment": alignment, "window_size": window,
               "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k}
    grads = rs.attention_backward(query, key, value, d_output, **options)
    for name, actual, wanted in zip(("query", "key", "value"), grads, expected):
        np.testing.assert_allclose(actual, wanted, rtol=1e-10, atol=1e-12, err_msg=name)
    simulated = rs.simulate(query, key, value, **options).backward(d_output)
    for name, actual, wanted in zip(("query", "key", "value"), (simulated.query,
                                                                simulated.key,
                                                                simulated.value), grads):
        np.testing.assert_allclose(actual, wanted, rtol=1e-12, atol=1e-14, err_msg=name)


# ---------------------------------------------------------------- simulation


NETWORKS = [rs.Network(), rs.Network(jitter=2.0, seed=1),
            rs.Network(jitter=1.0, reorder=0.5, bandwidth=64.0, seed=2),
            rs.Network(loss=0.2, duplicate=0.1, retries=40, seed=3)]


@given(packed_problems(max_sequences=2, max_len=4), st.sampled_from(["float", "exact"]))
def test_simulation_equals_attention_under_every_schedule(problem, numerics):
    query, key, value, cu_q, cu_k, window, causal, alignment = problem
    options = {"is_causal": causal, "causal_alignment": alignment, "window_size": window,
               "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k, "numerics": numerics}
    expected = rs.attention(query, key, value, **options)
    mask = definition_mask(cu_q, cu_k, window, causal, alignment)
    outputs = []
    for network in NETWORKS:
        run = rs.simulate(query, key, value, network=network, **options)
        assert run.stats.routes == query.shape[0] * query.shape[1] * int(mask.sum())
        outputs.append(run.output)
    for output in outputs:
        assert np.array_equal(output, outputs[0])
    if numerics == "exact":
        assert np.array_equal(outputs[0], expected)
    else:
        np.testing.assert_allclose(outputs[0], expected, rtol=1e-12, atol=1e-14)


def test_messages_travel_only_inside_windows_and_sequences():
    rng = np.random.default_rng(8)
    cu = offsets([3, 4])
    query, key, value = rng.normal(size=(3, 7, 4))
    labels = ["a", "b", "c", "w", "x", "y", "z"]
    run = rs.simulate(query, key, value, window_size=(1, 0), cu_seqlens_q=cu, cu_seqlens_k=cu,
                      labels=labels, trace="full")
    allowed = definition_mask(cu, cu, (1, 0), False)
    assert run.stats.messages == {kind: int(allowed.sum()) for kind in
                                  ("QUERY", "SCORE", "PULL", "VALUE")}
    sent = {(m.src, m.dst) for m in run.trace.rows() if m.kind == "QUERY"}  # query -> key
    assert sent == {(int(i), int(j)) for i, j in zip(*np.nonzero(allowed))}
    table = run.routing_table("w")                       # the first token of sequence 2
    assert [(route.source, route.label) for route in table.routes] == [(3, "w")]
    assert sorted(route.label for route in run.routing_table("y").routes) == ["x", "y"]


def test_the_replay_page_shows_the_route_set(tmp_path):
    rng = np.random.default_rng(9)
    cu = offsets([2, 3])
    query, key, value = rng.normal(size=(3, 5, 2))
    run = rs.simulate(query, key, value, cu_seqlens_q=cu, cu_seqlens_k=cu, is_causal=True)
    page = run.to_html(tmp_path / "varlen.html").read_text()
    assert page.count("<html") == 1 and run.stats.routes == 1 + 2 + 1 + 2 + 3


def test_the_decoder_takes_a_window():
    rng = np.random.default_rng(10)
    query, key, value = rng.normal(size=(3, 2, 9, 4))
    decoder = rs.Decoder(window_size=(3, 0))
    steps = [decoder.step(query[:, t], key[:, t], value[:, t]) for t in range(5)]
    chunk = decoder.extend(query[:, 5:], key[:, 5:], value[:, 5:])
    mask = definition_mask([0, 9], [0, 9], (3, 0), True)
    expected, _ = masked_softmax_attention(query, key, value, mask)
    for step in steps:
        np.testing.assert_allclose(step.output, expected[:, step.position], rtol=1e-12,
                                   atol=1e-14)
    np.testing.assert_allclose(chunk.output, expected[:, 5:], rtol=1e-12, atol=1e-14)
    assert [step.run.stats.routes for step in steps] == [2 * n for n in (1, 2, 3, 4, 4)]


@pytest.mark.parametrize("name", ["cu_seqlens_q", "cu_seqlens_k"])
def test_the_decoder_refuses_packed_sequences(name):
    with pytest.raises(InvalidArgumentError, match=name):
        rs.Decoder(**{name: [0, 1]})


@pytest.mark.parametrize("strategy", ["ring", "allgather", "ulysses", "tree"])
@pytest.mark.parametrize("window, causal", [((1, 0), False), ((2, 1), True), ((0, -1), False),
                                            ((-1, 2), False)])
def test_context_parallel_takes_a_window(strategy, window, causal):
    rng = np.random.default_rng(11)
    query, key, value = rng.normal(size=(3, 2, 8, 4))
    mask = definition_mask([0, 8], [0, 8], window, causal)
    expected, _ = masked_softmax_attention(query, key, value, mask)
    for numerics in ("float", "exact"):
        run = rs.context_parallel(query, key, value, strategy=strategy, is_causal=causal,
                                  cluster=rs.Cluster(devices=2), window_size=window,
                                  numerics=numerics)
        np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-14)


def test_context_parallel_window_with_more_keys_than_queries():
    rng = np.random.default_rng(12)
    query = rng.normal(size=(2, 3, 4))
    key, value = rng.normal(size=(2, 2, 8, 4))
    mask = definition_mask([0, 3], [0, 8], (2, 0), False)
    expected, _ = masked_softmax_attention(query, key, value, mask)
    run = rs.context_parallel(query, key, value, strategy="tree", window_size=(2, 0),
                              cluster=rs.Cluster(devices=2))
    np.testing.assert_allclose(run.output, expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(InvalidArgumentError, match="window_size"):
        rs.context_parallel(query, key, value, strategy="tree", window_size=(2, 0),
                            is_causal=True, cluster=rs.Cluster(devices=2))


# ---------------------------------------------------------------- errors


def _call(entry, **options):
    x = np.ones((4, 2))
    if entry == "attention_backward":
        return rs.attention_backward(x, x, x, np.ones((4, 2)), **options)
    return getattr(rs, entry)(x, x, x, **options)


ENTRIES = ["attention", "attention_backward", "simulate"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("window", [(-2, 0), (0, -5), (1,), (1, 2, 3), "ab", 3, (1.5, 0),
                                    (True, 0), (0, "1")])
def test_bad_windows_are_refused_naming_window_size(entry, window):
    with pytest.raises(InvalidArgumentError, match="window_size") as error:
        _call(entry, window_size=window)
    assert repr(window) in str(error.value)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("options, words", [
    ({"cu_seqlens_q": [0, 4]}, "cu_seqlens_q was given without cu_seqlens_k"),
    ({"cu_seqlens_k": [0, 4]}, "cu_seqlens_k was given without cu_seqlens_q"),
    ({"cu_seqlens_q": [[0, 4]], "cu_seqlens_k": [0, 4]}, "cu_seqlens_q must be a 1-D integer"),
    ({"cu_seqlens_q": [0, 4], "cu_seqlens_k": [0.0, 4.0]}, "cu_seqlens_k must be a 1-D integer"),
    ({"cu_seqlens_q": [], "cu_seqlens_k": [0, 4]}, "cu_seqlens_q must be a 1-D integer"),
    ({"cu_seqlens_q": [1, 4], "cu_seqlens_k": [0, 4]}, "cu_seqlens_q must start at 0"),
    ({"cu_seqlens_q": [0, 3, 2, 4], "cu_seqlens_k": [0, 1, 2, 4]},
     "cu_seqlens_q must be non-decreasing"),
    ({"cu_seqlens_q": [0, 4], "cu_seqlens_k": [0, 3]}, "cu_seqlens_k must end at the packed "
                                                       "length S = 4"),
    ({"cu_seqlens_q": [0, 2], "cu_seqlens_k": [0, 4]}, "cu_seqlens_q must end at the packed "
                                                       "length L = 4"),
    ({"cu_seqlens_q": [0, 2, 4], "cu_seqlens_k": [0, 4]}, "cu_seqlens_q has 2 sequences but "
                                                          "cu_seqlens_k has 1"),
])
def test_bad_offsets_are_refused_naming_the_argument(entry, options, words):
    with pytest.raises(InvalidArgumentError, match=words):
        _call(entry, **options)


def test_top_left_causal_window_with_unequal_lengths_is_refused():
    rng = np.random.default_rng(13)
    query, key = rng.normal(size=(2, 5, 3)), rng.normal(size=(7, 3))
    with pytest.raises(InvalidArgumentError, match="causal_alignment='bottom_right'"):
        rs.attention(query, key, key, is_causal=True, window_size=(2, 0))
    with pytest.raises(InvalidArgumentError, match="window_size with is_causal"):
        rs.attention(key, key, key, is_causal=True, window_size=(2, 0),
                     cu_seqlens_q=[0, 3, 7], cu_seqlens_k=[0, 4, 7])
    same = rs.attention(key, key, key, is_causal=True, window_size=(2, 0),
                        cu_seqlens_q=[0, 3, 7], cu_seqlens_k=[0, 3, 7])  # L_b = S_b: no clash
    mask = definition_mask([0, 3, 7], [0, 3, 7], (2, 0), True)
    np.testing.assert_allclose(same, masked_softmax_attention(key, key, key, mask)[0],
                               rtol=1e-12, atol=1e-14)


def test_unbounded_windows_are_no_window():
    rng = np.random.default_rng(14)
    query, key, value = rng.normal(size=(3, 4, 3))
    plain = rs.attention(query, key, value, is_causal=True)
    for window in ((-1, -1), (None, None), [-1, None], (np.int64(-1), -1)):
        assert np.array_equal(rs.attention(query, key, value, is_causal=True,
                                           window_size=window), plain)


@pytest.mark.parametrize("options", [{"window_size": (1, 0)},
                                     {"cu_seqlens_q": [0, 2, 4], "cu_seqlens_k": [0, 2, 4]}])
def test_the_plain_engine_names_what_it_cannot_run(options):
    x = np.ones((4, 2))
    with pytest.raises(InvalidArgumentError, match="window_size or cu_seqlens"):
        rs.simulate(x, x, x, engine="plain", **options)
