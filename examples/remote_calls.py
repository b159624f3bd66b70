"""Vertices that wait: numpy vertices and async calls to a server, in one graph.

    python examples/remote_calls.py --calls 8 --latency 0.05

The program starts a small TCP server of its own on 127.0.0.1 (it answers each
request after `--latency` seconds, as a remote model would), then builds a
graph whose `lookup` vertices send their input to it and await the reply. On
the actor executor each lookup is awaited by its actor on the trio thread,
holding no worker thread, so all the calls are in flight at once; the tape
awaits them one after another. Both give the same bits.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import numpy as np
import trio

import vertexflow as vf


async def _receive_all(stream: trio.SocketStream) -> bytes:
    """Everything the peer sends until it closes its side (one message per connection)."""
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


def serve(latency: float):
    """A server's handler: reads a float64 array and answers, after `latency` seconds, with its square root."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            request = np.frombuffer(await _receive_all(stream), np.float64)
            await trio.sleep(latency)
            await stream.send_all(np.sqrt(np.abs(request)).tobytes())

    return handler


class Lookup(vf.ops.Op):
    """Sends its input to the server at `port` and returns the reply: an async vertex."""

    name = "lookup"

    def __init__(self, port: int):
        self.port = port

    def infer(self, x):
        return x

    async def forward(self, xp, x):
        async with await trio.open_tcp_stream("127.0.0.1", self.port) as stream:
            await stream.send_all(np.ascontiguousarray(x, np.float64).tobytes())
            await stream.send_eof()
            reply = await _receive_all(stream)
        return np.frombuffer(reply, np.float64).reshape(x.shape).astype(x.dtype)

    def cost(self, x):
        return float(np.prod(x.shape))


def build(port: int, calls: int, rows: int = 32, width: int = 64):
    """x -> tanh(x @ w) -> `calls` lookups of scaled copies -> their mean: numpy work around the calls."""
    rng = np.random.default_rng(0)
    g = vf.Graph("remote_calls")
    x = g.input("x", shape=(None, width), dtype="float64")
    w = g.param("w", value=rng.normal(scale=width**-0.5, size=(width, width)))
    h = vf.tanh(x @ w, name="hidden")
    answers = [Lookup(port)(h * float(k + 1), name=f"lookup_{k}") for k in range(calls)]
    out = vf.mean(vf.concat(answers, axis=1) @ rng.normal(size=(calls * width, 4)), axis=0, name="out")
    return g, {x: rng.normal(size=(rows, width))}, out


async def main_async(calls: int, latency: float) -> int:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve(latency), 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        g, feeds, out = build(port, calls)

        with vf.ActorExecutor(g, threads=2) as actors:
            start = time.perf_counter()
            concurrent = await actors.arun(feeds, out, timeout=30)
            actor_s = time.perf_counter() - start
            print(actors.describe(out).splitlines()[0])

        # The tape runs on a worker thread and awaits each call on this loop (trio.from_thread).
        tape = vf.SequentialExecutor(g)
        start = time.perf_counter()
        sequential = await trio.to_thread.run_sync(tape.run, feeds, out)
        tape_s = time.perf_counter() - start
        nursery.cancel_scope.cancel()

    assert np.array_equal(concurrent, sequential), "the executors disagree"
    print(f"{calls} calls of {latency * 1e3:.0f} ms: actors {actor_s * 1e3:.0f} ms, tape {tape_s * 1e3:.0f} ms "
          f"({tape_s / actor_s:.1f}x); the same values on both")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--calls", type=int, default=8, help="lookup vertices in the graph")
    p.add_argument("--latency", type=float, default=0.05, help="seconds the server takes to answer")
    args = p.parse_args(argv)
    if args.calls < 1 or not args.latency >= 0:
        p.error("--calls must be at least 1 and --latency at least 0")
    return trio.run(main_async, args.calls, args.latency)


if __name__ == "__main__":
    sys.exit(main())
