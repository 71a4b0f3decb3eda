"""The LLVM backend's executable: one JIT-compiled module per (graph, fetches, shapes).

Every node the kernel lowering handles becomes a native kernel; consecutive kernels form a
segment, entered with one native call that receives an array of buffer pointers. Nodes without a
lowering yet run their numpy reference between segments (``fallback_ops`` lists them, so tests and
dumps show the gap). Buffers are numpy arrays: feeds, variable values, constants, and one array per
computed value. ctypes releases the GIL during native calls.
"""

from __future__ import annotations

import ctypes
import functools
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from graphnn.backends.base import ReturnedArrays, RunResult
from graphnn.backends.kernel.ir import Kernel, format_kernel
from graphnn.backends.kernel.lower import lower
from graphnn.backends.llvm.codegen import PTR, KernelEmitter, template_for
from graphnn.backends.llvm.gemm import vector_bits
from graphnn.backends.llvm.jit import Compiled, Target, cache_key, default_threads
from graphnn.backends.llvm.pool_fusion import candidates, pooled_kernel
from graphnn.backends.llvm.tuning import Tuner
from graphnn.backends.reference import _evaluate, flagged_error
from graphnn.passes.memory import plan_buffers
from llvmlite import ir

from graphnn.errors import GraphError
from graphnn.ir import Graph, Node
from graphnn.ops.registry import describe, get_op
from graphnn.profiler import KernelTime, median_time
from graphnn.shapes import num_elements

SOURCES = ("placeholder", "variable", "constant")

# ops whose loop nests (not their templates) measured slower than numpy: the convolution
# gradients (one reduction per weight, a gather per element), and attention, whose row kernel
# has no GEMM in it (8x4x128x64: 7.2 ms against numpy's 4.7; at O2 decompose_attention makes it
# GEMMs, 1.5 ms)
CONV_GRADS = frozenset({"conv_weight_grad", "conv_transpose"})
SLOWER_THAN_NUMPY = CONV_GRADS | {"scaled_dot_product_attention"}
# what a run binds to a slot: a feed, a variable's value, a fetched value's array, a fresh array
FEED, VARIABLE, OUTPUT, FRESH = range(4)


class LLVMExecutable:
    def __init__(self, graph: Graph, fetches: Sequence[Node], target: Target,
                 dump_dir: str | None = None, threads: int = 1, cache: bool = True,
                 skip: frozenset[str] = frozenset(), tune: bool = False) -> None:
        self.fetches = tuple(fetches)
        order = graph.subgraph_order(self.fetches)
        unknown = [n for n in order if any(d is None for d in n.shape)]
        if unknown:
            raise GraphError(f"the llvm backend needs static shapes; {describe(unknown[0])} has an "
                             "unknown dimension (the Session specialises graphs to the fed shapes)")
        self.placeholders = tuple(n for n in order if n.op == "placeholder")
        self.variables = tuple(n for n in order if n.op == "variable")
        self.random = any(get_op(n.op).random for n in order)
        self.slot = {n: i for i, n in enumerate(order)}
        self.order = order
        self._segments = 0
        self._calls: list[list[tuple[Kernel, Node, list[int]]]] = []  # per segment: its kernels'
        # calls and the pointer slots they take (Session.profile calls them one by one)
        # ("native", (segment, nodes, checks its data)) | ("numpy", node)
        self.steps: list[tuple[str, Any]] = []
        self.kernels: list[Kernel] = []
        self._name, self._bits = graph.name, vector_bits(target.features)
        tuner = Tuner(target, self._bits, threads) if tune else None
        self._schedules: dict[str, dict[str, int]] = {}  # tuned, by kernel name
        segment: list[tuple[Kernel, Node]] = []
        self.fallback_ops: set[str] = set()
        # nodes whose kernels check their data, in order; the k-th one's flag is
        # self._status[k]. Slots past the nodes' hold the run counter, then those flags.
        self._checked: list[Node] = []
        # a convolution whose 2x2 max-pool follows may write the pooled output itself
        # (pool_fusion.py): {pool node: its kernel}, and the convolution's inputs it reads
        fusable = candidates(order, self.fetches)
        pooled: dict[Node, Kernel] = {}
        self._inputs: dict[Node, tuple[Node, ...]] = {}
        for n in order:
            if n.op in SOURCES or get_op(n.op).no_value:
                continue
            if n in pooled:
                kernel = pooled.pop(n)
                segment.append((kernel, n))
                self.kernels.append(kernel)
                continue
            if n in fusable:
                fused = pooled_kernel(n, fusable[n], f"k{len(self.kernels)}_conv_max_pool")
                if fused is not None and template_for(fused, self._bits) is not None:
                    pooled[fusable[n]], self._inputs[fusable[n]] = fused, tuple(n.inputs)
                    continue  # computed by the pool's step
            kernel = lower(n, f"k{len(self.kernels)}_{n.op}")
            if kernel is not None and skip & set(kernel.source) and \
                    template_for(kernel, self._bits) is None:
                kernel = None  # its loop nest measured slower than numpy's reference
            if kernel is None:
                self._close_segment(segment)
                segment = []
                self.steps.append(("numpy", n))
                self.fallback_ops.add(n.op)
                continue
            if tuner is not None:
                self._schedules[kernel.name] = tuner.schedule(kernel)
            self.kernels.append(kernel)
            if kernel.checks:
                self._checked.append(n)
            segment.append((kernel, n))
        self._close_segment(segment)
        # Intermediates live in one arena, allocated once and reused by every run, at the
        # offsets of a memory plan over the execution order (a value's block is reused once its
        # last consumer has run). Values that become variable state are fresh each run, so no
        # run aliases another's. A fetched value is computed straight into the array the run
        # returns: the previous run's, when the caller has let go of it (nothing else
        # references it), else a fresh one; never a copy.
        writers = {n for n in order if get_op(n.op).writes_input is not None}
        self._writers = writers
        planned = [n for n in order if n.op not in SOURCES and not get_op(n.op).no_value
                   and n not in writers and n not in self.fetches]
        # (a pooled convolution reads its inputs at the pool's step: they live until then)
        offsets, self.arena_bytes = plan_buffers(order, planned, also_reads=self._inputs)
        self.unplanned_bytes = sum(size for _, size in offsets.values())
        self._arena = np.empty(self.arena_bytes + 64, np.uint8)
        base = -self._arena.ctypes.data % 64  # cache-line aligned, as the plan's blocks
        self._scratch = {n: self._arena[base + at:base + at + (num_elements(n.shape) or 0)
                                        * n.dtype.itemsize].view(n.dtype.np)
                         .reshape([d or 0 for d in n.shape]) for n, (at, _) in offsets.items()}
        self._returned = ReturnedArrays()
        self._plan_run()
        # keyed by what the LLVM IR is emitted from: a cache hit emits nothing
        self.compiled = Compiled(self._emit_module, target, cache, cache_key(
            self._module_content(), target)) if self.kernels else None
        if self.compiled:
            self.compiled.set_threads(threads)
        self._entries = [ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self.compiled.address(f"seg{k}"))
                         for k in range(self._segments)] if self.compiled else []
        if dump_dir:
            self._dump(dump_dir, graph.name)

    def _close_segment(self, segment: list[tuple[Kernel, Node]]) -> None:
        """The segment's step: its kernels' calls and the pointer slots each takes."""
        if not segment:
            return
        k = self._segments
        self._segments += 1
        self._calls.append([])
        checks = False
        for kernel, node in segment:
            inputs = self._inputs.get(node, node.inputs)  # a pooled convolution's: its own
            slots = [self.slot[buf] for buf in [*inputs, node]]
            if kernel.random:
                slots.append(len(self.order))
            if kernel.checks:
                slots.append(len(self.order) + 1 + self._checked.index(node))
                checks = True
            self._calls[k].append((kernel, node, slots))
        self.steps.append(("native", (k, [n for _, n in segment], checks)))

    def _module_content(self) -> str:
        """Everything ``_emit_module`` reads, as text: the compile cache's key."""
        segments = [[(kernel.name, slots) for kernel, _, slots in calls] for calls in self._calls]
        return "\n".join([*map(repr, self.kernels), repr(sorted(self._schedules.items())),
                          repr(segments), f"vector bits {self._bits}"])

    def _emit_module(self) -> str:
        """The LLVM IR: every kernel, then per segment an entry ``seg<k>(ptr slots)`` calling
        its kernels in order."""
        module = ir.Module(name=self._name)
        emitter = KernelEmitter(module, self._bits)
        emitter.schedules.update(self._schedules)
        for kernel in self.kernels:
            emitter.emit(kernel)
        for k, calls in enumerate(self._calls):
            fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), f"seg{k}")
            b = ir.IRBuilder(fn.append_basic_block("entry"))
            for kernel, _, slots in calls:
                args = [b.load(b.gep(fn.args[0], [ir.Constant(ir.IntType(64), s)],
                                     source_etype=PTR), typ=PTR) for s in slots]
                b.call(module.globals[kernel.name], args)
            b.ret_void()
        return str(module)

    @property
    def llvm_ir(self) -> str:
        """The module's LLVM IR before optimisation ('' without kernels); emitted on first use
        when the machine code came from the disk cache."""
        return self.compiled.llvm_ir if self.compiled else ""

    def _plan_run(self) -> None:
        """What a run binds: constants and intermediates once (their pointers fixed in a ctypes
        array), the rest per run (feeds, variables, fetched values, new variable state)."""
        n_slots = len(self.order)
        self._static: list[np.ndarray | None] = [None] * n_slots
        self._counter = np.zeros(1, np.int64)  # random kernels read the run counter here
        self._status = np.zeros(len(self._checked), np.int32)
        self._pointers = (ctypes.c_void_p * (n_slots + 1 + len(self._checked)))()
        self._pointers[n_slots] = self._counter.ctypes.data
        for k in range(len(self._checked)):
            self._pointers[n_slots + 1 + k] = self._status.ctypes.data + 4 * k
        self._bind: list[tuple[int, Node, int]] = []  # (slot, node, FEED ... FRESH)
        for n in self.order:
            k = self.slot[n]
            if n.op == "constant":
                self._static[k] = n.attrs["value"].array
            elif n in self._scratch:
                self._static[k] = self._scratch[n]
            elif n.op == "placeholder":
                self._bind.append((k, n, FEED))
            elif n.op == "variable":
                self._bind.append((k, n, VARIABLE))
            elif n in self.fetches and n not in self._writers:
                self._bind.append((k, n, OUTPUT))
            elif not get_op(n.op).no_value:
                self._bind.append((k, n, FRESH))
            v = self._static[k]
            if v is not None:
                self._pointers[k] = v.__array_interface__["data"][0]
        self._pointer_arg = ctypes.cast(self._pointers, ctypes.c_void_p)
        # the array whose address each slot holds, while it lives: binding the same array again
        # (a feed fed every run, a recycled output) skips ``__array_interface__`` (~2 us each)
        self._bound: list[weakref.ref[np.ndarray] | None] = [None] * n_slots
        self._updates = [(n, n.inputs[int(get_op(n.op).writes_input or 0)])
                         for n in self._writers]
        self._copied = [f in self._writers or f.op in SOURCES for f in self.fetches]
        self._empty_fetch = [get_op(f.op).no_value for f in self.fetches]

    def run(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, np.ndarray],
            counter: int) -> RunResult:
        values = self._bind_values(feeds, state, counter)
        self._execute(values, counter)
        updates = {target: values[self.slot[n]] for n, target in self._updates}
        outputs: list[np.ndarray | None] = []
        for f, copied, empty in zip(self.fetches, self._copied, self._empty_fetch):
            value = None if empty else values[self.slot[f]]
            if value is not None and (copied or any(value is o for o in outputs)):
                value = value.copy()  # never a feed, a weight or the new variable state
                # itself; a node fetched twice gives two arrays
            outputs.append(value)
        return RunResult(outputs, updates)  # type: ignore[arg-type]

    def _bind_values(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, np.ndarray],
                     counter: int) -> list[np.ndarray | None]:
        """Every slot's array for one run (its address in ``_pointers``): the list keeps the
        arrays bound only for this run (fresh outputs, contiguous copies of feeds) alive."""
        values = list(self._static)
        pointers, bound = self._pointers, self._bound
        self._counter[0] = counter
        for k, n, kind in self._bind:
            if kind == FEED or kind == VARIABLE:
                v = feeds[n] if kind == FEED else state[n]
                if not v.flags.c_contiguous:
                    v = np.require(v, requirements="C")  # keeps 0-d
            elif kind == OUTPUT:
                v = self._returned.get(n, n.shape, n.dtype.np)  # type: ignore[arg-type]
            else:
                v = np.empty(n.shape, n.dtype.np)  # type: ignore[arg-type]
            values[k] = v
            last = bound[k]
            if last is None or last() is not v:
                bound[k] = weakref.ref(v)
                pointers[k] = v.__array_interface__["data"][0]
        return values

    def _execute(self, values: list[np.ndarray | None], counter: int) -> None:
        """The steps in order: segments' native calls, fallback nodes' numpy references."""
        for step, what in self.steps:
            if step == "native":
                self._entries[what[0]](self._pointer_arg)
                if what[2] and self._status.any():
                    self._raise_flagged(values)
            else:
                np.copyto(values[self.slot[what]], self._fallback(what, values, counter))  # type: ignore[arg-type]

    def _fallback(self, node: Node, values: list[np.ndarray | None], counter: int) -> Any:
        return _evaluate(node, [values[self.slot[i]] for i in node.inputs], counter)

    def profile(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, np.ndarray],
                counter: int, repeat: int) -> list[KernelTime]:
        """Each step's median time over ``repeat`` calls of it alone (``graphnn.profiler``):
        one run (which raises as a run would), then the steps once more in order, each
        intermediate in a buffer of its own instead of its arena block (so a kernel called
        again finds its inputs as it did in the run, not a later value that reused their
        block), then each kernel's native function called through ctypes with its slots'
        pointers (about 1 us more than inside its segment), each fallback node's numpy
        reference re-evaluated. Variables and the returned arrays are untouched."""
        values = self._bind_values(feeds, state, counter)  # alive while kernels use them
        self._execute(values, counter)
        own = list(values)
        for n in self._scratch:
            own[self.slot[n]] = np.empty_like(self._scratch[n])
        pointer = [self._pointers[s] for s in range(len(self._pointers))]
        for n in self._scratch:
            pointer[self.slot[n]] = own[self.slot[n]].ctypes.data  # type: ignore[union-attr]
        assert self.compiled is not None or not self._calls
        calls: list[tuple[str, Any, Any]] = []  # (kind, what, function of no arguments)
        for step, what in self.steps:
            if step == "numpy":
                calls.append(("numpy", what, functools.partial(self._fallback, what, own,
                                                               counter)))
                continue
            for kernel, node, slots in self._calls[what[0]]:
                fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(slots))(
                    self.compiled.address(kernel.name))  # type: ignore[union-attr]
                calls.append((kernel.name, node, functools.partial(
                    fn, *[pointer[s] for s in slots])))
        for kind, what, call in calls:  # fill the private buffers, in order
            if kind == "numpy":
                np.copyto(own[self.slot[what]], call())  # type: ignore[arg-type]
            else:
                call()
        times = [KernelTime.of(what, "numpy" if kind == "numpy" else kind,
                               median_time(call, repeat)) for kind, what, call in calls]
        self._status[:] = 0  # a kernel that checks its data flagged already in the run
        return times

    def _raise_flagged(self, values: list[np.ndarray | None]) -> None:
        """A kernel flagged bad data: reset the flags, raise the reference's error for the
        first flagged node."""
        node = self._checked[int(np.flatnonzero(self._status)[0])]
        self._status[:] = 0
        raise flagged_error(node, [values[self.slot[i]] for i in node.inputs])  # type: ignore[misc]

    def _dump(self, folder: str, name: str) -> None:
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, f"llvm_{name}")
        with open(stem + ".kir", "w") as f:
            f.write("\n\n".join(format_kernel(k) for k in self.kernels) + "\n")
        with open(stem + ".ll", "w") as f:
            f.write(self.llvm_ir)
        if self.compiled and not self.compiled.from_cache:  # a cache hit skipped both stages
            with open(stem + ".opt.ll", "w") as f:
                f.write(self.compiled.optimized_ir or "")
            with open(stem + ".s", "w") as f:
                f.write(self.compiled.assembly or "")


class LLVMBackend:
    """``backend="llvm"``: native code through LLVM (see the package docstring for its state).

    Args:
        cpu, features: the target CPU and its ``+feature`` list (default: this host's).
        dump_dir: write each graph's kernel IR, LLVM IR and assembly there (also ``GRAPHNN_DUMP``).
        threads: native threads per kernel (default ``GRAPHNN_NUM_THREADS``, else the cores
            available to the process).
        cache: use the on-disk compile cache.
        native_conv_grads: run the convolution gradients' loop nests where no GEMM template
            takes them (by default numpy runs them: the loop nests measured slower).
        skip: ops left to their numpy reference although they have a kernel (None:
            ``SLOWER_THAN_NUMPY``, less the convolution gradients with ``native_conv_grads``);
            a template that takes the node wins over ``skip``.
        tune: time variants of each templated kernel's blocking and thread count on first
            compile and keep the fastest, cached on disk (``tuning.py``; default
            ``GRAPHNN_TUNE=1``, else off). Costs about a second per variant, once per kernel.
    """

    name = "llvm"
    static_shapes = True

    def __init__(self, cpu: str | None = None, features: str | None = None,
                 dump_dir: str | None = None, threads: int | None = None,
                 cache: bool = True, native_conv_grads: bool = False,
                 skip: frozenset[str] | None = None, tune: bool | None = None) -> None:
        self.target = Target.host(cpu, features)
        self.tune = tune if tune is not None else os.environ.get("GRAPHNN_TUNE", "") == "1"
        # SLOWER_THAN_NUMPY's ops run numpy's reference where no template (conv_grads.py) takes
        # them, unless native_conv_grads; ``skip`` names the ops to leave to numpy instead.
        if skip is None:
            skip = SLOWER_THAN_NUMPY - (CONV_GRADS if native_conv_grads else frozenset())
        self.skip = skip
        self.cache = cache  # the on-disk compile cache (off: always optimise)
        self.threads = threads if threads is not None else default_threads()
        self.dump_dir = dump_dir if dump_dir is not None else os.environ.get("GRAPHNN_DUMP")

    def compile(self, graph: Graph, fetches: Sequence[Node]) -> LLVMExecutable:
        return LLVMExecutable(graph, fetches, self.target, self.dump_dir, self.threads,
                              self.cache, self.skip, self.tune)
