"""graphnn against numpy and (when installed) PyTorch eager and torch.compile, JAX and
onnxruntime, workload by workload, in one run.

    python benchmarks/run.py                       # all workloads, all frameworks found
    python benchmarks/run.py --workload W1 W5 --framework graphnn-llvm numpy --json out.json

Prints, per workload and batch, each framework's median time, its ratio to graphnn-llvm, and
GFLOP/s or GB/s (graphnn-opencl runs on the device ``GRAPHNN_OPENCL_DEVICE`` or
``graphnn devices`` names: PoCL on a machine without a GPU); ``--json`` writes a list of records
``{"workload", "batch", "framework", "median_s", "compile_s", "max_abs_err"}`` where
``max_abs_err`` compares with the numpy reference of the same weights and inputs.
Timing: median of ``--repeat`` runs after one warm-up, taken in ``--rounds`` rounds that visit
the frameworks in turn (so the ratios compare runs made side by side); ``compile_s`` is the
first run's time (compilation included) minus the median. PyTorch runs with
``torch.set_num_threads`` equal to ``GRAPHNN_NUM_THREADS`` (default: the cores available),
onnxruntime (the ``bench`` extra) with as many intra-op threads, on the workloads written as
ONNX graphs in ``onnx_peer.py``. torch-cuda (where PyTorch sees a CUDA GPU) is the peer for
graphnn-opencl on that GPU: like ``Session.run``, each run copies its input to the device and
its output back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import graphnn as gn

try:  # run as a script (python benchmarks/run.py) or as a module
    from onnx_peer import OnnxGraph, OnnxOps, runner
except ImportError:  # pragma: no cover
    from benchmarks.onnx_peer import OnnxGraph, OnnxOps, runner

THREADS = int(os.environ.get("GRAPHNN_NUM_THREADS", len(os.sched_getaffinity(0))))
rng = np.random.default_rng(0)


@dataclass
class Case:
    workload: str
    batch: int
    flops: float = 0.0  # per run; 0 for bandwidth-bound workloads
    bytes: float = 0.0
    runners: dict[str, Callable[[], Callable[[], np.ndarray]]] = field(default_factory=dict)


def _w(*shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(shape[-1] if len(shape) == 2 else
                                                 np.prod(shape[1:]))).astype(np.float32)


class GraphnnRun:
    """graphnn's side of a case: ``session()`` builds a Session and returns it with the fetches
    and feeds of one run; calling the object returns the timed run (the runners' protocol),
    whose result is the fetched value at ``output`` (all fetches when None)."""

    def __init__(self, session: Callable[[], tuple[gn.Session, Any, dict[str, np.ndarray]]],
                 output: int | None = None) -> None:
        self.session, self.output = session, output

    def __call__(self) -> Callable[[], np.ndarray]:
        sess, fetches, feeds = self.session()
        if self.output is None:
            return lambda: sess.run(fetches, feeds)
        return lambda: sess.run(fetches, feeds)[self.output]

    def profile(self, repeat: int) -> gn.Profile:
        """Each kernel's median time (``Session.profile``)."""
        sess, fetches, feeds = self.session()
        return sess.profile(fetches, feeds, repeat)


def _graphnn(build: Callable[[], tuple[gn.Graph, dict[str, np.ndarray], gn.Node]],
             backend: str = "llvm", opt_level: int = 2) -> GraphnnRun:
    def session() -> tuple[gn.Session, Any, dict[str, np.ndarray]]:
        graph, feeds, out = build()
        return gn.Session(graph, backend=backend, opt_level=opt_level), out, feeds

    return GraphnnRun(session)


def _torch_put(device: str) -> Callable[[np.ndarray], Any]:
    """numpy -> a torch tensor on ``device``. Weights are put there once; a run puts its input
    there and brings its output back, as ``Session.run`` does (torch-cuda's times include both
    copies, like graphnn-opencl's)."""
    import torch

    return lambda a: torch.from_numpy(a).to(device)


TorchForward = Callable[[Callable[[np.ndarray], Any]], Callable[[Any], Any]]


def _torch(forward: TorchForward, x: np.ndarray, device: str = "cpu",
           compiled: bool = False) -> Callable[[], Callable[[], np.ndarray]]:
    """A PyTorch runner: ``forward(put)`` puts its weights on the device and returns the model
    as a function of the input tensor; each run puts ``x`` there, runs it under ``no_grad`` and
    brings the result back. ``compiled``: through ``torch.compile`` (inductor, which generates
    C++ and builds it with the system compiler here; its compile time is the first run's)."""
    def setup() -> Callable[[], np.ndarray]:
        import torch

        put = _torch_put(device)
        fn = forward(put)
        if compiled:
            fn = torch.compile(fn)

        def run() -> np.ndarray:
            with torch.no_grad():
                return fn(put(x)).cpu().numpy()

        return run

    return setup


def _torch_runners(forward: TorchForward, x: np.ndarray) -> dict[str, Callable[[], Any]]:
    """PyTorch eager on the CPU and on CUDA, and torch.compile on the CPU."""
    return {"torch": _torch(forward, x), "torch-cuda": _torch(forward, x, "cuda"),
            "torch-compile": _torch(forward, x, compiled=True)}


def _jax(forward: Callable[[Any, Any], Any], x: np.ndarray,
         weights: Any = None) -> Callable[[], Callable[[], np.ndarray]]:
    """A JAX runner: ``forward(x, weights)`` through ``jax.jit`` on the CPU (XLA's own thread
    pool over every core), the weights (a pytree of arrays) put on the device once and passed
    as arguments (not folded into the program as constants); each run transfers ``x`` and
    waits for the result as numpy."""
    def setup() -> Callable[[], np.ndarray]:
        import jax

        fn, w = jax.jit(forward), jax.device_put(weights)
        return lambda: np.asarray(fn(x, w))

    return setup


# -- W1: MLP 784-512-512-10 ---------------------------------------------------------------------


def w1(batch: int) -> Case:
    ws = [_w(784, 512), _w(512, 512), _w(512, 10)]
    bs = [np.zeros(n, np.float32) for n in (512, 512, 10)]
    x = rng.standard_normal((batch, 784)).astype(np.float32)

    def numpy_run() -> np.ndarray:
        h = np.maximum(x @ ws[0] + bs[0], 0)
        h = np.maximum(h @ ws[1] + bs[1], 0)
        z = h @ ws[2] + bs[2]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def build() -> tuple[gn.Graph, dict[str, np.ndarray], gn.Node]:
        with gn.Graph("w1") as g:
            xp = gn.placeholder((batch, 784), name="x")
            h = gn.relu(gn.dense(xp, gn.constant(ws[0]), gn.constant(bs[0])))
            h = gn.relu(gn.dense(h, gn.constant(ws[1]), gn.constant(bs[1])))
            out = gn.softmax(gn.dense(h, gn.constant(ws[2]), gn.constant(bs[2])))
        return g, {"x": x}, out

    def torch_forward(put: Callable[[np.ndarray], Any]) -> Callable[[Any], Any]:
        import torch

        tw, tb = [put(w) for w in ws], [put(b) for b in bs]

        def forward(tx: Any) -> Any:
            h = torch.relu(tx @ tw[0] + tb[0])
            h = torch.relu(h @ tw[1] + tb[1])
            return torch.softmax(h @ tw[2] + tb[2], dim=1)

        return forward

    def jax_forward(jx: Any, w: Any) -> Any:
        import jax

        (w0, w1, w2), (b0, b1, b2) = w
        h = jax.nn.relu(jx @ w0 + b0)
        h = jax.nn.relu(h @ w1 + b1)
        return jax.nn.softmax(h @ w2 + b2, axis=1)

    def onnx(g: OnnxGraph) -> tuple[dict[str, np.ndarray], str]:
        h = "x"
        for k in range(3):
            h = g.op("Gemm", h, g.const(ws[k]), g.const(bs[k]))
            h = g.op("Relu", h) if k < 2 else g.op("Softmax", h, axis=1)
        return {"x": x}, h

    flops = 2 * batch * (784 * 512 + 512 * 512 + 512 * 10)
    return Case("W1", batch, flops=flops, runners={
        "numpy": lambda: numpy_run, "graphnn-llvm": _graphnn(build),
        "graphnn-opencl": _graphnn(build, "opencl"), **_torch_runners(torch_forward, x),
        "jax": _jax(jax_forward, x, (ws, bs)), "onnxruntime": runner(onnx, THREADS)})


# -- W2: the small CNN on 1x28x28 ---------------------------------------------------------------


def _conv_np(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    win = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", win, w, optimize=True) + b[None, :, None, None]


def _pool_np(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def w2_params() -> dict[str, np.ndarray]:
    return {"c1": _w(32, 1, 3, 3), "b1": np.zeros(32, np.float32),
            "c2": _w(64, 32, 3, 3), "b2": np.zeros(64, np.float32),
            "c3": _w(128, 64, 3, 3), "b3": np.zeros(128, np.float32),
            "fc": _w(128, 10), "fb": np.zeros(10, np.float32)}


def w2(batch: int) -> Case:
    p = w2_params()
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)

    def numpy_run() -> np.ndarray:
        h = np.maximum(_conv_np(x, p["c1"], p["b1"]), 0)
        h = _pool_np(np.maximum(_conv_np(h, p["c2"], p["b2"]), 0))
        h = _pool_np(np.maximum(_conv_np(h, p["c3"], p["b3"]), 0))
        return h.mean(axis=(2, 3)) @ p["fc"] + p["fb"]

    def build() -> tuple[gn.Graph, dict[str, np.ndarray], gn.Node]:
        with gn.Graph("w2") as g:
            xp = gn.placeholder((batch, 1, 28, 28), name="x")
            c = {k: gn.constant(v) for k, v in p.items()}
            h = gn.relu(gn.conv2d(xp, c["c1"], c["b1"]))
            h = gn.max_pool2d(gn.relu(gn.conv2d(h, c["c2"], c["b2"])), 2)
            h = gn.max_pool2d(gn.relu(gn.conv2d(h, c["c3"], c["b3"])), 2)
            out = gn.dense(gn.mean(h, axis=(2, 3)), c["fc"], c["fb"])
        return g, {"x": x}, out

    def torch_forward(put: Callable[[np.ndarray], Any]) -> Callable[[Any], Any]:
        import torch.nn.functional as F

        t = {k: put(v) for k, v in p.items()}

        def forward(tx: Any) -> Any:
            h = F.relu(F.conv2d(tx, t["c1"], t["b1"]))
            h = F.max_pool2d(F.relu(F.conv2d(h, t["c2"], t["b2"])), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, t["c3"], t["b3"])), 2)
            return h.mean(dim=(2, 3)) @ t["fc"] + t["fb"]

        return forward

    def jax_forward(jx: Any, w: dict[str, Any]) -> Any:
        h = _JaxOps.relu(_JaxOps.conv(jx, w["c1"], 1, 0) + w["b1"][:, None, None])
        for k in ("2", "3"):
            h = _JaxOps.relu(_JaxOps.conv(h, w["c" + k], 1, 0) + w["b" + k][:, None, None])
            h = _JaxOps.pool(h, 2, 2, 0)
        return _JaxOps.head(h, w["fc"], w["fb"])

    def onnx(g: OnnxGraph) -> tuple[dict[str, np.ndarray], str]:
        ops = OnnxOps(g)
        c = ops.weights(p)
        h = ops.relu(g.op("Conv", "x", c["c1"], c["b1"]))
        for k in ("2", "3"):
            h = ops.relu(g.op("Conv", h, c["c" + k], c["b" + k]))
            h = g.op("MaxPool", h, kernel_shape=[2, 2], strides=[2, 2])
        return {"x": x}, ops.head(h, c["fc"], c["fb"])

    flops = 2 * batch * (26 * 26 * 32 * 9 + 24 * 24 * 64 * 32 * 9 + 10 * 10 * 128 * 64 * 9)
    return Case("W2", batch, flops=flops, runners={
        "numpy": lambda: numpy_run, "graphnn-llvm": _graphnn(build),
        "graphnn-opencl": _graphnn(build, "opencl"), **_torch_runners(torch_forward, x),
        "jax": _jax(jax_forward, x, p), "onnxruntime": runner(onnx, THREADS)})


class _JaxOps:
    """The forward passes' ops in JAX (NCHW and OIHW, as graphnn and PyTorch)."""

    @staticmethod
    def conv(h: Any, w: Any, stride: int, pad: int) -> Any:
        import jax

        return jax.lax.conv_general_dilated(h, w, (stride, stride), [(pad, pad)] * 2,
                                            dimension_numbers=("NCHW", "OIHW", "NCHW"))

    @staticmethod
    def pool(h: Any, size: int, stride: int, pad: int) -> Any:
        import jax

        return jax.lax.reduce_window(h, -np.inf, jax.lax.max, (1, 1, size, size),
                                     (1, 1, stride, stride), [(0, 0), (0, 0), (pad, pad),
                                                              (pad, pad)])

    @staticmethod
    def bn(h: Any, m: Any, v: Any, g: Any, b: Any) -> Any:
        scale = g / (v + 1e-5) ** 0.5
        return h * scale[:, None, None] + (b - m * scale)[:, None, None]

    @staticmethod
    def relu(h: Any) -> Any:
        import jax

        return jax.nn.relu(h)

    add = staticmethod(lambda a, b: a + b)
    maxpool = staticmethod(lambda h: _JaxOps.pool(h, 3, 2, 1))
    head = staticmethod(lambda h, w, b: h.mean(axis=(2, 3)) @ w + b)


# -- W5: an elementwise chain over 16M float32 ---------------------------------------------------


def w5(batch: int = 1) -> Case:
    n = 1 << 24
    x = rng.standard_normal(n).astype(np.float32)
    a, b = np.float32(1.5), np.float32(0.5)

    def numpy_run() -> np.ndarray:
        z = x * a + b
        g = 0.5 * z * (1 + np.tanh(np.float32(0.7978845608) * (z + np.float32(0.044715) * z**3)))
        return g * (1 / (1 + np.exp(-x)))

    def build() -> tuple[gn.Graph, dict[str, np.ndarray], gn.Node]:
        with gn.Graph("w5") as g:
            xp = gn.placeholder((n,), name="x")
            out = gn.gelu(xp * 1.5 + 0.5, approximate="tanh") * gn.sigmoid(xp)
        return g, {"x": x}, out

    def torch_forward(put: Callable[[np.ndarray], Any]) -> Callable[[Any], Any]:
        import torch

        return lambda tx: (torch.nn.functional.gelu(tx * 1.5 + 0.5, approximate="tanh")
                           * torch.sigmoid(tx))

    def jax_forward(jx: Any, _: Any) -> Any:
        import jax

        return jax.nn.gelu(jx * a + b, approximate=True) * jax.nn.sigmoid(jx)

    def onnx(g: OnnxGraph) -> tuple[dict[str, np.ndarray], str]:
        z = g.op("Add", g.op("Mul", "x", g.const(a)), g.const(b))
        return {"x": x}, g.op("Mul", g.op("Gelu", z, approximate="tanh"), g.op("Sigmoid", "x"))

    return Case("W5", batch, bytes=2 * 4 * n, runners={
        "numpy": lambda: numpy_run, "graphnn-llvm": _graphnn(build),
        "graphnn-opencl": _graphnn(build, "opencl"), **_torch_runners(torch_forward, x),
        "jax": _jax(jax_forward, x), "onnxruntime": runner(onnx, THREADS)})


# -- W6: a full training step of the W2 CNN -------------------------------------------------------


def w6(batch: int = 64) -> Case:
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def graphnn_step(backend: str = "llvm") -> GraphnnRun:
        def session() -> tuple[gn.Session, Any, dict[str, np.ndarray]]:
            nn = gn.nn
            nn.init.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3),
                                  nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(64, 128, 3), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.GlobalAvgPool(), nn.Linear(128, 10))
            model.compile(gn.optim.Adam(1e-3), backend=backend, opt_level=2)
            t = model.trainer
            t.build(x, y)
            return t.session, [t.apply, t.train_loss], {t.x: x, t.y: y}

        return GraphnnRun(session, output=1)

    def torch_step(device: str = "cpu") -> Callable[[], np.ndarray]:
        import torch
        from torch import nn

        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Conv2d(64, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)
                              ).to(device)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        put = _torch_put(device)

        def step() -> np.ndarray:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(put(x)), put(y))
            loss.backward()
            opt.step()
            return loss.detach().cpu().numpy()

        return step

    return Case("W6", batch, runners={"graphnn-llvm": graphnn_step(), "torch": torch_step,
                                      "torch-cuda": lambda: torch_step("cuda"),
                                      "graphnn-opencl": graphnn_step("opencl")})


# -- W3: ResNet-18 on 1x3x224x224 ----------------------------------------------------------------

RESNET18 = [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]


def w3_params() -> dict[str, np.ndarray]:
    """ResNet-18 (He et al. 2016, torchvision's layout): conv weights and inference batch-norm
    statistics, random but scaled so activations stay O(1)."""
    p: dict[str, np.ndarray] = {}

    def conv(name: str, co: int, ci: int, k: int) -> None:
        p[name] = _w(co, ci, k, k)
        p[name + ".mean"] = (0.1 * rng.standard_normal(co)).astype(np.float32)
        p[name + ".var"] = (1 + 0.1 * rng.random(co)).astype(np.float32)
        p[name + ".gamma"] = (1 + 0.1 * rng.standard_normal(co)).astype(np.float32)
        p[name + ".beta"] = (0.1 * rng.standard_normal(co)).astype(np.float32)

    conv("stem", 64, 3, 7)
    ci = 64
    for i, (co, stride) in enumerate(RESNET18):
        conv(f"b{i}.c1", co, ci, 3)
        conv(f"b{i}.c2", co, co, 3)
        if stride != 1 or ci != co:
            conv(f"b{i}.down", co, ci, 1)
        ci = co
    p["fc"], p["fb"] = _w(512, 1000), np.zeros(1000, np.float32)
    return p


def _resnet18(ops: Any, x: Any, p: dict[str, Any]) -> Any:
    """The forward pass written once over an ops table (graphnn's or torch's functions)."""
    def cbn(h: Any, name: str, stride: int, pad: int) -> Any:
        h = ops.conv(h, p[name], stride, pad)
        return ops.bn(h, p[name + ".mean"], p[name + ".var"], p[name + ".gamma"],
                      p[name + ".beta"])

    h = ops.relu(cbn(x, "stem", 2, 3))
    h = ops.maxpool(h)
    for i, (_, stride) in enumerate(RESNET18):
        skip = cbn(h, f"b{i}.down", stride, 0) if f"b{i}.down" in p else h
        y = ops.relu(cbn(h, f"b{i}.c1", stride, 1))
        h = ops.relu(ops.add(cbn(y, f"b{i}.c2", 1, 1), skip))
    return ops.head(h, p["fc"], p["fb"])


class _GraphnnOps:
    conv = staticmethod(lambda h, w, s, pad: gn.conv2d(h, w, stride=s, padding=pad))
    bn = staticmethod(lambda h, m, v, g, b: gn.batch_norm(h, m, v, g, b))
    relu = staticmethod(gn.relu)
    add = staticmethod(gn.add)
    maxpool = staticmethod(lambda h: gn.max_pool2d(h, 3, stride=2, padding=1))
    head = staticmethod(lambda h, w, b: gn.dense(gn.mean(h, axis=(2, 3)), w, b))


def w3(batch: int = 1) -> Case:
    p = w3_params()
    x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)

    def build() -> tuple[gn.Graph, dict[str, np.ndarray], gn.Node]:
        with gn.Graph("w3") as g:
            xp = gn.placeholder(x.shape, name="x")
            out = _resnet18(_GraphnnOps, xp, {k: gn.constant(v) for k, v in p.items()})
        return g, {"x": x}, out

    def torch_forward(put: Callable[[np.ndarray], Any]) -> Callable[[Any], Any]:
        import torch
        import torch.nn.functional as F

        class Ops:
            conv = staticmethod(lambda h, w, s, pad: F.conv2d(h, w, stride=s, padding=pad))
            bn = staticmethod(lambda h, m, v, g, b: F.batch_norm(h, m, v, g, b, False))
            relu = staticmethod(F.relu)
            add = staticmethod(torch.add)
            maxpool = staticmethod(lambda h: F.max_pool2d(h, 3, 2, 1))
            head = staticmethod(lambda h, w, b: h.mean(dim=(2, 3)) @ w + b)

        t = {k: put(v) for k, v in p.items()}
        return lambda tx: _resnet18(Ops, tx, t)

    def onnx(g: OnnxGraph) -> tuple[dict[str, np.ndarray], str]:
        ops = OnnxOps(g)
        return {"x": x}, _resnet18(ops, "x", ops.weights(p))

    return Case("W3", batch, flops=2 * 1.814e9 * batch, runners={
        "numpy": _graphnn(build, "reference", opt_level=0),  # graphnn's numpy reference
        "graphnn-llvm": _graphnn(build, opt_level=3),
        "graphnn-opencl": _graphnn(build, "opencl", opt_level=3),
        **_torch_runners(torch_forward, x), "jax": _jax(lambda jx, w: _resnet18(
            _JaxOps, jx, w), x, p), "onnxruntime": runner(onnx, THREADS)})


# -- W4: two post-LN transformer encoder layers -------------------------------------------------

SEQ, D_MODEL, HEADS, FFN = 128, 256, 4, 1024


def w4_params() -> dict[str, np.ndarray]:
    p: dict[str, np.ndarray] = {}
    for layer in range(2):
        for name in ("q", "k", "v", "o"):
            p[f"{layer}.{name}"], p[f"{layer}.{name}b"] = _w(D_MODEL, D_MODEL), \
                np.zeros(D_MODEL, np.float32)
        p[f"{layer}.f1"], p[f"{layer}.f1b"] = _w(D_MODEL, FFN), np.zeros(FFN, np.float32)
        p[f"{layer}.f2"], p[f"{layer}.f2b"] = _w(FFN, D_MODEL), np.zeros(D_MODEL, np.float32)
        for ln in ("ln1", "ln2"):
            p[f"{layer}.{ln}"] = np.ones(D_MODEL, np.float32)
            p[f"{layer}.{ln}b"] = np.zeros(D_MODEL, np.float32)
    return p


def _encoder(ops: Any, x: Any, p: dict[str, Any], batch: int) -> Any:
    """PyTorch's TransformerEncoderLayer (norm_first=False, activation="gelu"), twice."""
    dh = D_MODEL // HEADS

    def heads(t: Any) -> Any:
        return ops.transpose(ops.reshape(t, (batch, SEQ, HEADS, dh)), (0, 2, 1, 3))

    for i in range(2):
        q, k, v = (heads(ops.linear(x, p[f"{i}.{n}"], p[f"{i}.{n}b"])) for n in "qkv")
        att = ops.reshape(ops.transpose(ops.attention(q, k, v), (0, 2, 1, 3)),
                          (batch, SEQ, D_MODEL))
        x = ops.norm(ops.add(x, ops.linear(att, p[f"{i}.o"], p[f"{i}.ob"])), p[f"{i}.ln1"],
                     p[f"{i}.ln1b"])
        f = ops.linear(ops.gelu(ops.linear(x, p[f"{i}.f1"], p[f"{i}.f1b"])), p[f"{i}.f2"],
                       p[f"{i}.f2b"])
        x = ops.norm(ops.add(x, f), p[f"{i}.ln2"], p[f"{i}.ln2b"])
    return x


class _GraphnnEncoderOps:
    linear = staticmethod(lambda x, w, b: gn.add(gn.matmul(x, w), b))
    reshape = staticmethod(gn.reshape)
    transpose = staticmethod(gn.transpose)
    attention = staticmethod(gn.scaled_dot_product_attention)
    add = staticmethod(gn.add)
    gelu = staticmethod(gn.gelu)
    norm = staticmethod(lambda x, g, b: gn.layer_norm(x, D_MODEL, g, b))


def w4(batch: int) -> Case:
    p = w4_params()
    x = rng.standard_normal((batch, SEQ, D_MODEL)).astype(np.float32)

    def build() -> tuple[gn.Graph, dict[str, np.ndarray], gn.Node]:
        with gn.Graph("w4") as g:
            xp = gn.placeholder(x.shape, name="x")
            out = _encoder(_GraphnnEncoderOps, xp, {k: gn.constant(v) for k, v in p.items()},
                           batch)
        return g, {"x": x}, out

    def torch_forward(put: Callable[[np.ndarray], Any]) -> Callable[[Any], Any]:
        import torch
        import torch.nn.functional as F

        class Ops:
            linear = staticmethod(lambda x, w, b: x @ w + b)
            reshape = staticmethod(torch.reshape)
            transpose = staticmethod(lambda t, perm: t.permute(*perm))
            attention = staticmethod(F.scaled_dot_product_attention)
            add = staticmethod(torch.add)
            gelu = staticmethod(F.gelu)
            norm = staticmethod(lambda x, g, b: F.layer_norm(x, (D_MODEL,), g, b))

        t = {k: put(v) for k, v in p.items()}
        return lambda tx: _encoder(Ops, tx, t, batch)

    per_layer = 2 * batch * SEQ * (4 * D_MODEL * D_MODEL + 2 * D_MODEL * FFN) + \
        4 * batch * SEQ * SEQ * D_MODEL
    def onnx(g: OnnxGraph) -> tuple[dict[str, np.ndarray], str]:
        ops = OnnxOps(g, D_MODEL // HEADS)
        return {"x": x}, _encoder(ops, "x", ops.weights(p), batch)

    return Case("W4", batch, flops=2 * per_layer, runners={
        "numpy": _graphnn(build, "reference", opt_level=0),  # graphnn's numpy reference
        "graphnn-llvm": _graphnn(build, opt_level=3),
        "graphnn-opencl": _graphnn(build, "opencl", opt_level=3),
        **_torch_runners(torch_forward, x), "jax": _jax(lambda jx, w: _encoder(
            _JaxEncoderOps, jx, w, batch), x, p), "onnxruntime": runner(onnx, THREADS)})


class _JaxEncoderOps:
    """The encoder's ops in JAX: attention and layer norm written out (PyTorch's eps 1e-5)."""

    linear = staticmethod(lambda x, w, b: x @ w + b)
    reshape = staticmethod(lambda t, shape: t.reshape(shape))
    transpose = staticmethod(lambda t, perm: t.transpose(perm))
    add = staticmethod(lambda a, b: a + b)

    @staticmethod
    def attention(q: Any, k: Any, v: Any) -> Any:
        import jax

        scores = q @ k.swapaxes(-1, -2) / np.float32(np.sqrt(q.shape[-1]))
        return jax.nn.softmax(scores, axis=-1) @ v

    @staticmethod
    def gelu(x: Any) -> Any:
        import jax

        return jax.nn.gelu(x, approximate=False)

    @staticmethod
    def norm(x: Any, g: Any, b: Any) -> Any:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / (var + 1e-5) ** 0.5 * g + b


# -- matmul 1024^3 ----------------------------------------------------------------------------


def mm(batch: int = 1) -> Case:
    n = 1024
    a, b = _w(n, n), _w(n, n)

    def build() -> tuple[gn.Graph, dict[str, np.ndarray], gn.Node]:
        with gn.Graph("mm") as g:
            pa, pb = gn.placeholder((n, n), name="a"), gn.placeholder((n, n), name="b")
            out = pa @ pb
        return g, {"a": a, "b": b}, out

    def torch_forward(put: Callable[[np.ndarray], Any]) -> Callable[[Any], Any]:
        tb = put(b)
        return lambda ta: ta @ tb

    return Case("MM", 1, flops=2 * n**3, runners={
        "numpy": lambda: lambda: a @ b, "graphnn-llvm": _graphnn(build),
        "graphnn-opencl": _graphnn(build, "opencl"), **_torch_runners(torch_forward, a),
        "jax": _jax(lambda ja, jb: ja @ jb, a, b),
        "onnxruntime": runner(lambda g: ({"a": a, "b": b}, g.op("MatMul", "a", "b")), THREADS)})


WORKLOADS: dict[str, Callable[[], list[Case]]] = {
    "W1": lambda: [w1(1), w1(256)], "W2": lambda: [w2(1), w2(64)], "W3": lambda: [w3()],
    "W4": lambda: [w4(1), w4(8)], "W5": lambda: [w5()],
    "W6": lambda: [w6()], "MM": lambda: [mm()],
}


def _available(framework: str) -> bool:
    if framework == "graphnn-opencl":
        try:
            from graphnn.backends.opencl import select_device

            device = select_device(None)
            print(f"graphnn-opencl runs on {device.name.strip()} ({device.platform.name.strip()})")
            return True
        except gn.GraphnnError as e:
            print(f"graphnn-opencl skipped: {e}")
            return False
    if framework == "onnxruntime":
        try:
            import onnx  # noqa: F401
            import onnxruntime
        except ImportError:
            print('onnxruntime skipped: pip install -e ".[bench]" installs onnx and onnxruntime')
            return False
        print(f"onnxruntime {onnxruntime.__version__} (CPU provider)")
        return True
    if framework == "jax":
        try:
            import jax
        except ImportError:
            print("jax skipped: pip install jax jaxlib (the CPU build)")
            return False
        print(f"jax {jax.__version__} on {jax.devices()[0]}")
        return True
    if framework in ("torch", "torch-cuda", "torch-compile"):
        try:
            import torch
        except ImportError:
            return False
        torch.set_num_threads(THREADS)
        if framework == "torch-cuda" and not torch.cuda.is_available():
            print("torch-cuda skipped: no CUDA device")
            return False
        if framework == "torch-cuda":
            print(f"torch-cuda runs on {torch.cuda.get_device_name()}")
        return True
    return True


def measure(case: Case, frameworks: list[str], repeat: int, rounds: int
            ) -> list[dict[str, Any]]:
    """Each framework's median over ``repeat`` runs of the case, taken in ``rounds`` rounds that
    visit the frameworks in turn (the order reversed every other round), so that a slow spell of
    this shared machine falls on every framework alike instead of on whichever ran then (the
    medians of one framework moved by up to 2x within minutes)."""
    runs, results, compile_s = {}, {}, {}
    for f in frameworks:
        # let the previous framework's worker threads go idle first (torch's OpenMP threads
        # spin for a while after each parallel region, which took CPU from the next peer's)
        time.sleep(0.5)
        start = time.perf_counter()
        runs[f] = case.runners[f]()
        first = time.perf_counter()
        results[f] = runs[f]()
        compile_s[f] = (time.perf_counter() - first, first - start)
    times: dict[str, list[float]] = {f: [] for f in frameworks}
    per_round = -(-repeat // rounds)
    for r in range(rounds):
        for f in frameworks if r % 2 == 0 else frameworks[::-1]:
            # and the setup's or the previous peer's: numpy's OpenBLAS threads spin for about
            # 0.1 s after a BLAS call (measured: a numpy matmul just before halved a 2-thread
            # graphnn convolution's speed for the next 0.1 s, its worker sharing a core with a
            # spinning OpenBLAS thread)
            time.sleep(0.3)
            for _ in range(min(per_round, repeat - len(times[f]))):
                t = time.perf_counter()
                runs[f]()
                times[f].append(time.perf_counter() - t)
    ref = case.runners.get("numpy")
    want = ref()() if ref is not None else None
    rows = []
    for f in frameworks:
        median = statistics.median(times[f])
        err = None
        if want is not None and f != "numpy":
            err = float(np.max(np.abs(np.asarray(results[f]) - want)))
        first_s, setup_s = compile_s[f]
        rows.append({"workload": case.workload, "batch": case.batch, "framework": f,
                     "median_s": median, "compile_s": max(first_s - median, 0.0) + setup_s,
                     "max_abs_err": err})
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--framework", nargs="*",
                        default=["graphnn-llvm", "graphnn-opencl", "numpy", "torch",
                                 "torch-cuda", "torch-compile", "jax", "onnxruntime"])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3,
                        help="the repeats are taken in this many rounds over the frameworks")
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="also print the N slowest kernels of each graphnn framework's run "
                             "(Session.profile)")
    args = parser.parse_args(argv)
    records = []
    frameworks = [f for f in args.framework if _available(f)]
    print(f"threads: {THREADS}; frameworks: {', '.join(frameworks)}")
    print(f"{'workload':<9}{'batch':>6}  {'framework':<14}{'median ms':>11}{'ours/peer':>12}"
          f"{'rate':>16}{'max err':>10}")
    for name in args.workload:
        for case in WORKLOADS[name]():
            rows = measure(case, [f for f in frameworks if f in case.runners], args.repeat,
                           max(1, min(args.rounds, args.repeat)))
            ours = next((r["median_s"] for r in rows if r["framework"] == "graphnn-llvm"), None)
            for r in rows:
                rate = (f"{case.flops / r['median_s'] / 1e9:.1f} GFLOP/s" if case.flops else
                        f"{case.bytes / r['median_s'] / 1e9:.1f} GB/s" if case.bytes else "")
                ratio = f"{ours / r['median_s']:.2f}x" if ours else "-"
                err = "-" if r["max_abs_err"] is None else f"{r['max_abs_err']:.1e}"
                print(f"{r['workload']:<9}{r['batch']:>6}  {r['framework']:<14}"
                      f"{r['median_s'] * 1e3:>11.3f}{ratio:>12}{rate:>16}{err:>10}")
            records.extend(rows)
            for f in frameworks if args.profile else []:
                runner = case.runners.get(f)
                if isinstance(runner, GraphnnRun) and f != "numpy":
                    print(f"{case.workload} batch {case.batch} on {f}, slowest kernels:")
                    print(runner.profile(args.repeat).table(top=args.profile))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    main()
