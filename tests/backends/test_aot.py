"""Ahead-of-time compilation: libraries built, loaded (ctypes) and run from C, against the
reference backend; weights files, cross-compiled objects, the CPU check, errors."""

from __future__ import annotations

import ctypes
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from graphnn.backends.aot.api import CPUID_BITS
from graphnn.backends.aot.build import find_c_compiler, prepare
from graphnn.backends.aot.loader import missing_features

import graphnn as gn
from graphnn import models, nn
from graphnn.cli import main as cli
from graphnn.nn.module import graph_of

ROOT = pathlib.Path(__file__).resolve().parents[2]


def reference(graph: gn.Graph, *arrays: np.ndarray) -> list[np.ndarray]:
    return gn.Session(graph, "reference").run(list(graph.outputs),
                                              dict(zip(graph.placeholders, arrays)))


@pytest.mark.parametrize("name", ["digits-cnn", "mlp", "cnn-bn"])
def test_zoo_models_match_the_reference(name: str, tmp_path: pathlib.Path) -> None:
    graph, _ = models.inference_graph(name)
    shape = (3, *graph.placeholders[0].shape[1:])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    art = gn.compile(graph, [x], output=str(tmp_path / "m"))
    assert art.library and pathlib.Path(art.library).exists()
    lib = gn.load_compiled(art.library)
    np.testing.assert_allclose(lib(x), reference(graph, x)[0], rtol=1e-5, atol=1e-5)
    assert art.metadata["inputs"] == [{"name": "x", "dtype": "float32", "shape": list(shape),
                                       "bytes": x.nbytes}]
    if name == "cnn-bn":  # frozen weights let batch-norm folding remove every batch_norm
        assert "batch_norm" in {n.op for n in graph.nodes}
        assert "batch_norm" not in {n.op for n in prepare(graph, [x]).nodes}


def test_depthwise_separable_block(tmp_path: pathlib.Path) -> None:
    """A MobileNet block (depthwise 3x3, stride 2, + ReLU, then pointwise 1x1) compiled ahead
    of time: the depthwise template's per-thread scratch comes from the library's runtime."""
    rng = np.random.default_rng(6)
    with gn.Graph() as graph:
        x = gn.placeholder((2, 32, 29, 29), name="x")
        h = gn.relu(gn.conv2d(x, gn.constant(rng.standard_normal((32, 1, 3, 3), np.float32)),
                              stride=2, padding=1, groups=32))
        graph.outputs = [gn.conv2d(h, gn.constant(rng.standard_normal((48, 32, 1, 1),
                                                                     np.float32)))]
    xv = rng.standard_normal((2, 32, 29, 29), np.float32)
    lib = gn.load_compiled(gn.compile(graph, [xv], output=str(tmp_path / "dw")).library)
    for _ in range(2):  # the scratch's padding stays zero between calls
        np.testing.assert_allclose(lib(xv), reference(graph, xv)[0], rtol=1e-5, atol=1e-5)


def test_fitted_module_and_never_called_module(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.random((64, 5), dtype=np.float32), rng.integers(0, 3, 64)
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    model.compile(gn.optim.Adam(0.05), "cross_entropy")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    lib = gn.load_compiled(gn.compile(model, [x[:8]], output=str(tmp_path / "fit")).library)
    np.testing.assert_allclose(lib(x[:8]), model.predict(x[:8]), rtol=1e-5, atol=1e-6)

    fresh = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
    w = fresh.state_dict()
    lib = gn.load_compiled(gn.compile(fresh, [x[:2]], output=str(tmp_path / "fresh")).library)
    expect = np.maximum(x[:2] @ w["0.weight"].T + w["0.bias"], 0)
    np.testing.assert_allclose(lib(x[:2]), expect, rtol=1e-5, atol=1e-6)
    # compiling again (another batch size) reuses the graph the first compile built
    lib4 = gn.load_compiled(gn.compile(fresh, [(4, 5)], output=str(tmp_path / "fresh4")).library)
    assert lib4(x[:4]).shape == (4, 4)


def test_several_inputs_and_outputs_and_a_passthrough(tmp_path: pathlib.Path) -> None:
    with gn.Graph("two") as g:
        a = gn.placeholder((None, 4), name="a")
        b = gn.placeholder((None, 4), name="b")
        g.outputs = (gn.exp(a) * b, gn.sum(a - b, axis=1), a)
    arrays = [np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
              for _ in range(2)]
    art = gn.compile(g, arrays, output=str(tmp_path / "two"))
    lib = gn.load_compiled(art.library)
    for got, want in zip(lib(*arrays), reference(g, *arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    header = pathlib.Path(art.header).read_text()
    assert "int two_run(two_context *ctx, const float *a, const float *b, float *output0, " \
           "float *output1, float *output2);" in header
    with pytest.raises(gn.FeedError, match="input a has shape \\[5, 4\\], got \\[2, 4\\]"):
        lib(arrays[0][:2], arrays[1][:2])


def test_weights_file(tmp_path: pathlib.Path) -> None:
    graph, _ = models.inference_graph("mlp")
    x = np.random.default_rng(3).random((2, *graph.placeholders[0].shape[1:]), np.float32)
    art = gn.compile(graph, [x], output=str(tmp_path / "w"), weights="file")
    assert art.weights and pathlib.Path(art.weights).stat().st_size == \
        art.metadata["weights"]["bytes"] + 16
    # the library holds no weights: it is far smaller than they are
    assert pathlib.Path(art.library).stat().st_size < art.metadata["weights"]["bytes"] / 4
    np.testing.assert_allclose(gn.load_compiled(art.library)(x), reference(graph, x)[0],
                               rtol=1e-5, atol=1e-6)
    other = gn.compile(graph, [x[:1]], output=str(tmp_path / "o" / "w"), weights="file",
                       name="other")
    pathlib.Path(other.weights).write_bytes(pathlib.Path(art.weights).read_bytes()[:-1])
    with pytest.raises(gn.GraphnnError, match="weights file is missing, unreadable, truncated"):
        gn.load_compiled(other.library)
    with pytest.raises(gn.GraphnnError, match="weights file"):
        gn.load_compiled(art.library, weights=str(tmp_path / "nonexistent.weights"))


def test_c_status_codes(tmp_path: pathlib.Path) -> None:
    with gn.Graph("st") as g:
        x = gn.placeholder((3,), name="x")
        g.outputs = (x * 2.0,)
    art = gn.compile(g, [(3,)], output=str(tmp_path / "st"))
    lib = ctypes.CDLL(art.library)
    lib.st_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.st_run.argtypes = [ctypes.c_void_p] * 3
    lib.st_error_string.restype = ctypes.c_char_p
    ctx = ctypes.c_void_p()
    assert lib.st_create(None, None) == 1
    assert lib.st_create(ctypes.byref(ctx), None) == 0 and ctx.value
    x, y = np.arange(3, dtype=np.float32), np.zeros(3, np.float32)
    assert lib.st_run(ctx, x.ctypes.data, None) == 1  # GRAPHNN_ERR_ARGUMENT
    assert lib.st_run(None, x.ctypes.data, y.ctypes.data) == 1
    assert lib.st_run(ctx, x.ctypes.data, y.ctypes.data) == 0
    np.testing.assert_array_equal(y, [0, 2, 4])
    assert lib.st_error_string(1) == b"a required pointer argument is NULL"
    assert lib.st_error_string(99) == b"unknown status"
    lib.st_destroy(ctx)
    lib.st_destroy(None)


def test_cpu_feature_check(tmp_path: pathlib.Path) -> None:
    lacking = [f for f in CPUID_BITS if missing_features("+" + f)]
    if not lacking:
        pytest.skip("this CPU has every feature the check knows; nothing to be missing")
    feature = lacking[0]
    with gn.Graph("cpu") as g:
        x = gn.placeholder((4,), name="x")
        g.outputs = (x + 1.0,)
    art = gn.compile(g, [(4,)], output=str(tmp_path / "cpu"), features=f"+sse2,+{feature}")
    assert f"+{feature}" in art.metadata["target"]["features"]
    with pytest.raises(gn.GraphnnError, match=f"uses {feature}, which this CPU lacks"):
        gn.load_compiled(art.library)
    lib = ctypes.CDLL(art.library)  # the C-level check, before any generated code runs
    lib.cpu_missing_cpu_feature.restype = ctypes.c_char_p
    assert lib.cpu_missing_cpu_feature() == feature.encode()
    ctx = ctypes.c_void_p()
    assert lib.cpu_create(ctypes.byref(ctx), None) == 3 and not ctx.value


def test_cross_compiled_objects(tmp_path: pathlib.Path) -> None:
    graph, _ = models.inference_graph("digits-cnn")
    arm = gn.compile(graph, [(1, 1, 8, 8)], output=str(tmp_path / "arm"),
                     triple="aarch64-linux-gnu")
    assert arm.library is None and arm.metadata["target"]["triple"] == "aarch64-linux-gnu"
    elf = pathlib.Path(arm.object).read_bytes()
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64
    v3 = gn.compile(graph, [(1, 1, 8, 8)], output=str(tmp_path / "v3"), cpu="x86-64-v3",
                    triple="x86_64-unknown-linux-gnu")
    assert "+avx2" in v3.metadata["target"]["features"]
    assert int.from_bytes(pathlib.Path(v3.object).read_bytes()[18:20], "little") == 62  # x86-64
    with pytest.raises(gn.GraphnnError, match="unknown target triple"):
        gn.compile(graph, [(1, 1, 8, 8)], output=str(tmp_path / "bad"), triple="nonsense-xyz")


def test_libraries_split_fewer_kernels_and_vectorise_as_the_jit() -> None:
    """A library's runtime creates its threads on every call, so a kernel of 32,768 iterations
    stays on the calling thread there (SPAWN_MIN_WORK) while the JIT's pool splits it
    (PARALLEL_MIN_WORK); both target the host's features, zmm-wide loops included."""
    from graphnn.backends.aot.build import target_machine
    from graphnn.backends.aot.program import build_program
    from graphnn.backends.llvm import LLVMBackend
    from graphnn.backends.llvm.codegen import PARALLEL_MIN_WORK, SPAWN_MIN_WORK

    assert PARALLEL_MIN_WORK <= 32768 < SPAWN_MIN_WORK
    with gn.Graph() as g:
        x = gn.placeholder((64, 512), name="x")
        y = gn.relu(x * 3.0)
    g.outputs = [y]
    program = build_program(prepare(g, [np.ones((64, 512), np.float32)]), "m", ["x"], ["y"])
    assert "graphnn_parallel_for" not in program.llvm_ir
    jit = LLVMBackend(cache=False).compile(g, [y])
    assert jit.compiled is not None and "graphnn_parallel_for" in jit.compiled.llvm_ir
    features = target_machine(None, None, None)[3]
    assert features == LLVMBackend().target.features
    assert ("-prefer-256-bit" in features) == ("+avx512f" in features.split(","))


def test_only_the_api_is_exported(tmp_path: pathlib.Path) -> None:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    graph, _ = models.inference_graph("mlp")
    art = gn.compile(graph, [(2, 784)], output=str(tmp_path / "mlp"))
    out = subprocess.run([nm, "-g", "--defined-only", art.object], capture_output=True,
                         text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines()}
    assert exported == {f"mlp_{f}" for f in ("create", "run", "destroy", "set_num_threads",
                                             "metadata", "missing_cpu_feature",
                                             "error_string")}


def test_threads_give_the_same_result(tmp_path: pathlib.Path) -> None:
    graph, _ = models.inference_graph("mlp")
    x = np.random.default_rng(4).random((256, 784), np.float32)
    art = gn.compile(graph, [x], output=str(tmp_path / "mlp"))
    one = gn.load_compiled(art.library, threads=1)(x)
    three = gn.load_compiled(art.library, threads=3)(x)
    np.testing.assert_array_equal(one, three)
    np.testing.assert_allclose(one, reference(graph, x)[0], rtol=1e-5, atol=1e-5)


def test_winograd_convolution_in_contexts_running_at_once(tmp_path: pathlib.Path) -> None:
    """A library's Winograd convolution transforms its weights per call (an AOT kernel marks
    no input constant), so two contexts running on two threads at once agree with the
    reference."""
    import threading

    from graphnn.backends.kernel.lower import lower
    from graphnn.backends.llvm.codegen import template_for
    from graphnn.backends.llvm.gemm import vector_bits
    from graphnn.backends.llvm.jit import Target

    rng = np.random.default_rng(5)
    with gn.Graph("wino") as graph:
        p = gn.placeholder((2, 16, 32, 32), name="x")
        y = gn.relu(gn.conv(p, gn.constant(rng.standard_normal((24, 16, 3, 3)).astype(
            np.float32)), gn.constant(rng.standard_normal(24).astype(np.float32)), padding=1))
        graph.outputs = [y]
    xs = [rng.standard_normal((2, 16, 32, 32)).astype(np.float32) for _ in range(2)]
    bits = vector_bits(Target.host().features)
    convs = [lower(n, "k") for n in prepare(graph, [xs[0]]).nodes if n.op in ("conv", "fused")]
    assert any(k is not None and getattr(template_for(k, bits), "__name__", "") ==
               "WinogradConv" for k in convs)
    art = gn.compile(graph, [xs[0]], output=str(tmp_path / "wino"))
    models_ = [gn.load_compiled(art.library, threads=2) for _ in xs]
    got: list[list[np.ndarray]] = [[], []]

    def work(k: int) -> None:
        for _ in range(20):
            got[k].append(models_[k](xs[k]))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for k, x in enumerate(xs):
        want = reference(graph, x)[0]
        for out in got[k]:
            np.testing.assert_allclose(out, want, rtol=1e-4,
                                       atol=2e-6 * float(np.abs(want).max()))


def test_clear_errors(tmp_path: pathlib.Path) -> None:
    with gn.Graph("t") as g:
        x = gn.placeholder((None, 4), name="x")
        i = gn.placeholder((2,), gn.int64, name="i")
        g.outputs = (gn.take(x, i, axis=1), gn.pow(i, i))
    with pytest.raises(gn.ShapeError, match="2 inputs .* 1 example inputs"):
        gn.compile(g, [(3, 4)], output=str(tmp_path / "t"))
    with gn.Graph("t") as g:  # attention over no keys: the reference raises, no kernel
        q = gn.placeholder((2, 4), name="q")
        none = gn.constant(np.zeros((0, 4), np.float32))
        g.outputs = (gn.scaled_dot_product_attention(q, none, none),)
    with pytest.raises(gn.GraphError, match="scaled_dot_product_attention .* has no native"):
        gn.compile(g, [(2, 4)], output=str(tmp_path / "t"), opt_level=1)
    with gn.Graph("r") as g:
        x = gn.placeholder((4,), name="x")
        g.outputs = (gn.dropout(x, 0.5, training=True),)
    with pytest.raises(gn.GraphError, match="draws random numbers"):
        gn.compile(g, [(4,)], output=str(tmp_path / "r"))
    with pytest.raises(gn.GraphnnError, match="target 'opencl' is not supported"):
        gn.compile(g, [(4,)], output=str(tmp_path / "r"), target="opencl")


def test_header_compiles_and_c_example_matches_session(tmp_path: pathlib.Path) -> None:
    cc = find_c_compiler()
    if cc is None:
        pytest.fail("no C compiler (cc, gcc or clang) on PATH: install one, e.g. "
                    "`apt install gcc` or `pip install ziglang`, to build the AOT example")
    nn.init.manual_seed(0)
    digits = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Flatten(), nn.Linear(128, 10))
    x = np.random.default_rng(5).random((2, 1, 8, 8), np.float32)
    art = gn.compile(digits, [x], output=str(tmp_path / "digits"))
    assert pathlib.Path(art.header).name == "digits.h"
    demo = tmp_path / "digits_demo"
    subprocess.run([*cc, "-O2", "-Wall", "-Wextra", "-Werror", "-std=c99", "-I", str(tmp_path),
                    str(ROOT / "examples" / "aot" / "main.c"), "-L", str(tmp_path), "-ldigits",
                    "-lm", "-lpthread", f"-Wl,-rpath,{tmp_path}", "-o", str(demo)], check=True)
    images = np.random.default_rng(6).random((3, 2, 1, 8, 8), np.float32)  # three batches
    (tmp_path / "in.f32").write_bytes(images.tobytes())
    out = subprocess.run([str(demo), str(tmp_path / "in.f32")], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    got = np.array([[float(v) for v in line.split()[1:]] for line in out])
    classes = [int(line.split()[0]) for line in out]
    graph = graph_of(digits)  # the graph compile built around the module
    assert graph is not None
    want = np.concatenate([reference(graph, batch)[0] for batch in images])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert classes == list(want.argmax(axis=1))


UNLOAD_C = r"""
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>

typedef int (*create_fn)(void **, const char *);
typedef int (*run_fn)(void *, const float *, float *);
typedef void (*destroy_fn)(void *);

static float x[SIZE_IN], y[SIZE_OUT];

static size_t in_use(void) {  /* malloc'd bytes: the heap's and the mmap'd chunks' */
    struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

int main(int argc, char **argv) {
    size_t before = 0;
    for (int i = 0; i < 25; i++) {
        void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        void *ctx;
        if (((create_fn)dlsym(lib, "NAME_create"))(&ctx, NULL)) return 2;
        if (((run_fn)dlsym(lib, "NAME_run"))(ctx, x, y)) return 3;
        ((destroy_fn)dlsym(lib, "NAME_destroy"))(ctx);
        if (dlclose(lib)) return 4;
        if (i == 0) before = in_use();  /* after one load: what stays allocated anyway */
    }
    printf("%zu\n", in_use() - before);
    return 0;
}
"""


def test_unloaded_library_frees_its_scratch(tmp_path: pathlib.Path) -> None:
    """A library's cached scratch buffers (an im2col convolution's columns here, 0.6 MB a
    thread) are freed by its destructor when dlclose unloads it: 24 more load, run, unload
    cycles leave no more memory allocated than the first."""
    cc = find_c_compiler()
    if cc is None:
        pytest.fail("no C compiler (cc, gcc or clang) on PATH: install one, e.g. "
                    "`apt install gcc` or `pip install ziglang`, to build the test program")
    rng = np.random.default_rng(8)
    with gn.Graph() as graph:
        x = gn.placeholder((1, 16, 64, 64), name="x")
        graph.outputs = [gn.conv2d(x, gn.constant(rng.standard_normal((32, 16, 3, 3),
                                                                      np.float32)),
                                   stride=2, padding=1)]
    art = gn.compile(graph, [np.zeros((1, 16, 64, 64), np.float32)],
                     output=str(tmp_path / "unload"))
    source = tmp_path / "unload.c"
    source.write_text(UNLOAD_C.replace("NAME", "unload").replace("SIZE_IN", str(16 * 64 * 64))
                      .replace("SIZE_OUT", str(32 * 32 * 32)))
    program = tmp_path / "unload_test"
    subprocess.run([*cc, "-O1", str(source), "-ldl", "-o", str(program)], check=True)
    grown = int(subprocess.run([str(program), str(art.library)], capture_output=True, text=True,
                               check=True).stdout)
    assert grown < 256 * 1024, f"{grown} bytes more after 24 unloads"


def test_cli_compile(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["compile", "digits-cnn", "--out", str(tmp_path / "d"), "--batch", "2",
                "--weights-file"]) == 0
    out = capsys.readouterr().out
    assert "library" in out and (tmp_path / "libd.so").exists()
    assert (tmp_path / "d.weights").exists()
    lib = gn.load_compiled(tmp_path / "libd.so")
    assert lib.inputs[0]["shape"] == [2, 1, 8, 8]
    assert cli(["compile", "digits-cnn", "--out", str(tmp_path / "a"),
                "--triple", "aarch64-linux-gnu"]) == 0
    assert "aarch64" in capsys.readouterr().out


def test_link_falls_back_to_ziglang_then_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no cc/gcc/clang on PATH, the ziglang package's clang links; without it, the error
    names what to install."""
    import importlib.util

    from graphnn.backends.aot import build

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: object() if name == "ziglang" else None)
    assert build.find_c_compiler() == [sys.executable, "-m", "ziglang", "cc"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert build.find_c_compiler() is None
    with pytest.raises(gn.GraphnnError, match="apt install gcc.*pip install ziglang"):
        build.link_shared("m.o", "libm.so")
