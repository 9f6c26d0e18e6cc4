"""How a simulated time reads when it is printed: one format for every report.

Simulated times are floats in the network's time unit and may be anything a ``Network``
allows: ``latency=1e-9`` or ``jitter=1e200`` are valid. Fixed-point ``:.3f`` prints the
first as ``0.000`` and the second as a 200-digit number, so every report that prints a
time (run summaries, routing tables, statistics, the demo, Mermaid, the notebook view)
goes through :func:`format_time`.
"""

from __future__ import annotations

import math

__all__ = ["format_time"]

# Fixed-point between these magnitudes; scientific notation outside.
_FIXED_BELOW, _FIXED_FROM = 1e6, 1e-4


def format_time(time: float) -> str:
    """A simulated time as short text, readable at every magnitude.

    Times in ``[0.1, 1e6)`` and zero keep the familiar three decimals (``3.250``);
    smaller times down to ``1e-4`` get the decimals that show three significant digits;
    anything else is scientific notation with four. So the text always has at least three
    significant digits and at most 12 characters.

    Examples
    --------
    >>> [format_time(t) for t in (3.25, 0.0, 0.5, 981.8049, 0.0012345)]
    ['3.250', '0.000', '0.500', '981.805', '0.00123']
    >>> [format_time(t) for t in (1e-9, 1.23456e200, 2.5e6, float("inf"))]
    ['1e-09', '1.235e+200', '2.5e+06', 'inf']
    """
    time = float(time)
    if not math.isfinite(time):
        return str(time)
    size = abs(time)
    if size == 0 or _FIXED_FROM <= size < _FIXED_BELOW:
        digits = 3 if size == 0 else max(3, 2 - math.floor(math.log10(size)))
        return f"{time:.{digits}f}"
    return f"{time:.4g}"
