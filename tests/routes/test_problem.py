"""Problem: the arguments attention and simulate share, checked once."""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.routes.problem import as_float_array


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_entry_is_named_with_its_index(bad):
    query = np.ones((2, 3, 4))
    query[1, 2, 0] = bad
    with pytest.raises(rs.InvalidArgumentError, match=r"query holds .* at index \(1, 2, 0\)"):
        as_float_array("query", query)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_entries_whose_sum_overflows_are_accepted(dtype):
    huge = np.finfo(dtype).max
    key = np.full((3, 2), huge, dtype=dtype)                 # finite, but they sum to inf
    assert as_float_array("key", key) is key
    negative = -key
    assert as_float_array("key", negative) is negative
