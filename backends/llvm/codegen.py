"""Rendering kernel IR as LLVM IR with llvmlite's IRBuilder (opaque pointers, llvmlite >= 0.45).

Each kernel becomes ``void name(ptr noalias p0, ..., ptr noalias out)``. Loops are plain counted
loops (``for_range``, numba's idiom) that LLVM's O3 pipeline vectorises: unit-stride innermost
loops, noalias parameters. bool values are i1 in registers and one byte in memory (numpy's
layout). Math without an LLVM intrinsic (erf, tanh, log1p, expm1) calls libm, which the JIT
resolves in the running process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from graphnn.backends.kernel import approx
from graphnn.backends.kernel.ir import (
    Assign,
    Binary,
    Cast,
    Const,
    Declare,
    Expr,
    Kernel,
    Load,
    Loop,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
    subexpressions,
)
from graphnn.backends.llvm import (
    conv_depthwise,
    conv_gemm,
    conv_grads,
    conv_implicit,
    conv_winograd,
    gemm,
    gemv,
    pool_fusion,
    winograd_weight_grad,
)
from llvmlite import ir

from graphnn.dtypes import DType
from graphnn.random import LOWBIAS32

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
_REG = {DType.float32: F32, DType.float64: F64, DType.int32: I32, DType.int64: I64,
        DType.bool: I1}
_MEM = {**_REG, DType.bool: I8}
_INTRINSIC = {"exp": "llvm.exp", "log": "llvm.log", "sqrt": "llvm.sqrt", "sin": "llvm.sin",
              "cos": "llvm.cos", "floor": "llvm.floor", "ceil": "llvm.ceil",
              "round": "llvm.roundeven", "abs": "llvm.fabs", "pow": "llvm.pow"}
_LIBM = {"erf", "log1p", "expm1"}
# innermost vectorisable loops of these extents keep their loop (vectorize_here): LLVM unrolled
# such a row completely and vectorised the loop around it with gathers and scatters (a
# per-channel bias + ReLU over 26 x 26 planes: 2.2x the time; W2, W3, W4, W6 the same)
SHORT_ROW = (8, 256)
# long innermost loops computing these (float) take two vectors an iteration (``heavy``): their
# bodies are long dependency chains (exp's reduction and polynomial, a division) that LLVM's cost
# model left at one vector, so a core overlapped little of one iteration with the next (W5,
# gelu_tanh(x a + b) sigmoid(x), interleaved A/B, 2 threads: 0.97-0.98x the time in four runs
# at 2; at 4 0.99-1.06x, at 8 0.91-1.25x)
HEAVY_OPS, INTERLEAVE_HEAVY = frozenset({"exp", "tanh", "erf", "log", "log1p", "expm1", "sin",
                                         "cos", "pow", "div"}), 2
_FCMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


class _LoopID(ir.values.MDValue):  # type: ignore[misc]
    """A loop's ``!llvm.loop`` node: distinct and naming itself first, as LLVM requires (its
    other operands are the loop's hints); llvmlite's add_metadata makes neither."""

    def descr(self, buf: list[str]) -> None:
        ops = ", ".join([self.get_reference(), *(op.get_reference() for op in self.operands)])
        buf += (f"distinct !{{{ops}}}", "\n")


def vectorize_here(module: ir.Module) -> ir.MDValue:
    """Loop hints: vectorise this loop and do not unroll it first. For a vectorisable loop
    with short inner loops (pooling's output row around its window taps): LLVM otherwise
    unrolls the short row completely and vectorises the loop around it, with gathers and
    scatters."""
    hints = [module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")]),
             module.add_metadata([ir.MetaDataString(module, "llvm.loop.vectorize.enable"),
                                  ir.Constant(I1, 1)])]
    return _LoopID(module, hints, name=str(len(module.metadata)))


def no_unroll(module: ir.Module) -> ir.MDValue:
    """Loop hints: do not unroll this loop (its body may still be unrolled and vectorised)."""
    hints = [module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])]
    return _LoopID(module, hints, name=str(len(module.metadata)))


def interleave(module: ir.Module, count: int) -> ir.MDValue:
    """Loop hints: the vectorised loop handles ``count`` vectors an iteration."""
    hints = [module.add_metadata([ir.MetaDataString(module, "llvm.loop.interleave.count"),
                                  ir.Constant(ir.IntType(32), count)])]
    return _LoopID(module, hints, name=str(len(module.metadata)))


def heavy(body: tuple[Stmt, ...]) -> bool:
    """Whether a loop body (without inner loops) computes a float transcendental or division:
    ``HEAVY_OPS``, inline (exp, tanh, erf) or a long-latency instruction (division)."""
    for s in body:
        value = s.value if isinstance(s, Store | Assign) else s.init if isinstance(s, Declare) \
            else None
        if isinstance(s, Loop) or value is None:
            return False
        if any(isinstance(e, Unary | Binary) and e.op in HEAVY_OPS and e.dtype.is_float
               for e in subexpressions(value)):
            return True
    return False


def no_vectorize(module: ir.Module) -> ir.MDValue:
    """Loop hints: leave this loop scalar (a short tail after explicit vectors)."""
    hints = [module.add_metadata([ir.MetaDataString(module, "llvm.loop.vectorize.enable"),
                                  ir.Constant(I1, 0)])]
    return _LoopID(module, hints, name=str(len(module.metadata)))


def unroll_fully(module: ir.Module) -> ir.MDValue:
    """Loop hints: unroll this constant-trip loop completely (at O3, so the IR stays one copy:
    the implicit GEMM's loop over 9 taps, written out 9 times, made a cached graph slow to
    load, and left rolled it ran 5-10% slower)."""
    hints = [module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.full")])]
    return _LoopID(module, hints, name=str(len(module.metadata)))


@contextlib.contextmanager
def for_range(builder: ir.IRBuilder, stop: int | ir.Value, name: str,
              start: ir.Value | None = None, hints: ir.MDValue | None = None
              ) -> Iterator[ir.Value]:
    """``for name in range(start, stop)``: yields the i64 induction variable; the body goes
    inside the ``with`` block (numba's cgutils idiom). ``hints``: the loop's ``!llvm.loop``."""
    pre = builder.block
    header = builder.append_basic_block(f"{name}.head")
    body = builder.append_basic_block(f"{name}.body")
    done = builder.append_basic_block(f"{name}.done")
    builder.branch(header)
    builder.position_at_end(header)
    i = builder.phi(I64, name=name)
    i.add_incoming(start if start is not None else ir.Constant(I64, 0), pre)
    end = stop if isinstance(stop, ir.Value) else ir.Constant(I64, stop)
    builder.cbranch(builder.icmp_signed("<", i, end), body, done)
    builder.position_at_end(body)
    yield i
    nxt = builder.add(i, ir.Constant(I64, 1), name=f"{name}.next", flags=["nsw"])
    i.add_incoming(nxt, builder.block)
    back = builder.branch(header)
    if hints is not None:
        back.set_metadata("llvm.loop", hints)
    builder.position_at_end(done)


# Hand-written templates for kernel IR schedules, each behind its applicability test: the first
# that applies renders the kernel (the depthwise ones take what the GEMM-based ones leave, and
# one-input-channel convolutions first).
TEMPLATES: tuple[tuple[Callable[[Kernel, int], bool], type[gemm.GemmEmitter]], ...] = (
    (gemm.applies, gemm.GemmEmitter), (gemv.applies, gemv.SplitKGemv),
    (conv_depthwise.single_channel_applies, conv_depthwise.DepthwiseConv),
    (conv_winograd.winograd_applies, conv_winograd.WinogradConv),
    (conv_implicit.implicit_applies, conv_implicit.ImplicitConvGemm),
    (conv_gemm.pixel_applies, conv_gemm.PixelConvGemm), (conv_gemm.applies, conv_gemm.ConvGemm),
    (winograd_weight_grad.winograd_grad_applies, winograd_weight_grad.WinogradWeightGrad),
    (conv_implicit.weight_grad_applies, conv_implicit.ImplicitWeightGrad),
    (conv_grads.weight_grad_applies, conv_grads.WeightGradGemm),
    (conv_grads.transpose_applies, conv_grads.TransposedConvGemm),
    (conv_depthwise.applies, conv_depthwise.DepthwiseConv),
    (conv_depthwise.weight_grad_applies, conv_depthwise.DepthwiseWeightGrad))


def template_for(kernel: Kernel, vector_bits: int) -> type[gemm.GemmEmitter] | None:
    """The template that renders ``kernel`` at this vector width, or None (the loop nest). A
    convolution writing its pooled output (``pool_fusion.py``) has Winograd's or none."""
    if pool_fusion.is_pooled(kernel):
        return conv_winograd.WinogradConv \
            if conv_winograd.winograd_applies(kernel, vector_bits) else None
    for applies, template in TEMPLATES:
        if applies(kernel, vector_bits):
            return template
    return None


# A kernel goes multi-threaded when its loops do at least this many iterations in all: below,
# handing work to the threads costs more than it saves. With the JIT's pool of spinning workers
# 1 << 14 (W2 batch 1 0.89-0.91x the time of 1 << 16, its pooling layers split, W1 batch 1
# 0.83-0.95x; 1 << 12 lost W1's gain; the rest the same); AOT libraries' runtime creates its
# threads on every call, so there it stays 1 << 16 (SPAWN_MIN_WORK).
PARALLEL_MIN_WORK, SPAWN_MIN_WORK = 1 << 14, 1 << 16


def _work(stmts: tuple[Stmt, ...]) -> int:
    total = 0
    for s in stmts:
        total += s.extent * max(_work(s.body), 1) if isinstance(s, Loop) else 1
    return total


class KernelEmitter:
    """Emits kernels into a module: for each, ``name_chunk(ptr params, i64 lo, i64 hi)`` running
    iterations [lo, hi) of its outer parallel loop, and ``name(ptr p0, ..., ptr out)``, which runs
    the chunk over the whole range, split across ``graphnn_num_threads`` threads when the kernel
    is large (``graphnn_parallel_for`` from the runtime)."""

    def __init__(self, module: ir.Module, vector_bits: int = 128,
                 parallel_min_work: int = PARALLEL_MIN_WORK) -> None:
        self.module = module
        self.vector_bits = vector_bits  # the target's vector width, for the GEMM template
        self.parallel_min_work = parallel_min_work  # loop iterations from which to split
        self._noalias = True
        self._runtime: tuple[ir.Function, ir.GlobalVariable] | None = None
        # tuned schedules by kernel name (tuning.py): the template's knobs and ``threads``
        self.schedules: dict[str, dict[str, int]] = {}

    def runtime(self) -> tuple[ir.Function, ir.GlobalVariable]:
        """Declarations of the runtime's parallel-for and thread count (linked in by the JIT)."""
        if self._runtime is None:
            self._runtime = (ir.Function(self.module, ir.FunctionType(
                ir.VoidType(), [PTR, PTR, I64, I64]), "graphnn_parallel_for"),
                ir.GlobalVariable(self.module, I64, "graphnn_num_threads"))
        return self._runtime

    def emit(self, kernel: Kernel, may_alias: bool = False) -> ir.Function:
        """Define ``kernel.name``; ``may_alias`` drops the no-alias facts (a kernel planned to
        write in place, into the buffer of an input)."""
        before = set(self.module.globals)
        fn = self._emit(kernel, may_alias)
        for name in set(self.module.globals) - before:
            _allow_contraction(self.module.globals[name])
        return fn

    def _emit(self, kernel: Kernel, may_alias: bool) -> ir.Function:
        self._noalias = not may_alias
        outer = kernel.body[0] if len(kernel.body) == 1 and isinstance(kernel.body[0], Loop) \
            and kernel.body[0].parallel else None
        template = template_for(kernel, self.vector_bits)
        # a template may split the work its own way: its parallel loop's iteration count
        extent = (template.parallel_extent(kernel, self.vector_bits) if template else None) \
            or (outer.extent if outer is not None else 0)
        # a template with a workspace (split-K) always runs through the wrapper, which owns it
        workspace = template.workspace(kernel, self.vector_bits) if template else 0
        threads = self.schedules.get(kernel.name, {}).get("threads", 0)  # tuned: at most this
        if not workspace and (outer is None or extent < 2 or threads == 1 or
                              _work(kernel.body) < self.parallel_min_work):
            fn = self._signature(kernel, kernel.name)  # small: one thread, no wrapper
            self._body(kernel, fn, list(fn.args), None, None)
            return fn
        # impl(ptr noalias p0, ..., [ptr noalias workspace,] i64 lo, i64 hi): the body, with
        # the no-alias facts the vectoriser needs (they survive inlining as alias scopes);
        # chunk(ctx, lo, hi) unpacks the pointer array the runtime passes around and calls it.
        n = len(kernel.params) + (1 if workspace else 0)
        impl = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR] * n + [I64, I64]),
                           kernel.name + "_impl")
        names = [p.name for p in kernel.params] + (["workspace"] if workspace else [])
        for arg, name in zip(impl.args, names):
            arg.name = name
            if self._noalias or name == "workspace":
                arg.add_attribute("noalias")
        self._body(kernel, impl, list(impl.args[:n]), outer, (impl.args[n], impl.args[n + 1]))
        chunk = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]),
                            kernel.name + "_chunk")
        b = ir.IRBuilder(chunk.append_basic_block("entry"))
        ctx, lo, hi = chunk.args
        params = [b.load(b.gep(ctx, [ir.Constant(I64, i)], source_etype=PTR), typ=PTR)
                  for i in range(n)]
        b.call(impl, [*params, lo, hi])
        b.ret_void()
        return self._wrapper(kernel, chunk, extent, template, workspace)

    def _signature(self, kernel: Kernel, name: str) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR] * len(kernel.params)),
                         name)
        for arg, p in zip(fn.args, kernel.params):
            arg.name = p.name
            if self._noalias:
                arg.add_attribute("noalias")
        return fn

    def _body(self, kernel: Kernel, fn: ir.Function, params: list[ir.Value],
              outer: Loop | None, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        self.fn, self.kernel, self.params = fn, kernel, params
        self.entry = fn.blocks[0] if fn.blocks else fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)
        self.b.position_at_end(self.entry)
        self.vars: dict[str, ir.Value] = {}
        self.locals: dict[str, tuple[ir.AllocaInstr, DType]] = {}
        template = template_for(kernel, self.vector_bits)
        if template is not None:
            self._template(template, kernel).emit(bounds)
        else:
            for s in kernel.body:
                self.stmt(s, bounds if s is outer else None)
        self.b.ret_void()

    def _template(self, template: type[gemm.GemmEmitter], kernel: Kernel) -> gemm.GemmEmitter:
        """The template's emitter for ``kernel``, with its tuned schedule's knobs."""
        emitter = template(self, kernel, self.vector_bits)
        emitter.configure(self.schedules.get(kernel.name, {}))
        return emitter

    def _wrapper(self, kernel: Kernel, chunk: ir.Function, extent: int,
                 template: type[gemm.GemmEmitter] | None = None, workspace: int = 0
                 ) -> ir.Function:
        """``name(p0, ..., out)``: packs the pointers and runs the chunk on all threads, after
        the template's ``prepare``; with a ``workspace``, allocates that many values for the
        threads (after the pointers) and runs the template's ``finish`` once they are done."""
        parallel_for, num_threads = self.runtime()
        fn = self._signature(kernel, kernel.name)
        self.fn, self.kernel, self.params = fn, kernel, list(fn.args)
        self.entry = fn.append_basic_block("entry")
        b = self.b = ir.IRBuilder(self.entry)
        self.vars, self.locals = {}, {}
        ctx = b.alloca(PTR, ir.Constant(I64, len(fn.args) + (1 if workspace else 0)),
                       name="params")
        for i, arg in enumerate(fn.args):
            b.store(arg, b.gep(ctx, [ir.Constant(I64, i)], source_etype=PTR))
        emitter = self._template(template, kernel) if template else None
        if emitter is not None and workspace:
            buffer = emitter.malloc(workspace)
            self.params.append(buffer)
            b.store(buffer, b.gep(ctx, [ir.Constant(I64, len(fn.args))], source_etype=PTR))
        threads = b.load(num_threads, typ=I64)
        cap = self.schedules.get(kernel.name, {}).get("threads", 0)
        if cap > 0:  # a tuned thread count: at most cap
            threads = b.select(b.icmp_signed(">", threads, ir.Constant(I64, cap)),
                               ir.Constant(I64, cap), threads)
        if emitter is not None:
            emitter.prepare()
        b.call(parallel_for, [chunk, ctx, ir.Constant(I64, extent), threads])
        if emitter is not None and workspace:
            emitter.finish()
            emitter.free(buffer)
        self.b.ret_void()
        return fn

    # -- statements ----------------------------------------------------------------------------
    def stmt(self, s: Stmt, bounds: tuple[ir.Value, ir.Value] | None = None) -> None:
        if isinstance(s, Loop):
            start, stop = bounds if bounds is not None else (None, s.extent)
            hints = vectorize_here(self.module) if s.vectorize and (any(
                isinstance(x, Loop) for x in s.body) or SHORT_ROW[0] <= s.extent < SHORT_ROW[1]) \
                else None
            if hints is None and s.vectorize and s.extent >= SHORT_ROW[1] and heavy(s.body):
                hints = interleave(self.module, INTERLEAVE_HEAVY)
            with for_range(self.b, stop, s.var, start, hints) as i:
                self.vars[s.var] = i
                for inner in s.body:
                    self.stmt(inner)
        elif isinstance(s, Store) and s.mask is not None:
            with self.b.if_then(self.expr(s.mask), likely=False):
                self.stmt(Store(s.buf, s.index, s.value))
        elif isinstance(s, Store):
            p = self.kernel.params[s.buf]
            value = self.expr(s.value)
            if p.dtype is DType.bool:
                value = self.b.zext(value, I8)
            if p.status:  # threads may all flag one error: atomic, so race-free (an
                # exchange: llvmlite's store_atomic still expects typed pointers)
                self.b.atomic_rmw("xchg", self._address(s.buf, s.index), value, "monotonic")
            else:
                self.b.store(value, self._address(s.buf, s.index))
        elif isinstance(s, Declare):
            with self.b.goto_block(self.entry):  # allocas in the entry block: SROA promotes them
                self.b.position_at_start(self.entry)
                slot = self.b.alloca(_REG[s.dtype], name=s.name)
            self.locals[s.name] = (slot, s.dtype)
            self.b.store(self.expr(s.init), slot)
        elif isinstance(s, Assign):
            value = self.expr(s.value)
            if _is_sum(s) and isinstance(value, ir.Instruction) and value.opname == "fadd":
                # a running float sum may be reordered, so LLVM vectorises the loop around it
                # (partial sums per lane: like numpy's pairwise sums, within rounding of the
                # sequential order); max/min reductions keep their order (NaN rules)
                value.flags.extend(("reassoc", "nsz"))
            self.b.store(value, self.locals[s.name][0])
        else:  # pragma: no cover - the IR has no other statements
            raise TypeError(s)

    def _address(self, buf: int, index: Expr) -> ir.Value:
        p = self.kernel.params[buf]
        return self.b.gep(self.params[buf], [self.expr(index)], inbounds=True,
                          source_etype=_MEM[p.dtype])

    # -- expressions ---------------------------------------------------------------------------
    def expr(self, e: Expr) -> ir.Value:
        if isinstance(e, Const):
            ty = _REG[e.dtype]
            return ir.Constant(ty, float(e.value) if e.dtype.is_float else int(e.value))
        if isinstance(e, Var):
            if e.name in self.locals:
                slot, dt = self.locals[e.name]
                return self.b.load(slot, typ=_REG[dt])
            return self.vars[e.name]
        if isinstance(e, Load):
            p = self.kernel.params[e.buf]
            v = self.b.load(self._address(e.buf, e.index), typ=_MEM[p.dtype])
            return self.b.icmp_unsigned("!=", v, ir.Constant(I8, 0)) if p.dtype is DType.bool \
                else v
        if isinstance(e, Unary):
            return self.unary(e.op, self.expr(e.a), _dtype(e.a))
        if isinstance(e, Binary):
            return self.binary(e.op, self.expr(e.a), self.expr(e.b), _dtype(e.a))
        if isinstance(e, Select):
            return self.b.select(self.expr(e.cond), self.expr(e.a), self.expr(e.b))
        if isinstance(e, Cast):
            return self.cast(self.expr(e.a), _dtype(e.a), e.dtype)
        raise TypeError(e)  # pragma: no cover

    def _call(self, name: str, ty: ir.Type, *args: ir.Value) -> ir.Value:
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [ty] * len(args)), name)
        return self.b.call(fn, args)

    def _math(self, op: str, ty: ir.Type, *args: ir.Value) -> ir.Value:
        if op in ("exp", "tanh") or (op == "erf" and ty is F32):
            return getattr(self, f"_{op}")(args[0], ty)  # inline: vectorises, libm calls do not
        if op in _LIBM:  # no intrinsic: libm's float or double function
            return self._call(op + ("f" if ty is F32 else ""), ty, *args)
        suffix = "f32" if ty is F32 else "f64"
        return self._call(f"{_INTRINSIC[op]}.{suffix}", ty, *args)

    def unary(self, op: str, a: ir.Value, dt: DType) -> ir.Value:
        ty = _REG[dt]
        if op == "neg":
            return self.b.fneg(a) if dt.is_float else self.b.neg(a)
        if op == "not":
            return self.b.xor(a, ir.Constant(I1, 1))
        if op == "abs" and not dt.is_float:
            return self.b.select(self.b.icmp_signed("<", a, ir.Constant(ty, 0)), self.b.neg(a), a)
        if op == "hash32":
            return self._hash32(a)
        return self._math(op, ty, a)

    def _hash32(self, a: ir.Value) -> ir.Value:
        """graphnn.random.lowbias32 of a's low 32 bits, zero-extended to i64."""
        x = self.b.trunc(a, I32)
        for shift, mul in ((16, LOWBIAS32[0]), (15, LOWBIAS32[1]), (16, None)):
            x = self.b.xor(x, self.b.lshr(x, ir.Constant(I32, shift)))
            if mul is not None:  # as a signed i32, which LLVM's parser takes
                x = self.b.mul(x, ir.Constant(I32, mul - (1 << 32) if mul >> 31 else mul))
        return self.b.zext(x, I64)

    def _ipow(self, a: ir.Value, b: ir.Value, ty: ir.IntType) -> ir.Value:
        """a ** b on integers (numpy's: repeated squaring, wrapping), through one helper per
        width; 1 for b <= 0 (kernels flag b < 0 before using it)."""
        name = f"gn_ipow_i{ty.width}"
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [ty, ty]), name)
            fn.linkage = "internal"
            base, exponent = fn.args
            fb = ir.IRBuilder(fn.append_basic_block("entry"))
            entry, head = fb.block, fb.append_basic_block("head")
            body, done = fb.append_basic_block("body"), fb.append_basic_block("done")
            fb.branch(head)
            fb.position_at_end(head)
            r, x, e = (fb.phi(ty) for _ in range(3))
            fb.cbranch(fb.icmp_signed(">", e, ir.Constant(ty, 0)), body, done)
            fb.position_at_end(body)
            odd = fb.trunc(e, I1)
            r.add_incoming(ir.Constant(ty, 1), entry)
            r.add_incoming(fb.select(odd, fb.mul(r, x), r), body)
            x.add_incoming(base, entry)
            x.add_incoming(fb.mul(x, x), body)
            e.add_incoming(exponent, entry)
            e.add_incoming(fb.ashr(e, ir.Constant(ty, 1)), body)
            fb.branch(head)
            fb.position_at_end(done)
            fb.ret(r)
        return self.b.call(fn, [a, b])

    def binary(self, op: str, a: ir.Value, b: ir.Value, dt: DType) -> ir.Value:
        f = dt.is_float
        if op in _FCMP:
            if f:  # ordered compares are false with NaN; != is true with NaN (numpy)
                return self.b.fcmp_unordered("!=", a, b) if op == "ne" \
                    else self.b.fcmp_ordered(_FCMP[op], a, b)
            return self.b.icmp_signed(_FCMP[op], a, b)
        if op in ("max", "min"):
            if f:  # NaN if either is NaN, as numpy's; LLVM's IEEE 754-2019 maximum/minimum,
                # which the loop vectoriser reduces (a compare-and-select chain it does not:
                # a softmax row's max ran scalar). Signed zeros: -0 < +0 (numpy's pick between
                # them depends on the operand order)
                name = f"llvm.{op}imum.{'f32' if dt is DType.float32 else 'f64'}"
                return self._call(name, _REG[dt], a, b)
            wins = self.b.icmp_signed(">" if op == "max" else "<", a, b)
            return self.b.select(wins, a, b)
        if op in ("and", "or", "xor"):
            return getattr(self.b, op + "_")(a, b) if op != "xor" else self.b.xor(a, b)
        if op == "pow":
            return self._math("pow", _REG[dt], a, b) if f else self._ipow(a, b, _REG[dt])
        table = {"add": ("fadd", "add"), "sub": ("fsub", "sub"), "mul": ("fmul", "mul"),
                 "div": ("fdiv", "sdiv")}
        return getattr(self.b, table[op][0 if f else 1])(a, b)

    def cast(self, v: ir.Value, src: DType, dst: DType) -> ir.Value:
        s_ty, d_ty = _REG[src], _REG[dst]
        if src is dst:
            return v
        if src.is_float and dst.is_float:
            return self.b.fpext(v, d_ty) if dst is DType.float64 else self.b.fptrunc(v, d_ty)
        if src.is_float:
            return self.b.fptosi(v, d_ty)
        if dst.is_float:
            return self.b.uitofp(v, d_ty) if src.is_bool else self.b.sitofp(v, d_ty)
        if src.is_bool:
            return self.b.zext(v, d_ty)
        return self.b.sext(v, d_ty) if s_ty.width < d_ty.width else self.b.trunc(v, d_ty)

    # -- vectorisable transcendentals (backends/kernel/approx.py: sources and coefficients) ----
    def _poly(self, x: ir.Value, coeffs: tuple[float, ...], ty: ir.Type) -> ir.Value:
        """Horner: coeffs[0] * x^n + ... + coeffs[n]."""
        acc: ir.Value = ir.Constant(ty, coeffs[0])
        for c in coeffs[1:]:
            acc = self.b.fadd(self.b.fmul(acc, x), ir.Constant(ty, c))
        return acc

    def _exp(self, x: ir.Value, ty: ir.Type) -> ir.Value:
        """exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln2 / 2. Measured max error over
        [-80, 80]: 0.96 ulp (float32), 2.0 ulp (float64) (tests/backends/test_transcendentals.py).
        Overflow gives inf, underflow 0, NaN stays NaN."""
        f32 = ty is F32
        b, c = self.b, lambda v: ir.Constant(ty, v)
        hi_lim, lo_lim = (approx.EXP_HI, approx.EXP_LO) if f32 else \
            (709.782712893384, -708.3964185322641)
        xc = b.select(b.fcmp_ordered(">", x, c(hi_lim)), c(hi_lim), x)
        xc = b.select(b.fcmp_ordered("<", xc, c(lo_lim)), c(lo_lim), xc)
        n = self._math("floor", ty, b.fadd(b.fmul(xc, c(approx.LOG2E)), c(0.5)))
        r = b.fsub(b.fsub(xc, b.fmul(n, c(approx.LN2_HI if f32 else 6.93145751953125e-1))),
                   b.fmul(n, c(approx.LN2_LO if f32 else 1.42860682030941723212e-6)))
        if f32:
            z = b.fmul(r, r)
            p = self._poly(r, approx.EXP_P, ty)
            e = b.fadd(b.fadd(b.fmul(p, z), r), c(1.0))
        else:
            z = b.fmul(r, r)
            px = b.fmul(r, self._poly(z, (1.26177193074810590878e-4, 3.02994407707441961300e-2,
                                          9.99999999999999999910e-1), ty))
            q = self._poly(z, (3.00198505138664455042e-6, 2.52448340349684104192e-3,
                               2.27265548208155028766e-1, 2.00000000000000000009e0), ty)
            e = b.fadd(c(1.0), b.fmul(c(2.0), b.fdiv(px, b.fsub(q, px))))
        # 2^n by building the exponent bits, in two halves so n = 128 (or 1024) cannot overflow
        it, bits, bias = (I32, 23, 127) if f32 else (I64, 52, 1023)
        ni = b.fptosi(n, it)
        half = b.ashr(ni, ir.Constant(it, 1))
        scale1 = b.bitcast(b.shl(b.add(half, ir.Constant(it, bias)), ir.Constant(it, bits)), ty)
        scale2 = b.bitcast(b.shl(b.add(b.sub(ni, half), ir.Constant(it, bias)),
                                 ir.Constant(it, bits)), ty)
        out = b.fmul(b.fmul(e, scale1), scale2)
        out = b.select(b.fcmp_ordered(">", x, c(hi_lim)), c(float("inf")), out)
        out = b.select(b.fcmp_ordered("<", x, c(lo_lim - (16 if f32 else 36))), c(0.0), out)
        return b.select(b.fcmp_unordered("uno", x, x), x, out)

    def _tanh(self, x: ir.Value, ty: ir.Type) -> ir.Value:
        """tanh: an odd polynomial (float32) or rational (float64) for |x| < 0.625, else
        sign(x) (1 - 2 / (exp(2|x|) + 1)). Measured max error over [-80, 80]: 1.11 ulp (float32),
        1.0 ulp (float64)."""
        f32 = ty is F32
        b, c = self.b, lambda v: ir.Constant(ty, v)
        ax = self._math("abs", ty, x)
        z = b.fmul(x, x)
        if f32:
            small = b.fadd(b.fmul(b.fmul(self._poly(z, approx.TANH_P, ty), z), x), x)
        else:
            pz = self._poly(z, (-9.64399179425052238628e-1, -9.92877231001918586564e1,
                                -1.61468768441708447952e3), ty)
            qz = self._poly(z, (1.0, 1.12811678491632931402e2, 2.23548839060100448583e3,
                                4.84406305325125486048e3), ty)
            small = b.fadd(x, b.fmul(b.fmul(x, z), b.fdiv(pz, qz)))
        big = b.fsub(c(1.0), b.fdiv(c(2.0), b.fadd(self._exp(b.fmul(ax, c(2.0)), ty), c(1.0))))
        big = b.select(b.fcmp_ordered("<", x, c(0.0)), b.fneg(big), big)
        return b.select(b.fcmp_ordered("<", ax, c(approx.TANH_SMALL)), small, big)

    def _erf(self, x: ir.Value, ty: ir.Type) -> ir.Value:
        """float32 erf, vectorisable (GELU's): sign(x) times |x| P(x^2) for |x| < 1 (P of degree
        6, a least-squares fit to erf(x)/x, relative error 3e-9 in exact arithmetic), else a
        degree-13 polynomial in |x| mapped onto [-1, 1] from [1, 3.85] (the Chebyshev
        interpolant, absolute error 3e-8), and 1 from 3.92 on, where float32's erf is 1: no
        exp and no division (the complement form 1 - exp(-x^2) R(1 / (1 + |x|/2)) it replaces
        took 0.4 ms of W4 batch 8's 2 ms FFN GEMM + GELU). Measured max error over [-8, 8] and
        tiny arguments: 2.3 ulp (tests/backends/test_transcendentals.py). float64 keeps libm's
        erf."""
        b, c = self.b, lambda v: ir.Constant(ty, v)
        ax = self._math("abs", ty, x)
        small = b.fmul(ax, self._poly(b.fmul(ax, ax), approx.ERF_P, ty))
        # a select, not minnum, so a NaN stays NaN
        xc = b.select(b.fcmp_ordered(">", ax, c(approx.ERF_HI)), c(approx.ERF_HI), ax)
        u = b.fadd(b.fmul(xc, c(approx.ERF_SCALE)), c(approx.ERF_SHIFT))
        big = b.select(b.fcmp_ordered(">=", ax, c(approx.ERF_ONE)), c(1.0),
                       self._poly(u, approx.ERF_Q, ty))
        mag = b.select(b.fcmp_ordered("<", ax, c(1.0)), small, big)
        return self._call("llvm.copysign.f32", ty, mag, x)  # odd, and erf(-0) = -0


def _allow_contraction(fn: ir.GlobalValue) -> None:
    """Mark ``fn``'s float multiplies and adds ``contract``: LLVM fuses a multiply feeding an
    add into one FMA where the target has one (clang does so within an expression by default).
    One rounding instead of two: results may differ from numpy's (two roundings) in the last
    bit, usually towards the exact value. Dot products, polynomials and the exp/tanh/erf
    approximations take about half the instructions (W5: 19-20 -> 14-15 ms)."""
    if not isinstance(fn, ir.Function):
        return
    for block in fn.blocks:
        for inst in block.instructions:
            if inst.opname in ("fmul", "fadd", "fsub", "fneg") and "contract" not in inst.flags:
                inst.flags.append("contract")


def _is_sum(s: Assign) -> bool:
    """``x = x + e`` (or ``e + x``) on a float local: a reduction's running sum."""
    v = s.value
    return isinstance(v, Binary) and v.op == "add" and v.dtype.is_float and any(
        isinstance(t, Var) and t.name == s.name for t in (v.a, v.b))


def _dtype(e: Expr) -> DType:
    return e.dtype
