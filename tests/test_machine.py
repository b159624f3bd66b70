"""BLAS's thread counts as kernels and executors share them out: on any thread, and at once."""

from __future__ import annotations

import threading

import pytest

from vertexflow import machine

LIBS = machine._blas_controller().lib_controllers
needs_blas = pytest.mark.skipif(not LIBS, reason="numpy's BLAS is not one threadpoolctl controls")


def counts() -> list[int]:
    return [lib.num_threads for lib in LIBS]


@pytest.fixture
def two_threads():
    """BLAS on two threads, set from this (the main) thread, which then holds threadpoolctl's control."""
    before = counts()
    with machine._count_lock:
        machine._set_counts(LIBS, [2] * len(LIBS))
    yield
    with machine._count_lock:
        machine._set_counts(LIBS, before)


def on_threads(*targets, timeout: float = 20.0) -> None:
    """Run each target on a thread of its own; re-raise the first error."""
    errors: list[BaseException] = []

    def guard(target):
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - handed to the test below
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread did not finish"
    if errors:
        raise errors[0]


@needs_blas
def test_a_split_on_another_thread_than_the_one_that_set_the_count_makes_blas_single_threaded(two_threads):
    """threadpoolctl ignores a count set by any thread but the first to set it: an actor's worker thread
    once split a convolution over two threads each calling a two-thread BLAS."""
    seen = []

    def kernel():
        with machine.blas_split(2) as threads:
            seen.append((threads, counts()))

    on_threads(kernel)
    assert seen == [(2, [1] * len(LIBS))]
    assert counts() == [2] * len(LIBS)
    with machine.blas_split(2):  # and the main thread takes the control back
        assert counts() == [1] * len(LIBS)
    assert counts() == [2] * len(LIBS)


@needs_blas
def test_two_kernels_split_their_work_at_once_and_blas_comes_back_when_the_last_ends(two_threads):
    """Both must be inside their blocks together to pass the barrier (a lock held for a whole block
    made the second wait for the first: two actors' convolutions ran one after the other)."""
    inside = threading.Barrier(2, timeout=10)
    first_out = threading.Event()
    seen = []

    def first():
        with machine.blas_split(2) as threads:
            inside.wait()
            seen.append(("first", threads, counts()))
        first_out.set()

    def second():
        with machine.blas_split(2) as threads:
            inside.wait()
            assert first_out.wait(10)
            seen.append(("second, the first gone", threads, counts()))  # still single-threaded

    on_threads(first, second)
    # the cores shared: the block that came second got what the first left, one thread
    assert sorted(threads for _, threads, _ in seen) == [1, 2]
    assert all(during == [1] * len(LIBS) for _, _, during in seen)
    assert counts() == [2] * len(LIBS)
    with machine.blas_split(2) as threads:  # every thread given back
        assert threads == 2


@needs_blas
def test_an_executor_sharing_the_cores_during_a_split_takes_effect_when_the_split_ends(two_threads):
    share = machine.BlasThreads()
    share.cores = 2
    with machine.blas_split(2):
        with share.sharing(2):  # two parallel branches: one thread each, once the kernel is done
            assert counts() == [1] * len(LIBS)
        with share.sharing(1):
            assert counts() == [1] * len(LIBS)  # the kernel's single thread until its block ends
        block = share.sharing(2)
        block.__enter__()
    assert counts() == [1] * len(LIBS)  # the share in force
    block.__exit__(None, None, None)
    assert counts() == [2] * len(LIBS)  # the original
