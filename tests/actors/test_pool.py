"""WorkerPool: calls waiting for a worker are taken lowest priority first; a stop comes after them."""

from __future__ import annotations

import threading

import trio
import trio.testing

from vertexflow.actors.pool import WorkerPool


async def test_waiting_calls_are_taken_lowest_priority_first():
    pool = WorkerPool(1)
    gate = threading.Event()
    order: list[str] = []
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run, gate.wait)  # holds the only worker
                await trio.testing.wait_all_tasks_blocked()
                for name, priority in [("late step", (2.0, 0)), ("b", (1.0, 7)), ("a", (1.0, 3)),
                                       ("first come", (1.0, 5)), ("second come", (1.0, 5))]:
                    nursery.start_soon(lambda n=name, p=priority: pool.run(order.append, n, priority=p))
                    await trio.testing.wait_all_tasks_blocked()
                gate.set()
    finally:
        pool.close()
    assert order == ["a", "first come", "second come", "b", "late step"]


async def test_close_runs_the_queued_calls_before_stopping():
    pool = WorkerPool(1)
    gate = threading.Event()
    done: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, gate.wait)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(lambda: pool.run(done.append, 1, priority=(9e9, 0)))
            await trio.testing.wait_all_tasks_blocked()
            workers = pool.threads
            closing = threading.Thread(target=pool.close)
            closing.start()
            gate.set()
    closing.join(10)
    assert done == [1] and not closing.is_alive() and workers and not any(t.is_alive() for t in workers)
