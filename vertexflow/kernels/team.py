"""A team of threads that stay awake between calls: the kernels' splits and OpenBLAS's parallel
products run on the same threads, one a core.

Why: on two cores, a kernel split over a thread pool got 1.2-1.6x, not 2x. OpenBLAS keeps threads
of its own, and after each parallel product its worker spins on the other core for about 0.1 s, so
the pool thread sharing that core ran its half 1.75x slower; and a pool thread asleep took 12-90 us
to wake on this machine's VM. onnxruntime runs its products and element-wise passes on one pool
whose threads spin between them. So does this team: OpenBLAS (0.3.27 and later) hands its jobs
to the team through its caller-managed threading callback, the kernels hand theirs through
`Team.split`, and the workers spin a few milliseconds for the next before they sleep.

How work moves. A control block (an int64 array) has a global part (the team's lock, the lock's
holder, the park flag, the number of workers, the fallback routine) and one part per worker:
a generation counter, the job (kind, routine, index, data, extra), the generation last done, and
whether the worker sleeps. A caller takes the lock (compare-and-swap), writes each worker's job,
bumps its generation and posts its semaphore if it sleeps; runs its own share; then spins until
every worker has marked the generation done, and frees the lock. A worker spins (x86's PAUSE)
on its generation: an OpenBLAS job it runs right there, without the GIL (a compiled C callback
calls it, the workers' loop is compiled too); a Python job (a kernel split's part) it returns to
Python for. With nothing for `SPIN_SECONDS`, or the team parked (an executor running vertices side
by side, which want the cores), it says it sleeps, checks its generation once more and waits on
its semaphore.

Where the team cannot serve a parallel product (more jobs than workers, a call from one of the
workers or from the lock's holder, or the lock held too long by another caller), it runs the jobs
on threads started for them, as a correct if slow fallback. A forked child and the interpreter at
exit hand OpenBLAS its own threads back.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..machine import cores, openblas_functions, threads_in_force
from . import available

# The control block's slots: a global block, then a block of 16 (two cache lines) per worker.
# The global block also holds the C routines' addresses: compiled code cached on disk must not hold
# them as constants (they move from process to process).
(LOCK, OWNER, PARK, WORKERS, FALLBACK, TEAM_PRODUCTS, FALLBACK_PRODUCTS, LOCK_SPINS, SEM_WAIT, SEM_POST,
 PTHREAD_SELF, SEMAPHORES, GATE) = range(13)
GENERATION, KIND, ROUTINE, JOB, DATA, EXTRA, THREAD, DONE, ASLEEP, RAN = 0, 1, 2, 3, 4, 5, 6, 8, 9, 10
BLOCK = 16
BLAS_JOB, PYTHON_JOB, STOP = 1, 2, 3
MAX_WORKERS = 63
SEMAPHORE_BYTES = 64

# How long a worker spins for the next job before it sleeps. Between two calls of a model the team
# stays awake; an idle process burns at most this much of a core after its last call.
SPIN_SECONDS = 0.01
# How long a product's caller waits for the team's lock before it runs its jobs on threads of their
# own (another thread holds the team: a kernel's split of another vertex).
LOCK_SECONDS = 0.002

_control = np.zeros(BLOCK * (MAX_WORKERS + 1), np.int64)
CONTROL = _control.ctypes.data
CONTROL_SYMBOL = "vertexflow_team_control"
_semaphores = (ctypes.c_char * (SEMAPHORE_BYTES * MAX_WORKERS))()


def _loops():
    """The team's compiled side (`team_loops.py`), imported at first use (numba then)."""
    from . import team_loops

    return team_loops


_JOB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_int)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int)
def _blas_fallback(routine, jobs, size, data, extra):
    """OpenBLAS's jobs on threads of their own, all at once (its jobs wait for each other)."""
    run = _JOB(routine)
    threads = [threading.Thread(target=run, args=(job, data + job * size, extra), daemon=True) for job in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class Team:
    """The process's team: `workers` threads beside the callers (see the module docstring)."""

    def __init__(self, workers: int):
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"a team has 1 to {MAX_WORKERS} workers, not {workers}")
        kernels, libc = _loops(), ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.workers, self._libc = workers, libc
        self._tasks: list = [None] * workers
        self._errors: list[BaseException | None] = [None] * workers
        self._local = threading.local()
        self._spins = self._calibrate(kernels.spin)
        _control[:] = 0
        _control[LOCK_SPINS] = max(1, int(self._spins * LOCK_SECONDS / SPIN_SECONDS))
        _control[FALLBACK] = ctypes.cast(_blas_fallback, ctypes.c_void_p).value
        _control[SEM_WAIT] = ctypes.cast(libc.sem_wait, ctypes.c_void_p).value
        _control[SEM_POST] = ctypes.cast(libc.sem_post, ctypes.c_void_p).value
        _control[PTHREAD_SELF] = ctypes.cast(libc.pthread_self, ctypes.c_void_p).value
        _control[SEMAPHORES] = ctypes.addressof(_semaphores)
        for worker in range(workers):
            if libc.sem_init(ctypes.byref(_semaphores, SEMAPHORE_BYTES * worker), 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "the kernels' team could not make its semaphores")
        self._threads = [threading.Thread(target=self._serve, args=(worker,), name=f"vf-kernels-team-{worker}", daemon=True)
                         for worker in range(workers)]
        for thread in self._threads:
            thread.start()
        _control[WORKERS] = workers
        self.blas = _install_blas_callback(kernels.blas_callback.address)

    @staticmethod
    def _calibrate(spin) -> int:
        """How many spins make SPIN_SECONDS here (PAUSE takes 10 to 140 cycles by CPU)."""
        spin(1000)
        start = time.perf_counter()
        spin(20000)
        per_spin = max((time.perf_counter() - start) / 20000, 1e-9)
        return max(1000, int(SPIN_SECONDS / per_spin))

    def _serve(self, worker: int) -> None:
        serve, semaphore = _loops().serve, ctypes.addressof(_semaphores) + SEMAPHORE_BYTES * worker
        self._local.inside = True
        seen, report = 0, False
        while True:
            seen = serve(CONTROL, worker, semaphore, self._spins, seen, report)
            if seen < 0:
                return
            try:
                self._tasks[worker]()
            except BaseException as error:  # handed to the caller, which raises it
                self._errors[worker] = error
            report = True

    def split(self, work, items: int, parts: int) -> None:
        """work(first, last) over [0, items) in up to `parts` runs of items at once: the first on this
        thread, the others on the workers. Where the team is busy (another caller's split), or this is
        one of its parts, the whole runs here. The first error of a part is raised here."""
        self._split(lambda first, last: functools.partial(work, first, last), items, parts, None)

    def split_kernel(self, kernel, arguments, items: int, parts: int) -> None:
        """kernel(*arguments(first, last)) over [0, items) as `split` runs work, for a numba kernel that
        gives the GIL up (nogil): the workers take the GIL for their calls only once this thread has
        given it up for its own, so no thread sleeps waiting for it (a split's cost 40 -> 10 us)."""
        self._split(lambda first, last: functools.partial(kernel, *arguments(first, last)), items, parts,
                    (kernel, arguments))

    def _split(self, part, items: int, parts: int, kernel) -> None:
        parts = min(parts, self.workers + 1, items)
        kernels = _loops()
        if parts <= 1 or getattr(self._local, "inside", False) or not kernels.try_lock(CONTROL, 1):
            part(0, items)()
            return
        bounds = [items * k // parts for k in range(parts + 1)]
        for worker in range(parts - 1):  # the lock's holder alone writes the tasks
            self._tasks[worker] = part(bounds[worker + 1], bounds[worker + 2])
            self._errors[worker] = None
        kernels.publish(CONTROL, parts - 1, PYTHON_JOB, 0, 0, 0, int(kernel is not None))
        self._local.inside = True
        try:
            if kernel is None:
                part(bounds[0], bounds[1])()
            else:
                kernels.gate_then(CONTROL, kernel[0], kernel[1](bounds[0], bounds[1]))
        finally:
            _control[GATE] = 1  # the workers never wait for a gate this thread did not reach
            self._local.inside = False
            kernels.finish(CONTROL, parts - 1)
        for error in self._errors[:parts - 1]:
            if error is not None:
                raise error

    def park(self, parked: bool = True) -> None:
        """Parked, the workers sleep between jobs instead of spinning (the cores are wanted elsewhere)."""
        _control[PARK] = int(parked)

    def asleep(self) -> list[bool]:
        """Whether each worker sleeps now."""
        return [bool(_control[BLOCK * (worker + 1) + ASLEEP]) for worker in range(self.workers)]

    def statistics(self) -> dict:
        """Products served by the team, products run on the fallback's threads, jobs each worker ran."""
        return {"team_products": int(_control[TEAM_PRODUCTS]), "fallback_products": int(_control[FALLBACK_PRODUCTS]),
                "worker_products": [int(_control[BLOCK * (w + 1) + RAN]) for w in range(self.workers)]}

    def stop(self) -> None:
        """OpenBLAS's own threads back, the workers ended (at exit, in a forked child)."""
        _install_blas_callback(None)
        _control[WORKERS] = 0
        if _control[LOCK]:  # a child forked while a split ran: its workers do not exist here
            return
        for worker in range(self.workers):
            base = BLOCK * (worker + 1)
            _control[base + KIND] = STOP
            _control[base + GENERATION] += 1
            if _control[base + ASLEEP]:
                self._libc.sem_post(ctypes.byref(_semaphores, SEMAPHORE_BYTES * worker))


@functools.cache
def _openblas_setters():
    """OpenBLAS's `set_threads_callback_function` in each OpenBLAS loaded that has one (0.3.27+)."""
    names = [f"{prefix}openblas_set_threads_callback_function{suffix}"
             for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]
    setters = [setter for _, setter in openblas_functions(names)]
    for setter in setters:
        setter.argtypes = [ctypes.c_void_p]
    return setters


def _install_blas_callback(address: int | None) -> bool:
    setters = _openblas_setters()
    for setter in setters:
        setter(address)
    return bool(setters)


_team: Team | None = None
_team_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def run_split(work, items: int, parts: int) -> None:
    """work(first, last) over [0, items) in `parts` runs at once: on the team, or where it is off, the
    first here and the others on a thread pool (a thread per core, started as needed)."""
    global _pool
    crew = team()
    if crew is not None:
        crew.split(work, items, parts)
        return
    if parts <= 1:
        work(0, items)
        return
    with _team_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=cores(), thread_name_prefix="vf-kernels")
    bounds = [items * k // parts for k in range(parts + 1)]
    done = [_pool.submit(work, bounds[k], bounds[k + 1]) for k in range(1, parts)]
    work(bounds[0], bounds[1])
    for future in done:
        future.result()


# Elements a part of a row-wise pass must get for a split to pay (a pass over 64K float32 elements
# takes 25-70 us here; a split of a compiled kernel costs 5-10 us and the next op's reads of the
# other core's cache; of Python parts, which wait for the GIL, about 40 us: a softmax over 128K
# elements ran no faster split).
MIN_PART_ELEMENTS = 65536
MIN_PYTHON_PART_ELEMENTS = 4 * MIN_PART_ELEMENTS


def over_rows(work, rows: int, elements: int, kernel=None) -> None:
    """work(first, last) over [0, rows) of a pass over `elements` in all: split over the team where
    every part gets MIN_PART_ELEMENTS and the executor leaves this vertex the cores
    (`machine.threads_in_force`).
    With `kernel`, a nogil numba kernel, work(first, last) gives its arguments (`Team.split_kernel`)."""
    parts = min(rows, elements // (MIN_PART_ELEMENTS if kernel is not None else MIN_PYTHON_PART_ELEMENTS))
    if parts > 1:
        parts = min(parts, threads_in_force())
    crew = team() if parts > 1 else None
    if crew is None:
        if kernel is None:
            work(0, rows)
        else:
            kernel(*work(0, rows))
    elif kernel is None:
        crew.split(work, rows, parts)
    else:
        crew.split_kernel(kernel, work, rows, parts)


def enabled() -> bool:
    """Whether kernels split over a team: Linux (POSIX semaphores that macOS lacks), numba present, more
    than one core, VERTEXFLOW_TEAM not "off"."""
    switch = os.environ.get("VERTEXFLOW_TEAM", "").strip().lower()
    return (sys.platform.startswith("linux") and switch not in ("off", "0", "false", "no") and available()
            and cores() > 1)


def team() -> Team | None:
    """The process's team, started at first use (None where `enabled()` says no)."""
    global _team
    if _team is None and enabled():
        with _team_lock:
            if _team is None:
                _team = Team(min(cores(), MAX_WORKERS + 1) - 1)
    return _team


def _forget_in_child() -> None:
    global _team
    if _team is not None:
        _team.stop()
        _team = None
        _control[:] = 0


def _stop_at_exit() -> None:
    if _team is not None:
        _team.stop()


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(_stop_at_exit)
