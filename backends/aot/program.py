"""The native program of an ahead-of-time compiled model: one LLVM module for the whole graph.

The graph (static shapes, weights frozen, memory planned by ``plan_memory``) becomes:

- its kernels, from the shared kernel lowering (``graphnn.backends.kernel.lower``), rendered by the
  LLVM backend's ``KernelEmitter``; a kernel that writes in place drops its no-alias facts;
- ``<name>_run(ctx, inputs..., outputs...)``, calling the kernels in the planned order. Inputs and
  outputs are the caller's buffers; every intermediate lives at its planned offset in the
  context's arena; weights live at 64-byte aligned offsets in one read-only blob (embedded in the
  library, or read from a weights file by ``<name>_create``);
- the C API around it (``api.render_api``): create, destroy, thread count, metadata, CPU check;
- the runtime's parallel-for (``graphnn.backends.llvm.runtime``), so large kernels use all cores.

Everything but the C API is given internal linkage, so several models link into one program.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from graphnn.backends.aot.api import FLAG_TO_STATUS
from graphnn.backends.kernel.ir import Kernel
from graphnn.backends.kernel.lower import lower
from graphnn.backends.llvm.codegen import I32, I64, PTR, SPAWN_MIN_WORK, KernelEmitter
from graphnn.passes.memory import MemoryPlan
from llvmlite import ir

from graphnn.dtypes import DType
from graphnn.errors import GraphError
from graphnn.ir import Graph, Node
from graphnn.ops.registry import describe, get_op
from graphnn.text_ir import node_id

ALIGNMENT = 64  # bytes: a cache line, and the widest vector load (AVX-512)


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of the compiled model: C name, dtype, shape (row-major, contiguous)."""

    name: str
    dtype: DType
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


@dataclass
class Program:
    """What ``build_program`` made: the module's IR text and what the header and loader need."""

    name: str
    llvm_ir: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    weights: bytes  # every constant, at its offset
    arena_bytes: int
    kernels: list[Kernel] = field(default_factory=list)


def _round_up(n: int, k: int = ALIGNMENT) -> int:
    return -(-n // k) * k


def _static(shape: tuple[int | None, ...]) -> tuple[int, tuple[int, ...]]:
    """(elements, shape) of a shape ``check_compilable`` has seen to be static."""
    dims = tuple(int(d or 0) for d in shape)
    return int(np.prod(dims, dtype=np.int64)), dims


def pack_weights(constants: list[Node]) -> tuple[bytes, dict[Node, int]]:
    """The constants' bytes at 64-byte aligned offsets, and each constant's offset."""
    offsets, chunks, size = {}, [], 0
    for c in constants:
        data = np.asarray(c.attrs["value"].array, c.dtype.np).tobytes(order="C")
        offsets[c] = size
        chunks.append(data + bytes(_round_up(len(data)) - len(data)))
        size += _round_up(len(data))
    return b"".join(chunks), offsets


def check_compilable(graph: Graph) -> None:
    """Raise GraphError naming the first node the ahead-of-time compiler cannot handle."""
    for n in graph.nodes:
        op = get_op(n.op)
        if n.op == "variable":
            raise GraphError(f"{describe(n)} is a variable: ahead-of-time compilation needs frozen "
                             "weights (graphnn.compile freezes them)")
        if op.random or op.writes_input is not None or op.no_value:
            raise GraphError(f"{n.op} ({describe(n)}) changes state or draws random numbers; a "
                             "compiled model is an inference graph (build it in eval mode)")
        if any(d is None for d in n.shape):
            raise GraphError(f"{describe(n)} has an unknown dimension; give example inputs or "
                             "input shapes to specialise the graph")


def build_program(graph: Graph, name: str, input_names: list[str], output_names: list[str],
                  vector_bits: int = 128) -> Program:
    """Lower ``graph`` (inference, static shapes, ``graph.meta["memory_plan"]`` present) into a
    whole-model LLVM module; see the module docstring.

    Raises:  GraphError naming the node when an op has no native kernel or the graph is not an
             inference graph with static shapes.
    """
    check_compilable(graph)
    plan: MemoryPlan | None = graph.meta.get("memory_plan")  # type: ignore[assignment]
    if plan is None:
        raise GraphError("build_program needs a memory plan: run the plan_memory pass first")
    in_place = {node for node, _ in plan.in_place}
    placeholders = graph.placeholders
    outputs = list(graph.outputs)
    weights, weight_offset = pack_weights([n for n in graph.nodes if n.op == "constant"])

    module = ir.Module(name=name)
    # the target's width, for the GEMM template; threads are created per call in a library
    emitter = KernelEmitter(module, vector_bits, parallel_min_work=SPAWN_MIN_WORK)
    fn = ir.Function(module, ir.FunctionType(
        I32, [PTR] * (1 + len(placeholders) + len(outputs))), f"{name}_run")
    ctx, args = fn.args[0], fn.args[1:]
    ctx.name = "ctx"
    for a, spec_name in zip(args, [*input_names, *output_names]):
        a.name = spec_name
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    bad, body = fn.append_basic_block("bad_argument"), fn.append_basic_block("body")
    null = b.icmp_unsigned("==", ctx, ir.Constant(PTR, None))
    for a in args:
        null = b.or_(null, b.icmp_unsigned("==", a, ir.Constant(PTR, None)))
    b.cbranch(null, bad, body)
    b.position_at_end(bad)
    b.ret(ir.Constant(I32, 1))
    b.position_at_end(body)
    arena = b.load(b.gep(ctx, [ir.Constant(I64, 0)], source_etype=PTR), typ=PTR, name="arena")
    status = b.alloca(I32, name="status")  # set by kernels that find bad data (Param.status)
    b.store(ir.Constant(I32, 0), status)
    blob = b.load(b.gep(ctx, [ir.Constant(I64, 1)], source_etype=PTR), typ=PTR, name="weights")

    def at(base: ir.Value, offset: int) -> ir.Value:
        return b.gep(base, [ir.Constant(I64, offset)], source_etype=ir.IntType(8))

    where: dict[Node, ir.Value] = {}
    for k, p in enumerate(placeholders):
        where[p] = args[k]
    out_args = args[len(placeholders):]
    copies: list[tuple[int, Node]] = []  # outputs that are not computed into their buffer
    for k, o in enumerate(outputs):
        if o.op in ("placeholder", "constant") or o in where:
            copies.append((k, o))
        else:
            where[o] = out_args[k]
    kernels: list[Kernel] = []
    for i, n in enumerate(graph.nodes):
        if n.op == "constant":
            where[n] = at(blob, weight_offset[n])
            continue
        if n.op == "placeholder":
            continue
        if n not in where:
            where[n] = at(arena, plan.offsets[node_id(n, i)][0])
        # no input marked constant: contexts may run on several threads at once, and a
        # module-wide cache filled on first use (the Winograd weights) would race between them
        kernel = lower(n, f"k{len(kernels)}_{n.op}", mark_constants=False)
        if kernel is None:
            raise GraphError(f"{n.op} ({describe(n)}) has no native kernel yet, so the model "
                             "cannot be compiled ahead of time")
        kernels.append(kernel)
        emitter.emit(kernel, may_alias=node_id(n, i) in in_place)
        b.call(module.globals[kernel.name], [where[x] for x in [*n.inputs, n]]
               + [status] * kernel.checks)
    if copies:
        memcpy = module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
        for k, o in copies:
            nbytes = _static(o.shape)[0] * o.dtype.itemsize
            b.call(memcpy, [out_args[k], where[o], ir.Constant(I64, nbytes),
                            ir.Constant(ir.IntType(1), 0)])
    flag = b.load(status, typ=I32)
    failed = b.icmp_unsigned("!=", flag, ir.Constant(I32, 0))
    b.ret(b.select(failed, b.add(flag, ir.Constant(I32, FLAG_TO_STATUS)), ir.Constant(I32, 0)))
    specs_in = [TensorSpec(nm, p.dtype, _static(p.shape)[1])
                for nm, p in zip(input_names, placeholders)]
    specs_out = [TensorSpec(nm, o.dtype, _static(o.shape)[1])
                 for nm, o in zip(output_names, outputs)]
    return Program(name, str(module), specs_in, specs_out, weights, plan.arena_bytes, kernels)
