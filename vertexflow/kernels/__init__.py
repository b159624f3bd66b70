"""Compiled kernels for the ops where numpy has no one-pass form: numba where it is installed, numpy otherwise.

Each kernel here has a numpy twin that computes the same function, and the op
that uses it picks one at bind time (`available()`): so a machine without
numba (or `VERTEXFLOW_KERNELS=numpy`, the switch the tests use to check the
fallbacks) runs the same graphs, a little slower. The kernels compile at their
first call and are cached on disk by numba (`cache=True`), so a process pays
the compilation once per machine.

What lives here: `erf` and `gelu` for float32 in one vectorised pass
(`special.py`), depthwise convolutions and their gradients (`conv.py`), the
epilogues a product carries (bias and activation in one pass, `epilogue.py`),
and row-wise normalizations (`norm.py`).

Parallel kernels take their thread count from numba's, which `machine.py`
keeps at the BLAS threads an executor allows, so a kernel beside other
workers does not oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os


@functools.cache
def available() -> bool:
    """Whether numba kernels are used: numba importable, and VERTEXFLOW_KERNELS not set to "numpy"."""
    if os.environ.get("VERTEXFLOW_KERNELS", "").strip().lower() == "numpy":
        return False
    return importlib.util.find_spec("numba") is not None


# -- threads ---------------------------------------------------------------------------------------
_budget: int | None = None  # threads a parallel kernel may use now (None: numba's own count)
_parallel: bool | None = None


def set_thread_budget(threads: int | None) -> None:
    """How many threads parallel kernels may use from now on (None: all numba has). `machine.BlasThreads`
    sets it with BLAS's count, so kernels on parallel branches share the cores as BLAS calls do."""
    global _budget
    _budget = threads


def parallel() -> bool:
    """Whether kernels run on numba's threads: only with a thread-safe threading layer (TBB or OpenMP),
    since two workers may call kernels at once; otherwise they run on the caller's thread alone."""
    global _parallel
    if _parallel is None:
        # OpenMP's idle threads spin by default, and OpenBLAS's threads, called between two kernels,
        # then wait for a core: a 1x1 convolution after a depthwise kernel took 8x its time. Idle
        # threads that sleep cost a wake-up (tens of microseconds) instead. (Read when OpenMP loads.)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import numba

        numba.config.THREADING_LAYER = "threadsafe"
        try:

            @numba.njit(parallel=True)
            def probe(n):
                total = 0
                for i in numba.prange(n):
                    total += i
                return total

            _parallel = probe(4) == 6
        except Exception:  # no thread-safe layer here: serial kernels
            _parallel = False
    return _parallel


@contextlib.contextmanager
def parallel_threads():
    """A block whose parallel kernels use at most the thread budget (numba's count is per calling thread);
    it gives the count, so a kernel can split its work into that many chunks."""
    if not _parallel:
        yield 1
        return
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    want = most if _budget is None else max(1, min(_budget, most))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)
    yield want
