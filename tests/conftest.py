"""Shared hypothesis settings and strategies for the routing_sim tests."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile("heavy", deadline=None, max_examples=500,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("default", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "default"))


@st.composite
def attention_inputs(draw, max_len: int = 6, max_dim: int = 6, magnitude: float = 3.0,
                     dtype=np.float64):
    """(query, key, value) with L, S, E, Ev drawn from 1..max (E, Ev too), seeded normals."""
    n_queries = draw(st.integers(1, max_len))
    n_keys = draw(st.integers(1, max_len))
    dim = draw(st.integers(1, max_dim))
    value_dim = draw(st.integers(1, max_dim))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([magnitude, magnitude * 10, magnitude * 100]))
    query = rng.normal(size=(n_queries, dim)) * scale
    key = rng.normal(size=(n_keys, dim)) * scale
    value = rng.normal(size=(n_keys, value_dim))
    return query.astype(dtype), key.astype(dtype), value.astype(dtype)


@st.composite
def route_masks(draw, n_queries: int, n_keys: int):
    """Keyword arguments restricting routes: none, bool, float (with -inf), or causal."""
    kind = draw(st.sampled_from(["none", "bool", "float", "causal", "bottom_right"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "bool":
        return {"attn_mask": rng.random((n_queries, n_keys)) < 0.7}
    if kind == "float":
        bias = rng.normal(size=(n_queries, n_keys)) * 2
        bias[rng.random((n_queries, n_keys)) < 0.2] = -np.inf
        return {"attn_mask": bias}
    if kind == "causal":
        return {"is_causal": True}
    if kind == "bottom_right":
        return {"is_causal": True, "causal_alignment": "bottom_right"}
    return {}
