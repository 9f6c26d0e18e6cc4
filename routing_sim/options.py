"""The option vocabulary: every string option's allowed values, defined once.

Each option is a ``Literal`` type, for signatures and the type checker, and a tuple of its
values (``typing.get_args`` of the type), for run-time checks and the CLI's choices. The
simulator, the matrix reference, the CLI and the validation all read them from here.

Examples
--------
>>> NUMERICS, SOFTMAX
(('float', 'exact'), ('two_phase', 'online'))
>>> check_choice("numerics", "fast", NUMERICS)
Traceback (most recent call last):
...
routing_sim.errors.InvalidArgumentError: numerics must be one of ('float', 'exact'), got 'fast'
"""

from __future__ import annotations

from typing import Literal, get_args

from .errors import InvalidArgumentError

__all__ = ["CAUSAL_ALIGNMENTS", "DELIVERY_MODES", "EMPTY_ROWS", "ENGINES", "MHA_ENGINES",
           "NUMERICS", "ON_MISSING", "PATTERN_NAMES", "ROUTING", "SOFTMAX", "TRACE_DETAILS",
           "VERIFY_PATTERNS", "CausalAlignment", "Delivery", "EmptyRows", "Engine",
           "MhaEngine", "Numerics", "OnMissing", "PatternName", "Routing", "Softmax",
           "TraceDetail", "check_choice"]

Numerics = Literal["float", "exact"]                 # float64 arithmetic, or correctly rounded
Softmax = Literal["two_phase", "online"]             # a barrier per node, or streaming (m, l, o)
Routing = Literal["softmax", "topk"]                 # every route gets a share, or the top k
TraceDetail = Literal["auto", "full", "summary"]     # every message, or totals only
Delivery = Literal["window", "instant", "per_message"]   # SimPy events per window/instant/message
EmptyRows = Literal["zero", "nan", "error"]          # a query token with no route
CausalAlignment = Literal["top_left", "bottom_right"]    # is_causal: j <= i, or j <= i + S - L
OnMissing = Literal["strict", "degrade"]             # a route given up: fail, or renormalise
Engine = Literal["fast", "plain"]                    # simulate's engine: batched, or readable
MhaEngine = Literal["messages", "matrix"]            # MultiHeadAttention: simulate, or matrix
PatternName = Literal["sliding_window", "longformer", "bigbird", "dilated", "document",
                      "prefix_lm"]                   # the builders of rs.patterns

NUMERICS: tuple[Numerics, ...] = get_args(Numerics)
SOFTMAX: tuple[Softmax, ...] = get_args(Softmax)
ROUTING: tuple[Routing, ...] = get_args(Routing)
TRACE_DETAILS: tuple[TraceDetail, ...] = get_args(TraceDetail)
DELIVERY_MODES: tuple[Delivery, ...] = get_args(Delivery)
EMPTY_ROWS: tuple[EmptyRows, ...] = get_args(EmptyRows)
CAUSAL_ALIGNMENTS: tuple[CausalAlignment, ...] = get_args(CausalAlignment)
ON_MISSING: tuple[OnMissing, ...] = get_args(OnMissing)
ENGINES: tuple[Engine, ...] = get_args(Engine)
MHA_ENGINES: tuple[MhaEngine, ...] = get_args(MhaEngine)
PATTERN_NAMES: tuple[PatternName, ...] = get_args(PatternName)
# routing-sim verify --pattern: any pattern, none (dense masks only), or one pattern
VERIFY_PATTERNS: tuple[str, ...] = ("any", "full", *PATTERN_NAMES)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Refuse a value outside ``choices``, naming the argument and the value."""
    if value not in choices:
        raise InvalidArgumentError(f"{name} must be one of {choices}, got {value!r}")
