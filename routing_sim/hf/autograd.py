"""Simulated attention as a differentiable torch operation: backward is ``run.backward``.

The forward pass runs :func:`~routing_sim.simulate` on the tensors' float data; the
backward pass sends the gradients back along the same routes as messages
(:mod:`routing_sim.engines.fast.backward`) and hands torch the gradients of query, key, value and of
a float mask. The mask enters every score as is, so its gradient is the score gradient
(``Gradients.score()``), summed over the dimensions the mask was broadcast along; this
is how T5's relative position bias learns. The attention sinks' gradient is
``Gradients.sinks``; this is how gpt-oss's ``s_aux`` learns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..results.run import Run
from ..simulation import simulate

__all__ = ["simulated_attention"]


def simulated_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        mask: torch.Tensor | None, arguments: dict[str, Any],
                        sinks: torch.Tensor | None = None) -> tuple[torch.Tensor, Run]:
    """``simulate(query, key, value, attn_mask=mask, sinks=sinks, **arguments)`` on tensors.

    Returns the output ``(..., L, Ev)`` as a tensor on the query's device, differentiable
    with respect to query, key, value, a float ``mask`` and the ``sinks`` ``(H,)`` (one
    logit per head in every row's softmax denominator: gpt-oss's ``s_aux``), and the
    :class:`Run`.

    Examples
    --------
    >>> import torch, routing_sim as rs
    >>> q, k, v = torch.randn(3, 2, 4, 8, dtype=torch.float64).unbind(0)
    >>> _ = q.requires_grad_()
    >>> out, run = simulated_attention(q, k, v, None, {"is_causal": True})
    >>> out.sum().backward()
    >>> expected = rs.attention_backward(q.detach().numpy(), k.numpy(), v.numpy(),
    ...                                  torch.ones(2, 4, 8).numpy(), is_causal=True)[0]
    >>> bool(torch.allclose(q.grad, torch.from_numpy(expected), rtol=1e-10, atol=1e-12))
    True
    """
    if needs_grad(query, key, value, mask, sinks):
        holder: list[Run] = []
        output = _SimulatedAttention.apply(query, key, value, mask, sinks, arguments, holder)
        return output, holder[0]
    # Nothing to differentiate (inference, a decoding step): no autograd node to build.
    run = _simulate(query, key, value, mask, sinks, arguments)
    return torch.from_numpy(run.output).to(query.device), run


def _simulate(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              mask: torch.Tensor | None, sinks: torch.Tensor | None,
              arguments: dict[str, Any]) -> Run:
    """``simulate`` on the tensors' float data."""
    return simulate(as_numpy(query), as_numpy(key), as_numpy(value),
                    attn_mask=None if mask is None else as_numpy(mask),
                    sinks=None if sinks is None else as_numpy(sinks), **arguments)


class _SimulatedAttention(torch.autograd.Function):
    """Forward: ``simulate``; backward: ``run.backward``, the gradients as messages."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None, sinks: torch.Tensor | None,
                arguments: dict[str, Any], holder: list[Run]) -> torch.Tensor:
        run = _simulate(query, key, value, mask, sinks, arguments)
        ctx.run, ctx.mask_shape = run, None if mask is None else mask.shape
        ctx.sinks_dtype = None if sinks is None else sinks.dtype
        holder.append(run)
        return torch.from_numpy(run.output).to(query.device)

    @staticmethod
    def backward(ctx: Any, d_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = ctx.run.backward(as_numpy(d_output))
        device = d_output.device
        tensors = [torch.from_numpy(np.ascontiguousarray(grad)).to(device)
                   for grad in (grads.query, grads.key, grads.value)]
        d_mask = d_sinks = None
        if ctx.needs_input_grad[3]:
            d_mask = torch.from_numpy(_sum_to(grads.score(), ctx.mask_shape)).to(device)
        if ctx.needs_input_grad[4]:
            d_sinks = torch.from_numpy(np.ascontiguousarray(grads.sinks)).to(
                device, ctx.sinks_dtype)                   # a float32 s_aux in a float64 model
        return (*tensors, d_mask, d_sinks, None, None)


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would differentiate through any of ``tensors`` (None: absent).

    Examples
    --------
    >>> needs_grad(torch.ones(2), None), needs_grad(torch.ones(2, requires_grad=True))
    (False, True)
    >>> with torch.no_grad():
    ...     needs_grad(torch.ones(2, requires_grad=True))
    False
    """
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values as an array: detached, on the CPU, a view when it can be.

    Examples
    --------
    >>> as_numpy(torch.ones(2, requires_grad=True)).tolist()
    [1.0, 1.0]
    """
    return tensor.numpy(force=True)


def _sum_to(gradient: np.ndarray, shape: torch.Size) -> np.ndarray:
    """Sum a gradient over the dimensions its input was broadcast along."""
    extra = gradient.ndim - len(shape)
    gradient = gradient.sum(axis=tuple(range(extra))) if extra else gradient
    axes = tuple(axis for axis, size in enumerate(shape) if size == 1
                 and gradient.shape[axis] != 1)
    return gradient.sum(axis=axes, keepdims=True) if axes else gradient
