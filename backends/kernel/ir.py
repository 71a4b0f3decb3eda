"""The kernel IR: the loop-level program every code-generating backend renders.

A ``Kernel`` has buffer parameters (dtype, static shape, contiguous row-major) and a body of
statements: ``Loop`` (a counted loop, optionally marked parallel or vectorisable), ``Store``
(buffer[index] = value, optionally only where a mask holds), ``Declare``/``Assign`` (scalar
locals, for reductions). Expressions are scalar: constants, loop variables, local variables,
``Load`` (buffer[index]), ``Unary``/``Binary`` math, ``Select``, ``Cast``. Index expressions are
int64 arithmetic over loop variables (affine in everything lowered so far).

Two operations are not plain arithmetic: ``pow`` on integers is numpy's (repeated squaring,
wrapping), with no defined value for a negative exponent, so kernels flag that
(``NEGATIVE_POWER``); ``hash32`` is ``graphnn.random.lowbias32`` of an int64's low 32 bits, as
an int64 in [0, 2**32) (dropout's counter-based random numbers).

The LLVM backend renders this IR with llvmlite's IRBuilder; the OpenCL backend renders the same
IR as OpenCL C (tinygrad's UOps and TVM's TIR play this role).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from graphnn.dtypes import DType

# -- expressions -------------------------------------------------------------------------------

UNARY_OPS = frozenset({"neg", "abs", "exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tanh",
                       "erf", "floor", "ceil", "round", "not", "hash32"})
BINARY_OPS = frozenset({"add", "sub", "mul", "div", "pow", "max", "min", "lt", "le", "gt", "ge",
                        "eq", "ne", "and", "or", "xor"})
COMPARISONS = frozenset({"lt", "le", "gt", "ge", "eq", "ne"})


@dataclass(frozen=True)
class Const:
    value: float | int | bool
    dtype: DType


@dataclass(frozen=True)
class Var:
    """A loop variable (int64) or a scalar local declared with ``Declare``."""

    name: str
    dtype: DType = DType.int64


@dataclass(frozen=True)
class Load:
    buf: int  # parameter position
    index: Expr
    dtype: DType


@dataclass(frozen=True)
class Unary:
    op: str
    a: Expr
    dtype: DType


@dataclass(frozen=True)
class Binary:
    op: str
    a: Expr
    b: Expr
    dtype: DType  # the result's: bool for comparisons


@dataclass(frozen=True)
class Select:
    cond: Expr
    a: Expr
    b: Expr
    dtype: DType


@dataclass(frozen=True)
class Cast:
    a: Expr
    dtype: DType


Expr = Const | Var | Load | Unary | Binary | Select | Cast


def subexpressions(e: Expr) -> Iterator[Expr]:
    """``e`` and every expression inside it (a load's index included), parents first: the one
    walk the passes over kernel IR share (loads read, variables mentioned, integer pows)."""
    yield e
    if isinstance(e, Load):
        yield from subexpressions(e.index)
    elif isinstance(e, Unary | Cast):
        yield from subexpressions(e.a)
    elif isinstance(e, Binary):
        yield from subexpressions(e.a)
        yield from subexpressions(e.b)
    elif isinstance(e, Select):
        for x in (e.cond, e.a, e.b):
            yield from subexpressions(x)

# the codes a kernel stores in its status flag (``Param.status``)
INDEX_OUT_OF_RANGE = 1  # take, gather and their gradients: an index outside [-n, n)
NEGATIVE_POWER = 2  # integer pow: a negative exponent (numpy and PyTorch raise)

# -- statements ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """``buf[index] = value``; with a ``mask``, only where the mask (a bool) holds."""

    buf: int
    index: Expr
    value: Expr
    mask: Expr | None = None


@dataclass(frozen=True)
class Declare:
    name: str
    dtype: DType
    init: Expr


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr


@dataclass(frozen=True)
class Loop:
    var: str
    extent: int
    body: tuple[Stmt, ...]
    parallel: bool = False  # iterations are independent (the outer loop of a kernel)
    vectorize: bool = False  # the innermost, unit-stride loop


Stmt = Store | Declare | Assign | Loop


@dataclass(frozen=True)
class Param:
    """A buffer parameter. ``status`` marks a kernel's error flag (int32[1], the last parameter):
    kernels that check their data store a nonzero code there under a mask (take and gather
    when an index is out of range, clamping it so no access leaves its buffer; integer pow on a
    negative exponent); the executable reads the flag after the kernel and raises. Stores to it
    are the only stores that need not depend on a parallel loop's variable (every iteration
    writes the same code).
    ``counter`` marks the session's run counter (int64[1], the last parameter) that random
    kernels (dropout) key their numbers on; the executable writes it before each run.
    ``constant`` marks an input bound to a constant node: the same array, never written, in
    every run, so a renderer may keep what it derives from it (the LLVM backend's Winograd
    template transforms constant weights once)."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    output: bool = False
    status: bool = False
    counter: bool = False
    constant: bool = False

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Kernel:
    """One function: ``name(params...)``; ``source`` names the graph nodes it computes.

    ``schedule`` names the loop nest's pattern where a renderer may swap in a hand-tuned
    template computing the same thing (``("matmul", a, b)``: the body is ``matmul_kernel``'s,
    with a and b the operand parameters; ``("conv", x, w, bias or -1, groups, *stride,
    *dilation, *pads_begin)``: ``conv_kernel``'s; ``("conv_transpose", x, w, bias or -1, groups,
    ...)``: ``conv_transpose_kernel``'s; ``("conv_weight_grad", x, dy, groups, *stride,
    *dilation, *pads_begin)``); renderers without one render ``body``.
    """

    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    source: tuple[str, ...] = field(default=())
    schedule: tuple[str | int, ...] = field(default=())

    @property
    def checks(self) -> bool:
        """The kernel takes an error flag (``Param.status``) after its output."""
        return bool(self.params) and self.params[-1].status

    @property
    def random(self) -> bool:
        """The kernel takes the run counter (``Param.counter``) after its output."""
        return bool(self.params) and self.params[-1].counter


# -- helpers for building index arithmetic ------------------------------------------------------


def geometry(schedule: tuple[str | int, ...], nd: int) -> tuple[tuple[int, ...], ...]:
    """(stride, dilation, pads_begin) from the tail of a convolution schedule (``conv``,
    ``conv_transpose``, ``conv_weight_grad``), each ``nd`` long."""
    rest = [int(v) for v in schedule[-3 * nd:]]
    return tuple(rest[:nd]), tuple(rest[nd:2 * nd]), tuple(rest[2 * nd:])


def const_i(v: int) -> Const:
    return Const(int(v), DType.int64)


def add_i(a: Expr, b: Expr) -> Expr:
    """a + b on int64, folding constants (so dumps read like the index arithmetic they mean)."""
    if isinstance(a, Const) and isinstance(b, Const):
        return const_i(int(a.value) + int(b.value))
    if isinstance(a, Const) and a.value == 0:
        return b
    if isinstance(b, Const) and b.value == 0:
        return a
    return Binary("add", a, b, DType.int64)


def mul_i(a: Expr, k: int) -> Expr:
    """a * k on int64, folding constants."""
    if k == 0:
        return const_i(0)
    if isinstance(a, Const):
        return const_i(int(a.value) * k)
    if k == 1:
        return a
    return Binary("mul", a, const_i(k), DType.int64)


def linear_index(vars_: list[Expr], strides: list[int]) -> Expr:
    """sum(var_d * stride_d): the flat offset of a multi-index (stride 0 = broadcast)."""
    out: Expr = const_i(0)
    for v, s in zip(vars_, strides):
        out = add_i(out, mul_i(v, s))
    return out


def row_major_strides(shape: tuple[int, ...]) -> list[int]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return strides[::-1]


def format_kernel(k: Kernel) -> str:
    """A readable listing of the kernel IR (dumped as ``*.kir``)."""
    params = ", ".join(f"{'out ' if p.output else ''}{p.name}: {p.dtype.value}{list(p.shape)}"
                       for p in k.params)
    lines = [f"kernel {k.name}({params})  # {', '.join(k.source)}"]

    def expr(e: Expr) -> str:
        if isinstance(e, Const):
            return repr(e.value)
        if isinstance(e, Var):
            return e.name
        if isinstance(e, Load):
            return f"{k.params[e.buf].name}[{expr(e.index)}]"
        if isinstance(e, Unary):
            return f"{e.op}({expr(e.a)})"
        if isinstance(e, Binary):
            return f"{e.op}({expr(e.a)}, {expr(e.b)})"
        if isinstance(e, Select):
            return f"select({expr(e.cond)}, {expr(e.a)}, {expr(e.b)})"
        return f"{e.dtype.value}({expr(e.a)})"

    def stmt(s: Stmt, depth: int) -> None:
        pad = "  " * depth
        if isinstance(s, Loop):
            tags = " parallel" * s.parallel + " vectorize" * s.vectorize
            lines.append(f"{pad}for {s.var} in 0..{s.extent}:{tags}")
            for b in s.body:
                stmt(b, depth + 1)
        elif isinstance(s, Store):
            guard = "" if s.mask is None else f"if {expr(s.mask)}: "
            lines.append(f"{pad}{guard}{k.params[s.buf].name}[{expr(s.index)}] = "
                         f"{expr(s.value)}")
        elif isinstance(s, Declare):
            lines.append(f"{pad}{s.dtype.value} {s.name} = {expr(s.init)}")
        else:
            lines.append(f"{pad}{s.name} = {expr(s.value)}")

    for s in k.body:
        stmt(s, 1)
    return "\n".join(lines)
