"""What this machine gives an executor: cores, and BLAS's threads.

One place for the questions several parts ask: how many cores the process may
use (`cores`), which BLAS libraries numpy calls and with how many threads
(`blas_info`), a block running BLAS with n threads (`blas_threads`), and
`BlasThreads`, which shares the cores out between BLAS calls that run at
once on different workers. threadpoolctl does the talking to the libraries.
"""

from __future__ import annotations

import contextlib
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


# Held while BLAS's thread count is changed or must stay as set: `BlasThreads` and `blas_split` take turns.
_count_lock = threading.RLock()


@contextlib.contextmanager
def blas_split(parts: int) -> Iterator[int]:
    """A block in which a kernel runs up to `parts` BLAS calls at once on threads of its own, each call
    single-threaded: yields how many threads to use, the BLAS thread count in force now (the cores an
    executor leaves this vertex), at most `parts`. BLAS's count comes back after.

    Every call in the block is single-threaded however many threads there are, so a kernel's values
    do not depend on how its work was split (OpenBLAS rounds some shapes differently on two threads).
    """
    with _count_lock:
        libs = _blas_controller().lib_controllers
        counts = [lib.num_threads for lib in libs]
        threads = max(1, min(parts, max(counts, default=1)))
        changed = any(count != 1 for count in counts)
        if changed:
            for lib in libs:
                lib.set_num_threads(1)
        try:
            yield threads
        finally:
            if changed:
                for lib, count in zip(libs, counts):
                    lib.set_num_threads(count)


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
            self._original = [lib.num_threads for lib in self._libs]
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
        with _count_lock:
            for lib, original in zip(libs, self._original):
                lib.set_num_threads(original if want is None else want)
        self._current = want

    def restore(self) -> None:
        with self._lock:
            self._active.clear()
            self._apply(None)
