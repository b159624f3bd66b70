"""The `vertexflow` command.

    vertexflow demo      build a wide inference graph, run it, compare executors
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vertexflow", description="Dataflow graphs where every vertex is an actor.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a wide inference graph on each executor and compare")
    demo.add_argument("--members", type=int, default=4, help="MLPs in the ensemble (parallel branches)")
    demo.add_argument("--batch", type=int, default=256)
    demo.add_argument("--repeat", type=int, default=10, help="timed runs per executor")
    demo.add_argument("--out", default=".", help="directory for trace.html and trace.json")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(members=args.members, batch=args.batch, repeat=args.repeat, out=args.out)
    return 2


if __name__ == "__main__":
    sys.exit(main())
