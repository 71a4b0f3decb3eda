"""Opt-in schedule tuning of the LLVM backend's templated kernels (backends/llvm/tuning.py):
every knob changes the generated code and not the result; choices are cached on disk, recalled
by a later session, and a damaged entry is measured again."""

from __future__ import annotations

import ctypes
import pathlib

import numpy as np
import pytest
from graphnn.backends.llvm import LLVMBackend, tuning
from graphnn.backends.llvm.codegen import KernelEmitter
from graphnn.backends.llvm.gemm import vector_bits
from graphnn.backends.llvm.jit import Compiled
from llvmlite import ir

import graphnn as gn


def _graph() -> tuple[gn.Graph, list[gn.Node], dict[str, np.ndarray]]:
    """A GEMM with bias + ReLU, a split-K GEMV, a padded convolution (the implicit GEMM) and a
    64-channel 3x3 one (Winograd): four templates."""
    rng = np.random.default_rng(0)
    with gn.Graph("g") as g:
        a = gn.placeholder((40, 600), name="a")
        v = gn.placeholder((1, 784), name="v")
        x = gn.placeholder((2, 8, 20, 20), name="x")
        dense = gn.relu(a @ gn.constant(rng.standard_normal((600, 300)).astype(np.float32))
                        + gn.constant(rng.standard_normal(300).astype(np.float32)))
        gemv = v @ gn.constant(rng.standard_normal((784, 512)).astype(np.float32))
        conv = gn.conv(x, gn.constant(rng.standard_normal((16, 8, 3, 3)).astype(np.float32)),
                       padding=1)
        z = gn.placeholder((1, 64, 14, 14), name="z")
        winograd = gn.conv(z, gn.constant(rng.standard_normal((24, 64, 3, 3)).astype(
            np.float32) / 8), padding=1)
    feeds = {"a": rng.standard_normal((40, 600)).astype(np.float32),
             "z": rng.standard_normal((1, 64, 14, 14)).astype(np.float32),
             "v": rng.standard_normal((1, 784)).astype(np.float32),
             "x": rng.standard_normal((2, 8, 20, 20)).astype(np.float32)}
    return g, [dense, gemv, conv, winograd], feeds


def _check(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_tuned_choices_are_cached_recalled_and_remeasured_when_damaged(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    g, outs, feeds = _graph()
    want = gn.Session(g, backend="reference").run(outs, feeds)
    measured: list[str] = []
    measure = tuning.Tuner.measure

    def counting(self: tuning.Tuner, kernel: tuning.Kernel) -> tuning.Schedule:
        measured.append(kernel.name)
        return measure(self, kernel)

    monkeypatch.setattr(tuning.Tuner, "measure", counting)
    space = tuning.space  # the thread knob alone: fewer compiles (the next test tries them all)
    monkeypatch.setattr(tuning, "space", lambda k, bits: {
        name: values for name, values in space(k, bits).items() if name == "threads"})
    backend = LLVMBackend(tune=True, cache=False, threads=2)
    _check(gn.Session(g, backend=backend).run(outs, feeds), want)
    entries = sorted((tmp_path / "tuning").glob("*.json"))
    assert len(measured) == len(entries) == 4  # one per templated kernel

    measured.clear()  # a new session (as a new process would) recalls every choice
    _check(gn.Session(g, backend=LLVMBackend(tune=True, cache=False, threads=2)).run(outs, feeds),
           want)
    assert measured == []

    entries[0].write_text("{not json")  # damaged: measured again, then cached again
    _check(gn.Session(g, backend=LLVMBackend(tune=True, cache=False, threads=2)).run(outs, feeds),
           want)
    assert len(measured) == 1
    assert isinstance(tuning._read(str(entries[0])), dict)

    measured.clear()  # another thread count is another key
    gn.Session(g, backend=LLVMBackend(tune=True, cache=False, threads=1)).run(outs, feeds)
    assert len(measured) == 4


def test_tuning_is_off_by_default_and_on_with_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAPHNN_TUNE", raising=False)
    assert LLVMBackend().tune is False
    monkeypatch.setenv("GRAPHNN_TUNE", "1")
    assert LLVMBackend().tune is True
    assert LLVMBackend(tune=False).tune is False


def test_every_knob_changes_the_code_and_not_the_result() -> None:
    """Each knob's every value, alone, against the heuristic's code: other LLVM IR, the same
    output (up to the rounding of regrouped sums); threads = 1 drops the parallel-for (but for
    the split-K GEMV, whose wrapper owns its partials)."""
    from graphnn.backends.llvm.codegen import template_for
    from graphnn.backends.llvm.gemv import SplitKGemv

    g, outs, feeds = _graph()
    backend = LLVMBackend(cache=False, threads=3)
    sess = gn.Session(g, backend=backend, opt_level=2)
    sess.run(outs, feeds)
    exe = next(iter(sess._cache.values())).exe
    bits = vector_bits(backend.target.features)
    templated = [k for k in exe.kernels if tuning.space(k, bits)]
    assert len(templated) == 4
    for kernel, want in zip(templated, gn.Session(g, backend="reference").run(outs, feeds)):
        default = _emit(kernel, bits, {})
        assert "graphnn_parallel_for" in default
        expected = _run(kernel, default, backend, exe, feeds)
        np.testing.assert_allclose(expected, want, rtol=1e-4, atol=1e-3)
        split_k = template_for(kernel, bits) is SplitKGemv
        for knob, values in tuning.space(kernel, bits).items():
            for value in values[1:]:
                text = _emit(kernel, bits, {knob: value})
                if knob == "threads":
                    assert ("graphnn_parallel_for" in text) == split_k
                if knob in ("kc", "nc") and not kernel.schedule[0] == "matmul":
                    continue  # the implicit GEMM blocks its k steps by taps, not KC
                assert text != default, (kernel.name, knob, value)
                np.testing.assert_allclose(_run(kernel, text, backend, exe, feeds), expected,
                                           rtol=1e-5, atol=1e-4,
                                           err_msg=f"{kernel.name} {knob}={value}")


def _emit(kernel: tuning.Kernel, bits: int, schedule: tuning.Schedule) -> str:
    module = ir.Module(name="t")
    emitter = KernelEmitter(module, bits)
    emitter.schedules[kernel.name] = schedule
    emitter.emit(kernel)
    return str(module)


def _run(kernel: tuning.Kernel, text: str, backend: LLVMBackend, exe: object,
         feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Call the kernel alone on its node's inputs (constants, or the fed placeholder)."""
    compiled = Compiled(text, backend.target, use_cache=False)
    compiled.set_threads(3)
    (node,) = [n for calls in exe._calls for k, n, _ in calls  # type: ignore[attr-defined]
               if k is kernel]
    arrays = [i.attrs["value"].array if i.op == "constant" else feeds[i.name]
              for i in node.inputs]
    out = np.full(node.shape, np.nan, np.float32)
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * (len(arrays) + 1))(
        compiled.address(kernel.name))
    fn(*[np.ascontiguousarray(a).ctypes.data for a in arrays], out.ctypes.data)
    return out
