"""context_parallel equals matrix attention, bit for bit under every schedule and fault."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs

STRATEGIES = ["ring", "allgather", "ulysses", "tree"]
LAYOUTS = ["contiguous", "zigzag", "striped"]
FAST = rs.Cluster(devices=4, bandwidth=1e9, latency=1e-6, flops=1e12)


@st.composite
def problems(draw, max_devices: int = 4):
    """(strategy, layout, devices, is_causal, query, key, value) that fit together."""
    strategy = draw(st.sampled_from(STRATEGIES))
    layout = draw(st.sampled_from(LAYOUTS))
    devices = draw(st.sampled_from([d for d in (1, 2, 3, 4) if d <= max_devices]))
    parts = 2 * devices if layout == "zigzag" else devices
    heads = devices * draw(st.integers(1, 2)) if strategy == "ulysses" else draw(
        st.integers(1, 3))
    keys = parts * draw(st.integers(1, 3))
    queries = draw(st.integers(1, 4)) if strategy == "tree" else keys
    dim, value_dim = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    magnitude = draw(st.sampled_from([1.0, 3.0, 10.0]))
    batch = draw(st.sampled_from([(), (2,)]))
    query = rng.normal(size=batch + (heads, queries, dim)) * magnitude
    key = rng.normal(size=batch + (heads, keys, dim)) * magnitude
    value = rng.normal(size=batch + (heads, keys, value_dim))
    return strategy, layout, devices, draw(st.booleans()), query, key, value


def _relative_error(output, reference) -> float:
    return float(np.abs(output - reference).max() / np.abs(reference).max())


@given(problems())
def test_every_strategy_and_layout_equals_matrix_attention(problem):
    strategy, layout, devices, causal, query, key, value = problem
    run = rs.context_parallel(query, key, value, strategy=strategy, layout=layout,
                              is_causal=causal, cluster=rs.Cluster(devices=devices))
    reference = rs.attention(query, key, value, is_causal=causal)
    assert run.output.shape == reference.shape
    assert _relative_error(run.output, reference) <= 1e-12


@settings(max_examples=15)
@given(problems(max_devices=3))
def test_exact_mode_is_the_correctly_rounded_output(problem):
    strategy, layout, devices, causal, query, key, value = problem
    run = rs.context_parallel(query, key, value, strategy=strategy, layout=layout,
                              is_causal=causal, cluster=rs.Cluster(devices=devices),
                              numerics="exact")
    assert np.array_equal(run.output, rs.attention(query, key, value, is_causal=causal,
                                                   numerics="exact"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_float32_stays_float32(strategy):
    rng = np.random.default_rng(3)
    query, key, value = rng.normal(size=(3, 4, 16, 8)).astype(np.float32)
    run = rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST)
    assert run.output.dtype == np.float32
    reference = rs.attention(query.astype(np.float64), key.astype(np.float64),
                             value.astype(np.float64))
    assert _relative_error(run.output, reference) <= 1e-5


SCHEDULES = [
    {"cluster": rs.Cluster(devices=4, bandwidth=1e3, latency=0.5, flops=1e3)},
    {"cluster": rs.Cluster(devices=4, bandwidth=1e12, latency=0.0, flops=1e15,
                           topology="switch")},
    {"network": rs.Network(jitter=3e-6, reorder=0.5, duplicate=0.3, seed=5)},
    {"network": rs.Network(jitter=1e-5, jitter_dist="exponential", spike=0.3,
                           spike_delay=1e-4)},
    {"network": rs.Network(loss=0.3, retries=12, seed=2)},
    {"network": rs.Network(crashes=(rs.Crash(1, 0.0, 3e-6), rs.Crash(3, 1e-6, 9e-6)),
                           retries=30)},
]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_output_is_bit_identical_under_every_schedule_and_fault(strategy, schedule):
    rng = np.random.default_rng(7)
    queries = 3 if strategy == "tree" else 16
    query = rng.normal(size=(4, queries, 8)) * 3
    key, value = rng.normal(size=(2, 4, 16, 8))
    plain = rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST,
                                is_causal=True)
    options = {"cluster": FAST, **schedule}
    run = rs.context_parallel(query, key, value, strategy=strategy, is_causal=True, **options)
    assert np.array_equal(run.output, plain.output)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_loss_with_retries_keeps_the_bits_and_costs_time(strategy):
    rng = np.random.default_rng(8)
    query = rng.normal(size=(4, 2 if strategy == "tree" else 32, 8))
    key, value = rng.normal(size=(2, 4, 32, 8))
    plain = rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST)
    lossy = rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST,
                                network=rs.Network(loss=0.4, retries=20, seed=1))
    assert np.array_equal(lossy.output, plain.output)
    assert lossy.stats.retransmissions > 0
    assert lossy.stats.makespan > plain.stats.makespan
    assert lossy.trace.transfers[0]["fate"] in ("delivered", "lost")
    assert any(t["fate"] == "lost" for t in lossy.trace.transfers)


def test_a_transfer_lost_on_every_try_is_a_delivery_error():
    query = key = value = np.ones((1, 8, 2))
    with pytest.raises(rs.DeliveryError, match="device 1 still waits for the K/V block"):
        rs.context_parallel(query, key, value, strategy="ring", cluster=FAST,
                            network=rs.Network(loss=0.99, retries=0))


def test_the_seed_draws_another_fault_pattern_with_the_same_bits():
    rng = np.random.default_rng(9)
    query, key, value = rng.normal(size=(3, 2, 16, 4))
    network = rs.Network(loss=0.3, retries=20)
    runs = [rs.context_parallel(query, key, value, strategy="ring", cluster=FAST,
                                network=network, seed=seed) for seed in (0, 1)]
    assert np.array_equal(runs[0].output, runs[1].output)
    assert [t["fate"] for t in runs[0].trace.transfers] != \
        [t["fate"] for t in runs[1].trace.transfers]


def test_low_precision_transit_error_grows_with_the_device_count():
    """Rounding each partial state to float16 after every merge, as low-precision ring
    implementations do: the error grows with P. Exact mode has none."""
    errors = {}
    for devices in (2, 16):
        per_seed = []
        for seed in range(3):
            rng = np.random.default_rng(seed)
            query, key, value = rng.normal(size=(3, 2, 64, 8))
            run = rs.context_parallel(query, key, value, strategy="ring",
                                      cluster=rs.Cluster(devices=devices),
                                      transit_dtype="float16")
            per_seed.append(_relative_error(run.output, rs.attention(query, key, value)))
        errors[devices] = np.mean(per_seed)
    assert 1e-4 < errors[2] < errors[16] < 1e-2


@pytest.mark.parametrize("arguments, error, message", [
    ({"strategy": "mesh"}, rs.InvalidArgumentError, "strategy"),
    ({"layout": "diagonal"}, rs.InvalidArgumentError, "layout"),
    ({"numerics": "fast"}, rs.InvalidArgumentError, "numerics"),
    ({"transit_dtype": "bfloat16"}, rs.DTypeError, "transit_dtype"),
    ({"transit_dtype": "float16", "numerics": "exact"}, rs.InvalidArgumentError, "exact"),
    ({"trace": "some"}, rs.InvalidArgumentError, "trace"),
    ({"seed": 1.5}, rs.InvalidArgumentError, "seed"),
    ({"cluster": 4}, rs.InvalidArgumentError, "cluster"),
    ({"cluster": rs.Cluster(devices=3)}, rs.ShapeError, "length 10 must be a multiple of 3"),
    ({"layout": "zigzag", "cluster": rs.Cluster(devices=4)}, rs.ShapeError,
     "multiple of 8 for layout=.zigzag"),
    ({"strategy": "ulysses", "cluster": rs.Cluster(devices=4)}, rs.ShapeError,
     "6 heads over 4 devices"),
    ({"network": rs.Network(crashes=(rs.Crash(5, 0, 1),))}, rs.InvalidArgumentError,
     "device 5"),
    ({"network": "lossy"}, rs.InvalidArgumentError, "network"),
])
def test_bad_arguments_are_clear_errors(arguments, error, message):
    query = key = value = np.ones((6, 10, 4))
    options = {"strategy": "ring", "cluster": rs.Cluster(devices=2), **arguments}
    with pytest.raises(error, match=message):
        rs.context_parallel(query, key, value, **options)


@pytest.mark.parametrize("shapes, message", [
    (((2, 8, 4), (3, 8, 4), (3, 8, 4)), "leading"),
    (((2, 8, 4), (2, 8, 5), (2, 8, 4)), "feature dim"),
    (((2, 8, 4), (2, 8, 4), (2, 6, 4)), "length S"),
    (((2, 0, 4), (2, 8, 4), (2, 8, 4)), "empty"),
])
def test_shapes_that_do_not_fit_are_shape_errors(shapes, message):
    query, key, value = (np.ones(shape) for shape in shapes)
    with pytest.raises(rs.ShapeError, match=message):
        rs.context_parallel(query, key, value, strategy="ring", cluster=rs.Cluster(devices=2))


def test_non_finite_inputs_are_refused():
    query = np.ones((2, 8, 4))
    query[0, 1, 2] = np.nan
    with pytest.raises(rs.InvalidArgumentError, match="query holds nan"):
        rs.context_parallel(query, query, query, strategy="ring", cluster=FAST)


# ------------------------------------------------ the kernels' options (issue 23)


def _split(draw, total: int, pieces: int) -> list[int]:
    """Offsets ``[0, ..., total]`` of ``pieces`` sequences (some may be empty)."""
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=pieces - 1,
                                max_size=pieces - 1)))
    return [0, *cuts, total]


@st.composite
def featured_problems(draw, exact: bool = False):
    """(strategy, layout, devices, query, key, value, options): a context-parallel problem
    with some of sinks, softcap, ALiBi ((H,) or (B, H)), a window, packed sequences and
    causality, as ``rs.attention`` takes them."""
    strategy = draw(st.sampled_from(STRATEGIES))
    layout = draw(st.sampled_from(LAYOUTS))
    devices = draw(st.sampled_from([1, 2, 3] if exact else [1, 2, 3, 4]))
    parts = 2 * devices if layout == "zigzag" else devices
    heads = devices * draw(st.integers(1, 2)) if strategy == "ulysses" else draw(
        st.integers(1, 3))
    keys = parts * draw(st.integers(1, 3))
    queries = draw(st.integers(1, 4)) if strategy == "tree" else keys
    batch = draw(st.sampled_from([(), (2,)]))
    dim, value_dim = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    magnitude = draw(st.sampled_from([1.0, 3.0]))
    query = rng.normal(size=(*batch, heads, queries, dim)) * magnitude
    key = rng.normal(size=(*batch, heads, keys, dim)) * magnitude
    value = rng.normal(size=(*batch, heads, keys, value_dim))
    options: dict = {"is_causal": draw(st.booleans())}
    if draw(st.booleans()):
        options["sinks"] = rng.normal(size=heads) * 3
    if not exact and draw(st.booleans()):
        options["softcap"] = draw(st.sampled_from([0.5, 2.0, 30.0]))
    if draw(st.booleans()):
        per_batch = batch and draw(st.booleans())
        options["alibi_slopes"] = rng.uniform(0.05, 1.0, size=(*batch, heads) if per_batch
                                              else (heads,))
    if draw(st.booleans()):
        options["window_size"] = (draw(st.integers(-1, 3)), draw(st.integers(-1, 2)))
    if draw(st.booleans()):
        sequences = draw(st.integers(1, 3))
        options["cu_seqlens_q"] = _split(draw, queries, sequences)
        options["cu_seqlens_k"] = _split(draw, keys, sequences)
    if options["is_causal"] and "window_size" in options or draw(st.booleans()):
        options["causal_alignment"] = "bottom_right"
    return strategy, layout, devices, query, key, value, options


def _definition(query, key, value, scale=None, is_causal=False, causal_alignment="top_left",
                window_size=None, cu_seqlens_q=None, cu_seqlens_k=None, sinks=None,
                softcap=0.0, alibi_slopes=None):
    """Output and lse written from the published definitions, in float64, one dense
    ``(L, S)`` score matrix per head: FlashAttention's window (bottom-right) and varlen
    (per sequence, each starting at 0), PyTorch's causal, ALiBi ``-m·|pos_i - j|``, the
    softcap on the scaled score, the sink as one more logit in the denominator."""
    *batch, queries, _ = query.shape
    keys = key.shape[-2]
    cu_q = [0, queries] if cu_seqlens_q is None else list(cu_seqlens_q)
    cu_k = [0, keys] if cu_seqlens_k is None else list(cu_seqlens_k)
    allowed = np.zeros((queries, keys), bool)
    q_pos, k_pos = np.zeros(queries), np.zeros(keys)
    for b in range(len(cu_q) - 1):
        length, span = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
        for i in range(length):
            bottom = i + span - length
            here = bottom if causal_alignment == "bottom_right" else i
            q_pos[cu_q[b] + i] = here
            for j in range(span):
                ok = not is_causal or j <= here
                if window_size is not None:
                    left, right = window_size
                    ok &= left < 0 or j >= bottom - left
                    ok &= right < 0 or j <= bottom + right
                allowed[cu_q[b] + i, cu_k[b] + j] = ok
        k_pos[cu_k[b]:cu_k[b + 1]] = np.arange(span)
    scale = 1 / np.sqrt(query.shape[-1]) if scale is None else scale
    scores = query @ np.swapaxes(key, -1, -2) * scale                  # (..., H, L, S)
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    if alibi_slopes is not None:
        slopes = np.broadcast_to(alibi_slopes, tuple(batch))
        scores = scores - slopes[..., None, None] * np.abs(q_pos[:, None] - k_pos[None, :])
    scores = np.where(allowed, scores, -np.inf)
    sink = np.full((*batch, queries, 1), -np.inf) if sinks is None else np.broadcast_to(
        np.asarray(sinks, float)[:, None, None], (*batch, queries, 1))
    every = np.concatenate([scores, sink], axis=-1)                    # (..., L, S + 1)
    top = every.max(axis=-1, keepdims=True)                            # (..., L, 1)
    routed = np.isfinite(top)
    pivot = np.where(routed, top, 0.0)
    terms = np.exp(every - pivot)
    total = terms.sum(axis=-1, keepdims=True)
    output = np.where(routed, terms[..., :-1] @ value / np.where(routed, total, 1.0), 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(routed, pivot + np.log(total), -np.inf)[..., 0]
    return output, lse


def _close(actual, expected, scale: float) -> bool:
    """Equal infinities, and finite entries within 1e-12 of the largest |expected|
    (at least ``scale``): float mode's contract for scores of this size."""
    finite = np.isfinite(expected)
    if not np.array_equal(np.isfinite(actual), finite) or \
            not np.array_equal(actual[~finite], expected[~finite]):
        return False
    size = max(scale, float(np.abs(expected[finite]).max(initial=0.0)))
    return bool(np.abs(actual[finite] - expected[finite]).max(initial=0.0) <= 1e-12 * size)


@settings(max_examples=40)
@given(featured_problems())
def test_kernel_options_equal_matrix_attention_and_the_definition(problem):
    strategy, layout, devices, query, key, value, options = problem
    run = rs.context_parallel(query, key, value, strategy=strategy, layout=layout,
                              cluster=rs.Cluster(devices=devices), return_lse=True,
                              **options)
    output, lse = rs.attention(query, key, value, return_lse=True, **options)
    expected, expected_lse = _definition(query, key, value, **options)
    assert run.output.shape == output.shape and run.lse.shape == lse.shape
    assert _close(run.output, output, 1.0) and _close(run.output, expected, 1.0)
    assert _close(run.lse, lse, 1.0) and _close(run.lse, expected_lse, 1.0)


@settings(max_examples=12)
@given(featured_problems(exact=True))
def test_kernel_options_in_exact_mode_are_correctly_rounded(problem):
    strategy, layout, devices, query, key, value, options = problem
    run = rs.context_parallel(query, key, value, strategy=strategy, layout=layout,
                              cluster=rs.Cluster(devices=devices), return_lse=True,
                              numerics="exact", **options)
    output, lse = rs.attention(query, key, value, return_lse=True, numerics="exact",
                               **options)
    assert np.array_equal(run.output, output)
    assert np.array_equal(run.lse, lse)


KERNEL_OPTIONS = {"is_causal": True, "causal_alignment": "bottom_right", "window_size": (3, 0),
                  "cu_seqlens_q": [0, 5, 16], "cu_seqlens_k": [0, 7, 16],
                  "sinks": [0.5, -1.0, 2.0, 0.0], "alibi_slopes": [0.5, 0.25, 0.125, 1.0]}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("schedule", SCHEDULES[2:5])
@pytest.mark.parametrize("numerics", ["float", "exact"])
def test_kernel_options_keep_the_bits_under_every_schedule(strategy, schedule, numerics):
    rng = np.random.default_rng(10)
    queries = 16
    query = rng.normal(size=(4, queries, 4)) * 3
    key, value = rng.normal(size=(2, 4, 16, 4))
    options = {**KERNEL_OPTIONS, "softcap": 0.0 if numerics == "exact" else 4.0}
    plain = rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST,
                                return_lse=True, numerics=numerics, **options)
    run = rs.context_parallel(query, key, value, strategy=strategy, return_lse=True,
                              numerics=numerics, **{"cluster": FAST, **schedule}, **options)
    assert np.array_equal(run.output, plain.output)
    assert np.array_equal(run.lse, plain.lse)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("numerics", ["float", "exact"])
def test_a_row_with_no_key_gives_its_sink_everything(strategy, numerics):
    """The first packed sequence has no keys: output 0, lse the sink's logit exactly
    (the sink merged once, not once per device)."""
    rng = np.random.default_rng(11)
    query, key, value = rng.normal(size=(3, 2, 8, 3))
    sinks = [0.75, -1e-30]
    run = rs.context_parallel(query, key, value, strategy=strategy, sinks=sinks,
                              cu_seqlens_q=[0, 2, 8], cu_seqlens_k=[0, 0, 8],
                              cluster=rs.Cluster(devices=2), return_lse=True,
                              numerics=numerics)
    assert np.array_equal(run.output[:, :2], np.zeros((2, 2, 3)))
    assert run.lse[:, :2].tolist() == [[0.75, 0.75], [-1e-30, -1e-30]]
    _, lse = rs.attention(query, key, value, sinks=sinks, cu_seqlens_q=[0, 2, 8],
                          cu_seqlens_k=[0, 0, 8], return_lse=True, numerics=numerics)
    assert _close(run.lse, lse, 1.0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_without_sinks_an_empty_row_has_lse_minus_inf(strategy):
    rng = np.random.default_rng(12)
    query, key, value = rng.normal(size=(3, 2, 4, 3))
    run = rs.context_parallel(query, key, value, strategy=strategy, is_causal=True,
                              cu_seqlens_q=[0, 2, 4], cu_seqlens_k=[0, 0, 4],
                              cluster=rs.Cluster(devices=2), return_lse=True)
    assert np.isneginf(run.lse[:, :2]).all() and np.isfinite(run.lse[:, 2:]).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exact_lse_near_zero_is_decided_in_integers(strategy):
    """Two keys of score fl(-ln 2), one per device: lse = log(2·e^fl(-ln 2)) ≈ 2.3e-17,
    whose double-double bound cannot decide it (docs/numerics.md); a sink of 1000 puts
    every key more than 660 below the max. Both end in integers, correctly rounded."""
    key = np.ones((2, 2, 1))
    query = np.full((2, 2, 1), -np.log(2))
    value = np.array([[[1.0], [3.0]]] * 2)
    for sinks in (None, [1000.0, -0.5]):
        run = rs.context_parallel(query, key, value, strategy=strategy, scale=1.0,
                                  sinks=sinks, cluster=rs.Cluster(devices=2),
                                  numerics="exact", return_lse=True)
        output, lse = rs.attention(query, key, value, scale=1.0, sinks=sinks,
                                   numerics="exact", return_lse=True)
        assert np.array_equal(run.output, output) and np.array_equal(run.lse, lse)
        if sinks is None:
            assert (0 < run.lse).all() and (run.lse < 1e-16).all()
        else:
            assert run.lse[0].tolist() == [1000.0, 1000.0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exact_rows_with_a_far_sink_and_steep_alibi_are_finished_with_their_bias(strategy):
    """A sink 700 above the scores (its state's factor is out of the double-doubles'
    range) and ALiBi biases of -800: the integer tier gets the row's bias and sink."""
    rng = np.random.default_rng(16)
    query, key, value = rng.normal(size=(3, 2, 2, 8, 3))
    options = {"sinks": [700.0, -3.0], "alibi_slopes": [[0.5, 90.0], [1.0, 200.0]],
               "is_causal": True, "cu_seqlens_q": [0, 3, 8], "cu_seqlens_k": [0, 3, 8]}
    run = rs.context_parallel(query, key, value, strategy=strategy, numerics="exact",
                              cluster=rs.Cluster(devices=2), return_lse=True, **options)
    output, lse = rs.attention(query, key, value, numerics="exact", return_lse=True,
                               **options)
    assert np.array_equal(run.output, output) and np.array_equal(run.lse, lse)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_float32_features_stay_float32(strategy):
    rng = np.random.default_rng(13)
    query, key, value = rng.normal(size=(3, 2, 4, 8, 4)).astype(np.float32)
    options = {"sinks": np.array([0.5, 1.0, -1.0, 0.0], np.float32),
               "alibi_slopes": np.full((2, 4), 0.25), "softcap": 3.0, "is_causal": True}
    run = rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST,
                              return_lse=True, **options)
    assert run.output.dtype == run.lse.dtype == np.float32
    expected, lse = _definition(*(x.astype(np.float64) for x in (query, key, value)),
                                **options)
    assert _relative_error(run.output, expected) <= 1e-5
    assert np.abs(run.lse - lse).max() <= 1e-5 * np.abs(lse).max()


def test_ulysses_sends_the_lse_back_with_the_outputs():
    """Each of the P(P-1) output transfers carries its rows' lse too: (P-1)/P·B·H·L items."""
    rng = np.random.default_rng(14)
    query, key, value = rng.normal(size=(3, 2, 4, 8, 4))
    runs = [rs.context_parallel(query, key, value, strategy="ulysses", cluster=FAST,
                                return_lse=asked) for asked in (False, True)]
    assert runs[1].stats.bytes["out"] - runs[0].stats.bytes["out"] == 3 * 2 * 4 * 8 // 4 * 8
    assert runs[1].stats.bytes["qkv"] == runs[0].stats.bytes["qkv"]
    assert runs[0].lse is None


@pytest.mark.parametrize("strategy", ["ring", "tree"])
def test_sinks_add_no_transfer_and_the_replay_page_draws_the_run(strategy, tmp_path):
    """A sink has no key node and no key block: the trace, bytes and timing are those of
    the run without it, and the replay page is written from that trace."""
    rng = np.random.default_rng(15)
    query, key, value = rng.normal(size=(3, 2, 8, 4))
    runs = [rs.context_parallel(query, key, value, strategy=strategy, cluster=FAST,
                                sinks=sinks) for sinks in (None, [1.0, 2.0])]
    assert runs[1].trace.events() == runs[0].trace.events()
    assert runs[1].stats.makespan == runs[0].stats.makespan
    assert not np.array_equal(runs[1].output, runs[0].output)
    page = runs[1].to_html(tmp_path / "sinks.html").read_text()
    assert page.count("<html") == 1 and "device 1" in page
    assert "sink" not in runs[1].trace.to_mermaid()


@pytest.mark.parametrize("options, error, message", [
    ({"softcap": 2.0, "numerics": "exact"}, rs.InvalidArgumentError, "softcap=2.0"),
    ({"softcap": -1.0}, rs.InvalidArgumentError, "softcap must be"),
    ({"sinks": [0.0, 1.0, 2.0]}, rs.ShapeError, r"sinks must have shape \(2,\)"),
    ({"sinks": [np.inf, 0.0]}, rs.InvalidArgumentError, "sinks holds inf"),
    ({"alibi_slopes": [0.5, 0.5, 0.5]}, rs.ShapeError, r"alibi_slopes of shape \(3,\)"),
    ({"cu_seqlens_q": [0, 8]}, rs.InvalidArgumentError, "cu_seqlens_q was given without"),
    ({"cu_seqlens_q": [0, 3, 8], "cu_seqlens_k": [0, 9, 8]}, rs.InvalidArgumentError,
     "cu_seqlens_k"),
    ({"return_lse": "yes"}, rs.InvalidArgumentError, "return_lse must be True or False"),
    ({"causal_alignment": "middle"}, rs.InvalidArgumentError, "causal_alignment"),
    ({"window_size": (1, 0), "is_causal": True, "cu_seqlens_q": [0, 3, 8],
      "cu_seqlens_k": [0, 5, 8]}, rs.InvalidArgumentError, "causal_alignment='bottom_right'"),
])
def test_bad_kernel_options_are_refused_by_name(options, error, message):
    query = key = value = np.ones((2, 8, 4))
    with pytest.raises(error, match=message):
        rs.context_parallel(query, key, value, strategy="ring", cluster=rs.Cluster(devices=2),
                            **options)
