"""Softmax cross-entropy and its gradient for few classes, row by row in one compiled pass each.

A classifier's head has few classes (10 here): numpy's form of the loss makes
ten calls over a (batch, 10) array (max, subtract, exp, sum, log, a fancy index,
...) and its gradient seven more, each costing a microsecond or two of call
overhead for a few nanoseconds of work. Here each row is walked once: its max,
the sum of exp(x - max) in float64, the loss term; the gradient writes
softmax(x) * g / N minus g / N at the label. Labels outside [0, classes) are
found in the same pass (the caller raises). Wide rows keep numpy's form, whose
SIMD exp is faster than a scalar one per element.
"""

from __future__ import annotations

import numpy as np

from . import available

_compiled: dict[str, object] = {}
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_CLASSES = 64  # beyond this many classes a row's scalar exps cost more than numpy's vectorised pass


def _kernels():
    if not _compiled:
        import numba

        @numba.njit(cache=True, nogil=True)
        def loss(logits, labels):
            """(mean loss in float64, index of the first row whose label is out of range or -1)."""
            rows, classes = logits.shape
            total = 0.0
            for r in range(rows):
                label = labels[r]
                if label < 0 or label >= classes:
                    return 0.0, r
                row = logits[r]
                m = row[0]
                for k in range(1, classes):
                    v = row[k]
                    if v > m or v != v:
                        m = v
                s = 0.0
                for k in range(classes):
                    s += np.exp(np.float64(row[k] - m))
                total += np.log(s) - np.float64(row[label] - m)
            return total / rows, -1

        @numba.njit(cache=True, nogil=True)
        def gradient(g, logits, labels, out):
            """out = (softmax(logits) - one_hot(labels)) * g / N; the first row with a bad label, or -1."""
            rows, classes = logits.shape
            scale = g / rows
            for r in range(rows):
                label = labels[r]
                if label < 0 or label >= classes:
                    return r
                row, target = logits[r], out[r]
                m = row[0]
                for k in range(1, classes):
                    v = row[k]
                    if v > m or v != v:
                        m = v
                s = 0.0
                for k in range(classes):
                    e = np.exp(np.float64(row[k] - m))
                    target[k] = e
                    s += e
                factor = scale / s
                for k in range(classes):
                    target[k] = target[k] * factor
                target[label] -= scale
            return -1

        _compiled.update(loss=loss, gradient=gradient)
    return _compiled


def usable(logits: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the kernels compute this loss (numba, a float dtype it compiles, few classes, C-contiguous)."""
    return (available() and logits.dtype in DTYPES and logits.ndim == 2 and 0 < logits.shape[1] <= MAX_CLASSES
            and logits.shape[0] > 0 and logits.flags.c_contiguous and labels.flags.c_contiguous)


def cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """The mean softmax cross-entropy, a scalar of logits' dtype; ValueError for a label out of range."""
    value, bad = _kernels()["loss"](logits, labels)
    if bad >= 0:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {int(labels[bad])} (row {bad})")
    return logits.dtype.type(value)


def cross_entropy_gradient(g, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(softmax(logits) - one_hot(labels)) * g / N, shaped and typed as logits."""
    out = np.empty_like(logits)
    bad = _kernels()["gradient"](float(g), logits, labels, out)
    if bad >= 0:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {int(labels[bad])} (row {bad})")
    return out
