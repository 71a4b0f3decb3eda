"""Rendering kernel IR as OpenCL C: one program holding every kernel of a graph.

A kernel's outer parallel loop becomes the NDRange: its iterations, and those of the perfectly
nested loops under it whose iterations are independent, are collapsed into one global index
(``get_global_id(0)``), rounded up to whole work-groups and guarded. A kernel without a parallel
loop runs as one work-item. Matmul nests (``Kernel.schedule == ("matmul", a, b)``) use a template
tiled through local memory on GPUs and a register-blocked one on CPU devices, convolutions a
direct template with one output per work-item; fused epilogues are applied to the accumulator
before the store.
Scalar locals are hoisted to the top of the kernel (they are private to a work-item), bool buffers
are one byte per element (numpy's layout), and float64 needs ``cl_khr_fp64``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
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
    Param,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
    const_i,
    geometry,
    subexpressions,
)
from graphnn.backends.kernel.lower import matmul_index, splits_columns

from graphnn.dtypes import DType
from graphnn.random import LOWBIAS32

CTYPE = {DType.float32: "float", DType.float64: "double", DType.int32: "int",
         DType.int64: "long", DType.bool: "uchar"}
_REG = {**CTYPE, DType.bool: "int"}  # bools are 0/1 ints in registers
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">",
          "ge": ">=", "eq": "==", "ne": "!=", "and": "&", "or": "|", "xor": "^"}
_MATH = {"exp": "exp", "log": "log", "log1p": "log1p", "expm1": "expm1", "sqrt": "sqrt",
         "sin": "sin", "cos": "cos", "tanh": "tanh", "erf": "erf", "floor": "floor",
         "ceil": "ceil", "round": "rint", "abs": "fabs"}  # rint: halves to even, as numpy

# max/min with numpy's NaN rule, and integer abs, as functions: an argument used twice in a
# macro would duplicate whole subexpressions (exponentially, in nested fused bodies). NaN is
# tested as a != a: PoCL's isnan() does not vectorise (a 2x2 max-pool took 9 ms against 3.5).
_HELPERS = """
inline float gn_max_float(float a, float b) { return (a > b || a != a) ? a : b; }
inline float gn_min_float(float a, float b) { return (a < b || a != a) ? a : b; }
inline int gn_abs_int(int a) { return a < 0 ? -a : a; }
inline long gn_abs_long(long a) { return a < 0 ? -a : a; }
inline int gn_ipow_int(int a, int b) {  /* numpy's integer pow; 1 for b <= 0 (flagged) */
    uint r = 1, x = (uint)a;
    while (b > 0) { if (b & 1) r *= x; x *= x; b >>= 1; }
    return (int)r;
}
inline long gn_ipow_long(long a, long b) {
    ulong r = 1, x = (ulong)a;
    while (b > 0) { if (b & 1) r *= x; x *= x; b >>= 1; }
    return (long)r;
}
inline long gn_hash32(long v) {  /* graphnn.random.lowbias32 of v's low 32 bits */
    uint x = (uint)v;
    x ^= x >> 16; x *= GN_M1; x ^= x >> 15; x *= GN_M2; x ^= x >> 16;
    return (long)x;
}
""".replace("GN_M1", f"{LOWBIAS32[0]:#x}U").replace("GN_M2", f"{LOWBIAS32[1]:#x}U")
_HELPERS_FP64 = """
inline double gn_max_double(double a, double b) { return (a > b || a != a) ? a : b; }
inline double gn_min_double(double a, double b) { return (a < b || a != a) ? a : b; }
"""
TILE = 16  # matmul tile edge (GPUs): TILE x TILE work-items share TILE x TILE tiles of a and b


def tile_for(max_work_group_size: int, local_mem_bytes: int, itemsize: int = 8) -> int:
    """The largest matmul tile edge (16, 8, 4, 2 or 1) whose work-group (edge^2 work-items) and
    two padded tiles (2 * edge * (edge + 1) elements) fit the device's limits."""
    edge = TILE
    while edge > 1 and (edge * edge > max_work_group_size
                        or 2 * edge * (edge + 1) * itemsize > local_mem_bytes):
        edge //= 2
    return edge
# matmul register block (CPU devices): rows x columns per work-item. 6 x 16 keeps 12 AVX2
# accumulators, two b vectors and a broadcast in 16 registers; on PoCL, 2 cores: 100-135
# GFLOP/s against 75-100 for 8 x 8 and 8 x 16.
MM_ROWS, MM_COLS = 6, 16
CONV_CHANNELS, CONV_PIXELS = 8, 8  # convolution register block (CPU devices)
# Collapsed-loop kernels of at least this many iterations run the device's vector width of them
# per work-item: on PoCL that made a 16M-element kernel 3x faster but doubles its compile time,
# which only large kernels repay (the OpenCL gradient tests, cold, took 275 s against 502)
LANES_MIN = 1 << 16
# GPUs: convolutions with at least this many output channels per group run as an implicit GEMM
# (one tile of rows); depthwise and narrow groups compute one output per work-item
CONV_GEMM_CHANNELS = 16


@dataclass(frozen=True)
class Launch:
    """How to run one rendered kernel: NDRange sizes in work-items (local None: the
    implementation chooses)."""

    name: str
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None
    fp64: bool


def _const(c: Const) -> str:
    v = c.value
    if c.dtype.is_float:
        x = float(v)
        suffix = "f" if c.dtype is DType.float32 else ""
        cast = "" if c.dtype is DType.float32 else "(double)"
        if math.isnan(x):
            return f"{cast}NAN"
        if math.isinf(x):
            return f"({'-' if x < 0 else ''}{cast}INFINITY)"
        return f"{x!r}{suffix}" if ("e" in repr(x) or "." in repr(x)) else f"{x!r}.0{suffix}"
    if c.dtype is DType.bool:
        return "1" if v else "0"
    i = int(v)
    if c.dtype is DType.int64:
        return "(-9223372036854775807L - 1)" if i == -2**63 else f"{i}L"
    return "(-2147483647 - 1)" if i == -2**31 else str(i)


def _reads(stmts: tuple[Stmt, ...]) -> set[int]:
    return {buf for buf, _ in _loads(stmts)}


def _loads(stmts: tuple[Stmt, ...]) -> set[tuple[int, Expr]]:
    """(buffer, index) of every load in ``stmts``."""
    roots: list[Expr] = []
    for s in _walk(stmts):
        if isinstance(s, Store):
            roots += (s.index, s.value)
        elif isinstance(s, Declare):
            roots.append(s.init)
        elif isinstance(s, Assign):
            roots.append(s.value)
    return {(x.buf, x.index) for root in roots for x in subexpressions(root)
            if isinstance(x, Load)}


def _walk(stmts: tuple[Stmt, ...]) -> list[Stmt]:
    out: list[Stmt] = []
    for s in stmts:
        out.append(s)
        if isinstance(s, Loop):
            out.extend(_walk(s.body))
    return out


def _mentions(e: Expr, name: str) -> bool:
    return any(isinstance(x, Var) and x.name == name for x in subexpressions(e))


def independent(loop: Loop, params: tuple[Param, ...]) -> bool:
    """Iterations of ``loop`` can run concurrently: its stores are apart (``_stores_apart``)
    and every scalar it assigns is declared inside it (private to the iteration)."""
    body = _walk(loop.body)
    declared = {s.name for s in body if isinstance(s, Declare)}
    return _stores_apart(loop, params) and \
        all(s.name in declared for s in body if isinstance(s, Assign))


def _shared_reads(stmts: tuple[Stmt, ...]) -> set[int]:
    """Buffers the statements store to and also read elsewhere than where they store: a
    buffer read and written only at one index (``out[i] = out[i] / s``) is private to the
    iteration."""
    stored: dict[int, set[Expr]] = {}
    for s in _walk(stmts):
        if isinstance(s, Store):
            stored.setdefault(s.buf, set()).add(s.index)
    return {buf for buf, index in _loads(stmts)
            if buf in stored and stored[buf] != {index}}


def _stores_apart(loop: Loop, params: tuple[Param, ...]) -> bool:
    """The loop's stores write distinct elements per iteration (every store depends on its
    variable; a status flag is the exception: every iteration that writes it writes the same
    code), and nothing the loop reads elsewhere than where it stores."""
    body = _walk(loop.body)
    return (not _shared_reads(loop.body)
            and all(_mentions(s.index, loop.var) for s in body
                    if isinstance(s, Store) and not params[s.buf].status))


def parallel_nest(kernel: Kernel) -> list[Loop]:
    """The loops collapsed into the NDRange: the outer parallel loop and the perfectly nested,
    independent loops under it (empty: the kernel runs as one work-item)."""
    if len(kernel.body) != 1 or not isinstance(kernel.body[0], Loop) or \
            not kernel.body[0].parallel:
        return []
    nest = [kernel.body[0]]
    while len(nest[-1].body) == 1 and isinstance(nest[-1].body[0], Loop) and \
            independent(nest[-1].body[0], kernel.params):
        nest.append(nest[-1].body[0])
    return nest


class KernelRenderer:
    """Renders one kernel to OpenCL C (``render``) and says how to launch it (``launch``)."""

    def __init__(self, kernel: Kernel, work_group: int, cpu: bool = False,
                 work_group_max: int = 256, tile: int = TILE, units: int = 1,
                 local_bytes: int = 32768, lanes: int = 1) -> None:
        self.k = kernel
        self.lanes = lanes  # consecutive iterations per work-item in collapsed-loop kernels
        self.units = units  # the device's compute units: work-groups worth filling
        self.local_bytes = local_bytes  # the device's local memory per work-group
        self.tile = tile  # matmul tile edge on GPUs (tile_for: from the device's limits)
        self.work_group = work_group
        self.work_group_max = work_group_max  # work-items of a row's group (a power of two)
        self.cpu = cpu  # a CPU device: register-blocked templates instead of local-memory tiles
        self.locals: dict[str, DType] = {}
        for s in _walk(kernel.body):
            if isinstance(s, Declare):
                if self.locals.setdefault(s.name, s.dtype) is not s.dtype:
                    raise TypeError(f"{kernel.name}: local {s.name} declared with two dtypes")
        self.fp64 = any(p.dtype is DType.float64 for p in kernel.params) or any(
            d is DType.float64 for d in self.locals.values())
        self.lines: list[str] = []

    # -- expressions ---------------------------------------------------------------------------
    def var(self, name: str) -> str:
        return f"l_{name}" if name in self.locals else f"v_{name}"

    def expr(self, e: Expr) -> str:
        if isinstance(e, Const):
            return _const(e)
        if isinstance(e, Var):
            return self.var(e.name)
        if isinstance(e, Load):
            at = f"p{e.buf}[{self.expr(e.index)}]"
            return f"({at} != 0)" if self.k.params[e.buf].dtype is DType.bool else at
        if isinstance(e, Unary):
            return self.unary(e.op, self.expr(e.a), e.a.dtype)
        if isinstance(e, Binary):
            return self.binary(e.op, self.expr(e.a), self.expr(e.b), e.a.dtype)
        if isinstance(e, Select):
            return f"({self.expr(e.cond)} ? {self.expr(e.a)} : {self.expr(e.b)})"
        if isinstance(e, Cast):
            if e.dtype is DType.bool:
                return f"({self.expr(e.a)} != 0)"
            return f"(({_REG[e.dtype]})({self.expr(e.a)}))"
        raise TypeError(e)  # pragma: no cover

    def unary(self, op: str, a: str, dt: DType) -> str:
        if op == "neg":
            return f"(-{a})"
        if op == "not":
            return f"(!{a})"
        if op == "abs" and not dt.is_float:
            return f"gn_abs_{_REG[dt]}({a})"
        if op == "hash32":
            return f"gn_hash32({a})"
        if self.cpu and dt is DType.float32 and op in ("exp", "tanh", "erf"):
            return f"gn_{op}_f32({a})"  # inline arithmetic: PoCL's builtins do not vectorise
        return f"{_MATH[op]}({a})"

    def binary(self, op: str, a: str, b: str, dt: DType) -> str:
        if op in ("max", "min"):
            return f"gn_{op}_{_REG[dt]}({a}, {b})" if dt.is_float else f"{op}({a}, {b})"
        if op == "pow":
            return f"pow({a}, {b})" if dt.is_float else f"gn_ipow_{_REG[dt]}({a}, {b})"
        return f"({a} {_INFIX[op]} {b})"

    # -- statements ----------------------------------------------------------------------------
    def emit(self, line: str, depth: int) -> None:
        self.lines.append("    " * depth + line)

    def stmt(self, s: Stmt, depth: int) -> None:
        if isinstance(s, Loop):
            v = self.var(s.var)
            self.emit(f"for (long {v} = 0; {v} < {s.extent}L; ++{v}) {{", depth)
            for inner in s.body:
                self.stmt(inner, depth + 1)
            self.emit("}", depth)
        elif isinstance(s, Store):
            value = self.expr(s.value)
            if self.k.params[s.buf].dtype is DType.bool:
                value = f"(uchar)({value})"
            guard = "" if s.mask is None else f"if ({self.expr(s.mask)}) "
            self.emit(f"{guard}p{s.buf}[{self.expr(s.index)}] = {value};", depth)
        elif isinstance(s, Declare):
            self.emit(f"l_{s.name} = {self.expr(s.init)};", depth)
        else:
            self.emit(f"l_{s.name} = {self.expr(s.value)};", depth)

    def signature(self, attributes: str = "") -> str:
        params = []
        for i, p in enumerate(self.k.params):
            const = "" if p.output or any(isinstance(s, Store) and s.buf == i
                                          for s in _walk(self.k.body)) else "const "
            params.append(f"__global {const}{CTYPE[p.dtype]} *restrict p{i}")
        return f"__kernel {attributes}void {self.k.name}({', '.join(params)})"

    # -- whole kernels -------------------------------------------------------------------------
    def render(self) -> tuple[str, Launch]:
        if self.k.schedule[:1] == ("matmul",):
            return self._matmul_blocked() if self.cpu else self._matmul()
        if self.k.schedule[:1] == ("conv",):
            # a channel block must lie in one group: depthwise and narrow groups go one by one
            per_group = self.k.params[-1].shape[1] // int(self.k.schedule[4])
            if self.cpu:
                return self._conv_blocked() if per_group % CONV_CHANNELS == 0 else self._conv()
            return self._conv_gemm() if per_group >= CONV_GEMM_CHANNELS else self._conv()
        if self.k.schedule[:1] == ("conv_weight_grad",) and not self.cpu:
            return self._weight_grad_gemm()
        if self.k.schedule[:1] == ("conv_transpose",) and not self.cpu and \
                self.k.params[int(self.k.schedule[2])].shape[1] >= CONV_GEMM_CHANNELS:
            return self._transpose_gemm()
        if not self.cpu:
            plan = self._row_plan()
            if plan is not None:
                return self._cooperative(plan)
        nest = parallel_nest(self.k)
        self.emit(self.signature() + " {", 0)
        for name, dt in self.locals.items():
            self.emit(f"{_REG[dt]} l_{name};", 1)
        if not nest:
            for s in self.k.body:
                self.stmt(s, 1)
            self.emit("}", 0)
            return "\n".join(self.lines), Launch(self.k.name, (1,), (1,), self.fp64)
        total = math.prod(loop.extent for loop in nest)
        if total == 0:  # an empty index space: never launched
            self.emit("}", 0)
            return "\n".join(self.lines), Launch(self.k.name, (0,), None, self.fp64)
        lanes = min(self.lanes, total) if total >= LANES_MIN else 1
        depth = 1
        if lanes == 1:
            self.emit("const long g = (long)get_global_id(0);", 1)
            self.emit(f"if (g >= {total}L) return;", 1)
        else:  # the device's vector width of consecutive iterations per work-item: on PoCL
            # that vectorises where one iteration each did not (13 -> 4 ms for 16M elements)
            self.emit(f"const long g0 = (long)get_global_id(0) * {lanes}L;", 1)
            self.emit(f"const long g1 = g0 + {lanes}L < {total}L ? g0 + {lanes}L : {total}L;", 1)
            self.emit("for (long g = g0; g < g1; ++g) {", 1)
            depth = 2
        inner = total
        for loop in nest:  # the multi-index of g, outermost loop first
            inner //= max(loop.extent, 1)
            q = f"g / {inner}L" if inner != 1 else "g"
            self.emit(f"const long {self.var(loop.var)} = ({q}) % {loop.extent}L;"
                      if loop is not nest[0] else f"const long {self.var(loop.var)} = {q};",
                      depth)
        for s in nest[-1].body:
            self.stmt(s, depth)
        if lanes > 1:
            self.emit("}", 1)
        self.emit("}", 0)
        wg = self.work_group
        items = -(-total // lanes)
        size = -(-items // wg) * wg
        return "\n".join(self.lines), Launch(self.k.name, (size,), (wg,), self.fp64)

    def _matmul(self) -> tuple[str, Launch]:
        """out = a @ b for GPUs through ``_tiled_gemm``; batch dims ride on the NDRange's third
        axis. The kernel's epilogue (bias, activation, residual) is applied to each accumulator
        before its store."""
        _, a, b = self.k.schedule
        assert isinstance(a, int) and isinstance(b, int)
        po, pa = self.k.params[-1], self.k.params[a]
        out_buf = len(self.k.params) - 1
        batch, (m, n), kk = po.shape[:-2], po.shape[-2:], pa.shape[-1]
        i, j, k = Var("i"), Var("j"), Var("k")
        a_at = self.expr(matmul_index(pa.shape, batch, i, k))
        b_at = self.expr(matmul_index(self.k.params[b].shape, batch, k, j))
        out_at = self.expr(matmul_index(po.shape, batch, i, j))
        epilogue = self._epilogue(out_buf)
        value = self.var("acc") if epilogue is None else self._with_acc(epilogue, out_buf)
        prelude = ["long rest = get_global_id(2);"]
        for d in reversed(range(len(batch))):
            prelude.append(f"const long v_b{d} = rest % {batch[d]}L; rest /= {batch[d]}L;")
        return self._tiled_gemm(
            m, n, kk, max(math.prod(batch), 1), prelude,
            lambda row, q, to: [f"const long v_i = {row}, v_k = {q};", f"{to} = p{a}[{a_at}];"],
            lambda q, col, to: [f"const long v_k = {q}, v_j = {col};", f"{to} = p{b}[{b_at}];"],
            lambda row, col: [f"const long v_i = {row}, v_j = {col};",
                              f"p{out_buf}[{out_at}] = {value};"])

    def _conv_gemm(self) -> tuple[str, Launch]:
        """Convolution for GPUs as an implicit GEMM through ``_tiled_gemm``: per (image, group),
        out[o, p] = bias[o] + sum over k of w[o, k] * cols[k, p], k running over (input
        channel, taps) and p over output pixels; cols is never stored: each element of b's
        local-memory slice is gathered from x (zero outside the image). The fused epilogue is
        applied before each store."""
        _, xb, wb, bb, groups = self.k.schedule[:5]
        x, w, out = self.k.params[int(xb)], self.k.params[int(wb)], self.k.params[-1]
        nd, ng = len(x.shape) - 2, int(groups)
        stride, dil, pads = geometry(self.k.schedule, nd)
        n_out, c_out, c_in = out.shape[0], out.shape[1], x.shape[1]
        cg, taps, og = w.shape[1], w.shape[2:], c_out // ng
        osz, xsz = out.shape[2:], x.shape[2:]
        ntaps, pixels = math.prod(taps), math.prod(osz)
        prelude = [f"const long n = get_global_id(2) / {ng}L, grp = get_global_id(2) % {ng}L;"]

        def cols(q: str, col: str, to: str) -> list[str]:
            lines = [f"const long c = {q} / {ntaps}L;",
                     *self._spatial(f"{q} % {ntaps}L", taps, "t"),
                     *self._spatial(col, osz, "y")]
            return lines + self._gather(xb, xsz, f"n * {c_in}L + grp * {cg}L + c", stride, dil,
                                        pads, to)

        return self._tiled_gemm(
            og, pixels, cg * ntaps, n_out * ng, prelude,
            lambda row, q, to: [f"{to} = p{wb}[(grp * {og}L + {row}) * {cg * ntaps}L + {q}];"],
            cols, self._plane_store(og, int(bb)))

    def _plane_store(self, og: int, bias: int) -> Callable[[str, str], list[str]]:
        """The store of a convolution-like implicit GEMM's output (row: output channel within
        group ``grp``, column: output pixel of image ``n``): the bias (buffer ``bias``, or
        none if negative), then the fused epilogue, with the IR's names ``v_no`` and ``v_y*``
        bound for it."""
        out = self.k.params[-1]
        c_out, osz, out_buf = out.shape[1], out.shape[2:], len(self.k.params) - 1
        pixels, value, acc = math.prod(osz), self._conv_value(out_buf), self.var("acc")

        def store(row: str, col: str) -> list[str]:
            lines = [f"const long o = grp * {og}L + {row};", f"const long v_no = n * {c_out}L + o;",
                     *self._spatial(col, osz, "v_y")]
            if bias >= 0:
                lines.append(f"{acc} += p{bias}[o];")
            return [*lines, f"p{out_buf}[v_no * {pixels}L + {col}] = {value};"]

        return store

    def _spatial(self, flat: str, sizes: tuple[int, ...], name: str) -> list[str]:
        """C statements declaring ``name0``, ``name1``...: the row-major multi-index of the
        expression ``flat`` over ``sizes``."""
        lines = [f"long {name}r = {flat};"]
        for d in reversed(range(len(sizes))):
            lines.append(f"const long {name}{d} = {name}r % {sizes[d]}L; {name}r /= {sizes[d]}L;")
        return lines

    def _weight_grad_gemm(self) -> tuple[str, Launch]:
        """conv_weight_grad for GPUs as an implicit GEMM through ``_tiled_gemm``, one product
        per group: dW[o, k] = sum over (image, output pixel) q of dy[o, q] * cols[q, k], k
        running over (input channel, taps); cols is gathered from x into local memory, never
        stored."""
        _, xb, db, groups = self.k.schedule[:4]
        x, dy, dw = self.k.params[int(xb)], self.k.params[int(db)], self.k.params[-1]
        nd, ng = len(x.shape) - 2, int(groups)
        stride, dil, pads = geometry(self.k.schedule, nd)
        c_out, cg, taps = dw.shape[0], dw.shape[1], dw.shape[2:]
        og, c_in, osz, xsz = c_out // ng, x.shape[1], dy.shape[2:], x.shape[2:]
        ntaps, pixels, k_len = math.prod(taps), math.prod(osz), cg * math.prod(taps)

        def dy_load(row: str, q: str, to: str) -> list[str]:
            return [f"const long n = {q} / {pixels}L, p = {q} % {pixels}L;",
                    f"{to} = p{db}[(n * {c_out}L + grp * {og}L + {row}) * {pixels}L + p];"]

        def cols(q: str, col: str, to: str) -> list[str]:
            lines = [f"const long n = {q} / {pixels}L, c = {col} / {ntaps}L;",
                     *self._spatial(f"{q} % {pixels}L", osz, "y"),
                     *self._spatial(f"{col} % {ntaps}L", taps, "t")]
            return lines + self._gather(xb, xsz, f"n * {c_in}L + grp * {cg}L + c", stride, dil,
                                        pads, to)

        return self._tiled_gemm(
            og, k_len, dy.shape[0] * pixels, ng, ["const long grp = get_global_id(2);"],
            dy_load, cols, lambda row, col: [
                f"p{len(self.k.params) - 1}[(grp * {og}L + {row}) * {k_len}L + {col}] = "
                f"{self.var('acc')};"])

    def _transpose_gemm(self) -> tuple[str, Launch]:
        """conv_transpose for GPUs as an implicit GEMM through ``_tiled_gemm``, per (image,
        group): out[o, z] = bias[o] + sum over k = (input channel c, taps t) of w[c, o, t] *
        x[c, i] where i * stride = z + pad - t * dilation (ONNX ConvTranspose), gathered into
        local memory (zero where no i exists). The fused epilogue is applied before each
        store."""
        _, xb, wb, bb, groups = self.k.schedule[:5]
        x, w, out = self.k.params[int(xb)], self.k.params[int(wb)], self.k.params[-1]
        nd, ng = len(x.shape) - 2, int(groups)
        stride, dil, pads = geometry(self.k.schedule, nd)
        n_out, c_in = out.shape[0], x.shape[1]
        cpg, cog, taps = c_in // ng, w.shape[1], w.shape[2:]
        osz, xsz = out.shape[2:], x.shape[2:]
        ntaps, pixels = math.prod(taps), math.prod(osz)

        def w_load(row: str, q: str, to: str) -> list[str]:
            return [f"const long c = {q} / {ntaps}L, t = {q} % {ntaps}L;",
                    f"{to} = p{wb}[((grp * {cpg}L + c) * {cog}L + {row}) * {ntaps}L + t];"]

        def x_load(q: str, col: str, to: str) -> list[str]:
            lines = [f"const long c = {q} / {ntaps}L;",
                     *self._spatial(f"{q} % {ntaps}L", taps, "t"),
                     *self._spatial(col, osz, "y")]
            inside, at = [], f"n * {c_in}L + grp * {cpg}L + c"
            for d in range(nd):
                lines.append(f"const long u{d} = y{d} + {pads[d]}L - t{d} * {dil[d]}L, "
                             f"i{d} = u{d} / {stride[d]}L;")
                inside.append(f"u{d} >= 0 && u{d} == i{d} * {stride[d]}L && i{d} < {xsz[d]}L")
                at = f"({at}) * {xsz[d]}L + i{d}"
            return [*lines, f"{to} = ({' && '.join(inside)}) ? p{xb}[{at}] : 0;"]

        return self._tiled_gemm(
            cog, pixels, cpg * ntaps, n_out * ng,
            [f"const long n = get_global_id(2) / {ng}L, grp = get_global_id(2) % {ng}L;"],
            w_load, x_load, self._plane_store(cog, int(bb)))

    def _gather(self, xb: int | str, xsz: tuple[int, ...], plane: str, stride: tuple[int, ...],
                dil: tuple[int, ...], pads: tuple[int, ...], to: str) -> list[str]:
        """``to = x[plane, y*stride + t*dil - pad]``, 0 outside the image (``y0...`` and
        ``t0...`` declared by the caller)."""
        lines, inside, at = [], [], plane
        for d in range(len(xsz)):
            lines.append(f"const long h{d} = y{d} * {stride[d]}L + t{d} * {dil[d]}L - "
                         f"{pads[d]}L;")
            inside.append(f"h{d} >= 0 && h{d} < {xsz[d]}L")
            at = f"({at}) * {xsz[d]}L + h{d}"
        return [*lines, f"{to} = ({' && '.join(inside)}) ? p{xb}[{at}] : 0;"]

    def _tiled_gemm(self, m: int, n: int, kk: int, nb: int, prelude: list[str],
                    a_load: Callable[[str, str, str], list[str]],
                    b_load: Callable[[str, str, str], list[str]],
                    store: Callable[[str, str], list[str]]) -> tuple[str, Launch]:
        """A GEMM template for GPUs, for ``nb`` independent m x n x kk products (the NDRange's
        third axis; ``prelude`` decodes it): each TILE x TILE work-group stages a (TILE*R) x TILE
        slice of a and a TILE x (TILE*R) slice of b per step in local memory, and each
        work-item accumulates R x R outputs in registers (rows li + r*TILE, columns
        lj + c*TILE, so neighbouring work-items read neighbouring local words). R is the largest
        of 4, 2, 1 that still gives every compute unit a work-group and fits local memory.
        ``a_load(row, k, target)`` and ``b_load(k, col, target)`` give the statements that set
        ``target`` to a[row, k] and b[k, col] (indices known in range); ``store(row, col)``
        those that store the accumulator of out[row, col], named ``self.var("acc")``."""
        ty = _REG[self.k.params[-1].dtype]
        t = self.tile
        r = next(r for r in (4, 2, 1) if r == 1 or (
            -(-m // (t * r)) * -(-n // (t * r)) * nb >= self.units
            and 2 * t * (t * r + 1) * self.k.params[-1].dtype.itemsize <= self.local_bytes))
        bm = t * r  # rows (and columns) of the output block
        e = self.emit
        e(self.signature(f"__attribute__((reqd_work_group_size({t}, {t}, 1))) ") + " {", 0)
        e(f"__local {ty} as[{t}][{bm + 1}];", 1)  # as[k][row]: a's slice, transposed
        e(f"__local {ty} bs[{t}][{bm + 1}];", 1)  # bs[k][column]
        e("const int lj = get_local_id(0), li = get_local_id(1);", 1)
        e(f"const int lid = li * {t} + lj;", 1)
        e(f"const long i0 = get_group_id(1) * {bm}L, j0 = get_group_id(0) * {bm}L;", 1)
        for line in prelude:
            e(line, 1)
        e(" ".join(f"{ty} acc{x}_{y} = 0;" for x in range(r) for y in range(r)), 1)
        e(f"for (long k0 = 0; k0 < {kk}L; k0 += {t}) {{", 1)
        e(f"for (int f = lid; f < {bm * t}; f += {t * t}) {{", 2)  # a: k fastest (coalesced)
        e(f"const int row = f / {t}, q = f % {t};", 3)
        e(f"if (i0 + row < {m}L && k0 + q < {kk}L) {{", 3)
        for line in a_load("(i0 + row)", "(k0 + q)", "as[q][row]"):
            e(line, 4)
        e(f"}} else as[q][row] = ({ty})0;", 3)
        e("}", 2)
        e(f"for (int f = lid; f < {bm * t}; f += {t * t}) {{", 2)  # b: columns fastest
        e(f"const int q = f / {bm}, col = f % {bm};", 3)
        e(f"if (k0 + q < {kk}L && j0 + col < {n}L) {{", 3)
        for line in b_load("(k0 + q)", "(j0 + col)", "bs[q][col]"):
            e(line, 4)
        e(f"}} else bs[q][col] = ({ty})0;", 3)
        e("}", 2)
        e("barrier(CLK_LOCAL_MEM_FENCE);", 2)
        e(f"for (int q = 0; q < {t}; ++q) {{", 2)
        e(" ".join(f"const {ty} ar{x} = as[q][li + {x * t}];" for x in range(r)), 3)
        e(" ".join(f"const {ty} bc{y} = bs[q][lj + {y * t}];" for y in range(r)), 3)
        e(" ".join(f"acc{x}_{y} += ar{x} * bc{y};" for x in range(r) for y in range(r)), 3)
        e("}", 2)
        e("barrier(CLK_LOCAL_MEM_FENCE);", 2)
        e("}", 1)
        for x in range(r):
            for y in range(r):
                e(f"if (i0 + li + {x * t} < {m}L && j0 + lj + {y * t} < {n}L) {{", 1)
                e(f"{ty} {self.var('acc')} = acc{x}_{y};", 2)  # l_acc where the IR declares it
                for line in store(f"(i0 + li + {x * t})", f"(j0 + lj + {y * t})"):
                    e(line, 2)
                e("}", 1)
        e("}", 0)
        size = (-(-n // bm) * t, -(-m // bm) * t, nb)
        return "\n".join(self.lines), Launch(self.k.name, size, (t, t, 1), self.fp64)

    def _open_flat(self, total: int) -> tuple[str, Launch] | None:
        """Open a kernel over ``total`` work-items (``g``, guarded against the rounding up);
        for an empty index space, return the whole kernel (empty, never launched)."""
        self.emit(self.signature() + " {", 0)
        if total == 0:
            self.emit("}", 0)
            return "\n".join(self.lines), Launch(self.k.name, (0,), None, self.fp64)
        self.emit("const long g = (long)get_global_id(0);", 1)
        self.emit(f"if (g >= {total}L) return;", 1)
        return None

    def _conv(self) -> tuple[str, Launch]:
        """Direct convolution, one output element per work-item (NCHW): the accumulator starts
        at the bias and sums w * x over input channels and taps inside the image; the fused
        epilogue is applied before the store. Work-items along the output row are neighbours,
        so their loads of x coalesce (and vectorise on CPU devices)."""
        _, xb, wb, bb, groups = self.k.schedule[:5]
        x, w, out = self.k.params[int(xb)], self.k.params[int(wb)], self.k.params[-1]
        nd = len(x.shape) - 2
        stride, dil, pads = geometry(self.k.schedule, nd)
        n_out, c_out, c_in = out.shape[0], out.shape[1], x.shape[1]
        cg, taps, og = w.shape[1], w.shape[2:], c_out // int(groups)
        out_buf = len(self.k.params) - 1
        ty = _REG[out.dtype]
        total = math.prod(out.shape)
        e = self.emit
        empty = self._open_flat(total)
        if empty is not None:
            return empty
        e("long rest = g;", 1)
        for d in reversed(range(nd)):
            e(f"const long v_y{d} = rest % {out.shape[2 + d]}L; rest /= {out.shape[2 + d]}L;", 1)
        plane = total // (n_out * c_out)
        e(f"const long o = rest % {c_out}L, n = rest / {c_out}L, v_no = g / {plane}L;", 1)
        e(f"const long cbase = (o / {og}L) * {cg}L;", 1)
        e(f"{ty} v_acc = {f'p{bb}[o]' if int(bb) >= 0 else f'({ty})0'};", 1)
        e(f"for (long c = 0; c < {cg}L; ++c) {{", 1)
        w_at, x_at = f"o * {cg}L + c", f"n * {c_in}L + cbase + c"
        for d in range(nd):
            depth = 2 + d
            e(f"for (long t{d} = 0; t{d} < {taps[d]}L; ++t{d}) {{", depth)
            e(f"const long q{d} = v_y{d} * {stride[d]}L + t{d} * {dil[d]}L - {pads[d]}L;",
              depth + 1)
            e(f"if (q{d} < 0 || q{d} >= {x.shape[2 + d]}L) continue;", depth + 1)
            w_at, x_at = f"({w_at}) * {taps[d]}L + t{d}", f"({x_at}) * {x.shape[2 + d]}L + q{d}"
        e(f"v_acc += p{wb}[{w_at}] * p{xb}[{x_at}];", 2 + nd)
        for d in reversed(range(nd + 1)):
            e("}", 1 + d)
        value = self._conv_value(out_buf)
        e(f"p{out_buf}[g] = {value};", 1)
        e("}", 0)
        wg = self.work_group
        return "\n".join(self.lines), Launch(self.k.name, (-(-total // wg) * wg,), (wg,),
                                              self.fp64)

    def _matmul_blocked(self) -> tuple[str, Launch]:
        """out = a @ b for CPU devices (PoCL): each work-item accumulates a ROWS x COLS block in
        ROWS vector registers, loading COLS consecutive elements of b at once and reusing them
        for every row (register blocking; the implementation vectorises across work-items too).
        Blocks at the right edge load b element by element; rows past the end reread the last
        row, and the guarded store drops them. Measured on PoCL, 2 cores: 100-135 GFLOP/s for
        256x784 @ 784x512 against 4 for the local-memory tiles."""
        _, a, b = self.k.schedule
        assert isinstance(a, int) and isinstance(b, int)
        po, pa, pb = self.k.params[-1], self.k.params[a], self.k.params[b]
        out_buf = len(self.k.params) - 1
        batch, (m, n), kk = po.shape[:-2], po.shape[-2:], pa.shape[-1]
        ty, rows, cols = _REG[po.dtype], MM_ROWS, MM_COLS
        vty = f"{ty}{cols}"
        i, j, k = Var("i"), Var("j"), Var("k")
        b_at = self.expr(matmul_index(pb.shape, batch, k, j))
        out_at = self.expr(matmul_index(po.shape, batch, i, j))
        epilogue = self._epilogue(out_buf)
        value = "v_acc" if epilogue is None else self._with_acc(epilogue, out_buf)
        e = self.emit
        e(self.signature() + " {", 0)
        e(f"const long j0 = (long)get_global_id(0) * {cols}, i0 = (long)get_global_id(1) * {rows};",
          1)
        e("long rest = get_global_id(2);", 1)
        for d in reversed(range(len(batch))):
            e(f"const long v_b{d} = rest % {batch[d]}L; rest /= {batch[d]}L;", 1)
        e(f"if (j0 >= {n}L || i0 >= {m}L) return;", 1)
        e(" ".join(f"{vty} acc{r} = ({vty})(0);" for r in range(rows)), 1)

        # Row pointers into a and the column pointer into b, hoisted out of the k loop (both
        # operands are row-major: a's k stride is 1, b's is n).
        a_row = self.expr(matmul_index(pa.shape, batch, i, const_i(0)))
        b_col = self.expr(matmul_index(pb.shape, batch, const_i(0), j))
        for r in range(rows):
            e(f"__global const {ty} *ar{r}; {{ const long v_i = min(i0 + {r}L, {m - 1}L); "
              f"ar{r} = p{a} + {a_row}; }}", 1)

        def updates(depth: int) -> None:
            for r in range(rows):
                e(f"acc{r} += ar{r}[v_k] * bv;", depth)

        e(f"if (j0 + {cols} <= {n}L) {{", 1)
        e(f"__global const {ty} *bp; {{ const long v_j = j0; bp = p{b} + {b_col}; }}", 2)
        e("#pragma unroll 4", 2)  # measured on PoCL: 43 against 36 GFLOP/s
        e(f"for (long v_k = 0; v_k < {kk}L; ++v_k, bp += {n}) {{", 2)
        # element by element, which LLVM merges into one unaligned vector load: PoCL's vloadN
        # is an out-of-line call, around which every accumulator is spilled to the stack
        e(f"const {vty} bv = ({vty})(" + ", ".join(f"bp[{w}]" for w in range(cols)) + ");", 3)
        updates(3)
        e("}", 2)
        e("} else {", 1)
        e(f"for (long v_k = 0; v_k < {kk}L; ++v_k) {{", 2)
        e(f"{vty} bv;", 3)
        for w in range(cols):
            e(f"{{ const long v_j = j0 + {w}; bv.s{w:x} = v_j < {n}L ? p{b}[{b_at}] : ({ty})0; }}",
              3)
        updates(3)
        e("}", 2)
        e("}", 1)
        for r in range(rows):
            for w in range(cols):
                e(f"{{ const long v_i = i0 + {r}, v_j = j0 + {w}; if (v_i < {m}L && v_j < {n}L) "
                  f"{{ const {ty} v_acc = acc{r}.s{w:x}; p{out_buf}[{out_at}] = {value}; }} }}", 1)
        e("}", 0)
        group = 16
        blocks = -(-n // cols)
        size = (-(-blocks // group) * group, -(-m // rows), max(math.prod(batch), 1))
        return "\n".join(self.lines), Launch(self.k.name, size, (group, 1, 1), self.fp64)

    def _conv_blocked(self) -> tuple[str, Launch]:
        """Direct convolution for CPU devices: each work-item computes CONV_CHANNELS output
        channels x CONV_PIXELS consecutive outputs along the last spatial axis, so each input
        vector (gathered with the padding checks) feeds CONV_CHANNELS vector multiply-adds.
        Channels and pixels past the edges are computed from clamped indices and not stored."""
        _, xb, wb, bb, groups = self.k.schedule[:5]
        x, w, out = self.k.params[int(xb)], self.k.params[int(wb)], self.k.params[-1]
        nd = len(x.shape) - 2
        stride, dil, pads = geometry(self.k.schedule, nd)
        n_out, c_out, c_in = out.shape[0], out.shape[1], x.shape[1]
        cg, taps, og = w.shape[1], w.shape[2:], c_out // int(groups)
        osz, xsz = out.shape[2:], x.shape[2:]
        out_buf = len(self.k.params) - 1
        ty, rc, px = _REG[out.dtype], CONV_CHANNELS, CONV_PIXELS
        vty = f"{ty}{px}"
        last = nd - 1
        cblocks, xblocks = -(-c_out // rc), -(-osz[last] // px)
        lead = math.prod(osz[:last])
        work = n_out * cblocks * lead * xblocks
        e = self.emit
        empty = self._open_flat(work)
        if empty is not None:
            return empty
        e(f"long rest = g; const long xb = (rest % {xblocks}L) * {px}L; rest /= {xblocks}L;", 1)
        # a row's last, partial block slides back to end at the row's end (whole spans keep the
        # one-load path), computing pixels of the block before it that only that block stores
        shift = osz[last] - px
        e(f"const long x0 = xb < {shift}L ? xb : {shift}L;" if shift > 0 and osz[last] % px
          else "const long x0 = xb;", 1)
        for d in reversed(range(last)):
            e(f"const long v_y{d} = rest % {osz[d]}L; rest /= {osz[d]}L;", 1)
        e(f"const long o0 = (rest % {cblocks}L) * {rc}L, n = rest / {cblocks}L;", 1)
        e(f"const long cbase = (o0 / {og}L) * {cg}L;", 1)
        for r in range(rc):
            bias = f"p{bb}[min(o0 + {r}L, {c_out - 1}L)]" if int(bb) >= 0 else "0"
            init = f"({vty})({bias})"
            e(f"{vty} acc{r} = {init};", 1)
        ktot = cg * math.prod(taps)
        for r in range(rc):  # each channel's filter, hoisted out of the tap loops
            e(f"__global const {ty} *wr{r} = p{wb} + min(o0 + {r}L, {c_out - 1}L) * {ktot}L;", 1)
        e(f"for (long c = 0; c < {cg}L; ++c) {{", 1)
        x_at = f"n * {c_in}L + cbase + c"
        w_tap = "c"
        for d in range(nd):
            depth = 2 + d
            e(f"for (long t{d} = 0; t{d} < {taps[d]}L; ++t{d}) {{", depth)
            w_tap = f"({w_tap}) * {taps[d]}L + t{d}"
            if d < last:
                e(f"const long q{d} = v_y{d} * {stride[d]}L + t{d} * {dil[d]}L - {pads[d]}L;",
                  depth + 1)
                e(f"if (q{d} < 0 || q{d} >= {xsz[d]}L) continue;", depth + 1)
                x_at = f"({x_at}) * {xsz[d]}L + q{d}"
        depth = 2 + nd
        e(f"{vty} xv;", depth)
        inside = depth
        if stride[last] == 1:  # a span wholly inside the row: one (merged) vector load
            e(f"const long qs = x0 + t{last} * {dil[last]}L - {pads[last]}L;", depth)
            e(f"if (qs >= 0 && qs + {px - 1}L < {xsz[last]}L) {{", depth)
            e(f"__global const {ty} *xp = p{xb} + ({x_at}) * {xsz[last]}L + qs;", depth + 1)
            e(f"xv = ({vty})(" + ", ".join(f"xp[{k}]" for k in range(px)) + ");", depth + 1)
            e("} else {", depth)
            inside = depth + 1
        for k in range(px):
            e(f"{{ const long q = (x0 + {k}L) * {stride[last]}L + t{last} * {dil[last]}L - "
              f"{pads[last]}L; xv.s{k:x} = (q >= 0 && q < {xsz[last]}L) ? "
              f"p{xb}[({x_at}) * {xsz[last]}L + q] : ({ty})0; }}", inside)
        if stride[last] == 1:
            e("}", depth)
        e(f"const long wt = {w_tap};", depth)
        for r in range(rc):
            e(f"acc{r} += wr{r}[wt] * xv;", depth)
        for d in reversed(range(nd + 1)):
            e("}", 1 + d)
        value = self._conv_value(out_buf)
        out_at = f"n * {c_out}L + o"
        for d in range(nd):
            out_at = f"({out_at}) * {osz[d]}L + v_y{d}"
        for r in range(rc):
            for k in range(px):
                e(f"{{ const long o = o0 + {r}L, v_y{last} = x0 + {k}L; if (o < {c_out}L && "
                  f"v_y{last} >= xb && v_y{last} < {osz[last]}L) {{ "
                  f"const long v_no = n * {c_out}L + o; "
                  f"const {ty} v_acc = acc{r}.s{k:x}; p{out_buf}[{out_at}] = {value}; }} }}", 1)
        e("}", 0)
        wg = min(self.work_group, 16)
        return "\n".join(self.lines), Launch(self.k.name, (-(-work // wg) * wg,), (wg,),
                                              self.fp64)

    def _conv_value(self, out_buf: int) -> str:
        """The stored value of a convolution nest: ``v_acc``, or its fused epilogue applied to
        ``v_acc`` (the nest's second output plane, after the bias plane)."""
        outer = self.k.body[0]
        assert isinstance(outer, Loop)
        planes = [st for st in outer.body if isinstance(st, Loop) and st.var == "y0"]
        if len(planes) < 2:
            return self.var("acc")
        store = _walk((planes[1],))[-1]
        assert isinstance(store, Store) and store.buf == out_buf
        return self._with_acc(store.value, out_buf)

    def _with_acc(self, value: Expr, out_buf: int) -> str:
        """``value`` rendered with the loads of the output replaced by the accumulator."""
        return self.expr(_substitute(value, lambda x_: Var("acc", self.k.params[-1].dtype)
                                     if isinstance(x_, Load) and x_.buf == out_buf else None))

    # -- work-group reductions (GPUs) -------------------------------------------------------
    def _row_plan(self) -> tuple[list[Loop], tuple[Stmt, ...]] | None:
        """(row loops, row body) when every statement of the body is a scalar Declare/Assign, a
        Store, a perfect loop nest of reduction Assigns (``x = combine(x, e)``, x starting at
        combine's identity) and Stores of one element per iteration, or a perfect loop nest of
        independent Stores; else None."""
        nest = parallel_nest(self.k)
        body = nest[-1].body if nest else self.k.body
        if nest and len(self.k.body) != 1:
            return None
        inits = {st.name: st.init for st in body if isinstance(st, Declare)}
        ops: dict[str, str] = {}  # each variable's one combining op
        reduced = False
        for st in body:
            if isinstance(st, Declare | Assign | Store):
                continue
            chain = _chain(st)
            inner = chain[-1].body
            assigns = [x for x in inner if isinstance(x, Assign)]
            stores = [x for x in inner if isinstance(x, Store)]
            if len(assigns) + len(stores) != len(inner):
                return None
            if assigns:  # a reduction, perhaps storing each element it reads (softmax's exps)
                if stores and not _stores_apart(chain[0], self.k.params):
                    return None
                for x in assigns:
                    op = _combine(x)
                    if op is None or self.locals[x.name] is DType.bool or \
                            not _is_identity(inits.get(x.name), op) or \
                            ops.setdefault(x.name, op) != op:
                        return None
                reduced = True
            elif not independent(chain[0], self.k.params):
                return None
        return (nest, body) if reduced else None

    def _flat_loop(self, chain: list[Loop], depth: int, lanes: int) -> None:
        """``for f in lid, lid + lanes, ... < extent``: the nest's iterations split over the
        work-group, each iteration's loop variables recovered from f."""
        total = math.prod(loop.extent for loop in chain)
        self.emit(f"for (long f = lid; f < {total}L; f += {lanes}) {{", depth)
        inner = total
        for loop in chain:
            inner //= max(loop.extent, 1)
            q = f"f / {inner}L" if inner != 1 else "f"
            self.emit(f"const long {self.var(loop.var)} = ({q}) % {loop.extent}L;", depth + 1)
        for st in chain[-1].body:
            self.stmt(st, depth + 1)
        self.emit("}", depth)

    def _cooperative(self, plan: tuple[list[Loop], tuple[Stmt, ...]]) -> tuple[str, Launch]:
        """One work-group per output row: the row's reduction loops are split over its
        work-items, whose partial results meet in a tree in local memory (log2(lanes) steps,
        a barrier each); write loops are split the same way; row-level stores come from
        work-item 0. Summation order differs from the serial loop (within float rounding)."""
        nest, body = plan
        reduce_extent = max((math.prod(x.extent for x in _chain(st)) for st in body
                             if isinstance(st, Loop)), default=1)
        lanes = 1
        while lanes < min(reduce_extent, self.work_group_max):
            lanes *= 2
        rows = math.prod(loop.extent for loop in nest) if nest else 1
        e = self.emit
        e(self.signature(f"__attribute__((reqd_work_group_size({lanes}, 1, 1))) ") + " {", 0)
        dtypes = sorted({self.locals[x.name] for st in body if isinstance(st, Loop)
                         for x in _chain(st)[-1].body if isinstance(x, Assign)},
                        key=lambda d: d.value)
        for dt in dtypes:
            e(f"__local {_REG[dt]} scratch_{_REG[dt]}[{lanes}];", 1)
        for name, dt in self.locals.items():
            e(f"{_REG[dt]} l_{name};", 1)
        e("const long row = (long)get_group_id(0); const int lid = (int)get_local_id(0);", 1)
        inner = rows
        for loop in nest:
            inner //= max(loop.extent, 1)
            q = f"row / {inner}L" if inner != 1 else "row"
            e(f"const long {self.var(loop.var)} = ({q}) % {loop.extent}L;", 1)
        for st in body:
            if isinstance(st, Store):
                e("if (lid == 0) {", 1)
                self.stmt(st, 2)
                e("}", 1)
            elif not isinstance(st, Loop):
                self.stmt(st, 1)
            else:
                chain = _chain(st)
                # the previous pass is complete: its partial results, and the elements it
                # stored, which this pass may read at other work-items' positions
                e("barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);", 1)
                self._flat_loop(chain, 1, lanes)
                # one tree per variable: a body that adds to one sum in several statements
                # (conv_transpose's taps) must not combine the lanes' totals again
                firsts = {x.name: x for x in reversed(chain[-1].body) if isinstance(x, Assign)}
                for x in reversed(firsts.values()):
                    self._tree(x, lanes)
        e("}", 0)
        return "\n".join(self.lines), Launch(self.k.name, (rows * lanes,), (lanes,), self.fp64)

    def _tree(self, assign: Assign, lanes: int) -> None:
        """Combine every work-item's ``l_<name>`` into all of them through local memory."""
        dt = self.locals[assign.name]
        op, buf, mine = _combine(assign), f"scratch_{_REG[dt]}", f"l_{assign.name}"
        assert op is not None
        both = self.binary(op, f"{buf}[lid]", f"{buf}[lid + s]", dt)
        e = self.emit
        e(f"{buf}[lid] = {mine};", 1)
        e("barrier(CLK_LOCAL_MEM_FENCE);", 1)
        e(f"for (int s = {lanes // 2}; s > 0; s >>= 1) {{", 1)
        e(f"if (lid < s) {buf}[lid] = {both};", 2)
        e("barrier(CLK_LOCAL_MEM_FENCE);", 2)
        e("}", 1)
        e(f"{mine} = {buf}[0];", 1)
        e("barrier(CLK_LOCAL_MEM_FENCE);", 1)

    def _epilogue(self, out_buf: int) -> Expr | None:
        """The epilogue expression of a matmul nest (its last loop's store), or None."""
        rows = next(s for s in _walk(self.k.body) if isinstance(s, Loop) and s.var == "i")
        last = rows.body[-1]
        if len(rows.body) < 3 or not isinstance(last, Loop):
            return None
        store = last.body[0]
        assert isinstance(store, Store) and store.buf == out_buf
        if splits_columns(self.k):  # its column is jb * cols + e; here it is j
            swap = {Var("jb"): const_i(0), Var(last.var): Var("j")}
            return _substitute(store.value, lambda x: swap.get(x) if isinstance(x, Var) else None)
        return store.value


_IDENTITY = {"add": 0.0, "mul": 1.0, "max": -math.inf, "min": math.inf}


def _chain(loop: Loop) -> list[Loop]:
    """``loop`` and the loops perfectly nested in it."""
    chain = [loop]
    while len(chain[-1].body) == 1 and isinstance(chain[-1].body[0], Loop):
        chain.append(chain[-1].body[0])
    return chain


def _combine(a: Assign) -> str | None:
    """The reduction ``a`` performs (``x = op(x, e)``, x not in e), or None."""
    v = a.value
    if not isinstance(v, Binary) or v.op not in _IDENTITY or v.a != Var(a.name, v.dtype):
        return None
    return None if _mentions(v.b, a.name) else v.op


def _is_identity(init: Expr | None, op: str) -> bool:
    """``init`` is ``op``'s identity (integer max/min start at the dtype's limits)."""
    if not isinstance(init, Const):
        return False
    if init.dtype.is_int and op in ("max", "min"):
        info = np.iinfo(init.dtype.np)
        return int(init.value) == (info.min if op == "max" else info.max)
    return float(init.value) == _IDENTITY[op]


def _substitute(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """``e`` with every subexpression ``x`` for which ``fn(x)`` is not None replaced by it."""
    new = fn(e)
    if new is not None:
        return new
    if isinstance(e, Load):
        return Load(e.buf, _substitute(e.index, fn), e.dtype)
    if isinstance(e, Unary):
        return Unary(e.op, _substitute(e.a, fn), e.dtype)
    if isinstance(e, Cast):
        return Cast(_substitute(e.a, fn), e.dtype)
    if isinstance(e, Binary):
        return Binary(e.op, _substitute(e.a, fn), _substitute(e.b, fn), e.dtype)
    if isinstance(e, Select):
        return Select(_substitute(e.cond, fn), _substitute(e.a, fn), _substitute(e.b, fn),
                      e.dtype)
    return e


def render_program(kernels: list[Kernel], work_group: int = 64, cpu: bool = False,
                   work_group_max: int = 256, tile: int = TILE, units: int = 1,
                   local_bytes: int = 32768, lanes: int = 1) -> tuple[str, list[Launch]]:
    """The OpenCL C source of ``kernels`` (one program) and how to launch each.

    ``work_group``: work-items per group for the collapsed-loop kernels (the device's limit
    bounds it; the GPU matmul template uses ``tile`` x ``tile``). ``cpu``: the device is a CPU, so
    matmuls and convolutions use the register-blocked templates, float32 exp, tanh and erf the
    inline approximations of ``approx.c_helpers``, and reductions stay one work-item per row;
    otherwise reductions use work-groups of up to ``work_group_max`` (a power
    of two) work-items per row. ``units`` (compute units) and ``local_bytes`` (local memory per
    work-group, bytes) size the GPU matmul's register blocks; ``lanes`` (the device's preferred
    float vector width) is how many consecutive iterations a collapsed-loop work-item runs.
    """
    parts, launches = [], []
    for kernel in kernels:
        src, launch = KernelRenderer(kernel, work_group, cpu, work_group_max, tile, units,
                                     local_bytes, lanes).render()
        comment = f"/* {kernel.name}: {', '.join(kernel.source)} */"
        parts.append(comment + "\n" + src)
        launches.append(launch)
    fp64 = any(launch.fp64 for launch in launches)
    head = ["/* generated by graphnn from the kernel IR; one kernel per graph node */"]
    if fp64:
        head.append("#pragma OPENCL EXTENSION cl_khr_fp64 : enable")
    head.append(_HELPERS + (_HELPERS_FP64 if fp64 else "") + (approx.c_helpers() if cpu else ""))
    return "\n".join(head) + "\n" + "\n\n".join(parts) + "\n", launches
