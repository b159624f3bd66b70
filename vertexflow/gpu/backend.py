"""Array backends: numpy on the CPU, cupy on a CUDA device.

An executor holds one backend. Ops compute with `backend.xp`; feeds are moved
onto the device once with `to_device` and fetches back with `to_host`.
Importing this module never needs cupy: it is imported only when a CUDA
backend is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DeviceError


@dataclass(frozen=True)
class Backend:
    """An array module and how values move to and from it."""

    name: str
    xp: Any

    def to_device(self, array):
        return array if self.xp is np else self.xp.asarray(array)

    def to_host(self, array):
        return array if self.xp is np else self.xp.asnumpy(array)

    def uploaded(self) -> None:
        """Wait for copies made on the default stream (feeds, params) before other streams read them."""
        if self.xp is not np:
            self.xp.cuda.Stream.null.synchronize()


NUMPY = Backend("cpu", np)


def get_backend(device: str = "cpu") -> Backend:
    """The backend for `device` ("cpu" or "cuda").

    Raises:
        DeviceError: "cuda" without cupy or without a CUDA device; an unknown device name.
    """
    if device == "cpu":
        return NUMPY
    if device == "emulated-cuda":
        # numpy arrays, but executors plan streams, launch, record and wait on events, and
        # synchronize as they do on a GPU: the CUDA path's logic, checked on a CPU.
        return Backend("emulated-cuda", np)
    if device in ("cuda", "gpu"):
        try:
            import cupy
        except ImportError as exc:
            raise DeviceError(
                "device='cuda' needs cupy, which is not installed; install it with "
                "`pip install cupy-cuda12x` (or, in a checkout, `pip install -e '.[gpu]'`)"
            ) from exc
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # cupy raises CUDARuntimeError when no driver is loaded
            raise DeviceError(f"device='cuda' but no CUDA device is usable: {exc}") from exc
        if count < 1:
            raise DeviceError("device='cuda' but no CUDA device is present")
        return Backend("cuda", cupy)
    raise DeviceError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'emulated-cuda'")
