"""Each pass: the rewrite happens (op kinds and counts before/after) and results are unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from graphnn.passes import PassError, PassManager, run_passes
from graphnn.passes.bn_fold import fold_batch_norm
from graphnn.passes.cse import eliminate_common_subexpressions
from graphnn.passes.dce import eliminate_dead_code
from graphnn.passes.fold import fold_constants
from graphnn.passes.fuse import fuse_elementwise, fuse_epilogue
from graphnn.passes.memory import plan_memory
from graphnn.passes.simplify import simplify
from graphnn.passes.specialize import freeze_variables, specialize

import graphnn as gn
from graphnn import models


def ops(graph: gn.Graph) -> list[str]:
    return [n.op for n in graph.nodes if n.op not in ("placeholder", "constant", "variable")]


def same_results(a: gn.Graph, b: gn.Graph, feeds: dict, exact: bool = True) -> None:
    got_a = gn.Session(a, backend="reference").run(list(a.outputs), feeds)
    got_b = gn.Session(b, backend="reference").run(list(b.outputs), feeds)
    for x, y in zip(got_a, got_b):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_fold_constants() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((2, 3), name="x")
        c = gn.exp(gn.constant(np.ones((2, 3), np.float32))) * 2.0
        w = gn.variable(np.arange(6, dtype=np.float32).reshape(3, 2), name="w")
        g.outputs = (x * c + gn.sum(gn.transpose(w)),)
    folded = fold_constants(g)
    assert ops(folded) == ["mul", "transpose", "sum", "add"]
    assert ops(fold_constants(g, variables_as_constants=True)) == ["mul", "add"]
    same_results(g, folded, {"x": np.ones((2, 3))})


def test_cse_merges_pure_nodes_only() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((3,), name="x")
        y = gn.placeholder((3,), name="y")
        a, b = gn.exp(x), gn.exp(x)
        s1, s2 = x + y, y + x  # commutative: the same value
        d1, d2 = gn.dropout(x, seed=1), gn.dropout(x, seed=1)  # random: never merged
        g.outputs = (a * b + s1 * s2, d1 + d2)
    out = eliminate_dead_code(eliminate_common_subexpressions(g))
    assert ops(out).count("exp") == 1 and ops(out).count("add") == 3  # of 4
    assert ops(out).count("dropout") == 2
    same_results(g, out, {"x": np.arange(3.0), "y": np.ones(3)})


def test_dce_keeps_what_outputs_need() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((3,), name="x")
        used, _unused = gn.exp(x), gn.log(x)
        g.outputs = (used,)
    assert ops(eliminate_dead_code(g)) == ["exp"]
    g.outputs = ()
    with pytest.raises(PassError, match="needs graph.outputs"):
        eliminate_dead_code(g)


def _simplified(build) -> list[str]:  # type: ignore[no-untyped-def]
    with gn.Graph() as g:
        x = gn.placeholder((2, 3), name="x")
        g.outputs = (gn.relu(build(x)),)
    out = eliminate_dead_code(simplify(g))
    same_results(g, out, {"x": np.array([[-0.0, 1.5, -2.0], [3.0, np.nan, np.inf]])})
    return ops(out)


@pytest.mark.parametrize(("build", "left"), [
    (lambda x: x * 1.0, ["relu"]),                           # x*1 -> x
    (lambda x: 1.0 * x, ["relu"]),                           # 1*x -> x
    (lambda x: x - 0.0, ["relu"]),                           # x-0 -> x
    (lambda x: x + (-0.0), ["relu"]),                        # x+(-0) -> x
    (lambda x: x + 0.0, ["add", "relu"]),                    # x+0 stays: -0 + 0 = +0
    (lambda x: x / 1.0, ["relu"]),                           # x/1 -> x
    (lambda x: x ** 1.0, ["relu"]),                          # x**1 -> x
    (lambda x: gn.neg(gn.neg(x)), ["relu"]),                 # neg(neg x) -> x
    (lambda x: x.T.T, ["relu"]),                             # double transpose -> x
    (lambda x: gn.transpose(x, (0, 1)), ["relu"]),           # identity transpose -> x
    (lambda x: x.reshape(6).reshape(3, 2), ["reshape", "relu"]),  # reshape(reshape) -> reshape
    (lambda x: x.reshape(2, 3), ["relu"]),                   # reshape to own shape -> x
    (lambda x: gn.broadcast_to(x, (2, 3)), ["relu"]),        # same-shape broadcast -> x
    (lambda x: gn.sum(x[:, None], axis=1), ["unsqueeze", "squeeze", "relu"]),  # sum, size-1 axis
    (lambda x: gn.identity(x), ["relu"]),                    # identity(x) -> x
    (lambda x: gn.cast(x, "float32"), ["relu"]),             # cast to own dtype -> x
    (lambda x: x * np.ones((4, 2, 3), np.float32), ["mul", "relu"]),  # broadcasting: kept
])
def test_simplify_rule(build, left) -> None:  # type: ignore[no-untyped-def]
    assert _simplified(build) == left


def test_simplify_fast_math_drops_plus_zero() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((2,), name="x")
        g.outputs = (x + 0.0,)
    assert ops(eliminate_dead_code(simplify(g, fast_math=True))) == []


def test_fold_batch_norm_into_conv_and_dense() -> None:
    graph, _ = models.inference_graph("cnn-bn", batch=2)
    frozen = fold_constants(freeze_variables(graph))
    folded = eliminate_dead_code(fold_batch_norm(frozen))
    assert "batch_norm" in ops(frozen) and "batch_norm" not in ops(folded)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    same_results(graph, folded, {"x": x}, exact=False)
    with gn.Graph() as g:
        xs = gn.placeholder((4, 3), name="x")
        rng = np.random.default_rng(1)
        h = gn.dense(xs, gn.constant(rng.standard_normal((3, 5)).astype(np.float32)),
                     gn.constant(rng.standard_normal(5).astype(np.float32)))
        stats = [gn.constant(v.astype(np.float32)) for v in
                 (rng.standard_normal(5), rng.uniform(0.5, 2, 5), rng.standard_normal(5),
                  rng.standard_normal(5))]
        g.outputs = (gn.batch_norm(h, *stats),)
    dense = eliminate_dead_code(fold_batch_norm(g))
    assert ops(dense) == ["matmul", "add"]
    same_results(g, dense, {"x": rng.standard_normal((4, 3))}, exact=False)


def test_dense_bias_relu_is_one_kernel_and_mlp_has_three() -> None:
    graph, _ = models.inference_graph("mlp", batch=8)
    out = PassManager(opt_level=2, verify=True, variables_as_constants=True).run(graph)
    assert ops(out) == ["fused", "fused", "fused", "softmax"]
    bodies = [n.attrs["body"].ops for n in out.nodes if n.op == "fused"]
    assert bodies == [["matmul", "add", "relu"], ["matmul", "add", "relu"], ["matmul", "add"]]
    # folded weights are contiguous: BLAS sums in another order, so compare with a tolerance
    same_results(graph, out, {"x": np.random.default_rng(0).standard_normal((8, 784))},
                 exact=False)


def test_digits_cnn_kernel_count() -> None:
    graph, _ = models.inference_graph("digits-cnn", batch=4)
    out = PassManager(opt_level=2, verify=True, variables_as_constants=True).run(graph)
    assert ops(out) == ["fused", "max_pool", "fused", "max_pool", "flatten", "fused"]
    assert [n.attrs["kind"] for n in out.nodes if n.op == "fused"] == ["epilogue"] * 3
    same_results(graph, out, {"x": np.random.default_rng(0).random((4, 1, 8, 8))}, exact=False)


def test_training_graph_fuses_conv_and_relu() -> None:
    """relu's gradient reads relu's output (not its input), so in a training step the
    convolution's only consumer is the relu and it takes the relu as its epilogue."""
    with gn.Graph() as g:
        x = gn.placeholder((2, 3, 8, 8), name="x")
        w = gn.variable(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32),
                        name="w")
        y = gn.relu(gn.conv(x, w, padding=1))
        loss = gn.sum(y * y)
        (dw,) = gn.gradients(loss, [w])
        g.outputs = (loss, dw)
    out = PassManager(opt_level=2, verify=True).run(g)
    bodies = [n.attrs["body"].ops for n in out.nodes if n.op == "fused"]
    assert ["conv", "relu"] in bodies
    assert "relu" not in ops(out)
    same_results(g, out, {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8))},
                 exact=False)


def test_fuse_elementwise_groups_and_boundaries() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((4, 5), gn.float64, name="x")
        shared = gn.exp(x)                 # used twice: its own kernel output
        a = gn.tanh(shared * 2.0 + 1.0)
        b = gn.sum(gn.sigmoid(shared) * x, axis=1)  # reduction with elementwise producers
        g.outputs = (a, b)
    out = fuse_elementwise(g)
    kinds = {n.attrs["kind"]: n.attrs["body"].ops for n in out.nodes if n.op == "fused"}
    assert kinds == {"elementwise": ["mul", "add", "tanh"], "reduction": ["sigmoid", "mul", "sum"]}
    assert ops(out).count("exp") == 1
    same_results(g, out, {"x": np.random.default_rng(0).standard_normal((4, 5))})


def test_fuse_epilogue_stops_at_shared_values_and_outputs() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((4, 5), name="x")
        w = gn.placeholder((5, 6), name="w")
        y = gn.matmul(x, w) + 1.0
        g.outputs = (gn.relu(y), y)  # y is fetched: the epilogue ends there
    out = fuse_epilogue(g)
    assert ops(out) == ["fused", "relu"]
    assert out.nodes[-1].op == "relu" or ops(out)[0] == "fused"


def test_fuse_epilogue_takes_the_producers_of_its_side_operands() -> None:
    """A ReLU gradient's mask cast(greater(h, 0)), computed for the epilogue alone, is computed in
    the write-back (the fused node reads h); a producer with another consumer, of another shape
    or among the anchor's inputs stays outside."""
    rng = np.random.default_rng(0)
    with gn.Graph() as g:
        dy = gn.placeholder((2, 4, 6, 6), gn.float64, name="dy")
        h = gn.placeholder((2, 3, 8, 8), gn.float64, name="h")
        x = gn.placeholder((4, 5), gn.float64, name="x")
        w = gn.constant(rng.standard_normal((4, 3, 3, 3)))
        mask = gn.cast(h > 0.0, gn.float64)
        dx = gn.conv_transpose(dy, w) * mask
        shared = gn.exp(x)  # also fetched: not taken into the epilogue
        row = gn.tanh(gn.placeholder((6,), gn.float64, name="r"))  # broadcast: another shape
        y = gn.matmul(gn.abs(x), gn.placeholder((5, 6), gn.float64, name="v")) * row + shared[:, :1]
        g.outputs = (dx, y, shared)
    out = fuse_epilogue(g)
    bodies = [n.attrs["body"].ops for n in out.nodes if n.op == "fused"]
    assert ["conv_transpose", "greater", "cast", "mul"] in bodies
    assert ["matmul", "mul", "add"] in bodies
    assert {"greater", "cast"}.isdisjoint(ops(out)) and {"exp", "abs", "tanh"} <= set(ops(out))
    feeds = {"dy": rng.standard_normal((2, 4, 6, 6)), "h": rng.standard_normal((2, 3, 8, 8)),
             "x": rng.standard_normal((4, 5)), "r": rng.standard_normal(6),
             "v": rng.standard_normal((5, 6))}
    same_results(g, out, feeds, exact=False)
    for backend in ("llvm", "opencl"):
        got = gn.Session(out, backend=backend, opt_level=0).run(list(out.outputs), feeds)
        want = gn.Session(g, backend="reference").run(list(g.outputs), feeds)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_memory_plan_reuses_and_works_in_place() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((64, 64), name="x")
        h = x
        for _ in range(6):
            h = gn.tanh(gn.exp(h) * 0.5)
        g.outputs = (gn.sum(h),)
    planned = plan_memory(g)
    plan = planned.meta["memory_plan"]
    assert plan.unplanned_bytes == 18 * 64 * 64 * 4
    assert plan.arena_bytes <= 2 * 64 * 64 * 4 and plan.in_place
    _assert_no_live_overlap(planned, plan)
    graph, _ = models.inference_graph("digits-cnn", batch=8)
    pm = PassManager(opt_level=3, variables_as_constants=True)
    out = pm.run(graph)
    plan = out.meta["memory_plan"]
    assert 0 < plan.arena_bytes < plan.unplanned_bytes
    _assert_no_live_overlap(out, plan)
    assert "bytes in the arena" in pm.report()
    with pytest.raises(PassError, match="needs static shapes"):
        run_passes(models.inference_graph("mlp")[0], ["plan_memory"])


def _assert_no_live_overlap(graph: gn.Graph, plan) -> None:  # type: ignore[no-untyped-def]
    from graphnn.passes.rewrite import consumers

    from graphnn.text_ir import node_id

    users = consumers(graph)
    spans = {}
    for i, n in enumerate(graph.nodes):
        key = node_id(n, i)
        if key in plan.offsets:
            end = max([graph.nodes.index(u) for u in users[n]], default=i)
            spans[key] = (i, end, *plan.offsets[key])
    in_place = {a: b for a, b in plan.in_place}
    for a, (s1, e1, o1, b1) in spans.items():
        for b, (s2, e2, o2, b2) in spans.items():
            if a >= b or in_place.get(a) == b or in_place.get(b) == a:
                continue
            if s1 < e2 and s2 < e1:  # both live at once: their bytes must not overlap
                assert o1 + b1 <= o2 or o2 + b2 <= o1, (a, b)


def test_specialize_makes_shapes_static() -> None:
    graph, _ = models.inference_graph("mlp")
    assert graph.outputs[0].shape == (None, 10)
    assert specialize(graph, {"x": (3, 784)}).outputs[0].shape == (3, 10)
    with pytest.raises(gn.ShapeError, match="cannot specialise"):
        specialize(graph, {"x": (3, 7)})


def test_fused_graphs_print_and_parse_back() -> None:
    graph, _ = models.inference_graph("digits-cnn", batch=2)
    out = PassManager(opt_level=2).run(graph)
    text = str(out)
    assert "= fused[kind=\"epilogue\"](" in text and "    return %" in text
    arrays = {n.name or str(i): a for i, n in enumerate(out.nodes)
              for a in [v.array for v in n.attrs.values() if isinstance(v, gn.ArrayValue)]}
    back = gn.parse_graph(text, arrays)
    assert back.structurally_equal(out)
    gn.verify(back)
