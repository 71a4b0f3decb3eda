"""Native backward kernels (convolution, pooling, slice and pad gradients) on every
code-generating backend, against the reference implementation: strides, padding, dilation,
groups, ceil_mode, and ties and NaNs in max-pool windows (the first maximum takes the gradient,
as PyTorch)."""

from __future__ import annotations

import numpy as np
import pytest
from graphnn.backends.llvm import LLVMBackend

import graphnn as gn
from graphnn.ops.registry import make_node
from tests.backends.native import BACKENDS, run_native


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("xs", "ks", "kw"), [
    ((2, 3, 9, 8), (4, 3, 3, 3), {"stride": (1, 1), "pads": (1, 1, 1, 1), "dilation": (1, 1),
                                  "groups": 1}),
    ((1, 4, 11, 10), (6, 2, 3, 2), {"stride": (2, 3), "pads": (1, 0, 2, 1),
                                    "dilation": (2, 1), "groups": 2}),
    ((2, 2, 13), (2, 1, 4), {"stride": (2,), "pads": (2, 1), "dilation": (1,), "groups": 2})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_weight_grad(backend: str, xs: tuple, ks: tuple, kw: dict, dtype: type) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dtype)
    nd = len(xs) - 2
    out = [(xs[2 + d] + kw["pads"][d] + kw["pads"][d + nd] - kw["dilation"][d] * (ks[2 + d] - 1)
            - 1) // kw["stride"][d] + 1 for d in range(nd)]
    dy = rng.standard_normal((xs[0], ks[0], *out)).astype(dtype)

    def build(xn, dyn):  # type: ignore[no-untyped-def]
        return make_node("conv_weight_grad", [xn, dyn], {**kw, "kernel_size": ks[2:]})

    got, want = run_native(backend, build, [x, dy])
    assert got.shape == ks
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("xs", "kw"), [
    ((2, 3, 8, 8), {"kernel_size": (2, 2), "stride": (2, 2), "pads": (0, 0, 0, 0),
                    "dilation": (1, 1), "ceil_mode": False}),
    ((1, 2, 9, 7), {"kernel_size": (3, 3), "stride": (2, 1), "pads": (1, 1, 1, 1),
                    "dilation": (1, 2), "ceil_mode": True}),
    ((2, 2, 10), {"kernel_size": (3,), "stride": (3,), "pads": (1, 1), "dilation": (1,),
                  "ceil_mode": True}),
    # windows that tile the input (each writes its own taps): rows of many windows, elements
    # past the last window, 1-D and 3-D
    ((1, 4, 24, 70), {"kernel_size": (2, 2), "stride": (2, 2), "pads": (0, 0, 0, 0),
                      "dilation": (1, 1), "ceil_mode": False}),
    ((2, 3, 9, 11), {"kernel_size": (2, 3), "stride": (2, 3), "pads": (0, 0, 0, 0),
                     "dilation": (1, 1), "ceil_mode": False}),
    ((2, 2, 33), {"kernel_size": (4,), "stride": (4,), "pads": (0, 0), "dilation": (1,),
                  "ceil_mode": False}),
    ((1, 2, 4, 6, 5), {"kernel_size": (2, 2, 2), "stride": (2, 2, 2), "pads": (0,) * 6,
                       "dilation": (1, 1, 1), "ceil_mode": False})])
def test_max_pool_grad_routes_to_the_first_maximum(backend: str, xs: tuple, kw: dict) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, xs).astype(np.float32)  # many ties
    x.flat[::17] = np.nan  # NaN counts as the maximum, the first one wins
    with gn.Graph():
        out_shape = make_node("max_pool", [gn.placeholder(xs, name="x")], kw).shape
    dy = rng.standard_normal(out_shape).astype(np.float32)
    got, want = run_native(backend, lambda d, xn: make_node("max_pool_grad", [d, xn], kw), [dy, x])
    assert np.isfinite(want).all() and np.count_nonzero(want) > 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("xs", "ws", "kw"), [
    ((2, 4, 5, 6), (4, 3, 3, 3), {"stride": (2, 2), "pads": (1, 1, 1, 1), "dilation": (1, 1),
                                  "groups": 1, "output_padding": (1, 0)}),
    ((1, 4, 7, 5), (4, 2, 2, 3), {"stride": (1, 3), "pads": (0, 1, 1, 0), "dilation": (2, 1),
                                  "groups": 2, "output_padding": (0, 2)}),
    ((2, 3, 6), (3, 2, 4), {"stride": (3,), "pads": (2, 1), "dilation": (1,), "groups": 1,
                            "output_padding": (1,)}),
    # 16 or more output channels per group: the implicit GEMM on GPUs
    ((2, 8, 5, 6), (8, 16, 3, 3), {"stride": (2, 2), "pads": (1, 1, 1, 1), "dilation": (1, 1),
                                   "groups": 1, "output_padding": (1, 0)}),
    ((1, 4, 7, 5), (4, 17, 2, 3), {"stride": (1, 2), "pads": (0, 1, 1, 0), "dilation": (2, 1),
                                   "groups": 2, "output_padding": (0, 1)}),
    ((2, 6, 9), (6, 20, 4), {"stride": (3,), "pads": (2, 1), "dilation": (1,), "groups": 1,
                             "output_padding": (2,)})])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose(backend: str, xs: tuple, ws: tuple, kw: dict, bias: bool) -> None:
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(
        np.float32)]
    if bias:
        arrays.append(rng.standard_normal(ws[1] * kw["groups"]).astype(np.float32))
    got, want = run_native(backend, lambda *n: make_node("conv_transpose", list(n), kw), arrays)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _forward_shape(op: str, xs: tuple, kw: dict) -> tuple:
    with gn.Graph():
        return tuple(make_node(op, [gn.placeholder(xs, name="x")], kw).shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("xs", "kw"), [
    ((2, 3, 8, 8), {"kernel_size": (2, 2), "stride": (2, 2), "pads": (0, 0, 0, 0),
                    "dilation": (1, 1), "ceil_mode": False, "count_include_pad": True}),
    ((1, 2, 9, 7), {"kernel_size": (3, 3), "stride": (2, 1), "pads": (1, 1, 1, 1),
                    "dilation": (1, 2), "ceil_mode": True, "count_include_pad": False}),
    ((1, 2, 9, 7), {"kernel_size": (3, 2), "stride": (2, 2), "pads": (1, 0, 1, 1),
                    "dilation": (1, 1), "ceil_mode": True, "count_include_pad": True}),
    ((2, 2, 10), {"kernel_size": (3,), "stride": (3,), "pads": (1, 1), "dilation": (1,),
                  "ceil_mode": True, "count_include_pad": False})])
def test_avg_pool_grad(backend: str, xs: tuple, kw: dict) -> None:
    """Overlapping windows, padding counted or not, the ceil-mode overhang never counted."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(xs).astype(np.float32)
    dy = rng.standard_normal(_forward_shape("avg_pool", xs, kw)).astype(np.float32)
    got, want = run_native(backend, lambda d, xn: make_node("avg_pool_grad", [d, xn], kw), [dy, x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize(("xs", "out"), [((2, 3, 7, 9), (3, 4)), ((1, 2, 5), (5,)),
                                         ((1, 2, 3, 4), (5, 2)), ((2, 2, 6, 6), (1, 1))])
def test_adaptive_pool_grad(backend: str, mode: str, xs: tuple, out: tuple) -> None:
    """Windows of unequal sizes that overlap where sizes do not divide (or the output is larger
    than the input); max: the first maximum of each window, ties and NaN included."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, xs).astype(np.float32)  # ties
    x.flat[::11] = np.nan
    dy = rng.standard_normal(xs[:2] + out).astype(np.float32)
    kw = {"output_size": out, "mode": mode}
    got, want = run_native(backend, lambda d, xn: make_node("adaptive_pool_grad", [d, xn], kw),
                           [dy, x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("xs", "starts", "stops", "steps"), [
    ((6, 7), (1, None), (5, None), (2, 1)),
    ((6, 7), (None, -2), (None, 0), (1, -3)),  # negative step, from the end
    ((4, 5, 3), (3, 1, 0), (None, 100, 3), (1, 2, 2)),
    ((5,), (4,), (4,), (1,)),  # an empty slice: dx is zeros
])
def test_slice_grad(backend: str, xs: tuple, starts: tuple, stops: tuple, steps: tuple) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs).astype(np.float32)
    kw = {"starts": starts, "stops": stops, "steps": steps}
    dy = rng.standard_normal(x[tuple(slice(*a) for a in zip(starts, stops, steps))].shape
                             ).astype(np.float32)
    got, want = run_native(backend, lambda d, xn: make_node("slice_grad", [d, xn], kw), [dy, x])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
@pytest.mark.parametrize(("xs", "pads"), [((5, 6), (2, 0, 1, 3)), ((1, 4), (0, 3, 0, 2)),
                                          ((2, 3, 4), (0, 1, 2, 1, 2, 3)), ((7,), (0, 0))])
def test_pad_grad(backend: str, mode: str, xs: tuple, pads: tuple) -> None:
    """Each padded position's gradient goes to the element it copies (edge: the border element
    collects the whole border; reflect: mirrors add to the element they mirror)."""
    nd = len(xs)  # every pad is smaller than its axis, as reflect requires
    rng = np.random.default_rng(6)
    x = rng.standard_normal(xs).astype(np.float64)
    dy = rng.standard_normal([xs[d] + pads[d] + pads[d + nd] for d in range(nd)])
    kw = {"pads": pads, "mode": mode, "value": 0.0}
    got, want = run_native(backend, lambda d, xn: make_node("pad_grad", [d, xn], kw), [dy, x])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# -- the LLVM backend's GEMM templates for the convolution gradients (conv_grads.py) -------------
# Shapes big enough for the templates (the cases above are small enough for the loop nests),
# with odd column counts (masked vector tails), groups, strides, dilation, 1-d and 3-d.


def _template_run(build, arrays, template: str, opt_level: int = 0):  # type: ignore[no-untyped-def]
    from graphnn.backends.llvm.codegen import template_for
    from graphnn.backends.llvm.gemm import vector_bits

    with gn.Graph("g") as g:
        nodes = [gn.placeholder(a.shape, a.dtype, name=f"x{i}") for i, a in enumerate(arrays)]
        out = build(*nodes)
    feeds = dict(zip(nodes, arrays))
    backend = LLVMBackend(cache=False)  # the default: what a user's training step gets
    sess = gn.Session(g, backend=backend, opt_level=opt_level)
    got = sess.run(out, feeds)
    exe = next(iter(sess._cache.values()))
    exe = getattr(exe, "exe", exe)
    assert not exe.fallback_ops, f"{exe.fallback_ops} ran on numpy"
    used = {template_for(k, vector_bits(backend.target.features)) for k in exe.kernels}
    assert template in {t.__name__ for t in used if t is not None}, used
    return got, gn.Session(g, backend="reference").run(out, feeds)


@pytest.mark.parametrize(("xs", "ks", "kw"), [
    ((2, 8, 14, 13), (12, 8, 3, 3), {"stride": (1, 1), "pads": (0, 0, 0, 0), "dilation": (1, 1),
                                     "groups": 1}),
    ((2, 16, 21, 21), (12, 8, 3, 3), {"stride": (2, 2), "pads": (1, 1, 1, 1),
                                      "dilation": (1, 1), "groups": 2}),
    ((2, 1, 30, 31), (32, 1, 3, 3), {"stride": (1, 1), "pads": (0, 0, 0, 0),
                                     "dilation": (1, 1), "groups": 1}),
    ((2, 6, 400), (8, 6, 5), {"stride": (2,), "pads": (3, 1), "dilation": (2,), "groups": 1}),
    ((1, 4, 8, 9, 10), (6, 4, 2, 3, 2), {"stride": (1, 1, 1), "pads": (1, 1, 1, 1, 1, 1),
                                         "dilation": (1, 1, 1), "groups": 1}),
    ((1, 8, 6, 6), (260, 8, 3, 3), {"stride": (1, 1), "pads": (0, 0, 0, 0),  # packed panels
                                    "dilation": (1, 1), "groups": 1})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_weight_grad_gemm(xs: tuple, ks: tuple, kw: dict, dtype: type) -> None:
    rng = np.random.default_rng(3)
    nd = len(xs) - 2
    out = [(xs[2 + d] + kw["pads"][d] + kw["pads"][d + nd] - kw["dilation"][d] * (ks[2 + d] - 1)
            - 1) // kw["stride"][d] + 1 for d in range(nd)]
    x = rng.standard_normal(xs).astype(dtype)
    dy = rng.standard_normal((xs[0], ks[0], *out)).astype(dtype)
    got, want = _template_run(lambda a, b: make_node(
        "conv_weight_grad", [a, b], {**kw, "kernel_size": ks[2:]}), [x, dy], "WeightGradGemm")
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize(("xs", "ks", "kw"), [
    ((4, 8, 14, 13), (36, 8, 3, 3), {"pads": (0, 0, 0, 0)}),  # og not a multiple of 8
    ((5, 16, 12, 12), (40, 16, 3, 3), {"pads": (1, 1, 1, 1)}),  # "same", masked columns
    ((6, 3, 17, 20), (32, 3, 3, 2), {"pads": (2, 0, 1, 1), "dilation": (2, 1)}),
    ((4, 6, 150), (40, 6, 5), {"pads": (3, 1), "dilation": (2,)}),
    ((4, 4, 6, 7, 8), (32, 4, 2, 3, 2), {"pads": (1, 1, 1, 1, 1, 1)}),
    ((8, 1, 30, 31), (32, 1, 3, 3), {"pads": (0, 0, 0, 0)}),  # one input channel
    ((4, 24, 40, 40), (32, 24, 3, 3), {"pads": (1, 1, 1, 1)})])  # several blocks of lines
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 3, 7])
def test_conv_weight_grad_implicit(xs: tuple, ks: tuple, kw: dict, dtype: type, threads: int,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Stride 1, one group, four images or more: the implicit weight-gradient GEMM
    (conv_implicit.ImplicitWeightGrad), each thread's images summed in a partial of its own
    (7 threads over 4-8 images: some idle), dy transposed in 8 x 8 blocks and the edges. (3x3
    float32 ones with enough tiles take Winograd's, held off here: test_llvm.py covers it.)"""
    from graphnn.backends.llvm import winograd_weight_grad
    from graphnn.backends.llvm.codegen import template_for
    from graphnn.backends.llvm.gemm import vector_bits

    monkeypatch.setattr(winograd_weight_grad, "MIN_TILES", 1 << 62)

    nd = len(xs) - 2
    kw = {"stride": (1,) * nd, "dilation": (1,) * nd, "groups": 1, **kw}
    rng = np.random.default_rng(5)
    out = [xs[2 + d] + kw["pads"][d] + kw["pads"][d + nd] - kw["dilation"][d] * (ks[2 + d] - 1)
           for d in range(nd)]
    x = rng.standard_normal(xs).astype(dtype)
    dy = rng.standard_normal((xs[0], ks[0], *out)).astype(dtype)
    with gn.Graph("g") as g:
        a, b = gn.placeholder(x.shape, dtype, name="x"), gn.placeholder(dy.shape, dtype, name="dy")
        dw = make_node("conv_weight_grad", [a, b], {**kw, "kernel_size": ks[2:]})
    backend = LLVMBackend(cache=False, threads=threads)
    sess = gn.Session(g, backend=backend)
    got = sess.run(dw, {a: x, b: dy})
    (kernel,) = next(iter(sess._cache.values())).exe.kernels
    assert template_for(kernel, vector_bits(backend.target.features)).__name__ == \
        "ImplicitWeightGrad"
    want = gn.Session(g, backend="reference").run(dw, {a: x, b: dy})
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize(("xs", "ws", "kw"), [
    ((2, 16, 10, 11), (16, 8, 3, 3), {"stride": (2, 2), "pads": (1, 1, 1, 1), "dilation": (1, 1),
                                      "groups": 1, "output_padding": (1, 0)}),
    ((2, 16, 12, 12), (16, 6, 3, 2), {"stride": (1, 2), "pads": (1, 0, 2, 1), "dilation": (2, 1),
                                      "groups": 2, "output_padding": (0, 1)}),
    ((2, 8, 100), (8, 12, 5), {"stride": (3,), "pads": (2, 2), "dilation": (1,), "groups": 1,
                               "output_padding": (1,)}),
    ((1, 8, 5, 6, 7), (8, 8, 2, 3, 2), {"stride": (2, 2, 2), "pads": (1, 1, 1, 0, 0, 0),
                                        "dilation": (1, 1, 1), "groups": 1,
                                        "output_padding": (0, 1, 0)}),
    ((2, 16, 20, 21), (16, 32, 3, 3), {"stride": (2, 2), "pads": (1, 1, 1, 1),  # packed
                                       "dilation": (1, 1), "groups": 1, "output_padding": (0, 0)}),
    ((2, 8, 5, 37), (8, 4, 3, 3), {"stride": (1, 1), "pads": (0, 1, 0, 2),  # rows >= a vector
                                   "dilation": (1, 1), "groups": 1, "output_padding": (0, 0)}),
    ((2, 16, 12, 12), (16, 8, 3, 3), {"stride": (1, 1), "pads": (3, 3, 3, 3),  # pads that crop
                                      "dilation": (1, 1), "groups": 1, "output_padding": (0, 0)})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose_gemm(xs: tuple, ws: tuple, kw: dict, dtype: type, bias: bool) -> None:
    _check_conv_transpose(xs, ws, kw, dtype, bias, "TransposedConvGemm")


def _check_conv_transpose(xs: tuple, ws: tuple, kw: dict, dtype: type, bias: bool,
                          template: str) -> None:
    """conv_transpose on ``template`` against the reference, with or without a bias."""
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)]
    if bias:
        arrays.append(rng.standard_normal(ws[1] * kw["groups"]).astype(dtype))
    got, want = _template_run(lambda *n: make_node("conv_transpose", list(n), kw), arrays,
                              template)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize(("xs", "ws", "kw"), [
    ((2, 16, 24, 24), (16, 8, 3, 3), {"pads": (1, 1, 1, 1)}),  # a "same" conv's input grad
    ((2, 16, 14, 15), (16, 32, 3, 3), {"pads": (1, 1, 1, 1)}),  # two k-blocks
    ((2, 12, 11, 13), (12, 8, 3, 2), {"pads": (1, 0, 2, 1), "dilation": (2, 1), "groups": 2}),
    ((2, 8, 150), (8, 12, 5), {"pads": (2, 2)}),  # 1-d
    ((1, 8, 4, 5, 30), (8, 8, 1, 1, 3), {"pads": (0, 0, 1, 0, 0, 1)})])  # 3-d
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose_stride_1_as_implicit_gemm(xs: tuple, ws: tuple, kw: dict, dtype: type,
                                                  bias: bool) -> None:
    """With stride 1, conv_transpose is the convolution of its input, padded by
    dilation * (taps - 1) - pad, with the flipped weights of each (input, output) channel pair:
    the implicit GEMM of conv_implicit.py, no col2im."""
    nd = len(xs) - 2
    kw = {"stride": (1,) * nd, "pads": (0,) * 2 * nd, "dilation": (1,) * nd, "groups": 1,
          "output_padding": (0,) * nd, **kw}
    _check_conv_transpose(xs, ws, kw, dtype, bias, "ImplicitConvGemm")


@pytest.mark.parametrize(("pads", "template"), [((0, 0, 0, 0), "TransposedConvGemm"),
                                                ((1, 1, 1, 1), "ImplicitConvGemm")])
def test_conv_transpose_gemm_applies_a_fused_epilogue(pads: tuple, template: str) -> None:
    rng = np.random.default_rng(5)
    out = (2, 8, 11 - 2 * pads[0], 12 - 2 * pads[1])
    arrays = [rng.standard_normal((2, 16, 9, 10)).astype(np.float32),
              rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
              rng.standard_normal(8).astype(np.float32),
              rng.standard_normal(out).astype(np.float32)]
    kw = {"stride": (1, 1), "pads": pads, "dilation": (1, 1), "groups": 1,
          "output_padding": (0, 0)}

    def build(x, w, b, r):  # type: ignore[no-untyped-def]
        return gn.relu(make_node("conv_transpose", [x, w, b], kw) + r) * 2.0

    got, want = _template_run(build, arrays, template, opt_level=2)
    assert (want == 0).any() and (want > 0).any()  # the relu did something
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
