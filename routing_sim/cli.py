"""The ``routing-sim`` command: demo, scenarios, traces, replay pages, plots, an equivalence
sweep, benchmarks."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import pattern_cli, sweep_cli
from .cli_args import check_size, count, non_negative, positive, probability, seed
from .errors import RoutingSimError
from .options import ENGINES, NUMERICS, SOFTMAX, VERIFY_PATTERNS

__all__ = ["main"]

FORMATS = ("perfetto", "mermaid", "jsonl", "csv")
PLOTS = ("heatmap", "graph", "timeline")


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
        print(f"routing-sim: error: {error}; pip install 'routing_sim[plot]'", file=sys.stderr)
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
    demo.add_argument("--seed", type=seed, default=0, help="seed of embeddings, projections "
                      "and jitter (default 0)")
    demo.add_argument("--jitter", type=non_negative, default=0.3,
                      help="largest random extra delay per message (default 0.3)")
    demo.set_defaults(handler=_demo)

    listing = commands.add_parser("list", help="the scenario library, one line each",
                                  description="List the scenarios with a one-line summary.")
    listing.set_defaults(handler=_list)

    run = commands.add_parser("run", help="run one scenario by name",
                              description="Run a scenario from the library and print its "
                                          "story and verdict (see `routing-sim list`).")
    run.add_argument("name", help="scenario name, e.g. routing_table")
    run.add_argument("arguments", nargs="*", metavar="ARGUMENT",
                     help="passed to the scenario, e.g. `run learning_to_route curve.png` "
                          "also saves its loss curve")
    run.set_defaults(handler=_run)

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

    bench = commands.add_parser(
        "bench", help="the benchmark table (simulate vs matrix form)",
        description="Run the benchmarks and print one table; everything is measured in one "
                    "run. --quick keeps to n <= 1024.")
    bench.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    bench.set_defaults(handler=_bench)
    sweep_cli.add_parser(commands)
    return parser


def _demo(arguments: argparse.Namespace) -> int:
    from .demo import demo

    print(demo(seed=arguments.seed, jitter=arguments.jitter))
    return 0


def _list(arguments: argparse.Namespace) -> int:
    from . import scenarios

    available = scenarios.available()
    width = max(map(len, available))
    for name, summary in available.items():
        print(f"{name:<{width}}  {summary}")
    return 0


def _run(arguments: argparse.Namespace) -> int:
    from . import scenarios

    available = scenarios.available()
    if arguments.name not in available:
        print(f"routing-sim: error: no scenario {arguments.name!r}; choose one of "
              f"{', '.join(available)}", file=sys.stderr)
        return 1
    scenario = scenarios.load(arguments.name)
    try:
        inspect.signature(scenario.main).bind(*arguments.arguments)
    except TypeError:
        raise _user_error(f"scenario {arguments.name} takes no argument "
                          f"{' '.join(arguments.arguments)!r}") from None
    scenario.main(*arguments.arguments)
    return 0


def _simulate(arguments: argparse.Namespace):
    from .graphs import causal, complete
    from .network import Network
    from .simulation import simulate

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
    run = _simulate(arguments)
    if arguments.format == "mermaid":
        text = run.trace.to_mermaid(query=arguments.query, fenced=arguments.fenced)
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
    print(f"wrote {path}: {len(run.trace.kind)} messages{note}")
    return 0


def _replay(arguments: argparse.Namespace) -> int:
    run = _simulate(arguments)
    if arguments.backward:
        grads = run.backward(np.ones_like(run.output))
        path = grads.to_html(arguments.output)
        what = f"{len(grads.trace)} gradient messages"
    else:
        path = run.to_html(arguments.output)
        what = f"{len(run.trace)} messages"
    print(f"wrote {path}: {what}, {path.stat().st_size:,} bytes (open it in a browser)")
    return 0


def _plot(arguments: argparse.Namespace) -> int:
    from . import plots

    if arguments.output.suffix.lower() not in (".png", ".svg"):
        raise _user_error(f"--output must end in .png or .svg, got {arguments.output}")
    figure = getattr(plots, arguments.kind)(_simulate(arguments))
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
        from .hf.families import family_table, sweep
        from .hf.story import load, tell
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
    from .benchmarks.suite import main as bench_main

    return bench_main(["--quick"] if arguments.quick else [])


def _user_error(message: str) -> RoutingSimError:
    from .errors import InvalidArgumentError

    return InvalidArgumentError(message)


if __name__ == "__main__":
    sys.exit(main())
