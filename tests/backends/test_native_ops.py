"""The kernels of the ops that ran numpy's reference until every op had one: dropout (bit for bit
the reference's random numbers, run after run), integer pow (with the reference's error for a
negative exponent), attention below O2, flattened argmax/argmin, size, and matmuls of vectors."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from graphnn.backends.aot.api import STATUS
from graphnn.backends.llvm import LLVMBackend
from graphnn.backends.opencl import OpenCLBackend

import graphnn as gn
from tests.backends.native import BACKENDS, run_native

NATIVE = ["llvm", "opencl"]


def _backend(name: str) -> LLVMBackend | OpenCLBackend:
    return LLVMBackend(cache=False) if name == "llvm" else OpenCLBackend()


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 1.0])
def test_dropout_draws_the_references_numbers_every_run(backend: str, dtype: type,
                                                       p: float) -> None:
    """Same seed and run counter, same mask: three runs of a training step (dropout and its
    gradient, which reuses the mask) equal the reference's, and the masks change per run."""
    rng = np.random.default_rng(0)
    with gn.Graph() as g:
        x = gn.placeholder((33, 70), dtype, name="x")
        w = gn.variable(rng.standard_normal((70,)).astype(dtype), name="w")
        y = gn.dropout(x * w, p=p, seed=2024)
        loss = gn.sum(y * y)
        (dw,) = gn.gradients(loss, [w])
    xv = rng.standard_normal((33, 70)).astype(dtype)
    xv[0, :3] = [-2.0, np.inf, np.nan]  # dropped values keep x * 0's sign and NaNs
    native = gn.Session(g, backend=_backend(backend))
    reference = gn.Session(g, backend="reference")
    masks = []
    for _ in range(3):
        got, want = native.run([y, dw], {x: xv}), reference.run([y, dw], {x: xv})
        np.testing.assert_array_equal(got[0], want[0])  # bit for bit, NaNs in place
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
        masks.append(got[0][1:] != 0)
    assert native.run_counter == 3
    if 0.0 < p < 1.0:
        assert not np.array_equal(masks[0], masks[1])
    exe = next(iter(native._cache.values())).exe
    assert not exe.fallback_ops
    assert any(k.random for k in exe.kernels) == (0.0 < p < 1.0)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("opt_level", [0, 2])
def test_integer_pow_raises_the_references_error_on_a_negative_exponent(
        backend: str, opt_level: int) -> None:
    """At O2 pow is fused with the add: the fused kernel checks too. A failed step changes no
    variable, and the next run works."""
    with gn.Graph() as g:
        a = gn.placeholder((5,), gn.int64, name="a")
        b = gn.placeholder((5,), gn.int64, name="b")
        count = gn.variable(np.array(0, np.int64), name="count")
        y = gn.pow(a, b) + 1
        step = gn.assign_add(count, gn.sum(y))
    sess = gn.Session(g, backend=_backend(backend), opt_level=opt_level)
    av = np.array([2, -3, 0, 7, 3], np.int64)
    bad = np.array([3, 2, 1, -1, 40], np.int64)
    with pytest.raises(gn.ExecutionError) as native:
        sess.run([step, y], {a: av, b: bad})
    with pytest.raises(gn.ExecutionError) as reference:
        gn.Session(g, backend="reference").run([step, y], {a: av, b: bad})
    message = str(native.value)
    assert "Integers to negative integer powers are not allowed" in message
    if opt_level == 0:  # the reference's message
        assert message == str(reference.value)
    else:  # the fused node's, which names the pow inside it
        assert message.startswith("fused (node") and "pow (node" in message
    assert sess.run(count) == 0
    good = np.array([3, 2, 1, 0, 40], np.int64)
    _, got = sess.run([step, y], {a: av, b: good})
    np.testing.assert_array_equal(got, np.power(av, good) + 1)  # 3**40 wraps as numpy's does
    assert sess.run(count) == got.sum()
    exe = next(iter(sess._cache.values())).exe
    assert not exe.fallback_ops


def test_a_compiled_library_returns_a_negative_power_status(tmp_path: pathlib.Path) -> None:
    with gn.Graph():
        e = gn.placeholder((3,), gn.int32, name="e")
        out = gn.pow(gn.constant(np.array([2, 3, 5], np.int32)), e)
    gn.compile(out, [np.zeros(3, np.int32)], output=str(tmp_path / "pw"))
    model = gn.load_compiled(tmp_path / "libpw.so")
    np.testing.assert_array_equal(model(np.array([1, 2, 3], np.int32)), [2, 9, 125])
    with pytest.raises(gn.ExecutionError, match="an integer was raised to a negative power"):
        model(np.array([1, -2, 3], np.int32))
    header = (tmp_path / "pw.h").read_text()
    assert f"GRAPHNN_ERR_NEGATIVE_POWER = {STATUS['GRAPHNN_ERR_NEGATIVE_POWER']}" in header


ATTENTION = [  # q, k, v shapes, mask shape (None, or bool/additive), is_causal, scale
    ((2, 3, 5, 8), (2, 1, 7, 8), (2, 3, 7, 4), None, False, None),  # broadcast heads
    ((4, 6, 3), (4, 9, 3), (4, 9, 5), None, True, 0.3),  # causal, L < S
    ((3, 7, 4), (3, 5, 4), (3, 5, 2), ("bool", (7, 5)), False, None),
    ((2, 4, 16), (2, 4, 16), (2, 4, 16), ("additive", (1, 4, 4)), False, 0.5),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("qs", "ks", "vs", "mask", "causal", "scale"), ATTENTION)
def test_attention_kernel(backend: str, qs: tuple, ks: tuple, vs: tuple, mask: tuple | None,
                          causal: bool, scale: float | None) -> None:
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in (qs, ks, vs)]
    if mask is not None:
        kind, shape = mask
        m = rng.random(shape) > 0.4 if kind == "bool" else rng.standard_normal(shape)
        if kind == "bool":
            m[..., 0] = True  # every row keeps a key (a row of none is NaN, as the reference)
        arrays.append(m.astype(np.bool_ if kind == "bool" else np.float32))

    def build(q, k, v, *m):  # type: ignore[no-untyped-def]
        return gn.scaled_dot_product_attention(q, k, v, *m, is_causal=causal, scale=scale)

    got, want = run_native(backend, build, arrays)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flattened_argmax_argmin_and_size(backend: str) -> None:
    x = np.random.default_rng(4).integers(0, 5, (6, 7, 5)).astype(np.float32)
    x[2, 3, 1] = np.nan  # the first NaN counts as the extreme, as numpy
    x[4, 0, 0] = np.nan
    for build in (gn.argmax, lambda t: gn.argmin(t, keepdims=True),
                  lambda t: gn.ops.make_node("size", [t], {"axes": (0, 2)})):
        got, want = run_native(backend, build, [x])
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype and got.shape == want.shape
    got, want = run_native(backend, gn.argmax, [np.arange(30.0).reshape(5, 6)])
    assert got == want == 29


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("m", "n"), [(1, 512), (3, 96), (5, 48), (1, 40), (6, 64)])
def test_few_row_matmul_splits_columns_with_its_epilogue(backend: str, m: int, n: int) -> None:
    """Fewer than six rows and n a multiple of 16 (twice or more): one parallel iteration per
    block of columns (the GEMM template's register block takes six rows); at O2 a bias, a
    ReLU and a scale join it as its epilogue."""
    rng = np.random.default_rng(6)
    w, bias = rng.standard_normal((37, n)).astype(np.float32), rng.standard_normal(n)
    got, want = run_native(backend, lambda x: gn.relu(gn.matmul(x, gn.constant(w)) + bias.astype(
        np.float32)) * 2.0, [rng.standard_normal((m, 37)).astype(np.float32)], opt_level=2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with gn.Graph():
        node = gn.matmul(gn.placeholder((m, 37), name="x"), gn.constant(w))
    split = LLVMBackend(cache=False).compile(node.graph, [node]).kernels[0].body[0]
    assert split.var == ("jb" if m < 6 and n % 16 == 0 else "i")  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("a", "b"), [((5,), (3, 5, 4)), ((2, 6, 5), (5,)), ((7,), (7,)),
                                      ((4,), (4, 3))])
def test_matmul_of_vectors(backend: str, a: tuple, b: tuple) -> None:
    rng = np.random.default_rng(5)
    got, want = run_native(backend, gn.matmul, [rng.standard_normal(a).astype(np.float32),
                                                rng.standard_normal(b).astype(np.float32)])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
