"""Kernels written for one geometry, as Python source that numba compiles and caches on disk.

A loop whose trip counts and strides are known when it is compiled is one that
LLVM unrolls and vectorizes: a depthwise 3x3 convolution with its nine taps
written out runs several times faster than the same loop over runtime sizes.
So such kernels are generated as source for their geometry, written once to a
file in the user's cache folder (`$VERTEXFLOW_CACHE_DIR`, else
`$XDG_CACHE_HOME/vertexflow` or `~/.cache/vertexflow`, else a temporary
folder) and imported from there, which lets numba's `cache=True` keep the
machine code between processes (next to the file; the kernels written in
the package itself keep theirs in its `__pycache__`, or `NUMBA_CACHE_DIR`).

A kernel written as straight-line code for LLVM's SLP vectorizer (the
direct convolution's blocks) is imported with `slp=True`: numba keeps that
vectorizer off by default (numba#8852), and reads the switch when it builds
each compiled function's optimizer, so it is on for the kernels compiled
while such a module is imported. Those kernels name their signatures, so they
compile then and never again: no later call compiles them without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from types import ModuleType

_modules: dict[str, ModuleType] = {}
_lock = threading.Lock()


def cache_dir() -> str:
    """The folder generated kernels are written to (made if needed; a temporary one if none is writable)."""
    given = os.environ.get("VERTEXFLOW_CACHE_DIR")
    base = given or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vertexflow")
    folder = os.path.join(base, "kernels")
    try:
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    folder = os.path.join(tempfile.gettempdir(), f"vertexflow-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(folder, exist_ok=True)
    return folder


def module(name: str, source: str, slp: bool = False) -> ModuleType:
    """The module compiled from `source` (written to the cache folder once, keyed by its text); with
    `slp`, numba's SLP vectorizer is on while it is imported (its kernels compile then)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    key = f"vf_{name}_{digest}"
    with _lock:
        found = _modules.get(key)
        if found is not None:
            return found
        path = os.path.join(cache_dir(), key + ".py")
        if not os.path.exists(path):
            partial = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(partial, "w") as f:
                f.write(source)
            os.replace(partial, path)  # atomic: processes writing at once leave one whole file
        spec = importlib.util.spec_from_file_location(key, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[key] = loaded
        if slp:
            with _slp_vectorizer():
                spec.loader.exec_module(loaded)
        else:
            spec.loader.exec_module(loaded)
        _modules[key] = loaded
        return loaded


@contextlib.contextmanager
def _slp_vectorizer():
    """numba's SLP vectorizer on for what compiles meanwhile (any thread's: another thread compiling
    then gets it too, which changes its speed, not its meaning, but for LLVM's bugs)."""
    from numba.core import config

    before = config.SLP_VECTORIZE
    config.SLP_VECTORIZE = True
    try:
        yield
    finally:
        config.SLP_VECTORIZE = before
