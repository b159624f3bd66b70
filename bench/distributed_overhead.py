"""What a cut edge costs: RayExecutor's pipelined stream against a plain Ray actor call and Dask distributed.

    python bench/distributed_overhead.py [--steps 400] [--rounds 5] [--json overhead.json]

A graph of two tiny stages (a tanh each, on a 64x64 float64 array) is cut in two
partitions with one edge between them, so a stream step through RayExecutor is
almost nothing but the edge: its time per step, in a long stream, is the
overhead a cut edge adds when steps are pipelined (with chunk=1, every step its
own Ray calls; by default, steps batched per call). The references, on the same
array: a plain Ray actor method round trip (submit, run, get), and a Dask
distributed `client.submit(...).result()` round trip on a LocalCluster of 2
worker processes. Medians over `--rounds` rounds, after one warm-up round. Needs
the ray extra and distributed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def _identity(x):
    return x


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import ray

    import vertexflow as vf
    from vertexflow.ray import RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    array = np.random.default_rng(0).normal(size=(64, 64))
    g = vf.Graph("edge")
    x = g.input("x", (64, 64), "float64")
    first = vf.tanh(x, name="first")
    second = vf.tanh(first, name="second")
    feeds = [{x: array + k} for k in range(args.steps)]
    figures: dict[str, list[float]] = {"ray actor round trip": [], "RayExecutor stream, chunk=1": [],
                                       "RayExecutor stream, chunked": [], "dask distributed submit round trip": []}

    @ray.remote
    class Echo:
        def call(self, value):
            return value

    echo = Echo.remote()
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    with RayExecutor(g, partitions=2, executor="sequential") as ex:  # one tanh each, one cut edge
        for round_ in range(args.rounds + 1):
            start = time.perf_counter()
            for _ in range(args.steps // 4):
                ray.get(echo.call.remote(array))
            trip = (time.perf_counter() - start) / (args.steps // 4)
            start = time.perf_counter()
            list(ex.run_stream(feeds, second, chunk=1))
            single = (time.perf_counter() - start) / args.steps
            start = time.perf_counter()
            list(ex.run_stream(feeds, second))
            chunked = (time.perf_counter() - start) / args.steps
            start = time.perf_counter()
            for _ in range(args.steps // 20):
                client.submit(_identity, array, pure=False).result()
            dask_trip = (time.perf_counter() - start) / (args.steps // 20)
            if round_:  # the first round warms up
                for name, value in zip(figures, (trip, single, chunked, dask_trip)):
                    figures[name].append(value)
        text = ex.describe(second, feeds[0])
    client.close()
    cluster.close()
    print(text.splitlines()[-2] if "cut edges" in text else text)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, value in medians.items():
        print(f"{name:<38} {value * 1e3:8.3f} ms")
    print(f"a cut edge in a pipelined stream costs {medians['RayExecutor stream, chunked'] * 1e3:.3f} ms a step "
          f"({medians['RayExecutor stream, chunk=1'] * 1e3:.3f} ms unbatched) against "
          f"{medians['ray actor round trip'] * 1e3:.3f} ms for a plain Ray call and "
          f"{medians['dask distributed submit round trip'] * 1e3:.3f} ms for a Dask distributed submit")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "rounds": args.rounds, "seconds": figures, "medians": medians}, f, indent=1)
    return medians


if __name__ == "__main__":
    main()
