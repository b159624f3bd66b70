"""ONNX import: ONNX's own operator test cases on both executors, real exported models, errors, the CLI."""

import io
import json
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
from onnx import TensorProto, helper  # noqa: E402

import vertexflow as vf  # noqa: E402
from vertexflow import onnx as vf_onnx  # noqa: E402

from . import node_cases as node_case_runner  # noqa: E402


@pytest.fixture(scope="module")
def node_cases():
    return node_case_runner.collect()


# The cases passing now, of all the node cases onnx generates: a floor against regressions, raised as
# coverage grows; and of the cases onnxruntime passes, the share we must pass too.
PASSING_FLOOR = 1757
SHARE_OF_ONNXRUNTIME = 0.95


def test_onnx_operator_cases_fed_at_run_time_pass_on_both_executors(node_cases, request):
    """Every node case onnx generates, every input fed at run time as onnxruntime is fed: no wrong value
    or dtype anywhere, every refusal a clean UnsupportedOnnxError with its reason, onnxruntime's result
    on the same cases counted beside ours."""
    outcome = node_case_runner.run_cases(node_cases)
    print(outcome.report().split("\n")[0])
    request.config.cache.set("vertexflow/onnx_cases", {"cases": outcome.cases, "passed": outcome.passed,
                                                       "onnxruntime_passed": outcome.onnxruntime_passed,
                                                       "both_passed": outcome.both_passed,
                                                       "refused": outcome.refused})
    assert outcome.wrong == []
    assert all(why for _, why in outcome.refused)
    assert outcome.cases == len(node_cases) and outcome.passed >= PASSING_FLOOR, outcome.report()
    assert outcome.onnxruntime_passed > outcome.cases // 2  # onnxruntime really ran them
    assert outcome.share_of_onnxruntime >= SHARE_OF_ONNXRUNTIME, outcome.report()
    passing = {op for op, (_, ours, _) in outcome.by_op.items() if ours}
    assert {"Conv", "LayerNormalization", "Resize", "LSTM", "GRU", "Slice", "Gather", "Where", "Attention",
            "QLinearMatMul", "Scan", "If", "Loop", "GridSample", "Einsum", "TopK"} <= passing


def test_unsupported_nodes_are_all_listed_at_load_time():
    """Refusals found before building (an unknown op, an attribute) and while building (a 3-D
    transposed convolution) come in one error, in one load."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 1, 2, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("Frobnicate", ["a"], ["b"], name="frob_1"),
        helper.make_node("Identity", ["b"], ["y"], name="out"),
        helper.make_node("ConvTranspose", ["v", "v"], ["c"], name="volume"),
        helper.make_node("Pad", ["x"], ["p"], name="padded", mode="mirror"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "bad", [x, v], [y]))
    with pytest.raises(vf_onnx.UnsupportedOnnxError, match=r"cannot import 3 node\(s\): Frobnicate 'frob_1': op not "
                                                            r"supported; Pad 'padded': mode='mirror' not supported; "
                                                            r"ConvTranspose 'volume': only 1-D and 2-D transposed convolutions") as info:
        vf_onnx.load(model)
    assert [(op, name) for op, name, _ in info.value.nodes] == [("Frobnicate", "frob_1"), ("Pad", "padded"),
                                                                ("ConvTranspose", "volume")]


# -- hostile files -------------------------------------------------------------------------------
def _relu_model(weight=None, name="w"):
    """y = relu(x + w), with w an initializer (optionally given as a TensorProto)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    w = weight if weight is not None else onnx.numpy_helper.from_array(np.array([1.0, -1.0], np.float32), name)
    nodes = [helper.make_node("Add", ["x", name], ["s"], name="add"), helper.make_node("Relu", ["s"], ["y"], name="r")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]))


def _external(model, location: str):
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    tensor.external_data.add(key="location", value=location)
    return model


def test_external_data_is_read_only_beside_a_model_given_by_path(tmp_path, monkeypatch):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.array([7.0, 7.0], np.float32).tobytes())
    monkeypatch.chdir(tmp_path)  # where the external data would have been looked up for bytes
    model = _external(_relu_model(), "secret.bin")
    for given in (model.SerializeToString(), model):
        with pytest.raises(vf_onnx.ModelFileError, match=r"tensor 'w' keeps its data in an external file; external "
                                                           r"data is read only for a model given by path"):
            vf_onnx.load(given)
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(np.array([1.0, -1.0], np.float32).tobytes())
    onnx.save(_external(_relu_model(), "weights.bin"), str(folder / "ok.onnx"))
    loaded = vf_onnx.load(str(folder / "ok.onnx"))
    np.testing.assert_array_equal(loaded.run({"x": np.zeros(2, np.float32)})[0], [1.0, 0.0])
    onnx.save(_external(_relu_model(), "../secret.bin"), str(folder / "escape.onnx"))
    with pytest.raises(vf_onnx.ModelFileError, match=r"tensor 'w' points outside the model's folder"):
        vf_onnx.load(str(folder / "escape.onnx"))
    onnx.save(_external(_relu_model(), str(secret)), str(folder / "absolute.onnx"))
    with pytest.raises(vf_onnx.ModelFileError, match=r"points outside the model's folder"):
        vf_onnx.load(str(folder / "absolute.onnx"))


def test_malformed_and_empty_models_raise_vertexflows_own_error(tmp_path):
    cases = [(b"\x08\x07garbage\xff\xff", "not an ONNX model"), (b"", "has no graph outputs")]
    for data, words in cases:
        with pytest.raises(vf_onnx.ModelFileError, match=words):
            vf_onnx.load(data)
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage\xff\xff")
    with pytest.raises(vf_onnx.ModelFileError, match=r"bad.onnx: not an ONNX model"):
        vf_onnx.load(str(tmp_path / "bad.onnx"))
    with pytest.raises(vf_onnx.ModelFileError, match="no such file"):
        vf_onnx.load(str(tmp_path / "missing.onnx"))
    from vertexflow import VertexflowError

    assert issubclass(vf_onnx.ModelFileError, VertexflowError)


def test_dangling_names_and_cycles_name_the_node_and_the_value():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    dangling = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["x", "nowhere"], ["y"], name="add")], "g", [x], [y]))
    with pytest.raises(vf_onnx.ModelFileError, match=r"Add 'add' reads 'nowhere', which nothing before it defines"):
        vf_onnx.load(dangling)
    cycle = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="second"),
         helper.make_node("Identity", ["b"], ["y"], name="out")], "g", [x], [y]))
    with pytest.raises(vf_onnx.ModelFileError, match=r"Relu 'first' reads 'b'.*\(a dangling name, or a cycle\)"):
        vf_onnx.load(cycle)


def test_an_initializer_declaring_more_than_it_holds_is_refused_by_name():
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**28])
    huge.raw_data = np.zeros(4, np.float32).tobytes()
    with pytest.raises(vf_onnx.ModelFileError, match=r"initializer 'w' \(shape \[268435456\]\) is not readable"):
        vf_onnx.load(_relu_model(huge))


def test_a_fifo_is_refused_instead_of_blocking(tmp_path):
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tmp_path / "pipe.onnx")
    with pytest.raises(vf_onnx.ModelFileError, match="not a regular file"):
        vf_onnx.load(str(tmp_path / "pipe.onnx"))


torch = pytest.importorskip("torch")


def _export(net, example, names=("x",), dynamic=True):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), buf, input_names=list(names), output_names=["y"], dynamo=False,
                          dynamic_axes={"x": {0: "batch"}} if dynamic else None)
    return buf.getvalue()


def _nets():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 5), torch.nn.LogSoftmax(dim=-1))
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 8, 3), torch.nn.ReLU(), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Dropout(0.3), torch.nn.Linear(8, 3), torch.nn.Softmax(dim=1))
    with torch.no_grad():  # non-trivial running statistics
        cnn[1].running_mean.uniform_(-0.5, 0.5)
        cnn[1].running_var.uniform_(0.5, 1.5)
    return {"mlp": (mlp.eval(), torch.randn(7, 20)), "cnn": (cnn.eval(), torch.randn(6, 1, 10, 10)),
            "branches": (Branches().eval(), torch.randn(5, 12))}


class Branches(torch.nn.Module):
    """Members with exact GELU (exported as Erf and four arithmetic nodes), tanh GELU, ReLU and sigmoid."""

    def __init__(self):
        super().__init__()
        act = [torch.nn.GELU(), torch.nn.GELU(approximate="tanh"), torch.nn.ReLU(), torch.nn.Sigmoid()]
        self.members = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(12, 16), a, torch.nn.Linear(16, 4)) for a in act)

    def forward(self, x):
        return sum(m(x) for m in self.members)


@pytest.mark.parametrize("name", ["mlp", "cnn", "branches"])
def test_exported_pytorch_models_match_torch_and_onnxruntime(name):
    net, example = _nets()[name]
    data = _export(net, example)
    model = vf_onnx.load(data)
    assert [n.name for n in model.inputs] == ["x"] and model.inputs[0].shape[0] is None
    with torch.no_grad():
        want = net(example).numpy()
    feeds = {"x": example.numpy()}
    for executor in ("sequential", "actor"):
        (got,) = model.run(feeds, executor=executor)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, feeds)
    np.testing.assert_allclose(model.run(feeds)[0], reference, rtol=1e-5, atol=1e-6)
    assert any(p.kind == "param" for p in model.graph.params)  # initializers became params
    model.close()


def test_run_command_writes_outputs_and_a_trace(tmp_path, capsys):
    from vertexflow.cli import main

    net, example = _nets()["mlp"]
    (tmp_path / "mlp.onnx").write_bytes(_export(net, example))
    np.save(tmp_path / "x.npy", example.numpy())
    assert main(["run", str(tmp_path / "mlp.onnx"), "--input", f"x={tmp_path / 'x.npy'}", "--executor", "actor",
                 "--out", str(tmp_path / "out"), "--trace", str(tmp_path / "t.html")]) == 0
    got = np.load(tmp_path / "out" / "y.npy")
    with torch.no_grad():
        np.testing.assert_allclose(got, net(example).numpy(), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "t.html").exists() and json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert main(["run", str(tmp_path / "mlp.onnx"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "vertexflow run: missing --input for x (the model's inputs: x (None, 20) float32)")


# -- graphs built for the values they are fed -----------------------------------------------------
def _reshape_model():
    """y = reshape(x, shape) + 1, with the target shape a graph input (as ONNX's own tests feed it)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    one = helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
    nodes = [one, helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Add", ["r", "one"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "reshape", [x, shape], [y]))


def test_a_shape_fed_at_run_time_builds_one_graph_per_value_and_caches_it():
    model = vf_onnx.load(_reshape_model())
    assert not model.static and model.value_inputs == ["shape"]
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    for target in ([3, 4], [12, 1], [3, 4]):
        (got,) = model.run({"x": x, "shape": np.array(target)}, executor="actor")
        np.testing.assert_array_equal(got, x.reshape(target) + 1)
    first = model.specialize({"x": x, "shape": np.array([3, 4])})
    assert first is model.specialize({"x": x + 5, "shape": np.array([3, 4])})  # cached by the value, not the data
    assert first.static and [n.name for n in first.inputs] == ["x"] and first.outputs[0].shape == (3, 4)
    assert len(model._specialized) == 2
    with pytest.raises(vf.GraphError, match=r"depends on what it is fed \(the values of 'shape'\).*specialize"):
        model.graph  # noqa: B018
    with pytest.raises(vf.FeedError, match="was fixed when this graph was built"):
        first.run({"x": x, "shape": np.array([12, 1])})
    fixed = vf_onnx.load(_reshape_model(), constants={"shape": np.array([4, 3])})
    assert fixed.static and fixed.graph["r"].shape == (4, 3)
    assert vf_onnx.build_time_inputs(_reshape_model()) == ["shape"]
    model.close()


def test_a_model_built_per_feed_still_says_what_to_feed_and_what_comes_back():
    model = vf_onnx.load(_reshape_model())
    assert not model.static
    assert model.inputs == [vf_onnx.TensorInfo("x", (2, 6), "float32"), vf_onnx.TensorInfo("shape", (2,), "int64")]
    assert [(i.name, i.shape, str(i.dtype)) for i in model.inputs] == [("x", (2, 6), "float32"), ("shape", (2,), "int64")]
    (out,) = model.outputs
    assert out.name == "y" and out.dtype == np.float32 and out.shape is None  # the file gives no shape
    feeds = {model.inputs[0]: np.ones((2, 6), np.float32), model.inputs[1]: np.array([3, 4])}
    assert model.run(feeds)[0].shape == (3, 4)  # the descriptions feed as their names do
    model.close()


def test_specializations_are_bounded_and_closed_when_dropped(monkeypatch):
    from vertexflow.onnx import importer

    monkeypatch.setattr(importer, "SPECIALIZATIONS_KEPT", 2)
    model = vf_onnx.load(_reshape_model())
    x = np.ones((2, 6), np.float32)
    model.run({"x": x, "shape": np.array([3, 4])}, executor="actor")
    oldest = model.specialize({"x": x, "shape": np.array([3, 4])})
    assert oldest._executors
    for target in ([4, 3], [6, 2]):
        model.run({"x": x, "shape": np.array(target)})
    assert len(model._specialized) == 2 and oldest not in model._specialized.values()
    assert oldest._executors == {}  # its executors were closed when it was dropped
    model.close()


def test_a_dynamic_batch_read_through_shape_builds_per_batch_size():
    """Reshape(x, Concat(Shape(x)[0:1], [-1])), as exporters flatten: one graph per batch size."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    minus = helper.make_tensor("m", TensorProto.INT64, [1], [-1])
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=0, end=1),
             helper.make_node("Concat", ["s", "m"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"], allowzero=1)]
    model = vf_onnx.load(helper.make_model(helper.make_graph(nodes, "flatten", [x], [y], [minus])))
    assert not model.static and model.value_inputs == []
    for batch in (4, 1, 4):
        data = np.random.default_rng(batch).normal(size=(batch, 2, 3)).astype(np.float32)
        np.testing.assert_array_equal(model.run({"x": data})[0], data.reshape(batch, 6))
    assert len(model._specialized) == 2
    with pytest.raises(vf.FeedError, match=r"feed for 'x' has shape \(4, 3\), but the input is \(None, 2, 3\)"):
        model.run({"x": np.zeros((4, 3), np.float32)})
    with pytest.raises(vf.FeedError, match=r"missing feeds for 'x'"):
        model.run({})
    with pytest.raises(vf.FeedError, match=r"has no input 'z'"):
        model.run({"x": data, "z": data})
    with pytest.raises(vf.FeedError, match=r"dtype float64, but the input is float32"):
        model.run({"x": data.astype(np.float64)})
    model.close()


def test_run_streams_a_batch_file_and_a_folder_through_the_actor_executor(tmp_path, capsys):
    from vertexflow.cli import main

    net, _ = _nets()["cnn"]
    images = torch.randn(20, 1, 10, 10)
    (tmp_path / "cnn.onnx").write_bytes(_export(net, images[:4]))
    np.save(tmp_path / "images.npy", images.numpy())
    with torch.no_grad():
        want = net(images).numpy()
    assert main(["run", str(tmp_path / "cnn.onnx"), "--input", f"x={tmp_path / 'images.npy'}", "--batch-size", "8",
                 "--out", str(tmp_path / "out"), "--trace", str(tmp_path / "t.html")]) == 0
    assert "3 step(s), 20 rows" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), want, rtol=1e-5, atol=1e-6)
    trace = json.loads((tmp_path / "t.json").read_text())
    steps = {e["args"].get("step") for e in trace["traceEvents"] if e.get("ph") == "X" and "step" in e.get("args", {})}
    assert len(steps) >= 3  # every batch is a step of the stream

    folder = tmp_path / "batches"
    folder.mkdir()
    for k in range(3):
        np.save(folder / f"part{k}.npy", images[k * 5:(k + 1) * 5].numpy())
    assert main(["run", str(tmp_path / "cnn.onnx"), "--input", f"x={folder}", "--out", str(tmp_path / "out2")]) == 0
    for k in range(3):
        np.testing.assert_allclose(np.load(tmp_path / "out2" / "y" / f"part{k}.npy"), want[k * 5:(k + 1) * 5],
                                   rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "cnn.onnx"), "--input", f"x={folder}", "--batch-size", "2"]) == 2
    assert "a folder's files are its steps" in capsys.readouterr().err
