"""``rs.Decoder(k_cache=..., ...)`` (nn/decoder.py) on a FlashAttention-layout cache: each
round against flash_attn_with_kvcache's definition (the reference written in
tests/reference/test_kvcache.py, no routing_sim inside), the cache tracked and written in
place, and the trace naming the page that served each key."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.errors import InvalidArgumentError, ShapeError
from tests.reference.test_kvcache import flash_reference


@st.composite
def decoder_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_batch, kv_heads, group = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(
        st.integers(1, 2))
    heads, dim, value_dim = kv_heads * group, draw(st.sampled_from([2, 4])), draw(
        st.integers(1, 3))
    rounds = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))   # tokens per round
    paged = draw(st.booleans())
    if paged:
        page_size = draw(st.integers(1, 3))
        max_blocks = -(-(4 + sum(rounds)) // page_size)
        storage = (n_batch * max_blocks + draw(st.integers(0, 2)), page_size)
        table = rng.permutation(storage[0])[:n_batch * max_blocks].reshape(n_batch, max_blocks)
        capacity = page_size * max_blocks
    else:
        capacity, table = 4 + sum(rounds) + draw(st.integers(0, 2)), None
        storage = (n_batch, capacity)
    seqlens = rng.integers(0, 5, n_batch)
    options, rotary = {}, {}
    if draw(st.booleans()):            # RoPE tables: a row per slot, rotary_dim <= headdim
        rotary_dim = draw(st.sampled_from([2, dim] if dim > 2 else [dim]))
        angle = rng.random((capacity + draw(st.integers(0, 2)), rotary_dim // 2)) * 2 * np.pi
        rotary = dict(rotary_cos=np.cos(angle), rotary_sin=np.sin(angle),
                      rotary_interleaved=draw(st.booleans()))
    if draw(st.booleans()):
        options["window_size"] = (draw(st.integers(-1, 3)), draw(st.integers(-1, 2)))
    if draw(st.booleans()):
        options["softcap"] = 2.0
    if draw(st.booleans()):
        options["sinks"] = rng.normal(size=heads)
    alibi = draw(st.sampled_from([None, "per head", "per sequence"]))
    if alibi is not None:
        options["alibi_slopes"] = rng.random(heads if alibi == "per head" else (n_batch, heads)
                                             ) * 0.3
    if draw(st.booleans()):
        options["scale"] = 0.4
    if "softcap" not in options and draw(st.booleans()):
        options["numerics"] = "exact"
    return dict(
        k_cache=rng.normal(size=(*storage, kv_heads, dim)),
        v_cache=rng.normal(size=(*storage, kv_heads, value_dim)),
        block_table=table, cache_seqlens=seqlens,
        cache_leftpad=np.array([rng.integers(0, s + 1) for s in seqlens])
        if draw(st.booleans()) else None,
        options=options, rotary=rotary,
        rounds=[(rng.normal(size=(n_batch, count, heads, dim)),
                 rng.normal(size=(n_batch, count, kv_heads, dim)),
                 rng.normal(size=(n_batch, count, kv_heads, value_dim))) for count in rounds],
    )


@settings(max_examples=40, deadline=None)
@given(decoder_cases())
def test_each_round_is_flash_attn_with_kvcache_causal(case):
    """Round by round: the published definition (flash_reference, RoPE tables applied to
    k before it is stored and to q at the same slots, ALiBi per head or per sequence) and
    one rs.attention_with_kvcache call on a copy of the cache."""
    options, rotary = case["options"], case["rotary"]
    decoder = rs.Decoder(k_cache=case["k_cache"], v_cache=case["v_cache"],
                         cache_seqlens=case["cache_seqlens"], block_table=case["block_table"],
                         cache_leftpad=case["cache_leftpad"], **rotary, **options)
    k_cache, v_cache = case["k_cache"].copy(), case["v_cache"].copy()
    matrix_k, matrix_v = case["k_cache"].copy(), case["v_cache"].copy()
    seqlens = case["cache_seqlens"].copy()
    for q, k, v in case["rounds"]:
        expected, lse, k_cache, v_cache = flash_reference(dict(
            q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, cache_seqlens=seqlens,
            cache_batch_idx=None, cache_leftpad=case["cache_leftpad"],
            block_table=case["block_table"], causal=True,
            window_size=options.get("window_size", (-1, -1)),
            softcap=options.get("softcap", 0.0), alibi_slopes=options.get("alibi_slopes"),
            sinks=options.get("sinks"), softmax_scale=options.get("scale"),
            rotary_cos=rotary.get("rotary_cos"), rotary_sin=rotary.get("rotary_sin"),
            rotary_interleaved=rotary.get("rotary_interleaved", True)))
        matrix, matrix_lse = rs.attention_with_kvcache(
            q, matrix_k, matrix_v, k, v, cache_seqlens=seqlens,
            cache_leftpad=case["cache_leftpad"], block_table=case["block_table"], causal=True,
            window_size=options.get("window_size", (-1, -1)),
            softcap=options.get("softcap", 0.0), alibi_slopes=options.get("alibi_slopes"),
            sinks=options.get("sinks"), softmax_scale=options.get("scale"), return_lse=True,
            numerics=options.get("numerics", "float"), **rotary)
        step = decoder.step(q, k, v)
        np.testing.assert_allclose(step.output, expected, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(step.lse, lse, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(step.output, matrix, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(step.lse, matrix_lse, rtol=1e-12, atol=1e-13)
        np.testing.assert_array_equal(step.cache_seqlens, seqlens)
        seqlens = seqlens + q.shape[1]
        np.testing.assert_array_equal(decoder.cache_seqlens, seqlens)
        np.testing.assert_array_equal(case["k_cache"], k_cache)       # written in place
        np.testing.assert_array_equal(case["v_cache"], v_cache)
        np.testing.assert_array_equal(case["k_cache"], matrix_k)      # the same rotated keys


def test_rotary_tables_turn_each_key_at_its_slot_before_it_is_stored():
    """One head, headdim 2, interleaved: the key appended at slot s is k turned by the
    angle of table row s; the query turns by the same row, so their score only sees the
    difference of angles (here a query and key at one slot: no turn at all)."""
    angle = np.array([[0.0], [0.5], [1.25], [2.0]])                    # (4 slots, 1)
    k_cache, v_cache = np.zeros((1, 4, 1, 2)), np.zeros((1, 4, 1, 1))
    decoder = rs.Decoder(k_cache=k_cache, v_cache=v_cache, cache_seqlens=[2],
                         rotary_cos=np.cos(angle), rotary_sin=np.sin(angle))
    key = np.array([1.0, 0.0]).reshape(1, 1, 1, 2)
    step = decoder.step(key, key, np.ones((1, 1, 1, 1)))
    np.testing.assert_allclose(k_cache[0, 2, 0], [np.cos(1.25), np.sin(1.25)], rtol=1e-15)
    # Keys 0 and 1 are zero (score 0); key 2 scores |k|² / sqrt(2) whatever the turn.
    scores = np.array([0.0, 0.0, 1 / np.sqrt(2)])
    np.testing.assert_allclose(step.lse, [[[np.log(np.exp(scores).sum())]]], rtol=1e-14)


@pytest.mark.parametrize("options, error, match", [
    (dict(rotary_cos=np.ones((9, 1))), InvalidArgumentError, "rotary_cos and rotary_sin come "
                                                             "together"),
    (dict(alibi_slopes=np.ones((3, 1))), ShapeError, r"alibi_slopes of shape \(3, 1\)"),
    (dict(rotary_cos=np.ones((2, 1)), rotary_sin=np.zeros((2, 1))), InvalidArgumentError,
     r"new keys' slots \(cache_seqlens \+ t\) reach position 2, but rope's cos/sin tables "
     r"have rows for positions 0..1"),
])
def test_a_bad_rotary_table_or_slope_table_is_refused_before_the_cache_changes(
        options, error, match):
    k_cache, v_cache = np.zeros((2, 4, 1, 2)), np.zeros((2, 4, 1, 2))
    with pytest.raises(error, match=match):
        decoder = rs.Decoder(k_cache=k_cache, v_cache=v_cache, cache_seqlens=[2, 0], **options)
        decoder.step(*np.ones((3, 2, 1, 1, 2)))
    assert not k_cache.any() and not v_cache.any()


def test_rotary_tables_need_a_flash_attention_cache():
    with pytest.raises(InvalidArgumentError, match="rotary_cos describes a FlashAttention"):
        rs.Decoder(rotary_cos=np.ones((4, 1)), rotary_sin=np.zeros((4, 1)))


def test_the_trace_names_the_page_and_slot_that_served_each_key():
    rng = np.random.default_rng(0)
    pages, values = rng.normal(size=(5, 2, 1, 2)), rng.normal(size=(5, 2, 1, 2))
    table = np.array([[3, 0], [1, 4]])
    decoder = rs.Decoder(k_cache=pages, v_cache=values, cache_seqlens=[2, 1],
                         block_table=table, cache_leftpad=[1, 0])
    step = decoder.step(*rng.normal(size=(3, 2, 1, 1, 2)))
    served = {route.label for route in step.run.routing_table(0, head=0).routes}
    # Sequence 0: its left pad (slot 0) never served; slot 1 on page 3, the new key on page 0.
    assert served == {"seq 0 page 3 slot 1", "seq 0 page 0 slot 0"}
    served = {route.label for route in step.run.routing_table(1, head=0).routes}
    assert served == {"seq 1 page 1 slot 0", "seq 1 page 1 slot 1"}
    assert step.run.routing_table(1, head=0).label == "seq 1 t1"


def test_a_contiguous_cache_names_rows():
    rng = np.random.default_rng(1)
    cache = rng.normal(size=(2, 4, 1, 2))
    decoder = rs.Decoder(k_cache=cache, v_cache=cache.copy(), cache_seqlens=[0, 2])
    step = decoder.step(*rng.normal(size=(3, 2, 1, 1, 2)))
    assert {route.label for route in step.run.routing_table(1, head=0).routes} == {
        "seq 1 row 1 slot 0", "seq 1 row 1 slot 1", "seq 1 row 1 slot 2"}
    assert len(decoder) == 3


@pytest.mark.parametrize("options, match", [
    (dict(rope=10000.0), "does not take rope: .* rotary_cos/rotary_sin"),
    (dict(enable_gqa=True), "does not take enable_gqa"),
    (dict(mask_mod=lambda b, h, q, k: q >= k), "does not take mask_mod"),
    (dict(cache_seqlens=[5, 0]), r"cache_seqlens\[0\] = 5 with 0 new keys is beyond"),
    (dict(block_table=[[0, 9], [1, 2]], cache_seqlens=[5, 0]),
     r"block_table\[0\] points past the cache"),
])
def test_a_cache_decoder_refuses_what_it_cannot_honour(options, match):
    cache = np.zeros((2, 4, 1, 2))
    with pytest.raises(InvalidArgumentError, match=match):
        rs.Decoder(k_cache=cache, v_cache=cache, **options)


def test_cache_arguments_need_a_cache_and_steps_need_the_layout():
    with pytest.raises(InvalidArgumentError, match="cache_seqlens describes"):
        rs.Decoder(cache_seqlens=[1])
    cache = np.zeros((2, 4, 1, 2))
    decoder = rs.Decoder(k_cache=cache, v_cache=cache.copy())
    with pytest.raises(ShapeError, match="query must be 4-D"):
        decoder.step(np.zeros((2, 1, 2)), np.zeros((2, 1, 1, 2)), np.zeros((2, 1, 1, 2)))
    with pytest.raises(ShapeError, match="query has 2 new tokens but key has 1"):
        decoder.step(np.zeros((2, 2, 1, 2)), np.zeros((2, 1, 1, 2)), np.zeros((2, 1, 1, 2)))
    with pytest.raises(InvalidArgumentError, match="no label or position_ids"):
        decoder.step(np.zeros((2, 1, 1, 2)), np.zeros((2, 1, 1, 2)), np.zeros((2, 1, 1, 2)),
                     label="x")
    for _ in range(4):
        decoder.step(*np.ones((3, 2, 1, 1, 2)))
    with pytest.raises(InvalidArgumentError, match="beyond the cache"):
        decoder.step(*np.ones((3, 2, 1, 1, 2)))


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_rotary_and_per_sequence_alibi_rounds_are_bit_identical_under_any_schedule(seed):
    """Float mode: jitter, reordering, loss and duplicates change when messages arrive,
    never a bit of the output."""
    rng = np.random.default_rng(seed)
    angle = rng.random((10, 2)) * np.pi                                # rotary_dim 4
    cache = rng.normal(size=(2, 2, 10, 1, 4))                           # k_cache, v_cache
    rounds = [(rng.normal(size=(2, count, 2, 4)), *rng.normal(size=(2, 2, count, 1, 4)))
              for count in (2, 1)]                                      # q, k, v: GQA 2:1
    slopes = rng.random((2, 2))                                         # (B, H)
    outputs = []
    for network in (None, rs.Network(jitter=0.7, reorder=0.3, seed=seed),
                    rs.Network(loss=0.3, retries=40, duplicate=0.2, seed=seed + 1)):
        decoder = rs.Decoder(k_cache=cache[0].copy(), v_cache=cache[1].copy(),
                             cache_seqlens=[3, 0], cache_leftpad=[1, 0],
                             rotary_cos=np.cos(angle), rotary_sin=np.sin(angle),
                             rotary_interleaved=False, alibi_slopes=slopes, network=network)
        outputs.append([decoder.step(q, k, v).output for q, k, v in rounds])
    for other in outputs[1:]:
        for expected, got in zip(outputs[0], other):
            np.testing.assert_array_equal(got, expected)
