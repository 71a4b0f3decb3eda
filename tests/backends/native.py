"""Running one op's kernel on every code-generating backend form, against the reference (shared
by the backend kernel tests)."""

from __future__ import annotations

import dataclasses

import pytest
from graphnn.backends.llvm import LLVMBackend
from graphnn.backends.opencl import OpenCLBackend
from graphnn.backends.opencl.executable import shared_device

import graphnn as gn

# opencl-gpu-path: the kernels a GPU gets (work-group tree reductions), forced on this device;
# on PoCL, plain "opencl" renders the CPU forms
BACKENDS = ["llvm", "opencl", "opencl-gpu-path"]


def run_native(backend: str, build, arrays, opt_level: int = 0):  # type: ignore[no-untyped-def]
    """(``build``'s output on ``backend``, the reference's) for placeholders fed ``arrays``; the
    op ``build`` makes must have run its kernel, not numpy."""
    with gn.Graph("g") as g:
        nodes = [gn.placeholder(a.shape, a.dtype, name=f"x{i}") for i, a in enumerate(arrays)]
        out = build(*nodes)
    feeds = dict(zip(nodes, arrays))
    every = frozenset()  # every kernel, even those left to numpy for speed
    impl = LLVMBackend(cache=False, skip=every) if backend == "llvm" else OpenCLBackend(skip=every)
    sess = gn.Session(g, backend=impl, opt_level=opt_level)
    with pytest.MonkeyPatch.context() as mp:
        if backend == "opencl-gpu-path":
            dev = shared_device()
            mp.setattr(dev, "info", dataclasses.replace(dev.info, kind="gpu"))
        got = sess.run(out, feeds)
    exe = next(iter(sess._cache.values()))
    exe = getattr(exe, "exe", exe)
    assert out.op not in exe.fallback_ops, f"{out.op} ran on numpy"
    if backend == "opencl-gpu-path" and out.op in ("conv_weight_grad", "conv_transpose"):
        # the implicit GEMMs stage slices in local memory
        gemm = out.op == "conv_weight_grad" or out.inputs[1].shape[1] >= 16
        assert ("bs[q][col]" in exe.source) == gemm  # _tiled_gemm's slice of b
    return got, gn.Session(g, backend="reference").run(out, feeds)
