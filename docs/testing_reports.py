"""Write the reports of docs/en/testing.md and docs/zh/testing.md: real attention
implementations checked against the oracle, and the planted bugs' minimal cases.

    PYTHONPATH=. python docs/testing_reports.py        # a few minutes; needs the hf extra

Each page holds the output between ``<!-- reports:begin -->`` and ``<!-- reports:end -->``
(and ``<!-- planted:... -->``); tests/testing/test_check.py holds the planted part to a
fresh run, so it cannot drift from the code.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

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
]


def shown(report: rs.testing.Report) -> str:
    """The table, then each failure without its reproducer (the page is read, not run)."""
    head, *failures = str(report).split("\n\nFAIL")
    parts = [head]
    for failure in failures:
        parts.append("FAIL" + failure.split("\n  worst error:")[0])
    return "\n\n".join(parts)


def reports() -> str:
    parts = []
    for title, fn, dtype, features in RUNS:
        report = rs.testing.check_attention(fn, features=features, dtype=dtype, cases=CASES,
                                            name=fn.__name__)
        parts.append(f"**{title}**, {dtype} (`{fn.__name__}` in docs/testing_reports.py)\n\n"
                     f"```text\n{shown(report)}\n```\n")
        print(f"{title} {dtype}: {'passed' if report.passed else 'FAILED'}", file=sys.stderr)
    if importlib.util.find_spec("torch_geometric") is None:
        parts.append("PyTorch Geometric's `TransformerConv` is not checked: torch_geometric is "
                     "not installed here.\n")
    return "\n".join(parts)


def replace(page: Path, marker: str, text: str) -> None:
    content = page.read_text(encoding="utf-8")
    pattern = re.compile(f"(<!-- {marker}:begin -->\n).*?(<!-- {marker}:end -->)", re.DOTALL)
    assert pattern.search(content), f"{page} has no {marker} markers"
    page.write_text(pattern.sub(lambda m: m.group(1) + text + m.group(2), content),
                    encoding="utf-8")


def main() -> None:
    warnings.filterwarnings("ignore")           # flex_attention's eager-mode notices
    planted = planted_section()
    found = reports()
    for language in ("en", "zh"):
        page = ROOT / "docs" / language / "testing.md"
        replace(page, "planted", planted)
        replace(page, "reports", found)
        print(f"wrote {page}", file=sys.stderr)


if __name__ == "__main__":
    main()
