"""Where a wrong answer first diverges: the scores, the row max, the normaliser, a share,
the output, the log-sum-exp or a gradient, and at which query and key.

A kernel returns only its output, so its routing table is read the way one reads a
router's: by probing. The case runs again with one-hot values (key ``j`` carries the unit
vector of column ``j`` of its chunk), so the output row of query ``i`` is the kernel's
shares ``w'_ij``; they are compared key by key with the oracle's intermediate values (the
scores ``s_ij``, the row max ``m_i``, the normaliser ``l_i``, the shares ``w_ij``):

- a share that is not finite: the row max (``exp`` overflowed or underflowed because
  ``m_i`` was not subtracted first);
- a share on a route the oracle blocks, or none on a route it has: the scores (which
  restriction blocks it is named), or a share, when dropout kept or dropped it;
- shares in the oracle's proportions that sum wrong: the normaliser;
- proportions that differ: the scores (the kernel's score of key ``j`` is the oracle's plus
  ``log(w'_ij / w_ij)`` up to a constant per row; scores off by one factor are named);
- every share right and the output wrong: the output (the values pulled or added wrong).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .calling import Kind, call
from .cases import Case
from .oracle import Expected, restrictions
from .precision import round_to, ulp

__all__ = ["Divergence", "diverges", "shares"]

_MOST_PROBES = 160     # a case with more key chunks than this is not probed
_RANGE = {"float64": (709.78, -744.44), "float32": (88.72, -103.28),
          "float16": (11.09, -17.33), "bfloat16": (88.72, -103.28)}   # ln(max), ln(min sub)


@dataclass(frozen=True)
class Divergence:
    """Where a case's answer first leaves the oracle's."""

    stage: str                     # scores, row max, normaliser, a share, output, lse, ...
    query: tuple[int, int, int] | None     # (batch, head, query)
    key: int | None
    text: str
    table: str = ""                # the routing table of the query: the oracle's and the kernel's

    def __str__(self) -> str:
        return self.text + (f"\n{self.table}" if self.table else "")


def shares(fn: Callable, case: Case, layout: str, kind: Kind) -> np.ndarray | None:
    """The kernel's routing tables ``(B, Hq, L, S)``, read with one-hot values (None if
    it needs too many calls or fails on them)."""
    batch, _, kv_heads, _, n_keys, _, value_dim = case.shape
    chunks = math.ceil(n_keys / value_dim)
    if chunks > _MOST_PROBES:
        return None
    plain = replace(case, lse=False, d_output=None)
    found = []
    for chunk in range(chunks):
        keys = np.arange(chunk * value_dim, min((chunk + 1) * value_dim, n_keys))
        one_hot = np.zeros((batch, kv_heads, n_keys, value_dim))
        one_hot[:, :, keys, keys - chunk * value_dim] = 1.0
        outcome = call(fn, plain, layout, kind, value=one_hot)
        if outcome.output is None:
            return None
        found.append(outcome.output[..., :len(keys)])
    return np.concatenate(found, axis=-1)                              # (B, Hq, L, S)


def diverges(fn: Callable, case: Case, layout: str, kind: Kind, expected: Expected,
             row: tuple[int, int, int], output: np.ndarray) -> Divergence:
    """Where the output of query ``row`` first leaves the oracle's: the probe's shares
    against the oracle's intermediate values, in the order the computation runs."""
    b, h, i = row
    found = shares(fn, case, layout, kind)
    element = int(np.argmax(np.abs(output[b, h, i] - expected.output[b, h, i])))
    at = f"query {i} (batch {b}, head {h})"
    got, wanted = (float(x[b, h, i, element]) for x in (output, expected.output))
    if found is None:
        return Divergence("output", row, None, f"output, {at}, element {element}: {got!r}, "
                          f"expected {wanted!r} (not probed: too many keys)")
    kernel = found[b, h, i]                                            # (S,)
    oracle, scores = expected.weights[b, h, i], expected.scores[b, h, i]
    row_max = float(expected.row_max[b, h, i])
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.nanmax(np.where(expected.magnitude[b, h, i] > 0, expected.tolerance[b, h, i]
                                      / expected.magnitude[b, h, i], 0.0), initial=0.0)
    size = np.maximum(np.abs(np.nan_to_num(kernel)), oracle)
    tolerance = relative * size + 2 * ulp(size, case.dtype) + \
        (len(kernel) + 2) * ulp(np.zeros(1), case.dtype)
    table = _table(scores, oracle, kernel)

    def first(where: np.ndarray) -> int:
        return int(np.flatnonzero(where)[0])

    high, low = _RANGE[case.dtype]
    if not np.isfinite(row_max) and not np.isfinite(kernel).all():
        j = first(~np.isfinite(kernel))
        return Divergence("row max", row, j, (
            f"row max, {at}: the query has no route, so its row max is -inf and "
            f"exp(s - m) = exp(-inf + inf) is NaN: the kernel's share of key {j} is "
            f"{float(kernel[j])!r}; the oracle returns zeros for such a row, as PyTorch's math "
            "backend and FlashAttention do"), table)
    lost = ~np.isfinite(kernel).all() or (kernel == 0).all() and (oracle > 0).any()
    if lost and (row_max > high or row_max < low):
        j = first(~np.isfinite(kernel) | (kernel != oracle))
        return Divergence("row max", row, j, (
            f"row max, {at}: the kernel's share of key {j} is {float(kernel[j])!r} where the "
            f"oracle's is {oracle[j]:.6g}; the row max is m = {row_max:.6g}, and exp(s) "
            f"{'overflows' if row_max > high else 'underflows to 0 for every key'} in "
            f"{case.dtype} unless m is subtracted first"), table)
    if not np.isfinite(kernel).all():
        j = first(~np.isfinite(kernel))
        return Divergence("normaliser", row, j, (
            f"normaliser, {at}: the kernel's share of key {j} is {float(kernel[j])!r} (the "
            f"oracle's {oracle[j]:.6g}; row max {row_max:.6g}, normaliser "
            f"{expected.normaliser[b, h, i]:.6g})"), table)
    leaked = np.isneginf(scores) & (np.abs(kernel) > tolerance)
    if leaked.any():
        j = first(leaked)
        blocked = [name for name, allows in restrictions(case).items()
                   if not np.broadcast_to(allows, expected.scores.shape)[b, h, i, j]]
        return Divergence("scores", row, j, (
            f"scores, {at}, key {j}: the route is blocked ({', '.join(blocked) or 'removed'})"
            f" but the kernel gives it a share of {kernel[j]:.6g}"), table)
    keep = None if case.dropout_mask is None else \
        np.broadcast_to(case.dropout_mask, expected.scores.shape)[b, h, i]
    missing = (oracle > tolerance) & (kernel == 0)
    if keep is not None and (missing | (kernel != 0) & ~keep & ~np.isneginf(scores)).any():
        j = first(missing | (kernel != 0) & ~keep & ~np.isneginf(scores))
        return Divergence("a share", row, j, (
            f"a share, {at}, key {j}: dropout {'keeps' if keep[j] else 'drops'} this route; "
            f"the kernel's share is {kernel[j]:.6g}, the oracle's {oracle[j]:.6g}"), table)
    if missing.any():
        j = first(missing)
        return Divergence("scores", row, j, (
            f"scores, {at}, key {j}: the route exists (score {scores[j]:.6g}) and the oracle "
            f"gives it a share of {oracle[j]:.6g}; the kernel gives it none"), table)
    off = np.abs(kernel - oracle) > tolerance
    coarser = _coarser(case.dtype, kernel, oracle) if off.any() else ""
    if coarser:
        j = first(off)
        return Divergence("a share", row, j, (
            f"a share, {at}, key {j}: {float(kernel[j])!r} where the oracle has "
            f"{float(oracle[j])!r}; every "
            f"share is the oracle's to within a few ULPs of {coarser}, not of {case.dtype}: "
            f"the softmax runs in {coarser}"), table)
    both = (kernel > 0) & (oracle > 0)
    live = np.where(both, scores, 0.0)
    implied = live + np.log(np.where(both, kernel, 1.0)) - np.log(np.where(both, oracle, 1.0))
    anchor = int(np.argmax(np.where(both, oracle, -1.0)))
    implied -= implied[anchor] - live[anchor]       # the kernel's scores, up to a constant
    apart = both & (np.abs(implied - live) > 4 * relative + 2 * ulp(live, case.dtype))
    if apart.any():
        j = first(apart)
        return Divergence("scores", row, j, (
            f"scores, {at}, key {j}: the kernel's shares imply a score of {implied[j]:.6g} "
            f"where the oracle has {scores[j]:.6g}"
            f"{_pattern(live[both], implied[both], np.flatnonzero(both), np.flatnonzero(apart))}"),
            table)
    if (np.abs(kernel - oracle) > tolerance).any():
        j = first(np.abs(kernel - oracle) > tolerance)
        return Divergence("normaliser", row, j, (
            f"normaliser, {at}: the shares are in the oracle's proportions but sum to "
            f"{float(kernel.sum())!r}, the oracle's to {float(oracle.sum())!r} (its normaliser "
            f"l = {expected.normaliser[b, h, i]:.6g} with row max {row_max:.6g}"
            f"{', the sink included' if case.sinks is not None else ''})"), table)
    return Divergence("output", row, None, (
        f"output, {at}: every share matches the oracle's routing table, but output element "
        f"{element} is {got!r}, expected {wanted!r}: the values are pulled or added wrong"
        f"{_other_head(case, expected, row, output)}"), table)


def _coarser(dtype: str, kernel: np.ndarray, oracle: np.ndarray) -> str:
    """The coarser dtype the kernel's shares were rounded to (each one a value of that
    dtype, within 4 of its ULPs of the oracle's), or ``""``."""
    order = ["float64", "float32", "bfloat16"]
    if dtype not in order:
        return ""
    for coarser in order[order.index(dtype) + 1:]:
        if np.array_equal(round_to(kernel, coarser), kernel) and \
                (np.abs(kernel - oracle) <= 4 * ulp(oracle, coarser)).all():
            return coarser
    return ""


def _pattern(oracle: np.ndarray, kernel: np.ndarray, keys: np.ndarray, apart: np.ndarray
             ) -> str:
    """A hint at what the kernel's scores (``kernel``, up to a constant) have in common:
    one factor on them all (a wrong scale), or one offset on every key from some key on
    (a block of keys rescaled wrong)."""
    if len(oracle) >= 2 and np.ptp(oracle) > 0:
        slope, offset = np.polyfit(oracle, kernel, 1)
        if abs(slope - 1) > 1e-6 and np.abs(slope * oracle + offset - kernel).max() <= \
                1e-6 * max(np.ptp(kernel), 1e-300):
            return f"; every score of the row looks multiplied by {slope:.6g}: a wrong scale?"
    start = int(apart[0])
    after = keys >= start
    if np.array_equal(np.isin(keys, apart), after) and after.sum() > 1:
        shift = kernel[after] - oracle[after]
        if np.ptp(shift) <= 1e-6 * max(np.abs(shift).max(), 1e-300):
            return (f"; every key from {start} on is off by the same {shift[0]:.6g}: a block "
                    f"of keys starting at {start} rescaled wrong?")
    return ""


def _other_head(case: Case, expected: Expected, row: tuple[int, int, int],
                output: np.ndarray) -> str:
    """A hint when the output is what another KV head's values give (a GQA mapping)."""
    b, h, i = row
    heads, kv_heads = case.shape[1], case.shape[2]
    right = h // (heads // kv_heads)
    for other in range(kv_heads):
        pulled = expected.weights[b, h, i] @ case.value[b, other]
        if other != right and np.allclose(pulled, output[b, h, i], rtol=1e-6, atol=1e-300):
            return (f"; it is what KV head {other} gives, but query head {h} of {heads} reads "
                    f"KV head {h} // {heads // kv_heads} = {right} of {kv_heads}")
    return ""


def _table(scores: np.ndarray, oracle: np.ndarray, kernel: np.ndarray) -> str:
    """The query's routing table, the oracle's beside the kernel's (the keys that differ
    first, at most 12 rows)."""
    differ = np.flatnonzero(~np.isclose(kernel, oracle, rtol=1e-6, atol=1e-12))
    keys = list(range(len(scores))) if len(scores) <= 12 else \
        sorted(set(differ[:8].tolist()) | set(np.argsort(-oracle)[:4].tolist()))
    lines = [f"    {'key':>5} {'score':>12} {'oracle share':>14} {'kernel share':>14}"]
    for j in keys:
        mark = "  <-" if j in differ else ""
        lines.append(f"    {j:>5} {scores[j]:>12.6g} {oracle[j]:>14.6g} {kernel[j]:>14.6g}{mark}")
    if len(keys) < len(scores):
        lines.append(f"    ({len(scores) - len(keys)} more keys)")
    return "\n".join(lines)
