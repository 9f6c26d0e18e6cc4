"""Attention sinks (``sinks=``): the logits a user gives, checked and spread over the groups.

A sink is one logit per head (gpt-oss's ``s_aux``, FlashAttention's learnable sink) in
every row's softmax denominator, not multiplied by the scale: it takes a share of the
budget and pulls no value. :func:`~routing_sim.inputs.prepare` calls :func:`group_sinks`;
the engines add the sink to each softmax (:func:`~routing_sim.numerics.sink_budget`, and
in exact mode one more route whose score is the logit).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .arrays import as_numpy
from .errors import DTypeError, InvalidArgumentError, ShapeError

__all__ = ["group_sinks"]


def group_sinks(sinks: ArrayLike, batch_shape: tuple[int, ...], dtype: np.dtype
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(sinks (H,) or (1,), each group's logit (G,))``, cast to the inputs' dtype.

    Heads are the last batch dim; ``(1,)`` is one logit every head shares (and the only
    shape inputs without a head dim take).

    Examples
    --------
    >>> given, per_group = group_sinks([0.5, -1.0], (2, 2), np.dtype(np.float64))
    >>> given.shape, per_group.tolist()                 # groups: (batch, head) flattened
    ((2,), [0.5, -1.0, 0.5, -1.0])
    """
    array = as_numpy("sinks", sinks)
    if array.dtype.kind not in "fiu":
        raise DTypeError(f"sinks must hold real numbers (one logit per head), got dtype "
                         f"{array.dtype}")
    heads = batch_shape[-1] if batch_shape else 1
    if array.ndim != 1 or array.shape[0] not in (1, heads):
        where = f"the inputs have H = {heads} heads (the last batch dim of " \
            f"{tuple(batch_shape)})" if batch_shape else "the inputs have no head dim"
        raise ShapeError(f"sinks must have shape ({heads},) (one logit per head) or (1,) (one "
                         f"for every head); {where}, got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidArgumentError(f"sinks holds {array[bad]} at index {bad}; a sink logit "
                                   "must be finite")
    array = array.astype(dtype)
    return array, np.broadcast_to(array, batch_shape or (1,)).reshape(-1)
