"""Models quantized by onnxruntime's own tools (`quantize_dynamic`, `quantize_static` in the QDQ and
the operator formats) run as onnxruntime runs them: every integer tensor equal, the float outputs
within onnxruntime's own rounding, on both executors."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[test]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[test]')")
quantization = pytest.importorskip("onnxruntime.quantization")

from vertexflow import onnx as vf_onnx  # noqa: E402


class MLP(torch.nn.Module):
    """Matrix products without biases on (batch, tokens, features): MatMul, which the operator format
    quantizes to QLinearMatMul (a bias would make onnxruntime's own QLinearAdd)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 32, bias=False)
        self.b = torch.nn.Linear(32, 5, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class CNN(torch.nn.Module):
    """Two convolutions (QLinearConv, ConvInteger), then a product with a matrix (QLinearMatMul)."""

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.d = torch.nn.Conv2d(8, 8, 3, stride=2)
        self.w = torch.nn.Parameter(torch.randn(8 * 3 * 3, 4) * 0.2)

    def forward(self, x):
        return torch.relu(self.d(torch.relu(self.c(x)))).flatten(1) @ self.w


MODELS = {"mlp": (MLP, (4, 6, 16)), "cnn": (CNN, (4, 3, 8, 8))}
EXPECTED_OPS = {  # what each tool writes: the test would prove nothing if it wrote something else
    ("mlp", "dynamic"): {"DynamicQuantizeLinear", "MatMulInteger"},
    ("cnn", "dynamic"): {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"},
    ("mlp", "qdq"): {"QuantizeLinear", "DequantizeLinear", "MatMul"},
    ("cnn", "qdq"): {"QuantizeLinear", "DequantizeLinear", "Conv", "MatMul"},
    ("mlp", "operator"): {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul"},
    ("cnn", "operator"): {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"},
}


class Batches(quantization.CalibrationDataReader):
    def __init__(self, batches):
        self.batches = iter([{"x": b} for b in batches])

    def get_next(self):
        return next(self.batches, None)


def _quantized(name: str, how: str, folder) -> tuple[bytes, list[np.ndarray]]:
    torch.manual_seed(0)
    make, shape = MODELS[name]
    net = make().eval()
    source, target = folder / f"{name}.onnx", folder / f"{name}_{how}.onnx"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(*shape),), buf, input_names=["x"], output_names=["y"], dynamo=False,
                          opset_version=17, dynamic_axes={"x": {0: "batch"}})
    source.write_bytes(buf.getvalue())
    batches = [np.random.default_rng(k).normal(size=shape).astype(np.float32) for k in range(8)]
    if how == "dynamic":
        quantization.quantize_dynamic(str(source), str(target), weight_type=quantization.QuantType.QInt8)
    else:
        fmt = quantization.QuantFormat.QDQ if how == "qdq" else quantization.QuantFormat.QOperator
        quantization.quantize_static(str(source), str(target), Batches(batches), quant_format=fmt)
    return target.read_bytes(), batches


def _with_integer_outputs(model_bytes: bytes) -> tuple[bytes, list[str]]:
    """The model with every integer tensor a quantized node makes added to its outputs."""
    model = onnx.load_from_string(model_bytes)
    makers = {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv", "MatMulInteger",
              "ConvInteger"}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    extra = []
    for node in model.graph.node:
        if node.op_type in makers:
            for name in node.output:
                if name and types.get(name) in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32):
                    model.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
                    extra.append(name)
    return model.SerializeToString(), extra


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("how", ["dynamic", "qdq", "operator"])
@pytest.mark.parametrize("name", list(MODELS))
def test_models_quantized_by_onnxruntime_run_as_onnxruntime_runs_them(name, how, tmp_path):
    quantized, batches = _quantized(name, how, tmp_path)
    ops = {n.op_type for n in onnx.load_from_string(quantized).graph.node}
    assert EXPECTED_OPS[(name, how)] <= ops, ops
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load_from_string(quantized).graph.node)
    probed, integers = _with_integer_outputs(quantized)
    assert integers  # there are integer tensors to compare
    session = ort.InferenceSession(probed, providers=["CPUExecutionProvider"])
    model = vf_onnx.load(probed)
    try:
        for batch in (batches[0], batches[1][:3]):
            want = session.run(None, {"x": batch})
            for executor in ("sequential", "actor"):
                got = model.run({"x": batch}, executor=executor)
                for k, (a, b) in enumerate(zip(got, want)):
                    label = f"{model.output_names[k]} on {executor}"
                    if k == 0:  # the float output: onnxruntime's fused integer kernels round it
                        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=label)
                    else:
                        assert a.dtype == b.dtype, label
                        np.testing.assert_array_equal(a, b, err_msg=label)
    finally:
        model.close()
