"""The `vertexflow` command.

    vertexflow demo                        a wide graph on both executors, compared, with a trace
    vertexflow bench --suite quick         executors against each other, numpy and Dask
    vertexflow trace wide --out t.html     trace a built-in example (or a script) into the viewer
    vertexflow train mlp --epochs 30       the training examples in examples/ (mlp, autoencoder, cnn, linear)
    vertexflow run model.onnx --input x=x.npy    run an ONNX model, outputs written as .npy
"""

from __future__ import annotations

import argparse
import os
import runpy
import shlex
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vertexflow", description="Dataflow graphs where every vertex is an actor.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run a wide graph on the sequential and actor executors and compare")
    demo.add_argument("--branches", type=int, default=8, help="independent branches (default 8)")
    demo.add_argument("--depth", type=int, default=6, help="expensive ops per branch (default 6)")
    demo.add_argument("--rows", type=int, default=256)
    demo.add_argument("--cols", type=int, default=512)
    demo.add_argument("--repeat", type=int, default=5, help="timed runs per executor")
    demo.add_argument("--threads", type=int, default=None, help="worker threads (default: the cores)")
    demo.add_argument("--out", default=".", help="directory for trace.html and trace.json")

    from .benchmarks.families import FAMILIES
    from .benchmarks.report import SUITES

    bench = commands.add_parser("bench", help="measure executors on graph families")
    bench.add_argument("--suite", choices=sorted(SUITES), default="quick")
    bench.add_argument("--family", action="append", choices=sorted(FAMILIES), help="only these families (repeatable)")
    bench.add_argument("--size", action="append", default=[], metavar="KEY=VALUE",
                       help="override a family size, e.g. --size rows=128 (repeatable)")
    bench.add_argument("--threads", type=int, action="append", help="actor thread counts (repeatable; default 1 and the cores)")
    bench.add_argument("--repeat", type=int, default=3, help="rounds per workload (default 3)")
    bench.add_argument("--no-dask", action="store_true", help="leave out the Dask peer")
    bench.add_argument("--json", help="write the report as JSON (schema: bench/README.md)")
    bench.add_argument("--markdown", help="write the table as Markdown")
    bench.add_argument("--plot", help="write a PNG plot (needs matplotlib)")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.add_argument("--tiny", action="store_true", help="shrink every workload to run in seconds (a smoke test)")

    trace = commands.add_parser("trace", help="trace an example or a script into the HTML viewer and Chrome JSON")
    trace.add_argument("target", help=f"a built-in example ({', '.join(sorted(FAMILIES))}) or a Python script")
    trace.add_argument("--out", default="trace.html", help="HTML output; the JSON goes beside it")
    trace.add_argument("--executor", choices=["actor", "sequential"], default="actor")
    trace.add_argument("--threads", type=int, default=None)
    trace.add_argument("--steps", type=int, default=2, help="steps to run (examples only)")
    trace.add_argument("--graph", action="store_true", help="also write the graph as Graphviz (.dot), coloured by time")

    run = commands.add_parser("run", help="run an ONNX model on the inputs given as .npy files")
    run.add_argument("model", help="an .onnx file")
    run.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="an input (repeatable)")
    run.add_argument("--executor", choices=["sequential", "actor"], default="sequential")
    run.add_argument("--out", default=".", help="directory for the outputs (OUTPUT_NAME.npy)")
    run.add_argument("--trace", default=None, help="also write a trace viewer here (and its JSON beside it)")

    train = commands.add_parser("train", help="run a training example: mlp, autoencoder, cnn or linear",
                                 add_help=False)
    train.add_argument("example", choices=sorted(EXAMPLES))
    train.add_argument("rest", nargs=argparse.REMAINDER, help="the example's own options (see --help)")

    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        return _train(args.example, list(extra) + list(args.rest))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(branches=args.branches, depth=args.depth, rows=args.rows, cols=args.cols,
                        repeat=args.repeat, threads=args.threads, out=args.out)
    if args.command == "bench":
        return _bench(args, argv)
    if args.command == "run":
        return _run_onnx(args)
    return _trace(args)


def _run_onnx(args) -> int:
    import numpy as np

    import vertexflow as vf
    from vertexflow import onnx as vf_onnx

    feeds = {}
    for item in args.input:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--input takes NAME=FILE.npy, got {item!r}")
        feeds[name] = np.load(path, allow_pickle=False)
    model = vf_onnx.load(args.model)
    missing = [n.name for n in model.inputs if n.name not in feeds]
    if missing:
        raise SystemExit(f"missing --input for {', '.join(missing)} (the model's inputs: "
                         f"{', '.join(f'{n.name} {n.spec}' for n in model.inputs)})")
    with vf.trace() as tracer:
        outputs = model.run(feeds, executor=args.executor)
    model.close()
    os.makedirs(args.out, exist_ok=True)
    for node, value in zip(model.outputs, outputs):
        path = os.path.join(args.out, node.name.replace("/", "_") + ".npy")
        np.save(path, np.asarray(value), allow_pickle=False)
        print(f"{node.name}: {np.shape(value)} {np.asarray(value).dtype} -> {path}")
    if args.trace:
        tracer.save_html(args.trace, title=f"{os.path.basename(args.model)} on {args.executor}")
        tracer.save(os.path.splitext(args.trace)[0] + ".json")
        print(f"trace viewer: {os.path.abspath(args.trace)}")
    return 0


EXAMPLES = {"mlp": "mlp_digits.py", "autoencoder": "autoencoder.py", "cnn": "cnn.py", "linear": "linear_regression.py"}


def _train(example: str, argv: list[str]) -> int:
    """Run examples/<program> from the source tree with its own arguments."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "examples", EXAMPLES[example])
    if not os.path.exists(path):
        raise SystemExit(f"the examples are not installed with this copy of vertexflow (looked for {path}); "
                         "install from a source checkout: pip install -e .")
    sys.path.insert(0, os.path.dirname(path))
    try:
        module = runpy.run_path(path, run_name="vertexflow_example")
        module["main"](argv)
    finally:
        sys.path.remove(os.path.dirname(path))
    return 0


def _bench(args, argv) -> int:
    from .benchmarks.report import run_suite, table, write_all

    sizes = {}
    for item in args.size:
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--size takes KEY=VALUE, got {item!r}")
        sizes[key] = int(value)
    report = run_suite(args.suite, families=args.family, threads=args.threads, repeat=args.repeat,
                       with_dask=not args.no_dask, progress=not args.quiet, sizes=sizes, tiny=args.tiny)
    report["command"] = "vertexflow " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(table(report))
    write_all(report, args.json, args.markdown, args.plot)
    return 0


def _trace(args) -> int:
    import vertexflow as vf

    from .benchmarks.families import FAMILIES
    from .benchmarks.measure import _unit
    from .executor import make_executor
    from .machine import cores

    html = args.out
    json_path = os.path.splitext(html)[0] + ".json"
    with vf.trace() as tracer:
        if args.target in FAMILIES:
            workload = FAMILIES[args.target]()
            options = {"threads": args.threads or cores()} if args.executor == "actor" else {}
            executor = make_executor(workload.graph, args.executor, **options)
            unit = _unit(workload, executor)
            for _ in range(args.steps):
                unit()
            executor.close()
            title = f"{workload.name} on {type(executor).__name__}"
        elif os.path.exists(args.target):
            runpy.run_path(args.target, run_name="__main__")
            title = os.path.basename(args.target)
        else:
            raise SystemExit(f"{args.target!r} is neither a built-in example nor a script")
    if not tracer.spans:
        raise SystemExit("nothing was traced: the script ran no executor")
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
    summary = tracer.summary()
    print(f"wall {summary.wall * 1e3:.1f} ms, work {summary.total_work * 1e3:.1f} ms, "
          f"parallelism {summary.parallelism:.2f}, critical path {summary.critical_path * 1e3:.1f} ms")
    return 0


def _coloured_dot(tracer) -> str:
    totals: dict[str, float] = {}
    for s in tracer.spans:
        totals[s.vertex] = totals.get(s.vertex, 0.0) + s.duration
    top = max(totals.values(), default=1.0) or 1.0
    colours = {name: f"0.0 {min(0.15 + 0.85 * t / top, 1.0):.3f} 1.0" for name, t in totals.items()}
    return tracer.graph.to_dot(highlight=colours)


if __name__ == "__main__":
    sys.exit(main())
