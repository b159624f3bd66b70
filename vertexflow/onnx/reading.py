"""Reading an ONNX file safely: regular files only, external data only from the model's own
folder, every name defined before it is read, initializers whose bytes match their shapes.
"""

from __future__ import annotations

import stat
from typing import Any

import numpy as np

from ..errors import ModelFileError


def onnx_modules():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise ImportError("ONNX import needs the onnx package: pip install onnx (or, in a checkout, pip install -e '.[onnx]')") from exc
    return onnx, numpy_helper


# -- reading the file safely -----------------------------------------------------------------------
def read_model(onnx, model_or_path) -> tuple[Any, str]:
    """The ModelProto, and how to name it in errors; external data only beside a model given by path.

    Raises:
        ModelFileError: not a regular file, not an ONNX model, or external data it may not read.
    """
    import os

    from google.protobuf.message import DecodeError

    if isinstance(model_or_path, os.PathLike):
        model_or_path = os.fspath(model_or_path)
    if isinstance(model_or_path, str):
        where = model_or_path
        if not os.path.exists(where):
            raise ModelFileError(f"{where}: no such file")
        if not stat.S_ISREG(os.stat(where).st_mode):
            raise ModelFileError(f"{where}: not a regular file")
        try:
            model = onnx.load(where, load_external_data=False)
        except (DecodeError, ValueError, OSError) as exc:
            raise ModelFileError(f"{where}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
        _load_external_data(onnx, model, os.path.dirname(os.path.abspath(where)), where)
    elif isinstance(model_or_path, (bytes, bytearray, memoryview)):
        where = "the model bytes"
        try:
            model = onnx.load_from_string(bytes(model_or_path))
        except (DecodeError, ValueError) as exc:
            raise ModelFileError(f"{where}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
        _refuse_external_data(model, where)
    elif isinstance(model_or_path, onnx.ModelProto):
        where = "the ModelProto"
        model = model_or_path
        _refuse_external_data(model, where)
    else:
        raise TypeError(f"vf.onnx.load takes a path, bytes or an onnx.ModelProto, got {type(model_or_path).__name__}")
    if not model.graph.output:
        raise ModelFileError(f"{where}: the model has no graph outputs (an empty or truncated file?)")
    return model, where


def _external_tensors(model):
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def _refuse_external_data(model, where: str) -> None:
    tensors = _external_tensors(model)
    if tensors:
        raise ModelFileError(f"{where}: tensor {tensors[0].name!r} keeps its data in an external file; external "
                             "data is read only for a model given by path (from that model's folder)")


def _load_external_data(onnx, model, folder: str, where: str) -> None:
    """Read each external tensor's bytes, only from regular files inside the model's folder."""
    import os

    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor

    root = os.path.realpath(folder)
    for tensor in _external_tensors(model):
        try:
            _load_one(tensor, root, where, ExternalDataInfo, load_external_data_for_tensor)
        except ModelFileError:
            raise
        except (ValueError, OSError, TypeError) as exc:  # a NUL in a path, a length that is not a number
            raise ModelFileError(f"{where}: tensor {tensor.name!r}: its external data entry is not readable "
                                 f"({type(exc).__name__}: {exc})") from None


def _load_one(tensor, root: str, where: str, info_of, load) -> None:
    """One external tensor's bytes, checked: a regular file inside the model's folder, the range inside it."""
    import os

    info = info_of(tensor)
    location = info.location or ""
    target = os.path.realpath(os.path.join(root, location))
    if os.path.isabs(location) or os.path.commonpath([root, target]) != root:
        raise ModelFileError(f"{where}: tensor {tensor.name!r} points outside the model's folder "
                             f"({location!r}); refused")
    if not os.path.isfile(target):
        raise ModelFileError(f"{where}: tensor {tensor.name!r}: its external data file {location!r} is missing "
                             "or not a regular file")
    size = os.path.getsize(target)
    offset = int(info.offset or 0)
    length = int(info.length) if info.length is not None else size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelFileError(f"{where}: tensor {tensor.name!r} asks for bytes {offset}..{offset + length} of "
                             f"{location!r}, which holds {size}")
    load(tensor, root)


def check_structure(og, where: str) -> None:
    """Every name a node reads is defined before it (the file's order is topological), once."""
    defined = {vi.name for vi in og.input} | {t.name for t in og.initializer} | {""}
    problems = []
    written: dict[str, str] = {}
    for index, node in enumerate(og.node):
        label = node.name or f"#{index}"
        missing = [name for name in node.input if name not in defined]
        if missing:
            problems.append(f"{node.op_type} {label!r} reads {', '.join(map(repr, missing))}, which nothing "
                            "before it defines (a dangling name, or a cycle)")
        for name in node.output:
            if name and name in written:
                problems.append(f"{node.op_type} {label!r} writes {name!r}, which {written[name]} already writes "
                                "(a value has one producer)")
            elif name and name in defined:
                problems.append(f"{node.op_type} {label!r} writes {name!r}, which is a graph input or initializer")
            elif name:
                written[name] = f"{node.op_type} {label!r}"
        defined.update(node.output)
    missing = [vi.name for vi in og.output if vi.name not in defined]
    if missing:
        problems.append(f"graph output(s) {', '.join(map(repr, missing))} defined by no node")
    if problems:
        raise ModelFileError(f"{where}: " + "; ".join(problems))


def initializer_value(numpy_helper, tensor, where: str) -> np.ndarray:
    """A tensor's values, refused (naming it) when its declared shape does not match the bytes it holds."""
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(f"{where}: initializer {tensor.name!r} (shape {list(tensor.dims)}) is not readable: "
                             f"{exc}") from exc


# -- attributes and constants ------------------------------------------------------------
def node_attributes(node) -> dict[str, Any]:
    onnx, numpy_helper = onnx_modules()
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif a.type == onnx.AttributeProto.TENSOR:
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return out
