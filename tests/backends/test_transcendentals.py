"""The vectorisable approximations of exp, tanh and erf (backends/kernel/approx.py) on each
backend that uses them: the LLVM backend always (float64 exp and tanh too), the OpenCL backend on
CPU devices (forced here, so a GPU runs them too). Errors in ulp of the correctly rounded result
(numpy or scipy in float64); special values exact."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from graphnn.backends.opencl.executable import shared_device
from scipy.special import erf

import graphnn as gn
from tests.backends.test_llvm import compile_one, packed_ops


@contextmanager
def _cpu_forms(backend: str) -> Iterator[None]:
    """OpenCL: render for a CPU device, where the approximations replace the builtins."""
    with pytest.MonkeyPatch.context() as mp:
        if backend == "opencl":
            dev = shared_device()
            mp.setattr(dev, "info", dataclasses.replace(dev.info, kind="cpu"))
        yield


def _run(backend: str, outs: list[gn.Node], feeds: dict) -> list[np.ndarray]:  # type: ignore[type-arg]
    with _cpu_forms(backend):
        sess = gn.Session(outs[0].graph, backend=backend)
        got = sess.run(outs, feeds)
    if backend == "opencl":
        kernels = next(iter(sess._cache.values())).exe.source.split("__kernel", 1)[1]
        assert all(f"= gn_{o.op}_f32(" in kernels for o in outs)  # not the builtin
    return got


def _ulp(got: np.ndarray, ref: np.ndarray, dtype: type) -> float:
    keep = np.isfinite(ref.astype(dtype)) & (ref != 0)
    return float((np.abs(got[keep] - ref[keep]) / np.spacing(np.abs(ref[keep].astype(dtype)))
                  ).max())


@pytest.mark.parametrize(("backend", "dtype", "bounds"), [
    ("llvm", np.float32, {"exp": 1.5, "tanh": 1.5}),
    ("llvm", np.float64, {"exp": 2.5, "tanh": 1.5}),
    ("opencl", np.float32, {"exp": 1.5, "tanh": 1.5})])
def test_exp_and_tanh_error_bounds(backend: str, dtype: type, bounds: dict) -> None:
    x = np.linspace(-80, 80, 100_001).astype(dtype)
    special = np.array([0.0, -0.0, 1e-30, 100.0, -120.0, 1e4, -1e4, np.inf, -np.inf, np.nan],
                       dtype)
    with gn.Graph():
        p = gn.placeholder(x.shape, dtype, name="x")
        q = gn.placeholder(special.shape, dtype, name="s")
        outs = [gn.exp(p), gn.tanh(p), gn.exp(q), gn.tanh(q)]
    got = _run(backend, outs, {p: x, q: special})
    with np.errstate(over="ignore"):
        for name, value, fn in (("exp", got[0], np.exp), ("tanh", got[1], np.tanh)):
            ulp = _ulp(value, fn(x.astype(np.float64)), dtype)
            assert ulp <= bounds[name], (name, ulp)
        np.testing.assert_array_equal(got[2], np.exp(special))
        np.testing.assert_array_equal(got[3], np.tanh(special))
    if backend == "llvm":
        assert packed_ops(compile_one(lambda v: gn.exp(v), (4096,)).compiled.assembly)


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
def test_float32_erf_error_bound(backend: str) -> None:
    """Within 3 ulp over [-8, 8] and tiny arguments, exact at the special values, erf(-0) = -0;
    on LLVM its loop vectorises (no libm call)."""
    # and every 13th float32 across the polynomial's range [1, 3.85] and the edge to 1 (3.92)
    bits = np.arange(np.float32(0.99).view(np.int32), np.float32(3.95).view(np.int32), 13,
                     dtype=np.int32)
    x = np.concatenate([np.linspace(-8, 8, 200_001), np.geomspace(1e-30, 1, 20_001),
                        -np.geomspace(1e-30, 1, 2_001)]).astype(np.float32)
    x = np.concatenate([x, bits.view(np.float32)])
    special = np.array([0.0, -0.0, 10.0, -10.0, 1e30, np.inf, -np.inf, np.nan], np.float32)
    with gn.Graph():
        p = gn.placeholder(x.shape, name="x")
        q = gn.placeholder(special.shape, name="s")
        outs = [gn.erf(p), gn.erf(q)]
    got, got_special = _run(backend, outs, {p: x, q: special})
    assert _ulp(got, erf(x.astype(np.float64)), np.float32) <= 3.0
    np.testing.assert_array_equal(got_special, erf(special.astype(np.float64)).astype(np.float32))
    assert np.signbit(got_special[1])
    if backend == "llvm":
        assembly = compile_one(lambda v: gn.erf(v), (4096,)).compiled.assembly
        assert packed_ops(assembly) and "erff" not in assembly


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
def test_gelu_tanh_form_is_accurate_without_a_tanh(backend: str) -> None:
    """GELU's tanh form lowers to x / (1 + exp(-2u)). Over [-12, 12] its relative error is
    within 3 (1 + |2u|) float32 epsilons of the float64 function: rounding 2u in float32 is
    what exp amplifies (130 ulp at x = -9, where 2u = -67). The float32 tanh form (the reference)
    is off by up to 13x there, from cancellation in 1 + tanh(u). Where the result underflows,
    1e-37 absolute. The special values are the reference's (NaN at -inf, -0 for large
    negative x)."""
    x = np.linspace(-12, 12, 100_001).astype(np.float32)
    special = np.array([0.0, -0.0, 1e-30, -1e-30, 100.0, -100.0, 3e38, -3e38, np.inf, -np.inf,
                        np.nan], np.float32)
    with gn.Graph():
        p = gn.placeholder(x.shape, name="x")
        q = gn.placeholder(special.shape, name="s")
        outs = [gn.gelu(p, approximate="tanh"), gn.gelu(q, approximate="tanh")]
    got, got_special = gn.Session(outs[0].graph, backend=backend).run(outs, {p: x, q: special})
    xd = x.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (xd + 0.044715 * xd ** 3)
    exact = xd / (1 + np.exp(-2 * u))  # the same function, accurate in float64
    bound = 3 * (1 + np.abs(2 * u)) * 2.0 ** -24 * np.abs(exact) + 1e-37
    assert np.all(np.abs(got - exact) <= bound)
    reference = gn.Session(outs[0].graph, backend="reference").run(outs[1], {q: special})
    np.testing.assert_array_equal(got_special, reference)
    assert list(np.signbit(got_special)) == list(np.signbit(reference))
