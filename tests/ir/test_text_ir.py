"""The text IR: readable printing, parse round trips (hand-built and random graphs), DOT, verify."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphnn as gn


def small_cnn() -> gn.Graph:
    rng = np.random.default_rng(0)
    with gn.Graph("cnn") as g:
        x = gn.placeholder((None, 1, 8, 8), name="x")
        with gn.name_scope("conv1"):
            w = gn.variable(rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
                            name="conv1.weight")
            b = gn.variable(np.zeros(8, np.float32), name="conv1.bias")
            h = gn.relu(gn.conv2d(x, w, b, padding=1))
        h = gn.max_pool2d(h, 2)
        with gn.name_scope("fc"):
            wf = gn.variable(rng.standard_normal((128, 10)).astype(np.float32), name="fc.weight")
            logits = gn.dense(gn.flatten(h, 1), wf, np.zeros(10, np.float32))
        g.outputs = (gn.softmax(logits, name="probs"),)
    return g


def test_print_is_one_readable_line_per_node() -> None:
    text = str(small_cnn())
    lines = text.splitlines()
    assert lines[0] == "graph cnn {" and lines[-1] == "}"
    assert "  %x: f32[?,1,8,8] = placeholder()" in lines
    conv = next(line for line in lines if "= conv[" in line)
    assert conv.startswith("  %3: f32[?,8,8,8] = conv[dilation=(1, 1), groups=1, "
                           "pads=(1, 1, 1, 1), stride=(1, 1)](%x, %conv1.weight, %conv1.bias)")
    assert conv.endswith("# conv1")
    assert "max_pool[ceil_mode=false, dilation=(1, 1), kernel_size=(2, 2)" in text
    assert "%conv1.weight: f32[8,1,3,3] = variable[init=array<f32[8,1,3,3]>(...)" in text
    assert "%probs: f32[?,10] = softmax[axis=-1](" in text
    assert lines[-2] == "  return %probs"
    assert len(lines) == len(small_cnn().nodes) + 3


def test_round_trip_with_elided_arrays() -> None:
    g = small_cnn()
    with pytest.raises(gn.ParseError, match="elided; pass it as arrays"):
        gn.parse_graph(str(g))
    arrays = {n.name: n.attrs["init"].array for n in g.variables}
    arrays.update({str(i): n.attrs["value"].array for i, n in enumerate(g.nodes)
                   if n.op == "constant" and n.attrs["value"].array.size > gn.text_ir.INLINE_LIMIT})
    back = gn.parse_graph(str(g), arrays)
    assert back.structurally_equal(g)
    assert str(back) == str(g)
    gn.verify(back)


def test_round_trip_inline_arrays_is_bit_exact() -> None:
    with gn.Graph("consts") as g:
        vals = np.array([0.1, -0.0, np.inf, -np.inf, np.nan, 1e-38, 3.4e38], np.float32)
        c = gn.constant(vals)
        d = gn.constant(np.array([1 / 3, 2.5e-300], np.float64))
        e = gn.constant(np.array([[True, False]]))
        i = gn.constant(np.array([-(2**62), 7], np.int64))
        g.outputs = (c, d, e, i, gn.cast(c, "float64") + d[0])
    back = gn.parse_graph(str(g))
    assert back.structurally_equal(g)
    got = back.nodes[0].attrs["value"].array
    assert got.tobytes() == vals.tobytes()


def test_every_attribute_kind_round_trips() -> None:
    with gn.Graph("attrs") as g:
        x = gn.placeholder((None, 3, 5), gn.float64, name="x")
        i = gn.placeholder((2,), gn.int32, name="i")
        outs = [gn.einsum("bij->bji", x), gn.cast(x, gn.int64), gn.clip(x, min=None, max=1e-7),
                x[::-1, 1:, None], gn.one_hot(i, 4, dtype=gn.bool_), gn.gelu(x, approximate="tanh"),
                gn.pad(x[0], [(1, 0), (2, 2)], mode="edge"), gn.var(x, axis=(1, 2), correction=0)]
        g.outputs = tuple(outs)
    back = gn.parse_graph(str(g))
    assert back.structurally_equal(g)
    gn.verify(back)


def test_parse_errors_point_at_the_problem() -> None:
    bad_type = "graph g {\n  %x: f32[2] = placeholder()\n  %1: f32[3] = relu(%x)\n}"
    want = r"line 3.*declared type f32\[3\] but relu gives f32\[2\]"
    with pytest.raises(gn.ParseError, match=want):
        gn.parse_graph(bad_type)
    undefined = "graph g {\n  %1: f32[2] = relu(%x)\n}"
    with pytest.raises(gn.ParseError, match=r"line 2, column 21: %x is used before it is defined"):
        gn.parse_graph(undefined)
    bad_op = "graph g {\n  %x: f32[2] = placeholder()\n  %1: f32[2] = frobnicate(%x)\n}"
    with pytest.raises(gn.ParseError, match="unknown op 'frobnicate'"):
        gn.parse_graph(bad_op)
    with pytest.raises(gn.ParseError, match="missing closing"):
        gn.parse_graph("graph g {\n  %x: f32[2] = placeholder()")


UNARY = ["relu", "tanh", "sigmoid", "neg", "exp", "abs", "softsign"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]


@st.composite
def random_graphs(draw: st.DrawFn) -> tuple[gn.Graph, dict]:
    """Random elementwise DAGs over broadcastable inputs."""
    shapes = [(3, 4), (4,), (1, 4), (3, 1), ()]
    with gn.Graph("random") as g:
        n_in = draw(st.integers(1, 3))
        values = [gn.placeholder(draw(st.sampled_from(shapes)), name=f"x{i}") for i in range(n_in)]
        for _ in range(draw(st.integers(1, 12))):
            if draw(st.booleans()):
                op = draw(st.sampled_from(UNARY))
                values.append(getattr(gn, op)(draw(st.sampled_from(values))))
            else:
                op = draw(st.sampled_from(BINARY))
                values.append(getattr(gn, op)(draw(st.sampled_from(values)),
                                              draw(st.sampled_from(values))))
        g.outputs = (values[-1],)
    feeds = {p.name: np.random.default_rng(0).standard_normal(p.shape).astype(np.float32)
             for p in g.placeholders}
    return g, feeds


@settings(max_examples=60, deadline=None)
@given(random_graphs())
def test_random_graphs_round_trip_and_compute_the_same(case: tuple[gn.Graph, dict]) -> None:
    g, feeds = case
    back = gn.parse_graph(str(g))
    assert back.structurally_equal(g)
    gn.verify(back)
    np.testing.assert_array_equal(gn.Session(g, backend="reference").run(g.outputs[0], feeds),
                                  gn.Session(back, backend="reference").run(back.outputs[0], feeds))


def test_dot_export() -> None:
    dot = gn.to_dot(small_cnn())
    assert dot.startswith('digraph "cnn" {') and dot.rstrip().endswith("}")
    assert '"x" [label="%x = placeholder\\nf32[?,1,8,8]", shape=ellipse];' in dot
    assert '"x" -> "3";' in dot
    assert "penwidth=2" in dot  # the output


def test_verify_catches_a_wrong_recorded_type() -> None:
    g = small_cnn()
    gn.verify(g)
    node = next(n for n in g.nodes if n.op == "relu")
    broken = gn.Node(node.op, node.inputs, node.attrs, (1, 2), node.dtype, None, None, g)
    g.nodes[g.nodes.index(node)] = broken
    with pytest.raises(gn.VerificationError, match=r"recorded type f32\[1,2\] but the rule gives"):
        gn.verify(g)


def test_verify_catches_use_before_definition() -> None:
    g = small_cnn()
    g.nodes.reverse()
    with pytest.raises(gn.VerificationError, match="not defined before use"):
        gn.verify(g)


def test_topological_order_uses_networkx_and_keeps_creation_order() -> None:
    g = small_cnn()
    assert g.topological_order() == g.nodes
    probs = g.outputs[0]
    needed = g.subgraph_order([probs])
    assert needed[-1] is probs and all(n in g.nodes for n in needed)
