"""The ``routing-sim`` command: demo, the tour, scenarios, traces, replay pages, plots, an
equivalence sweep, benchmarks, and the oracle's check of another attention function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from ..errors import RoutingSimError
from ..options import ENGINES, NUMERICS, SOFTMAX, VERIFY_PATTERNS
from . import check as check_cli
from . import learn
from . import pattern_options as pattern_cli
from . import sweep as sweep_cli
from .arguments import check_size, count, non_negative, positive, probability, seed

__all__ = ["main"]

FORMATS = ("perfetto", "mermaid", "jsonl", "csv")
PLOTS = ("heatmap", "graph", "timeline")
# The extra that installs each optional module, named when its import fails.
EXTRAS = {"matplotlib": "plot", "torch": "hf", "transformers": "hf", "distributed": "distributed",
          "dask": "distributed", "hypothesis": "testing"}


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
    except OSError as error:              # an output file that cannot be written, ...
        where = f" {error.filename}" if error.filename else ""
        print(f"routing-sim: error: cannot write{where}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    except ImportError as error:          # an optional extra that is not installed
        print(f"routing-sim: error: {_missing_extra(error)}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="routing-sim",
        description="Attention as a routing protocol between token nodes, simulated as "
                    "messages on SimPy and checked against matrix-form attention.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    learn.add_parsers(commands)

    simulation = argparse.ArgumentParser(add_help=False)
    group = simulation.add_argument_group("the simulation")
    group.add_argument("--tokens", default="the cat sat on the mat",
                       help="the sentence (one token node per word; default %(default)r)")
    group.add_argument("--heads", type=positive, default=1, help="attention heads (default 1)")
    group.add_argument("--dim", type=positive, default=4, help="head dim E (default 4)")
    group.add_argument("--causal", action="store_true", help="token i reads tokens 0..i only")
    group.add_argument("--latency", type=non_negative, default=1.0, help="default 1.0")
    group.add_argument("--jitter", type=non_negative, default=0.3, help="default 0.3")
    group.add_argument("--loss", type=probability, default=0.0, help="default 0")
    group.add_argument("--duplicate", type=probability, default=0.0, help="default 0")
    group.add_argument("--retries", type=count, default=10,
                       help="default 10 (Network() has 3: more, so --loss runs finish)")
    group.add_argument("--softmax", choices=SOFTMAX, default="two_phase")
    group.add_argument("--numerics", choices=NUMERICS, default="float")
    group.add_argument("--engine", choices=ENGINES, default="fast", help="plain: "
                       "one SimPy process per token node (reliable network only)")
    group.add_argument("--seed", type=seed, default=0, help="seed of data and network")
    pattern_cli.add_arguments(group)

    trace = commands.add_parser(
        "trace", parents=[simulation], help="simulate and write the message trace",
        description="Run a small simulation and write its trace: Chrome trace JSON for "
                    "Perfetto UI or chrome://tracing, a Mermaid sequence diagram, JSON Lines "
                    "or CSV.")
    trace.add_argument("--format", choices=FORMATS, default="perfetto",
                       help="default perfetto")
    trace.add_argument("--output", "-o", type=Path,
                       help="file to write (default: trace.json / trace.jsonl / trace.csv; "
                            "Mermaid prints to stdout)")
    trace.add_argument("--query", type=int, help="Mermaid: draw only this token's messages")
    trace.add_argument("--fenced", action="store_true",
                       help="Mermaid: wrap the diagram in a ```mermaid fence for Markdown")
    trace.set_defaults(handler=_trace)

    replay = commands.add_parser(
        "replay", parents=[simulation], help="simulate and write the offline replay page",
        description="Run a small simulation and write one self-contained HTML page that "
                    "replays it: token nodes, messages moving in simulated time, routing "
                    "tables on click, a head selector and a temperature / top-k what-if. "
                    "It makes no network request; open it in any browser.")
    replay.add_argument("--backward", action="store_true",
                        help="replay the backward pass (gradient messages) instead, with "
                             "an upstream gradient of ones")
    replay.add_argument("--output", "-o", type=Path, default=Path("run.html"),
                        help="HTML file to write (default run.html)")
    replay.set_defaults(handler=_replay)

    plot = commands.add_parser(
        "plot", parents=[simulation], help="simulate and save a picture (PNG or SVG)",
        description="Run a small simulation and save a heatmap of the routing tables, the "
                    "token graph with edges as wide as their share, or a message timeline. "
                    "Needs the plot extra: pip install 'routing_sim[plot]'.")
    plot.add_argument("--kind", choices=PLOTS, default="heatmap", help="default heatmap")
    plot.add_argument("--output", "-o", type=Path, default=Path("routing.png"),
                      help="image file, .png or .svg (default routing.png)")
    plot.set_defaults(handler=_plot)

    verify = commands.add_parser(
        "verify", help="an equivalence sweep over random configurations",
        description="Simulate random configurations (shapes, heads, masks, loss, jitter; "
                    "about half of them sparse patterns from routing_sim.patterns, some with "
                    "a mask_mod and a built-in score_mod: softcap, alibi, relative_bias), "
                    "compare each with matrix attention and with a second delivery schedule, "
                    "and print a summary table; failures come with a command that reproduces "
                    "them.")
    verify.add_argument("--cases", type=positive, default=200, help="default 200")
    verify.add_argument("--seed", type=seed, default=0, help="first case seed (default 0)")
    verify.add_argument("--only", type=seed, metavar="SEED",
                        help="run just the case with this seed (with the sweep's --pattern, "
                             "if it had one: the reproducer line says so)")
    verify.add_argument("--pattern", choices=VERIFY_PATTERNS,
                        help="only cases on this sparse pattern (any: any of them; full: "
                             "only dense masks, no pattern); default: a mix")
    verify.set_defaults(handler=_verify)

    hf = commands.add_parser(
        "hf", help="a transformers model whose attention runs as messages",
        description="Run a causal language model with routing_sim as its attention backend: "
                    "check its logits against PyTorch SDPA (same weights, float64), generate "
                    "greedily with a KV cache, print the last step's routing table in every "
                    "layer and head and the messages and bytes per layer. A tiny random-init "
                    "model from a config by default (no download), or --model PATH, a local "
                    "checkpoint directory. Needs the hf extra: pip install 'routing_sim[hf]'.")
    hf.add_argument("--family", choices=("llama", "mistral", "qwen2", "gpt2"), default="llama",
                    help="architecture of the tiny random-init model (default llama)")
    hf.add_argument("--layers", type=positive, default=2, help="its layers (default 2)")
    hf.add_argument("--model", type=Path, help="a local checkpoint directory (save_pretrained "
                    "output) instead of a tiny model; its tokenizer is used if it has one")
    hf.add_argument("--tokens", default="routing is all you need",
                    help="the prompt (default %(default)r)")
    hf.add_argument("--new-tokens", type=positive, default=3,
                    help="tokens to generate greedily (default 3)")
    hf.add_argument("--families", nargs="*", metavar="FAMILY",
                    help="instead: sweep these model families of the installed transformers "
                         "(every one if none is named), one tiny float64 model each, against "
                         "SDPA with padding, generation and gradients; print each family's "
                         "status (exact, refused, not swept, failed) as a markdown table; "
                         "exit 1 if one failed")
    hf.add_argument("--language", choices=("en", "zh"), default="en",
                    help="the table's language with --families (default en; the docs' "
                         "family tables are this output)")
    hf.set_defaults(handler=_hf)

    from ..benchmarks.suite import add_options

    bench = commands.add_parser(
        "bench", help="the benchmark table (simulate vs matrix form)",
        description="Run the benchmarks and print their tables (python -m benchmarks): every "
                    "row the best and the median of --repeats runs per side, its sides run in "
                    "turns. --quick keeps to n <= 1024.")
    add_options(bench)
    bench.set_defaults(handler=_bench)
    sweep_cli.add_parser(commands)
    check_cli.add_parser(commands)
    return parser


def _simulate(arguments: argparse.Namespace):
    from ..network.conditions import Network
    from ..routes.graphs import causal, complete
    from ..simulation import simulate

    words = arguments.tokens.split()
    if not words:
        raise _user_error("--tokens needs at least one word")
    check_size(arguments.heads, len(words), arguments.dim)
    rng = np.random.default_rng(arguments.seed)
    shape = (arguments.heads, len(words), arguments.dim)
    query, key, value = (rng.normal(size=shape) for _ in range(3))
    graph = pattern_cli.pattern_graph(arguments, words)
    if graph is None:
        graph = (causal if arguments.causal else complete)(len(words), labels=words)
    network = Network(latency=arguments.latency, jitter=arguments.jitter, loss=arguments.loss,
                      duplicate=arguments.duplicate, retries=arguments.retries,
                      seed=arguments.seed)
    return simulate(query, key, value, graph=graph, network=network,
                    softmax=arguments.softmax, numerics=arguments.numerics, trace="full",
                    engine=arguments.engine)


def _trace(arguments: argparse.Namespace) -> int:
    from .demo import RANDOM_WORDS

    run = _simulate(arguments)
    if arguments.format == "mermaid":
        text = run.trace.to_mermaid(query=arguments.query, fenced=arguments.fenced)
        # A Mermaid comment: the diagram stays the same, its reader learns what the words are.
        text = text.replace("sequenceDiagram\n", f"sequenceDiagram\n    %% {RANDOM_WORDS}\n", 1)
        if arguments.output:
            arguments.output.write_text(text, encoding="utf-8")
            print(f"wrote {arguments.output}")
        else:
            print(text, end="")
        return 0
    default = {"perfetto": "trace.json", "jsonl": "trace.jsonl", "csv": "trace.csv"}
    path = arguments.output or Path(default[arguments.format])
    if path.is_dir():
        raise _user_error(f"--output {path} is a directory; give a file name, e.g. "
                          f"{path / default[arguments.format]}")
    writer = {"perfetto": run.trace.to_perfetto, "jsonl": run.trace.to_jsonl,
              "csv": run.trace.to_csv}[arguments.format]
    writer(path)
    note = " (open it in https://ui.perfetto.dev or chrome://tracing)" \
        if arguments.format == "perfetto" else ""
    print(f"wrote {path}: {len(run.trace.kind)} messages{note}; the tokens are {RANDOM_WORDS}")
    return 0


def _replay(arguments: argparse.Namespace) -> int:
    from ..views.replay import write_html
    from .demo import RANDOM_WORDS

    run = _simulate(arguments)
    note = f"The tokens are {RANDOM_WORDS}."
    if arguments.backward:
        grads = run.backward(np.ones_like(run.output))
        path = write_html(run, arguments.output, grads.trace, grads.stats, "backward", note)
        what = f"{len(grads.trace)} gradient messages"
    else:
        path = write_html(run, arguments.output, note=note)
        what = f"{len(run.trace)} messages"
    print(f"wrote {path}: {what}, {path.stat().st_size:,} bytes (open it in a browser)")
    return 0


def _plot(arguments: argparse.Namespace) -> int:
    from ..views import plots
    from .demo import RANDOM_WORDS

    if arguments.output.suffix.lower() not in (".png", ".svg"):
        raise _user_error(f"--output must end in .png or .svg, got {arguments.output}")
    plots.require_matplotlib()                     # before simulating, not after
    figure = getattr(plots, arguments.kind)(_simulate(arguments))
    figure.supxlabel(f"the tokens are {RANDOM_WORDS}", fontsize=8, color="0.35")
    figure.savefig(arguments.output, dpi=120)
    print(f"wrote {arguments.output}")
    return 0


def _verify(arguments: argparse.Namespace) -> int:
    from .verify_cases import check_case

    seeds = [arguments.only] if arguments.only is not None else \
        list(range(arguments.seed, arguments.seed + arguments.cases))
    results = []
    terminal = sys.stderr.isatty()
    for done, case_seed in enumerate(seeds, 1):
        results.append(check_case(case_seed, arguments.pattern))
        if terminal:
            filled = int(30 * done / len(seeds))
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{len(seeds)}", end="",
                  file=sys.stderr, flush=True)
    if terminal:
        print(file=sys.stderr)
    failures = [r for r in results if not r.passed]
    restriction = f" --pattern {arguments.pattern}" if arguments.pattern else ""
    print(f"{'cases':<28}{len(results)}")
    print(f"{'max error / tolerance':<28}{max(r.error_ratio for r in results):.3g}")
    print(f"{'bit-identical schedules':<28}{sum(r.bit_identical for r in results)}"
          f" of {len(results)}")
    print(f"{'failures':<28}{len(failures)}")
    for failure in failures:
        what = f"simulate raised {failure.error}" if failure.error else \
            f"error/tolerance {failure.error_ratio:.3g}, bit-identical {failure.bit_identical}"
        print(f"  FAIL {failure.description}: {what}; reproduce with: "
              f"routing-sim verify --only {failure.seed}{restriction}")
    return 1 if failures else 0


def _hf(arguments: argparse.Namespace) -> int:
    try:
        from ..hf.families import family_table, sweep
        from ..hf.story import load, tell
    except ImportError as error:
        print(f"routing-sim: error: {error}", file=sys.stderr)
        return 1
    if arguments.families is not None:
        results = sweep(arguments.families or None)
        print(family_table(results, arguments.language))
        return 1 if any(result.status == "failed" for result in results) else 0
    ours, sdpa, tokenizer = load(arguments.family, arguments.layers, arguments.model)
    print(tell(ours, sdpa, arguments.tokens, tokenizer, arguments.new_tokens))
    return 0


def _bench(arguments: argparse.Namespace) -> int:
    from ..benchmarks.suite import run

    def refuse(message: str) -> NoReturn:
        raise _user_error(message)

    return run(arguments, refuse)


def _missing_extra(error: ImportError) -> str:
    """The error of a missing optional module, with the extra that installs it (the message
    as is if it already says what to install).

    Examples
    --------
    >>> _missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch"))
    "No module named 'torch'; pip install 'routing_sim[hf]'"
    """
    extra = EXTRAS.get((error.name or "").partition(".")[0])
    if "pip install" in str(error) or extra is None:
        return str(error)
    return f"{error}; pip install 'routing_sim[{extra}]'"


def _user_error(message: str) -> RoutingSimError:
    from ..errors import InvalidArgumentError

    return InvalidArgumentError(message)


if __name__ == "__main__":
    sys.exit(main())
