"""OpenCL backend properties (on PoCL in CI, on a GPU where one is lent): device choice and
errors, generated source and dumps, templates (tiled matmul, direct convolution) with fused
epilogues, buffers that stay on the device (a training step moves no weights), atomic runs."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
import pytest
from graphnn.backends.opencl import DeviceValue, OpenCLBackend, OpenCLError, list_devices
from graphnn.backends.opencl import device as device_mod
from graphnn.backends.opencl.executable import OpenCLDevice, shared_device

import graphnn as gn
from graphnn import nn
from graphnn.cli import main as cli


def compile_one(build, *shapes, dtype=np.float32):  # type: ignore[no-untyped-def]
    with gn.Graph("k") as g:
        xs = [gn.placeholder(s, dtype, name=f"x{i}") for i, s in enumerate(shapes)]
        out = build(*xs)
    return g, xs, out, OpenCLBackend().compile(g, [out])


def test_devices_are_listed_and_selected(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    devices = list_devices()
    assert devices and all(d.max_work_group_size >= 1 and d.local_mem_bytes > 0 for d in devices)
    first = devices[0]
    assert device_mod.select_device(0).name.strip() == first.name
    assert device_mod.select_device(first.kind).name.strip() == first.name
    assert device_mod.select_device(first.name[:6].lower()).name.strip() == first.name
    with pytest.raises(OpenCLError, match=r"no OpenCL device matches 'tpu'; devices:\n  \[0\]"):
        device_mod.select_device("tpu")
    monkeypatch.setenv("GRAPHNN_OPENCL_DEVICE", "99")  # the variable overrides the argument
    with pytest.raises(OpenCLError, match="'99' \\(from GRAPHNN_OPENCL_DEVICE\\)"):
        gn.Session(gn.Graph(), backend="opencl", device=0)
    monkeypatch.delenv("GRAPHNN_OPENCL_DEVICE")
    assert cli(["devices"]) == 0
    out = capsys.readouterr().out
    assert f"[0] {first.name}" in out and "max work-group" in out and "default for" in out
    with pytest.raises(gn.GraphError, match="backend 'llvm' does not take device="):
        gn.Session(gn.Graph(), backend="llvm", device="gpu")


def test_no_platform_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyopencl as cl

    monkeypatch.setattr(cl, "get_platforms", lambda: [])
    with pytest.raises(OpenCLError, match=r'pip install "pyopencl\[pocl\]".*vendor'):
        OpenCLBackend()


def test_float64_on_a_device_without_fp64_fails_at_compile_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dev = OpenCLDevice(device_mod.select_device(None))
    monkeypatch.setattr(dev, "info", dev.info.__class__(**{**dev.info.__dict__, "fp64": False}))
    backend = OpenCLBackend()
    backend.device = dev
    with gn.Graph() as g:
        x = gn.placeholder((3,), np.float64, name="x")
        y = gn.exp(x, name="y")
    with pytest.raises(OpenCLError, match="%y: f64.3. computes in float64.*cl_khr_fp64"):
        backend.compile(g, [y])


def test_build_errors_show_the_offending_source_lines() -> None:
    source = "__kernel void f(__global float *p) {\n    p[0] = undefined_name;\n}\n"
    with pytest.raises(OpenCLError, match=r"(?s)rejected the program of test.*undefined_name"
                                          r".*offending source lines:.*2> +p\[0\]"):
        shared_device().build(source, "test")


def test_source_is_dumped_and_printed(tmp_path: pathlib.Path,
                                      capsys: pytest.CaptureFixture) -> None:
    with gn.Graph("dumped") as g:
        x = gn.placeholder((4, 5), name="x")
        y = gn.tanh(x * 2.0)
    sess = gn.Session(g, backend="opencl", opt_level=2, dump_dir=str(tmp_path))
    sess.run(y, {x: np.ones((4, 5))})
    cl_files = list(tmp_path.glob("opencl_*.cl"))
    assert cl_files and "__kernel void" in cl_files[0].read_text()
    assert re.search(r"= (gn_)?tanh(_f32)?\(", cl_files[0].read_text())  # CPU: the inline form
    assert list(tmp_path.glob("opencl_*.kir"))
    assert cli(["dump", "mlp", "--batch", "2", "--emit", "opencl"]) == 0
    assert "__kernel void" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["gpu", "cpu"])  # local-memory tiles / register blocks
@pytest.mark.parametrize(("a", "b"), [((37, 19), (19, 23)), ((2, 3, 17, 33), (33, 5)),
                                      ((1, 64), (64, 1)), ((5, 0), (0, 4)), ((16, 8), (8, 16))])
def test_matmul_templates(a: tuple, b: tuple, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = shared_device()
    monkeypatch.setattr(dev, "info", dataclasses.replace(dev.info, kind=kind))
    with gn.Graph("k") as g:
        xs = [gn.placeholder(a, name="x0"), gn.placeholder(b, name="x1")]
        out = gn.relu(xs[0] @ xs[1] - 0.25)  # with a fused epilogue at O2
    sess = gn.Session(g, backend="opencl", opt_level=2)
    rng = np.random.default_rng(1)
    av, bv = rng.standard_normal(a).astype(np.float32), rng.standard_normal(b).astype(np.float32)
    got = sess.run(out, {xs[0]: av, xs[1]: bv})
    np.testing.assert_allclose(got, np.maximum(av @ bv - 0.25, 0), rtol=1e-4, atol=1e-5)
    source = next(iter(sess._cache.values())).exe.source
    if kind == "gpu":
        assert "__local float" in source and "barrier(CLK_LOCAL_MEM_FENCE)" in source
    else:
        assert "float16 acc5" in source and "__local" not in source  # 6 x 16 register blocks


@pytest.mark.parametrize("model", ["mlp", "digits-cnn", "cnn-bn"])
def test_zoo_models_with_fused_epilogues_match_the_reference(model: str) -> None:
    graph, y = gn.models.inference_graph(model, batch=3)
    x = np.random.default_rng(0).random((3, *graph.placeholders[0].shape[1:]), np.float32)
    sess = gn.Session(graph, backend="opencl", opt_level=3)
    np.testing.assert_allclose(sess.run(y, {"x": x}),
                               gn.Session(graph, "reference").run(y, {"x": x}),
                               rtol=1e-4, atol=1e-5)
    exe = next(iter(sess._cache.values())).exe
    assert not exe.fallback_ops
    assert any(len(k.source) > 1 and k.source[0] in ("matmul", "conv") for k in exe.kernels), \
        "no fused epilogue in the optimised model"


def _mlp_training() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))
    model.compile(gn.optim.Adam(1e-2), "cross_entropy", backend="opencl")
    rng = np.random.default_rng(0)
    return model, rng.random((64, 20), np.float32), rng.integers(0, 10, 64)


def test_training_step_moves_no_weights_between_host_and_device() -> None:
    model, x, y = _mlp_training()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # compiles and uploads the weights
    trainer = model.trainer if hasattr(model, "trainer") else None
    sess = trainer.session if trainer is not None else None
    assert sess is not None
    states = [v for v in sess._state.values()]
    assert states and all(isinstance(v, DeviceValue) for v in states)
    exes = [e.exe for e in sess._cache.values() if e.exe.writers]
    assert exes, "no training-step executable"
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    step = exes[0]
    assert not step.fallback_ops
    feeds = sum(p.dtype.itemsize * int(np.prod(p.shape)) for p in step.placeholders)
    fetched = sum(f.dtype.itemsize * int(np.prod(f.shape)) for f in step.fetches
                  if not gn.get_op(f.op).no_value)
    t = step.transfers  # the last step: feeds up, fetches down, nothing else
    assert (t.to_device, t.bytes_to_device) == (len(step.placeholders), feeds)
    assert t.bytes_to_host == fetched
    weights = sum(int(np.prod(v.shape)) * 4 for v in step.variables)
    assert weights > t.bytes_to_device + t.bytes_to_host


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_convolution_gradients_stay_on_gpus(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU devices the generic convolution-gradient kernels lose to numpy and the round trip
    (SKIP); on a GPU the round trip costs more, so a CNN's step runs wholly on the device."""
    from graphnn.backends.opencl.executable import SKIP

    dev = shared_device()
    monkeypatch.setattr(dev, "info", dataclasses.replace(dev.info, kind=kind))
    backend = OpenCLBackend()
    assert backend.skip == (SKIP if kind == "cpu" else frozenset())
    rng = np.random.default_rng(0)
    with gn.Graph("cnn") as g:  # 16 and 32 channels: the GPU's implicit GEMMs, fused epilogues
        x = gn.placeholder((2, 3, 8, 8), name="x")
        w1 = gn.variable((rng.standard_normal((16, 3, 3, 3)) / 5).astype(np.float32), name="w1")
        w2 = gn.variable((rng.standard_normal((32, 16, 3, 3)) / 12).astype(np.float32),
                         name="w2")
        h = gn.relu(gn.conv(x, w1, padding=1))
        loss = gn.sum(gn.max_pool(gn.relu(gn.conv(h, w2, padding=1)), 2) ** 2)
        grads = gn.gradients(loss, [w1, w2])
    xv = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    sess = gn.Session(g, backend=backend, opt_level=2)
    for got, want in zip(sess.run(grads, {x: xv}), gn.Session(g, "reference").run(grads, {x: xv})):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    exe = next(iter(sess._cache.values())).exe
    assert kind == "cpu" or exe.source.count("bs[q][col]") >= 4  # 2 conv, 2 grads, 1 transpose
    if kind == "cpu":  # conv_transpose runs on numpy too, fused with its epilogue at O2
        assert {"conv_weight_grad", "max_pool_grad"} <= exe.fallback_ops
    else:
        assert not exe.fallback_ops


def test_training_matches_the_reference_backend() -> None:
    losses = {}
    for backend in ("reference", "opencl"):
        model, x, y = _mlp_training()
        model.compile(gn.optim.Adam(1e-2), "cross_entropy", backend=backend)
        hist = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
        losses[backend] = hist.history["loss"] if hasattr(hist, "history") else hist["loss"]
    np.testing.assert_allclose(losses["opencl"], losses["reference"], rtol=1e-4)


def test_a_failed_run_leaves_variables_unchanged() -> None:
    with gn.Graph() as g:
        x = gn.placeholder((3,), name="x")
        w = gn.variable(np.ones(3, np.float32), name="w")
        step = gn.assign(w, w + x)
        bad = gn.take(w + 0.0, gn.cast(x, "int64"), axis=0)  # the kernel checks its indices
    sess = gn.Session(g, backend="opencl")
    sess.run(step, {x: np.full(3, 2.0)})
    np.testing.assert_array_equal(sess.run(w), [3, 3, 3])
    with pytest.raises(gn.GraphnnError):
        sess.run([step, bad], {x: np.full(3, 7.0)})  # index 7 is out of range for 3 elements
    np.testing.assert_array_equal(sess.run(w), [3, 3, 3])
    assert isinstance(sess._state[w], DeviceValue)
    np.testing.assert_array_equal(np.asarray(sess._state[w]), [3, 3, 3])


def test_collapsed_nests_and_single_work_item_kernels() -> None:
    g, xs, out, exe = compile_one(lambda x, y: gn.transpose(x, (1, 0, 2)) + y,
                                  (5, 7, 3), (7, 5, 3))
    # the three loops collapse into the work-item index (small kernels: one iteration each)
    assert "for (" not in exe.source
    rng = np.random.default_rng(2)
    a, b = rng.random((5, 7, 3), np.float32), rng.random((7, 5, 3), np.float32)
    np.testing.assert_allclose(gn.Session(g, backend="opencl").run(out, {xs[0]: a, xs[1]: b}),
                               a.transpose(1, 0, 2) + b, rtol=1e-6)
    g, xs, out, exe = compile_one(lambda x: gn.sum(x), (1000,), dtype=np.float64)
    launch = exe.launches[0]  # a full reduction: one work-item on a CPU, one work-group on a GPU
    assert launch.global_size == ((1,) if shared_device().info.kind == "cpu" else
                                  launch.local_size)
    v = np.random.default_rng(3).random(1000)
    np.testing.assert_allclose(gn.Session(g, backend="opencl").run(out, {xs[0]: v}), v.sum(),
                               rtol=1e-12)


@pytest.mark.parametrize("kind", ["gpu", "cpu"])  # one output per work-item / register blocks
@pytest.mark.parametrize(("xs", "ws", "kw"), [
    ((2, 3, 11, 13), (16, 3, 3, 3), {"padding": 1}),
    ((1, 4, 9, 10), (8, 4, 3, 2), {"stride": (2, 3), "padding": (1, 2), "dilation": (2, 1)}),
    ((2, 16, 7, 7), (16, 2, 3, 3), {"padding": 1, "groups": 8}),
    ((2, 3, 17), (8, 3, 5), {"padding": 2, "stride": 2}),
    ((1, 2, 5, 6, 7), (8, 2, 3, 3, 3), {"padding": 1}),
    # 16 or more output channels per group: the implicit GEMM on GPUs
    ((2, 5, 9, 11), (20, 5, 3, 3), {"stride": 2, "padding": (1, 0), "dilation": (1, 2)}),
    ((1, 6, 7, 8), (34, 3, 3, 2), {"padding": 1, "groups": 2}),
    ((3, 4, 33), (17, 4, 5), {"padding": 2, "dilation": 2}),
    ((1, 3, 4, 5, 6), (16, 3, 2, 3, 3), {"padding": (1, 0, 1)}),
    ((1, 64, 12, 12), (128, 64, 3, 3), {})])
def test_convolution_templates(xs: tuple, ws: tuple, kw: dict, kind: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    dev = shared_device()
    monkeypatch.setattr(dev, "info", dataclasses.replace(dev.info, kind=kind))
    rng = np.random.default_rng(4)
    xv, wv = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    bv = rng.standard_normal(ws[0]).astype(np.float32)
    with gn.Graph("c") as g:
        x = gn.placeholder(xs, name="x")
        y = gn.relu(gn.conv(x, gn.constant(wv), gn.constant(bv), **kw) + 0.5)
    sess = gn.Session(g, backend="opencl", opt_level=2)
    got = sess.run(y, {x: xv})
    np.testing.assert_allclose(got, gn.Session(g, "reference").run(y, {x: xv}),
                               rtol=1e-4, atol=1e-4)
    exe = next(iter(sess._cache.values())).exe
    assert not exe.fallback_ops and any(k.source[:1] == ("conv",) for k in exe.kernels)
    if kind == "gpu":  # the implicit GEMM (local-memory slices) from 16 channels per group
        assert ("bs[q][col]" in exe.source) == (ws[0] // kw.get("groups", 1) >= 16)


ROW_OPS = {"sum", "mean", "max", "min", "prod", "softmax", "log_softmax", "logsumexp", "var",
           "std", "layer_norm", "rms_norm", "argmax", "cross_entropy", "nll_loss"}


def _row_cases():  # type: ignore[no-untyped-def]
    from tests.ops import cases_nn  # noqa: F401 - registers the NN rows
    from tests.ops.cases import CASES

    return [pytest.param(c, id=c.id) for c in CASES if c.op in ROW_OPS]


@pytest.mark.parametrize("case", _row_cases())
def test_work_group_reductions_match_the_reference(case, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The GPU path (one work-group per row, a tree in local memory), run on this device."""
    import zlib

    dev = shared_device()
    monkeypatch.setattr(dev, "info", dataclasses.replace(dev.info, kind="gpu"))
    dtype = "float32" if "float32" in case.dtypes else case.dtypes[0]
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    arrays = [spec.make(rng, dtype) for spec in case.inputs]
    with gn.Graph(case.op) as g:
        nodes = [gn.placeholder(a.shape, a.dtype, name=f"in{i}") for i, a in enumerate(arrays)]
        out = case.build(*nodes)
    sess = gn.Session(g, backend="opencl", opt_level=2)
    got = sess.run(out, dict(zip(nodes, arrays)))
    want = gn.Session(g, backend="reference").run(out, dict(zip(nodes, arrays)))
    if got.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=case.rtol or 1e-4, atol=case.atol or 1e-5)


def test_reductions_use_a_work_group_tree_on_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = shared_device()
    monkeypatch.setattr(dev, "info", dataclasses.replace(dev.info, kind="gpu"))
    g, xs, out, exe = compile_one(lambda x: gn.softmax(x, axis=-1), (3, 1000))
    assert "__local float scratch_float" in exe.source and exe.launches[0].local_size == (256,)
    assert exe.launches[0].global_size == (3 * 256,)
    x = np.random.default_rng(5).standard_normal((3, 1000)).astype(np.float32)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(gn.Session(g, backend="opencl").run(out, {xs[0]: x}),
                               e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


# blocks of 16 * block rows and columns: (70, 130) makes 2 x 3 blocks of 64, 3 x 5 of 32
@pytest.mark.parametrize(("a", "b", "units", "block"), [
    ((70, 33), (33, 130), 6, 4), ((70, 33), (33, 130), 7, 2), ((70, 33), (33, 130), 16, 1),
    ((3, 37, 20), (20, 45), 3, 4), ((3, 37, 20), (20, 45), 12, 2),
    ((2, 3, 65, 17), (2, 3, 17, 64), 12, 4), ((2, 3, 65, 17), (2, 3, 17, 64), 10**6, 1)])
def test_gpu_matmul_register_blocks(a: tuple, b: tuple, units: int, block: int,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each work-item of the GPU template accumulates block x block outputs; the block shrinks
    until every compute unit gets a work-group. Edges, batches and the fused epilogue."""
    dev = shared_device()
    monkeypatch.setattr(dev, "info", dataclasses.replace(dev.info, kind="gpu",
                                                         compute_units=units))
    with gn.Graph("k") as g:
        xs = [gn.placeholder(a, name="x0"), gn.placeholder(b, name="x1")]
        out = gn.relu(xs[0] @ xs[1] - 0.25)
    sess = gn.Session(g, backend="opencl", opt_level=2)
    rng = np.random.default_rng(3)
    av, bv = rng.standard_normal(a).astype(np.float32), rng.standard_normal(b).astype(np.float32)
    np.testing.assert_allclose(sess.run(out, {xs[0]: av, xs[1]: bv}),
                               np.maximum(av @ bv - 0.25, 0), rtol=1e-4, atol=1e-5)
    source = next(iter(sess._cache.values())).exe.source
    last = f"acc{block - 1}_{block - 1} +="
    assert last in source and f"acc{block}_{block} +=" not in source


@pytest.mark.parametrize("width", [1, 3, 16])
@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_collapsed_kernels_run_the_device_vector_width_per_work_item(
        width: int, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each work-item of a collapsed-loop kernel runs ``vector_width`` consecutive iterations
    (the last one fewer); a width of 1 (NVIDIA's) keeps one iteration per work-item."""
    from graphnn.backends.opencl import render

    monkeypatch.setattr(render, "LANES_MIN", 1)  # small kernels too (they keep one otherwise)
    dev = shared_device()
    monkeypatch.setattr(dev, "info", dataclasses.replace(dev.info, kind=kind,
                                                         vector_width=width))
    with gn.Graph("k") as g:
        x = gn.placeholder((7, 143), name="x")
        outs = [gn.tanh(x * 2.0) + 1.0, gn.transpose(x, (1, 0)) * 3.0, gn.max(x, axis=1)]
    xv = np.random.default_rng(8).standard_normal((7, 143)).astype(np.float32)
    sess = gn.Session(g, backend="opencl", opt_level=2)
    for got, want in zip(sess.run(outs, {x: xv}), gn.Session(g, "reference").run(outs, {x: xv})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    exe = next(iter(sess._cache.values())).exe
    assert ("for (long g = g0; g < g1; ++g)" in exe.source) == (width > 1)
    assert exe.launches[0].global_size[0] >= -(-7 * 143 // width)


def test_matmul_tile_fits_the_device_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from graphnn.backends.opencl.render import tile_for

    assert tile_for(1024, 48 * 1024) == 16 and tile_for(128, 48 * 1024) == 8
    assert tile_for(1024, 1024) == 4 and tile_for(1, 1 << 20) == 1
    dev = shared_device()
    monkeypatch.setattr(dev, "info", dataclasses.replace(dev.info, kind="gpu",
                                                         max_work_group_size=64))
    g, xs, out, exe = compile_one(lambda x, w: x @ w, (9, 13), (13, 11))
    assert exe.launches[0].local_size == (8, 8, 1)
    a = np.random.default_rng(6).standard_normal((9, 13)).astype(np.float32)
    b = np.random.default_rng(7).standard_normal((13, 11)).astype(np.float32)
    np.testing.assert_allclose(gn.Session(g, backend="opencl").run(out, {xs[0]: a, xs[1]: b}),
                               a @ b, rtol=1e-4, atol=1e-5)
