"""ONNX import (optional extra `onnx`): run models trained elsewhere as vertex graphs.

    model = vf.onnx.load("model.onnx")
    outputs = model.run({"input": batch}, executor="actor")
"""

from ..errors import ModelFileError
from .importer import CONVERTERS, OnnxModel, TensorInfo, UnsupportedOnnxError, build_time_inputs, load

SUPPORTED_OPS = sorted(CONVERTERS)

__all__ = ["ModelFileError", "OnnxModel", "SUPPORTED_OPS", "TensorInfo", "UnsupportedOnnxError", "build_time_inputs",
           "load"]
