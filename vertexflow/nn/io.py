"""Save and load params (and optimizer state) as .npz or .safetensors, never with pickle.

Keys are `param/{name}` and `optim/{key}` (see Optimizer.state_dict). Loading
first checks the file's headers against the model (every entry a .npy array of
numbers, names, shapes and dtypes as the model's), so a file can never make it
allocate more than the model's own params take; then reads the arrays, checks
their values (the optimizer's finite in the param's dtype) and only then
assigns, so a corrupt, truncated or mismatched file raises ModelFileError and
leaves the model as it was.
"""

from __future__ import annotations

import contextlib
import os
import stat
import zipfile
from collections.abc import Sequence

import numpy as np

from ..errors import GraphError, ModelFileError
from ..graph import Node, format_shape
from .optim import Optimizer


def _format(path: str) -> str:
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in (".npz", ".safetensors"):
        raise ModelFileError(f"{path}: unknown model file type {ext!r}; use .npz or .safetensors")
    return ext


def save(path: str, params: Sequence[Node], optimizer: Optimizer | None = None) -> str:
    """Write params' values (and the optimizer's state) to `path` (.npz or .safetensors)."""
    arrays = {f"param/{p.name}": _contiguous(p.value) for p in params}
    if optimizer is not None:
        arrays.update({f"optim/{k}": _contiguous(v) for k, v in optimizer.state_dict().items()})
    if _format(path) == ".npz":
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    else:
        from safetensors.numpy import save_file

        save_file(arrays, str(path), metadata={"format": "vertexflow"})
    return str(path)


def _contiguous(array) -> np.ndarray:
    array = np.asarray(array)  # keeps 0-d arrays 0-d, unlike np.ascontiguousarray
    return array if array.flags.c_contiguous else array.copy()


def _opened(path: str):
    kind = _format(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block or never end
        raise ModelFileError(f"{path}: not a regular file")
    return kind


@contextlib.contextmanager
def _file_errors(path: str, kind: str):
    """Anything a malformed file raises while read, as one ModelFileError naming the file."""
    try:
        yield
    except ModelFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile, numpy and safetensors (SafetensorError) raise their own
        raise ModelFileError(f"{path}: not a readable {kind} model file ({type(exc).__name__}: {exc})") from exc


def _headers(path: str) -> dict[str, tuple[tuple, np.dtype]]:
    """Each entry's (shape, dtype) as the file declares it, read without reading the arrays."""
    kind = _opened(path)
    with _file_errors(path, kind):
        if kind == ".npz":
            with open(path, "rb") as f:
                return _check_npz_sizes(path, f)
        from safetensors import safe_open

        out = {}
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():
                tensor = f.get_slice(key)
                out[key] = (tuple(tensor.get_shape()), np.dtype(_SAFETENSORS_DTYPES.get(tensor.get_dtype(), "V1")))
        return out


def _read(path: str) -> dict[str, np.ndarray]:
    kind = _opened(path)
    with _file_errors(path, kind):
        if kind == ".npz":
            # Our own file handle: np.load leaves its own open when the zip is corrupt.
            with open(path, "rb") as f:
                _check_npz_sizes(path, f)
                f.seek(0)
                with np.load(f, allow_pickle=False) as data:
                    return {k: data[k] for k in data.files}
        from safetensors.numpy import load_file

        return load_file(str(path))  # safetensors checks every tensor's extent against the file


_SAFETENSORS_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I8": "int8", "I16": "int16",
                       "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32",
                       "U64": "uint64", "BOOL": "bool"}


_MAX_EXPANSION = 1024  # a compressed member may not claim more than this many bytes per stored byte


def _check_npz_sizes(path: str, f) -> None:
    """Refuse, before allocating anything, arrays whose headers claim more bytes than the file holds.

    Each member's .npy header declares a shape and dtype; numpy would allocate
    that much before finding the data short. The declared bytes must fit the
    member's size in the zip directory, and that size must be plausible for
    the bytes actually stored.
    """
    declared_all: dict[str, tuple[tuple, np.dtype]] = {}
    with zipfile.ZipFile(f) as archive:
        for info in archive.infolist():
            if info.file_size > _MAX_EXPANSION * max(info.compress_size, 1) + 2**20:
                raise ModelFileError(f"{path}: entry {info.filename!r} claims {info.file_size} bytes from "
                                     f"{info.compress_size} stored: not a model file vertexflow wrote")
            if not info.filename.endswith(".npy"):
                raise ModelFileError(f"{path}: entry {info.filename!r} is not a .npy array: not a model file "
                                     "vertexflow wrote")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            if dtype.hasobject:
                raise ModelFileError(f"{path}: entry {info.filename[:-4]!r} holds Python objects, which only pickle "
                                     "could read: not a readable model file (vertexflow never unpickles)")
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared > info.file_size:
                raise ModelFileError(f"{path}: entry {info.filename[:-4]!r} declares shape {shape} of {dtype} "
                                     f"({declared} bytes) but holds {info.file_size} bytes")
            declared_all[info.filename[:-4]] = (tuple(shape), dtype)
    return declared_all


def _fits(path: str, headers: dict, params: Sequence[Node], optimizer: Optimizer | None) -> None:
    """Refuse, from the headers alone, a file whose entries are not the model's params (and the optimizer's
    slots for them): unknown names, other shapes or dtypes (ModelFileError naming each)."""
    shapes = {p.name: p for p in params}
    problems = []
    for key, (shape, dtype) in headers.items():
        kind, _, name = key.partition("/")
        if kind == "param" and name in shapes:
            p = shapes[name]
            if shape != tuple(p.shape):
                problems.append(f"param {name!r} has shape {format_shape(shape)} in the file, "
                                f"{format_shape(p.shape)} in the model")
            elif dtype != p.dtype:
                problems.append(f"param {name!r} is {dtype} in the file, {p.dtype} in the model")
        elif kind == "optim" and optimizer is not None:
            owner, _, slot = name.rpartition("/")
            if name == "steps":
                if shape != ():
                    problems.append(f"optimizer state 'steps' must be one integer >= 0, got {dtype} of shape {shape}")
            elif owner not in shapes:
                problems.append(f"optimizer state has {name!r}, which this {type(optimizer).__name__} over these "
                                "params lacks")
            elif shape != tuple(shapes[owner].shape):
                problems.append(f"optimizer state {name!r} has shape {format_shape(shape)}, the param "
                                f"{format_shape(shapes[owner].shape)}")
        elif kind not in ("param", "optim"):
            problems.append(f"entry {key!r} is neither a param nor optimizer state")
    if problems:
        raise ModelFileError(f"{path}: does not fit this model: " + "; ".join(problems))


def load(path: str, params: Sequence[Node], optimizer: Optimizer | None = None) -> None:
    """Load values saved by `save` into `params` (and `optimizer`), all or nothing.

    Every name, shape and dtype is checked against the model from the file's headers before any
    array is read, so a file cannot make this allocate more than the model's own params take.

    Raises:
        ModelFileError: the file is unreadable, or a name, shape or dtype does not match.
    """
    _fits(path, _headers(path), params, optimizer)
    arrays = _read(path)
    problems = []
    staged: list[tuple[Node, np.ndarray]] = []
    for p in params:
        key = f"param/{p.name}"
        if key not in arrays:
            problems.append(f"missing param {p.name!r}")
            continue
        a = arrays[key]
        if a.shape != p.shape:
            problems.append(f"param {p.name!r} has shape {format_shape(a.shape)} in the file, "
                            f"{format_shape(p.shape)} in the model")
        elif a.dtype != p.dtype:
            problems.append(f"param {p.name!r} is {a.dtype} in the file, {p.dtype} in the model")
        else:
            staged.append((p, a))
    names = {p.name for p in params}
    extra = sorted(k[len("param/"):] for k in arrays if k.startswith("param/") and k[len("param/"):] not in names)
    if extra:
        problems.append("params the model lacks: " + ", ".join(map(repr, extra)))
    optim_state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    if optimizer is not None:
        if not optim_state:
            problems.append("no optimizer state in the file")
        else:
            try:
                optimizer.check_state(optim_state)
            except GraphError as exc:
                problems.append(str(exc))
    if problems:
        raise ModelFileError(f"{path}: does not fit this model: " + "; ".join(problems))
    for p, a in staged:
        p.value = a.copy()
    if optimizer is not None:
        optimizer.load_state_dict(optim_state)


__all__ = ["ModelFileError", "load", "save"]
