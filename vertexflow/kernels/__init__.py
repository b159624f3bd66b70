"""Compiled kernels for the ops where numpy has no one-pass form: numba where it is installed, numpy otherwise.

Each kernel here has a numpy twin that computes the same function, and the op
that uses it picks one at bind time (`available()`): so a machine without
numba (or `VERTEXFLOW_KERNELS=numpy`, the switch the tests use to check the
fallbacks) runs the same graphs, a little slower. The kernels compile at their
first call and are cached on disk by numba (`cache=True`), so a process pays
the compilation once per machine.

What lives here: `erf` and `gelu` for float32 in one vectorised pass
(`special.py`), depthwise convolutions and their gradients (`conv.py`), other
convolutions summed directly in registers (`direct_conv.py`) or by per-image
columns and BLAS (`im2col.py`), the
epilogues a product carries (bias and activation in one pass, `epilogue.py`),
and row-wise normalizations (`norm.py`).

The kernels run on the calling thread (no numba threading layer): the
executors already put independent vertices on worker threads, and OpenMP's
idle threads, spinning between two kernels, starved the BLAS calls between
them (a depthwise block ran 4x slower in a process that had imported torch).
A vertex running alone splits its large passes (row-wise normalizations,
epilogues, a convolution's images, a stack of small products) over the
process's team of threads (`team.py`), which also runs OpenBLAS's parallel
products: one set of threads for both, as onnxruntime's pool.
"""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.cache
def available() -> bool:
    """Whether numba kernels are used: numba importable, and VERTEXFLOW_KERNELS not set to "numpy"."""
    if os.environ.get("VERTEXFLOW_KERNELS", "").strip().lower() == "numpy":
        return False
    return importlib.util.find_spec("numba") is not None
