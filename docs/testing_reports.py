"""Write the reports of docs/en/testing.md and docs/zh/testing.md: real attention
implementations checked against the oracle, and the planted bugs' minimal cases.

    PYTHONPATH=. python docs/testing_reports.py        # a few minutes; needs the hf extra
    PYTHONPATH=. python docs/testing_reports.py --only Geometric   # TransformerConv alone

Each page holds the output between ``<!-- reports:begin -->`` and ``<!-- reports:end -->``
(and ``<!-- planted:... -->``); tests/testing/test_check.py holds the planted part to a
fresh run, so it cannot drift from the code.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

import routing_sim as rs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.testing.kernels import planted_section  # noqa: E402

CASES = 100


def sdpa_math(q, k, v, **kwargs):
    """torch SDPA, the math backend."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def sdpa_flash(q, k, v, **kwargs):
    """torch SDPA, the CPU flash backend."""
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def flex(q, k, v, is_causal=False, scale=None, enable_gqa=False, softcap=0.0,
         return_lse=False):
    """torch flex_attention, eager (no torch.compile); causal as a mask_mod, softcap as a
    score_mod."""
    block = score_mod = None
    if is_causal:
        block = create_block_mask(lambda b, h, i, j: j <= i, None, None, q.shape[2],
                                  k.shape[2], device="cpu")
    if softcap:
        def score_mod(score, b, h, i, j):
            return softcap * torch.tanh(score / softcap)
    if return_lse:
        out, aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=block, scale=scale,
                                  enable_gqa=enable_gqa, return_aux=AuxRequest(lse=True))
        return out, aux.lse
    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block, scale=scale,
                          enable_gqa=enable_gqa)


def hf_eager(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """transformers' eager_attention_forward (Llama's), with its additive float mask."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], training=False)
    n_queries, n_keys = q.shape[2], k.shape[2]
    mask = None
    if is_causal:
        attn_mask = torch.ones(n_queries, n_keys, dtype=torch.bool).tril()
    if attn_mask is not None:
        mask = attn_mask if attn_mask.dtype != torch.bool else \
            torch.zeros(attn_mask.shape, dtype=q.dtype).masked_fill(~attn_mask, float("-inf"))
    out, _ = eager_attention_forward(module, q, k, v, mask,
                                     scaling=scale if scale is not None else q.shape[-1] ** -0.5)
    return out.transpose(1, 2)


def _routes(n_queries: int, n_keys: int, is_causal: bool, alignment: str,
            window_size: tuple[int, int] | None) -> np.ndarray:
    """(L, S) bool: the routes of one sequence before any mask (causal top-left or
    bottom-right, FlashAttention's window aligned bottom-right)."""
    i, j = np.ogrid[:n_queries, :n_keys]
    diagonal = i + n_keys - n_queries                          # bottom-right alignment
    allowed = np.ones((n_queries, n_keys), bool)
    if is_causal:
        allowed &= j <= (diagonal if alignment == "bottom_right" else i)
    if window_size is not None:
        left, right = window_size
        if left >= 0:
            allowed &= j >= diagonal - left
        if right >= 0:
            allowed &= j <= diagonal + right
    return allowed


def pyg_transformer_conv(q, k, v, attn_mask=None, is_causal=False, scale=None,
                         enable_gqa=False, causal_alignment="top_left", window_size=None,
                         cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                         max_seqlen_k=None):
    """PyTorch Geometric's TransformerConv as the attention kernel (numpy in and out).

    Every (batch element, query head) is its own bipartite graph, and the graphs are batched
    as PyG batches them, into one disjoint union: query node (b, h, i) pulls from key node
    (b, h // group, j) over an edge when the route is allowed (pattern, window, mask, same
    packed sequence); GQA is query nodes of several heads sharing key nodes. One
    ``TransformerConv(heads=1, concat=True, beta=False, root_weight=False, bias=False)``
    with identity projections: x_dst holds the queries, x_src the keys then the values,
    each zero-padded to C channels, C the smallest power of 4 that holds E and Ev (plus one
    channel for a float mask), so PyG's 1/sqrt(C) is a power of two and exact. The queries
    are multiplied by scale * sqrt(C) first (one rounding each, as kernels that scale q
    do). A float mask's finite entries reach the score through ``edge_attr``: lin_edge
    adds b * sqrt(C) to the key's last channel, which meets a query channel of 1 (PyG adds
    edge_attr to the value too, in that last channel, which is cut off); its -inf entries
    are missing edges.
    """
    import torch
    from torch_geometric.nn import TransformerConv

    batch, heads, n_queries, dim = q.shape
    kv_heads, n_keys, value_dim = k.shape[1], k.shape[2], v.shape[3]
    group = heads // kv_heads
    if attn_mask is None:
        mask = np.ones((1, 1, n_queries, n_keys), bool)
    else:
        mask = np.broadcast_to(attn_mask, (batch, heads, n_queries, n_keys))
    bias = None if mask.dtype == bool else mask
    allowed = np.broadcast_to(mask != -np.inf if bias is not None else mask,
                              (batch, heads, n_queries, n_keys)).copy()  # (B, H, L, S)
    if cu_seqlens_q is None:
        allowed &= _routes(n_queries, n_keys, is_causal, causal_alignment, window_size)
    else:                                # packed: routes inside each sequence, bottom-right
        starts = list(zip(cu_seqlens_q, cu_seqlens_q[1:], cu_seqlens_k, cu_seqlens_k[1:]))
        packed = np.zeros((n_queries, n_keys), bool)
        for q_start, q_end, k_start, k_end in starts:
            packed[q_start:q_end, k_start:k_end] = _routes(
                q_end - q_start, k_end - k_start, is_causal, "bottom_right", window_size)
        allowed &= packed
    b, h, i, j = np.nonzero(allowed)                                 # one entry per edge
    source = (b * kv_heads + h // group) * n_keys + j                # key node
    target = (b * heads + h) * n_queries + i                         # query node
    channels = 4 ** int(np.ceil(np.log(max(dim, value_dim) + (bias is not None)) / np.log(4)))
    root = float(np.sqrt(channels))                                  # a power of two
    factor = (dim ** -0.5 if scale is None else scale) * root

    def padded(x: np.ndarray) -> np.ndarray:                         # (B, H, T, F) -> (N, C)
        out = np.zeros((x.shape[0] * x.shape[1] * x.shape[2], channels), x.dtype)
        out[:, :x.shape[3]] = x.reshape(-1, x.shape[3])
        return out

    queries = padded(q * np.asarray(factor, q.dtype))               # (B*H*L, C)
    if bias is not None:
        queries[:, -1] = 1
    x_src = np.concatenate([padded(k), padded(v)], axis=1)          # (B*Hkv*S, 2C)
    dtype = getattr(torch, str(q.dtype))
    conv = TransformerConv((2 * channels, channels), channels, heads=1, concat=True,
                           beta=False, root_weight=False, bias=False,
                           edge_dim=None if bias is None else 1).to(dtype)
    eye = torch.eye(channels, dtype=dtype)
    with torch.no_grad():
        conv.lin_query.weight.copy_(eye)
        conv.lin_key.weight.copy_(torch.cat([eye, torch.zeros_like(eye)], dim=1))
        conv.lin_value.weight.copy_(torch.cat([torch.zeros_like(eye), eye], dim=1))
        edge_attr = None
        if bias is not None:
            conv.lin_edge.weight.zero_()
            conv.lin_edge.weight[-1, 0] = root
            edge_attr = torch.from_numpy(np.ascontiguousarray(bias[b, h, i, j, None]))
        out = conv((torch.from_numpy(x_src), torch.from_numpy(queries)),
                   torch.from_numpy(np.stack([source, target])), edge_attr)   # (B*H*L, C)
    return out.numpy()[:, :value_dim].reshape(batch, heads, n_queries, value_dim)


PYG_FEATURES = ["full", "mask", "causal", "bottom_right", "window", "gqa", "value_dim", "padded",
                "varlen", "decode"]

# The CPU flash backend refuses a value dim other than the head dim ("No available
# kernel"), and flex_attention has no backward pass on CPU: neither is asked of them.
RUNS = [
    ("torch SDPA, math backend", sdpa_math, "float64",
     ["full", "mask", "causal", "bottom_right", "gqa", "value_dim", "backward"]),
    ("torch SDPA, math backend", sdpa_math, "float32",
     ["full", "mask", "causal", "bottom_right", "gqa", "value_dim", "backward"]),
    ("torch SDPA, CPU flash backend", sdpa_flash, "float64",
     ["full", "causal", "bottom_right", "gqa", "backward"]),
    ("torch SDPA, CPU flash backend", sdpa_flash, "float32",
     ["full", "causal", "bottom_right", "gqa", "backward"]),
    ("torch SDPA, CPU flash backend", sdpa_flash, "bfloat16",
     ["full", "causal", "gqa", "backward"]),
    ("torch flex_attention, eager", flex, "float64",
     ["full", "causal", "gqa", "softcap", "value_dim", "lse"]),
    ("transformers eager_attention_forward", hf_eager, "float64",
     ["full", "mask", "causal", "gqa"]),
    ("transformers eager_attention_forward", hf_eager, "float32",
     ["full", "mask", "causal", "gqa"]),
    # Numpy in and out, so no backward; GQA and packed sequences are the graph's doing.
    ("PyTorch Geometric TransformerConv", pyg_transformer_conv, "float64", PYG_FEATURES),
    ("PyTorch Geometric TransformerConv", pyg_transformer_conv, "float32", PYG_FEATURES),
]


def shown(report: rs.testing.Report) -> str:
    """The table, then each failure without its reproducer (the page is read, not run)."""
    head, *failures = str(report).split("\n\nFAIL")
    parts = [head]
    for failure in failures:
        parts.append("FAIL" + failure.split("\n  worst error:")[0])
    return "\n\n".join(parts)


def heading(title: str, fn, dtype: str) -> str:
    return f"**{title}**, {dtype} (`{fn.__name__}` in docs/testing_reports.py)"


def part(title: str, fn, dtype: str, features: list[str]) -> str:
    """One run's section of the reports."""
    if fn is pyg_transformer_conv and importlib.util.find_spec("torch_geometric") is None:
        return f"{heading(title, fn, dtype)}: not checked, torch_geometric is not installed.\n"
    report = rs.testing.check_attention(fn, features=features, dtype=dtype, cases=CASES,
                                        name=fn.__name__)
    print(f"{title} {dtype}: {'passed' if report.passed else 'FAILED'}", file=sys.stderr)
    return f"{heading(title, fn, dtype)}\n\n```text\n{shown(report)}\n```\n"


def reports(only: str | None, previous: str) -> str:
    """Every run's section; with ``only`` (a regular expression), the runs whose title does
    not match keep their section from ``previous`` (the page's reports)."""
    kept = {section.split("\n")[0].split(":")[0]: section
            for section in re.split(r"\n(?=\*\*)", previous) if section.startswith("**")}
    parts = []
    for title, fn, dtype, features in RUNS:
        old = kept.get(heading(title, fn, dtype))
        if only is not None and not re.search(only, title) and old is not None:
            parts.append(old)
        else:
            parts.append(part(title, fn, dtype, features))
    return "\n".join(parts)


def replace(page: Path, marker: str, text: str) -> None:
    content = page.read_text(encoding="utf-8")
    pattern = _markers(marker)
    assert pattern.search(content), f"{page} has no {marker} markers"
    page.write_text(pattern.sub(lambda m: m.group(1) + text + m.group(3), content),
                    encoding="utf-8")


def _markers(marker: str) -> re.Pattern:
    return re.compile(f"(<!-- {marker}:begin -->\n)(.*?)(<!-- {marker}:end -->)", re.DOTALL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", metavar="PATTERN",
                        help="rerun only the implementations whose title matches this regular "
                             "expression (e.g. 'Geometric'); the others keep their reports")
    only = parser.parse_args().only
    warnings.filterwarnings("ignore")           # flex_attention's eager-mode notices
    planted = planted_section()
    english = (ROOT / "docs" / "en" / "testing.md").read_text(encoding="utf-8")
    found = reports(only, _markers("reports").search(english).group(2))
    for language in ("en", "zh"):
        page = ROOT / "docs" / language / "testing.md"
        replace(page, "planted", planted)
        replace(page, "reports", found)
        print(f"wrote {page}", file=sys.stderr)


if __name__ == "__main__":
    main()
