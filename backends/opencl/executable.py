"""The OpenCL backend's executable: one program per (graph, fetches, shapes), buffers on the device.

Every node the kernel lowering handles becomes a kernel of one OpenCL program; the others run
their numpy reference on the host between kernels (``fallback_ops`` lists them; their inputs and
outputs cross the bus). Buffers stay on the device for the whole run: only feeds go up and
fetches come down. Variables live on the device between runs as ``DeviceValue``s in the session's
state; an update writes a fresh buffer, so a failed run leaves every variable as it was.
``transfers`` counts what crossed the bus in the last run (tests assert that a training step
moves no weights).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from graphnn.backends.base import ReturnedArrays, RunResult
from graphnn.backends.kernel.ir import Kernel, format_kernel
from graphnn.backends.kernel.lower import lower
from graphnn.backends.opencl.device import OpenCLError, _cl, info, select_device
from graphnn.backends.opencl.render import Launch, render_program, tile_for
from graphnn.backends.reference import _evaluate, flagged_error, reference_error

from graphnn.errors import ExecutionError, GraphError
from graphnn.ir import Graph, Node
from graphnn.ops.registry import describe, get_op
from graphnn.profiler import KernelTime, median_time

SOURCES = ("placeholder", "variable", "constant")
log = logging.getLogger("graphnn.opencl")
# Ops whose generic kernel is slower than the host round trip on PoCL (W6 per step: 0.38 s with
# these on numpy; 5.4 s with conv_weight_grad's one-reduction-per-weight kernel, 2.0 s with the
# per-element gathers of conv_transpose and max_pool_grad); they need an im2col + GEMM form.
# Attention's row kernel (no GEMM): 20 ms for 8x4x128x64 against numpy's 4.7 ms (at O2, as
# GEMMs and a softmax on PoCL, 4.7 ms too).
SKIP = frozenset({"conv_weight_grad", "conv_transpose", "max_pool_grad",
                  "scaled_dot_product_attention"})


@dataclass
class Transfers:
    """Host <-> device copies of one run (count and bytes each way)."""

    to_device: int = 0
    to_host: int = 0
    bytes_to_device: int = 0
    bytes_to_host: int = 0


class DeviceValue:
    """A variable's value held in a device buffer. ``np.asarray(v)`` copies it to the host.

    Immutable once made: kernels never write a buffer a ``DeviceValue`` holds.
    """

    def __init__(self, device: OpenCLDevice, buffer: Any, shape: tuple[int, ...],
                 dtype: np.dtype[Any]) -> None:
        self.device, self.buffer, self.shape, self.dtype = device, buffer, shape, dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        host = np.empty(self.shape, self.dtype)
        self.device.download(self.buffer, host, None)
        return host if dtype is None else host.astype(dtype)

    def __repr__(self) -> str:
        return f"DeviceValue({self.dtype}{list(self.shape)} on {self.device.name})"


class OpenCLDevice:
    """A context and in-order queue on one device, and the programs built for it."""

    def __init__(self, device: Any) -> None:
        cl = _cl()
        self.device = device
        self.info = info(self.device, 0)
        self.name = self.info.name
        self.context = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.context)
        self._programs: dict[str, Any] = {}

    def alloc(self, nbytes: int) -> Any:
        cl = _cl()
        return cl.Buffer(self.context, cl.mem_flags.READ_WRITE, max(int(nbytes), 1))

    def upload(self, buffer: Any, host: np.ndarray, stats: Transfers | None) -> None:
        """Blocking host -> device copy (the host array may be a temporary)."""
        if host.nbytes:
            _cl().enqueue_copy(self.queue, buffer, np.require(host, requirements="C"))
        if stats is not None:
            stats.to_device += 1
            stats.bytes_to_device += host.nbytes

    def download(self, buffer: Any, host: np.ndarray, stats: Transfers | None) -> None:
        """Blocking device -> host copy into ``host`` (C-contiguous)."""
        if host.nbytes:
            _cl().enqueue_copy(self.queue, host, buffer)
        if stats is not None:
            stats.to_host += 1
            stats.bytes_to_host += host.nbytes

    def build(self, source: str, what: str) -> Any:
        """The built program (cached in memory here, on disk by pyopencl's binary cache).

        Raises:  OpenCLError with the compiler's log and the offending source lines.
        """
        program = self._programs.get(source)
        if program is None:
            cl = _cl()
            start = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as notes:  # compiler remarks: debug log
                    warnings.simplefilter("always")
                    program = cl.Program(self.context, source).build()
                for note in notes:
                    log.debug("OpenCL compiler output for %s: %s", what, note.message)
            except cl.RuntimeError as e:
                raise OpenCLError(f"the OpenCL compiler rejected the program of {what} on "
                                  f"{self.name}:\n{e}\n{_excerpt(source, str(e))}") from None
            self._programs[source] = program
            log.debug("built %s on %s: %d bytes of OpenCL C in %.3f s", what, self.name,
                      len(source), time.perf_counter() - start)
        return program


_DEVICES: dict[int, OpenCLDevice] = {}


def shared_device(spec: str | int | None = None) -> OpenCLDevice:
    """One ``OpenCLDevice`` (context, queue, built programs) per device per process: sessions on
    the same device share compiled programs, and a DeviceValue of one session's state is usable
    by another's executables."""
    device = select_device(spec)
    key = int(device.int_ptr)
    if key not in _DEVICES:
        _DEVICES[key] = OpenCLDevice(device)
    return _DEVICES[key]


def _excerpt(source: str, log: str) -> str:
    """The source lines the compiler's log points at (``<source>:LINE:COL``), numbered."""
    lines = source.splitlines()
    wanted = sorted({int(m) for m in re.findall(r":(\d+):\d+:", log)})[:5]
    out = []
    for n in wanted:
        for k in range(max(n - 2, 1), min(n + 1, len(lines)) + 1):
            out.append(f"{k:5d}{'>' if k == n else ' '} {lines[k - 1]}")
        out.append("")
    return "offending source lines:\n" + "\n".join(out) if out else ""


class OpenCLExecutable:
    def __init__(self, graph: Graph, fetches: Sequence[Node], device: OpenCLDevice,
                 dump_dir: str | None = None, skip: frozenset[str] = SKIP) -> None:
        self.fetches = tuple(fetches)
        self.device = device
        order = graph.subgraph_order(self.fetches)
        unknown = [n for n in order if any(d is None for d in n.shape)]
        if unknown:
            raise GraphError(f"the opencl backend needs static shapes; {describe(unknown[0])} has "
                             "an unknown dimension (the Session specialises graphs to the fed "
                             "shapes)")
        self.order = order
        self.placeholders = tuple(n for n in order if n.op == "placeholder")
        self.variables = tuple(n for n in order if n.op == "variable")
        self.random = any(get_op(n.op).random for n in order)
        self.writers = [n for n in order if get_op(n.op).writes_input is not None]
        self.kernels: list[Kernel] = []
        self.steps: list[tuple[str, Node, int]] = []  # ("kernel", node, k) | ("numpy", node, -1)
        self.fallback_ops: set[str] = set()
        for n in order:
            if n.op in SOURCES or get_op(n.op).no_value:
                continue
            kernel = lower(n, f"k{len(self.kernels)}_{n.op}", skip,
                           gpu=device.info.kind != "cpu")
            if kernel is None:
                self.steps.append(("numpy", n, -1))
                self.fallback_ops.add(n.op)
                continue
            self.steps.append(("kernel", n, len(self.kernels)))
            self.kernels.append(kernel)
        self._check_fp64(order)
        limits = device.info
        group = min(64, limits.max_work_group_size)
        widest = 1 << (min(256, limits.max_work_group_size).bit_length() - 1)
        tile = tile_for(limits.max_work_group_size, limits.local_mem_bytes)
        self.source, self.launches = render_program(
            self.kernels, group, limits.kind == "cpu", widest, tile, limits.compute_units,
            limits.local_mem_bytes, limits.vector_width) if self.kernels else ("", [])
        self.program = device.build(self.source, f"graph {graph.name!r}") if self.kernels \
            else None
        self._cl_kernels = [_cl().Kernel(self.program, k.name) for k in self.kernels]
        # Device buffers: constants uploaded once; intermediates allocated once and reused;
        # placeholders and variables bound per run; writers' outputs fresh every run.
        self._buffers: dict[Node, Any] = {}
        for n in order:
            if n.op == "constant":
                self._buffers[n] = device.alloc(n.attrs["value"].array.nbytes)
                device.upload(self._buffers[n], n.attrs["value"].array, None)
            elif n.op not in SOURCES and not get_op(n.op).no_value and n not in self.writers:
                self._buffers[n] = device.alloc(_nbytes(n))
        # feeds' buffers, allocated once (a fresh 64 MB PoCL buffer cost 40 ms against the 7 ms
        # copy into it), and the arrays fetched values come back in
        self._feed_buffers = {p: device.alloc(_nbytes(p)) for p in self.placeholders}
        # one status flag shared by the kernels that check their data (take, gather, integer
        # pow, ...): read back once per run; on an error the host finds which node's inputs
        # were bad. Random kernels (dropout) read the run counter from a buffer of its own.
        self._checked = [n for kind, n, k in self.steps if kind == "kernel"
                         and self.kernels[k].checks]
        self._status = device.alloc(4) if self._checked else None
        self._counter = device.alloc(8) if any(k.random for k in self.kernels) else None
        self._status_host = np.zeros(1, np.int32)
        if self._status is not None:
            device.upload(self._status, self._status_host, None)
        self._returned = ReturnedArrays()
        self.transfers = Transfers()
        if dump_dir:
            self._dump(dump_dir, graph.name)

    def _check_fp64(self, order: list[Node]) -> None:
        if self.device.info.fp64:
            return
        wide = [n for n in order if n.dtype.np == np.float64]
        wide.sort(key=lambda n: n.op in SOURCES)  # name a computing node first
        if wide:
            raise OpenCLError(f"{describe(wide[0])} computes in float64, which {self.device.name} "
                              "does not support (no cl_khr_fp64): use float32, or another "
                              "device (GRAPHNN_OPENCL_DEVICE, graphnn devices)")

    def run(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, Any],
            counter: int) -> RunResult:
        dev, stats = self.device, Transfers()
        buffers, updates = self._bind(feeds, state, counter, stats)
        self._execute(buffers, counter, stats)
        for w in self.writers:
            target = w.inputs[get_op(w.op).writes_input or 0]  # writers name their input
            updates[target] = DeviceValue(dev, buffers[w], tuple(_shape(w)), w.dtype.np)
        outputs: list[np.ndarray | None] = []
        for f in self.fetches:
            if get_op(f.op).no_value:
                outputs.append(None)
            elif f.op == "placeholder":
                outputs.append(np.array(feeds[f], copy=True))
            elif f.op == "constant":
                outputs.append(np.array(f.attrs["value"].array, copy=True))
            else:
                host = self._returned.get(f, _shape(f), f.dtype.np)
                dev.download(buffers[f], host, stats)
                outputs.append(host)
        dev.queue.finish()
        self.transfers = stats
        return RunResult(outputs, updates)  # type: ignore[arg-type]

    def _bind(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, Any], counter: int,
              stats: Transfers) -> tuple[dict[Node, Any], dict[Node, Any]]:
        """Every node's device buffer for one run (feeds uploaded, variables on the device,
        fresh buffers for the writers) and the variables uploaded for the first time."""
        dev = self.device
        buffers = dict(self._buffers)
        updates: dict[Node, Any] = {}
        for p in self.placeholders:
            buffers[p] = self._feed_buffers[p]
            dev.upload(buffers[p], feeds[p], stats)
        for v in self.variables:
            value = state[v]
            if isinstance(value, DeviceValue) and value.device is dev:
                buffers[v] = value.buffer
            else:  # first use, or set from the host: upload once, keep it on the device
                host = np.asarray(value, v.dtype.np)
                buffers[v] = dev.alloc(host.nbytes)
                dev.upload(buffers[v], host, stats)
                updates[v] = DeviceValue(dev, buffers[v], tuple(host.shape), host.dtype)
        for w in self.writers:
            buffers[w] = dev.alloc(_nbytes(w))
        if self._counter is not None:
            dev.upload(self._counter, np.array([counter], np.int64), stats)
        return buffers, updates

    def _execute(self, buffers: dict[Node, Any], counter: int, stats: Transfers) -> None:
        """The steps in order: kernel launches and fallback nodes; raises a flagged error."""
        flagged = False  # a kernel that checks its data ran since the flag was last read
        for kind, node, k in self.steps:
            try:
                if kind == "kernel":
                    self._launch(k, node, buffers)
                    flagged = flagged or self.kernels[k].checks
                else:
                    if flagged:  # a flagged error comes first, and leaves no stale flag
                        self._check_flag(buffers, stats)
                        flagged = False
                    self._fallback(node, buffers, counter, stats)
            except _cl().Error as e:
                raise ExecutionError(f"{describe(node)} failed on {self.device.name}: {e}") \
                    from None
        if flagged:
            self._check_flag(buffers, stats)

    def profile(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, Any],
                counter: int, repeat: int) -> list[KernelTime]:
        """Each step's median time over ``repeat`` runs of it alone (``graphnn.profiler``),
        once one run has filled the buffers: a kernel's launch waited for with
        ``queue.finish()`` (host time, so the launch's latency counts), a fallback node's
        download, numpy reference and upload. Variables are untouched (the writers' outputs
        are fresh buffers)."""
        stats = Transfers()
        buffers, _ = self._bind(feeds, state, counter, stats)
        self._execute(buffers, counter, stats)
        queue = self.device.queue
        queue.finish()

        def timed(call: Callable[[], None]) -> float:
            def finished() -> None:
                call()
                queue.finish()
            return median_time(finished, repeat)

        times: list[KernelTime] = []
        for kind, node, k in self.steps:
            if kind == "kernel":
                seconds = timed(functools.partial(self._launch, k, node, buffers))
                name = self.kernels[k].name
            else:
                seconds = timed(functools.partial(self._fallback, node, buffers, counter,
                                                  Transfers()))
                name = "numpy"
            times.append(KernelTime.of(node, name, seconds))
        return times

    def _launch(self, k: int, node: Node, buffers: dict[Node, Any]) -> None:
        launch: Launch = self.launches[k]
        if any(s == 0 for s in launch.global_size):
            return
        kernel = self._cl_kernels[k]
        extra = (self._counter,) * self.kernels[k].random + (self._status,) * self.kernels[k].checks
        kernel.set_args(*[buffers[i] for i in node.inputs], buffers[node], *extra)
        _cl().enqueue_nd_range_kernel(self.device.queue, kernel, launch.global_size,
                                      launch.local_size)

    def _check_flag(self, buffers: dict[Node, Any], stats: Transfers) -> None:
        """Raise when a kernel flagged bad data: the reference's error for the first node whose
        inputs (read back only then) make it fail. Clears the flag for the next run."""
        self.device.download(self._status, self._status_host, stats)
        if not self._status_host[0]:
            return
        self._status_host[0] = 0
        self.device.upload(self._status, self._status_host, None)
        for node in self._checked:
            args = [np.empty(_shape(i), i.dtype.np) for i in node.inputs]
            for i, host in zip(node.inputs, args):
                self.device.download(buffers[i], host, None)
            error = reference_error(node, args)
            if error is not None:
                raise error
        raise flagged_error(node, args)  # pragma: no cover - no node's reference fails: a bug

    def _fallback(self, node: Node, buffers: dict[Node, Any], counter: int,
                  stats: Transfers) -> None:
        """The numpy reference between kernels: inputs down, result up."""
        args = []
        for i in node.inputs:
            host = np.empty(_shape(i), i.dtype.np)
            self.device.download(buffers[i], host, stats)
            args.append(host)
        result = np.asarray(_evaluate(node, args, counter), node.dtype.np)
        self.device.upload(buffers[node], result, stats)

    def _dump(self, folder: str, name: str) -> None:
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, f"opencl_{name}")
        with open(stem + ".kir", "w") as f:
            f.write("\n\n".join(format_kernel(k) for k in self.kernels) + "\n")
        with open(stem + ".cl", "w") as f:
            f.write(self.source)


def _shape(n: Node) -> tuple[int, ...]:
    return tuple(int(d or 0) for d in n.shape)


def _nbytes(n: Node) -> int:
    return int(np.prod(_shape(n))) * n.dtype.itemsize


class OpenCLBackend:
    """``backend="opencl"``: OpenCL C kernels through pyopencl, on a GPU or (PoCL) the CPU.

    Args:
        device: "gpu", "cpu", an index into ``graphnn devices``' list or a name substring; None
            picks a GPU if there is one, else the first device. ``GRAPHNN_OPENCL_DEVICE``
            overrides it.
        dump_dir: write each program's kernel IR (``.kir``) and OpenCL C (``.cl``) there (also
            ``GRAPHNN_DUMP``).
        skip: ops left to their numpy reference although they have a kernel. None (default):
            ``SKIP`` on CPU devices, where those kernels are slower than numpy and the round
            trip; nothing on GPUs, where the round trip costs more than the kernels.

    Raises:  OpenCLError when there is no OpenCL platform (saying how to install one) or no
             device matches ``device``.
    """

    name = "opencl"
    static_shapes = True

    def __init__(self, device: str | int | None = None, dump_dir: str | None = None,
                 skip: frozenset[str] | None = None) -> None:
        self.device = shared_device(device)
        if skip is None:
            skip = SKIP if self.device.info.kind == "cpu" else frozenset()
        self.skip = skip
        self.dump_dir = dump_dir if dump_dir is not None else os.environ.get("GRAPHNN_DUMP")

    def compile(self, graph: Graph, fetches: Sequence[Node]) -> OpenCLExecutable:
        return OpenCLExecutable(graph, fetches, self.device, self.dump_dir, self.skip)
