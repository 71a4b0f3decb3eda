"""Every gradient rule against central finite differences, driven by the op table.

For each row of tests/ops/cases*.py that runs in float64 and has a floating-point output, the loss
is ``sum(op(inputs) * R)`` for a fixed random R; its gradient with respect to each differentiable
input, dotted with a random direction v, must match ``(L(x + eps v) - L(x - eps v)) / (2 eps)``
with eps = 1e-6, to rtol 1e-5 (relative to the larger magnitude) plus atol 1e-7.
Second derivatives (Hessian-vector products) are checked the same way for elementwise ops and
matmul.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from graphnn.backends import available_backends

import graphnn as gn
from tests.ops import cases_nn  # noqa: F401 - registers the NN rows
from tests.ops.cases import CASES, Case

EPS, RTOL, ATOL = 1e-6, 1e-5, 1e-7
# Rows whose inputs sit exactly on a discontinuity, where a finite difference is meaningless.
ON_A_KINK = {"round-half-even"}
# Ops with float inputs but no gradient rule, and why.
NO_RULE = {
    "slice_grad": "backward kernel", "take_grad": "backward kernel",
    "gather_grad": "backward kernel", "pad_grad": "backward kernel",
    "conv_weight_grad": "backward kernel", "max_pool_grad": "backward kernel",
    "avg_pool_grad": "backward kernel", "adaptive_pool_grad": "backward kernel",
    "assign": "state write", "assign_add": "state write", "group": "no value",
    "full_like": "value does not depend on the input", "size": "integer-valued",
    "one_hot": "integer input", "argmax": "integer output", "argmin": "integer output",
    "logical_not": "bool", "fused": "built after differentiation, by the fusion passes",
}

# Rules checked by a dedicated test instead of finite differences, and where.
CHECKED_ELSEWHERE = {"dropout": "tests/ops/test_dropout.py: a fresh mask per run defeats "
                                "finite differences; the gradient is checked against the mask"}

ROWS = [pytest.param(c, id=c.id) for c in CASES
        if "float64" in c.dtypes and c.out_dtype in (None, "float64") and c.id not in ON_A_KINK]


def _loss_graph(case: Case, arrays: list[np.ndarray]):  # type: ignore[no-untyped-def]
    with gn.Graph("grad") as g:
        nodes = [gn.placeholder(a.shape, a.dtype, name=f"in{i}") for i, a in enumerate(arrays)]
        out = case.build(*nodes)
        r = np.random.default_rng(1).standard_normal(out.shape)
        loss = gn.sum(out * gn.constant(r.astype(out.dtype.np)))
    return g, nodes, loss


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("case", ROWS)
def test_gradient_matches_finite_differences(case: Case, backend: str) -> None:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    arrays = [spec.make(rng, "float64") for spec in case.inputs]
    g, nodes, loss = _loss_graph(case, arrays)
    checked = 0
    for i, (node, arr) in enumerate(zip(nodes, arrays)):
        if not node.dtype.is_float:
            continue
        try:
            (grad,) = gn.gradients(loss, [node])
        except gn.GraphError as e:
            assert "not differentiable" in str(e), str(e)
            continue
        sess = gn.Session(g, backend=backend)
        feeds = dict(zip(nodes, arrays))
        analytic = np.zeros_like(arr) if grad is None else sess.run(grad, feeds)
        assert analytic.shape == arr.shape and analytic.dtype == arr.dtype
        v = rng.standard_normal(arr.shape)
        plus = sess.run(loss, {**feeds, node: arr + EPS * v})
        minus = sess.run(loss, {**feeds, node: arr - EPS * v})
        numeric = (plus - minus) / (2 * EPS)
        want = float(np.sum(analytic * v))
        scale = max(abs(numeric), abs(want))
        assert abs(numeric - want) <= RTOL * scale + ATOL, (
            f"input {i}: analytic {want!r} vs finite difference {numeric!r}")
        checked += 1
    nondiff = gn.get_op(case.op).nondiff_inputs
    assert checked or all(i in nondiff for i, n in enumerate(nodes) if n.dtype.is_float), (
        "no input was checked")


SECOND_ORDER = ["exp", "log", "tanh", "sigmoid", "sin", "gelu", "softplus", "silu", "mish",
                "rsqrt", "erf", "softsign", "elu", "reciprocal"]


@pytest.mark.parametrize("op", SECOND_ORDER)
def test_second_derivative_of_elementwise_ops(op: str) -> None:
    x0 = np.random.default_rng(3).uniform(0.2, 2.0, (3, 4))
    _check_hvp(lambda x: getattr(gn, op)(x), [x0])


def test_second_derivative_of_matmul_and_binary_ops() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 3))
    _check_hvp(lambda a, b: gn.tanh(a @ b), [a, b])
    _check_hvp(lambda a, b: a * gn.transpose(b) / (1.5 + a * a), [a, b])
    _check_hvp(lambda a, b: gn.softmax(a @ b) ** 2, [a, b])


def _check_hvp(build, arrays: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    """H u from gradients-of-gradients against finite differences of the gradient."""
    rng = np.random.default_rng(5)
    with gn.Graph() as g:
        xs = [gn.placeholder(a.shape, gn.float64) for a in arrays]
        out = build(*xs)
        loss = gn.sum(out * gn.constant(rng.standard_normal(out.shape)))
        grads = gn.gradients(loss, xs)
        us = [rng.standard_normal(a.shape) for a in arrays]
        gdotu = gn.sum(gn.stack([gn.sum(gr * gn.constant(u)) for gr, u in zip(grads, us)]))
        hvps = gn.gradients(gdotu, xs)
    sess = gn.Session(g, backend="reference")
    feeds = dict(zip(xs, arrays))
    analytic = sess.run(hvps, feeds)
    shifted = [{x: a + s * EPS * u for x, a, u in zip(xs, arrays, us)} for s in (1, -1)]
    plus, minus = (sess.run(grads, f) for f in shifted)
    for an, p, m in zip(analytic, plus, minus):
        np.testing.assert_allclose(an, (p - m) / (2 * EPS), rtol=1e-5, atol=1e-6)


def test_every_differentiable_op_has_a_rule_and_a_check() -> None:
    checked = {c.op for c in CASES if "float64" in c.dtypes and c.out_dtype in (None, "float64")}
    for name, opdef in gn.all_ops().items():
        lo, hi = opdef.arity
        all_nondiff = hi is not None and set(range(hi)) <= set(opdef.nondiff_inputs)
        if name in NO_RULE or opdef.arity == (0, 0) or all_nondiff:
            continue
        assert opdef.gradient is not None, f"{name} has no gradient rule (or add it to NO_RULE)"
        if name in CHECKED_ELSEWHERE:
            continue
        assert name in checked, f"{name} has a rule but no finite-difference row"


def test_gradient_semantics() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((3,), gn.float64, name="x")
        unused = gn.placeholder((3,), gn.float64, name="unused")
        idx = gn.placeholder((2,), gn.int64, name="idx")
        y = gn.sum(gn.take(x * x, idx))
        assert gn.gradients(y, [unused]) == [None]  # not connected: None, as TensorFlow
        with pytest.raises(gn.GraphError, match="dtype int64 is not floating point"):
            gn.gradients(y, [idx])
        mask = gn.placeholder((3,), gn.float64, name="mask")
        z = gn.sum(gn.take(x, gn.cast(mask, gn.int64)))
        want = r"no gradient flows to %mask: f64\[3\]: it is input 1 of take.*not differentiable"
        with pytest.raises(gn.GraphError, match=want):
            gn.gradients(z, [mask])
        (gx,) = gn.gradients(y, [x], grad_ys=[gn.constant(2.0, gn.float64)])
        # broadcast seeds: d/dx sum(x[idx]^2) * 2
    out = gn.Session(g, backend="reference").run(gx, {x: [1.0, 2.0, 3.0], idx: [2, 2]})
    np.testing.assert_allclose(out, [0, 0, 24])


def test_gradients_are_graph_nodes_with_scopes() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((2, 2), name="x")
        with gn.name_scope("dense"):
            y = gn.relu(x @ x)
        (gx,) = gn.gradients(gn.sum(y), [x])
    assert gx.graph is g and gx.op == "add"  # two paths into x sum up
    assert any(n.scope == "grad.dense" for n in g.nodes)
    gn.verify(g)
