"""MultiHeadAttention's weights under PyTorch's key names: their initial values, and the
checks a loaded state dict must pass (:class:`routing_sim.MultiHeadAttention` uses both)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import InvalidArgumentError, ShapeError

__all__ = ["checked_weights", "initial_weights"]


def initial_weights(rng: np.random.Generator, embed_dim: int, kv_dim: int, kdim: int,
                    vdim: int, packed: bool, bias: bool, add_bias_kv: bool
                    ) -> dict[str, np.ndarray]:
    """PyTorch's scheme: xavier-uniform projections, zero biases, xavier-normal bias_k/v.

    Examples
    --------
    >>> weights = initial_weights(np.random.default_rng(0), 4, 4, 4, 4, True, True, False)
    >>> sorted(weights), weights["in_proj_weight"].shape
    (['in_proj_bias', 'in_proj_weight', 'out_proj.bias', 'out_proj.weight'], (12, 4))
    """
    def xavier(rows: int, cols: int) -> np.ndarray:
        bound = math.sqrt(6.0 / (rows + cols))
        return rng.uniform(-bound, bound, size=(rows, cols))

    E, kv = embed_dim, kv_dim
    parameters: dict[str, np.ndarray] = {}
    if packed:
        parameters["in_proj_weight"] = xavier(3 * E, E)
    else:
        parameters["q_proj_weight"] = xavier(E, E)
        parameters["k_proj_weight"] = xavier(kv, kdim)
        parameters["v_proj_weight"] = xavier(kv, vdim)
    if bias:
        parameters["in_proj_bias"] = np.zeros(E + 2 * kv)
    if add_bias_kv:
        parameters["bias_k"] = rng.normal(0, math.sqrt(2.0 / (2 * kv)), size=(1, 1, kv))
        parameters["bias_v"] = rng.normal(0, math.sqrt(2.0 / (2 * kv)), size=(1, 1, kv))
    bound = 1 / math.sqrt(E)
    parameters["out_proj.weight"] = rng.uniform(-bound, bound, size=(E, E))
    if bias:
        parameters["out_proj.bias"] = np.zeros(E)
    return parameters


def checked_weights(mapping: Mapping[str, object], current: Mapping[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
    """``mapping`` as float64 copies, if it has exactly ``current``'s keys and shapes and
    finite values; else a project error naming the keys or the entry."""
    given, expected = set(mapping), set(current)
    if given != expected:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise InvalidArgumentError(
            "state dict does not fit this module: "
            + "; ".join(part for part in (f"missing keys {missing}" if missing else "",
                                          f"unexpected keys {extra}" if extra else "")
                        if part))
    loaded = {}
    for name, present in current.items():
        array = np.asarray(mapping[name], dtype=np.float64).copy()
        if array.shape != present.shape:
            raise ShapeError(f"state dict entry {name!r} has shape {array.shape}, this module "
                             f"needs {present.shape}")
        if not np.isfinite(array).all():
            raise InvalidArgumentError(f"state dict entry {name!r} holds non-finite values")
        loaded[name] = array
    return loaded
