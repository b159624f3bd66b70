"""The `vertexflow` command.

    vertexflow demo                          a wide graph benchmarked on both executors, with a trace
    vertexflow bench --suite quick           executors against each other, numpy and Dask, on graph families
    vertexflow bench SCRIPT.py:build         ... on your own graph (a function returning graph, feeds, fetch)
    vertexflow bench MODEL.onnx --batch-size 32   ... on an ONNX model, against onnxruntime
    vertexflow trace wide --out t.html       trace a built-in example (or a script) into the viewer
    vertexflow train mlp --epochs 30         the training examples (mlp, autoencoder, cnn, linear)
    vertexflow run MODEL.onnx --input x=x.npy --batch-size 64   stream an ONNX model over batches

Every argument is checked before any work starts; a mistake gets one line
on stderr and exit status 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import inspect
import os
import runpy
import shlex
import sys

from .argtypes import HelpWithDefaults as _Help
from .argtypes import count as _count
from .argtypes import html_file as _html_file
from .argtypes import input_file as _input_file
from .argtypes import named_file as _named_file
from .argtypes import named_source as _named_source
from .argtypes import output_file as _output_file
from .argtypes import output_folder as _output_folder
from .argtypes import plot_file as _plot_file
from .argtypes import size as _size
from .errors import CommandLineError as UsageError
from .errors import VertexflowError


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--epoch` must not silently mean `--epochs`
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .benchmarks.configs import PEERS, VERTEXFLOW
    from .benchmarks.families import FAMILIES
    from .benchmarks.report import SUITE_HELP, SUITES

    fmt = _Help
    parser = _Parser(prog="vertexflow", description="Dataflow graphs where every vertex is an actor.",
                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"vertexflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors (anywhere on the line)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser("demo", help="benchmark a wide graph on the sequential and actor executors",
                               formatter_class=fmt)
    demo.add_argument("--branches", type=_count, default=8, help="independent branches")
    demo.add_argument("--depth", type=_count, default=6, help="expensive ops per branch")
    demo.add_argument("--rows", type=_count, default=256, help="rows of the batch")
    demo.add_argument("--cols", type=_count, default=1024, help="columns of the batch")
    demo.add_argument("--processes", type=_count, default=3, help="fresh processes per executor")
    demo.add_argument("--runs", type=_count, default=5, help="timed runs in each process")
    demo.add_argument("--threads", type=_count, default=None, help="worker threads (default: the cores)")
    demo.add_argument("--out", type=_output_folder, default=".", help="folder for trace.html and trace.json")
    demo.add_argument("--quiet", action="store_true", help="no progress")

    suites = "; ".join(f"{k}: {v}" for k, v in SUITE_HELP.items())
    bench = commands.add_parser("bench", help="benchmark executors on graph families, a script or an ONNX model",
                                formatter_class=fmt)
    bench.add_argument("target", nargs="?", default=None,
                       help="your own workload: script.py[:function] (the function returns graph, feeds, fetch "
                            "and optionally a loss) or model.onnx; default: the graph families of --suite")
    bench.add_argument("--suite", choices=sorted(SUITES), default="quick", help=f"the families to run ({suites})")
    bench.add_argument("--family", action="append", choices=sorted(FAMILIES), help="only these families (repeatable)")
    bench.add_argument("--size", action="append", default=[], type=_size, metavar="KEY=VALUE",
                       help="a family's size, e.g. --size rows=128 (repeatable)")
    bench.add_argument("--executor", action="append", default=None, metavar="NAME",
                       help=f"configurations to time (repeatable): {', '.join(VERTEXFLOW)} or actor-N; "
                            "default sequential and actor")
    bench.add_argument("--no-peers", action="store_true", help=f"leave out the peers ({', '.join(PEERS)})")
    bench.add_argument("--threads", type=_count, default=None, help="worker threads (default: the cores)")
    bench.add_argument("--processes", type=_count, default=3, help="fresh processes per configuration")
    bench.add_argument("--runs", type=_count, default=5, help="timed runs in each process")
    bench.add_argument("--input", action="append", default=[], type=_named_file, metavar="NAME=FILE.npy",
                       help="an ONNX model's input (repeatable; others get random data)")
    bench.add_argument("--batch-size", type=_count, default=None,
                       help="the batch size of an ONNX model's random inputs (where its batch is not fixed)")
    bench.add_argument("--json", type=_output_file, help="write the report as JSON (schema: bench/README.md)")
    bench.add_argument("--pyperf", type=_output_file, help="write the timings as pyperf JSON (pyperf compare_to)")
    bench.add_argument("--markdown", type=_output_file, help="write the tables as Markdown")
    bench.add_argument("--plot", type=_plot_file, help="write a plot, as PNG, SVG or PDF by its extension "
                                                      "(needs matplotlib)")
    bench.add_argument("--quiet", action="store_true", help="no progress")
    bench.add_argument("--tiny", action="store_true", help="shrink every family to run in seconds (a smoke test)")

    trace = commands.add_parser("trace", help="trace an example or a script into the HTML viewer and Chrome JSON",
                                formatter_class=fmt)
    trace.add_argument("target", nargs="?", default=None,
                       help=f"a built-in example ({', '.join(sorted(FAMILIES))}), a benchmark target "
                            "(script.py:function or model.onnx, run as the examples are), or a Python "
                            "script (run as a program, every executor it runs traced)")
    trace.add_argument("--open", type=_input_file, default=None, metavar="TRACE.json",
                       help="make the viewer of a Chrome JSON trace saved before (instead of running anything)")
    trace.add_argument("--compare", action="store_true",
                       help="compare the sequential run with the concurrent one (an example or target runs both; "
                            "a script must run both executors)")
    trace.add_argument("--out", type=_html_file, default="trace.html", help="HTML output; the JSON goes beside it")
    trace.add_argument("--executor", choices=["actor", "sequential"], default="actor", help="for an example")
    trace.add_argument("--threads", type=_count, default=None, help="worker threads (default: the cores)")
    trace.add_argument("--steps", type=_count, default=2, help="steps to run (examples and targets)")
    trace.add_argument("--batch-size", type=_count, default=None,
                       help="the batch size of an ONNX target's random inputs (where its batch is not fixed)")
    trace.add_argument("--graph", action="store_true", help="also write the graph as Graphviz (.dot), coloured by time")

    run = commands.add_parser("run", help="run an ONNX model on .npy inputs, streamed in batches", formatter_class=fmt)
    run.add_argument("model", type=_input_file, help="an .onnx file")
    run.add_argument("--input", action="append", default=[], type=_named_source, metavar="NAME=FILE.npy|FOLDER",
                     help="an input (repeatable): a .npy file, split into batches with --batch-size, or a folder "
                          "of .npy files, one step each")
    run.add_argument("--batch-size", type=_count, default=None,
                     help="stream a .npy file's rows in batches of this size (default: the whole file, one step)")
    run.add_argument("--executor", choices=["sequential", "actor"], default="actor", help="the executor")
    run.add_argument("--depth", type=_count, default=4, help="steps in flight at once (actor executor)")
    run.add_argument("--out", type=_output_folder, default=".",
                     help="folder for the outputs: OUTPUT.npy, or OUTPUT/FILE.npy for a folder input")
    run.add_argument("--trace", type=_html_file, default=None,
                     help="also write a trace viewer here (.html; the JSON trace goes beside it)")

    train = commands.add_parser("train", help="run a training example: mlp, autoencoder, cnn or linear",
                                formatter_class=fmt, add_help=False)
    train.add_argument("example", choices=sorted(EXAMPLES), help="the example")
    train.add_argument("rest", nargs=argparse.REMAINDER, help="the example's own options (see --help)")
    parser.train = train  # for `vertexflow train --help`, which the example itself would otherwise take
    return parser


COMMANDS = ("demo", "bench", "trace", "run", "train")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # taken anywhere on the line, before or after the command
    label = _command(argv)
    try:
        return _main(argv)
    except UsageError as exc:
        if debug:
            raise
        message = str(exc)
        print(message if message.startswith("vertexflow") else f"{label}: {message}", file=sys.stderr)
        return 2
    except VertexflowError as exc:
        if debug:
            raise
        print(f"{label}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a user's script failed, or vertexflow did: one line either way
        if debug:
            raise
        where = _users_line(exc)
        if where is not None:
            print(f"{where}: {type(exc).__name__}: {exc} (--debug for the traceback)", file=sys.stderr)
            return 2
        print(f"{label}: internal error: {type(exc).__name__}: {exc} (a bug in vertexflow: --debug shows the "
              "traceback to report)", file=sys.stderr)
        return 1


def _command(argv: list[str]) -> str:
    """What the user ran, for the prefix of every message: `vertexflow bench`, `vertexflow train mlp`."""
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] not in COMMANDS:
        return "vertexflow"
    if words[0] == "train" and len(words) > 1:
        return f"vertexflow train {words[1]}"
    return f"vertexflow {words[0]}"


def _users_line(exc: BaseException) -> str | None:
    """`FILE:LINE` of the innermost line of the user's own code in an exception's traceback (a script
    given to `bench`, `trace` or `train`), or None when the failure is not in the user's code."""
    import sysconfig
    import traceback

    ours = os.path.dirname(os.path.abspath(__file__)) + os.sep
    installed = {os.path.abspath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                      sysconfig.get_paths()["stdlib"])}

    def users(filename: str) -> bool:
        path = os.path.abspath(filename)
        return (not filename.startswith("<") and not path.startswith(ours)
                and not any(path.startswith(p) for p in installed))

    if isinstance(exc, SyntaxError) and exc.filename and users(exc.filename):
        return f"{exc.filename}:{exc.lineno}"
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if users(frame.filename):
            found = f"{frame.filename}:{frame.lineno}"
    return found


def _main(argv: list[str]) -> int:
    parser = _parser()
    if argv[:1] == ["train"]:
        rest = argv[1:]
        if rest[:1] in (["-h"], ["--help"]):
            parser.train.print_help()
            return 0
        if not rest:
            raise UsageError(f"vertexflow train: give an example: {', '.join(sorted(EXAMPLES))} (vertexflow train "
                             "--help; vertexflow train mlp --help for an example's options)")
        args, extra = parser.parse_known_args(argv)
        return _train(args.example, list(extra) + list(args.rest))
    args, extra = parser.parse_known_args(argv)
    if extra:
        raise UsageError(f"vertexflow {args.command}: unrecognized arguments: {' '.join(extra)} "
                         f"(vertexflow {args.command} --help lists them)")
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(branches=args.branches, depth=args.depth, rows=args.rows, cols=args.cols,
                        processes=args.processes, runs=args.runs, threads=args.threads, out=args.out,
                        quiet=args.quiet)
    if args.command == "bench":
        return _bench(args, argv)
    if args.command == "run":
        return _run_onnx(args)
    return _trace(args)


def _needs_onnx(command: str) -> None:
    """An ONNX model needs the onnx package: said in one line, with the install line, before any work."""
    if not _importable("onnx"):
        raise UsageError(f"vertexflow {command}: ONNX models need the onnx package (pip install onnx, or "
                         "pip install -e '.[onnx]' in a checkout)")


def _repeated_inputs(command: str, inputs) -> dict:
    names = [name for name, _ in inputs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"vertexflow {command}: --input {twice[0]}= is given more than once; give each input once")
    return dict(inputs)


def _check_sizes(families: list[str], sizes: dict[str, int]) -> None:
    from .benchmarks.families import FAMILIES

    for family in families:
        accepted = set(inspect.signature(FAMILIES[family]).parameters)
        unknown = sorted(set(sizes) - accepted)
        if unknown:
            raise UsageError(f"vertexflow bench: --size {unknown[0]}= is not a size of {family} "
                             f"(its sizes: {', '.join(sorted(accepted))})")


def _bench(args, argv) -> int:
    from .benchmarks.configs import known
    from .benchmarks.measure import benchmark
    from .benchmarks.report import run_suite, suite_plan, write_all
    from .progress import progress

    if args.pyperf and not _importable("pyperf"):
        raise UsageError("vertexflow bench: --pyperf needs pyperf (pip install pyperf, or the bench extra)")
    if args.plot and not _importable("matplotlib"):
        raise UsageError("vertexflow bench: --plot needs matplotlib (pip install matplotlib, or the bench extra)")
    from .benchmarks.report import SUITE_EXECUTORS

    executors = args.executor or SUITE_EXECUTORS.get(args.suite, ["sequential", "actor"])
    for name in executors:
        if not known(name):
            raise UsageError(f"vertexflow bench: unknown --executor {name!r} (use sequential, actor, "
                             f"actor-network, actor-N, stream, ray or ray-N)")
        if name.startswith("ray") and not _importable("ray"):
            raise UsageError("vertexflow bench: the ray executors need Ray (pip install -e '.[ray]')")
        if name == "dask-distributed" and not _importable("distributed"):
            raise UsageError("vertexflow bench: dask-distributed needs distributed (pip install distributed, "
                             "or the bench extra)")
    sizes = dict(args.size)
    command = "vertexflow " + " ".join(shlex.quote(a) for a in argv)
    if args.target is not None:
        if args.family or sizes or args.tiny:
            raise UsageError("vertexflow bench: --family, --size and --tiny go with the graph families, not a target")
        _check_target(args.target, args.input)
        inputs = _repeated_inputs("bench", args.input)
        bar = progress(0, "benchmark", quiet=args.quiet)
        with bar:
            report = benchmark(args.target, executors=executors, peers=not args.no_peers, threads=args.threads,
                               processes=args.processes, runs=args.runs, inputs=inputs, batch=args.batch_size,
                               progress=bar.note if not args.quiet else None)
    else:
        if args.input or args.batch_size:
            raise UsageError("vertexflow bench: --input and --batch-size go with an ONNX model target")
        plan = suite_plan(args.suite, args.family, sizes, args.tiny)
        _check_sizes(sorted({f for f, _ in plan}), sizes)
        bar = progress(len(plan), "benchmark", quiet=args.quiet)
        with bar:
            report = run_suite(args.suite, args.family, threads=args.threads, processes=args.processes,
                               runs=args.runs, sizes=sizes, tiny=args.tiny, executors=executors,
                               peers=not args.no_peers, progress=bar.set_description)
    report.command = command
    print(report)
    write_all(report, args.json, args.markdown, args.plot, args.pyperf)
    return 0


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a package that is present but cannot be imported
        return False


def _trace_workload(target: str, batch: int | None):
    """The workload `vertexflow trace TARGET` runs itself, or None for a script it runs as a program.

    Raises:
        UsageError: a target that names nothing runnable.
    """
    from .benchmarks.families import FAMILIES
    from .benchmarks.workload import from_onnx, from_script, parse_target

    if target in FAMILIES:
        return FAMILIES[target]()
    path, function = parse_target(target)
    if not os.path.isfile(path):
        raise UsageError(f"vertexflow trace: {target!r} is neither a built-in example "
                         f"({', '.join(sorted(FAMILIES))}) nor a file")
    if target.endswith(".onnx"):
        _needs_onnx("trace")
        return from_onnx(target, batch=batch)
    if batch is not None:
        raise UsageError("vertexflow trace: --batch-size goes with an ONNX model")
    if ":" in target:
        return from_script(path, function)
    if not path.endswith(".py"):
        raise UsageError(f"vertexflow trace: {target!r} is not a Python script, script.py:function or model.onnx")
    return None


def _check_target(target: str, inputs) -> None:
    from .benchmarks.workload import parse_target

    if target.endswith(".onnx"):
        if not os.path.isfile(target):
            raise UsageError(f"vertexflow bench: {target}: no such file")
        _needs_onnx("bench")
        return
    path, _ = parse_target(target)
    if not path.endswith(".py"):
        raise UsageError(f"vertexflow bench: {target!r} is neither script.py[:function] nor model.onnx")
    if not os.path.isfile(path):
        raise UsageError(f"vertexflow bench: {path}: no such file")
    if inputs:
        raise UsageError("vertexflow bench: --input goes with an ONNX model; a script builds its own feeds")


def _run_onnx(args) -> int:
    import time

    import numpy as np

    import vertexflow as vf

    _needs_onnx("run")
    sources = _repeated_inputs("run", args.input)
    from . import onnx as vf_onnx

    model = vf_onnx.load(args.model)
    specs = model.input_specs
    listing = ", ".join(f"{k} {v}" for k, v in specs.items())
    for name in sources:
        if name not in specs:
            raise UsageError(f"vertexflow run: {args.model} has no input {name!r}; its inputs: {listing}")
    missing = [k for k in specs if k not in sources]
    if missing:
        raise UsageError(f"vertexflow run: missing --input for {', '.join(missing)} (the model's inputs: {listing})")
    steps, names = _run_steps(sources, args.batch_size)
    with vf.trace() as tracer:
        start = time.perf_counter()
        results = list(model.run_stream(steps, executor=args.executor, depth=args.depth))
        elapsed = time.perf_counter() - start
    model.close()
    os.makedirs(args.out, exist_ok=True)
    outputs = [name.replace("/", "_") for name in model.output_names]
    for k, output in enumerate(outputs):
        values = [np.asarray(r[k]) for r in results]
        if names is not None:  # a folder: one file per input file
            folder = os.path.join(args.out, output)
            os.makedirs(folder, exist_ok=True)
            for stem, value in zip(names, values):
                np.save(os.path.join(folder, stem + ".npy"), value, allow_pickle=False)
            print(f"{output}: {len(values)} arrays {values[0].shape} {values[0].dtype} -> {folder}{os.sep}")
            continue
        value = values[0] if len(values) == 1 or values[0].ndim == 0 else np.concatenate(values)
        path = os.path.join(args.out, output + ".npy")
        np.save(path, value, allow_pickle=False)
        print(f"{output}: {value.shape} {value.dtype} -> {path}")
    first = next(iter(specs))
    rows = sum(len(step[first]) if np.ndim(step[first]) else 1 for step in steps)  # the first input's rows
    flight = f", up to {args.depth} steps in flight" if args.executor == "actor" else ""
    print(f"{len(steps)} step(s), {rows} rows, in {elapsed * 1e3:.1f} ms on {args.executor} "
          f"({rows / elapsed:,.0f} rows/s{flight}; the first steps include building and calibrating)")
    if args.trace:
        tracer.save_html(args.trace, title=f"{os.path.basename(args.model)} on {args.executor}")
        tracer.save(os.path.splitext(args.trace)[0] + ".json")
        print(f"trace viewer: {os.path.abspath(args.trace)}")
    return 0


def _run_steps(sources: dict[str, str], batch_size: int | None) -> tuple[list[dict], list[str] | None]:
    """The feeds of every step, and the file names of a folder input (None for .npy files)."""
    import numpy as np

    def load(path):
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UsageError(f"vertexflow run: {path}: not a .npy array file ({exc})") from None
        if not isinstance(array, np.ndarray):
            raise UsageError(f"vertexflow run: {path}: an .npz archive; give one .npy file per input")
        if array.ndim and not len(array):
            raise UsageError(f"vertexflow run: {path}: the file has 0 rows (its shape is {array.shape})")
        return array

    folders = {name: path for name, path in sources.items() if os.path.isdir(path)}
    if folders and len(folders) != len(sources):
        raise UsageError("vertexflow run: give every --input as a folder, or every one as a .npy file")
    if folders:
        if batch_size is not None:
            raise UsageError("vertexflow run: --batch-size splits .npy files; a folder's files are its steps")
        stems = {name: sorted(e[:-4] for e in os.listdir(path) if e.endswith(".npy")) for name, path in folders.items()}
        first, *others = stems.items()
        for name, names in others:
            if names != first[1]:
                raise UsageError(f"vertexflow run: folders {sources[first[0]]} and {sources[name]} hold different "
                                 "file names; each step takes the same name from every folder")
        return [{name: load(os.path.join(path, stem + ".npy")) for name, path in folders.items()}
                for stem in first[1]], first[1]
    arrays = {name: load(path) for name, path in sources.items()}
    if batch_size is None:
        return [arrays], None
    lengths = {name: (len(a) if a.ndim else None) for name, a in arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise UsageError("vertexflow run: --batch-size needs inputs with the same number of rows, got "
                         + ", ".join(f"{k}: {'a scalar' if v is None else v}" for k, v in lengths.items()))
    total = next(iter(lengths.values()))
    return [{name: a[i:i + batch_size] for name, a in arrays.items()} for i in range(0, total, batch_size)], None


EXAMPLES = {"mlp": "mlp_digits.py", "autoencoder": "autoencoder.py", "cnn": "cnn.py", "linear": "linear_regression.py"}


def _train(example: str, argv: list[str]) -> int:
    """Run examples/<program> from the source tree with its own arguments."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "examples", EXAMPLES[example])
    if not os.path.exists(path):
        raise UsageError(f"vertexflow train: the examples are not installed with this copy of vertexflow (looked "
                         f"for {path}); install from a source checkout: pip install -e .")
    sys.path.insert(0, os.path.dirname(path))
    saved, sys.argv = sys.argv, ["vertexflow", "train", example, *argv]  # the example names the command typed
    try:
        module = runpy.run_path(path, run_name="vertexflow_example")
        try:
            module["main"](argv)
        except SystemExit as exc:  # the example's own argparse: its message is already on stderr
            return exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.argv = saved
        sys.path.remove(os.path.dirname(path))
    return 0


def _trace(args) -> int:
    import vertexflow as vf

    from .benchmarks.configs import Config, runner
    from .benchmarks.measure import warmup_units
    from .machine import cores

    html = args.out
    json_path = os.path.splitext(html)[0] + ".json"
    if args.open is not None:
        if args.target is not None or args.compare:
            raise UsageError("vertexflow trace: --open takes a saved trace; give no target or --compare with it")
        try:
            tracer = vf.Tracer.load(args.open)
        except (ValueError, KeyError, json_errors()) as exc:
            raise UsageError(f"vertexflow trace: {args.open}: not a trace vertexflow wrote ({exc})") from None
        tracer.save_html(html, title=os.path.basename(args.open))
        print(f"{len(tracer.spans)} spans on {len(tracer.lanes())} lanes")
        print(f"trace viewer: {os.path.abspath(html)}")
        return 0
    if args.target is None:
        raise UsageError("vertexflow trace: give an example or a script to trace (or --open a saved trace)")
    workload = _trace_workload(args.target, args.batch_size)
    comparison = None
    if workload is not None:
        kinds = ["sequential", "actor-network"] if args.compare else [args.executor]
        configs = [Config(kind, True) for kind in kinds]
        runs = []
        try:
            for config in configs:
                runs.append(runner(config, workload, args.threads or cores()))
                # Warm-up, untraced, as long as a benchmark's: networks are wired, buffers
                # made and an actor executor's choice of schedule measured here.
                for _ in range(warmup_units(config, workload)):
                    runs[-1].unit()
            tracers = []
            with vf.trace() as tracer:
                for run in runs:
                    with vf.trace() as own:
                        for _ in range(args.steps):
                            run.unit()
                    tracers.append(own)
        finally:
            for run in runs:
                run.close()
        if args.compare:
            comparison = tracers[0].compare(tracers[1])
        title = f"{workload.name} on {type(runs[-1].executor).__name__}"
    else:
        with vf.trace() as tracer:
            runpy.run_path(args.target, run_name="__main__")
        title = os.path.basename(args.target)
    if not tracer.spans:
        raise UsageError("vertexflow trace: nothing was traced: the script ran no executor")
    if args.compare and comparison is None:
        comparison = _compare_tracks(tracer)
    if comparison is not None:
        comparison.save_html(html, title=f"{title}: sequential against concurrent")
        print(comparison)
    else:
        tracer.save_html(html, title=title)
    tracer.save(json_path)
    print(f"{len(tracer.spans)} spans on {len(tracer.lanes())} lanes")
    print(f"trace viewer: {os.path.abspath(html)}")
    print(f"Chrome trace: {os.path.abspath(json_path)}")
    if args.graph:
        dot_path = os.path.splitext(html)[0] + ".dot"
        with open(dot_path, "w") as f:
            f.write(_coloured_dot(tracer))
        print(f"graph: {os.path.abspath(dot_path)}  (dot -Tsvg {os.path.basename(dot_path)} > graph.svg)")
    for track in tracer.track_ids():
        summary = tracer.summary(track=track)
        print(f"{tracer.track_label(track)}: wall {summary.wall * 1e3:.1f} ms, work {summary.total_work * 1e3:.1f} ms, "
              f"parallelism {summary.parallelism:.2f}, critical path {summary.critical_path * 1e3:.1f} ms, "
              f"efficiency {summary.efficiency:.0%}")
    return 0


def json_errors():
    import json

    return json.JSONDecodeError


def _compare_tracks(tracer):
    """The comparison of a script's sequential executor with its concurrent one (one track each)."""
    from .trace.compare import compare

    labels = {t: tracer.track_label(t) for t in tracer.track_ids()}
    sequential = [t for t, label in labels.items() if label.startswith("SequentialExecutor")]
    concurrent = [t for t, label in labels.items() if not label.startswith("SequentialExecutor") and t]
    if not sequential or not concurrent:
        raise UsageError("vertexflow trace --compare: the script must run a SequentialExecutor and a concurrent "
                         f"executor on its graph; it ran: {', '.join(labels.values())}")
    return compare(tracer, tracer, sequential[0], concurrent[0])


def _coloured_dot(tracer) -> str:
    totals: dict[str, float] = {}
    for s in tracer.spans:
        totals[s.vertex] = totals.get(s.vertex, 0.0) + s.duration
    top = max(totals.values(), default=1.0) or 1.0
    colours = {name: f"0.0 {min(0.15 + 0.85 * t / top, 1.0):.3f} 1.0" for name, t in totals.items()}
    return tracer.graph.to_dot(highlight=colours)


if __name__ == "__main__":
    sys.exit(main())
