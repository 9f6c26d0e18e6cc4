"""``routing-sim check MODULE:FUNCTION``: an attention function against the oracle
(:func:`routing_sim.testing.check_attention`), from the shell."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..testing import check_attention, load_function
from ..testing.cases import FEATURES, LAYOUTS
from ..testing.precision import DTYPES
from .arguments import count, seed

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``check`` command to the ``routing-sim`` subcommands."""
    parser = commands.add_parser(
        "check", help="check an attention function against the oracle",
        description="Run FUNCTION (numpy or torch, detected) on a battery of edge cases and "
                    "a hypothesis search, compare every answer with the correctly rounded "
                    "result within a derived tolerance, and print one line per feature, "
                    "then each failure shrunk to a minimal case, where it first diverges "
                    "and Python that reproduces it. Exits 0 only if FUNCTION passes. "
                    "FUNCTION is 'package.module:function' or 'path/to/file.py:function'.")
    parser.add_argument("function", metavar="FUNCTION")
    parser.add_argument("--layout", choices=LAYOUTS, default="sdpa",
                        help="sdpa: (B, H, L, E) and scaled_dot_product_attention's keywords; "
                             "flash: (B, L, H, E) and flash_attn_func's (default sdpa)")
    parser.add_argument("--features", default="",
                        help=f"what FUNCTION supports, comma-separated, from: "
                             f"{', '.join(FEATURES)}. Each case follows one of the "
                             f"patterns named (full, causal, bottom_right, window): "
                             f"'causal' checks a causal-only FUNCTION on causal cases only, "
                             f"'full,causal' one that does both; no pattern means full. "
                             f"Likewise each case has one of the shapes named (padded, "
                             f"varlen, decode): 'varlen' checks a packed-only FUNCTION "
                             f"(cu_seqlens required) on packed cases only, 'decode' a "
                             f"one-query FUNCTION on decode steps only, 'padded,varlen' one "
                             f"that takes both; no shape means padded. The other features "
                             f"add their cases (default: full attention, padded)")
    parser.add_argument("--dtype", choices=DTYPES, default="float64",
                        help="the dtype FUNCTION is called in (default float64)")
    parser.add_argument("--cases", type=count, default=100,
                        help="cases of the hypothesis search (default 100; 0: the battery "
                             "only)")
    parser.add_argument("--seed", type=seed, default=0, help="the search's seed (default 0)")
    parser.add_argument("--json", type=Path, metavar="REPORT.json",
                        help="also write the report as JSON")
    parser.set_defaults(handler=_check)


def _check(arguments: argparse.Namespace) -> int:
    function = load_function(arguments.function)
    report = check_attention(function, layout=arguments.layout, features=arguments.features,
                             dtype=arguments.dtype, cases=arguments.cases, seed=arguments.seed,
                             name=arguments.function)
    print(report)
    if arguments.json:
        arguments.json.write_text(json.dumps(report.to_json(), indent=2) + "\n",
                                  encoding="utf-8")
        print(f"wrote {arguments.json}")
    return 0 if report.passed else 1
