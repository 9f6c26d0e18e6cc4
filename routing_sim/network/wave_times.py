"""Zero-stride time arrays: one instant for many messages, without the memory.

A wave of messages that all leave (or arrive) at one time carries its times as a
read-only view of a single float (``strides == (0,)``); these helpers make such views,
recognise them, and shift them while keeping them views.
"""

from __future__ import annotations

import numpy as np

__all__ = ["constant", "earliest", "shifted", "uniform"]


def constant(values: np.ndarray) -> float | None:
    """The one value of an array made by :func:`uniform` (a zero-stride view), else None.

    Examples
    --------
    >>> constant(uniform(2.5, 4)), constant(np.array([1.0, 2.0]))
    (2.5, None)
    """
    if len(values) and (values.strides == (0,) or len(values) == 1):
        return float(values[0])
    return None


def earliest(values: np.ndarray) -> float:
    """``values.min()`` of a non-empty array, with no pass over a zero-stride view.

    Examples
    --------
    >>> earliest(uniform(2.5, 10**9)), earliest(np.array([3.0, 1.0]))
    (2.5, 1.0)
    """
    one = constant(values)
    return float(values.min()) if one is None else one


def uniform(value: float, size: int) -> np.ndarray:
    """``size`` copies of one time, without the memory: a read-only zero-stride view.

    Made with the ``ndarray`` constructor (``np.broadcast_to`` would give the same view at
    several times the cost: a decoding step makes dozens).

    Examples
    --------
    >>> times = uniform(2.5, 3)
    >>> times.tolist(), times.strides, times.flags.writeable
    ([2.5, 2.5, 2.5], (0,), False)
    """
    view = np.ndarray((size,), np.float64, np.array(value, np.float64), 0, (0,))
    view.flags.writeable = False
    return view


def shifted(times: np.ndarray, delay: float) -> np.ndarray:
    """``times + delay``, staying a zero-stride view when ``times`` is one (``times``
    itself for no delay: time arrays are never changed in place).

    Examples
    --------
    >>> shifted(uniform(1.0, 3), 0.5).strides, shifted(uniform(1.0, 3), 0.5).tolist()
    ((0,), [1.5, 1.5, 1.5])
    >>> times = np.array([0.0, 2.5])
    >>> shifted(times, 0.0) is times, shifted(times, 0.25).tolist()
    (True, [0.25, 2.75])
    """
    if delay == 0:          # times + 0.0 is times, as no time is -0.0 (a run starts at +0.0)
        return times
    one = constant(times)
    return uniform(one + delay, len(times)) if one is not None and len(times) > 1 \
        else times + delay
