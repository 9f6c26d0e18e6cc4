"""The ``routing-sim`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import RoutingSimError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``routing-sim``; returns the exit status."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 2
    try:
        return arguments.handler(arguments)
    except RoutingSimError as error:
        print(f"routing-sim: error: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="routing-sim",
        description="Attention as a routing protocol between token nodes, simulated as "
                    "messages on SimPy and checked against matrix-form attention.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="a six-token sentence routing its attention, with the verdict",
        description="Run a short sentence through the routing protocol: print every token's "
                    "routing table, the messages on the network, the outputs, and the verdict "
                    "against matrix attention.")
    demo.add_argument("--seed", type=int, default=0, help="seed of embeddings, projections "
                      "and jitter (default 0)")
    demo.add_argument("--jitter", type=_non_negative, default=0.3,
                      help="largest random extra delay per message (default 0.3)")
    demo.set_defaults(handler=_demo)
    return parser


def _demo(arguments: argparse.Namespace) -> int:
    from .demo import demo

    print(demo(seed=arguments.seed, jitter=arguments.jitter))
    return 0


def _non_negative(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return number


if __name__ == "__main__":
    sys.exit(main())
