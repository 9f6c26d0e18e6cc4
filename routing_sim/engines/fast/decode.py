"""One query token a group (a decoding step): simulate's arithmetic without building a Run.

A decoding step asks ``G = B · H`` query nodes, one per batch row and head, each over the
cached keys. :func:`~routing_sim.simulate` sends its messages and, on a network without
faults, evaluates each node's numbers in one of three fixed ways (:mod:`.barrier`):

- every key allowed (no mask, or one that blocks nothing): the node's scores are one product
  ``K_g @ q_g``, the softmax runs on the nodes' rows stacked, and the pull is one product
  ``w_g @ V_g`` a node (the per-node path);
- a mask that leaves each node one run of keys ``lo:hi`` (padding, a sliding window), and
  no score_mod: the span blocks, which for one query row a group are
  ``q_g @ K_g[lo:hi]ᵀ``, the softmax of that row, and ``w_g @ V_g[lo:hi]``;
- any other mask: the per-node path over each node's keys gathered, the softmax of the
  rows of equal fan-in stacked.

:func:`decode_step` makes the same calls in the same order on the same arrays, so its output
has the same bits as ``simulate(...).output`` (no dropout, ``empty_rows="zero"``); it skips
what only a Run needs (route table, network, trace, stats, timings). Where ``simulate``
would refuse the input or report an overflow, it declines by returning None, and the
caller runs ``simulate``, which gives the clear error: shapes or dtypes that do not fit,
non-finite inputs, a mask that does not broadcast or holds NaN or +inf, a score that
overflowed (or that a score_mod removed: ``simulate`` handles those rows).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...errors import DTypeError, InvalidArgumentError
from ...inputs.masks import mask_routes
from ...inputs.mods import modified
from ...inputs.sinks import group_sinks
from ...numerics.kernels import routing_budget, scale_scores, sink_budget, weighted_pull
from ...routes.problem import resolve_scale
from ...routes.table import one_run_per_row
from .barrier import gather

__all__ = ["decode_step"]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))    # what simulate computes in as given


def decode_step(query: np.ndarray, key: np.ndarray, value: np.ndarray,
                attn_mask: np.ndarray | None = None, scale: float | None = None,
                enable_gqa: bool = False, sinks: np.ndarray | None = None,
                score_mod: Callable | None = None) -> np.ndarray | None:
    """``simulate(query, key, value, attn_mask, scale=scale, enable_gqa=enable_gqa,
    sinks=sinks, score_mod=score_mod).output`` for one query a group, or None where it
    declines.

    Parameters
    ----------
    query : ndarray, shape (B, H, 1, E)
    key, value : ndarray, shape (B, Hkv, S, E) and (B, Hkv, S, Ev)
        ``Hkv = H``, or with ``enable_gqa`` a divisor of ``H``: key/value head
        ``h // (H / Hkv)`` serves query head ``h`` (grouped-query attention).
    attn_mask : ndarray, optional
        Broadcastable to ``(B, H, 1, S)``: bool (True = route allowed) or float (added to
        the scores, ``-inf`` blocks a route).
    scale, enable_gqa, sinks, score_mod
        As in :func:`~routing_sim.simulate` (``sinks``: ``(H,)`` or ``(1,)`` logits).

    Returns
    -------
    ndarray of shape (B, H, Ev), or None
        Bit-identical to ``simulate``'s output (its one query row squeezed); None when the
        step is outside what this path covers (see the module docstring).

    Examples
    --------
    >>> import routing_sim as rs
    >>> rng = np.random.default_rng(0)
    >>> q = rng.normal(size=(1, 4, 1, 8))                      # (B, H, 1, E)
    >>> k, v = rng.normal(size=(2, 1, 2, 6, 8))                # (B, Hkv, S, E): GQA
    >>> padding = np.array([False, True, True, True, True, True])
    >>> run = rs.simulate(q, k, v, padding, enable_gqa=True)
    >>> np.array_equal(decode_step(q, k, v, padding, enable_gqa=True), run.output[:, :, 0])
    True
    >>> gap = np.array([True, False, True, True, True, True])        # gathered keys
    >>> np.array_equal(decode_step(q, k, v, gap, enable_gqa=True),
    ...                rs.simulate(q, k, v, gap, enable_gqa=True).output[:, :, 0])
    True
    >>> decode_step(q, k, v, gap) is None          # 4 query heads, 2 key heads, no GQA asked
    True
    """
    batch, heads, n_queries, dim = query.shape if query.ndim == 4 else (0, 0, 0, 0)
    if n_queries != 1 or dim == 0 or key.ndim != 4 or value.ndim != 4 \
            or key.shape[:2] != value.shape[:2] or key.shape[0] != batch \
            or key.shape[3] != dim or value.shape[2] != key.shape[2] or key.shape[2] == 0 \
            or key.shape[1] == 0 or heads % key.shape[1] \
            or not (enable_gqa or key.shape[1] == heads) \
            or query.dtype not in _DTYPES or not query.dtype == key.dtype == value.dtype:
        return None                  # simulate names the bad shape or dtype, or converts
    with np.errstate(over="ignore", invalid="ignore"):   # a sum of huge finite numbers:
        finite = np.isfinite(query.sum() + key.sum() + value.sum())  # declined, no warning
    if not finite:
        return None                  # simulate names the non-finite value (or runs it)
    scale = resolve_scale(scale, dim)
    per_group = None if sinks is None else group_sinks(sinks, (batch, heads), query.dtype)[1]
    routes = _routes(attn_mask, batch, heads, key.shape[2], query.dtype)
    if routes is None:
        return None
    allowed, bias = routes
    # Contiguous rows, as simulate copies them: BLAS sees the same operands.
    query = np.ascontiguousarray(query).reshape(batch * heads, dim)          # (G, E)
    keys, values = _groups(np.ascontiguousarray(key), np.ascontiguousarray(value), heads)
    if allowed is None:
        output = _every_key(query, keys, values, bias, scale, per_group, score_mod, heads)
    else:
        counts = np.count_nonzero(allowed, axis=1)                    # (G,) routes a node
        first = one_run_per_row(allowed, counts)       # (G,) each node's first key, or None
        if score_mod is None and counts.any() and first is not None:
            output = _key_runs(query, keys, values, counts, first, bias, scale, per_group)
        else:
            output = _gathered(query, keys, values, allowed, counts, bias, scale, per_group,
                               score_mod, heads)
    return None if output is None else output.reshape(batch, heads, -1)      # (B, H, Ev)


def _groups(key: np.ndarray, value: np.ndarray, heads: int
            ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each group's keys ``(S, E)`` and values ``(S, Ev)``: group ``b · H + h`` reads
    key/value head ``h // (H / Hkv)`` of batch row ``b`` (views, no repeat)."""
    share = heads // key.shape[1]                                      # query heads a kv head
    heads_of = [(row, head // share) for row in range(key.shape[0]) for head in range(heads)]
    return [key[at] for at in heads_of], [value[at] for at in heads_of]


def _routes(attn_mask: np.ndarray | None, batch: int, heads: int, n_keys: int,
            dtype: np.dtype) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """``(allowed (G, S) bool, or None for every key; bias (G, S) in the inputs' dtype, or
    None)`` as simulate reads a mask; None to decline (simulate refuses the mask)."""
    if attn_mask is None:
        return None, None
    shape = (batch, heads, 1, n_keys)
    try:
        mask = np.broadcast_to(attn_mask, shape).reshape(batch * heads, n_keys)  # (G, S)
    except ValueError:
        return None
    try:
        allowed, bias = mask_routes(mask, dtype)                       # warns as simulate does
    except (DTypeError, InvalidArgumentError):
        return None                                                    # simulate refuses
    return (None if allowed.all() else allowed), bias


def _every_key(query: np.ndarray, keys: list[np.ndarray], values: list[np.ndarray],
               bias: np.ndarray | None, scale: float, sinks: np.ndarray | None,
               score_mod: Callable | None, heads: int) -> np.ndarray | None:
    """Every node reads every key: the per-node path (one product a node, the softmax of
    the stacked rows, one pull a node). ``(G, Ev)``, or None on an overflow."""
    groups, n_keys = len(query), len(keys[0])
    scores = np.empty((groups, n_keys), dtype=query.dtype)            # (G, S)
    with np.errstate(over="ignore", invalid="ignore"):                 # overflow: declined below
        for group in range(groups):
            scores[group] = keys[group] @ query[group]                 # (S,)
    if score_mod is None:
        scale_scores(scores, scale, bias)
    else:
        scores = _modified(scores, scale, bias, score_mod, heads, np.arange(groups),
                           np.tile(np.arange(n_keys, dtype=np.int32), groups))
    if not np.isfinite(scores).all():
        return None                  # an overflow (or a removed route): simulate's to handle
    shares = routing_budget(scores, out=scores) if sinks is None else \
        sink_budget(scores, sinks, out=scores)[0]                      # (G, S)
    output = np.empty((groups, values[0].shape[1]), dtype=query.dtype)  # (G, Ev)
    for group in range(groups):
        output[group] = weighted_pull(shares[group], values[group])
    return output


def _modified(scores: np.ndarray, scale: float, bias: np.ndarray | None,
              score_mod: Callable, heads: int, nodes: np.ndarray, keys: np.ndarray
              ) -> np.ndarray:
    """The key nodes' score_mod on the scaled scores ``(n, count)`` of ``nodes (n,)``
    from ``keys (n·count,)``, then the bias (``(n·count,)`` or ``(n, count)``)."""
    scaled = scale_scores(scores, scale).reshape(-1)                   # (n·count,)
    node = np.repeat(nodes.astype(np.int32), scores.shape[1])          # (n·count,) u = g
    batch, head = np.divmod(node, heads)                               # group g = b·H + h
    query_index = np.zeros_like(node)                                  # one query: index 0
    result = modified(score_mod, scaled, batch, head, query_index, keys).reshape(scores.shape)
    if bias is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            result = result + bias.reshape(scores.shape)
    return result


def _key_runs(query: np.ndarray, keys: list[np.ndarray], values: list[np.ndarray],
              counts: np.ndarray, lo: np.ndarray, bias: np.ndarray | None, scale: float,
              sinks: np.ndarray | None) -> np.ndarray | None:
    """Each node reads one run of keys ``lo:lo + count`` (none: a zero row): simulate's
    span blocks, one row each. ``(G, Ev)``, or None on an overflow."""
    output = np.zeros((len(query), values[0].shape[1]), dtype=query.dtype)  # (G, Ev)
    for group, first, count in zip(range(len(query)), lo.tolist(), counts.tolist()):
        if not count:
            continue                                                   # an empty row: 0
        stop = first + count
        with np.errstate(over="ignore", invalid="ignore"):
            dots = query[group:group + 1] @ keys[group][first:stop].T  # (1, w)
        scale_scores(dots, scale, None if bias is None else bias[group, first:stop])
        if not np.isfinite(dots).all():
            return None
        shares = routing_budget(dots, out=dots) if sinks is None else \
            sink_budget(dots, sinks[group:group + 1], out=dots)[0]     # (1, w)
        np.matmul(shares, values[group][first:stop], out=output[group:group + 1])
    return output


def _gathered(query: np.ndarray, keys: list[np.ndarray], values: list[np.ndarray],
              allowed: np.ndarray, counts: np.ndarray, bias: np.ndarray | None, scale: float,
              sinks: np.ndarray | None, score_mod: Callable | None, heads: int
              ) -> np.ndarray | None:
    """Any other mask: simulate's per-node path, one product a node over its gathered
    keys, the softmax of the rows of each fan-in stacked, one pull a node (a node with no
    route: a zero row). ``(G, Ev)``, or None on an overflow."""
    routes = [np.flatnonzero(row) for row in allowed]                  # G × (count,) j
    output = np.zeros((len(query), values[0].shape[1]), dtype=query.dtype)  # (G, Ev)
    for count in np.unique(counts[counts > 0]).tolist():
        nodes = np.flatnonzero(counts == count)                        # (n,) in node order
        block = np.empty((len(nodes), count), dtype=query.dtype)       # (n, count)
        with np.errstate(over="ignore", invalid="ignore"):             # overflow: declined
            for row, node in enumerate(nodes.tolist()):
                block[row] = gather(keys[node], routes[node]) @ query[node]  # (count,)
        where = np.concatenate([routes[node] for node in nodes.tolist()])  # (n·count,) j
        rows = None if bias is None else bias[np.repeat(nodes, count), where]
        if score_mod is None:
            scale_scores(block, scale, None if rows is None else rows.reshape(block.shape))
        else:
            block = _modified(block, scale, rows, score_mod, heads, nodes,
                              where.astype(np.int32))
        if not np.isfinite(block).all():
            return None
        shares = routing_budget(block, out=block) if sinks is None else \
            sink_budget(block, sinks[nodes], out=block)[0]             # (n, count)
        for row, node in enumerate(nodes.tolist()):
            pulled = values[node]                                      # (S, Ev)
            output[node] = weighted_pull(shares[row], pulled if count == len(pulled)
                                         else gather(pulled, routes[node]))
    return output
