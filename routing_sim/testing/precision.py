"""The four dtypes a kernel is checked in: rounding to them and their units in the last place.

numpy has float64, float32 and float16; bfloat16 (torch's) is float32 with the low 16
bits of the significand rounded away, which :func:`round_to` does with integer arithmetic,
so the oracle never needs torch to know what a bfloat16 value is.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["DTYPES", "check_dtype", "round_to", "ulp", "unit"]

DTYPES = ("float64", "float32", "float16", "bfloat16")
_MANTISSA = {"float64": 52, "float32": 23, "float16": 10, "bfloat16": 7}


def check_dtype(dtype: object) -> str:
    """A dtype's name among :data:`DTYPES`, from a name, a numpy dtype or a torch dtype.

    Examples
    --------
    >>> check_dtype(None), check_dtype(np.float32), check_dtype("bfloat16")
    ('float64', 'float32', 'bfloat16')
    """
    if dtype is None:
        return "float64"
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        try:
            name = np.dtype(dtype).name            # type: ignore[call-overload]
        except TypeError:
            pass
    if name not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


def unit(dtype: str) -> float:
    """The unit roundoff ``u``: half the distance from 1 to the next float.

    >>> unit("float64") == 2.0**-53, unit("bfloat16")
    (True, 0.00390625)
    """
    return 2.0 ** -(_MANTISSA[dtype] + 1)


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` rounded to the nearest ``dtype`` value (ties to even), as float64.

    >>> round_to(np.array([1.0 + 2.0**-9, 3.14159]), "bfloat16").tolist()
    [1.0, 3.140625]
    """
    values = np.asarray(values, np.float64)
    if dtype == "float64":
        return values.copy()
    if dtype != "bfloat16":
        with np.errstate(over="ignore"):
            return values.astype(dtype).astype(np.float64)
    single = values.astype(np.float32)
    bits = single.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000    # round half to even
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def ulp(magnitude: np.ndarray, dtype: str) -> np.ndarray:
    """The spacing of ``dtype`` floats at ``|magnitude|`` (the smallest subnormal at 0).

    >>> ulp(np.array([1.0, 0.0]), "float64").tolist() == [2.0**-52, 2.0**-1074]
    True
    >>> ulp(np.array([1.0]), "bfloat16").tolist()
    [0.0078125]
    """
    magnitude = np.abs(np.asarray(magnitude, np.float64))
    if dtype == "bfloat16":            # float32's spacing, 16 bits coarser, down to 2^-133
        single = round_to(magnitude, dtype).astype(np.float32)
        return np.spacing(single).astype(np.float64) * 2.0**16
    with np.errstate(over="ignore"):
        return np.spacing(magnitude.astype(dtype)).astype(np.float64)
