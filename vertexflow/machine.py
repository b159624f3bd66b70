"""What this machine gives an executor: cores, and BLAS's threads.

One place for the questions several parts ask: how many cores the process may
use (`cores`), which BLAS libraries numpy calls and with how many threads
(`blas_info`), a block running BLAS with n threads (`blas_threads`), and
`BlasThreads`, which shares the cores out between BLAS calls that run at
once on different workers. threadpoolctl does the talking to the libraries.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def vector_extensions() -> list[str]:
    """The SIMD extensions the CPU reports among AVX2 and AVX-512 (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [name for name in ("avx2", "avx512f") if name in flags]
    except OSError:
        pass
    return []


_controller = None
_controller_lock = threading.Lock()


def _blas_controller():
    """threadpoolctl's controller of the BLAS libraries, made once (it scans the loaded libraries)."""
    global _controller
    with _controller_lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController().select(user_api="blas")
        return _controller


def openblas_functions(names) -> list[tuple[str, object]]:
    """For each OpenBLAS loaded, the first of `names` it exports, as (its file, a ctypes function):
    builds prefix and suffix their symbols differently (numpy's wheels: `scipy_..._64_`)."""
    import ctypes

    found = []
    for lib in _blas_controller().lib_controllers:
        if lib.internal_api != "openblas":
            continue
        handle = ctypes.CDLL(lib.filepath)
        function = next((getattr(handle, name) for name in names if hasattr(handle, name)), None)
        if function is not None:
            found.append((lib.filepath, function))
    return found


def blas_info() -> list[dict]:
    """The BLAS libraries numpy uses: {internal_api, version, num_threads, architecture} each."""
    return [
        {k: lib.info().get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
        for lib in _blas_controller().lib_controllers
    ]


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """A block in which BLAS calls use `n` threads (the previous counts come back after)."""
    with _blas_controller().limit(limits=n):
        yield


# Held while BLAS's thread counts are read or changed: `BlasThreads` and `blas_split` take turns.
_count_lock = threading.RLock()
_splits = 0  # blas_split blocks in force (BLAS single-threaded while any is)
_split_threads = 0  # the threads they were given, all told
_after_splits: list[int] = []  # the counts to put back when the last ends
_holder: int | None = None  # the thread whose counts last took effect


def _set_counts(libs, counts) -> None:
    """Each library's thread count, from whichever thread calls (callers hold _count_lock).

    threadpoolctl lets only one thread change OpenBLAS's process-wide count (the first to set it) and
    silently ignores every other: a kernel's split on an actor's worker thread left BLAS on two
    threads under each of its own. Callers here take turns already, so the caller takes over
    (threadpoolctl's documented `clear_controlling_thread`).
    """
    global _holder
    setters = _thread_setters()
    if setters is not None:
        for set_count, count in zip(setters, counts):
            set_count(count)
        return
    thread = threading.get_ident()
    for lib, count in zip(libs, counts):
        lib.set_num_threads(count)
        if thread == _holder:  # it took the control before: nothing checked again (1 us a call)
            continue
        take_over = getattr(type(lib), "clear_controlling_thread", None)
        if take_over is not None and lib.num_threads != count:  # another thread has the control
            take_over(force=True)
            lib.set_num_threads(count)
    _holder = thread


def threads_in_force() -> int:
    """The threads a vertex running now may use: BLAS's thread count (an executor's share of the cores),
    1 while a kernel's split holds them."""
    if _splits:
        return 1
    return max([count() for count in _thread_counters()], default=1)


@functools.cache
def _thread_counters() -> tuple:
    """Each BLAS library's thread count as a call: OpenBLAS's own getter through ctypes (0.1 us; through
    threadpoolctl's property 1.1 us, which a small product's split paid), threadpoolctl's for others."""
    import ctypes

    names = [f"{prefix}openblas_get_num_threads{suffix}" for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]
    direct = dict(openblas_functions(names))
    for function in direct.values():
        function.restype, function.argtypes = ctypes.c_int, []
    return tuple(direct.get(lib.filepath) or functools.partial(getattr, lib, "num_threads")
                 for lib in _blas_controller().lib_controllers)


@functools.cache
def _thread_setters() -> tuple | None:
    """Each BLAS library's thread-count setter through ctypes, where every library is an OpenBLAS on
    its own threads (pthreads, whose count is process-wide); else None, and threadpoolctl's setters.
    A kernel's split sets the count twice a call: threadpoolctl's setters and getters made
    `blas_split` cost 8 us, a quarter of an inception block's 1x1 convolution at batch 8."""
    import ctypes

    libs = _blas_controller().lib_controllers
    if not libs or any(lib.internal_api != "openblas" or getattr(lib, "threading_layer", None) != "pthreads"
                       for lib in libs):
        return None
    names = [f"{prefix}openblas_set_num_threads{suffix}" for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]
    direct = dict(openblas_functions(names))
    for function in direct.values():
        function.restype, function.argtypes = None, [ctypes.c_int]
    setters = tuple(direct.get(lib.filepath) for lib in libs)
    return setters if all(setter is not None for setter in setters) else None


class blas_split:  # noqa: N801 (a function's name, as callers write it: `with blas_split(parts) as threads`)
    """A block in which a kernel runs up to `parts` BLAS calls at once on threads of its own, each call
    single-threaded: yields how many threads to use, at most `parts` and the BLAS thread count in force
    when the first block began (the cores an executor leaves this vertex). BLAS's count comes back
    when the last block in force ends.

    Blocks may overlap (two kernels on two actors' workers, or two callers' threads): BLAS stays
    single-threaded until the last ends, and a block gets the threads the others left (at least one).
    Every call in a block is single-threaded however many threads there are, so a kernel's values do
    not depend on how its work was split (OpenBLAS rounds some shapes differently on two threads).
    (A class, not a generator's context: a small kernel's split enters one at every call.)
    """

    __slots__ = ("parts", "threads")

    def __init__(self, parts: int):
        self.parts = parts
        self.threads = 1

    def __enter__(self) -> int:
        global _splits, _split_threads
        with _count_lock:
            if _splits == 0:
                counts = [count() for count in _thread_counters()]
                _after_splits[:] = counts
                if any(count != 1 for count in counts):
                    _set_counts(_blas_controller().lib_controllers, [1] * len(counts))
            self.threads = max(1, min(self.parts, max(_after_splits, default=1) - _split_threads))
            _splits += 1
            _split_threads += self.threads
        return self.threads

    def __exit__(self, *exc) -> None:
        global _splits, _split_threads
        with _count_lock:
            _splits -= 1
            _split_threads -= self.threads
            if _splits == 0 and any(count != 1 for count in _after_splits):
                _set_counts(_blas_controller().lib_controllers, _after_splits)


class BlasThreads:
    """Share the cores between BLAS calls that run at once on different workers.

    OpenBLAS and MKL keep one process-wide thread count, read when a call
    starts, and their threads spin: two 2-thread matmuls on two cores run far
    slower than two 1-thread ones. So while a network runs steps, the count is
    cores // (expensive vertices that can run at once there): a chain of
    matmuls keeps every core for BLAS, parallel branches split them.
    """

    def __init__(self):
        self.cores = cores()
        self._libs: list | None = None
        self._current: int | None = None  # None: the libraries' own counts
        self._original: list[int] = []
        self._active: list[int] = []
        self._lock = threading.Lock()

    def _controllers(self) -> list:
        if self._libs is None:
            self._libs = list(_blas_controller().lib_controllers)
            with _count_lock:  # not a kernel's single thread of the moment
                self._original = list(_after_splits) if _splits else [lib.num_threads for lib in self._libs]
        return self._libs

    @contextlib.contextmanager
    def sharing(self, parallel: int) -> Iterator[None]:
        """While in the block, each of `parallel` concurrent BLAS calls gets its share of the cores.

        Blocks may nest and overlap (concurrent steps); the count in force is the
        one of the most parallel block, and the original count comes back when
        the last block ends, so no other code in the process runs with it.
        """
        want = max(1, self.cores // max(parallel, 1))
        with self._lock:
            self._active.append(want)
            self._apply(min(self._active))
        try:
            yield
        finally:
            with self._lock:
                self._active.remove(want)
                self._apply(min(self._active) if self._active else None)

    def _apply(self, want: int | None) -> None:
        libs = self._controllers()
        if want == self._current or not libs:
            return
        counts = self._original if want is None else [want] * len(libs)
        with _count_lock:
            if _splits:  # BLAS is single-threaded for a kernel's split: this count comes after it
                _after_splits[:] = counts
            else:
                _set_counts(libs, counts)
        self._current = want
        _park_team(want is not None and want < self.cores)

    def restore(self) -> None:
        with self._lock:
            self._active.clear()
            self._apply(None)


def _park_team(parked: bool) -> None:
    """Vertices side by side want the cores: the kernels' team (if started) sleeps instead of spinning."""
    from .kernels import team

    if team._team is not None:
        team._team.park(parked)
