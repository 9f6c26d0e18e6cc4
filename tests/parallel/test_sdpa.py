"""Every strategy and layout, P in {2, 4, 8}, causal or not, against PyTorch SDPA in float64."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import routing_sim as rs

torch = pytest.importorskip("torch", reason="torch is not installed (the 'hf' extra)")

CASES = list(itertools.product(["ring", "allgather", "ulysses", "tree"],
                               ["contiguous", "zigzag", "striped"], [2, 4, 8], [False, True]))


@pytest.mark.parametrize("strategy, layout, devices, causal", CASES)
def test_context_parallel_equals_sdpa_in_float64(strategy, layout, devices, causal):
    rng = np.random.default_rng(devices)
    heads, keys = 8, 2 * devices * 3
    queries = 3 if strategy == "tree" else keys
    query = rng.normal(size=(2, heads, queries, 16)) * 2
    key = rng.normal(size=(2, heads, keys, 16)) * 2
    value = rng.normal(size=(2, heads, keys, 16))
    run = rs.context_parallel(query, key, value, strategy=strategy, layout=layout,
                              is_causal=causal, cluster=rs.Cluster(devices=devices))
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(x) for x in (query, key, value)), is_causal=causal).numpy()
    error = np.abs(run.output - expected).max() / np.abs(expected).max()
    assert error <= 1e-12
