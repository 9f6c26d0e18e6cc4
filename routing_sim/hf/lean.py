"""The lean decoding step: a one-query attention call that nobody observes, without a Run.

A generated token's attention call asks one query per head over the cached keys. When no
one can see the messages (no :func:`~routing_sim.hf.record` is active, the model does not
return attention weights, nothing needs a gradient) and the registered options leave the
simulation on a network without faults (no ``network``, float numerics, two-phase soft
routing, the fast engine, ``empty_rows="zero"``, no full trace), the backend computes the
output with :func:`~routing_sim.engines.fast.decode.decode_step`: the same messages' numbers,
the same bits as ``simulate``, without building the route table, network, trace and Run.
Every other call, and any step ``decode_step`` declines, runs ``simulate`` as before; to
see a step's messages, record it (``with rs.hf.record() as rec:``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..engines.fast.decode import decode_step
from .autograd import as_numpy, needs_grad

__all__ = ["lean_options", "lean_step"]

# Registered options and the values under which a step may skip the Run (absent: default).
_LEAN_VALUES = {"numerics": ("float",), "softmax": ("two_phase",), "routing": ("softmax",),
                "engine": ("fast",), "empty_rows": ("zero",), "trace": ("auto", "summary"),
                "network": (None,)}
_LEAN_ANY = frozenset({"delivery", "score_mod"})    # delivery changes speed, never bits


def lean_options(options: dict[str, Any]) -> bool:
    """Whether ``register`` options allow the lean step (nothing asks for a network,
    faults, exact numerics, hard routing, the plain engine or a full trace).

    Examples
    --------
    >>> lean_options({"trace": "summary"}), lean_options({"numerics": "exact"})
    (True, False)
    """
    return all(name in _LEAN_ANY or value in _LEAN_VALUES.get(name, ())
               for name, value in options.items())


def lean_step(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              mask: torch.Tensor | None, scale: float | None, enable_gqa: bool,
              sinks: torch.Tensor | None, score_mod: Any) -> torch.Tensor | None:
    """The attention output ``(B, 1, H, Ev)`` (transformers' layout) of a one-query call,
    or None when the step needs ``simulate`` (a gradient, or a case ``decode_step``
    declines)."""
    if needs_grad(query, key, value, mask, sinks):
        return None
    output = decode_step(as_numpy(query), as_numpy(key), as_numpy(value),
                         None if mask is None else as_numpy(mask), scale, enable_gqa,
                         None if sinks is None else as_numpy(sinks), score_mod)
    if output is None:
        return None
    batch, heads, value_dim = output.shape
    return torch.from_numpy(output.reshape(batch, 1, heads, value_dim)).to(query.device)
