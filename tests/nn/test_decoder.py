"""A Decoder's rounds, token by token or in chunks, equal whole-sequence causal attention.

The reference is :func:`rs.attention` over the whole sequence (``is_causal=True``, where
top-left and bottom-right alignment agree because L == S), with the same options: the matrix
form, which never goes through the Decoder. Route and message counts are checked against a
causal mask built here with numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs


@given(st.integers(1, 8), st.integers(1, 3), st.integers(0, 2**32 - 1),
       st.sampled_from([{}, {"softmax": "online"}, {"numerics": "exact"},
                        {"rope": 100.0, "alibi_slopes": [0.5, 0.25]}]))
def test_each_step_is_a_row_of_causal_attention(n, heads, seed, options):
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(3, heads, n, 4))
    if "alibi_slopes" in options:
        options = {**options, "alibi_slopes": [0.5, 0.25, 0.125][:heads]}
    decoder = rs.Decoder(network=rs.Network(jitter=0.5, seed=seed), **options)
    matrix_options = {name: value for name, value in options.items() if name != "softmax"}
    full = rs.attention(q, k, v, is_causal=True, **matrix_options)
    matrix_options.pop("numerics", None)
    tol = rs.verify.tolerance(q, k, v, is_causal=True, **matrix_options)[0]
    for t in range(n):
        step = decoder.step(q[:, t], k[:, t], v[:, t])
        assert step.position == t and step.output.shape == (heads, 4)
        assert (np.abs(step.output - full[:, t]) <= tol[:, t]).all()
        if options.get("numerics") == "exact":
            np.testing.assert_array_equal(step.output, full[:, t])
        assert step.messages == 4 * heads * (t + 1)
        assert step.recompute_messages == 4 * heads * (t + 1) * (t + 2) // 2
    assert len(decoder) == n and decoder.messages == 4 * heads * n * (n + 1) // 2


def test_routing_table_of_the_new_token():
    rng = np.random.default_rng(0)
    decoder = rs.Decoder()
    for word in ["the", "cat", "sat"]:
        step = decoder.step(*rng.normal(size=(3, 4)), label=word)
    table = str(step.run.routing_table(2))
    assert table.startswith("routing table of token 'sat' (#2)\n")
    assert "token cat:" in table and "token the:" in table and "position 1" in table
    assert str(step.run.routing_table("sat")) == table
    with pytest.raises(rs.InvalidArgumentError, match=r"position in \[2\] .* got 0$"):
        step.run.routing_table(0)      # token 0 asks nothing in this step: it is cached


def test_trace_names_the_new_token_at_its_position():
    rng = np.random.default_rng(0)
    decoder = rs.Decoder(trace="full")
    for word in ["the", "cat", "sat"]:
        step = decoder.step(*rng.normal(size=(3, 4)), label=word)
    assert "participant n0 as query sat (2)" in step.run.trace.to_mermaid()


def test_recompute_count_does_not_depend_on_losses():
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(3, 5, 4))
    lossy = rs.Decoder(network=rs.Network(loss=0.4, retries=40, seed=3))
    steps = [lossy.step(q[t], k[t], v[t]) for t in range(5)]
    assert steps[-1].messages > 4 * 5                   # retransmissions happened
    # Recomputing the causal triangle of 5 tokens: 15 routes, 4 messages each.
    assert [s.recompute_messages for s in steps] == [4, 12, 24, 40, 60]


def test_decoder_rejects_shape_changes_and_masks():
    decoder = rs.Decoder()
    decoder.step(np.ones(4), np.ones(4), np.ones(2))
    with pytest.raises(rs.ShapeError, match="cache holds"):
        decoder.step(np.ones(4), np.ones(3), np.ones(2))
    with pytest.raises(rs.InvalidArgumentError, match="is_causal"):
        rs.Decoder(is_causal=True)


# ----------------------------------------------------------------- whole-sequence property

def _mask_mod(kind: str, a: int, c: int):
    """A user mask_mod built from small random integers (numpy, elementwise)."""
    if kind == "window":
        return lambda b, h, q_idx, kv_idx: q_idx - kv_idx < a
    if kind == "stride":
        return lambda b, h, q_idx, kv_idx: (q_idx - kv_idx) % a == 0
    if kind == "parity":                       # may leave a row without routes
        return lambda b, h, q_idx, kv_idx: (q_idx + kv_idx + b) % 2 == c % 2
    if kind == "per_head":
        return lambda b, h, q_idx, kv_idx: q_idx - kv_idx <= h + c
    assert kind == "blocks"
    return lambda b, h, q_idx, kv_idx: q_idx // a == kv_idx // a


def _pattern(kind: str, n: int, a: int, c: int, rng: np.random.Generator) -> rs.RouteSet:
    """One of rs.patterns over n tokens, its parameters from small random integers."""
    if kind == "sliding_window":
        return rs.patterns.sliding_window(n, a, sinks=c)
    if kind == "longformer":
        return rs.patterns.longformer(n, 2 * a, c % (n + 1))
    if kind == "bigbird":
        return rs.patterns.bigbird(n, a, window_blocks=1, global_blocks=1, random_blocks=1,
                                   seed=c)
    if kind == "dilated":
        return rs.patterns.dilated(n, a, c + 1)
    if kind == "document":
        cuts = np.sort(rng.choice(np.arange(1, n), size=min(c, n - 1), replace=False))
        return rs.patterns.document(np.diff([0, *cuts, n]).tolist(), causal=bool(a % 2))
    assert kind == "prefix_lm"
    return rs.patterns.prefix_lm(n, c % (n + 1))


def _score_mod(kind: str, heads: int, a: int, c: int, rng: np.random.Generator):
    """A built-in score mod, or a user one built from random integers (no derivative)."""
    if kind == "softcap":
        return rs.mods.softcap([0.5, 2.0, 10.0][c % 3])
    if kind == "alibi":
        return rs.mods.alibi(rng.uniform(0.1, 1.0, size=heads))
    if kind == "relative_bias":
        return rs.mods.relative_bias(rng.normal(size=(heads, 2 * a + 1)))
    offsets = rng.normal(size=a + 1)
    assert kind == "user"
    return lambda score, b, h, q_idx, kv_idx: \
        score + offsets[(q_idx * c + kv_idx) % len(offsets)] * (h + 1) - 0.25 * b


@st.composite
def decodings(draw, exact: bool = False):
    """Inputs over the whole sequence, the Decoder's options and how to cut it into rounds."""
    n = draw(st.integers(1, 9))
    batch_shape = draw(st.sampled_from([(), (1,), (2,), (2, 1), (2, 2)]))
    heads = batch_shape[-1] if batch_shape else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a, c = draw(st.integers(1, 4)), draw(st.integers(0, 3))
    options: dict = {}
    kv_shape = batch_shape
    if heads > 1 and draw(st.booleans()):                 # GQA: one key/value head
        options["enable_gqa"], kv_shape = True, (*batch_shape[:-1], 1)
    query = rng.normal(size=(*batch_shape, n, 4))
    key, value = rng.normal(size=(*kv_shape, n, 4)), rng.normal(size=(*kv_shape, n, 3))
    mask = draw(st.sampled_from(["none", "window", "stride", "parity", "per_head", "blocks"]))
    if mask != "none":
        options["mask_mod"] = _mask_mod(mask, a, c)
    pattern = draw(st.sampled_from(["none", "sliding_window", "longformer", "bigbird",
                                    "dilated", "document", "prefix_lm"]))
    if pattern != "none":
        options["graph"] = _pattern(pattern, n, a, c, rng)
    scores = ["none"] if exact else ["none", "softcap", "alibi", "relative_bias", "user"]
    score = draw(st.sampled_from(scores))
    if score != "none":
        options["score_mod"] = _score_mod(score, heads, a, c, rng)
    if draw(st.booleans()):
        options["alibi_slopes"] = rng.uniform(0.1, 1.0, size=heads)
    rope = draw(st.sampled_from([None, 100.0, rs.RotaryEmbedding(50.0, "interleaved")]))
    if rope is not None:
        options["rope"] = rope
    if draw(st.booleans()):
        options["scale"] = float(rng.uniform(0.2, 2.0))
    options["empty_rows"] = draw(st.sampled_from(["zero", "nan"]))   # parity empties rows
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    bounds = [0, *cuts, n]
    rounds = "step" if draw(st.booleans()) else [*zip(bounds, bounds[1:])]
    return query, key, value, options, rounds


def _decode(decoder: rs.Decoder, query, key, value, rounds) -> list[rs.DecodeStep]:
    """Feed the sequence to the Decoder token by token (step) or chunk by chunk (extend)."""
    if rounds == "step":
        return [decoder.step(query[..., t, :], key[..., t, :], value[..., t, :])
                for t in range(query.shape[-2])]
    return [decoder.extend(query[..., first:stop, :], key[..., first:stop, :],
                           value[..., first:stop, :]) for first, stop in rounds]


def _rows(steps: list[rs.DecodeStep], rounds) -> np.ndarray:
    """Every round's output as rows ``(..., n, Ev)`` of one sequence (a step's is one row)."""
    if rounds == "step":
        return np.stack([s.output for s in steps], axis=-2)
    return np.concatenate([s.output for s in steps], axis=-2)


def _allowed(query, options) -> np.ndarray:
    """``(G, n, n)``: the routes of whole-sequence causal attention with these options."""
    *batch_shape, n, _ = query.shape
    groups, heads = math.prod(batch_shape), batch_shape[-1] if batch_shape else 1
    batch, head = (x[:, None, None] for x in np.divmod(np.arange(groups), heads))
    q_idx, kv_idx = np.arange(n)[:, None], np.arange(n)[None, :]
    allowed = np.broadcast_to(kv_idx <= q_idx, (groups, n, n))
    if "mask_mod" in options:
        allowed = allowed & options["mask_mod"](batch, head, q_idx, kv_idx)
    if "graph" in options:
        allowed = allowed & options["graph"].to_mask()
    return allowed


def _check_counts(steps: list[rs.DecodeStep], allowed: np.ndarray) -> None:
    """Each round sends 4 messages per route of its rows; recomputing, 4 per route so far."""
    for s in steps:
        assert s.positions == range(s.position, s.position + s.tokens)
        assert s.messages == 4 * int(allowed[:, s.positions].sum())
        assert s.recompute_messages == 4 * int(allowed[:, :s.positions.stop].sum())


@settings(max_examples=40)
@given(decodings(), st.sampled_from(["two_phase", "online"]))
def test_rounds_equal_whole_sequence_attention_float(case, softmax):
    query, key, value, options, rounds = case
    steps = _decode(rs.Decoder(softmax=softmax, **options), query, key, value, rounds)
    full = rs.attention(query, key, value, is_causal=True, **options)     # (..., n, Ev)
    # rtol is the float contract. An output row is a convex combination of at most 9 values:
    # near zero its rounding error is some ulps of max|v| (~1e-15 here), under this atol.
    atol = 1e-14 * np.abs(value).max()
    np.testing.assert_allclose(_rows(steps, rounds), full, rtol=1e-12, atol=atol)
    _check_counts(steps, _allowed(query, options))
    score_mod = options.get("score_mod")
    if score_mod is not None and not isinstance(score_mod, rs.mods.ScoreMod):
        return                                     # a plain function has no derivative
    last = steps[-1]
    first = last.position
    rng = np.random.default_rng(first)
    upstream = rng.normal(size=last.run.output.shape)                     # (..., T, Ev)
    grads = last.run.backward(upstream)
    whole = np.zeros(full.shape)
    whole[..., first:, :] = upstream          # only the last round's rows get a gradient
    d_query, d_key, d_value = rs.attention_backward(query, key, value, whole, is_causal=True,
                                                    **options)
    for actual, expected in ((grads.query, d_query[..., first:, :]), (grads.key, d_key),
                             (grads.value, d_value)):
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=25)
@given(decodings(exact=True))
def test_rounds_equal_whole_sequence_attention_exact(case):
    query, key, value, options, rounds = case
    steps = _decode(rs.Decoder(numerics="exact", **options), query, key, value, rounds)
    full = rs.attention(query, key, value, is_causal=True, numerics="exact", **options)
    assert np.array_equal(_rows(steps, rounds), full, equal_nan=True)
    _check_counts(steps, _allowed(query, options))


@pytest.mark.parametrize("options", [
    {"mask_mod": lambda b, h, q_idx, kv_idx: q_idx - kv_idx <= 1},
    {"score_mod": rs.mods.alibi([0.5])},
], ids=["window mask_mod", "alibi score_mod"])
def test_mods_see_true_positions(options):
    # The cases of issue 22: with q_idx = 0 at every step they were off by 1.1 and 1.4.
    query, key, value = np.random.default_rng(0).normal(size=(3, 6, 4))
    decoder = rs.Decoder(**options)
    rows = np.stack([decoder.step(query[t], key[t], value[t]).output for t in range(6)])
    full = rs.attention(query, key, value, is_causal=True, **options)
    np.testing.assert_allclose(rows, full, rtol=1e-12, atol=1e-15)


def test_mods_are_called_with_positions_of_the_round():
    calls = []

    def record(b, h, q_idx, kv_idx):
        calls.append((np.unique(q_idx).tolist(), np.unique(kv_idx).tolist()))
        return kv_idx <= q_idx

    query, key, value = np.random.default_rng(1).normal(size=(3, 5, 2))
    decoder = rs.Decoder(mask_mod=record)
    decoder.extend(query[:2], key[:2], value[:2])
    decoder.step(query[2], key[2], value[2])
    decoder.extend(query[3:], key[3:], value[3:])
    assert calls == [([0, 1], [0, 1]), ([2], [0, 1, 2]), ([3, 4], [0, 1, 2, 3, 4])]


def test_chunk_step_output_and_labels():
    query, key, value = np.random.default_rng(2).normal(size=(3, 2, 4, 3))   # 2 heads
    decoder = rs.Decoder()
    first = decoder.extend(query[:, :3], key[:, :3], value[:, :3], labels=["a", "b", "c"])
    last = decoder.step(query[:, 3], key[:, 3], value[:, 3], label="d")
    assert (first.position, first.tokens, first.output.shape) == (0, 3, (2, 3, 3))
    assert (last.position, last.positions, last.output.shape) == (3, range(3, 4), (2, 3))
    assert decoder.labels == ["a", "b", "c", "d"] and len(decoder) == 4
    table = last.run.routing_table("d", head=1)
    assert sorted(route.label for route in table.routes) == ["a", "b", "c", "d"]
    # Bottom-right causal inside the chunk: its second token sees the first and itself.
    assert sorted(r.source for r in first.run.routing_table("b", head=0).routes) == [0, 1]
    with pytest.raises(rs.ShapeError, match="labels has 1 entries for a chunk of 2"):
        decoder.extend(query[:, :2], key[:, :2], value[:, :2], labels=["x"])
    with pytest.raises(rs.ShapeError, match="same T >= 1"):
        decoder.extend(query[:, :2], key[:, :1], value[:, :1])
    with pytest.raises(rs.ShapeError, match="step\\(\\) takes one token"):
        decoder.extend(query[0, 0], key[0, 0], value[0, 0])
    assert len(decoder) == 4                       # refused rounds leave the cache as it was


def test_pattern_must_cover_the_sequence():
    query, key, value = np.random.default_rng(3).normal(size=(3, 4, 2))
    decoder = rs.Decoder(graph=rs.patterns.sliding_window(3, 2))
    decoder.extend(query[:3], key[:3], value[:3])
    with pytest.raises(rs.ShapeError, match="covers 3 tokens; token 3 would be past its end"):
        decoder.step(query[3], key[3], value[3])


@pytest.mark.parametrize("options, match", [
    ({"is_causal": True}, "is_causal: the Decoder decides it"),
    ({"causal_alignment": "top_left"}, "causal_alignment: the Decoder decides it"),
    ({"attn_mask": np.ones((1, 1), bool)}, "attn_mask: .* pass mask_mod"),
    ({"dropout_p": 0.1}, "dropout_p=0.1: each round would draw its own dropout"),
    ({"dropout_mask": np.ones((1, 1), bool)}, "dropout_mask: each round would read"),
    ({"labels": ["a"]}, "labels: label each token as it joins"),
    ({"key_labels": ["a"]}, "key_labels: label each token as it joins"),
    ({"return_weights": True}, "unknown option 'return_weights'"),
    ({"graph": rs.graphs.causal(3)}, "graph= as a RouteSet"),
    ({"graph": rs.RouteSet.complete(2, 3)}, "one self-attention route set .*cross-attention"),
    ({"graph": rs.RouteSet.complete(2, 2, (2,))}, "per-head routes pass a mask_mod"),
    ({"mask_mod": 3}, "mask_mod must be a function"),
])
def test_options_a_round_cannot_honour_are_refused(options, match):
    with pytest.raises(rs.InvalidArgumentError, match=match):
        rs.Decoder(**options)


def test_exact_mode_still_refuses_score_mod():
    decoder = rs.Decoder(numerics="exact", score_mod=rs.mods.softcap(1.0))
    with pytest.raises(rs.InvalidArgumentError, match="score_mod runs in float arithmetic"):
        decoder.step(np.ones(2), np.ones(2), np.ones(2))
    assert len(decoder) == 0


def test_backward_needs_the_derivative_of_a_plain_score_mod():
    decoder = rs.Decoder(score_mod=lambda score, b, h, q_idx, kv_idx: score + q_idx)
    step = decoder.step(np.ones(2), np.ones(2), np.ones(2))
    with pytest.raises(rs.InvalidArgumentError, match="needs the derivative of score_mod"):
        step.run.backward(np.ones(2)[None])


def test_a_crash_names_a_token_by_its_position():
    # Key token 1 is down for good: every round after it joins loses its routes to key 1
    # (and degrades), while token 1's own query still asks. Side "query": only the round in
    # which token 2 asks loses routes, all of them.
    query, key, value = np.random.default_rng(4).normal(size=(3, 4, 2))
    lost = {}
    for side, token in (("key", 1), ("query", 2)):
        crash = rs.Crash(token=token, start=0.0, end=1e6, side=side)
        network = rs.Network(crashes=[crash], retries=0, timeout=5.0, on_missing="degrade")
        decoder = rs.Decoder(network=network)
        steps = [decoder.step(query[t], key[t], value[t]) for t in range(4)]
        lost[side] = [sorted((d.query, d.key) for d in s.run.dropped) for s in steps]
    assert lost["key"] == [[], [(1, 1)], [(2, 1)], [(3, 1)]]
    assert lost["query"] == [[], [], [(2, 0), (2, 1), (2, 2)], []]


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 7), st.integers(0, 2**32 - 1), st.sampled_from(["half", "interleaved"]),
       st.sampled_from([2, 4, 6]), st.booleans(), st.data())
def test_rounds_with_partial_rotary_and_per_batch_positions_equal_the_whole_sequence(
        n, seed, layout, rotary_dim, exact, data):
    """Each round gives its tokens' positions (B, T), as a model's position_ids; the whole
    sequence gets them side by side, and rotates with the same partial RoPE."""
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, 2, 3, n, 6))                            # (B, H, n, E)
    v = rng.normal(size=(2, 3, n, 2))
    starts = np.array(data.draw(st.lists(st.integers(0, 30), min_size=2, max_size=2)))
    position_ids = starts[:, None] + np.arange(n)                      # (B, n): left padding
    rope = rs.RotaryEmbedding(20.0, layout, rotary_dim)
    numerics = "exact" if exact else "float"
    full = rs.attention(q, k, v, is_causal=True, rope=rope, position_ids=position_ids,
                        numerics=numerics)
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=3))) if n > 1 else []
    bounds = [0, *cuts, n]
    decoder = rs.Decoder(rope=rope, numerics=numerics)
    rows = []
    for first, stop in zip(bounds, bounds[1:]):
        if stop - first == 1 and data.draw(st.booleans()):
            step = decoder.step(q[..., first, :], k[..., first, :], v[..., first, :],
                                position_ids=position_ids[:, first])
            rows.append(step.output[..., None, :])
        else:
            rows.append(decoder.extend(q[..., first:stop, :], k[..., first:stop, :],
                                       v[..., first:stop, :],
                                       position_ids=position_ids[:, first:stop]).output)
    got = np.concatenate(rows, axis=-2)
    if exact:
        np.testing.assert_array_equal(got, full)
    else:
        np.testing.assert_allclose(got, full, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(decoder.key_positions, position_ids)


def test_a_round_without_positions_places_its_tokens_at_their_index():
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 2, 4, 8))
    rope = rs.RotaryEmbedding(rotary_dim=4)
    decoder = rs.Decoder(rope=rope)
    decoder.extend(q[:, :2], k[:, :2], v[:, :2])
    last = decoder.extend(q[:, 2:], k[:, 2:], v[:, 2:], position_ids=[7, 8])
    full = rs.attention(q, k, v, is_causal=True, rope=rope, position_ids=[0, 1, 7, 8])
    np.testing.assert_allclose(last.output, full[:, 2:], rtol=1e-12)


def test_decoder_positions_are_given_per_round():
    with pytest.raises(rs.InvalidArgumentError, match="position_ids.*step"):
        rs.Decoder(rope=10.0, position_ids=[0, 1])
    with pytest.raises(rs.InvalidArgumentError, match="key_position_ids.*cached key"):
        rs.Decoder(rope=10.0, key_position_ids=[0, 1])
    decoder = rs.Decoder(rope=10.0)
    x = np.ones((2, 1, 3, 4))                                          # (B, H, T, E)
    decoder.extend(x, x, x, position_ids=[[0, 1, 2], [5, 6, 7]])
    with pytest.raises(rs.ShapeError, match=r"\(3, 1\) does not fit .* earlier rounds"):
        decoder.step(x[..., 0, :], x[..., 0, :], x[..., 0, :], position_ids=[3, 8, 9])
    with pytest.raises(rs.InvalidArgumentError, match="position_ids.*rope="):
        rs.Decoder().step(np.ones(4), np.ones(4), np.ones(4), position_ids=0)
    assert len(decoder) == 3                                           # the refusals kept none
