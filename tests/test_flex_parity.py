"""Optional: mask_mod / score_mod against torch.nn.attention.flex_attention (float64, eager).

Skipped when torch is not installed; the core never imports it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.inputs import mods
from routing_sim.routes import patterns

torch = pytest.importorskip("torch")
flex = pytest.importorskip("torch.nn.attention.flex_attention")

RTOL = 1e-12

SLOPES = np.array([0.5, 0.25, 0.125])
TABLE = np.random.default_rng(7).normal(size=(3, 9))                   # (H, 2M - 1), M = 5


def torch_mods():
    """The same mods written with torch ops, as a FlexAttention user writes them."""
    slopes, table = torch.from_numpy(SLOPES), torch.from_numpy(TABLE)
    return {
        "none": (None, None),
        "softcap": (mods.softcap(1.5), lambda s, b, h, q, kv: 1.5 * torch.tanh(s / 1.5)),
        "alibi": (mods.alibi(SLOPES), lambda s, b, h, q, kv: s - slopes[h] * (q - kv).abs()),
        "relative": (mods.relative_bias(TABLE),
                     lambda s, b, h, q, kv: s + table[h, (q - kv).clamp(-4, 4) + 4]),
    }


MASKS = {
    "none": None,
    "causal": lambda b, h, q, kv: kv <= q,
    "window": lambda b, h, q, kv: (kv <= q) & ((q - kv < 3) | (kv < 1)),
    "document": lambda b, h, q, kv: (q // 4) == (kv // 4),
    "per_head": lambda b, h, q, kv: (q + kv + h + b) % 3 != 0,
}


def flex_reference(q, k, v, mask_mod, score_mod):
    tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(x)) for x in (q, k, v))
    block_mask = None
    if mask_mod is not None:
        block_mask = flex.create_block_mask(mask_mod, q.shape[0], q.shape[1], q.shape[2],
                                            k.shape[2], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # "without torch.compile": eager on purpose
        return flex.flex_attention(tq, tk, tv, score_mod=score_mod,
                                   block_mask=block_mask).numpy()


def engine_output(engine: str, q, k, v, **options) -> tuple[np.ndarray, int | None]:
    """The output of ``rs.attention`` or of the message simulator (and its route count)."""
    if engine == "attention":
        return rs.attention(q, k, v, **options), None
    run = rs.simulate(q, k, v, **options)
    return run.output, run.stats.routes


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("mod_name", ["none", "softcap", "alibi", "relative"])
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("engine", ["attention", "simulate"])
def test_matches_flex_attention(engine, mask_name, mod_name, seed):
    rng = np.random.default_rng(seed)
    n_queries = n_keys = int(rng.integers(5, 13))
    q, k, v = rng.normal(size=(3, 2, 3, n_queries, 8))
    ours_mod, torch_mod = torch_mods()[mod_name]
    mask_mod = MASKS[mask_name]
    expected = flex_reference(q, k, v, mask_mod, torch_mod)
    got, _ = engine_output(engine, q, k, v, mask_mod=mask_mod, score_mod=ours_mod)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-13)
    if mask_mod is not None:                    # the same routes, as a RouteSet graph
        routes = rs.RouteSet.from_mask_mod(mask_mod, n_queries, n_keys, batch_shape=(2, 3))
        got, count = engine_output(engine, q, k, v, graph=routes, score_mod=ours_mod)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-13)
        assert count in (None, len(routes))


def test_patterns_match_flex_attention():
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 1, 2, 16, 8))
    routes = patterns.longformer(16, 4, [0, 9])
    mask = torch.from_numpy(routes.to_mask())
    expected = flex_reference(q, k, v, lambda b, h, i, j: mask[i, j], None)
    np.testing.assert_allclose(rs.attention(q, k, v, graph=routes), expected, rtol=RTOL,
                               atol=1e-13)

    np.testing.assert_allclose(rs.simulate(q, k, v, graph=routes).output, expected, rtol=RTOL,
                               atol=1e-13)


# ---------------------------------------------------------------- mods written for torch

DOCUMENT = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])               # a captured tensor
PREFIX = torch.tensor([3, 6])                                          # per batch element


def _alibi_gym(heads):
    def alibi(score, b, h, q_idx, kv_idx):                            # attention-gym
        return score + (kv_idx - q_idx) * torch.exp2(-((h + 1) * 8.0 / heads))
    return alibi


TORCH_MASKS = {                                 # attention-gym style, torch ops throughout
    "causal": lambda b, h, q, kv: q >= kv,
    "sliding_window": lambda b, h, q, kv: (q >= kv) & ((q - kv).abs() <= 3),
    "prefix_lm": lambda b, h, q, kv: (kv <= PREFIX[b]) | (q >= kv),
    "document": lambda b, h, q, kv: (DOCUMENT[q] == DOCUMENT[kv]) & (q >= kv),
    "where": lambda b, h, q, kv: torch.where(h == 0, q >= kv, kv <= q + 1),
}
TORCH_SCORE_MODS = {
    "none": None,
    "alibi": _alibi_gym(3),
    "softcap": lambda score, b, h, q, kv: 20.0 * torch.tanh(score / 20.0),
    "minus_inf": lambda score, b, h, q, kv: torch.where((q - kv).abs() > 4, -torch.inf, score),
}


PAIRS = ([(mask, "none") for mask in sorted(TORCH_MASKS)]
         + [("causal", mod) for mod in sorted(TORCH_SCORE_MODS) if mod != "none"]
         + [("document", "alibi"), ("prefix_lm", "minus_inf")])


@pytest.mark.parametrize("mask_name, mod_name", PAIRS)
def test_flex_mods_written_with_torch_work_unchanged(mask_name, mod_name):
    rng = np.random.default_rng(11)
    q, k, v = rng.normal(size=(3, 2, 3, 10, 8))
    mask_mod, score_mod = TORCH_MASKS[mask_name], TORCH_SCORE_MODS[mod_name]
    expected = flex_reference(q, k, v, mask_mod, score_mod)
    routes = rs.RouteSet.from_mask_mod(mask_mod, 10, 10, batch_shape=(2, 3), block_size=4)
    for engine in ("attention", "simulate"):
        for options in ({"mask_mod": mask_mod}, {"graph": routes}):
            got, _ = engine_output(engine, q, k, v, score_mod=score_mod, **options)
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-13,
                                       err_msg=f"{engine} {sorted(options)}")


def test_a_score_mod_masking_with_minus_inf_matches_flex_including_an_empty_row():
    rng = np.random.default_rng(12)
    q, k, v = rng.normal(size=(3, 1, 2, 6, 4))

    def removing(score, b, h, q_idx, kv_idx):                          # row 2 of head 1: empty
        return torch.where((kv_idx > q_idx) | ((h == 1) & (q_idx == 2)), -torch.inf, score)

    expected = flex_reference(q, k, v, None, removing)
    assert not expected[0, 1, 2].any()                                 # flex gives 0
    np.testing.assert_allclose(rs.attention(q, k, v, score_mod=removing), expected,
                               rtol=RTOL, atol=1e-13)
    for softmax in ("two_phase", "online"):
        run = rs.simulate(q, k, v, score_mod=removing, softmax=softmax)
        np.testing.assert_allclose(run.output, expected, rtol=RTOL, atol=1e-13)


INTERVALS = torch.tensor([[0, 4], [2, 10]])        # (images, 2): the queries each image serves
IMAGE_OF_KEY = torch.tensor([0, 0, 0, 1, 1, 1])     # 3 key tokens per image
ROPE_Q = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 3, 10, 4)))
ROPE_K = torch.from_numpy(np.random.default_rng(4).normal(size=(2, 1, 6, 4)))


def _image_mask(b, h, q_idx, kv_idx):
    """attention-gym's vision cross-attention mask: a row of a table picked by kv_idx, then
    indexed again, which only means that on one element at a time."""
    interval = INTERVALS[IMAGE_OF_KEY[kv_idx]]
    return (q_idx >= interval[0]) & (q_idx < interval[1])


def _rope_dot(score, b, h, q_idx, kv_idx):
    """attention-gym's MLA score mod: torch.dot of two rows, a scalar op."""
    return score + 0.5 * torch.dot(ROPE_Q[b, h, q_idx], ROPE_K[b, 0, kv_idx])


def test_mods_written_for_one_element_at_a_time_run_as_flex_runs_them():
    """FlexAttention calls a mod under torch.vmap, one element at a time; a mod that only
    works so (scalar ops on captured tables) gives the same attention here."""
    rng = np.random.default_rng(13)
    q = rng.normal(size=(2, 3, 10, 4))
    k, v = rng.normal(size=(2, 2, 3, 6, 4))
    images = np.asarray(INTERVALS)[np.asarray(IMAGE_OF_KEY)]             # (S, 2)
    allowed = (np.arange(10)[:, None] >= images[:, 0]) & (np.arange(10)[:, None] < images[:, 1])
    bias = 0.5 * np.einsum("bhqe,bke->bhqk", ROPE_Q.numpy(), ROPE_K.numpy()[:, 0])
    scores = np.where(allowed, q @ np.swapaxes(k, -1, -2) / 2 + bias, -np.inf)  # (2, 3, 10, 6)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    expected = weights / weights.sum(-1, keepdims=True) @ v
    np.testing.assert_allclose(flex_reference(q, k, v, _image_mask, _rope_dot), expected,
                               rtol=RTOL)
    for engine in ("attention", "simulate"):
        got, _ = engine_output(engine, q, k, v, mask_mod=_image_mask, score_mod=_rope_dot)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-13, err_msg=engine)


def test_a_torch_mod_that_is_wrong_on_torch_too_reports_the_numpy_error():
    q = np.ones((2, 3))
    with pytest.raises(AttributeError, match="abs"):
        rs.attention(q, q, q, mask_mod=lambda b, h, i, j: (i - j).abs().nosuch() > 0)


# ---------------------------------------------------------------- FlashAttention's names


@pytest.mark.parametrize("mask_name", ["none", "causal", "window", "document"])
@pytest.mark.parametrize("gqa", [False, True])
def test_softcap_and_lse_match_flex_attention(mask_name, gqa):
    """``softcap=`` against flex's softcap score_mod, and ``return_lse`` / ``run.lse``
    against the log-sum-exp flex returns (natural log, one per query row)."""
    rng = np.random.default_rng(5)
    q = rng.normal(size=(2, 4, 9, 8)) * 3
    k, v = rng.normal(size=(2, 2, 2 if gqa else 4, 9, 8)) * 3
    mask_mod = MASKS[mask_name]
    tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(x)) for x in (q, k, v))
    block_mask = None if mask_mod is None else flex.create_block_mask(
        mask_mod, 2, 4, 9, 9, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                # eager, on purpose
        out, aux = flex.flex_attention(
            tq, tk, tv, score_mod=lambda s, b, h, i, j: 2.5 * torch.tanh(s / 2.5),
            block_mask=block_mask, enable_gqa=gqa, return_aux=flex.AuxRequest(lse=True))
    options = dict(mask_mod=mask_mod, softcap=2.5, enable_gqa=gqa)
    got, lse = rs.attention(q, k, v, return_lse=True, **options)
    run = rs.simulate(q, k, v, **options)
    for output in (got, run.output):
        np.testing.assert_allclose(output, out.numpy(), rtol=RTOL, atol=1e-13)
    for mine in (lse, run.lse):
        np.testing.assert_allclose(mine, aux.lse.numpy(), rtol=RTOL, atol=1e-13)
