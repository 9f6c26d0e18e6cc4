"""The arithmetic one query node does, in a fixed order, shared by engines and reference.

:mod:`.kernels` holds the float kernels (match scores, the routing budget, the weighted
pull, the online softmax's state); :mod:`.exact` and :mod:`.exact_row` exact mode's correctly
rounded arithmetic (double-doubles with an error bound, and one row in integers when they
cannot decide); :mod:`.tiles` the sparse fast path's tiled products. None of it knows
about messages or time: the simulator and the matrix reference must round the same way.
"""

from __future__ import annotations

from .kernels import Kernels

__all__ = ["Kernels"]
