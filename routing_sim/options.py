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

from dataclasses import dataclass, fields
from numbers import Integral
from typing import Literal, get_args

from .errors import InvalidArgumentError

__all__ = ["CAUSAL_ALIGNMENTS", "DELIVERY_MODES", "EMPTY_ROWS", "ENGINES", "MHA_ENGINES",
           "NUMERICS", "ON_MISSING", "PATTERN_NAMES", "ROUTING", "SOFTMAX", "TRACE_DETAILS",
           "VERIFY_PATTERNS", "CausalAlignment", "Delivery", "EmptyRows", "Engine",
           "EngineOptions", "MhaEngine", "Numerics", "OnMissing", "PatternName", "Routing",
           "Softmax", "TraceDetail", "check_choice", "engine_options"]

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


@dataclass(frozen=True)
class EngineOptions:
    """How the token nodes compute: ``simulate``'s engine choices as one object.

    ``simulate(q, k, v, engine=rs.EngineOptions(softmax="online"))`` is the same run as
    ``simulate(q, k, v, softmax="online")``: the flat keywords stay, and this object groups
    them as ``network=rs.Network(...)`` groups the network's. It checks each value and
    every combination when it is made, so a set of choices that cannot run is refused
    before any input is read, naming the options that clash.

    Parameters
    ----------
    engine : {"fast", "plain"}
        Batched message handling, or :mod:`routing_sim.engines.plain` (one SimPy process per
        token node: two-phase softmax only).
    softmax : {"two_phase", "online"}
        A barrier per query node, or a streaming (m, l, o) update per arrival.
    numerics : {"float", "exact"}
        Float arithmetic in a fixed order per node, or correctly rounded sums (two-phase
        only: the online rescaling rounds at every arrival).
    routing : {"softmax", "topk"}
        Every route gets a share, or only each query's ``top_k`` best (two-phase only:
        it needs every score first).
    top_k : int, optional
        Routes kept per query by hard routing; 1 when ``routing="topk"`` comes without it
        (the object then holds 1). Refused with soft routing, which pulls every route.
    delivery : {"window", "instant", "per_message"}
        How the transport groups deliveries into SimPy events: speed only, never results.

    Examples
    --------
    >>> EngineOptions(routing="topk")
    EngineOptions(engine='fast', softmax='two_phase', numerics='float', routing='topk', \
top_k=1, delivery='window')
    >>> EngineOptions(numerics="exact", softmax="online")
    Traceback (most recent call last):
    ...
    routing_sim.errors.InvalidArgumentError: numerics='exact' needs softmax='two_phase': \
the online rescaling rounds at every arrival
    """

    engine: Engine = "fast"
    softmax: Softmax = "two_phase"
    numerics: Numerics = "float"
    routing: Routing = "softmax"
    top_k: int | None = None
    delivery: Delivery = "window"

    def __post_init__(self) -> None:
        for name, choices in (("engine", ENGINES), ("softmax", SOFTMAX),
                              ("numerics", NUMERICS), ("routing", ROUTING),
                              ("delivery", DELIVERY_MODES)):
            check_choice(name, getattr(self, name), choices)
        object.__setattr__(self, "top_k", _hard_routes(self.routing, self.top_k))
        if self.softmax != "online":
            return
        if self.routing == "topk":
            raise InvalidArgumentError("routing='topk' needs every score first: use "
                                       "softmax='two_phase'")
        if self.numerics == "exact":
            raise InvalidArgumentError("numerics='exact' needs softmax='two_phase': the "
                                       "online rescaling rounds at every arrival")
        if self.engine == "plain":
            raise InvalidArgumentError("engine='plain' runs the two-phase protocol on a "
                                       "reliable network; softmax='online' needs "
                                       "engine='fast'")


def _hard_routes(routing: str, top_k: object) -> int | None:
    """How many routes each query pulls under hard routing; None for soft routing."""
    if routing != "topk":
        if top_k is not None:
            raise InvalidArgumentError(f"top_k={top_k!r} only applies with routing=\"topk\" "
                                       f"(hard routing); routing={routing!r} pulls every route. "
                                       "Pass routing=\"topk\" too, or drop top_k")
        return None
    if top_k is None:
        return 1
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1:
        raise InvalidArgumentError(f"top_k must be a positive integer, got {top_k!r}")
    return int(top_k)


def engine_options(engine: Engine | EngineOptions, **flat: object) -> EngineOptions:
    """``simulate``'s engine choices as one checked :class:`EngineOptions`: ``engine`` if it
    is one (then every flat keyword in ``flat`` must be left at its default, or it would
    say the same thing twice), else one built from ``engine`` and ``flat``.

    Examples
    --------
    >>> engine_options("plain", numerics="exact").engine
    'plain'
    >>> engine_options(EngineOptions(softmax="online"), softmax="online").softmax
    Traceback (most recent call last):
    ...
    routing_sim.errors.InvalidArgumentError: engine=EngineOptions(...) already holds the \
engine's choices; softmax='online' given beside it would say one of them twice: put it in \
the EngineOptions
    """
    if not isinstance(engine, EngineOptions):
        return EngineOptions(engine, **flat)  # type: ignore[arg-type]
    defaults = {field.name: field.default for field in fields(EngineOptions)}
    given = [f"{name}={value!r}" for name, value in flat.items() if value != defaults[name]]
    if given:
        raise InvalidArgumentError(f"engine=EngineOptions(...) already holds the engine's "
                                   f"choices; {', '.join(given)} given beside it would say "
                                   "one of them twice: put it in the EngineOptions")
    return engine
