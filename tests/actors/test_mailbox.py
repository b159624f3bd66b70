"""Mailbox: values kept per step until taken; a worker segment started by whichever thread posts its last
input; a parked taker woken from another thread; cancellation leaves nothing behind."""

from __future__ import annotations

import threading

import pytest
import trio

from vertexflow.actors.mailbox import Mailbox
from vertexflow.actors.pool import WorkerPool
from vertexflow.errors import InternalError


async def test_a_segment_is_queued_by_the_thread_that_posts_its_last_input():
    box = Mailbox(16)
    pool = WorkerPool(1)
    ran_on: list[str] = []
    put_from: list[str] = []
    put = pool.put
    pool.put = lambda job: (put_from.append(threading.current_thread().name), put(job))
    values: dict = {}
    try:
        with trio.fail_after(10):
            job = pool.job(lambda: ran_on.append(threading.current_thread().name) or values[1] + values[2])
            box.post(0, "forward", {1: 10})
            box.start_when_in(0, "forward", (1, 2), job, values, pool)
            assert put_from == [] and values == {}  # one input in, one missing: nothing taken, nothing queued
            poster = threading.Thread(target=box.post_from_thread, args=(0, "forward", {2: 5, 3: 7},
                                                                         trio.lowlevel.current_trio_token()),
                                      name="a-poster")
            poster.start()
            assert await job.wait() == 15
            poster.join()
    finally:
        pool.close()
    assert put_from == ["a-poster"] and ran_on[0].startswith("vf-worker")
    assert box.has(0, "forward", 3) and not box.has(0, "forward", 1)  # the rest stays for later takes


async def test_a_taker_parked_on_the_trio_thread_is_woken_by_a_post_from_another_thread():
    box = Mailbox(4)
    token = trio.lowlevel.current_trio_token()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, box.post_from_thread, 3, "forward", {9: "nine"}, token)
            assert await box.take(3, "forward", 9) == "nine"
    assert box.held == 0 and not box.kept


async def test_a_cancelled_take_or_pending_segment_leaves_the_box_usable():
    box = Mailbox(4)
    pool = WorkerPool(1)
    try:
        with trio.move_on_after(0.05):
            await box.take(0, "forward", 1)
        with trio.move_on_after(0.05):
            job = pool.job(lambda: None)
            box.start_when_in(0, "forward", (1,), job, {}, pool)
            await job.wait()
        box.post(0, "forward", {1: "late"})  # nobody waits any more: kept, nothing queued
        assert pool.handed == 0
        assert await box.take(0, "forward", 1) == "late"
    finally:
        pool.close()


def test_more_values_than_the_window_allows_is_vertexflows_bug():
    box = Mailbox(2)
    box.post(0, "forward", {1: 1, 2: 2})
    with pytest.raises(InternalError, match="inbox overflowed"):
        box.post(1, "forward", {1: 1})
