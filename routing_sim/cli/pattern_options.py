"""The ``--pattern`` options of ``routing-sim trace``, ``replay`` and ``plot``: which routes
exist, as a sparse attention pattern from :mod:`routing_sim.patterns`.

Each pattern takes only the options its definition needs; any other pattern option, or a
missing one, is a one-line error naming both.
"""

from __future__ import annotations

import argparse

import networkx as nx

from ..errors import InvalidArgumentError
from .arguments import count, positive

__all__ = ["PATTERNS", "add_arguments", "pattern_graph"]

# Each pattern and its options: (required, optional). --causal is full's only restriction.
PATTERNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "full": ((), ()),
    "sliding_window": (("window",), ("sinks",)),
    "longformer": (("window",), ("global_tokens",)),
    "bigbird": (("block",), ("global_blocks", "random_blocks")),
    "dilated": (("window", "dilation"), ()),
    "prefix_lm": (("prefix",), ()),
}
OPTIONS = ("window", "sinks", "global_tokens", "block", "global_blocks", "random_blocks",
           "dilation", "prefix")


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Add ``--pattern`` and its options to the simulation options."""
    group.add_argument("--pattern", choices=tuple(PATTERNS), default="full",
                       help="which routes exist (routing_sim.patterns; default full)")
    group.add_argument("--window", type=positive, metavar="N",
                       help="sliding_window/dilated: keys per query; longformer: band width")
    group.add_argument("--sinks", type=count, metavar="N",
                       help="sliding_window: first tokens every query also reads (default 0)")
    group.add_argument("--global-tokens", type=count, metavar="N",
                       help="longformer: the first N tokens read and are read by all "
                            "(default 0)")
    group.add_argument("--block", type=positive, metavar="N", help="bigbird: tokens per block")
    group.add_argument("--global-blocks", type=count, metavar="N",
                       help="bigbird: global blocks, first and last (default 2)")
    group.add_argument("--random-blocks", type=count, metavar="N",
                       help="bigbird: random key blocks per query block, drawn with --seed "
                            "(default 3)")
    group.add_argument("--dilation", type=positive, metavar="N",
                       help="dilated: distance between read keys")
    group.add_argument("--prefix", type=count, metavar="N",
                       help="prefix_lm: tokens that all read each other")


def pattern_graph(arguments: argparse.Namespace, labels: list[str]) -> nx.DiGraph | None:
    """The token graph of ``--pattern`` over the labelled tokens, or None for ``full``.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser.add_argument_group())
    >>> options = parser.parse_args(["--pattern", "sliding_window", "--window", "2"])
    >>> options.causal, options.seed = False, 0
    >>> sorted(pattern_graph(options, ["a", "b", "c"]).edges())
    [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2)]
    """
    from ..routes import patterns

    name = arguments.pattern
    required, optional = PATTERNS[name]
    given = {option: getattr(arguments, option) for option in OPTIONS
             if getattr(arguments, option) is not None}
    stray = sorted(set(given) - set(required) - set(optional))
    if stray:
        raise InvalidArgumentError(f"{_flag(stray[0])} does not apply to --pattern {name} "
                                   f"(it takes {_takes(name)})")
    missing = [option for option in required if option not in given]
    if missing:
        raise InvalidArgumentError(f"--pattern {name} needs {_flag(missing[0])} N")
    if name != "full" and arguments.causal:
        raise InvalidArgumentError(f"--causal does not combine with --pattern {name}: pick "
                                   "one (sliding_window, dilated and prefix_lm are causal)")
    n = len(labels)
    if given.get("global_tokens", 0) > n:
        raise InvalidArgumentError(f"--global-tokens {given['global_tokens']} is more than "
                                   f"the {n} tokens")
    if name == "full":
        return None
    if name == "sliding_window":
        routes = patterns.sliding_window(n, given["window"], sinks=given.get("sinks", 0))
    elif name == "longformer":
        routes = patterns.longformer(n, given["window"], given.get("global_tokens", 0))
    elif name == "bigbird":
        routes = patterns.bigbird(n, given["block"], global_blocks=given.get("global_blocks", 2),
                                  random_blocks=given.get("random_blocks", 3),
                                  seed=arguments.seed)
    elif name == "dilated":
        routes = patterns.dilated(n, given["window"], given["dilation"])
    else:
        routes = patterns.prefix_lm(n, given["prefix"])
    return routes.to_networkx(labels=labels)


def _takes(name: str) -> str:
    required, optional = PATTERNS[name]
    flags = [_flag(option) for option in required] + \
        [f"[{_flag(option)}]" for option in optional]
    return " ".join(flags) if flags else "no pattern option"


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")
