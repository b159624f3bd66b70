"""The team's compiled side (`team.py`): the workers' loop, the callers' side and OpenBLAS's callback.

Module-level functions of a module that imports numba, so that numba's disk cache finds them again
in the next process: a kernel defined inside a function, whose free variables are other compiled
functions, got a new cache entry in every process (its closure's bytes change from process to
process) and was compiled again every time.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import types

from .atomics import (
    address_of,
    call_fallback,
    call_job,
    call_pointer,
    call_self,
    load,
    pause,
    store,
    swap,
    symbol_address,
)
from .team import (
    ASLEEP,
    BLAS_JOB,
    BLOCK,
    CONTROL,
    CONTROL_SYMBOL,
    DATA,
    DONE,
    EXTRA,
    FALLBACK,
    FALLBACK_PRODUCTS,
    GATE,
    GENERATION,
    JOB,
    KIND,
    LOCK,
    LOCK_SPINS,
    OWNER,
    PARK,
    PTHREAD_SELF,
    PYTHON_JOB,
    RAN,
    ROUTINE,
    SEM_POST,
    SEM_WAIT,
    SEMAPHORE_BYTES,
    SEMAPHORES,
    TEAM_PRODUCTS,
    THREAD,
    WORKERS,
)

# The control block's address, for the callback: a symbol the linker resolves in each process.
llvm.add_symbol(CONTROL_SYMBOL, CONTROL)


@numba.njit(nogil=True, cache=True)
def serve(control, worker, semaphore, spins, seen, report):
    """A worker's wait: OpenBLAS's jobs run here; returns the generation of a Python job, or -1
    to stop. `report`: mark `seen` done first (the Python job just run)."""
    base = BLOCK * (worker + 1)
    store(control, base + THREAD, call_self(load(control, PTHREAD_SELF)))
    if report:
        store(control, base + DONE, seen)
    count = 0
    while True:
        generation = load(control, base + GENERATION)
        if generation != seen:
            seen = generation
            kind = load(control, base + KIND)
            if kind == BLAS_JOB:
                call_job(load(control, base + ROUTINE), load(control, base + JOB), load(control, base + DATA),
                         load(control, base + EXTRA))
                store(control, base + RAN, load(control, base + RAN) + 1)
                store(control, base + DONE, generation)
                count = 0
                continue
            if kind == PYTHON_JOB:
                # A gated job waits until the caller has given the GIL up for its own part: taken
                # while the caller still holds it, the GIL would put this thread to sleep.
                while load(control, base + EXTRA) != 0 and load(control, GATE) == 0:
                    pause()
                return generation
            store(control, base + DONE, generation)
            return -1
        count += 1
        pause()
        if count >= spins or load(control, PARK) != 0:
            store(control, base + ASLEEP, 1)
            if load(control, base + GENERATION) == seen:  # nothing published meanwhile
                call_pointer(load(control, SEM_WAIT), semaphore)
            store(control, base + ASLEEP, 0)
            count = 0

@numba.njit(nogil=True, cache=True)
def try_lock(control, tries):
    """Take the team's lock within `tries` spins: 1 if taken."""
    for _ in range(tries):
        if load(control, LOCK) == 0 and swap(control, LOCK, 0, 1):
            store(control, OWNER, call_self(load(control, PTHREAD_SELF)))
            return 1
        pause()
    return 0

@numba.njit(nogil=True, cache=True)
def publish(control, count, kind, routine, data, size, extra):
    for worker in range(count):
        base = BLOCK * (worker + 1)
        store(control, base + KIND, kind)
        store(control, base + ROUTINE, routine)
        store(control, base + JOB, worker + 1)
        store(control, base + DATA, data + (worker + 1) * size)
        store(control, base + EXTRA, extra)
        store(control, base + GENERATION, load(control, base + GENERATION) + 1)
        if load(control, base + ASLEEP) != 0:
            call_pointer(load(control, SEM_POST), load(control, SEMAPHORES) + SEMAPHORE_BYTES * worker)

@numba.njit(nogil=True, cache=True)
def finish(control, count):
    """Wait until the first `count` workers are done, then free the lock."""
    for worker in range(count):
        base = BLOCK * (worker + 1)
        generation = load(control, base + GENERATION)
        while load(control, base + DONE) != generation:
            pause()
    store(control, GATE, 0)
    store(control, OWNER, 0)
    store(control, LOCK, 0)

# Not cached: numba's cache index would hold the kernel's type, and cannot store it once the
# kernel of another process's entry is gone ("underlying object has vanished").
@numba.njit(nogil=True)
def gate_then(control, kernel, arguments):
    """Open the gate, then run the caller's part: both without the GIL."""
    store(control, GATE, 1)
    kernel(*arguments)

@numba.njit(nogil=True, cache=True)
def is_worker(control, thread):
    for worker in range(load(control, WORKERS)):
        if load(control, BLOCK * (worker + 1) + THREAD) == thread:
            return True
    return False

@numba.njit(nogil=True, cache=True)
def on_team(control, routine, count, data, size, extra):
    """Jobs 0 to count - 1 of a C routine(job, data + job * size, extra) at once: job 0 on this thread,
    the others on the workers, none taking the GIL. False, having run nothing, where the team cannot
    take them (too many jobs; this thread holds the team's lock or is one of its workers; the lock
    stays taken by another caller)."""
    thread = call_self(load(control, PTHREAD_SELF))
    if count - 1 > load(control, WORKERS) or thread == load(control, OWNER) or is_worker(control, thread):
        return False
    if try_lock(control, load(control, LOCK_SPINS)) != 1:
        return False
    publish(control, count - 1, BLAS_JOB, routine, data, size, extra)
    call_job(routine, 0, data, extra)
    finish(control, count - 1)
    return True

@numba.njit(nogil=True, cache=True)
def run_jobs(control, routine, count, data, size, extra):
    """Jobs of a C routine as `on_team` runs them, or where the team cannot take them, one after another
    on this thread (jobs that do not wait for each other, unlike OpenBLAS's)."""
    if count > 1 and on_team(control, routine, count, data, size, extra):
        return
    for job in range(count):
        call_job(routine, job, data + job * size, extra)

@numba.cfunc(types.void(types.int32, types.voidptr, types.int32, types.uint64, types.voidptr, types.int32),
             cache=True)
def blas_callback(sync, routine, jobs, size, data, extra):
    control = symbol_address(CONTROL_SYMBOL)
    routine_address, data_address = address_of(routine), address_of(data)
    count, extra = np.int64(jobs), np.int64(extra)
    if count <= 1:
        call_job(routine_address, 0, data_address, extra)
        return
    if on_team(control, routine_address, count, data_address, np.int64(size), extra):
        store(control, TEAM_PRODUCTS, load(control, TEAM_PRODUCTS) + 1)
        return
    store(control, FALLBACK_PRODUCTS, load(control, FALLBACK_PRODUCTS) + 1)
    call_fallback(load(control, FALLBACK), routine_address, count, np.int64(size), data_address, extra)

@numba.njit(nogil=True, cache=True)
def spin(count):
    for _ in range(count):
        pause()
