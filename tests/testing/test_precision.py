"""Rounding to the four dtypes and their ULPs, against numpy's and torch's own."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing_sim.errors import InvalidArgumentError
from routing_sim.testing.precision import check_dtype, round_to, ulp


@given(st.lists(st.floats(-2.0**100, 2.0**100, width=32), min_size=1, max_size=20))
def test_bfloat16_rounding_is_torchs(values):
    torch = pytest.importorskip("torch")
    single = np.array(values, np.float32)
    theirs = torch.from_numpy(single).to(torch.bfloat16).double().numpy()
    np.testing.assert_array_equal(round_to(single, "bfloat16"), theirs)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_other_roundings_and_spacings_are_numpys(dtype):
    values = np.random.default_rng(0).normal(size=50) * 100
    np.testing.assert_array_equal(round_to(values, dtype), values.astype(dtype).astype(float))
    np.testing.assert_array_equal(ulp(values, dtype), np.spacing(np.abs(values).astype(dtype)))


def test_bfloat16_spacing_is_the_gap_to_the_next_bfloat16():
    torch = pytest.importorskip("torch")
    values = torch.tensor([1.0, 3.0, 1e-3, 1e30, 0.0], dtype=torch.bfloat16)
    up = torch.nextafter(values, torch.full_like(values, float("inf")))
    np.testing.assert_array_equal(ulp(values.double().numpy(), "bfloat16"),
                                  (up - values).double().numpy())


def test_dtypes_by_any_name():
    torch = pytest.importorskip("torch")
    assert [check_dtype(x) for x in (torch.bfloat16, np.float16, "float32", None)] == \
        ["bfloat16", "float16", "float32", "float64"]
    with pytest.raises(InvalidArgumentError, match="dtype must be one of"):
        check_dtype(np.int32)
