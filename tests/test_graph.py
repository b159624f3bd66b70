"""Graph building: names, specs, the networkx view, dot output and the errors of bad building."""

import networkx as nx
import numpy as np
import pytest

import vertexflow as vf


def mlp_graph():
    g = vf.Graph("mlp")
    x = g.input("x", shape=(None, 784))
    w1 = g.param("w1", shape=(784, 250), init=vf.init.glorot_normal(seed=0))
    b1 = g.param("b1", shape=(250,), init=vf.init.zeros())
    h = vf.relu(x @ w1 + b1, name="hidden")
    return g, x, w1, b1, h


def test_specs_are_inferred_when_built():
    g, x, w1, b1, h = mlp_graph()
    assert h.shape == (None, 250)
    assert h.dtype == np.float32
    assert (x @ w1).shape == (None, 250)
    assert vf.sum(h, axis=1).shape == (None,)
    assert h.T.shape == (250, None)
    assert h[:, :10].shape == (None, 10)
    assert h.reshape(-1, 25, 10).shape == (None, 25, 10)


def test_names_are_unique_and_readable():
    g, x, w1, b1, h = mlp_graph()
    a = x @ w1
    b = x @ w1
    assert a.name != b.name
    assert a.name.startswith("matmul_") and b.name.startswith("matmul_")
    assert h.name == "hidden"
    assert g["hidden"] is h
    with pytest.raises(vf.GraphError, match="already has a vertex named 'hidden'"):
        vf.relu(h, name="hidden")


def test_unknown_name_suggests_close_matches():
    g, *_ = mlp_graph()
    with pytest.raises(vf.GraphError, match="no vertex named 'hiden'.*did you mean 'hidden'"):
        g["hiden"]


def test_a_misspelt_dtype_suggests_the_real_one_and_adds_nothing():
    g = vf.Graph()
    with pytest.raises(vf.ShapeError, match=r"not a dtype: 'flaot32'; did you mean 'float32'"):
        g.input("x", shape=(3,), dtype="flaot32")
    with pytest.raises(vf.ShapeError, match=r"not a dtype: 'banana' \(e.g. 'float32', 'int64', 'bool'\)"):
        g.const(np.zeros(3), dtype="banana")
    assert len(g) == 0


class _NoInputs(vf.ops.Op):
    name = "no_inputs"

    def infer(self):
        return vf.Spec((), "float32")

    def forward(self, xp):
        return xp.zeros(())


class _NoArrayModule(vf.ops.Op):
    name = "no_array_module"

    def infer(self, x):
        return x

    def forward(self, x):  # forgot xp
        return x


def test_a_custom_ops_signatures_are_checked_when_its_vertex_is_built():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    with pytest.raises(vf.GraphError, match=r"op 'no_inputs' \(vertex 'no_inputs_1', class _NoInputs\): its "
                                            r"infer\(self\) cannot take the 1 input\(s\) it is called with"):
        _NoInputs()(x)
    with pytest.raises(vf.GraphError, match=r"its forward\(self, x\) cannot take the 1 input\(s\).*xp is the "
                                            r"array module"):
        _NoArrayModule()(x)
    assert [n.name for n in g.nodes] == ["x"]  # nothing was added


def test_networkx_view_has_one_edge_per_argument():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    y = vf.multiply(x, x, name="square")
    edges = list(g.nx.in_edges("square", data="argpos", keys=True))
    assert sorted((u, pos) for u, _, _, pos in edges) == [("x", 0), ("x", 1)]
    assert isinstance(g.nx, nx.MultiDiGraph)
    assert nx.is_directed_acyclic_graph(g.nx)
    assert g.nx.nodes["square"]["node"] is y


def test_mixing_graphs_is_refused():
    g1, g2 = vf.Graph("one"), vf.Graph("two")
    a = g1.input("a", shape=(3,))
    b = g2.input("b", shape=(3,))
    with pytest.raises(vf.GraphError, match="different graphs"):
        a + b
    with pytest.raises(vf.GraphError, match="belongs to graph 'two'"):
        vf.SequentialExecutor(g1).run({a: np.ones(3, "float32")}, b)


def test_shape_error_names_op_vertex_and_both_shapes_at_the_users_line():
    g = vf.Graph()
    x = g.input("x", shape=(32, 784))
    w = g.param("w", value=np.zeros((512, 250), "float32"))
    with pytest.raises(vf.ShapeError, match=r"matmul 'h1': inner dimensions differ: \(32, 784\) @ \(512, 250\)") as info:
        vf.matmul(x, w, name="h1")
    assert info.traceback[0].frame.code.name == "test_shape_error_names_op_vertex_and_both_shapes_at_the_users_line"
    assert "h1" not in g  # nothing was added


@pytest.mark.parametrize(
    "build, words",
    [
        (lambda x: x + np.ones((4, 5), "float32"), r"add '.*': cannot broadcast \(3, 4\) and \(4, 5\)"),
        (lambda x: x.reshape(5, 5), r"cannot reshape \(3, 4\)"),
        (lambda x: vf.sum(x, axis=2), "axis 2 is out of range for 2 dimensions"),
        (lambda x: vf.conv2d(x, x), r"must be NCHW"),
        (lambda x: vf.concat([x, x.T]), "sizes differ off the concat axis"),
        (lambda x: x[5], r"index 5 is out of bounds for size 3"),
        (lambda x: vf.log(x > 0), "needs floating-point inputs, got bool"),
        (lambda x: vf.where(x, x, x), "condition must be boolean"),
        (lambda x: vf.transpose(x, (0, 0)), "not a permutation"),
    ],
)
def test_shape_errors_say_what_is_wrong(build, words):
    g = vf.Graph()
    x = g.input("x", shape=(3, 4))
    before = len(g)
    with pytest.raises(vf.ShapeError, match=words):
        build(x)
    assert len(g) - before <= 2  # at most the helper constants of the failed expression


def test_param_values_are_checked_and_reassignable():
    g = vf.Graph()
    w = g.param("w", value=np.ones((2, 3), "float32"))
    assert w.value.shape == (2, 3)
    with pytest.raises(vf.ShapeError, match=r"value of shape \(3, 2\) does not fit its shape \(2, 3\)"):
        w.value = np.ones((3, 2))
    np.testing.assert_array_equal(w.value, 1.0)  # unchanged after the refused assignment
    w.value = np.full((2, 3), 2.0)  # float64 in, stored as the param's float32
    assert w.value.dtype == np.float32
    with pytest.raises(vf.GraphError, match="give exactly one of init= or value="):
        g.param("v", shape=(2,))
    x = g.input("x", shape=(2,))
    with pytest.raises(vf.GraphError, match="only params take new values"):
        x.value = np.ones(2)


def test_nodes_have_no_truth_value():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    with pytest.raises(TypeError, match="no truth value"):
        bool(x == x)
    with pytest.raises(TypeError, match="not iterable"):
        list(x)


def test_to_dot_tells_kinds_apart():
    g, x, w1, b1, h = mlp_graph()
    loss = vf.sum(h, name="loss")
    vf.grad(loss, [w1])
    dot = g.to_dot()
    assert dot.startswith('digraph "mlp" {')
    assert '"x" [label="x\\ninput (None, 784)", shape="box"' in dot
    assert 'fillcolor="#d1f2d1"' in dot  # params
    assert '"dloss/dw1"' in dot and 'style="dashed"' in dot  # gradient vertices
    assert 'peripheries="2"' in dot  # outputs
    assert '"x" -> "matmul_1" [label="0"];' in dot


def test_scalar_constants_are_shared():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    a, b = x * 2, x + 2
    assert a.inputs[1] is b.inputs[1]


def test_unnamed_graphs_get_distinct_names_so_errors_can_tell_them_apart():
    a, b = vf.Graph(), vf.Graph()
    assert a.name != b.name and a.name.startswith("graph_")
    x, y = a.input("x", shape=(2,)), b.input("y", shape=(2,))
    with pytest.raises(vf.GraphError, match=rf"different graphs \('{a.name}', '{b.name}'\)"):
        x + y


@pytest.mark.parametrize("shape", [(-1, 3), (2.5,), ("3",), (True,)])
def test_shapes_that_are_not_sizes_are_refused_at_build(shape):
    g = vf.Graph()
    with pytest.raises(vf.ShapeError, match=r"is not a size; use an int >= 0, or None"):
        g.input("x", shape=shape)
    with pytest.raises(vf.ShapeError, match=r"is not a size"):
        g.param("w", shape=shape, init=vf.init.zeros())
    assert len(g) == 0


def test_python_lists_beside_a_vertex_take_its_float_dtype_like_python_scalars():
    g = vf.Graph()
    h = g.input("h", shape=(3,), dtype="float32")
    assert (h + [1, 2, 3]).dtype == np.float32 and (h * 2).dtype == np.float32
    assert (h + [0.5, 1.5, 2.5]).dtype == np.float32
    assert (h + np.ones(3)).dtype == np.float64  # a numpy float64 array promotes, as in numpy
    i = g.input("i", shape=(3,), dtype="int32")
    assert (i + [1, 2, 3]).dtype == np.int32 and (i + [0.5, 1.0, 2.0]).dtype == np.float64


def test_graph_structure_is_fixed_once_built():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    y = vf.exp(x)
    for attr in ("inputs", "op", "kind"):
        with pytest.raises(AttributeError, match="fixed once"):
            setattr(y, attr, None)
    assert y.inputs == (x,) and y.op_name == "exp"
