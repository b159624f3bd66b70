"""The public names other code and tests rely on are all reachable from `import vertexflow as vf`."""

import vertexflow as vf

PUBLIC = """
Graph Node Spec SequentialExecutor Executor grad check_grad init ops autodiff
VertexflowError ShapeError FeedError GraphError VertexError ExecutionTimeout DeviceError
relu sigmoid softmax log_softmax cross_entropy mse conv2d max_pool2d avg_pool2d
sum mean max exp log tanh matmul transpose reshape concat where maximum minimum
""".split()


def test_public_names_exist():
    missing = [name for name in PUBLIC if not hasattr(vf, name)]
    assert missing == []


def test_all_lists_only_real_names():
    assert all(hasattr(vf, name) for name in vf.__all__)


def test_errors_share_a_base():
    for err in (vf.ShapeError, vf.FeedError, vf.GraphError, vf.VertexError, vf.ExecutionTimeout, vf.DeviceError):
        assert issubclass(err, vf.VertexflowError)


def test_op_base_is_public():
    assert vf.ops.Op.__name__ == "Op"


def test_initializers_are_seeded():
    a = vf.init.glorot_normal(seed=3)((4, 5), "float32")
    b = vf.init.glorot_normal(seed=3)((4, 5), "float32")
    assert a.dtype == "float32" and a.shape == (4, 5)
    assert (a == b).all()
    init = vf.init.he_normal(seed=1)
    assert not (init((3, 3)) == init((3, 3))).all()  # one generator: successive params differ


def test_every_error_type_lives_in_errors_py():
    import importlib
    import pkgutil

    import vertexflow.errors

    defined = []
    for info in pkgutil.walk_packages(vf.__path__, "vertexflow."):
        if info.name == "vertexflow.errors" or info.name.startswith(("vertexflow.onnx", "vertexflow.ray")):
            continue  # optional extras; their errors are checked through errors.py below
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == info.name:
                defined.append(f"{info.name}.{value.__name__}")
    assert defined == []
    for name in ("ModelFileError", "DataFileError", "UnsupportedOnnxError", "GradientMismatch", "InternalError"):
        assert issubclass(getattr(vertexflow.errors, name), vf.VertexflowError)


def test_vf_onnx_is_there_without_importing_onnx_first():
    import subprocess
    import sys

    code = ("import sys, vertexflow as vf; assert 'onnx' not in sys.modules; "
            "assert callable(vf.onnx.load) and vf.onnx.SUPPORTED_OPS; assert 'onnx' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_executor_interface_imports_none_of_its_subclasses():
    """executor.py (the interface and the tape) sits below the executors; factory.py names them all."""
    import ast
    import pathlib

    source = pathlib.Path(vf.__file__).with_name("executor.py").read_text()
    imported = {node.module or "" for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("actors", "streams", "ray", "factory")}
    from vertexflow.factory import EXECUTORS, make_executor

    g = vf.Graph()
    g.input("x", shape=(2,))
    assert [type(make_executor(g, name)).__name__ for name in EXECUTORS] == [
        "SequentialExecutor", "ActorExecutor", "StreamExecutor"]


def test_the_tracer_records_and_imports_none_of_its_readers():
    """trace/tracer.py records; the renderers (Chrome JSON, viewer, analysis, compare) read what it
    recorded and attach their entry points to Tracer, so no import goes back up to them."""
    import ast
    import pathlib

    source = (pathlib.Path(vf.__file__).parent / "trace" / "tracer.py").read_text()
    imported = {node.module or "" for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"chrome", "viewer", "analysis", "compare"}
    t = vf.Tracer()
    assert all(callable(getattr(t, name)) for name in ("save", "save_html", "summary", "compare", "load"))
