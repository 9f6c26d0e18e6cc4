"""``routing-sim sweep``: run a function over a grid given on the command line, write CSV
or JSON Lines."""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import io
import json
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..errors import InvalidArgumentError
from ..parallel.sweep import sweep

__all__ = ["add_parser", "parse_grid", "resolve"]

SWEEP_FORMATS = ("csv", "jsonl")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sweep`` command to the ``routing-sim`` subcommands."""
    parser = commands.add_parser(
        "sweep", help="run a function over a parameter grid; CSV or JSON Lines",
        description="Run FUNCTION once per point of the grid (the Cartesian product of the "
                    "--grid options, the first varying slowest) and write one record per "
                    "point: its parameters and what FUNCTION returned. FUNCTION is "
                    "'context_parallel' (routing_sim.parallel.measure: one context-parallel "
                    "run summarised), a scenario with a point() function, e.g. "
                    "'ulysses_vs_ring', or 'package.module:function'.")
    parser.add_argument("function", metavar="FUNCTION")
    parser.add_argument("--grid", "-g", action="append", default=[], metavar="NAME=V1,V2",
                        help="one parameter and its values (ints, floats, true/false, none or "
                             "text), e.g. --grid devices=2,4,8; repeat for more")
    parser.add_argument("--output", "-o", type=Path,
                        help="file to write (default: stdout); .jsonl picks JSON Lines")
    parser.add_argument("--format", choices=SWEEP_FORMATS,
                        help="csv or jsonl (default: from --output's suffix, else csv)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=0,
                       help="run the points in this many local processes (default: here)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a Dask scheduler, e.g. tcp://10.0.0.5:8786 (needs "
                            "routing_sim[distributed])")
    parser.set_defaults(handler=_sweep)


def _sweep(arguments: argparse.Namespace) -> int:
    function = resolve(arguments.function)
    grid = parse_grid(arguments.grid)
    try:
        inspect.signature(function).bind(**{name: values[0] for name, values in grid.items()})
    except TypeError as error:
        raise InvalidArgumentError(f"the grid does not fit {arguments.function}: {error}"
                                   ) from None
    if arguments.workers < 0:
        raise InvalidArgumentError(f"--workers must be >= 0, got {arguments.workers}")
    if arguments.scheduler:
        from distributed import Client

        with Client(arguments.scheduler) as client:
            records = sweep(function, grid, executor=client)
    elif arguments.workers:
        with ProcessPoolExecutor(arguments.workers) as pool:
            records = sweep(function, grid, executor=pool)
    else:
        records = sweep(function, grid)
    suffix = arguments.output.suffix if arguments.output else ""
    form = arguments.format or ("jsonl" if suffix == ".jsonl" else "csv")
    text = _jsonl(records) if form == "jsonl" else _csv(records)
    if arguments.output is None:
        sys.stdout.write(text)
    else:
        arguments.output.write_text(text, encoding="utf-8")
        print(f"wrote {len(records)} records to {arguments.output}")
    return 0


def resolve(name: str) -> Callable:
    """The function a sweep runs: ``context_parallel``, a scenario's ``point``, or
    ``package.module:function``."""
    if name == "context_parallel":
        from ..parallel import measure

        return measure
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise InvalidArgumentError(f"cannot find {name!r}: {error}") from None
        return function
    from .. import scenarios

    if name not in scenarios.available():
        raise InvalidArgumentError(f"no scenario {name!r}; FUNCTION is 'context_parallel', a "
                                   f"scenario with point(), or 'package.module:function'")
    module = scenarios.load(name)
    if not hasattr(module, "point"):
        raise InvalidArgumentError(f"scenario {name!r} has no point() function to sweep")
    return module.point


def parse_grid(options: list[str]) -> dict[str, list]:
    """``["devices=2,4", "layout=zigzag"]`` -> ``{"devices": [2, 4], "layout": ["zigzag"]}``.

    Examples
    --------
    >>> parse_grid(["devices=2,4", "bandwidth=1e9", "is_causal=true,false", "x=none,ab"])
    {'devices': [2, 4], 'bandwidth': [1000000000.0], 'is_causal': [True, False], 'x': [None, 'ab']}
    """
    if not options:
        raise InvalidArgumentError("give at least one --grid NAME=V1,V2")
    grid: dict[str, list] = {}
    for option in options:
        name, equals, values = option.partition("=")
        if not equals or not name or not values:
            raise InvalidArgumentError(f"--grid takes NAME=V1,V2,..., got {option!r}")
        grid[name.strip()] = [_value(text.strip()) for text in values.split(",")]
    return grid


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _csv(records: list[dict]) -> str:
    columns = list(dict.fromkeys(name for record in records for name in record))
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return stream.getvalue()


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)
