"""LLVM backend properties: native kernels (vector instructions in the assembly), which ops run
natively, dumps of every stage of generated code, targets, static shapes."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import numpy as np
import pytest
from graphnn.backends.kernel.ir import Loop
from graphnn.backends.kernel.lower import lowered_ops
from graphnn.backends.llvm import LLVMBackend

import graphnn as gn


def compile_one(build, *shapes, backend: LLVMBackend | None = None):  # type: ignore[no-untyped-def]
    with gn.Graph("k") as g:
        xs = [gn.placeholder(s, name=f"x{i}") for i, s in enumerate(shapes)]
        out = build(*xs)
    return (backend or LLVMBackend(cache=False)).compile(g, [out])


def packed_ops(assembly: str) -> set[str]:
    """Packed single-precision SSE/AVX arithmetic, e.g. vmulps or vfmadd231ps on ymm or zmm
    registers."""
    return set(re.findall(r"\b(?:v?(?:add|mul|sub|div|max|min)ps|vfn?m(?:add|sub)\d+ps)\b",
                          assembly))


def test_elementwise_and_reduction_kernels_are_vectorised() -> None:
    exe = compile_one(lambda x, y: x * y + 1.0, (4096,), (4096,))
    assert exe.fallback_ops == set() and exe.compiled is not None
    asm = exe.compiled.assembly
    assert packed_ops(asm), "no packed arithmetic in the elementwise kernel"
    assert re.search(r"%(ymm|zmm)\d+", asm) or re.search(r"%xmm\d+", asm)
    exe = compile_one(lambda x: gn.sum(x * x, axis=1), (64, 1024))
    assert not exe.fallback_ops
    fused = compile_one(lambda x: gn.relu(x * 0.5) + gn.sigmoid(x), (8192,))
    assert packed_ops(fused.compiled.assembly)


def test_max_reductions_and_pooling_rows_are_vectorised_and_split() -> None:
    """A softmax row's max reduces in vector registers (LLVM's maximum), and all rows form the
    parallel loop, not the batch dim alone; a pooling row around its window taps vectorises
    with shuffles, not gathers (loop hints), one parallel iteration per (sample, channel)."""
    softmax = compile_one(lambda x: gn.softmax(x, axis=-1), (1, 4, 128, 128))
    assert packed_ops(softmax.compiled.assembly) & {"maxps", "vmaxps"}
    outer = softmax.kernels[0].body[0]
    assert isinstance(outer, Loop) and outer.parallel and outer.extent == 512
    pool = compile_one(lambda x: gn.max_pool2d(x, 2), (1, 16, 24, 24))
    asm = pool.compiled.assembly
    assert packed_ops(asm) & {"maxps", "vmaxps"} and not re.search(r"\bv(gather|scatter)", asm)
    outer = pool.kernels[0].body[0]
    assert isinstance(outer, Loop) and outer.parallel and outer.extent == 16


def test_col2im_rows_are_vectorised_without_gathers() -> None:
    """conv_transpose's col2im over rows of at least one vector (20 wide here) adds whole
    vectors along each row: no gathers or scatters (LLVM had unrolled the plane)."""
    from graphnn.ops.registry import make_node

    kw = {"stride": (1, 1), "pads": (3, 3, 3, 3), "dilation": (1, 1), "groups": 1,
          "output_padding": (0, 0)}  # pads that crop: no implicit GEMM (test_conv_transpose_*)
    exe = compile_one(lambda dy, w: make_node("conv_transpose", [dy, w], kw), (2, 16, 24, 24),
                      (16, 8, 3, 3))
    asm = exe.compiled.assembly
    assert packed_ops(asm) & {"addps", "vaddps"} and not re.search(r"\bv(p?gather|scatter)", asm)


def test_implicit_conv_copy_out_is_vectorised_without_gathers() -> None:
    """A two-channel 3x3 convolution + ReLU (the GEMM is 18 deep, so copying the wide columns
    out with the bias and epilogue is much of the work) copies each output line with vector
    loads and stores: LLVM had unrolled the 26-pixel line and vectorised the loop over lines
    with gathers and scatters (2.5x the time, for W2's first layer, which has one input channel
    and now runs the direct kernel of conv_depthwise.py)."""
    from graphnn.backends.llvm import codegen, conv_implicit, gemm

    rng = np.random.default_rng(0)
    wv = rng.standard_normal((32, 2, 3, 3)).astype(np.float32)
    with gn.Graph() as g:
        x = gn.placeholder((4, 2, 28, 28), name="x")
        y = gn.relu(gn.conv2d(x, gn.constant(wv), gn.constant(np.ones(32, np.float32))))
    sess = gn.Session(g, backend=LLVMBackend(cache=False), opt_level=2)
    xv = rng.standard_normal((4, 2, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(sess.run(y, {x: xv}), gn.Session(g, "reference").run(y, {x: xv}),
                               rtol=1e-5, atol=1e-5)
    (exe,) = [entry.exe for entry in sess._cache.values()]
    (kernel,) = exe.kernels
    bits = gemm.vector_bits(LLVMBackend().target.features)
    assert codegen.template_for(kernel, bits) is conv_implicit.ImplicitConvGemm
    asm = exe.compiled.assembly
    assert packed_ops(asm) & {"addps", "vaddps"} and not re.search(r"\bv(p?gather|scatter)", asm)


@pytest.mark.parametrize("axes", [(0, 2, 3), (2, 3), (0, 1), (1,)])
def test_reductions_address_adjacent_dims_as_one(axes: tuple[int, ...]) -> None:
    """Adjacent reduced (or kept) dims become one loop, so a bias gradient's sum over (N, H, W)
    of 24x24 planes reads 576 contiguous values per image in one vectorised loop (it had
    vectorised the loop over H with gathers); a fused operand broadcast along only one of two
    dims keeps them apart. Checked against the reference backend."""
    shape = (4, 6, 24, 24)
    rng = np.random.default_rng(1)
    xv = rng.standard_normal(shape).astype(np.float32)
    sv = rng.standard_normal((24, 1)).astype(np.float32)  # broadcast along W, not H
    mv = rng.standard_normal((1, 6, 1, 1)).astype(np.float32)
    with gn.Graph() as g:
        x = gn.placeholder(shape, name="x")
        plain = gn.sum(x, axis=axes)
        centred = gn.sum((x - gn.constant(mv)) ** 2, axis=axes)  # broadcast along N, H, W
        scaled = gn.sum(x * gn.constant(sv), axis=axes)
    sess = gn.Session(g, backend=LLVMBackend(cache=False), opt_level=2)
    want = gn.Session(g, "reference").run([plain, centred, scaled], {x: xv})
    for got, ref in zip(sess.run([plain, centred, scaled], {x: xv}), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)
    extents = {k.source: sorted(loop.extent for loop in _loops(k.body)) for entry in
               sess._cache.values() for k in entry.exe.kernels}
    if axes == (0, 2, 3):  # plain and centred: N and H*W; scaled: H and W stay apart
        assert sorted(extents.values()) == [[4, 6, 24, 24], [4, 6, 576], [4, 6, 576]]
        exe = compile_one(lambda x: gn.sum(x, axis=axes), shape)
        assert not re.search(r"\bv(p?gather|scatter)", exe.compiled.assembly)


def _loops(stmts: tuple) -> list[Loop]:  # type: ignore[type-arg]
    out = []
    for s in stmts:
        if isinstance(s, Loop):
            out += [s, *_loops(s.body)]
    return out


def test_short_rows_are_vectorised_along_the_row() -> None:
    """An elementwise kernel over NCHW planes of 26-pixel rows with a per-channel operand
    (loops over channels, rows, pixels): each row is one vectorised loop, no gathers or
    scatters (LLVM had unrolled the 26 pixels and vectorised across rows: 2.2x the time)."""
    exe = compile_one(lambda x, b: gn.relu(x + b) * 2.0, (4, 32, 26, 26), (1, 32, 1, 1))
    asm = exe.compiled.assembly
    assert packed_ops(asm) & {"addps", "vaddps"} and not re.search(r"\bv(p?gather|scatter)", asm)


def test_stride_2_im2col_reads_vectors_without_gathers() -> None:
    """A ResNet stem (7x7, stride 2): im2col copies every other input column with two vector
    loads and a shuffle per vector, its short tail scalar: no gathers (the stem 0.93-0.95x)."""
    rng = np.random.default_rng(0)
    wv = rng.standard_normal((16, 3, 7, 7)).astype(np.float32)
    exe = compile_one(lambda x: gn.conv(x, gn.constant(wv), stride=2, padding=3), (1, 3, 64, 64))
    asm = exe.compiled.assembly
    assert "shuf" in asm or "perm" in asm
    assert not re.search(r"\bv(p?gather|scatter)", asm)


def test_max_pool_grad_over_tiling_windows_is_vectorised() -> None:
    """MaxPool2d(2)'s gradient: windows that tile the input write their own taps with plain
    stores, so the loop over a row's windows compares in vector registers (no gathers or
    scatters), one parallel iteration per (sample, channel) plane."""
    from graphnn.ops.registry import make_node

    kw = {"kernel_size": (2, 2), "stride": (2, 2), "pads": (0, 0, 0, 0), "dilation": (1, 1),
          "ceil_mode": False}
    exe = compile_one(lambda dy, x: make_node("max_pool_grad", [dy, x], kw), (2, 16, 12, 12),
                      (2, 16, 24, 24))
    asm = exe.compiled.assembly
    assert re.search(r"\bvcmp\w*ps\b", asm) and not re.search(r"\bv(p?gather|scatter)", asm)
    outer = exe.kernels[0].body[0]
    assert isinstance(outer, Loop) and outer.parallel and outer.extent == 32


def test_native_and_fallback_ops_are_reported() -> None:
    assert {"relu", "gelu", "where", "sum", "transpose", "slice", "cast", "einsum", "gemm",
            "take", "gather", "take_grad", "slice_grad", "avg_pool_grad"} <= lowered_ops()
    for build in (lambda x: gn.einsum("ij,kj->ik", x, x),  # dot-product loop order
                  lambda x: gn.einsum("ij,jk->ik", x, gn.transpose(x)),  # i-k-j order
                  lambda x: gn.gemm(x, x, trans_b=True, alpha=2.0)):
        exe = compile_one(build, (6, 5))
        assert not exe.fallback_ops
    def build(x: gn.Node) -> gn.Node:
        i = gn.cast(x, "int32")
        return gn.relu(x) + gn.cast(gn.pow(i, i), "float32")

    exe = compile_one(build, (4, 8, 6))
    assert not exe.fallback_ops and any(k.checks for k in exe.kernels)  # pow checks exponents
    assert compile_one(build, (4, 8, 6), backend=LLVMBackend(cache=False, skip=frozenset(
        {"pow"}))).fallback_ops == {"pow"}  # a skipped op runs numpy's reference
    with gn.Graph() as g:  # take reads indices from data: its kernel checks them
        xp = gn.placeholder((4, 8, 6), name="x")
        y = gn.relu(gn.take(xp, np.array([1, 0]), axis=2) - 0.5)
    np.testing.assert_array_equal(gn.Session(g, backend="llvm").run(y, {xp: np.ones((4, 8, 6))}),
                                  np.full((4, 8, 2), 0.5))


def test_digits_cnn_forward_is_native() -> None:
    graph, y = gn.models.inference_graph("digits-cnn", batch=4)
    exe = gn.Session(graph, backend=LLVMBackend(cache=False, native_conv_grads=True), opt_level=2)
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    out = exe.run(y, {"x": x})
    np.testing.assert_allclose(out, gn.Session(graph, "reference").run(y, {"x": x}),
                               rtol=1e-4, atol=1e-5)
    compiled = next(iter(exe._cache.values())).exe
    assert compiled.fallback_ops == set()
    assert ("conv", "relu") in [k.source for k in compiled.kernels]


def test_matmul_and_its_fused_epilogue_are_native() -> None:
    exe = compile_one(lambda x, w: x @ w, (64, 128), (128, 256))
    assert not exe.fallback_ops and packed_ops(exe.compiled.assembly)
    graph, _ = gn.models.inference_graph("mlp", batch=16)
    sess = gn.Session(graph, backend="llvm", opt_level=2)
    x = np.random.default_rng(0).standard_normal((16, 784)).astype(np.float32)
    out = sess.run(graph.outputs[0], {"x": x})
    np.testing.assert_allclose(out, gn.Session(graph, "reference").run(graph.outputs[0], {"x": x}),
                               rtol=1e-4, atol=1e-6)
    fused = [k for k in sess._cache.values()][0].exe.kernels
    assert [k.source for k in fused if "matmul" in k.source] == [
        ("matmul", "add", "relu"), ("matmul", "add", "relu"), ("matmul", "add")]


def test_dumps_kernel_ir_llvm_ir_and_assembly(tmp_path: pathlib.Path) -> None:
    with gn.Graph("dumped") as g:
        x = gn.placeholder((None, 16), name="x")
        y = gn.tanh(x) * 2.0
    gn.Session(g, backend=LLVMBackend(cache=False), dump_dir=str(tmp_path)).run(
        y, {x: np.ones((3, 16))})
    names = {p.name for p in tmp_path.iterdir()}
    assert {"llvm_dumped.kir", "llvm_dumped.ll", "llvm_dumped.opt.ll", "llvm_dumped.s",
            "00_input.txt"} <= names
    kir = (tmp_path / "llvm_dumped.kir").read_text()
    assert "kernel k0_tanh(in0: f32[3, 16], out out: f32[3, 16])" in kir
    assert "for i0 in 0..48: parallel vectorize" in kir
    assert "define void @\"k0_tanh\"" in (tmp_path / "llvm_dumped.ll").read_text()


def test_generic_target_has_no_avx() -> None:
    generic = LLVMBackend(cpu="x86-64", features="", cache=False)
    if generic.target.triple.split("-")[0] != "x86_64":
        pytest.skip("the generic-x86-64 check needs an x86-64 host")
    asm = compile_one(lambda x: x * 3.0, (4096,), backend=generic).compiled.assembly
    assert not re.search(r"%(ymm|zmm)\d+", asm)  # SSE2 only
    host = compile_one(lambda x: x * 3.0, (4096,)).compiled.assembly
    if "+avx2" in LLVMBackend().target.features:
        assert re.search(r"%(ymm|zmm)\d+", host)
    if "+avx512f" in LLVMBackend().target.features.split(","):  # whole zmm registers
        assert "-prefer-256-bit" in LLVMBackend().target.features
        assert re.search(r"\bvmulps\s+\S+,\s*%zmm\d+", host)


def test_static_shapes_are_required_and_specialised_by_the_session() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((None, 4), name="x")
        y = gn.exp(x)
    with pytest.raises(gn.GraphError, match="needs static shapes"):
        LLVMBackend().compile(g, [y])
    sess = gn.Session(g, backend="llvm")
    for n in (1, 5):
        np.testing.assert_allclose(sess.run(y, {x: np.zeros((n, 4))}), np.ones((n, 4)))


def test_training_step_runs_on_llvm() -> None:
    x = np.random.default_rng(0).standard_normal((32, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    losses = {}
    for backend in ("reference", "llvm"):
        gn.nn.init.manual_seed(0)
        model = gn.nn.Sequential(gn.nn.Linear(5, 8), gn.nn.ReLU(), gn.nn.Linear(8, 2))
        model.compile(gn.optim.Adam(0.05), backend=backend)
        losses[backend] = model.fit(x, y, batch_size=8, epochs=3, verbose=0).history["loss"]
    np.testing.assert_allclose(losses["llvm"], losses["reference"], rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_threaded_kernels_match_the_reference(threads: int) -> None:
    """Large kernels split their outer loop across native threads; odd sizes test the chunking."""
    rng = np.random.default_rng(threads)
    feeds = {"v": rng.standard_normal(300_007).astype(np.float32),
             "m": rng.standard_normal((301, 513)).astype(np.float32),
             "a": rng.standard_normal((129, 257)).astype(np.float32),
             "b": rng.standard_normal((257, 65)).astype(np.float32)}
    with gn.Graph() as g:
        p = {k: gn.placeholder(v.shape, name=k) for k, v in feeds.items()}
        outs = [gn.tanh(p["v"] * 2.0) + 1.0, gn.sum(gn.exp(p["m"] * 0.1), axis=1),
                gn.relu(p["a"] @ p["b"] + 0.5), gn.transpose(p["m"])]
    got = gn.Session(g, backend=LLVMBackend(threads=threads), opt_level=2).run(outs, feeds)
    want = gn.Session(g, backend="reference").run(outs, feeds)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)
    big = compile_one(lambda x: x * 2.0, (1 << 20,))
    assert "graphnn_parallel_for" in big.llvm_ir


@pytest.mark.parametrize(("build", "interleaved"), [
    (lambda x: gn.gelu(x * 1.5 + 0.5, approximate="tanh") * gn.sigmoid(x), True),  # W5
    (lambda x: gn.exp(x), True), (lambda x: x / 3.0, True),
    (lambda x: x * 2.0 + 1.0, False),  # cheap: LLVM's cost model picks the interleave
    (lambda x: gn.sum(gn.exp(x), axis=1), True)])  # a reduction's too (64 x 65536: 1.00x)
def test_transcendental_loops_take_two_vectors_an_iteration(build: Any, interleaved: bool
                                                              ) -> None:
    """Long innermost loops computing exp, tanh, erf, a division (codegen.HEAVY_OPS) carry
    LLVM's interleave-count hint of INTERLEAVE_HEAVY; other loops are left to LLVM."""
    from graphnn.backends.llvm.codegen import INTERLEAVE_HEAVY

    exe = compile_one(build, (64, 4096))
    hint = re.search(r'!"llvm.loop.interleave.count", i32 (\d+)', exe.llvm_ir)
    assert (hint is not None and int(hint.group(1)) == INTERLEAVE_HEAVY) == interleaved


def _pool_graph() -> tuple[gn.Graph, gn.Node, gn.Node, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((4, 250_001)).astype(np.float32)
    with gn.Graph() as g:
        p = gn.placeholder(x.shape, name="x")
        y = gn.sum(gn.tanh(p * 0.5) * 3.0 + 1.0, axis=1)
    return g, p, y, x


def test_thread_pool_runs_concurrent_sessions_and_varying_thread_counts() -> None:
    """Sessions in several Python threads at once (ctypes releases the GIL): one holds the
    process's worker pool, the others fall back to spawning threads; all results are right."""
    import threading

    g, p, y, x = _pool_graph()
    want = gn.Session(g, backend="reference").run(y, {p: x})
    errors: list[BaseException] = []

    def work(threads: int) -> None:
        try:
            sess = gn.Session(g, backend=LLVMBackend(threads=threads), opt_level=2)
            for _ in range(40):
                np.testing.assert_allclose(sess.run(y, {p: x}), want, rtol=1e-4)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    # the pool grows while earlier tasks are done: new workers must not run those again
    workers = [threading.Thread(target=work, args=(t,)) for t in (2, 3, 5, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors


def test_thread_pool_works_in_a_forked_child() -> None:
    """The child of a fork has none of the parent's workers: the pool starts afresh there."""
    import os

    g, p, y, x = _pool_graph()
    sess = gn.Session(g, backend=LLVMBackend(threads=2), opt_level=2)
    want = sess.run(y, {p: x})  # the pool exists in the parent now
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the threaded kernel ran and agreed
        ok = False
        try:
            ok = bool(np.allclose(sess.run(y, {p: x}), want, rtol=1e-5))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    np.testing.assert_allclose(sess.run(y, {p: x}), want, rtol=1e-5)


def test_pool_installed_once_when_threads_compile_at_once() -> None:
    """Threads that compile their first module at once get one pool (a second, discarded one
    left a fork hook into freed code: the child of the next fork crashed). In a new process,
    where no pool exists yet: concurrent sessions, then a fork whose child runs a kernel."""
    import subprocess
    import sys

    script = ("import os, threading\n"
              "from graphnn.backends.llvm.runtime import install_pool\n"
              "engines = []\n"
              "threads = [threading.Thread(target=lambda: engines.append(install_pool()))\n"
              "           for _ in range(8)]\n"
              "[t.start() for t in threads]; [t.join() for t in threads]\n"
              "assert len({id(e) for e in engines}) == 1, engines\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    os._exit(7)\n"
              "_, status = os.waitpid(pid, 0)\n"
              "assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7, status\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def _scratch() -> tuple[Any, Any]:
    """The runtime's graphnn_scratch_alloc and graphnn_scratch_free, callable from Python."""
    import ctypes

    from graphnn.backends.llvm.runtime import install_pool

    engine = install_pool()
    alloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int64)(
        engine.get_function_address("graphnn_scratch_alloc"))
    free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(
        engine.get_function_address("graphnn_scratch_free"))
    return alloc, free


def test_scratch_cache_reuses_aligned_buffers() -> None:
    """The templates' scratch buffers come from the runtime's cache: 64-byte aligned, the
    same buffer again for the same thread's next request of that size, a new one while it is
    held; past all the slots, buffers of their own (freed by free); null frees nothing."""
    from graphnn.backends.llvm.runtime import SCRATCH_SLOTS

    alloc, free = _scratch()
    size = 64 * 1001 + 5  # a size no kernel of the suite asks for
    a = alloc(size)
    assert a and a % 64 == 0
    b = alloc(size)
    assert b != a and b % 64 == 0
    free(a)
    assert alloc(size) == a  # the smallest free buffer big enough, this thread's first
    free(a)
    free(b)
    held = [alloc(4096) for _ in range(SCRATCH_SLOTS + 5)]
    assert len(set(held)) == len(held) and all(p % 64 == 0 for p in held)
    for p in held:
        free(p)
    free(None)


def test_scratch_cache_gives_threads_their_own_buffers() -> None:
    """Threads taking and giving back buffers at once (ctypes releases the GIL) never share
    one: each fills its buffers with its own byte and finds it intact before giving them
    back."""
    import ctypes
    import threading

    alloc, free = _scratch()
    errors: list[str] = []

    def work(tag: int) -> None:
        for i in range(300):
            sizes = (1000 + 64 * (i % 7), 50_000, 64 * (tag + 1))
            buffers = [alloc(n) for n in sizes]
            for p, n in zip(buffers, sizes):
                ctypes.memset(p, tag, n)
            for p, n in zip(buffers, sizes):
                if ctypes.string_at(p, n) != bytes([tag]) * n:
                    errors.append(f"thread {tag}: buffer {p:#x} changed under it")
                free(p)

    threads = [threading.Thread(target=work, args=(tag,)) for tag in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_compile_cache_hits_in_a_new_process_and_rebuilds_damaged_entries(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new process finds the object file by the kernel IR's key and loads it without emitting
    LLVM IR (the emitter raises there); the multi-threaded module still runs on the pool, and
    its LLVM IR is emitted on demand. A damaged entry is rebuilt."""
    import subprocess
    import sys

    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    script = ("import sys\n"
              "import numpy as np\n"
              "import graphnn as gn\n"
              "from graphnn.backends.llvm import LLVMBackend\n"
              "from graphnn.backends.llvm import codegen\n"
              "emit = codegen.KernelEmitter.emit\n"
              "def no_emit(*args, **kwargs):\n"
              "    raise AssertionError('emitted on a cache hit')\n"
              "if sys.argv[1] == 'warm':\n"
              "    codegen.KernelEmitter.emit = no_emit\n"
              "with gn.Graph('cached') as g:\n"
              "    x = gn.placeholder((256, 256), name='x')\n"
              "    y = gn.tanh(x @ x) + 1.0\n"
              "exe = LLVMBackend(threads=2).compile(g, [y])\n"
              "v = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)\n"
              "got = gn.Session(g, backend=LLVMBackend(threads=2)).run(y, {x: v})\n"
              "np.testing.assert_allclose(got, np.tanh(v @ v) + 1.0, rtol=1e-4, atol=1e-4)\n"
              "assert exe.compiled.uses_runtime\n"
              "codegen.KernelEmitter.emit = emit\n"
              "assert 'graphnn_parallel_for' in exe.llvm_ir\n"
              "print(exe.compiled.from_cache)\n")

    def run(kind: str) -> str:
        out = subprocess.run([sys.executable, "-c", script, kind], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run("cold") == "False"  # cold: emitted, optimised and compiled, then stored
    entries = list(tmp_path.rglob("*.o"))
    assert len(entries) == 1
    assert run("warm") == "True"  # warm: a new process loads the object file
    entries[0].write_bytes(b"GNNOBJ2\n" + b"\0" * 40)  # damaged
    assert run("cold") == "False"  # detected, rebuilt, not a crash
    assert run("warm") == "True"


CONVS = [((2, 4, 9, 8), (6, 2, 3, 3), {"padding": 1, "groups": 2}),
         ((1, 3, 7, 7), (4, 3, 3, 3), {"stride": 2, "padding": "same"}),
         ((2, 2, 9, 9), (3, 2, 3, 2), {"dilation": 2, "padding": [(2, 0), (1, 3)]}),
         ((1, 3, 10), (5, 3, 4), {"stride": 3, "padding": 2}),
         ((1, 2, 4, 5, 4), (2, 2, 2, 3, 2), {"padding": 1})]


@pytest.mark.parametrize(("xs", "ws", "kw"), CONVS)
def test_native_convolution_kernel(xs: tuple, ws: tuple, kw: dict) -> None:
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    with gn.Graph() as g:
        p = gn.placeholder(xs, name="x")
        y = gn.relu(gn.conv(p, gn.constant(w), gn.constant(b), **kw) + 0.25)
    native = LLVMBackend(cache=False, native_conv_grads=True)
    got = gn.Session(g, backend=native, opt_level=2).run(y, {p: x})
    np.testing.assert_allclose(got, gn.Session(g, "reference").run(y, {p: x}), rtol=1e-4, atol=1e-5)
    assert "conv" not in native.compile(g, [y]).fallback_ops


def test_reductions_rows_and_data_movement_are_native() -> None:
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((3, 5, 4)).astype(np.float32),
             "i": rng.integers(0, 4, (3, 5)).astype(np.int64)}
    with gn.Graph() as g:
        x = gn.placeholder((3, 5, 4), name="x")
        i = gn.placeholder((3, 5), gn.int64, name="i")
        outs = [gn.softmax(x, axis=1), gn.log_softmax(x), gn.logsumexp(x, axis=(0, 2)),
                gn.var(x, axis=1), gn.std(x, axis=(0, 1), correction=0), gn.argmax(x, axis=2),
                gn.argmin(x, axis=0), gn.concat([x, x * 2.0], axis=1), gn.stack([x, x], axis=3),
                gn.tile(x, (1, 2, 1)), gn.pad(x, [(1, 0), (2, 2), (0, 1)], mode="reflect"),
                gn.pad(x, 1, value=3.0), gn.pad(x, [(0, 0), (1, 1), (3, 0)], mode="edge"),
                gn.one_hot(i, 4), gn.concat([x, x], axis=1),
                gn.batch_norm(x, *[gn.constant(rng.uniform(0.5, 1.5, 5).astype(np.float32))
                                   for _ in range(4)]),
                gn.layer_norm(x, (5, 4), gn.constant(np.full((5, 4), 2.0, np.float32)),
                              gn.constant(np.ones((5, 4), np.float32))),
                gn.rms_norm(x, 4, gn.constant(np.full(4, 0.5, np.float32))),
                gn.group_norm(gn.reshape(x, (3, 4, 5)), 2,
                              gn.constant(np.arange(4, dtype=np.float32)),
                              gn.constant(np.ones(4, np.float32))),
                gn.adaptive_avg_pool(x, 3), gn.adaptive_max_pool(gn.unsqueeze(x, 0), (2, 3))]
    exe = LLVMBackend(cache=False).compile(g, outs)
    assert exe.fallback_ops == set()
    got = gn.Session(g, backend=LLVMBackend(cache=False)).run(outs, feeds)
    for a, b in zip(got, gn.Session(g, backend="reference").run(outs, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "k", "n"), [(6, 600, 32), (37, 300, 75), (100, 19, 33),
                                           (13, 513, 7), (64, 1, 200), (20, 70, 51),
                                           (262, 600, 300), (256, 40, 45), (300, 129, 1),
                                           (40, 1000, 3)])
@pytest.mark.parametrize("threads", [1, 3])
def test_gemm_template_blocks_and_remainders(m: int, k: int, n: int, dtype: type,
                                             threads: int) -> None:
    """The register-blocked GEMM: whole and partial MR-row and NR-column blocks, several
    k-blocks (k > KC), a fused bias + ReLU epilogue, split over threads; from PACK_ROWS rows
    with packed panels of b (several panels: n > NC, and a last partial one); fewer columns
    than a vector (one masked vector: a classifier's 10 outputs, a matrix-vector product)."""
    from graphnn.backends.llvm import gemm

    with gn.Graph("g") as g:
        a, b = gn.placeholder((m, k), dtype, name="a"), gn.placeholder((k, n), dtype, name="b")
        bias = gn.placeholder((n,), dtype, name="bias")
        y = gn.relu(a @ b + bias)
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    rng = np.random.default_rng(m * k + n)
    av, bv, cv = (rng.standard_normal(s).astype(dtype) for s in [(m, k), (k, n), (n,)])
    got = sess.run(y, {a: av, b: bv, bias: cv})
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, np.maximum(av.astype(np.float64) @ bv + cv, 0), rtol=tol,
                               atol=tol * np.sqrt(k))
    kernels = next(iter(sess._cache.values())).exe.kernels
    bits = gemm.vector_bits(sess.backend.target.features)
    expect = m >= gemm.MR and m * n * k >= gemm.MIN_WORK
    assert any(gemm.applies(kn, bits) for kn in kernels) == expect


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "k", "n", "form"), [
    (1, 784, 512, "columns"), (3, 300, 1000, "rows"), (5, 64, 1024, "columns"),
    (2, 1000, 77, "rows"), (4, 129, 600, "rows"), (1, 4096, 16, "rows"),
    (1, 784, 512, "batched"), (3, 200, 700, "batched")])
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_split_k_gemv(m: int, k: int, n: int, form: str, dtype: type, threads: int) -> None:
    """Few-row matmuls with a big b split their depth between threads (gemv.py): every form
    of the kernel IR (columns split, rows where no column block divides n, batched rows), whole
    vector blocks, single vectors and a masked tail, the fewest slices (k = 64: a third thread
    idle), more threads than slices, and the fused bias + ReLU after the partials' sum."""
    from graphnn.backends.kernel.lower import splits_columns
    from graphnn.backends.llvm import gemm, gemv

    rows = (1, m) if form == "batched" else (m,)
    with gn.Graph("g") as g:
        a, b = gn.placeholder((*rows, k), dtype, name="a"), gn.placeholder((k, n), dtype, name="b")
        bias = gn.placeholder((n,), dtype, name="bias")
        y = gn.relu(a @ b + bias)
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    rng = np.random.default_rng(m * k + n)
    av, bv, cv = (rng.standard_normal(s).astype(dtype) for s in [(*rows, k), (k, n), (n,)])
    got = sess.run(y, {a: av, b: bv, bias: cv})
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, np.maximum(av.astype(np.float64) @ bv + cv, 0), rtol=tol,
                               atol=tol * np.sqrt(k))
    bits = gemm.vector_bits(sess.backend.target.features)
    (kernel,) = [kn for kn in next(iter(sess._cache.values())).exe.kernels
                 if kn.schedule[:1] == ("matmul",)]
    assert gemv.applies(kernel, bits) and len(kernel.source) > 1  # the epilogue fused
    assert splits_columns(kernel) == (form == "columns")


def test_split_k_gemv_declines_small_and_batched_matmuls() -> None:
    """b below MIN_B elements, too little depth for two slices, MR rows or more (also as
    batched rows), a batched b: the other forms take them."""
    from graphnn.backends.llvm import gemv

    cases = [((1, 128), (128, 256)), ((1, 32), (32, 4096)), ((6, 784), (784, 512)),
             ((2, 1, 784), (2, 784, 512)), ((2, 3, 784), (784, 512))]
    for sa, sb in cases:
        with gn.Graph("g") as g:
            y = gn.placeholder(sa, name="a") @ gn.placeholder(sb, name="b")
        sess = gn.Session(g, backend=LLVMBackend(cache=False), opt_level=2)
        feeds = {p: np.ones(p.shape, np.float32) for p in g.placeholders}
        np.testing.assert_allclose(sess.run(y, feeds), np.ones(sa) @ np.ones(sb), rtol=1e-6)
        kernels = next(iter(sess._cache.values())).exe.kernels
        assert not any(gemv.applies(kn, 512) for kn in kernels), (sa, sb)


@pytest.mark.parametrize(("xs", "ws", "kw"), [
    ((3, 8, 13, 11), (16, 8, 3, 3), {"padding": 1}),
    ((2, 12, 31, 30), (24, 4, 3, 2), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2),
                                      "groups": 3}),
    ((2, 6, 201), (12, 6, 5), {"stride": 2, "padding": 2}),
    ((1, 4, 8, 9, 10), (8, 4, 3, 3, 3), {"padding": 1}),
    ((1, 3, 45, 47), (16, 3, 7, 7), {"stride": 2, "padding": 3}),
    ((1, 64, 50, 50), (16, 64, 3, 3), {"stride": 2, "padding": 1}),  # chunks of 192 pixels
    ((1, 12, 30, 29), (18, 4, 3, 3), {"padding": (2, 1), "dilation": (2, 1), "groups": 3}),
    ((1, 8, 1600), (12, 8, 5), {"stride": 3, "padding": 4}),
    ((2, 16, 7, 7), (264, 16, 3, 3), {"padding": 1})])  # PACK_ROWS rows: packed panels
@pytest.mark.parametrize("threads", [1, 3])
def test_convolution_as_im2col_and_gemm(xs: tuple, ws: tuple, kw: dict, threads: int) -> None:
    """Large enough convolutions run as im2col + the GEMM template (per image and group), with
    the bias plane first and a fused residual + ReLU epilogue after, split over threads."""
    from graphnn.backends.llvm import gemm
    from graphnn.backends.llvm.codegen import template_for
    from graphnn.backends.llvm.conv_implicit import implicit_applies

    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    with gn.Graph() as g:
        p = gn.placeholder(xs, name="x")
        conv = gn.conv(p, gn.constant(w), gn.constant(b), **kw)
        r = gn.placeholder(conv.shape, name="r")
        y = gn.relu(conv + r)
    rv = rng.standard_normal(conv.shape).astype(np.float32)
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    got = sess.run(y, {p: x, r: rv})
    np.testing.assert_allclose(got, gn.Session(g, "reference").run(y, {p: x, r: rv}),
                               rtol=1e-4, atol=1e-4)
    kernels = next(iter(sess._cache.values())).exe.kernels
    bits = gemm.vector_bits(sess.backend.target.features)
    # stride 1 over rows long enough: the implicit GEMM (test_implicit_gemm_convolution); else
    # im2col, the threads splitting one image's pixels, or more images' (image, channel) rows
    want = "ImplicitConvGemm" if any(implicit_applies(k, bits) for k in kernels) else \
        "PixelConvGemm" if xs[0] == 1 else "ConvGemm"
    assert any(getattr(template_for(k, bits), "__name__", None) == want and len(k.source) > 1
               for k in kernels)
    if kw.get("stride", 1) != 1:
        assert want != "ImplicitConvGemm"


@pytest.mark.parametrize(("xs", "ws", "kw", "by_columns"), [
    ((2, 32, 26, 26), (64, 32, 3, 3), {}, False),  # W2's layer: the input itself is b
    ((1, 32, 30, 30), (48, 32, 3, 3), {"padding": 1}, True),  # input > weights: split pixels
    ((1, 96, 9, 9), (128, 96, 3, 3), {"padding": 1}, False),  # 3 blocks of 32 channels
    ((2, 12, 17, 30), (24, 4, 3, 2), {"padding": (2, 1), "dilation": (2, 1), "groups": 3},
     False),
    ((1, 12, 40, 33), (24, 4, 3, 3), {"padding": 1, "groups": 3}, True),
    ((2, 8, 19, 21), (16, 8, 4, 2), {"padding": ((1, 2), (0, 1))}, False),  # uneven pads
    ((1, 8, 23, 25), (16, 8, 4, 3), {"padding": "same"}, True),
    ((3, 6, 157), (12, 6, 5), {"padding": 2}, False),  # 1-d
    ((2, 16, 6, 7, 30), (16, 16, 3, 1, 3), {"padding": (1, 0, 1)}, False),  # 3-d
    ((2, 40, 9, 11), (24, 40, 1, 1), {}, False)])  # pointwise: no widening at all
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_implicit_gemm_convolution(xs: tuple, ws: tuple, kw: dict, by_columns: bool,
                                   threads: int, dtype: type,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Stride-1 convolutions run as the implicit GEMM over the (zero-padded) input, the taps
    unrolled in the k loop, over 1, 2 and 3 spatial dims, with groups, dilation, uneven pads,
    several k-blocks, the bias and a fused residual + ReLU epilogue, the threads splitting
    (image, channel) rows or one image's wide columns. (Winograd, which would take the 3x3
    float32 ones, is held off: test_winograd_convolution covers it.)"""
    from graphnn.backends.llvm import conv_winograd, gemm

    monkeypatch.setattr(conv_winograd, "MIN_MACS", 1 << 62)
    from graphnn.backends.llvm.codegen import template_for
    from graphnn.backends.llvm.conv_implicit import columns_split

    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    dt = gn.float32 if dtype == np.float32 else gn.float64
    with gn.Graph() as g:
        p = gn.placeholder(xs, dt, name="x")
        conv = gn.conv(p, gn.constant(w), gn.constant(b), **kw)
        r = gn.placeholder(conv.shape, dt, name="r")
        y = gn.relu(conv + r)
    rv = rng.standard_normal(conv.shape).astype(dtype)
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    got = sess.run(y, {p: x, r: rv})
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, gn.Session(g, "reference").run(y, {p: x, r: rv}),
                               rtol=tol, atol=tol)
    kernels = next(iter(sess._cache.values())).exe.kernels
    bits = gemm.vector_bits(sess.backend.target.features)
    implicit = [k for k in kernels
                if getattr(template_for(k, bits), "__name__", None) == "ImplicitConvGemm"]
    assert len(implicit) == 1 and len(implicit[0].source) > 1  # the epilogue fused in
    assert columns_split(implicit[0]) == by_columns


@pytest.mark.parametrize(("xs", "ws", "kw", "transposed"), [
    ((2, 16, 32, 32), (24, 16, 3, 3), {"padding": 1}, False),  # 512 tiles: the fewest taken
    ((1, 32, 49, 47), (64, 32, 3, 3), {"padding": 1}, False),  # odd sizes: half tiles
    ((3, 20, 30, 33), (12, 20, 3, 3), {}, False),  # no padding, odd width, 12 channels out
    ((1, 16, 52, 51), (48, 16, 3, 3), {"padding": (2, 1)}, False),  # one block: split channels
    ((24, 64, 12, 12), (128, 64, 3, 3), {"padding": 0}, False),  # W2's 3rd layer, batch 24
    ((1, 64, 14, 13), (128, 64, 3, 3), {"padding": 1}, False),  # 128 out: 49 tiles suffice
    ((1, 160, 14, 14), (160, 160, 3, 3), {"padding": 1}, False),  # constant weights: 160^2
    ((2, 16, 24, 70), (16, 16, 3, 3), {"padding": 1}, False),  # rows of several vectors
    ((2, 16, 6, 310), (16, 16, 3, 3), {"padding": 1}, False),  # a loop over inner vectors
    ((3, 24, 30, 30), (24, 16, 3, 3), {"padding": 1}, True),  # conv_transpose
    ((2, 32, 23, 29), (32, 24, 3, 3), {"padding": 0}, True)])  # grows 2 pixels: odd, 25x31
@pytest.mark.parametrize("threads", [1, 3])
def test_winograd_convolution(xs: tuple, ws: tuple, kw: dict, transposed: bool,
                              threads: int) -> None:
    """3x3 stride-1 float32 convolutions with enough tiles run as Winograd F(2x2, 3x3): the
    16 GEMMs of the transformed tiles, the bias and a fused residual + ReLU epilogue in the
    output transform; odd output sizes, uneven padding, blocks of tile rows across images,
    output channels split where blocks are few; stride-1 conv_transpose as the convolution with
    flipped weights."""
    from graphnn.backends.llvm import gemm
    from graphnn.backends.llvm.codegen import template_for

    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    channels = ws[1] if transposed else ws[0]
    b = rng.standard_normal(channels).astype(np.float32)
    with gn.Graph() as g:
        p = gn.placeholder(xs, name="x")
        op = gn.conv_transpose if transposed else gn.conv
        conv = op(p, gn.constant(w), gn.constant(b), **kw)
        r = gn.placeholder(conv.shape, name="r")
        y = gn.relu(conv + r)
    rv = rng.standard_normal(conv.shape).astype(np.float32)
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    got = sess.run(y, {p: x, r: rv})
    want = gn.Session(g, "reference").run(y, {p: x, r: rv})
    # the transforms round differently from the direct sum: 1e-6 of the output's scale
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6 * float(np.abs(want).max()))
    kernels = next(iter(sess._cache.values())).exe.kernels
    bits = gemm.vector_bits(sess.backend.target.features)
    chosen = [k for k in kernels
              if getattr(template_for(k, bits), "__name__", None) == "WinogradConv"]
    assert len(chosen) == 1 and len(chosen[0].source) > 1  # the epilogue fused in
    # the transforms' stride-2 reads and writes are shuffles, not gathers and scatters
    # (the weights' transform, before the threads start, may gather its stride-9 taps)
    asm = next(iter(sess._cache.values())).exe.compiled.assembly
    body = re.search(rf"^{chosen[0].name}_impl:(.*?)^\.Lfunc_end", asm, re.M | re.S)
    assert body and not re.search(r"\bv(p?gather|scatter)", body.group(1))


@pytest.mark.parametrize(("xs", "og", "pad"), [
    ((4, 32, 26, 26), 64, 0),  # W6's 32 -> 64 layer, 4 images: a block an image
    ((8, 64, 12, 12), 128, 0),  # W6's 64 -> 128: two images a block, a short last block
    ((3, 16, 13, 11), 16, 1),  # odd output height and width: half tiles
    ((5, 20, 9, 14), 24, (2, 0)),  # uneven padding; 24 channels out: a masked vector
    ((2, 16, 6, 40), 12, 1)])  # 12 channels out: a 12-column GEMM edge
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(("cpu", "features"), [(None, None), ("x86-64", "")])
def test_winograd_weight_gradient(xs: tuple, og: int, pad: Any, threads: int, cpu: Any,
                                  features: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """3x3 stride-1 weight gradients run as F(2x2, 3x3) (winograd_weight_grad.py): blocks of
    images, the input's and the output gradient's transforms, 16 GEMMs into the threads'
    partials, G^T M G once; at the host's vector width and SSE's 4 lanes."""
    from graphnn.backends.llvm import gemm, winograd_weight_grad
    from graphnn.backends.llvm.codegen import template_for

    monkeypatch.setattr(winograd_weight_grad, "MIN_TILES", 1)  # small cases too
    backend = LLVMBackend(cache=False, threads=threads) if cpu is None else \
        LLVMBackend(cpu=cpu, features=features, cache=False, threads=threads)
    if cpu is not None and backend.target.triple.split("-")[0] != "x86_64":
        pytest.skip("the x86 target needs an x86-64 host")
    rng = np.random.default_rng(14)
    x = rng.standard_normal(xs).astype(np.float32)
    with gn.Graph() as g:
        p = gn.placeholder(xs, name="x")
        w = gn.variable((rng.standard_normal((og, xs[1], 3, 3)) / 10).astype(np.float32), name="w")
        y = gn.conv(p, w, padding=pad)
        r = gn.placeholder(y.shape, name="r")
        (dw,) = gn.gradients(gn.sum(y * r), [w])
    feeds = {p: x, r: rng.standard_normal(y.shape).astype(np.float32)}
    sess = gn.Session(g, backend=backend, opt_level=2)
    got = sess.run(dw, feeds)
    want = gn.Session(g, "reference").run(dw, feeds)
    # the transforms round differently from the direct sum: ~1e-6 of the gradient's scale
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    bits = gemm.vector_bits(backend.target.features)
    names = [getattr(template_for(k, bits), "__name__", None)
             for k in next(iter(sess._cache.values())).exe.kernels]
    assert "WinogradWeightGrad" in names


@pytest.mark.parametrize(("xs", "og", "taken"), [
    ((1, 32, 34, 34), 32, True),  # one image of 256 tiles
    ((4, 128, 16, 16), 128, True),  # 196 tiles
    ((8, 32, 8, 8), 32, False),  # 72 tiles: the partials' overhead outweighs the saving
    ((4, 8, 34, 34), 16, False),  # 8 input channels: shallow
    ((4, 256, 16, 16), 128, False)])  # 256 x 128 pairs: a partial of 2 MiB a thread
def test_winograd_weight_gradient_choice(xs: tuple, og: int, taken: bool) -> None:
    """conv_weight_grad takes Winograd from MIN_TILES output tiles, MIN_CHANNELS input channels
    and up to MAX_WEIGHTS channel pairs (winograd_weight_grad.py's measurements)."""
    from graphnn.backends.kernel.lower import lower
    from graphnn.backends.llvm.winograd_weight_grad import winograd_grad_applies

    from graphnn.ops.registry import make_node

    dys = (xs[0], og, xs[2] - 2, xs[3] - 2)
    attrs = {"stride": (1, 1), "dilation": (1, 1), "groups": 1, "pads": (0, 0, 0, 0),
             "kernel_size": (3, 3)}
    with gn.Graph():
        dw = make_node("conv_weight_grad", [gn.placeholder(xs, name="x"),
                                            gn.placeholder(dys, name="dy")], attrs)
    kernel = lower(dw, "k")
    assert kernel is not None and winograd_grad_applies(kernel, 512) == taken


@pytest.mark.parametrize(("xs", "og", "pad", "taken"), [
    ((1, 32, 26, 26), 64, 0, True),  # W2 batch 1's second layer: 144 tiles
    ((1, 64, 12, 12), 128, 0, True),  # its third: 25 tiles, 128 channels out
    ((1, 128, 9, 9), 128, 0, False),  # a 7x7 output: 16 tiles, 0.77 of their pixels
    ((1, 64, 14, 14), 64, 1, False),  # 64 channels out, 49 tiles
    ((1, 16, 26, 26), 32, 0, False)])  # 2.7M multiply-adds
def test_winograd_choice_for_constant_weights(xs: tuple, og: int, pad: int,
                                              taken: bool) -> None:
    """Constant-weight (inference) convolutions take Winograd where it measured faster than the
    implicit GEMM (conv_winograd.py's thresholds: work, the tiles' fill of the GEMM columns and
    of the output, the tile count below 128 output channels)."""
    from graphnn.backends.kernel.lower import lower
    from graphnn.backends.llvm.conv_winograd import winograd_applies

    with gn.Graph():
        y = gn.conv(gn.placeholder(xs, name="x"), gn.constant(np.ones((og, xs[1], 3, 3),
                                                                      np.float32)), padding=pad)
    kernel = lower(y, "k")
    assert kernel is not None and winograd_applies(kernel, 512) == taken


@pytest.mark.parametrize("values", [32 * 160, 64 * 160, 1, 1000, 4096 * 3 + 7])
def test_winograd_matrices_are_skewed_across_cache_sets(values: int) -> None:
    """V's and M's 16 matrices sit a whole number of 4 KiB pages plus one cache line apart, so
    the 16 values of a tile (one from each) map to 16 different sets of a 4 KiB-indexed L1
    (W2 batch 1's 32 x 160 and 64 x 160 matrices had all shared one set)."""
    from graphnn.backends.llvm.conv_winograd import _skewed

    stride = _skewed(values)
    assert stride >= values
    sets = {(xi * stride * 4) % 4096 // 64 for xi in range(16)}
    assert len(sets) == 16


@pytest.mark.parametrize(("xs", "ws", "kw"), [
    ((1, 32, 112, 112), (32, 1, 3, 3), {"padding": 1}),  # MobileNet's first depthwise layer
    ((2, 16, 17, 23), (16, 1, 3, 3), {"stride": 2, "padding": 1}),  # odd sizes, stride 2
    ((1, 12, 30, 30), (12, 1, 7, 7), {"stride": 2, "padding": 3}),  # a 7x7 kernel
    ((1, 8, 31, 40), (8, 1, 3, 3), {"stride": 3}),  # stride 3, no padding, unused columns
    ((3, 4, 9, 37), (4, 1, 3, 3), {"stride": 4, "padding": 1}),  # stride 4
    ((1, 6, 19, 45), (6, 1, 3, 3), {"padding": 2, "dilation": 2}),  # dilation
    ((1, 8, 20, 33), (16, 1, 5, 5), {"padding": ((1, 2), (0, 3))}),  # x2 multiplier, uneven
    ((2, 8, 16, 16), (16, 2, 3, 3), {"padding": 1, "groups": 4}),  # narrow groups: 2 -> 4
    ((1, 24, 7, 7), (24, 1, 3, 3), {"padding": 1}),  # rows shorter than a vector
    ((1, 5, 11, 70), (5, 1, 3, 2), {"padding": (1, 0), "stride": (1, 2)}),  # mixed strides
    ((3, 1, 28, 28), (32, 1, 3, 3), {}),  # W2's first layer: one input channel, 32 out
    ((2, 4, 20, 20), (24, 1, 3, 3), {"padding": 1})])  # a x6 multiplier: 6 planes a group
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_convolution(xs: tuple, ws: tuple, kw: dict, threads: int, dtype: type
                               ) -> None:
    """2-D convolutions with fewer than MR output channels per group (depthwise layers, with
    a channel multiplier or narrow groups) or one input channel per group run as the direct
    register-blocked kernel (conv_depthwise.py): strides 1-4, dilation, uneven padding, rows
    shorter than a vector and odd sizes, the bias and a fused residual + ReLU epilogue, the
    threads' planes starting anywhere in a group (its input copied once per group and run);
    its strided reads are shuffles, not gathers."""
    from graphnn.backends.llvm import gemm
    from graphnn.backends.llvm.codegen import SHORT_ROW, template_for

    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    dt = gn.float32 if dtype == np.float32 else gn.float64
    kw = dict(kw)  # (the parametrised dict is shared between runs)
    groups = kw.pop("groups", xs[1])
    with gn.Graph() as g:
        p = gn.placeholder(xs, dt, name="x")
        conv = gn.conv(p, gn.constant(w), gn.constant(b), groups=groups, **kw)
        r = gn.placeholder(conv.shape, dt, name="r")
        y = gn.relu(conv + r)
    rv = rng.standard_normal(conv.shape).astype(dtype)
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    for _ in range(2):  # the scratch's padding stays zero from one call to the next
        got = sess.run(y, {p: x, r: rv})
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, gn.Session(g, "reference").run(y, {p: x, r: rv}),
                                   rtol=tol, atol=tol)
    kernels = next(iter(sess._cache.values())).exe.kernels
    bits = gemm.vector_bits(sess.backend.target.features)
    chosen = [k for k in kernels
              if getattr(template_for(k, bits), "__name__", None) == "DepthwiseConv"]
    assert len(chosen) == 1 and len(chosen[0].source) > 1  # the epilogue fused in
    if conv.shape[-1] >= SHORT_ROW[0]:  # (shorter rows: LLVM may gather the epilogue's plane)
        asm = next(iter(sess._cache.values())).exe.compiled.assembly
        body = re.search(rf"^{chosen[0].name}(_impl)?:(.*?)^\.Lfunc_end", asm, re.M | re.S)
        assert body and not re.search(r"\bv(p?gather|scatter)", body.group(2))


@pytest.mark.parametrize(("xs", "ws", "kw"), [
    ((2, 16, 20, 20), (16, 1, 3, 3), {"padding": 1}),
    ((2, 16, 17, 23), (16, 1, 3, 3), {"stride": 2, "padding": 1}),  # stuffed dy, odd sizes
    ((2, 12, 30, 30), (12, 1, 7, 7), {"stride": 2, "padding": 3}),
    ((3, 4, 9, 37), (4, 1, 3, 3), {"stride": 4, "padding": 1}),
    ((1, 6, 19, 45), (6, 1, 3, 3), {"padding": 2, "dilation": 2}),
    ((2, 8, 16, 16), (32, 1, 3, 3), {"padding": 1}),  # x4 multiplier
    ((2, 8, 16, 15), (16, 2, 3, 3), {"padding": (1, 0), "groups": 4}),  # narrow groups
    ((2, 8, 7, 7), (8, 1, 3, 3), {"padding": 1})])  # rows shorter than a vector
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_convolution_gradients(xs: tuple, ws: tuple, kw: dict, threads: int,
                                         dtype: type) -> None:
    """A depthwise layer's input gradient (conv_transpose: the direct kernel over dy stuffed by
    the stride, flipped weights) and weight gradient (per-(channel, tap) vector accumulators
    over every image, the threads splitting output channels) run natively, not as numpy's
    reference, and match the reference backend."""
    from graphnn.backends.llvm import gemm
    from graphnn.backends.llvm.codegen import template_for

    rng = np.random.default_rng(7)
    x = rng.standard_normal(xs).astype(dtype)
    dt = gn.float32 if dtype == np.float32 else gn.float64
    kw = dict(kw)  # (the parametrised dict is shared between runs)
    groups = kw.pop("groups", xs[1])
    with gn.Graph() as g:
        p = gn.placeholder(xs, dt, name="x")
        w = gn.variable(rng.standard_normal(ws).astype(dtype), name="w")
        y = gn.relu(gn.conv(p, w, groups=groups, **kw))
        grads = gn.gradients(gn.sum(y * y), [p, w])
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads))
    got = sess.run(grads, {p: x})
    for a, want in zip(got, gn.Session(g, "reference").run(grads, {p: x})):
        tol = (1e-5 if dtype == np.float32 else 1e-12) * float(np.abs(want).max())
        np.testing.assert_allclose(a, want, rtol=tol, atol=tol)
    exe = next(iter(sess._cache.values())).exe
    bits = gemm.vector_bits(sess.backend.target.features)
    chosen = {(getattr(template_for(k, bits), "__name__", None), k.schedule[:1])
              for k in exe.kernels}
    assert ("DepthwiseWeightGrad", ("conv_weight_grad",)) in chosen
    assert not exe.fallback_ops & {"conv_transpose", "conv_weight_grad"}
    if ws[0] == xs[1]:  # one output channel per input channel: the transpose is depthwise too
        assert ("DepthwiseConv", ("conv_transpose",)) in chosen


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("threads", [1, 3])
def test_conv_max_pool_fusion(batch: int, threads: int) -> None:
    """W2's conv + ReLU + 2x2 max-pool pairs run as one Winograd kernel writing the pooled
    output (pool_fusion.py): no max_pool kernel, the same values as the reference (NaN
    propagated as max_pool does), and Session.profile names the pool's node."""
    from graphnn.backends.llvm import gemm
    from graphnn.backends.llvm.codegen import template_for

    rng = np.random.default_rng(9)
    xv = rng.standard_normal((batch, 32, 26, 26)).astype(np.float32)
    xv[0, 3, 5, 7] = np.nan  # one tile's pixel: its pooled value, and what it feeds, are NaN
    with gn.Graph() as g:
        x = gn.placeholder(xv.shape, name="x")
        h = gn.max_pool2d(gn.relu(gn.conv2d(
            x, gn.constant((rng.standard_normal((64, 32, 3, 3)) / 17).astype(np.float32)),
            gn.constant(rng.standard_normal(64).astype(np.float32)))), 2)
        h = gn.max_pool2d(gn.conv2d(
            h, gn.constant((rng.standard_normal((128, 64, 3, 3)) / 24).astype(np.float32))), 2)
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    got, want = sess.run(h, {x: xv}), gn.Session(g, "reference").run(h, {x: xv})
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    exe = next(iter(sess._cache.values())).exe
    bits = gemm.vector_bits(sess.backend.target.features)
    assert [(k.source, getattr(template_for(k, bits), "__name__", None)) for k in exe.kernels] \
        == [(("conv", "relu", "max_pool"), "WinogradConv"), (("conv", "max_pool"), "WinogradConv")]
    prof = sess.profile(h, {x: xv}, repeat=2)
    assert [k.op for k in prof.kernels] == ["max_pool", "max_pool"]


def test_conv_max_pool_fusion_keeps_the_convolution_input_alive() -> None:
    """W2's chain, where the pooled convolutions' inputs are intermediates in the arena: the
    memory plan keeps each alive until the pool's step, which reads it (the pool's output had
    taken the freed block of the input it was computed from: wrong results)."""
    rng = np.random.default_rng(11)
    xv = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    with gn.Graph() as g:
        x = gn.placeholder(xv.shape, name="x")
        h = gn.relu(gn.conv2d(x, gn.constant(rng.standard_normal((32, 1, 3, 3)).astype(
            np.float32))))
        for c_in, c_out in ((32, 64), (64, 128)):
            w = (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
            h = gn.max_pool2d(gn.relu(gn.conv2d(h, gn.constant(w))), 2)
        y = gn.mean(h, axis=(2, 3))
    sess = gn.Session(g, backend=LLVMBackend(cache=False), opt_level=2)
    want = gn.Session(g, "reference").run(y, {x: xv})
    for _ in range(2):
        np.testing.assert_allclose(sess.run(y, {x: xv}), want, rtol=1e-4, atol=1e-5)
    exe = next(iter(sess._cache.values())).exe
    assert sum("max_pool" in k.source for k in exe.kernels) == 2


@pytest.mark.parametrize(("cpu", "features"), [("haswell", "+avx2,+fma,+avx,+sse4.2"),
                                              ("x86-64", "")])
def test_depthwise_and_pooled_templates_at_narrower_vectors(cpu: str, features: str) -> None:
    """The depthwise kernels (forward, stride 2 and 3, both gradients) and the conv + max-pool
    kernel with AVX2's 8 and SSE's 4 float lanes: their masks, shuffles and tails follow the
    target's vector width."""
    backend = LLVMBackend(cpu=cpu, features=features, cache=False, threads=2)
    if backend.target.triple.split("-")[0] != "x86_64":
        pytest.skip("the x86 targets need an x86-64 host")
    rng = np.random.default_rng(12)
    for xs, kw in (((2, 8, 17, 23), {"stride": 2, "padding": 1}), ((2, 8, 31, 40), {"stride": 3})):
        x = rng.standard_normal(xs).astype(np.float32)
        with gn.Graph() as g:
            p = gn.placeholder(xs, name="x")
            w = gn.variable(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), name="w")
            y = gn.relu(gn.conv2d(p, w, groups=8, **kw))
            fetches = [y, *gn.gradients(gn.sum(y * y), [p, w])]
        for a, b in zip(gn.Session(g, backend=backend).run(fetches, {p: x}),
                        gn.Session(g, "reference").run(fetches, {p: x})):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
    xv = rng.standard_normal((2, 32, 26, 26)).astype(np.float32)
    with gn.Graph() as g:
        x = gn.placeholder(xv.shape, name="x")
        h = gn.max_pool2d(gn.relu(gn.conv2d(x, gn.constant(
            (rng.standard_normal((64, 32, 3, 3)) / 17).astype(np.float32)))), 2)
    sess = gn.Session(g, backend=backend, opt_level=2)
    np.testing.assert_allclose(sess.run(h, {x: xv}), gn.Session(g, "reference").run(h, {x: xv}),
                               rtol=1e-4, atol=1e-4)
    assert [k.source for k in next(iter(sess._cache.values())).exe.kernels] == \
        [("conv", "relu", "max_pool")]


@pytest.mark.parametrize("case", ["fetched", "shared", "odd", "padded", "stride_2"])
def test_conv_max_pool_not_fused(case: str) -> None:
    """A pair stays two kernels where the convolution's output is needed (fetched, or read by
    another node), the pool's windows are not the Winograd tiles (an odd output, padding), or
    no Winograd kernel computes the convolution (stride 2)."""
    rng = np.random.default_rng(10)
    size = 25 if case == "odd" else 26
    xv = rng.standard_normal((1, 32, size, size)).astype(np.float32)
    with gn.Graph() as g:
        x = gn.placeholder(xv.shape, name="x")
        c = gn.relu(gn.conv2d(x, gn.constant(rng.standard_normal((64, 32, 3, 3)).astype(
            np.float32)), stride=2 if case == "stride_2" else 1))
        p = gn.max_pool2d(c, 2, padding=1 if case == "padded" else 0)
        fetches = [p, c] if case == "fetched" else [p + gn.mean(c)] if case == "shared" else [p]
    sess = gn.Session(g, backend=LLVMBackend(cache=False), opt_level=2)
    for a, b in zip(sess.run(fetches, {x: xv}), gn.Session(g, "reference").run(fetches,
                                                                               {x: xv})):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    exe = next(iter(sess._cache.values())).exe
    assert not any("max_pool" in k.source and "conv" in k.source for k in exe.kernels)
    assert any(k.source == ("max_pool",) for k in exe.kernels)


@pytest.mark.parametrize("threads", [1, 2])
def test_winograd_weights_are_transformed_again_when_variables_change(threads: int) -> None:
    """The transformed weights are computed once per module only for constant weights: with a
    variable, each run transforms its current value (after load_variables, and after an assign
    in the previous run), while a constant's stay right over repeated runs."""
    rng = np.random.default_rng(4)
    xv = rng.standard_normal((2, 16, 32, 32)).astype(np.float32)
    w0 = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    with gn.Graph() as g:
        x = gn.placeholder(xv.shape, name="x")
        w = gn.variable(w0, name="w")
        y = gn.conv(x, w, padding=1)
        halve = gn.assign(w, w * 0.5)
        fixed = gn.conv(x, gn.constant(w0), padding=1)
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    ref = gn.Session(g, backend="reference")

    def want(weights: np.ndarray) -> np.ndarray:
        ref.load_variables({w: weights})
        return ref.run(y, {x: xv})

    def check(got: np.ndarray, weights: np.ndarray) -> None:
        expected = want(weights)
        np.testing.assert_allclose(got, expected, rtol=1e-4,
                                   atol=2e-6 * float(np.abs(expected).max()))

    check(sess.run(y, {x: xv}), w0)
    sess.load_variables({w: w1})
    check(sess.run(y, {x: xv}), w1)
    check(sess.run([y, halve], {x: xv})[0], w1)  # the run reads w before the assign
    check(sess.run(y, {x: xv}), w1 * 0.5)
    for _ in range(2):
        check(sess.run(fixed, {x: xv}), w0)
    from graphnn.backends.kernel.lower import lower

    (big,) = [lower(n, "k") for n in g.nodes if n.op == "conv" and n.inputs[1].op == "constant"]
    assert big is not None and big.params[1].constant and not big.params[0].constant
    kernels = [k for entry in sess._cache.values() for k in entry.exe.kernels]
    assert any(k.schedule[:1] == ("conv",) and k.params[-1].shape == (2, 24, 32, 32)
               for k in kernels)


@pytest.mark.parametrize(("m", "k", "n"), [(128, 600, 300), (20, 70, 64), (300, 40, 33)])
@pytest.mark.parametrize("threads", [1, 2])
def test_constant_weights_are_packed_once(m: int, k: int, n: int, threads: int) -> None:
    """A dense layer's constant weights are packed into the module's array on the first run
    (several k-blocks: k > KC; several panels; edge columns past the last whole tile read b
    itself) and give the same result on later runs; a variable's are packed per call, so
    a new value counts at once."""
    from graphnn.backends.llvm import gemm

    rng = np.random.default_rng(m + k + n)
    xv, w0, w1 = (rng.standard_normal(s).astype(np.float32) for s in [(m, k), (k, n), (k, n)])
    with gn.Graph() as g:
        x = gn.placeholder((m, k), name="x")
        fixed = gn.relu(x @ gn.constant(w0))
        w = gn.variable(w0, name="w")
        moving = x @ w
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    want = np.maximum(xv.astype(np.float64) @ w0, 0)
    for _ in range(3):
        np.testing.assert_allclose(sess.run(fixed, {x: xv}), want, rtol=1e-4, atol=1e-4)
    exe = next(iter(sess._cache.values())).exe
    assert "_packed_b" in exe.compiled.llvm_ir
    assert [kn for kn in exe.kernels if gemm.applies(kn, 512) and kn.params[1].constant]
    np.testing.assert_allclose(sess.run(moving, {x: xv}), xv @ w0, rtol=1e-4, atol=1e-4)
    sess.load_variables({w: w1})
    np.testing.assert_allclose(sess.run(moving, {x: xv}), xv @ w1, rtol=1e-4, atol=1e-4)
    moving_exe = list(sess._cache.values())[-1].exe
    assert "_packed_b" not in moving_exe.compiled.llvm_ir


@pytest.mark.parametrize("shape", [(3, 37, 64), (2, 3, 10, 48), (1, 128, 256)])
@pytest.mark.parametrize("threads", [1, 3])
def test_gemm_template_over_batched_rows(shape: tuple, threads: int) -> None:
    """A dense layer over a sequence, (..., k) @ (k, n) + bias -> GELU: the batches' rows form
    one matrix for the GEMM template; the fused epilogue sees each row's batch indices."""
    from graphnn.backends.llvm import gemm

    k, n = shape[-1], 72
    rng = np.random.default_rng(len(shape))
    xv = rng.standard_normal(shape).astype(np.float32)
    wv, bv = rng.standard_normal((k, n)).astype(np.float32), rng.standard_normal(n).astype(
        np.float32)
    with gn.Graph() as g:
        x = gn.placeholder(shape, name="x")
        r = gn.placeholder((*shape[:-1], n), name="r")  # a residual with the batch dims
        y = gn.gelu(gn.matmul(x, gn.constant(wv)) + gn.constant(bv) + r)
    rv = rng.standard_normal((*shape[:-1], n)).astype(np.float32)
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    got = sess.run(y, {x: xv, r: rv})
    np.testing.assert_allclose(got, gn.Session(g, "reference").run(y, {x: xv, r: rv}),
                               rtol=1e-4, atol=1e-4)
    bits = gemm.vector_bits(sess.backend.target.features)
    assert any(gemm.applies(kn, bits) for kn in next(iter(sess._cache.values())).exe.kernels)


@pytest.mark.parametrize(("batch", "m", "k", "n"), [((2, 3), 37, 20, 45), ((5,), 64, 70, 33),
                                                    ((1, 4), 128, 64, 128), ((3,), 260, 40, 70)])
@pytest.mark.parametrize("threads", [1, 3])
def test_gemm_template_per_batch_index(batch: tuple, m: int, k: int, n: int,
                                       threads: int) -> None:
    """Batched a @ batched b with the same batch dims (attention's q k^T): one GEMM per batch
    index, the threads splitting the batch indices; a fused scale + residual epilogue."""
    from graphnn.backends.llvm import gemm

    rng = np.random.default_rng(m + n)
    av, bv, rv = (rng.standard_normal(s).astype(np.float32)
                  for s in [(*batch, m, k), (*batch, k, n), (*batch, m, n)])
    with gn.Graph() as g:
        a, b, r = (gn.placeholder(v.shape, name=nm) for nm, v in zip("abr", (av, bv, rv)))
        y = gn.matmul(a, b) * 0.5 + r
    sess = gn.Session(g, backend=LLVMBackend(cache=False, threads=threads), opt_level=2)
    got = sess.run(y, {a: av, b: bv, r: rv})
    np.testing.assert_allclose(got, (av.astype(np.float64) @ bv) * 0.5 + rv, rtol=1e-4,
                               atol=1e-4)
    bits = gemm.vector_bits(sess.backend.target.features)
    assert any(gemm.applies(kn, bits) for kn in next(iter(sess._cache.values())).exe.kernels)


def test_intermediates_share_one_arena_without_overlapping_live_values() -> None:
    """The JIT's intermediates are views of one arena laid out by a memory plan over the
    execution order: smaller than a buffer each, no two values alive at once overlap, runs
    repeat the reference's results, and the profile (which gives each intermediate its own
    buffer) times every kernel."""
    from graphnn.passes.memory import plan_buffers

    rng = np.random.default_rng(0)
    with gn.Graph("g") as g:
        x = gn.placeholder((64, 256), name="x")
        h = x
        for _ in range(6):  # a chain: each value dies at the next layer
            w = gn.constant((rng.standard_normal((256, 256)) / 16).astype(np.float32))
            h = gn.tanh(h @ w) + h * 0.5
        y = gn.sum(h, axis=1)
    sess = gn.Session(g, backend=LLVMBackend(cache=False), opt_level=1)
    feeds = {"x": rng.standard_normal((64, 256)).astype(np.float32)}
    want = gn.Session(g, backend="reference").run(y, feeds)
    for _ in range(3):
        np.testing.assert_allclose(sess.run(y, feeds), want, rtol=1e-4, atol=1e-4)
    exe = next(iter(sess._cache.values())).exe
    assert len(exe._scratch) >= 6 and exe.arena_bytes < exe.unplanned_bytes / 2
    assert all(a.base is exe._arena for a in exe._scratch.values())
    blocks, _ = plan_buffers(exe.order, list(exe._scratch))
    index = {n: i for i, n in enumerate(exe.order)}
    last = {n: max([index[u] for u in exe.order if n in u.inputs], default=index[n])
            for n in blocks}
    for a in blocks:
        for b in blocks:
            live_together = a is not b and index[a] <= last[b] and index[b] <= last[a]
            (oa, sa), (ob, sb) = blocks[a], blocks[b]
            assert not (live_together and oa < ob + sb and ob < oa + sa), (a, b)
    profile = sess.profile(y, feeds, repeat=2)
    assert len(profile.kernels) == len(exe.kernels)
    assert all(k.seconds > 0 for k in profile.kernels)
    np.testing.assert_allclose(sess.run(y, feeds), want, rtol=1e-4, atol=1e-4)


def test_fetched_arrays_are_recycled_only_when_the_caller_let_go() -> None:
    """A fetched value is computed straight into the array returned: last run's array once the
    caller dropped it (no copy, no page faults), a fresh one while the caller still holds it."""
    with gn.Graph() as g:
        p = gn.placeholder((50_000,), name="x")
        y = gn.tanh(p) * 2.0
    sess = gn.Session(g, backend=LLVMBackend(cache=False), opt_level=2)
    ones, twos = np.ones(50_000, np.float32), np.full(50_000, 2.0, np.float32)
    kept = sess.run(y, {p: ones})
    again = sess.run(y, {p: twos})  # `kept` is still referenced: a new array
    assert again is not kept and again.ctypes.data != kept.ctypes.data
    np.testing.assert_allclose(kept, 2 * np.tanh(ones), rtol=1e-6)
    np.testing.assert_allclose(again, 2 * np.tanh(twos), rtol=1e-6)
    view = again[::2]  # a view keeps its base alive: not recycled either
    address = again.ctypes.data
    del again
    third = sess.run(y, {p: ones})
    assert third.ctypes.data != address and view.base is not None
    np.testing.assert_allclose(view, 2 * np.tanh(twos[::2]), rtol=1e-6)
    address = third.ctypes.data
    del third, view
    fourth = sess.run(y, {p: twos})  # dropped: recycled
    assert fourth.ctypes.data == address
    np.testing.assert_allclose(fourth, 2 * np.tanh(twos), rtol=1e-6)
    pair = sess.run([y, y], {p: ones})  # one node fetched twice: two arrays
    assert pair[0] is not pair[1]
    np.testing.assert_array_equal(pair[0], pair[1])
