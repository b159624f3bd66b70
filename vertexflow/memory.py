"""Output buffers, reused: the memory plan every executor runs vertices with.

A vertex's output goes into a buffer taken from a `BufferPool` (one pool per
executor, buckets per shape and dtype) wherever its op can write into a
given array (`Op.writes_out`). A buffer is free again the moment nothing
refers to it: not the executor's slots, not a message between actors, not a
view (a view keeps its base alive), not a step still in flight. That is
Python's own reference count, which numpy's temporary elision reads the same
way; so the plan needs no liveness bookkeeping of its own to be safe, and
the executors' habit of letting a value go after its last reader (the tape's
slots, the actors' programs) is what hands buffers back.

Values handed to the user (fetches, gradients, stream results) are busy
for as long as the user holds them, and reused only once the user has let
them go: a value handed out is never overwritten while anyone can see it.

Why bother: a fresh numpy array above glibc's mmap threshold is mapped and
page-faulted anew on every step, and the heaps of different threads trim
differently, so fresh allocations alone moved a chain of 2 MB vertices by
30-50% and made one worker thread look faster than the tape.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np


def _free_at(bucket: list, free: int) -> int:
    """Index of the first buffer in `bucket` that nothing but the bucket refers to, or -1."""
    for i in range(len(bucket)):
        if sys.getrefcount(bucket[i]) <= free:
            return i
    return -1


def _calibrate() -> int:
    """The reference count `_free_at` sees for a buffer held by its bucket alone (the interpreter's own count)."""
    for threshold in range(1, 8):
        if _free_at([np.empty(1)], threshold) == 0:
            held = np.empty(1)
            if _free_at([held], threshold) != -1:
                raise RuntimeError("cannot tell free buffers from held ones on this interpreter")
            return threshold
    raise RuntimeError("cannot tell free buffers from held ones on this interpreter")


_FREE = _calibrate()


def owner(array) -> Any:
    """The array that owns `array`'s memory (itself, or the base of a view)."""
    base = getattr(array, "base", None)
    return array if base is None else base


def owner_ids(arrays: Iterable[Any]) -> set[int]:
    """{id(owner(a)) for a in arrays}, without a call per array (every backward call asks it)."""
    return {id(a) if (base := getattr(a, "base", None)) is None else id(base) for a in arrays}


class BufferPool:
    """Buffers by (shape, dtype), handed out again once nothing refers to them.

    Thread-safe: worker threads and the trio thread take buffers at once. A
    buffer the user still holds (a fetched value kept in a list, a gradient)
    is busy like any other; buffers found busy move to the back of their
    bucket, and a bucket holding more than `bucket_limit` buffers forgets its
    busy ones (their holders keep them), so taking stays cheap however many
    results a caller hoards. Buckets nobody took from for `keep_steps` steps
    are dropped (a batch size that changed, a fetch set no longer run), so
    the pool holds about what one step holds at its peak.

    Attributes:
        taken, reused: buffers handed out, and how many of them were reused.
    """

    def __init__(self, xp=np, keep_steps: int = 64, bucket_limit: int = 64):
        self.xp = xp
        self.keep_steps = keep_steps
        self.bucket_limit = bucket_limit
        self._buckets: dict[tuple, list] = {}
        self._last_used: dict[tuple, int] = {}
        self._lock = threading.Lock()
        self._step = 0
        self.taken = 0
        self.reused = 0

    def take(self, shape: tuple, dtype) -> Any:
        """A buffer of this shape and dtype that nothing else refers to (contents undefined)."""
        key = (shape, dtype)
        with self._lock:
            self.taken += 1
            self._last_used[key] = self._step
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = []
            elif bucket:
                i = _free_at(bucket, _FREE)
                if i >= 0:
                    self.reused += 1
                    buffer = bucket[i]
                    if i:  # the busy ones before it go to the back: the next scan starts at free ones
                        bucket[:] = bucket[i:] + bucket[:i]
                    return buffer
                if len(bucket) >= self.bucket_limit:
                    bucket.clear()  # all busy: their holders keep them; the pool starts afresh
            buffer = self.xp.empty(shape, dtype)
            bucket.append(buffer)
            return buffer

    def take_like(self, shape: tuple, dtype, *inputs) -> Any:
        """A buffer as `take` gives, laid out as the first input of its shape: in column-major order
        when that input is (a product computed transposed, ops/linalg.py), so an elementwise op reads
        and writes its arrays in one order (across orders, numpy's add ran 28x slower here); in its
        axes' order when it is a dense array with axes permuted and the op's only array (an attention's
        keys transposed, scaled: at batch 64 a ViT's took 0.9 ms into a row-major buffer, 24 us so).
        Beside other arrays of other orders, row-major: the ViT's residual adds of a permuted array
        and a row-major one took 0.23-0.28 ms into a buffer of the first's order, 0.14-0.18 into numpy's
        own choice, about as into a row-major one."""
        buffer = self.take(shape, dtype)
        for x in inputs:
            if getattr(x, "shape", None) == shape:
                flags = x.flags
                if flags.c_contiguous:
                    break
                if flags.f_contiguous:
                    return buffer.reshape(shape[::-1]).T
                if all(y is x or getattr(y, "size", 1) <= 1 for y in inputs):
                    order = _dense_order(x)
                    if order is not None:
                        return buffer.reshape(tuple(shape[a] for a in order)).transpose(np.argsort(order))
                break
        return buffer

    def end_step(self) -> None:
        """A step is done: now and then, drop the buckets no step has taken from for `keep_steps` steps."""
        self._step += 1
        if self._step % 16:
            return
        with self._lock:
            stale = [k for k, used in self._last_used.items() if self._step - used > self.keep_steps]
            for key in stale:
                del self._last_used[key]
                self._buckets.pop(key, None)

    def held_bytes(self) -> int:
        """Bytes of every buffer the pool tracks, busy or free."""
        with self._lock:
            return sum(b.nbytes for bucket in self._buckets.values() for b in bucket)

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._last_used.clear()


def _dense_order(x) -> list[int] | None:
    """The axes of x from the outermost in memory to the innermost, where x is a dense array whose axes
    are permuted (its elements one block, each axis's stride the product of the inner ones' sizes);
    else None."""
    order = sorted(range(x.ndim), key=lambda a: (-x.strides[a], a))
    expected = x.itemsize
    for a in reversed(order):
        if x.shape[a] != 1:
            if x.strides[a] != expected:
                return None
            expected *= x.shape[a]
    return order
