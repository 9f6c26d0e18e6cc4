"""The independent oracle: matrix-form attention, and how close a simulation must be.

:mod:`.matrix` computes ``softmax(Q Kᵀ · scale + bias) V`` as matrices (and its gradients);
:mod:`.segments` does the same as a segment softmax over a sparse route set; :mod:`.verify`
derives the float64 tolerance and gives verdicts. This subpackage never imports the
simulator side (network, engines, trace, results, simulation): the equivalence check stays
independent of what it checks. tests/test_structure.py holds that.
"""

from __future__ import annotations

from .kvcache import attention_with_kvcache
from .matrix import attention, attention_backward

__all__ = ["attention", "attention_backward", "attention_with_kvcache"]
