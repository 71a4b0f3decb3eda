"""graphnn's reference semantics against PyTorch's, for ops whose conventions are easy to get
subtly wrong (padding, ceil_mode, divisors, defaults). Optional: torch is never a dependency.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import graphnn as gn

torch = pytest.importorskip(
    "torch", reason="PyTorch not installed: the optional comparison against torch needs "
                    "`pip install torch==2.13.0` (CPU build)")
F = torch.nn.functional


def run(build, *arrays: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    with gn.Graph() as g:
        nodes = [gn.placeholder(a.shape, a.dtype) for a in arrays]
        out = build(*nodes)
    return gn.Session(g, backend="reference").run(out, dict(zip(nodes, arrays)))


def t(a: np.ndarray):  # type: ignore[no-untyped-def]
    return torch.from_numpy(np.ascontiguousarray(a))


rng = np.random.default_rng(0)


def randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups"), [
    (1, 0, 1, 1), (2, 1, 1, 1), (1, "same", 2, 1), (2, 2, 1, 2), (1, 1, 1, 4),
    ((2, 1), (0, 1), 1, 1),
])
def test_conv2d(stride, padding, dilation, groups) -> None:  # type: ignore[no-untyped-def]
    x, w, b = randn(2, 4, 9, 8), randn(8, 4 // groups, 3, 3), randn(8)
    got = run(lambda x, w, b: gn.conv2d(x, w, b, stride, padding, dilation, groups), x, w, b)
    want = F.conv2d(t(x), t(w), t(b), stride, padding, dilation, groups).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("stride", "padding", "output_padding", "dilation", "groups"), [
    (1, 0, 0, 1, 1), (2, 1, 1, 1, 1), (3, 2, 2, 1, 2), (2, 0, 1, 2, 1),
])
def test_conv_transpose2d(stride, padding, output_padding, dilation, groups) -> None:  # type: ignore[no-untyped-def]
    x, w, b = randn(2, 4, 5, 4), randn(4, 6 // groups, 3, 2), randn(6)
    got = run(lambda x, w, b: gn.conv_transpose2d(x, w, b, stride, padding, output_padding,
                                                  groups, dilation), x, w, b)
    want = F.conv_transpose2d(t(x), t(w), t(b), stride, padding, output_padding, groups,
                              dilation).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_conv_transpose1d_and_conv1d_conv3d() -> None:
    x, w = randn(1, 3, 7), randn(3, 2, 4)
    np.testing.assert_allclose(run(lambda x, w: gn.conv_transpose1d(x, w, stride=2), x, w),
                               F.conv_transpose1d(t(x), t(w), stride=2).numpy(), atol=1e-10)
    w1 = randn(5, 3, 3)
    np.testing.assert_allclose(run(lambda x, w: gn.conv1d(x, w, padding=2, dilation=2), x, w1),
                               F.conv1d(t(x), t(w1), padding=2, dilation=2).numpy(), atol=1e-10)
    x3, w3 = randn(1, 2, 5, 4, 6), randn(3, 2, 2, 3, 3)
    np.testing.assert_allclose(run(lambda x, w: gn.conv3d(x, w, stride=2, padding=1), x3, w3),
                               F.conv3d(t(x3), t(w3), stride=2, padding=1).numpy(), atol=1e-10)


POOLS = list(itertools.product((2, 3), (1, 2), (0, 1), (False, True)))


@pytest.mark.parametrize(("k", "s", "p", "ceil"), POOLS)
def test_pools2d(k: int, s: int, p: int, ceil: bool) -> None:
    x = randn(2, 3, 7, 6)
    got = run(lambda x: gn.max_pool2d(x, k, s, p, ceil_mode=ceil), x)
    np.testing.assert_array_equal(got, F.max_pool2d(t(x), k, s, p, ceil_mode=ceil).numpy())
    for inc in (True, False):
        got = run(lambda x, inc=inc: gn.avg_pool2d(x, k, s, p, ceil_mode=ceil,
                                                   count_include_pad=inc), x)
        want = F.avg_pool2d(t(x), k, s, p, ceil_mode=ceil, count_include_pad=inc).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_max_pool_dilation_and_1d_3d() -> None:
    x = randn(1, 2, 9, 9)
    np.testing.assert_array_equal(
        run(lambda x: gn.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True), x),
        F.max_pool2d(t(x), 3, 2, 1, dilation=2, ceil_mode=True).numpy())
    x1 = randn(2, 3, 10)
    np.testing.assert_allclose(run(lambda x: gn.avg_pool1d(x, 4, 3, 2, ceil_mode=True), x1),
                               F.avg_pool1d(t(x1), 4, 3, 2, ceil_mode=True).numpy(), rtol=1e-12)
    x3 = randn(1, 2, 5, 6, 7)
    np.testing.assert_array_equal(run(lambda x: gn.max_pool3d(x, 2, (1, 2, 3)), x3),
                                  F.max_pool3d(t(x3), 2, (1, 2, 3)).numpy())


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (5, 7), (4, 4)])
def test_adaptive_pools(size: tuple[int, int]) -> None:
    x = randn(2, 3, 9, 7)
    np.testing.assert_allclose(run(lambda x: gn.adaptive_avg_pool(x, size), x),
                               F.adaptive_avg_pool2d(t(x), size).numpy(), rtol=1e-12)
    np.testing.assert_array_equal(run(lambda x: gn.adaptive_max_pool(x, size), x),
                                  F.adaptive_max_pool2d(t(x), size).numpy())


def test_norms() -> None:
    x, w, b = randn(4, 6, 3, 5), randn(6), randn(6)
    m, v = randn(6), rng.uniform(0.5, 2, 6)
    np.testing.assert_allclose(run(lambda *a: gn.batch_norm(*a), x, m, v, w, b),
                               F.batch_norm(t(x), t(m), t(v), t(w), t(b)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(run(lambda x, w, b: gn.group_norm(x, 3, w, b), x, w, b),
                               F.group_norm(t(x), 3, t(w), t(b)).numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(run(lambda x: gn.instance_norm(x), x),
                               F.instance_norm(t(x)).numpy(), rtol=1e-9, atol=1e-12)
    lw, lb = randn(3, 5), randn(3, 5)
    np.testing.assert_allclose(run(lambda x, w, b: gn.layer_norm(x, (3, 5), w, b), x, lw, lb),
                               F.layer_norm(t(x), (3, 5), t(lw), t(lb)).numpy(), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(run(lambda x, w: gn.rms_norm(x, (3, 5), w), x, lw),
                               F.rms_norm(t(x), (3, 5), t(lw)).numpy(), rtol=1e-9)


@pytest.mark.parametrize("variant", ["plain", "causal", "bool", "float", "scale"])
def test_attention(variant: str) -> None:
    q, k, v = randn(2, 3, 5, 4), randn(2, 3, 6, 4), randn(2, 3, 6, 7)
    kw: dict = {}
    arrays = [q, k, v]
    if variant == "causal":
        kw["is_causal"] = True
    if variant == "scale":
        kw["scale"] = 0.7
    if variant in ("bool", "float"):
        mask = rng.random((5, 6)) < 0.7 if variant == "bool" else randn(5, 6)
        if variant == "bool":
            mask[:, 0] = True  # no fully masked rows (torch and graphnn both give nan there)
        arrays.append(mask)
    got = run(lambda *a: gn.scaled_dot_product_attention(*a, **kw), *arrays)
    want = F.scaled_dot_product_attention(*(t(a) for a in arrays), **kw).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


ACTIVATIONS = [
    (lambda x: gn.gelu(x), lambda x: F.gelu(x)),
    (lambda x: gn.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    (gn.silu, F.silu), (gn.mish, F.mish), (gn.selu, F.selu), (gn.celu, F.celu),
    (lambda x: gn.elu(x, 0.7), lambda x: F.elu(x, 0.7)), (gn.hard_sigmoid, F.hardsigmoid),
    (gn.hard_swish, F.hardswish), (gn.hard_tanh, F.hardtanh), (gn.softsign, F.softsign),
    (lambda x: gn.softplus(x, 2.0, 3.0), lambda x: F.softplus(x, 2.0, 3.0)),
    (lambda x: gn.leaky_relu(x), lambda x: F.leaky_relu(x)), (gn.sigmoid, torch.sigmoid),
    (gn.erf, torch.erf), (gn.round, torch.round),
]


@pytest.mark.parametrize("i", range(len(ACTIVATIONS)))
def test_activations(i: int) -> None:
    ours, theirs = ACTIVATIONS[i]
    x = np.concatenate([randn(200) * 4, [-30.0, -0.5, 0.0, 0.5, 2.5, 30.0, 1e3, -1e3]])
    np.testing.assert_allclose(run(ours, x), theirs(t(x)).numpy(), rtol=1e-12, atol=1e-15)


def test_reductions_defaults() -> None:
    x = randn(3, 4, 5)
    np.testing.assert_allclose(run(lambda x: gn.var(x, axis=1), x), torch.var(t(x), 1).numpy())
    np.testing.assert_allclose(run(lambda x: gn.std(x, axis=(0, 2), correction=0), x),
                               torch.std(t(x), (0, 2), correction=0).numpy())
    np.testing.assert_allclose(run(lambda x: gn.logsumexp(x, axis=-1), x),
                               torch.logsumexp(t(x), -1).numpy())
    i = rng.integers(0, 5, (3, 4, 2))
    np.testing.assert_array_equal(run(lambda x, i: gn.gather(x, i, axis=2), x, i),
                                  torch.gather(t(x), 2, t(i)).numpy())
