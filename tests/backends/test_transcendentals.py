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
    x = np.concatenate([np.linspace(-8, 8, 200_001), np.geomspace(1e-30, 1, 20_001),
                        -np.geomspace(1e-30, 1, 2_001)]).astype(np.float32)
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
