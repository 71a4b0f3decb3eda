"""Graph building: default graphs, operators, constants and dtype rules, build-time errors."""

from __future__ import annotations

import numpy as np
import pytest

import graphnn as gn


def test_default_graph_and_context() -> None:
    outer = gn.reset_default_graph()
    a = gn.placeholder((2,), name="a")
    assert a.graph is outer and gn.get_default_graph() is outer
    with gn.Graph("inner") as g:
        b = gn.placeholder((2,), name="a")
        assert gn.get_default_graph() is g
    assert b.graph is g and gn.get_default_graph() is outer
    assert b.name == "a"  # names are unique per graph, not globally


def test_names_are_uniquified_and_validated() -> None:
    with gn.Graph() as g:
        x1 = gn.placeholder((1,), name="x")
        x2 = gn.placeholder((1,), name="x")
        assert (x1.name, x2.name) == ("x", "x_1")
        assert g.get("x_1") is x2
        with pytest.raises(gn.GraphError, match="invalid node name"):
            gn.placeholder((1,), name="12")
        with pytest.raises(gn.GraphError, match="invalid node name"):
            gn.placeholder((1,), name="a-b")
        assert gn.placeholder((1,), name="0.weight").name == "0.weight"
        with pytest.raises(gn.GraphError, match="no node named 'nope'"):
            g.get("nope")


def test_operators_build_the_expected_ops() -> None:
    with gn.Graph():
        x = gn.placeholder((3, 4), name="x")
        w = gn.placeholder((4, 2), name="w")
        exprs = {"add": x + 1, "sub": 1 - x, "mul": x * x, "div": x / 2, "pow": x ** 2,
                 "neg": -x, "abs": abs(x), "matmul": x @ w, "less": x < 0, "greater_equal": x >= 1,
                 "transpose": x.T, "reshape": x.reshape(2, 6)}
        for op, node in exprs.items():
            assert node.op == op
        assert exprs["matmul"].shape == (3, 2)
        assert exprs["less"].dtype is gn.bool_
        assert x.reshape((12,)).shape == (12,)
        assert (2 * x).inputs[1] is x  # reflected operator keeps operand order


def test_numpy_array_on_the_left_defers_to_node() -> None:
    with gn.Graph():
        x = gn.placeholder((3,), name="x")
        y = np.ones(3) + x
        assert isinstance(y, gn.Node) and y.op == "add" and y.dtype is gn.float32


def test_python_values_take_the_tensor_dtype() -> None:
    with gn.Graph():
        x = gn.placeholder((2,), gn.int32, name="x")
        assert (x + 1).dtype is gn.int32
        assert (x * 2.0).dtype is gn.int32  # an integral float is exact
        with pytest.raises(gn.DTypeError, match="without losing precision"):
            x * 1.5


def test_constant_dtype_inference() -> None:
    with gn.Graph():
        assert gn.constant(1.5).dtype is gn.float32
        assert gn.constant(3).dtype is gn.int64
        assert gn.constant(True).dtype is gn.bool_
        assert gn.constant(np.zeros(2)).dtype is gn.float64
        assert gn.constant([1, 2], dtype="float32").dtype is gn.float32
        assert gn.constant(2.0).shape == ()
        with pytest.raises(gn.DTypeError, match="float16"):
            gn.constant(np.zeros(2, np.float16))
        with pytest.raises(gn.DTypeError, match="cannot represent"):
            gn.constant([1.5], dtype="int32")


def test_mixed_dtypes_raise_naming_both() -> None:
    with gn.Graph():
        a = gn.placeholder((2,), gn.float32, name="a")
        b = gn.placeholder((2,), gn.float64, name="b")
        with pytest.raises(gn.DTypeError) as e:
            a + b
    msg = str(e.value)
    assert "add (node %2)" in msg and "float32, float64" in msg
    assert "%a: f32[2], %b: f64[2]" in msg and "graphnn.cast" in msg


def test_shape_error_names_op_node_and_shapes() -> None:
    with gn.Graph():
        x = gn.placeholder((32, 784), name="x")
        w = gn.placeholder((100, 128), name="w")
        with pytest.raises(gn.ShapeError) as e:
            gn.matmul(x, w, name="logits")
    msg = str(e.value)
    assert msg.startswith("matmul (node 'logits'): inner dimensions differ: 784 vs 100")
    assert "inputs: %x: f32[32,784], %w: f32[100,128]" in msg
    assert isinstance(e.value, ValueError)  # catchable as the builtin too


def test_errors_name_the_users_scope() -> None:
    with gn.Graph():
        x = gn.placeholder((2, 3, 8, 8), name="x")
        w = gn.placeholder((4, 5, 3, 3), name="w")
        with gn.name_scope("features"), gn.name_scope("0"), pytest.raises(gn.ShapeError) as e:
            gn.conv2d(x, w)
    assert "in features.0" in str(e.value) and "expects 5*groups=5 input channels" in str(e.value)


@pytest.mark.parametrize(("build", "error", "text"), [
    (lambda x: gn.reshape(x, (5, -1)), gn.ShapeError, "cannot reshape f32[2,3,4] (24 elements)"),
    (lambda x: gn.transpose(x, (0, 0, 1)), gn.AttrError, "not a permutation"),
    (lambda x: gn.sum(x, axis=3), gn.AttrError, "axis 3 is out of range for a tensor of rank 3"),
    (lambda x: gn.softmax(x, axis=5), gn.AttrError, "axis 5 is out of range"),
    (lambda x: gn.squeeze(x, 1), gn.ShapeError, "cannot squeeze axis 1 of size 3"),
    (lambda x: gn.concat([x, gn.placeholder((2, 4, 4))], axis=0), gn.ShapeError,
     "does not match f32[2,3,4] outside that axis"),
    (lambda x: x[5], gn.ShapeError, "index 5 is out of bounds for axis 0"),
    (lambda x: x[:, :, :, :], gn.ShapeError, "too many indices"),
    (lambda x: gn.log(gn.cast(x, "int32")), gn.DTypeError, "has dtype int32; expected one of"),
    (lambda x: gn.leaky_relu(x, negative_slope="big"), gn.AttrError,
     "attribute negative_slope='big': expected a number"),
    (lambda x: gn.max_pool2d(x, 2), gn.ShapeError, "expects a rank-4 input"),
    (lambda x: gn.max_pool(x, 2, padding=2), gn.AttrError, "exceeds half the kernel"),
    (lambda x: gn.pad(x, 3, mode="reflect"), gn.ShapeError, "must be smaller than axis 0 size 2"),
    (lambda x: gn.conv(x, gn.placeholder((2, 3, 9)), padding=0), gn.ShapeError,
     "larger than the padded input"),
    (lambda x: gn.dropout(x, p=1.5), gn.AttrError, "not in [0, 1]"),
    (lambda x: gn.one_hot(x, 3), gn.DTypeError, "indices has dtype float32"),
    (lambda x: gn.where(x, x, x), gn.DTypeError, "condition has dtype float32"),
    (lambda x: gn.einsum("ij,jk->ik", x, x), gn.ShapeError, "does not match an operand of rank 3"),
    (lambda x: gn.broadcast_to(x, (3, 4)), gn.ShapeError, "cannot broadcast f32[2,3,4] to [3,4]"),
    (lambda x: gn.argmax(x[:, :0]), gn.ShapeError, "argmax/argmin: it has no elements"),
])
def test_build_errors(build, error, text) -> None:  # type: ignore[no-untyped-def]
    with gn.Graph():
        x = gn.placeholder((2, 3, 4), name="x")
        with pytest.raises(error) as e:
            build(x)
    assert text in str(e.value)


def test_inputs_from_another_graph_are_rejected() -> None:
    with gn.Graph("a"):
        x = gn.placeholder((2,), name="x")
    with gn.Graph("b"):
        y = gn.placeholder((2,), name="y")
        with pytest.raises(gn.GraphError, match="belongs to graph 'a', not 'b'"):
            gn.add(y, x)


def test_unknown_dims_propagate_and_are_checked_where_known() -> None:
    with gn.Graph():
        x = gn.placeholder((None, 8, 8), name="x")
        assert gn.flatten(x, 1).shape == (None, 64)
        assert x.reshape(-1, 64).shape == (None, 64)
        assert gn.sum(x, axis=0).shape == (8, 8)
        assert (x + gn.placeholder((5, 1, 8))).shape == (5, 8, 8)
        assert x[:, 2:].shape == (None, 6, 8)
        assert x[1:].shape == (None, 8, 8)
        with pytest.raises(gn.ShapeError):
            x + gn.placeholder((3,))


def test_tensor_truth_value_is_an_error() -> None:
    with gn.Graph():
        x = gn.placeholder((2,), name="x")
        with pytest.raises(TypeError, match="truth value of symbolic tensor"):
            bool(x)


def test_boolean_mask_indexing_is_refused() -> None:
    with gn.Graph():
        x = gn.placeholder((3,), name="x")
        with pytest.raises(gn.GraphError, match="use graphnn.where"):
            x[x > 0]


def test_split_returns_slices() -> None:
    with gn.Graph():
        x = gn.placeholder((7, 2), name="x")
        parts = gn.split(x, 3)
        assert [p.shape for p in parts] == [(3, 2), (3, 2), (1, 2)]
        with pytest.raises(gn.ShapeError, match="do not sum"):
            gn.split(x, [3, 3])


def test_registry_flags() -> None:
    assert gn.get_op("add").commutative and gn.get_op("add").elementwise
    assert not gn.get_op("sub").commutative
    assert not gn.get_op("dropout").pure and gn.get_op("dropout").random
    assert gn.get_op("assign").writes_input == 0
    assert 1 in gn.get_op("take").nondiff_inputs
    with pytest.raises(gn.GraphError, match="unknown op"):
        gn.get_op("nope")
