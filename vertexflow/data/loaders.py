"""Loaders and batching.

IDX is the MNIST file format: two zero bytes, a type code, the number of
dimensions, then each dimension as a big-endian uint32, then the data in
big-endian order. Files may be gzip-compressed (the usual `.gz` downloads).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator

import numpy as np

from ..errors import DataFileError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array.

    Raises:
        DataFileError: bad magic number, unknown type code, or a size that does not match.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataFileError(f"{path}: corrupt gzip data ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DataFileError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise DataFileError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_TYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFileError(f"{path}: IDX header says {shape} ({expected} bytes of data), file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def save_idx(path: str, array: np.ndarray, compress: bool | None = None) -> str:
    """Write an array as an IDX file (gzip if the path ends in .gz)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    code = codes.get(array.dtype)
    if code is None:
        raise DataFileError(f"IDX cannot hold {array.dtype}")
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.dtype(IDX_TYPES[code])).tobytes()
    if compress if compress is not None else str(path).endswith(".gz"):
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download): (X float32 in [0, 1], y int64)."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as exc:
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn (or, in a checkout, pip install -e '.[nn]')") from exc
    digits = sk_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def train_test_split(x: np.ndarray, y: np.ndarray, test: float = 0.2, seed: int = 0):
    """A seeded shuffle split: (x_train, y_train, x_test, y_test)."""
    order = np.random.default_rng(seed).permutation(len(x))
    cut = len(x) - int(round(len(x) * test))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def batches(x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 32, shuffle: bool = False,
            seed: int | None = 0, drop_last: bool = False) -> Iterator:
    """Yield (x_batch, y_batch) (or x_batch without y), optionally in a seeded shuffled order."""
    n = len(x)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield (x[index], y[index]) if y is not None else x[index]
