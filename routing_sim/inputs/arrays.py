"""User arrays (numpy arrays, nested lists, PyTorch tensors) turned into numpy arrays.

The core never imports torch: a tensor is recognised by its ``requires_grad`` attribute,
and converted through numpy's array protocol like any other array-like.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ..errors import DTypeError

__all__ = ["as_numpy"]


def as_numpy(name: str, x: ArrayLike, dtype: DTypeLike | None = None) -> np.ndarray:
    """``np.asarray(x, dtype)``, refusing tensors that track gradients with a clear error.

    routing_sim computes its own gradients (:meth:`Run.backward
    <routing_sim.Run.backward>`, :func:`~routing_sim.attention_backward`), so a tensor
    that is part of an autograd graph must be detached first, as ``tensor.numpy()``
    demands too.

    Examples
    --------
    >>> as_numpy("query", [[1, 2]]).tolist()
    [[1, 2]]
    >>> class Tracked:                       # what a torch tensor with requires_grad looks like
    ...     requires_grad = True
    >>> as_numpy("query", Tracked())
    Traceback (most recent call last):
    ...
    routing_sim.errors.DTypeError: query is a tensor that requires grad; pass query.detach()
    (routing_sim does not follow autograd: gradients come from Run.backward or
    attention_backward)
    """
    if getattr(x, "requires_grad", False) is True:
        raise DTypeError(f"{name} is a tensor that requires grad; pass {name}.detach() "
                         "(routing_sim does not follow autograd: gradients come from "
                         "Run.backward or attention_backward)")
    return np.asarray(x, dtype=dtype)
