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
