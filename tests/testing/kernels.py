"""Attention kernels written for the tests of routing_sim.testing: a correct numpy one in
each layout, with every feature the checker knows, and the planted bugs of issue 24, one
function each (docs/en/testing.md shows what each shrinks to; ``python -m
tests.testing.kernels`` prints that section).

The correct kernel is written from the published definitions (FlashAttention's
``attention_ref`` for windows, ALiBi and packed sequences, PyTorch's SDPA for the rest),
not from routing_sim, so a check that passes it is two independent readings agreeing.
"""

from __future__ import annotations

import numpy as np


def _attention(q, k, v, *, scale, causal, bottom_right, mask, window, softcap, alibi, sinks,
               starts, keep, dropout_p, return_lse, bug=None):
    """``(B, H, L, E)`` attention with every feature; ``bug`` plants one mistake."""
    batch, heads, n_queries, dim = q.shape
    kv_heads, n_keys = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1 / dim if bug == "scale 1/d" else 1 / np.sqrt(dim)
    kv = np.arange(heads) % kv_heads if bug == "GQA head mapping" else \
        np.arange(heads) // (heads // kv_heads)
    k, v = k[:, kv], v[:, kv]
    scores = q @ np.swapaxes(k, -1, -2) * scale                          # (B, H, L, S)
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    i, j = np.arange(n_queries)[:, None], np.arange(n_keys)[None, :]
    allowed = np.ones((n_queries, n_keys), bool)
    offset = np.full((n_queries, 1), n_keys - n_queries)
    if starts is not None:                     # packed sequences: positions per sequence
        starts_q, starts_k = (np.asarray(x) for x in starts)
        seq_q = np.searchsorted(starts_q, i, side="right") - 1
        seq_k = np.searchsorted(starts_k, j, side="right") - 1
        allowed = seq_q >= seq_k if bug == "earlier sequences" else seq_q == seq_k
        offset = np.diff(starts_k)[seq_q] - np.diff(starts_q)[seq_q]
        if bug == "pack aligned":             # the diagonal of the whole pack, S - L
            offset = np.full_like(offset, n_keys - n_queries)
        i, j = i - starts_q[seq_q], j - starts_k[seq_k]
    if causal:
        aligned = bottom_right or starts is not None
        if bug == "alignment swapped":
            aligned = not aligned
        shift = offset if aligned else 0
        allowed = allowed & (j <= i + shift + (1 if bug == "causal off by one" else 0))
    if window is not None and tuple(window) != (-1, -1):
        left, right = window
        if left >= 0:
            allowed = allowed & (j >= i + offset - left - (1 if bug == "window off by one" else 0))
        if right >= 0:
            allowed = allowed & (j <= i + offset + right)
    allowed = np.broadcast_to(allowed, scores.shape)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == bool:
            allowed = allowed & (~mask if bug == "mask inverted" else mask)
        else:
            scores = scores + mask
    if alibi is not None:
        slopes = np.asarray(alibi, np.float64).reshape(-1, heads)[:, :, None, None]
        scores = scores - slopes * np.abs(i + offset - j)
    scores = np.where(allowed, scores, -np.inf)
    row_max = scores.max(-1, keepdims=True)
    if sinks is not None:
        row_max = np.maximum(row_max, np.asarray(sinks)[None, :, None, None])
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    if bug == "no max subtracted":
        row_max = np.zeros_like(row_max)
    with np.errstate(over="ignore", invalid="ignore"):
        exps = np.exp(scores - row_max)
        if bug == "past 64 keys" and n_keys > 64:       # the second tile is never rescaled
            tile = scores[..., 64:]
            tile_max = np.where(np.isfinite(tile), tile, -np.inf).max(-1, keepdims=True)
            exps[..., 64:] = np.exp(tile - np.where(np.isfinite(tile_max), tile_max, 0))
        total = exps.sum(-1, keepdims=True)
        if sinks is not None:
            total = total + np.exp(np.asarray(sinks)[None, :, None, None] - row_max)
        weights = np.where(total > 0, exps / np.where(total > 0, total, 1), 0.0)
    if keep is not None:
        weights = weights * np.asarray(keep) / (1 - dropout_p)
    output = weights @ v
    if not return_lse:
        return output
    with np.errstate(divide="ignore"):
        lse = (row_max + np.log(total))[..., 0]
        if bug == "lse off by the scale":       # the log-sum-exp of q·k, before the scale
            lse = (row_max + np.log(total))[..., 0] / scale
    return output, lse


def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
         enable_gqa=False, *, causal_alignment="top_left", window_size=None, softcap=0.0,
         alibi_slopes=None, sinks=None, cu_seqlens_q=None, cu_seqlens_k=None,
         max_seqlen_q=None, max_seqlen_k=None, dropout_mask=None, return_lse=False, _bug=None):
    """A correct numpy kernel in the sdpa layout (``_bug`` plants one)."""
    starts = None if cu_seqlens_q is None else (cu_seqlens_q, cu_seqlens_k)
    return _attention(q, k, v, scale=scale, causal=is_causal,
                      bottom_right=causal_alignment == "bottom_right", mask=attn_mask,
                      window=window_size, softcap=softcap, alibi=alibi_slopes, sinks=sinks,
                      starts=starts, keep=dropout_mask, dropout_p=dropout_p,
                      return_lse=return_lse, bug=_bug)


def flash(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
          softcap=0.0, alibi_slopes=None, *, sinks=None, cu_seqlens_q=None, cu_seqlens_k=None,
          max_seqlen_q=None, max_seqlen_k=None, dropout_mask=None, return_lse=False, _bug=None):
    """A correct numpy kernel in the flash layout (``_bug`` plants one)."""
    packed = cu_seqlens_q is not None
    to_heads = (lambda x: x.transpose(1, 0, 2)[None]) if packed else \
        (lambda x: x.transpose(0, 2, 1, 3))
    starts = (cu_seqlens_q, cu_seqlens_k) if packed else None
    result = _attention(to_heads(q), to_heads(k), to_heads(v), scale=softmax_scale,
                        causal=causal, bottom_right=True, mask=None, window=window_size,
                        softcap=softcap, alibi=alibi_slopes, sinks=sinks, starts=starts,
                        keep=dropout_mask, dropout_p=dropout_p, return_lse=return_lse,
                        bug=_bug)
    back = (lambda x: x[0].transpose(1, 0, 2)) if packed else (lambda x: x.transpose(0, 2, 1, 3))
    if not return_lse:
        return back(result)
    output, lse = result
    return back(output), lse[0] if packed else lse


def scale_one_over_d(q, k, v, **kwargs):
    """Scales the scores by 1/d instead of 1/sqrt(d)."""
    return sdpa(q, k, v, _bug="scale 1/d", **kwargs)


def causal_off_by_one(q, k, v, **kwargs):
    """Lets each query see one key past the diagonal."""
    return sdpa(q, k, v, _bug="causal off by one", **kwargs)


def gqa_head_mapping(q, k, v, **kwargs):
    """Query head h reads KV head h % Hkv, not h // (Hq / Hkv)."""
    return sdpa(q, k, v, _bug="GQA head mapping", **kwargs)


def no_max_subtracted(q, k, v, **kwargs):
    """Takes exp of the raw scores: the softmax without subtracting the row max."""
    return sdpa(q, k, v, _bug="no max subtracted", **kwargs)


def alignment_swapped(q, k, v, **kwargs):
    """FlashAttention's layout with a causal diagonal aligned top-left, not bottom-right."""
    return flash(q, k, v, _bug="alignment swapped", **kwargs)


def mask_inverted(q, k, v, **kwargs):
    """Reads a bool attn_mask as True = blocked."""
    return sdpa(q, k, v, _bug="mask inverted", **kwargs)


def past_64_keys(q, k, v, **kwargs):
    """Never rescales its second tile of 64 keys: right up to 64 keys, wrong past them."""
    return sdpa(q, k, v, _bug="past 64 keys", **kwargs)


def window_off_by_one(q, k, v, **kwargs):
    """A sliding window one key wider on the left than window_size says."""
    return flash(q, k, v, _bug="window off by one", **kwargs)


def lse_off_by_the_scale(q, k, v, **kwargs):
    """Returns the log-sum-exp of q·k, before the scale."""
    return flash(q, k, v, _bug="lse off by the scale", **kwargs)


def torch_sdpa(q, k, v, is_causal=False, scale=None, enable_gqa=False, *, softcap=0.0,
               sinks=None, _bug=None):
    """A correct torch kernel in the sdpa layout with softcap and sinks, whose gradients
    autograd takes (``_bug`` plants one in the backward pass only)."""
    import torch

    shared = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(shared, 1), v.repeat_interleave(shared, 1)
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap:
        capped = softcap * torch.tanh(scores / softcap)
        # The same forward value; the backward pass as if the slope of tanh were 1.
        scores = scores + (capped - scores).detach() if _bug == "softcap slope" else capped
    if is_causal:
        allowed = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        if _bug == "sinks sign":                   # the same value, the gradient negated
            sinks = 2 * sinks.detach() - sinks
        column = sinks.reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        scores = torch.cat([scores, column], -1)
    weights = torch.softmax(scores, -1)
    return weights[..., :k.shape[2]] @ v


def causal_only(q, k, v, scale=None):
    """Causal attention and nothing else: it has no is_causal parameter."""
    return sdpa(q, k, v, is_causal=True, scale=scale)


def causal_only_off_by_one(q, k, v, scale=None):
    """Causal attention and nothing else, each query seeing one key past the diagonal."""
    return sdpa(q, k, v, is_causal=True, scale=scale, _bug="causal off by one")


def sinks_gradient_negated(q, k, v, **kwargs):
    """Right forward; the gradient of the sinks with its sign flipped."""
    return torch_sdpa(q, k, v, _bug="sinks sign", **kwargs)


def softcap_slope_omitted(q, k, v, **kwargs):
    """Right forward; the backward pass leaves out softcap's tanh derivative."""
    return torch_sdpa(q, k, v, _bug="softcap slope", **kwargs)


def flash_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                 dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                 softcap=0.0, alibi_slopes=None, *, return_lse=False, _bug=None):
    """``flash_attn_varlen_func``'s signature: packed sequences ``(total, H, E)`` only,
    the cumulative lengths required (``_bug`` plants one; ``return_lse``: routing_sim's)."""
    assert q.ndim == 3, "packed (total, H, E) inputs only"
    assert max_seqlen_q == np.diff(cu_seqlens_q).max()
    assert max_seqlen_k == np.diff(cu_seqlens_k).max()
    return flash(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                 cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, return_lse=return_lse,
                 _bug=_bug)


def varlen_reads_earlier_sequences(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                   max_seqlen_k, **kwargs):
    """Packed sequences only; each query also reads the keys of the sequences before its own."""
    return flash_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        _bug="earlier sequences", **kwargs)


def varlen_causal_on_the_pack(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                              max_seqlen_k, **kwargs):
    """Packed sequences only; the causal diagonal aligned bottom-right on the whole pack
    (its total keys minus total queries), not on each sequence."""
    return flash_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        _bug="pack aligned", **kwargs)


def decode_split_kv(q, k, v, scale=None, enable_gqa=False, _bug=None):
    """One decode step as flash-decoding takes it: one query (``L = 1``) only, the keys in
    splits of 64, each split's row max, sum and unnormalised output, then the splits
    combined, each rescaled by ``exp(m_split - m)`` (``_bug``: not rescaled)."""
    if q.shape[2] != 1:
        raise ValueError(f"a decode step takes one query, got {q.shape[2]}")
    shared = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, shared, 1), np.repeat(v, shared, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    maxima, sums, outputs = [], [], []
    for start in range(0, k.shape[2], 64):
        scores = q @ np.swapaxes(k[:, :, start:start + 64], -1, -2) * scale   # (B, H, 1, 64)
        maxima.append(scores.max(-1, keepdims=True))
        exps = np.exp(scores - maxima[-1])
        sums.append(exps.sum(-1, keepdims=True))
        outputs.append(exps @ v[:, :, start:start + 64])                       # (B, H, 1, Ev)
    row_max = np.max(maxima, axis=0)
    factors = [np.ones_like(m) if _bug == "splits not rescaled" else np.exp(m - row_max)
               for m in maxima]
    total = sum(f * s for f, s in zip(factors, sums))
    return sum(f * o for f, o in zip(factors, outputs)) / total


def decode_splits_not_rescaled(q, k, v, **kwargs):
    """A decode step that adds its splits of 64 keys without rescaling them to one max."""
    return decode_split_kv(q, k, v, _bug="splits not rescaled", **kwargs)


# Each planted bug: (its kernel, the layout, the features its check runs).
PLANTED = {
    "scale 1/d": (scale_one_over_d, "sdpa", ()),
    "causal off by one": (causal_off_by_one, "sdpa", ("causal",)),
    "wrong GQA head mapping": (gqa_head_mapping, "sdpa", ("gqa",)),
    "softmax without subtracting the max": (no_max_subtracted, "sdpa", ()),
    "top-left and bottom-right swapped": (alignment_swapped, "flash", ("causal",)),
    "bool mask inverted": (mask_inverted, "sdpa", ("mask",)),
    "a bug only past 64 keys": (past_64_keys, "sdpa", ()),
    "window off by one": (window_off_by_one, "flash", ("window",)),
    "lse off by the scale": (lse_off_by_the_scale, "flash", ("lse",)),
    "a causal-only kernel off by one": (causal_only_off_by_one, "sdpa", ("causal",)),
    "the sinks' gradient negated": (sinks_gradient_negated, "sdpa", ("sinks", "backward")),
    "softcap's slope left out of the gradients": (softcap_slope_omitted, "sdpa",
                                                  ("softcap", "backward")),
    "a packed-only kernel reading earlier sequences": (varlen_reads_earlier_sequences,
                                                       "flash", ("varlen",)),
    "a packed-only kernel aligning causal on the whole pack": (varlen_causal_on_the_pack,
                                                               "flash", ("varlen", "causal")),
    "a decode-only kernel not rescaling its splits": (decode_splits_not_rescaled, "sdpa",
                                                      ("decode", "gqa")),
}


def planted_section() -> str:
    """The planted bugs' part of docs/en/testing.md (and docs/zh/testing.md): each bug's
    check (battery only), the failure it shrinks to and where it diverges. The tests hold
    the pages to it."""
    import routing_sim as rs

    parts = []
    for title, (fn, layout, features) in PLANTED.items():
        report = rs.testing.check_attention(fn, layout=layout, features=features, cases=0)
        failure = report.failures[0]
        shown = str(failure).split("\n  worst error:")[0]
        parts.append(f"**{title}** (`tests/testing/kernels.py:{fn.__name__}`, layout "
                     f"{layout}, features: {', '.join(features) or 'none'})\n\n"
                     f"```text\n{shown}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(planted_section(), end="")
