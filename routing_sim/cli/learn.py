"""The ``routing-sim`` commands a learner starts with: ``demo``, ``tour``, ``list`` and ``run``
(the story told, the path through it, the scenario library in the path's order, one scenario).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import sys

from ..errors import InvalidArgumentError
from .arguments import non_negative, positive, seed
from .tour import LANGUAGES

__all__ = ["add_parsers"]


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo``, ``tour``, ``list`` and ``run`` to the ``routing-sim`` subcommands."""
    demo = commands.add_parser(
        "demo", help="a six-token sentence routing its attention, with the verdict",
        description="Run a short sentence through the routing protocol: print every token's "
                    "routing table, the messages on the network, the outputs, and the verdict "
                    "against matrix attention.")
    demo.add_argument("--seed", type=seed, default=0, help="seed of embeddings, projections "
                      "and jitter (default 0)")
    demo.add_argument("--jitter", type=non_negative, default=0.3,
                      help="largest random extra delay per message (default 0.3)")
    demo.set_defaults(handler=_demo)

    tour = commands.add_parser(
        "tour", help="start here: the idea in 11 lessons, one command each",
        description="Print the tour: attention as a routing table in 11 lessons, in the order "
                    "of the article routing_sim started from. Each lesson gives the idea in two "
                    "sentences, one command to run, what to look at in its output, and a "
                    "question the next lesson's command answers.")
    tour.add_argument("lesson", nargs="?", type=_lesson_number, metavar="N",
                      help="print only lesson N (1 to 11) and the command of the next one")
    tour.add_argument("--lang", choices=LANGUAGES, default="en",
                      help="language: en (default) or zh (中文)")
    tour.set_defaults(handler=_tour)

    listing = commands.add_parser(
        "list", help="the scenario library, grouped by the tour's lessons",
        description="List the scenarios with a one-line summary, grouped under the tour's "
                    "lessons in their order (`routing-sim tour N` tells lesson N).")
    listing.set_defaults(handler=_list)

    run = commands.add_parser("run", help="run one scenario by name",
                              description="Run a scenario from the library and print its "
                                          "story and verdict (see `routing-sim list`).")
    run.add_argument("name", nargs="?", help="scenario name, e.g. routing_table; without it, "
                                             "the list of scenarios")
    run.add_argument("arguments", nargs="*", metavar="ARGUMENT",
                     help="passed to the scenario, e.g. `run learning_to_route curve.png` "
                          "also saves its loss curve")
    run.set_defaults(handler=_run)


def _demo(arguments: argparse.Namespace) -> int:
    from .demo import demo

    print(demo(seed=arguments.seed, jitter=arguments.jitter))
    return 0


def _tour(arguments: argparse.Namespace) -> int:
    from .tour import text

    print(text(arguments.lesson, arguments.lang))
    return 0


def _lesson_number(text: str) -> int:
    from .tour import LESSONS

    number = positive(text)
    if number > len(LESSONS):
        raise argparse.ArgumentTypeError(f"the tour has lessons 1 to {len(LESSONS)}, got "
                                         f"{text!r}")
    return number


def _list(arguments: argparse.Namespace) -> int:
    print(_scenario_list())
    return 0


def _scenario_list() -> str:
    """The scenarios under the tour's lesson headings, in the tour's order; a lesson without
    a scenario shows its command instead."""
    from .. import scenarios
    from .tour import LESSONS

    available = scenarios.available()
    width = max(map(len, available))
    lines = ["The scenarios in the tour's order (`routing-sim tour N` tells lesson N; "
             "`routing-sim run NAME` runs one):"]
    placed: set[str] = set()
    for lesson in LESSONS:
        lines += ["", f"{lesson.number}. {lesson.en.title}"]
        mine = [name for name in lesson.scenarios if name in available]
        lines += [f"   {name:<{width}}  {available[name]}" for name in mine]
        if not mine:
            lines.append(f"   {lesson.command}")
        placed.update(mine)
    others = [name for name in available if name not in placed]
    if others:
        lines += ["", "Beyond the tour"]
        lines += [f"   {name:<{width}}  {available[name]}" for name in others]
    return "\n".join(lines)


def _run(arguments: argparse.Namespace) -> int:
    from .. import scenarios

    available = scenarios.available()
    if arguments.name is None:
        print(_scenario_list(), file=sys.stderr)
        print("routing-sim: error: name a scenario to run, e.g. `routing-sim run "
              "routing_table`", file=sys.stderr)
        return 2
    if arguments.name not in available:
        near = difflib.get_close_matches(arguments.name.replace("-", "_"), available, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        print(f"routing-sim: error: no scenario {arguments.name!r}; {hint}`routing-sim list` "
              "shows them all", file=sys.stderr)
        return 1
    scenario = scenarios.load(arguments.name)
    try:
        inspect.signature(scenario.main).bind(*arguments.arguments)
    except TypeError:
        raise InvalidArgumentError(f"scenario {arguments.name} takes no argument "
                          f"{' '.join(arguments.arguments)!r}") from None
    scenario.main(*arguments.arguments)
    return 0
