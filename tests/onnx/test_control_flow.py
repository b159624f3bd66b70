"""If, Loop and Scan (exported from torch, and written with onnx.helper), and sequence and optional
values inside a model: values against torch and onnxruntime on both executors, what is folded away,
what is refused and why."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
from onnx import TensorProto, helper  # noqa: E402

import vertexflow as vf  # noqa: E402
from vertexflow import onnx as vf_onnx  # noqa: E402

from .test_exports import needs_onnxscript  # noqa: E402

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[test]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[test]')")


def _onnxruntime(model_bytes, feeds):
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(None, feeds)


class Branches(torch.nn.Module):
    """torch.cond on the data: the branch depends on the sign of the input's sum."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: torch.relu(self.a(x)), lambda x: torch.tanh(self.a(x)) * 2, (x,))


@needs_onnxscript
@pytest.mark.filterwarnings("ignore")
def test_torch_cond_exported_by_dynamo_takes_the_branch_the_data_chooses_and_has_gradients():
    torch.manual_seed(0)
    net = Branches().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.randn(3, 4),), input_names=["x"], output_names=["y"], dynamo=True,
                                    opset_version=18, verbose=False)
    model_bytes = program.model_proto.SerializeToString()
    assert "If" in {n.op_type for n in onnx.load_from_string(model_bytes).graph.node}
    model = vf_onnx.load(model_bytes)
    try:
        assert model.static  # a condition known only at run time: both branches, then a selection
        x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
        for feed in (np.abs(x), -np.abs(x)):
            with torch.no_grad():
                want = net(torch.tensor(feed)).numpy()
            for executor in ("sequential", "actor"):
                np.testing.assert_allclose(model.run({"x": feed}, executor=executor)[0], want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(model.run({"x": feed})[0], _onnxruntime(model_bytes, {"x": feed})[0],
                                       rtol=1e-5, atol=1e-6)
            g = model.graph
            params = [n for n in g if n.kind == "param"]
            _, grads = vf.SequentialExecutor(g).backward({"x": feed}, vf.sum(model.outputs[0]), params)
            assert all(np.isfinite(v).all() for v in grads.values())
            assert any(np.abs(v).sum() > 0 for v in grads.values())
    finally:
        model.close()


class Repeat(torch.nn.Module):
    def forward(self, x, n: torch.Tensor):
        for _ in range(int(n)):
            x = x * 0.5 + torch.tanh(x)
        return x


@pytest.mark.filterwarnings("ignore")
def test_a_scripted_loop_is_unrolled_for_each_trip_count_fed():
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.script(Repeat()), (torch.randn(2, 3), torch.tensor(3)), buf,
                          input_names=["x", "n"], output_names=["y"], dynamo=False, opset_version=17)
    model_bytes = buf.getvalue()
    assert "Loop" in {n.op_type for n in onnx.load_from_string(model_bytes).graph.node}
    model = vf_onnx.load(model_bytes)
    try:
        assert not model.static and model.value_inputs == ["n"]
        x = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
        for n in (0, 1, 4):
            feeds = {"x": x, "n": np.array(n)}
            want = _onnxruntime(model_bytes, feeds)[0]
            for executor in ("sequential", "actor"):
                np.testing.assert_allclose(model.run(feeds, executor=executor)[0], want, rtol=1e-5, atol=1e-6)
    finally:
        model.close()


def _graph_model(nodes, inputs, outputs, initializers=(), opset=17):
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers)),
                             opset_imports=[helper.make_opsetid("", opset)])


def _tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_an_if_on_a_constant_keeps_only_its_branch():
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [_tensor("t", [3])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_tensor("e", [3])])
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="choose")]
    model = vf_onnx.load(_graph_model(nodes, [_tensor("x", [3])], [_tensor("y", [3])]))
    ops = {n.op.name for n in model.graph if n.kind == "op"}
    assert "relu" in ops and "neg" not in ops and "where" not in ops  # folded: no selection at run time
    np.testing.assert_array_equal(model.run({"x": np.array([-1.0, 0.0, 2.0], np.float32)})[0], [0.0, 0.0, 2.0])


def test_a_scan_runs_its_body_along_the_sequence_in_both_directions():
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "step"], ["sum_out"]), helper.make_node("Identity", ["sum_out"], ["out"])],
        "body", [_tensor("sum_in", [2]), _tensor("step", [2])], [_tensor("sum_out", [2]), _tensor("out", [2])])
    for reverse in (0, 1):
        node = helper.make_node("Scan", ["init", "xs"], ["total", "running"], body=body, num_scan_inputs=1,
                                scan_input_directions=[reverse], name="running_sum")
        model_bytes = _graph_model([node], [_tensor("init", [2]), _tensor("xs", [5, 2])],
                                   [_tensor("total", [2]), _tensor("running", [5, 2])]).SerializeToString()
        xs = np.arange(10, dtype=np.float32).reshape(5, 2)
        feeds = {"init": np.ones(2, np.float32), "xs": xs}
        want = _onnxruntime(model_bytes, feeds)
        order = xs[::-1] if reverse else xs
        np.testing.assert_array_equal(want[1], 1 + np.cumsum(order, axis=0))
        model = vf_onnx.load(model_bytes)
        for executor in ("sequential", "actor"):
            for got, expected in zip(model.run(feeds, executor=executor), want):
                np.testing.assert_array_equal(got, expected)
        model.close()


def _doubling(trainable: bool) -> bytes:
    """x doubled until its sum reaches 100: a loop whose end depends on the data (`two` and `limit`
    are params when `trainable`, else constants)."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["v_in", "two"], ["v_out"]),
         helper.make_node("ReduceSum", ["v_out"], ["s"], keepdims=0),
         helper.make_node("Less", ["s", "limit"], ["cond_out"])],
        "body", [_tensor("i", [], TensorProto.INT64), _tensor("cond_in", [], TensorProto.BOOL), _tensor("v_in", [3])],
        [_tensor("cond_out", [], TensorProto.BOOL), _tensor("v_out", [3])])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    limit = helper.make_tensor("limit", TensorProto.FLOAT, [], [100.0])
    inits = [helper.make_tensor("cond", TensorProto.BOOL, [], [True])]
    nodes = [helper.make_node("Loop", ["", "cond", "x"], ["y"], body=body, name="doubling")]
    if trainable:
        inits += [two, limit]
    else:
        nodes[:0] = [helper.make_node("Constant", [], ["two"], value=two),
                     helper.make_node("Constant", [], ["limit"], value=limit)]
    return _graph_model(nodes, [_tensor("x", [3])], [_tensor("y", [3])], inits).SerializeToString()


def test_a_loop_that_ends_on_the_fed_data_is_built_per_value_and_matches_onnxruntime():
    model_bytes = _doubling(trainable=False)
    model = vf_onnx.load(model_bytes)
    for x in (np.array([1, 2, 3], np.float32), np.array([30, 20, 10], np.float32), np.array([200, 0, 0], np.float32)):
        want = _onnxruntime(model_bytes, {"x": x})[0]
        for executor in ("sequential", "actor"):
            np.testing.assert_array_equal(model.run({"x": x}, executor=executor)[0], want)
    assert not model.static and model.value_inputs == ["x"]  # one graph per value of x, unrolled for it
    assert model.run({"x": np.array([1, 2, 3], np.float32)})[0].tolist() == [32, 64, 96]  # 192: the step that ends it counts
    model.close()


def test_a_loop_that_ends_on_a_param_is_refused_naming_it():
    model = vf_onnx.load(_doubling(trainable=True))  # `two` is trainable: no value to build for
    with pytest.raises(vf.errors.UnsupportedOnnxError, match=r"Loop 'doubling''s condition in step 0 is computed "
                                                             r"from the data at run time"):
        model.run({"x": np.array([1, 2, 3], np.float32)})
    model.close()


def test_sequences_and_optionals_inside_a_model_match_onnxruntime():
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["rows"], axis=0, keepdims=0),
        helper.make_node("SequenceLength", ["rows"], ["count"]),
        helper.make_node("SequenceAt", ["rows", "minus_one"], ["last"]),
        helper.make_node("Mul", ["last", "last"], ["squared"]),
        helper.make_node("SequenceInsert", ["rows", "squared", "zero"], ["more"]),
        helper.make_node("ConcatFromSequence", ["more"], ["stacked"], axis=0, new_axis=1),
        helper.make_node("Cast", ["count"], ["count_f"], to=TensorProto.FLOAT),
        helper.make_node("Optional", ["count_f"], ["maybe"]),
        helper.make_node("OptionalHasElement", ["maybe"], ["has"]),
        helper.make_node("OptionalGetElement", ["maybe"], ["got"]),
        helper.make_node("Mul", ["stacked", "got"], ["y"]),
    ]
    inits = [helper.make_tensor("minus_one", TensorProto.INT64, [], [-1]),
             helper.make_tensor("zero", TensorProto.INT64, [], [0])]
    model_bytes = _graph_model(nodes, [_tensor("x", [3, 4])], [_tensor("y", [4, 4]),
                                                                 _tensor("has", [], TensorProto.BOOL)],
                               inits, opset=18).SerializeToString()
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    want = _onnxruntime(model_bytes, {"x": x})
    model = vf_onnx.load(model_bytes)
    for executor in ("sequential", "actor"):
        for got, expected in zip(model.run({"x": x}, executor=executor), want):
            np.testing.assert_allclose(got, expected, rtol=1e-6)
    model.close()


def test_a_model_whose_output_is_a_sequence_is_refused_naming_the_output():
    nodes = [helper.make_node("SplitToSequence", ["x"], ["rows"], axis=0)]
    seq = helper.make_tensor_sequence_value_info("rows", TensorProto.FLOAT, None)
    with pytest.raises(vf.errors.UnsupportedOnnxError, match=r"output 'rows': 'rows' is a sequence or optional"):
        vf_onnx.load(_graph_model(nodes, [_tensor("x", [3, 4])], [seq]))
