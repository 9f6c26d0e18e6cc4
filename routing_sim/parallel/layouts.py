"""Which tokens each device holds: contiguous, zigzag and striped sequence shards."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import InvalidArgumentError, ShapeError
from ..routes.spans import KeySpans

__all__ = ["LAYOUTS", "allowed_routes", "shard"]

Layout = Literal["contiguous", "zigzag", "striped"]
LAYOUTS = ("contiguous", "zigzag", "striped")


def shard(length: int, devices: int, layout: str, what: str = "sequence") -> list[np.ndarray]:
    """Global token positions held by each device, ascending.

    ``"contiguous"``: device ``r`` holds block ``r`` of ``P`` equal blocks; ``"zigzag"``:
    ``2P`` chunks, device ``r`` holds chunks ``r`` and ``2P - 1 - r``; ``"striped"``: token
    ``t`` lives on device ``t mod P``.

    Examples
    --------
    >>> [s.tolist() for s in shard(8, 2, "zigzag")]
    [[0, 1, 6, 7], [2, 3, 4, 5]]
    >>> [s.tolist() for s in shard(6, 3, "striped")]
    [[0, 3], [1, 4], [2, 5]]
    """
    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    parts = 2 * devices if layout == "zigzag" else devices
    if length % parts:
        raise ShapeError(f"the {what} length {length} must be a multiple of {parts} for "
                         f"layout={layout!r} on {devices} devices")
    tokens = np.arange(length)                                         # (N,)
    if layout == "striped":
        return [tokens[rank::devices] for rank in range(devices)]
    chunks = np.split(tokens, parts)
    if layout == "contiguous":
        return chunks
    return [np.concatenate([chunks[rank], chunks[parts - 1 - rank]]) for rank in range(devices)]


def allowed_routes(query_positions: np.ndarray, key_positions: np.ndarray,
                   spans: KeySpans) -> np.ndarray:
    """Which (query, key) pairs of a block may route: those inside each query's key span
    (all keys, ``key <= query`` when causal, a window's keys).

    Examples
    --------
    >>> from routing_sim.routes.spans import key_spans
    >>> causal = key_spans(4, 4, None, None, True, "top_left")
    >>> allowed_routes(np.array([0, 3]), np.array([1, 2]), causal).tolist()
    [[False, False], [True, True]]
    """
    start = spans.start[query_positions][:, None]                     # (cq, 1)
    stop = spans.stop[query_positions][:, None]
    return (start <= key_positions[None, :]) & (key_positions[None, :] < stop)  # (cq, ck)
