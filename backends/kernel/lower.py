"""Lowering graph nodes to kernel IR, once for every code-generating backend.

``lower(node) -> Kernel | None``: None means the lowering declines this node (unknown sizes,
data the reference rejects such as attention over no keys, a fused group mixing in an op a
template cannot take) and the executable runs its numpy reference instead (the executables'
``fallback_ops`` list which ops, so it is visible). ``lowered_ops()`` lists the ops with a
lowering: every op of the registry that computes something.

Elementwise math is written once, in ``SCALAR``: each op's formula in the kernel IR's primitive
operations, with numpy's semantics (NaN propagates through max/min and relu, integer division
truncates, round is half-to-even). Fused elementwise kernels compose those formulas over the
body graph; reductions fold them into the accumulation loop.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from graphnn.backends.kernel.ir import (
    INDEX_OUT_OF_RANGE,
    NEGATIVE_POWER,
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
    add_i,
    const_i,
    linear_index,
    mul_i,
    row_major_strides,
    subexpressions,
)

from graphnn import random as grandom
from graphnn.dtypes import DType
from graphnn.ir import Attrs, Node
from graphnn.ops.linalg import parse_einsum

ScalarFn = Callable[[list[Expr], Attrs, DType], Expr]


def _c(v: float, dt: DType) -> Const:
    return Const(bool(v) if dt.is_bool else int(v) if dt.is_int else float(v), dt)


def _un(op: str) -> ScalarFn:
    return lambda a, at, dt: Unary(op, a[0], dt)


def _bin(op: str) -> ScalarFn:
    return lambda a, at, dt: Binary(op, a[0], a[1], dt)


def _cmp(op: str) -> ScalarFn:
    return lambda a, at, dt: Binary(op, a[0], a[1], DType.bool)


def _max(a: Expr, b: Expr, dt: DType) -> Expr:
    return Binary("max", a, b, dt)


def _min(a: Expr, b: Expr, dt: DType) -> Expr:
    return Binary("min", a, b, dt)


def _mul(a: Expr, b: Expr, dt: DType) -> Expr:
    return Binary("mul", a, b, dt)


def _add(a: Expr, b: Expr, dt: DType) -> Expr:
    return Binary("add", a, b, dt)


def _sigmoid(x: Expr, dt: DType) -> Expr:
    return Binary("div", _c(1, dt), _add(_c(1, dt), Unary("exp", Unary("neg", x, dt), dt), dt), dt)


def _softplus(x: Expr, dt: DType) -> Expr:  # max(x, 0) + log1p(exp(-|x|)): no overflow
    return _add(_max(x, _c(0, dt), dt),
                Unary("log1p", Unary("exp", Unary("neg", Unary("abs", x, dt), dt), dt), dt), dt)


def _sign(a: list[Expr], at: Attrs, dt: DType) -> Expr:
    x = a[0]
    s: Expr = Select(Binary("gt", x, _c(0, dt), DType.bool), _c(1, dt),
                     Select(Binary("lt", x, _c(0, dt), DType.bool), _c(-1, dt), _c(0, dt), dt), dt)
    return Select(Binary("ne", x, x, DType.bool), x, s, dt) if dt.is_float else s


def _relu(a: list[Expr], at: Attrs, dt: DType) -> Expr:  # NaN stays NaN, as np.maximum
    return Select(Binary("lt", a[0], _c(0, dt), DType.bool), _c(0, dt), a[0], dt)


def _gelu(a: list[Expr], at: Attrs, dt: DType) -> Expr:
    x, half = a[0], _c(0.5, dt)
    if at["approximate"] == "tanh":
        # 0.5 x (1 + tanh(u)) = x sigmoid(2u) = x / (1 + exp(-2u)), u = sqrt(2/pi)(x + 0.044715
        # x^3): one exp and one division, no tanh; and no cancellation in 1 + tanh(u) for
        # negative x (where the tanh form loses up to 1e-4 relative in float32). Same special
        # values: -0 for large negative x, NaN for -inf (-inf / inf; the tanh form: -inf * 0).
        k = -2 * math.sqrt(2 / math.pi)
        z = _mul(x, _add(_c(k, dt), _mul(_c(k * 0.044715, dt), _mul(x, x, dt), dt), dt), dt)
        return Binary("div", x, _add(_c(1, dt), Unary("exp", z, dt), dt), dt)
    erf = Unary("erf", _mul(x, _c(1 / math.sqrt(2), dt), dt), dt)
    return _mul(_mul(half, x, dt), _add(_c(1, dt), erf, dt), dt)


def _clip(lo: float | None, hi: float | None, x: Expr, dt: DType) -> Expr:
    out = x if lo is None else Select(Binary("lt", x, _c(lo, dt), DType.bool), _c(lo, dt), x, dt)
    if hi is not None:
        out = Select(Binary("gt", out, _c(hi, dt), DType.bool), _c(hi, dt), out, dt)
    return out


def _cast(a: list[Expr], at: Attrs, dt: DType) -> Expr:
    if dt.is_bool:  # nonzero is True, as numpy
        return Binary("ne", a[0], _c(0, a[0].dtype), DType.bool)
    return Cast(a[0], dt)


SELU_A, SELU_S = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946

SCALAR: dict[str, ScalarFn] = {
    "add": _bin("add"), "sub": _bin("sub"), "mul": _bin("mul"), "div": _bin("div"),
    "pow": _bin("pow"), "maximum": _bin("max"), "minimum": _bin("min"),
    "equal": _cmp("eq"), "not_equal": _cmp("ne"), "less": _cmp("lt"), "less_equal": _cmp("le"),
    "greater": _cmp("gt"), "greater_equal": _cmp("ge"),
    "logical_and": _cmp("and"), "logical_or": _cmp("or"), "logical_xor": _cmp("xor"),
    "logical_not": lambda a, at, dt: Unary("not", a[0], DType.bool),
    "where": lambda a, at, dt: Select(a[0], a[1], a[2], dt),
    "neg": _un("neg"), "abs": _un("abs"), "exp": _un("exp"), "log": _un("log"),
    "log1p": _un("log1p"), "expm1": _un("expm1"), "sqrt": _un("sqrt"), "sin": _un("sin"),
    "cos": _un("cos"), "tanh": _un("tanh"), "erf": _un("erf"), "floor": _un("floor"),
    "ceil": _un("ceil"), "round": _un("round"), "sign": _sign,
    "rsqrt": lambda a, at, dt: Binary("div", _c(1, dt), Unary("sqrt", a[0], dt), dt),
    "reciprocal": lambda a, at, dt: Binary("div", _c(1, dt), a[0], dt),
    "sigmoid": lambda a, at, dt: _sigmoid(a[0], dt),
    "relu": _relu,
    "leaky_relu": lambda a, at, dt: Select(Binary("ge", a[0], _c(0, dt), DType.bool), a[0],
                                           _mul(a[0], _c(at["negative_slope"], dt), dt), dt),
    "elu": lambda a, at, dt: Select(Binary("gt", a[0], _c(0, dt), DType.bool), a[0],
                                    _mul(_c(at["alpha"], dt), Unary("expm1", a[0], dt), dt), dt),
    "selu": lambda a, at, dt: _mul(_c(SELU_S, dt), Select(
        Binary("gt", a[0], _c(0, dt), DType.bool), a[0],
        _mul(_c(SELU_A, dt), Unary("expm1", a[0], dt), dt), dt), dt),
    "celu": lambda a, at, dt: Select(
        Binary("gt", a[0], _c(0, dt), DType.bool), a[0],
        _mul(_c(at["alpha"], dt), Unary("expm1", Binary("div", a[0], _c(at["alpha"], dt), dt),
                                        dt), dt), dt),
    "gelu": _gelu,
    "silu": lambda a, at, dt: _mul(a[0], _sigmoid(a[0], dt), dt),
    "mish": lambda a, at, dt: _mul(a[0], Unary("tanh", _softplus(a[0], dt), dt), dt),
    "softplus": lambda a, at, dt: Select(
        Binary("gt", _mul(a[0], _c(at["beta"], dt), dt), _c(at["threshold"], dt), DType.bool),
        a[0], Binary("div", _softplus(_mul(a[0], _c(at["beta"], dt), dt), dt),
                     _c(at["beta"], dt), dt), dt),
    "softsign": lambda a, at, dt: Binary("div", a[0], _add(_c(1, dt), Unary("abs", a[0], dt), dt),
                                         dt),
    "hard_sigmoid": lambda a, at, dt: _clip(0, 1, _add(_mul(a[0], _c(at["alpha"], dt), dt),
                                                       _c(at["beta"], dt), dt), dt),
    "hard_swish": lambda a, at, dt: _mul(a[0], _clip(0, 1, _add(
        Binary("div", a[0], _c(6, dt), dt), _c(0.5, dt), dt), dt), dt),
    "hard_tanh": lambda a, at, dt: _clip(at["min_val"], at["max_val"], a[0], dt),
    "clip": lambda a, at, dt: _clip(at["min"], at["max"], a[0], dt),
    "identity": lambda a, at, dt: a[0],
    "cast": _cast,
    "assign": lambda a, at, dt: a[1],
    "assign_add": _bin("add"),
    "broadcast_to": lambda a, at, dt: a[0],
    "broadcast_like": lambda a, at, dt: a[0],
}


# -- elementwise kernels --------------------------------------------------------------------------


def _broadcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> list[int]:
    """Strides of ``shape`` (right-aligned) addressed with ``out``'s multi-index: 0 to broadcast."""
    strides = row_major_strides(shape)
    lead = len(out) - len(shape)
    return [0 if d < lead or shape[d - lead] == 1 and out[d] != 1 else strides[d - lead]
            for d in range(len(out))]


def _nest(shape: Sequence[int], body: list[Stmt], prefix: str = "i") -> tuple[Stmt, ...]:
    """Loops over ``shape`` (outermost parallel, innermost vectorisable) around ``body``."""
    stmts: tuple[Stmt, ...] = tuple(body)
    n = len(shape)
    for d in reversed(range(n)):
        stmts = (Loop(f"{prefix}{d}", int(shape[d]), stmts, parallel=d == 0,
                      vectorize=d == n - 1),)
    return stmts


def elementwise_kernel(name: str, inputs: Sequence[tuple[DType, tuple[int, ...]]],
                       out: tuple[DType, tuple[int, ...]],
                       build: Callable[[list[Expr]], Expr], source: tuple[str, ...]) -> Kernel:
    """out[i] = build(loads of each input at i, broadcast) over the output's index space.
    A value with no defined result somewhere (an integer pow's negative exponent) makes the
    kernel take a status flag and set it there."""
    out_dt, out_shape = out
    params = tuple(Param(f"in{k}", dt, s) for k, (dt, s) in enumerate(inputs)) + (
        Param("out", out_dt, out_shape, output=True),)
    size = math.prod(out_shape)
    flat = all(math.prod(s) in (size, 1) and (s == out_shape or math.prod(s) == 1)
               for _, s in inputs)
    if flat:  # one unit-stride loop: what vectorises best
        i = Var("i0")
        loads: list[Expr] = [Load(k, i if math.prod(s) == size else const_i(0), dt)
                             for k, (dt, s) in enumerate(inputs)]
        index: Expr = i
        shape: tuple[int, ...] = (size,)
    else:
        vars_: list[Expr] = [Var(f"i{d}") for d in range(len(out_shape))]
        loads = [Load(k, linear_index(vars_, _broadcast_strides(s, out_shape)), dt)
                 for k, (dt, s) in enumerate(inputs)]
        index = linear_index(vars_, row_major_strides(out_shape))
        shape = out_shape
    value = build(loads)
    negative = _negative_powers(value)
    if negative:
        params += (_status_param(),)
    flags = [_flag(bad, params, NEGATIVE_POWER) for bad in negative]
    return Kernel(name, params, _nest(shape, [*flags, Store(len(inputs), index, value)]), source)


def _negative_powers(e: Expr) -> list[Expr]:
    """``b < 0`` for each integer pow(a, b) in ``e``: where it has no value."""
    return [Binary("lt", x.b, _c(0, x.b.dtype), DType.bool) for x in subexpressions(e)
            if isinstance(x, Binary) and x.op == "pow" and x.dtype.is_int]


def _static(node: Node) -> tuple[int, ...]:
    assert all(d is not None for d in node.shape), node
    return tuple(int(d) for d in node.shape if d is not None)


def _lower_elementwise(node: Node, name: str) -> Kernel:
    fn = SCALAR[node.op]
    ins = [(i.dtype, _static(i)) for i in node.inputs]
    return elementwise_kernel(name, ins, (node.dtype, _static(node)),
                              lambda loads: fn(loads, node.attrs, node.dtype), (node.op,))


def _scalar_body(body: Any, known: dict[Node, Expr], target: Node) -> Expr:
    """The scalar expression of ``target`` in a fused kernel's body, given expressions for some
    of its nodes (the loads of its inputs, or an anchor's result): constants become immediates,
    the ops in between go through ``SCALAR``."""
    env = dict(known)
    for n in body.nodes:
        if target in env:
            break
        if n in env or n.op == "placeholder":
            continue
        if n.op == "constant":
            env[n] = _c(n.attrs["value"].array.reshape(-1)[0].item(), n.dtype)
        else:
            env[n] = SCALAR[n.op]([env[i] for i in n.inputs], n.attrs, n.dtype)
    return env[target]


def _lower_fused_elementwise(node: Node, name: str) -> Kernel | None:
    body = node.attrs["body"].graph
    if any(n.op not in SCALAR and n.op not in ("placeholder", "constant") for n in body.nodes):
        return None
    ins = [(i.dtype, _static(i)) for i in node.inputs]

    def build(loads: list[Expr]) -> Expr:
        return _scalar_body(body, dict(zip(body.placeholders, loads)), body.outputs[0])

    return elementwise_kernel(name, ins, (node.dtype, _static(node)), build,
                              tuple(node.attrs["body"].ops))


# -- reductions -----------------------------------------------------------------------------------

_INIT: dict[str, Callable[[DType], Const]] = {
    "sum": lambda dt: _c(0, dt), "mean": lambda dt: _c(0, dt), "prod": lambda dt: _c(1, dt),
    "max": lambda dt: _c(-np.inf, dt) if dt.is_float else _c(np.iinfo(dt.np).min, dt),
    "min": lambda dt: _c(np.inf, dt) if dt.is_float else _c(np.iinfo(dt.np).max, dt),
}
_COMBINE = {"sum": "add", "mean": "add", "prod": "mul", "max": "max", "min": "min"}


def _reduce_groups(x_shape: tuple[int, ...], axes: Sequence[int],
                   operands: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """Runs of adjacent dims of ``x_shape`` that a reduction may address as one: all reduced or
    all kept, and each operand (right-aligned, broadcast to ``x_shape``) broadcast along all of
    them or along none. Sum over (N, H, W) of NCHW becomes a sum over (N, H*W): one
    contiguous inner loop LLVM vectorises (the 24-long W loop was unrolled, and the H loop
    around it vectorised with gathers)."""
    def broadcast(shape: tuple[int, ...], d: int) -> bool:
        lead = len(x_shape) - len(shape)
        return d < lead or shape[d - lead] == 1 and x_shape[d] != 1

    groups: list[list[int]] = []
    for d in range(len(x_shape)):
        if groups and (d - 1 in axes) == (d in axes) and all(
                broadcast(s, d - 1) == broadcast(s, d) for s in operands):
            groups[-1].append(d)
        else:
            groups.append([d])
    return groups


def _merge(shape: tuple[int, ...], rank: int, groups: list[list[int]]) -> tuple[int, ...]:
    """``shape`` (right-aligned to ``rank`` dims) with each group's dims multiplied into one."""
    full = (1,) * (rank - len(shape)) + tuple(shape)
    return tuple(math.prod(full[d] for d in g) for g in groups)


def _lower_reduce(node: Any, name: str, x_shape: tuple[int, ...], x_dtype: DType,
                  value: Callable[[list[Expr], Expr, Callable[[tuple[int, ...]], tuple[int, ...]]],
                                  Expr],
                  params: tuple[Param, ...], source: tuple[str, ...],
                  operands: Sequence[tuple[int, ...]] = ()) -> Kernel:
    """out[kept] = combine over reduced dims of value(multi-index, flat input index, merge),
    over ``x_shape`` with adjacent dims merged where every operand allows (``_reduce_groups``);
    ``merge`` maps an operand's shape to the merged dims, for its loads."""
    groups = _reduce_groups(x_shape, node.attrs["axes"], operands)
    axes = [k for k, g in enumerate(groups) if g[0] in node.attrs["axes"]]
    merge = functools.partial(_merge, rank=len(x_shape), groups=groups)
    x_shape = merge(x_shape)
    op, dt = node.op, node.dtype
    kept = [d for d in range(len(x_shape)) if d not in axes]
    vars_: list[Expr] = [Var(f"r{d}") if d in axes else Var(f"i{d}") for d in range(len(x_shape))]
    x_index = linear_index(vars_, row_major_strides(x_shape))
    acc = Var("acc", dt)
    update: Stmt = Assign("acc", Binary(_COMBINE[op], acc, value(vars_, x_index, merge), dt))
    inner: tuple[Stmt, ...] = (update,)
    for d in reversed(axes):
        inner = (Loop(f"r{d}", x_shape[d], inner),)
    count = math.prod(x_shape[d] for d in axes)
    result: Expr = Binary("div", acc, _c(count, dt), dt) if op == "mean" else acc
    out_index = linear_index([Var(f"i{d}") for d in kept],
                             row_major_strides(tuple(x_shape[d] for d in kept)))
    body = [Declare("acc", dt, _INIT[op](dt)), *inner, Store(len(params) - 1, out_index, result)]
    stmts: tuple[Stmt, ...] = tuple(body)
    for pos, d in reversed(list(enumerate(kept))):
        stmts = (Loop(f"i{d}", x_shape[d], stmts, parallel=pos == 0),)
    return Kernel(name, params, stmts, source)


def _lower_plain_reduce(node: Node, name: str) -> Kernel:
    x = node.inputs[0]
    params = (Param("in0", x.dtype, _static(x)), Param("out", node.dtype, _static(node), True))
    return _lower_reduce(node, name, _static(x), x.dtype,
                         lambda vars_, idx, merge: Load(0, idx, x.dtype), params, (node.op,))


def _lower_fused_reduce(node: Node, name: str) -> Kernel | None:
    body = node.attrs["body"].graph
    root = body.outputs[0]
    if root.op not in _COMBINE or any(not _scalar_ok(n) for n in body.nodes
                                      if n is not root and n.op not in ("placeholder",
                                                                         "constant")):
        return None
    x_shape = _static(root.inputs[0])
    params = tuple(Param(f"in{k}", i.dtype, _static(i)) for k, i in enumerate(node.inputs)) + (
        Param("out", node.dtype, _static(node), True),)

    def value(vars_: list[Expr], _: Expr,
              merge: Callable[[tuple[int, ...]], tuple[int, ...]]) -> Expr:
        loads: dict[Node, Expr] = {
            p: Load(k, linear_index(vars_, _broadcast_strides(merge(_static(p)),
                                                              merge(x_shape))), p.dtype)
            for k, p in enumerate(body.placeholders)}
        return _scalar_body(body, loads, root.inputs[0])

    fake = _ReduceView(root)
    return _lower_reduce(fake, name, x_shape, root.inputs[0].dtype, value, params,
                         tuple(node.attrs["body"].ops), [_static(p) for p in body.placeholders])


class _ReduceView:
    """The reduction node inside a fused body, read like a graph node by ``_lower_reduce``."""

    def __init__(self, root: Node) -> None:
        self.attrs, self.op, self.dtype = root.attrs, root.op, root.dtype


# -- copies ---------------------------------------------------------------------------------------


def _lower_copy(node: Node, name: str) -> Kernel:
    """reshape-like ops: the same elements in the same (row-major) order."""
    x = node.inputs[0]
    size = math.prod(_static(node))
    params = tuple(Param(f"in{k}", i.dtype, _static(i)) for k, i in enumerate(node.inputs)) + (
        Param("out", node.dtype, _static(node), True),)
    i = Var("i0")
    return Kernel(name, params, _nest((size,), [Store(len(node.inputs), i, Load(0, i, x.dtype))]),
                  (node.op,))


def _lower_transpose(node: Node, name: str) -> Kernel:
    x, perm = node.inputs[0], node.attrs["perm"]
    in_strides = row_major_strides(_static(x))
    vars_: list[Expr] = [Var(f"i{d}") for d in range(node.ndim)]
    src = linear_index(vars_, [in_strides[p] for p in perm])
    dst = linear_index(vars_, row_major_strides(_static(node)))
    params = (Param("in0", x.dtype, _static(x)), Param("out", node.dtype, _static(node), True))
    return Kernel(name, params, _nest(_static(node), [Store(1, dst, Load(0, src, x.dtype))]),
                  (node.op,))


def _lower_slice(node: Node, name: str) -> Kernel:
    x = node.inputs[0]
    xs = _static(x)
    starts, steps = [], []
    for d, (a, b, s) in enumerate(zip(node.attrs["starts"], node.attrs["stops"],
                                      node.attrs["steps"])):
        start, _, step = slice(a, b, s).indices(xs[d])
        starts.append(start)
        steps.append(step)
    strides = row_major_strides(xs)
    vars_: list[Expr] = [Var(f"i{d}") for d in range(node.ndim)]
    src: Expr = const_i(sum(a * s for a, s in zip(starts, strides)))
    src = add_i(src, linear_index(vars_, [st * s for st, s in zip(steps, strides)]))
    dst = linear_index(vars_, row_major_strides(_static(node)))
    params = (Param("in0", x.dtype, xs), Param("out", node.dtype, _static(node), True))
    return Kernel(name, params, _nest(_static(node), [Store(1, dst, Load(0, src, x.dtype))]),
                  (node.op,))


def _lower_full_like(node: Node, name: str) -> Kernel:
    params = (Param("in0", node.inputs[0].dtype, _static(node.inputs[0])),
              Param("out", node.dtype, _static(node), True))
    i = Var("i0")
    return Kernel(name, params, _nest((math.prod(_static(node)),),
                                      [Store(1, i, _c(node.attrs["fill_value"], node.dtype))]),
                  (node.op,))


# -- matmul (and matmul epilogues) -----------------------------------------------------------


def matmul_index(shape: tuple[int, ...], batch: tuple[int, ...], rows: Expr, cols: Expr) -> Expr:
    """The flat index of element (rows, cols) of a matmul operand or output of ``shape`` in batch
    ``b0, b1, ...`` (loop variables) of the output's ``batch`` dims (numpy broadcasting)."""
    strides = row_major_strides(shape)
    skip = len(batch) - (len(shape) - 2)  # batch dims this operand lacks (broadcast)
    lead = [0 if d < skip or shape[d - skip] == 1 and batch[d] != 1 else strides[d - skip]
            for d in range(len(batch))]
    within = add_i(linear_index([rows], [strides[-2]]), linear_index([cols], [strides[-1]]))
    return add_i(linear_index([Var(f"b{d}") for d in range(len(batch))], lead), within)


def matmul_kernel(name: str, params: tuple[Param, ...], a: int, b: int,
                  epilogue: Callable[[Expr, list[Expr]], Expr] | None,
                  source: tuple[str, ...]) -> Kernel:
    """out = a @ b (numpy batching), then out = epilogue(out, index vars) row by row.

    Loop order i-k-j: the innermost loop walks a row of b and of out with unit stride, so it
    vectorises, and a[i, k] is loop-invariant in it. (The cache-blocked, packed micro-kernel of
    the BLIS structure replaces this schedule for large shapes.)
    """
    pa, pb, po = params[a], params[b], params[-1]
    out_shape = po.shape
    batch = out_shape[:-2]
    m, n = out_shape[-2:]
    k_ext = pa.shape[-1]
    bvars: list[Expr] = [Var(f"b{d}") for d in range(len(batch))]
    i, j, k = Var("i"), Var("j"), Var("k")

    def index(shape: tuple[int, ...], rows: Expr, cols: Expr) -> Expr:
        return matmul_index(shape, batch, rows, cols)

    out_at = index(out_shape, i, j)
    dt = po.dtype
    zero = Loop("j", n, (Store(len(params) - 1, out_at, _c(0, dt)),), vectorize=True)
    update = Store(len(params) - 1, out_at, _add(
        Load(len(params) - 1, out_at, dt),
        _mul(Load(a, index(pa.shape, i, k), dt), Load(b, index(pb.shape, k, j), dt), dt), dt))
    cols = _column_block(m, n) if not batch else 0
    if cols:  # few rows (a GEMV): threads split the columns instead, in blocks of ``cols``
        return _matmul_by_columns(name, params, a, b, epilogue, source, cols)
    body: list[Stmt] = [zero, Loop("k", k_ext, (Loop("j", n, (update,), vectorize=True),))]
    if epilogue is not None:
        body.append(Loop("j", n, (Store(len(params) - 1, out_at,
                                        epilogue(Load(len(params) - 1, out_at, dt),
                                                 [*bvars, i, j])),), vectorize=True))
    stmts: tuple[Stmt, ...] = (Loop("i", m, tuple(body), parallel=not batch),)
    for d in reversed(range(len(batch))):
        stmts = (Loop(f"b{d}", batch[d], stmts, parallel=d == 0),)
    return Kernel(name, params, stmts, source, ("matmul", a, b))


# below this many output rows, a matmul's generic form splits its columns between threads (the
# LLVM GEMM template, which takes the row-split form only, blocks six rows at a time)
FEW_ROWS = 6


def _column_block(m: int, n: int) -> int:
    """The columns per parallel iteration of a few-row matmul: the widest of 128, 64, 32, 16
    that divides n at least twice, or 0 (then the rows are split)."""
    if m >= FEW_ROWS:
        return 0
    return next((c for c in (128, 64, 32, 16) if n % c == 0 and n // c >= 2), 0)


def splits_columns(kernel: Kernel) -> bool:
    """The kernel is a few-row matmul in its column-split form (``_matmul_by_columns``): its
    epilogue's column is ``jb * cols + e``; templates that take the row-split form decline it."""
    first = kernel.body[0] if kernel.body else None
    return kernel.schedule[:1] == ("matmul",) and isinstance(first, Loop) and first.var == "jb"


def _matmul_by_columns(name: str, params: tuple[Param, ...], a: int, b: int,
                       epilogue: Callable[[Expr, list[Expr]], Expr] | None,
                       source: tuple[str, ...], cols: int) -> Kernel:
    """out = a @ b (2-D) with one parallel iteration per block of ``cols`` columns: for each
    row, the block of out is zeroed, then accumulated over k with a unit-stride, vectorised
    loop over the block (a GEMV's rows are too few to split; its columns are not)."""
    pa, po = params[a], params[-1]
    m, n = po.shape
    dt, o = po.dtype, len(params) - 1
    i, k, jb = Var("i"), Var("k"), Var("jb")

    def at(jj: str) -> tuple[Expr, Expr]:
        """(the column, its flat index in out) of position ``jj`` of block jb in row i."""
        col = add_i(mul_i(jb, cols), Var(jj))
        return col, add_i(mul_i(i, n), col)

    col, dst = at("j")
    update = Store(o, dst, _add(Load(o, dst, dt), _mul(
        Load(a, add_i(mul_i(i, pa.shape[-1]), k), dt), Load(b, add_i(mul_i(k, n), col), dt),
        dt), dt))
    _, zero_at = at("z")
    body: list[Stmt] = [Loop("z", cols, (Store(o, zero_at, _c(0, dt)),), vectorize=True),
                        Loop("k", pa.shape[-1], (Loop("j", cols, (update,), vectorize=True),))]
    if epilogue is not None:
        ecol, e_at = at("e")
        body.append(Loop("e", cols, (Store(o, e_at, epilogue(Load(o, e_at, dt), [i, ecol])),),
                         vectorize=True))
    rows = (Loop("i", m, tuple(body)),)
    return Kernel(name, params, (Loop("jb", n // cols, rows, parallel=True),), source,
                  ("matmul", a, b))


def _lower_matmul(node: Node, name: str) -> Kernel:
    """A vector operand is a one-row (a) or one-column (b) matrix, as numpy.matmul reads it; the
    output is then viewed with that axis kept (same elements, same layout)."""
    a, b = node.inputs
    a2 = (1, *_static(a)) if a.ndim == 1 else _static(a)
    b2 = (*_static(b), 1) if b.ndim == 1 else _static(b)
    out = (*np.broadcast_shapes(a2[:-2], b2[:-2]), a2[-2], b2[-1])
    params = (Param("a", a.dtype, a2), Param("b", b.dtype, b2),
              Param("out", node.dtype, out, True))
    return matmul_kernel(name, params, 0, 1, None, ("matmul",))


def _lower_fused_epilogue(node: Node, name: str) -> Kernel | None:
    body = node.attrs["body"].graph
    compute = [n for n in body.nodes if n.op not in ("placeholder", "constant")]
    anchor, chain = compute[0], compute[1:]
    if anchor.op not in ("matmul", "conv", "conv_transpose") or \
            any(not _scalar_ok(n) for n in chain):
        return None
    if any(i.op != "placeholder" for i in anchor.inputs) or not anchor.dtype.is_float:
        return None
    a, b = anchor.inputs[:2]
    if anchor.op == "matmul" and (a.ndim < 2 or b.ndim < 2):
        return None
    places = body.placeholders
    params = tuple(Param(f"in{k}", i.dtype, _static(i)) for k, i in enumerate(node.inputs)) + (
        Param("out", node.dtype, _static(node), True),)
    out_shape = _static(node)

    def epilogue(acc: Expr, vars_: list[Expr]) -> Expr:
        known: dict[Node, Expr] = {anchor: acc}
        for k, p in enumerate(places):
            if p not in anchor.inputs:
                known[p] = Load(k, linear_index(vars_, _broadcast_strides(_static(p), out_shape)),
                                p.dtype)
        return _scalar_body(body, known, body.outputs[0])

    ops = tuple(node.attrs["body"].ops)
    if anchor.op == "conv":
        bias = places.index(anchor.inputs[2]) if len(anchor.inputs) == 3 else None
        return conv_kernel(name, params, places.index(a), places.index(b), bias, anchor.attrs,
                           epilogue, ops)
    if anchor.op == "conv_transpose":
        bias = places.index(anchor.inputs[2]) if len(anchor.inputs) == 3 else None
        return conv_transpose_kernel(name, params, places.index(a), places.index(b), bias,
                                     anchor.attrs, epilogue, ops)
    return matmul_kernel(name, params, places.index(a), places.index(b), epilogue, ops)


# -- einsum and gemm: generic contractions -------------------------------------------------------


def _contraction(node: Node, name: str, terms: Sequence[str], rhs: str,
                 finish: Callable[[Expr, list[Expr]], Expr] | None = None) -> Kernel:
    """out[rhs] = sum over the letters not in rhs of the product of the operands (a repeated
    letter in one term reads a diagonal, as numpy.einsum), then ``finish(sum, out index)``.

    Two loop orders, so that the innermost loop reads the last operand with unit stride:
    - its last axis summed ("ij,kj->ik"): a dot product per output element, summed letters
      innermost;
    - else i-k-j, as the matmul kernel: the outer loops run over the output letters of the first
      operand (the first one parallel: iterations own distinct output elements), each zeroes its
      block of the output (the other output letters), then for every summed index adds the
      product into that block in an inner loop along the last operand's rows."""
    dt = node.dtype
    sizes: dict[str, int] = {}
    for t, x in zip(terms, node.inputs):
        sizes.update(zip(t, _static(x)))
    letters = "".join(terms)
    summed = sorted({c for c in letters} - set(rhs), key=letters.index)
    outer = [c for c in rhs if c in terms[0]]
    block = [c for c in rhs if c not in terms[0]]
    var = {c: Var(f"{c}_") for c in letters}
    product: Expr | None = None
    for k, (t, x) in enumerate(zip(terms, node.inputs)):
        load = Load(k, linear_index([var[c] for c in t], row_major_strides(_static(x))), dt)
        product = load if product is None else _mul(product, load, dt)
    assert product is not None
    out_vars: list[Expr] = [var[c] for c in rhs]
    at = linear_index(out_vars, row_major_strides(_static(node)))
    params = _inputs_params(node)
    o = len(params) - 1

    def loops(over: Sequence[str], body: tuple[Stmt, ...], parallel: bool = False,
              vectorize: bool = False) -> tuple[Stmt, ...]:
        for k in reversed(range(len(over))):
            body = (Loop(var[over[k]].name, sizes[over[k]], body, parallel=parallel and k == 0,
                         vectorize=vectorize and k == len(over) - 1),)
        return body

    if terms[-1] and terms[-1][-1] in summed:  # the last operand's rows are contiguous along
        # a summed letter: a dot product per output element reads every operand unit-stride
        acc = Var("acc", dt)
        total = loops(summed, (Assign("acc", _add(acc, product, dt)),))
        value = finish(acc, out_vars) if finish is not None else acc
        dot = (Declare("acc", dt, _c(0, dt)), *total, Store(o, at, value))
        return Kernel(name, params, loops(list(rhs), dot, parallel=True), (node.op,))
    body = loops(block, (Store(o, at, _c(0, dt)),), vectorize=True) + loops(
        summed, loops(block, (Store(o, at, _add(Load(o, at, dt), product, dt)),),
                      vectorize=True))
    if finish is not None:
        body += loops(block, (Store(o, at, finish(Load(o, at, dt), out_vars)),), vectorize=True)
    return Kernel(name, params, loops(outer, body, parallel=True), (node.op,))


def _lower_einsum(node: Node, name: str) -> Kernel:
    """Any einsum (numpy.einsum's rules, ``parse_einsum``) as one loop nest; at O2 the pass
    ``decompose_contractions`` turns two-operand einsums into a matmul (the GEMM template)."""
    terms, rhs = parse_einsum(node.attrs["equation"], [i.ndim for i in node.inputs])
    return _contraction(node, name, terms, rhs)


def _lower_gemm(node: Node, name: str) -> Kernel:
    """ONNX Gemm: alpha * op(a) @ op(b) + beta * c (c broadcast to (M, N))."""
    a, dt = node.attrs, node.dtype
    terms = ["ki" if a["trans_a"] else "ik", "jk" if a["trans_b"] else "kj"]

    def finish(acc: Expr, ij: list[Expr]) -> Expr:
        out = _mul(_c(a["alpha"], dt), acc, dt)
        if len(node.inputs) < 3:
            return out
        c = node.inputs[2]
        strides = _broadcast_strides(_static(c), _static(node))
        load = Load(2, linear_index(ij, strides), dt)
        return _add(out, _mul(_c(a["beta"], dt), load, dt), dt)

    return _contraction(node, name, terms, "ij", finish)


# -- direct convolution and max pooling ---------------------------------------------------------


def _i(op: str, a: Expr, b: Expr) -> Expr:
    if op == "mul" and isinstance(b, Const):
        return mul_i(a, int(b.value))
    if op == "add":
        return add_i(a, b)
    if op == "sub" and isinstance(b, Const):
        return add_i(a, const_i(-int(b.value)))
    return Binary(op, a, b, DType.int64)


def window_reach(out_sizes: Sequence[int], tap_sizes: Sequence[int], stride: Sequence[int],
                 dilation: Sequence[int]) -> list[int]:
    """Per spatial axis, the largest out*stride + tap*dilation of a window nest (before the
    padding is subtracted): what ``_window_index`` needs to drop the checks that never fail."""
    return [(o - 1) * s + (t - 1) * d for o, t, s, d in zip(out_sizes, tap_sizes, stride,
                                                             dilation)]


def _window_index(x: Param, n: Expr, ch: Expr, out_pos: list[Expr], taps: list[Expr],
                  stride: Sequence[int], dilation: Sequence[int], pads_begin: Sequence[int],
                  reach: Sequence[int]) -> tuple[Expr | None, Expr]:
    """(inside, index): whether x[n, ch, out*stride + tap*dilation - pad] lies inside the input
    (None: always) and its flat index, clamped so that it is always a valid address. A bound no
    window position can cross (``reach``: ``window_reach``) is neither checked nor clamped: a
    pooling window without padding is a plain load."""
    spatial = x.shape[2:]
    valid: Expr | None = None
    index: list[Expr] = [n, ch]
    for d, size in enumerate(spatial):
        pos = _i("sub", add_i(_i("mul", out_pos[d], const_i(stride[d])),
                              _i("mul", taps[d], const_i(dilation[d]))), const_i(pads_begin[d]))
        low, high = pads_begin[d] > 0, reach[d] - pads_begin[d] >= size
        for needed, check in ((low, Binary("ge", pos, const_i(0), DType.bool)),
                              (high, Binary("lt", pos, const_i(size), DType.bool))):
            if needed:
                valid = check if valid is None else Binary("and", valid, check, DType.bool)
        if low:
            pos = _i("max", pos, const_i(0))
        index.append(_i("min", pos, const_i(size - 1)) if high else pos)
    return valid, linear_index(index, row_major_strides(x.shape))


def _window_loads(x: Param, xbuf: int, n: Expr, ch: Expr, out_pos: list[Expr], taps: list[Expr],
                  stride: Sequence[int], dilation: Sequence[int], pads_begin: Sequence[int],
                  fill: Const, reach: Sequence[int]) -> Expr:
    """x[n, ch, out*stride + tap*dilation - pad], or ``fill`` outside the input (the load reads
    a clamped, always valid index; the select discards it)."""
    valid, index = _window_index(x, n, ch, out_pos, taps, stride, dilation, pads_begin, reach)
    load = Load(xbuf, index, x.dtype)
    return load if valid is None else Select(valid, load, fill, x.dtype)


def _tap_range(t: int, size: int, out_size: int, stride: int, dil: int, pad: int
               ) -> tuple[int, int]:
    """Output positions whose input position out*stride + t*dil - pad lies inside [0, size)."""
    lo = max(0, -(-(pad - t * dil) // stride))
    hi = min(out_size, (size - 1 + pad - t * dil) // stride + 1)
    return lo, max(lo, hi)


def conv_kernel(name: str, params: tuple[Param, ...], xbuf: int, wbuf: int, bbuf: int | None,
                attrs: Attrs, epilogue: Callable[[Expr, list[Expr]], Expr] | None,
                source: tuple[str, ...]) -> Kernel:
    """Direct convolution, channels first. For each (sample, output channel): initialise the
    output plane with the bias, then for every kernel tap (unrolled here) and input channel add
    w * x over the output positions whose input is inside the image; that range is static per
    tap, so every load is affine and vectorises, and padding costs nothing."""
    x, w, out = params[xbuf], params[wbuf], params[-1]
    nd = len(x.shape) - 2
    n_out, c_out = out.shape[:2]
    cg, kernel = w.shape[1], w.shape[2:]
    og = c_out // attrs["groups"]
    stride, dil, pads = attrs["stride"], attrs["dilation"], attrs["pads"][:nd]
    no = Var("no")
    n = _i("div", no, const_i(c_out))
    o = _i("sub", no, _i("mul", n, const_i(c_out)))
    group_base = _i("mul", _i("div", o, const_i(og)), const_i(cg))
    out_strides = row_major_strides(out.shape)
    x_strides = row_major_strides(x.shape)
    dt = out.dtype
    ovars: list[Expr] = [Var(f"y{d}") for d in range(nd)]
    plane = linear_index([n, o, *ovars], out_strides)
    init: Expr = Load(bbuf, o, dt) if bbuf is not None else _c(0, dt)
    body: list[Stmt] = list(_nest(out.shape[2:], [Store(len(params) - 1, plane, init)], "y"))
    c = Var("c")
    for taps in np.ndindex(*kernel):
        ranges = [_tap_range(t, x.shape[2 + d], out.shape[2 + d], stride[d], dil[d], pads[d])
                  for d, t in enumerate(taps)]
        if any(hi <= lo for lo, hi in ranges):
            continue  # this tap only ever sees padding
        jvars = [Var(f"j{d}") for d in range(nd)]
        out_pos = [add_i(j, const_i(lo)) for j, (lo, _) in zip(jvars, ranges)]
        in_pos = [add_i(mul_i(p, stride[d]), const_i(taps[d] * dil[d] - pads[d]))
                  for d, p in enumerate(out_pos)]
        at = linear_index([n, o, *out_pos], out_strides)
        w_val = Load(wbuf, linear_index([o, c, *[const_i(t) for t in taps]],
                                        row_major_strides(w.shape)), dt)
        pixel = Load(xbuf, linear_index([n, add_i(group_base, c), *in_pos], x_strides), dt)
        inner: tuple[Stmt, ...] = (Store(len(params) - 1, at, _add(
            Load(len(params) - 1, at, dt), _mul(w_val, pixel, dt), dt)),)
        for d in reversed(range(nd)):
            inner = (Loop(f"j{d}", ranges[d][1] - ranges[d][0], inner, vectorize=d == nd - 1),)
        body.append(Loop("c", cg, inner))
    if epilogue is not None:
        body.extend(_nest(out.shape[2:], [Store(len(params) - 1, plane, epilogue(
            Load(len(params) - 1, plane, dt), [n, o, *ovars]))], "y"))
    schedule = ("conv", xbuf, wbuf, -1 if bbuf is None else bbuf, attrs["groups"], *stride, *dil,
                *pads)
    return Kernel(name, params, (Loop("no", n_out * c_out, tuple(body), parallel=True),), source,
                  schedule)


def _lower_conv(node: Node, name: str) -> Kernel | None:
    if not node.dtype.is_float:
        return None
    params = tuple(Param(f"in{k}", i.dtype, _static(i)) for k, i in enumerate(node.inputs)) + (
        Param("out", node.dtype, _static(node), True),)
    return conv_kernel(name, params, 0, 1, 2 if len(node.inputs) == 3 else None, node.attrs,
                       None, ("conv",))


def _lower_conv_weight_grad(node: Node, name: str) -> Kernel | None:
    """dW[o, c, t...] = sum over n and output positions y of dy[n, o, y] * x[n, g(o) + c,
    y * stride + t * dilation - pad] (zero outside the input): one reduction per weight."""
    x, dy = node.inputs
    if not node.dtype.is_float:
        return None
    xs, dys, ws, dt, a = _static(x), _static(dy), _static(node), node.dtype, node.attrs
    nd = len(xs) - 2
    params = (Param("in0", x.dtype, xs), Param("in1", dy.dtype, dys), Param("out", dt, ws, True))
    wvars: list[Expr] = [Var(f"i{d}") for d in range(len(ws))]  # o, c, taps...
    o, c, taps = wvars[0], wvars[1], wvars[2:]
    ch = add_i(_i("mul", _i("div", o, const_i(ws[0] // a["groups"])), const_i(ws[1])), c)
    n, ys = Var("rn"), [Var(f"ry{d}") for d in range(nd)]
    pixel = _window_loads(params[0], 0, n, ch, list(ys), taps, a["stride"], a["dilation"],
                          a["pads"][:nd], _c(0, dt),
                          window_reach(dys[2:], ws[2:], a["stride"], a["dilation"]))
    grad = Load(1, linear_index([n, o, *ys], row_major_strides(dys)), dt)
    inner: tuple[Stmt, ...] = (Assign("acc", _add(Var("acc", dt), _mul(grad, pixel, dt), dt)),)
    for d in reversed(range(nd)):
        inner = (Loop(f"ry{d}", dys[2 + d], inner, vectorize=d == nd - 1),)
    body = [Declare("acc", dt, _c(0, dt)), Loop("rn", dys[0], inner),
            Store(2, linear_index(wvars, row_major_strides(ws)), Var("acc", dt))]
    schedule = ("conv_weight_grad", 0, 1, a["groups"], *a["stride"], *a["dilation"],
                *a["pads"][:nd])
    return Kernel(name, params, _nest(ws, body), ("conv_weight_grad",), schedule)


def conv_transpose_kernel(name: str, params: tuple[Param, ...], xbuf: int, wbuf: int,
                          bbuf: int | None, attrs: Attrs,
                          epilogue: Callable[[Expr, list[Expr]], Expr] | None,
                          source: tuple[str, ...]) -> Kernel:
    """out[n, o, z] = bias[o] + sum over the group's input channels c and taps t of
    x[n, c, i] * w[c, o mod cog, t] where i * stride + t * dilation = z + pad (ONNX
    ConvTranspose): the adjoint of conv, gathered per output element, so no two iterations
    write the same element. Like ``conv_kernel``, one outer iteration per (sample, output
    channel) plane, then the fused epilogue's plane."""
    x, w, out = params[xbuf], params[wbuf], params[-1]
    xs, wsh, outs, dt = x.shape, w.shape, out.shape, out.dtype
    nd = len(xs) - 2
    cpg, cog, c_out = xs[1] // attrs["groups"], wsh[1], outs[1]
    no = Var("no")
    n = _i("div", no, const_i(c_out))
    o = _i("sub", no, _i("mul", n, const_i(c_out)))
    zs: list[Expr] = [Var(f"y{d}") for d in range(nd)]
    c = add_i(_i("mul", _i("div", o, const_i(cog)), const_i(cpg)), Var("c"))
    o_in = _i("sub", o, _i("mul", _i("div", o, const_i(cog)), const_i(cog)))
    terms: list[Stmt] = []
    for taps in np.ndindex(*wsh[2:]):
        valid: Expr | None = None
        pos: list[Expr] = []
        for d, t in enumerate(taps):
            num = add_i(zs[d], const_i(attrs["pads"][d] - t * attrs["dilation"][d]))
            i_d = _i("div", num, const_i(attrs["stride"][d]))
            ok = Binary("and", Binary("ge", num, const_i(0), DType.bool),
                        Binary("lt", i_d, const_i(xs[2 + d]), DType.bool), DType.bool)
            if attrs["stride"][d] != 1:
                ok = Binary("and", ok, Binary("eq", num, _i("mul", i_d,
                                                            const_i(attrs["stride"][d])),
                                              DType.bool), DType.bool)
            valid = ok if valid is None else Binary("and", valid, ok, DType.bool)
            pos.append(_i("min", _i("max", i_d, const_i(0)), const_i(xs[2 + d] - 1)))
        xv = Load(xbuf, linear_index([n, c, *pos], row_major_strides(xs)), dt)
        wv = Load(wbuf, linear_index([c, o_in, *[const_i(t) for t in taps]],
                                     row_major_strides(wsh)), dt)
        assert valid is not None
        terms.append(Assign("acc", _add(Var("acc", dt), Select(valid, _mul(xv, wv, dt),
                                                               _c(0, dt), dt), dt)))
    init: Expr = Load(bbuf, o, dt) if bbuf is not None else _c(0, dt)
    at = linear_index([n, o, *zs], row_major_strides(outs))
    gather = [Declare("acc", dt, init), Loop("c", cpg, tuple(terms)),
              Store(len(params) - 1, at, Var("acc", dt))]
    body = list(_nest(outs[2:], gather, "y"))
    if epilogue is not None:
        body.extend(_nest(outs[2:], [Store(len(params) - 1, at, epilogue(
            Load(len(params) - 1, at, dt), [n, o, *zs]))], "y"))
    schedule = ("conv_transpose", xbuf, wbuf, -1 if bbuf is None else bbuf, attrs["groups"],
                *attrs["stride"], *attrs["dilation"], *attrs["pads"][:nd])
    return Kernel(name, params, (Loop("no", outs[0] * c_out, tuple(body), parallel=True),),
                  source, schedule)


def _lower_conv_transpose(node: Node, name: str) -> Kernel | None:
    if not node.dtype.is_float:
        return None
    return conv_transpose_kernel(name, _inputs_params(node), 0, 1,
                                 2 if len(node.inputs) == 3 else None, node.attrs, None,
                                 ("conv_transpose",))


def _lower_max_pool_grad(node: Node, name: str) -> Kernel | None:
    """dx[n, c, i...] = sum over the windows whose first maximum (PyTorch's rule, NaN counting as
    the maximum) sits at i of dy[n, c, window] (``_plane_scatter``; a window whose first tap
    wins from the padding adds nothing, as the padded reference)."""
    dy, x = node.inputs
    dys, xs, dt, a = _static(dy), _static(x), node.dtype, node.attrs
    nd, kernel = len(xs) - 2, tuple(a["kernel_size"])
    stride, dil, pads = a["stride"], a["dilation"], a["pads"][:nd]
    if _tiling_windows(dys[2:], xs[2:], kernel, stride, dil, a["pads"]):
        return _max_pool_grad_tiles(node, name)
    px = Param("x", x.dtype, xs)

    def body(n: Expr, ch: Expr, window: list[Expr]) -> tuple[Stmt, ...]:
        best, where = Var("best", x.dtype), Var("where", DType.int64)
        stmts: list[Stmt] = []
        for k, taps in enumerate(np.ndindex(*kernel)):
            valid, at = _window_index(px, n, ch, window, [const_i(t) for t in taps], stride,
                                      dil, pads, window_reach(dys[2:], [t + 1 for t in taps],
                                                              stride, dil))
            v: Expr = Load(1, at, x.dtype)
            if valid is not None:
                v = Select(valid, v, _c(-np.inf, x.dtype), x.dtype)
                at = Select(valid, at, const_i(-1), DType.int64)
            if k == 0:  # the first tap starts the search, as argmax's index 0
                stmts += [Declare("best", x.dtype, v), Declare("where", DType.int64, at)]
                continue
            stmts += [Assign("where", Select(_beats(v, best), at, where, DType.int64)),
                      Assign("best", Select(_beats(v, best), v, best, x.dtype))]
        grad = Load(0, linear_index([n, ch, *window], row_major_strides(dys)), dt)
        stmts.append(_add_at(node, where, grad, Binary("ge", where, const_i(0), DType.bool)))
        return tuple(stmts)

    return _plane_scatter(node, name, dys[2:], body)


def _tiling_windows(windows: Sequence[int], sizes: Sequence[int], kernel: Sequence[int],
                    stride: Sequence[int], dilation: Sequence[int], pads: Sequence[int]) -> bool:
    """The pooling windows tile the input without overlap or padding (MaxPool2d(2)'s case):
    stride = kernel size, no dilation, no padding, and no window past the input's end."""
    return not any(pads) and all(
        s == k and d == 1 and w * s <= size
        for w, size, k, s, d in zip(windows, sizes, kernel, stride, dilation))


def _max_pool_grad_tiles(node: Node, name: str) -> Kernel:
    """max_pool_grad where the windows tile the input (``_tiling_windows``): every input element
    lies in at most one window, so each window writes its own taps (the gradient at its first
    maximum, zero at the rest) with plain stores, and the loop over the last axis's windows
    vectorises (strided loads and stores of the taps; no scatter). Elements past the last
    window are zeroed first. Per (sample, channel) plane, one parallel iteration each."""
    dy, x = node.inputs
    dys, xs, dt = _static(dy), _static(x), node.dtype
    nd, kernel = len(xs) - 2, tuple(node.attrs["kernel_size"])
    n, ch = _planes(xs[1])
    window: list[Expr] = [Var(f"y{d}") for d in range(nd)]
    strides = row_major_strides(xs)
    t = Var("t")  # the tap along the last axis: an inner loop, so the window loop around it
    # vectorises as forward pooling's does (unrolled, LLVM's SLP pass gathered the taps)

    def at(taps: tuple[int, ...]) -> Expr:
        pos = [add_i(mul_i(w, k), const_i(tap))
               for w, k, tap in zip(window[:-1], kernel[:-1], taps)]
        return linear_index([n, ch, *pos, add_i(mul_i(window[-1], kernel[-1]), t)], strides)

    best, where = Var("best", x.dtype), Var("where", DType.int64)
    stmts: list[Stmt] = [Declare("best", x.dtype, _c(-np.inf, x.dtype)),
                         Declare("where", DType.int64, const_i(0))]
    outer = list(np.ndindex(*kernel[:-1]))
    for k, taps in enumerate(outer):  # in the order of the taps: the first maximum wins
        v = Load(1, at(taps), x.dtype)
        tap = add_i(const_i(k * kernel[-1]), t)
        stmts.append(Loop("t", kernel[-1], (
            Assign("where", Select(_beats(v, best), tap, where, DType.int64)),
            Assign("best", Select(_beats(v, best), v, best, x.dtype)))))
    grad = Load(0, linear_index([n, ch, *window], row_major_strides(dys)), dt)
    stmts += [Loop("t", kernel[-1], (Store(2, at(taps), Select(Binary(
        "eq", where, add_i(const_i(k * kernel[-1]), t), DType.bool), grad, _c(0, dt), dt)),))
        for k, taps in enumerate(outer)]
    body: tuple[Stmt, ...] = tuple(stmts)
    for d in reversed(range(nd)):
        body = (Loop(f"y{d}", dys[2 + d], body, vectorize=d == nd - 1),)
    covered = all(w * k == size for w, k, size in zip(dys[2:], kernel, xs[2:]))
    zero = () if covered else _zero_plane(xs, n, ch, dt)
    params = (Param("in0", dy.dtype, dys), Param("in1", x.dtype, xs), Param("out", dt, xs, True))
    return Kernel(name, params, _plane_loop(xs, (*zero, *body)), (node.op,))


def _beats(v: Expr, best: Expr) -> Expr:
    """v replaces the running maximum: greater, or the first NaN (NaN counts as the maximum)."""
    return Binary("or", Binary("gt", v, best, DType.bool),
                  Binary("and", Binary("ne", v, v, DType.bool),
                         Binary("eq", best, best, DType.bool), DType.bool), DType.bool)


def _plane_scatter(node: Node, name: str, windows: tuple[int, ...],
                   body: Callable[[Expr, Expr, list[Expr]], tuple[Stmt, ...]]) -> Kernel:
    """dx for a pooling op: one parallel iteration per (sample, channel) plane zeroes its plane
    of dx, then runs ``body(n, ch, window)`` for every window position, which adds that window's
    gradient into the plane. Windows overlap, but never across planes: no two iterations write
    one element, and the adds come in window order, like the reference's."""
    dy, x = node.inputs
    xs, dt = _static(x), node.dtype
    nd = len(xs) - 2
    no = Var("no")
    n = _i("div", no, const_i(xs[1]))
    ch = _i("sub", no, _i("mul", n, const_i(xs[1])))
    zero = _zero_plane(xs, n, ch, dt)
    window: list[Expr] = [Var(f"y{d}") for d in range(nd)]
    scatter = body(n, ch, window)
    for d in reversed(range(nd)):  # windows may overlap: no loop here is vectorisable
        scatter = (Loop(f"y{d}", windows[d], scatter),)
    params = (Param("in0", dy.dtype, _static(dy)), Param("in1", x.dtype, xs),
              Param("out", dt, xs, True))
    return Kernel(name, params, (Loop("no", xs[0] * xs[1], (*zero, *scatter), parallel=True),),
                  (node.op,))


def _zero_plane(xs: tuple[int, ...], n: Expr, ch: Expr, dt: DType) -> tuple[Stmt, ...]:
    """dx[n, ch, ...] = 0 over the plane (dx: a pooling gradient's output, buffer 2)."""
    spatial = [Var(f"z{d}") for d in range(len(xs) - 2)]
    return _nest(xs[2:], [Store(2, linear_index([n, ch, *spatial], row_major_strides(xs)),
                                _c(0, dt))], "z")


def _add_at(node: Node, at: Expr, value: Expr, mask: Expr | None) -> Store:
    """dx[at] += value (where ``mask`` holds: only then is ``at`` read or written)."""
    return Store(2, at, _add(Load(2, at, node.dtype), value, node.dtype), mask=mask)


def _taps(kernel: Sequence[int], body: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
    for d in reversed(range(len(kernel))):
        body = (Loop(f"k{d}", kernel[d], body),)
    return body


def _lower_avg_pool_grad(node: Node, name: str) -> Kernel:
    """dx: each window's dy divided by its divisor, added to the window's taps inside the input.
    The divisor counts the window's taps on the input, and on the padding when
    count_include_pad, never on the ceil-mode overhang (PyTorch's rule, as the reference)."""
    dy, x = node.inputs
    dys, xs, dt, a = _static(dy), _static(x), node.dtype, node.attrs
    nd = len(xs) - 2
    stride, dil, pads = a["stride"], a["dilation"], a["pads"]
    taps: list[Expr] = [Var(f"k{d}") for d in range(nd)]

    def body(n: Expr, ch: Expr, window: list[Expr]) -> tuple[Stmt, ...]:
        counted: Expr | None = None
        for d in range(nd):  # the tap lies where the divisor counts it
            pos = _i("sub", add_i(mul_i(window[d], stride[d]), mul_i(taps[d], dil[d])),
                     const_i(pads[d]))
            lo, hi = (-pads[d], xs[2 + d] + pads[d + nd]) if a["count_include_pad"] \
                else (0, xs[2 + d])
            ok = Binary("and", Binary("ge", pos, const_i(lo), DType.bool),
                        Binary("lt", pos, const_i(hi), DType.bool), DType.bool)
            counted = ok if counted is None else Binary("and", counted, ok, DType.bool)
        assert counted is not None
        count = Assign("count", _add(Var("count", dt), Select(counted, _c(1, dt), _c(0, dt), dt),
                                     dt))
        valid, at = _window_index(Param("x", x.dtype, xs), n, ch, window, taps, stride, dil,
                                  pads[:nd], window_reach(dys[2:], a["kernel_size"], stride, dil))
        grad = Load(0, linear_index([n, ch, *window], row_major_strides(dys)), dt)
        share = Binary("div", grad, Var("count", dt), dt)
        return (Declare("count", dt, _c(0, dt)), *_taps(a["kernel_size"], (count,)),
                *_taps(a["kernel_size"], (_add_at(node, at, share, valid),)))

    return _plane_scatter(node, name, dys[2:], body)


def _lower_adaptive_pool_grad(node: Node, name: str) -> Kernel:
    """Adjoint of adaptive pooling: window i of a dim spans [floor(i L / o), ceil((i + 1) L / o)).
    avg: dy / the window's size to each element; max: dy to the window's first maximum (NaN
    counting as the maximum, as numpy's argmax in the reference)."""
    dy, x = node.inputs
    xs, dt = _static(x), node.dtype
    out, is_max = tuple(node.attrs["output_size"]), node.attrs["mode"] == "max"
    nd = len(out)
    taps: list[Expr] = [Var(f"k{d}") for d in range(nd)]
    widest = [max(-(-((i + 1) * xs[2 + d]) // o) - (i * xs[2 + d]) // o for i in range(o))
              for d, o in enumerate(out)]

    def body(n: Expr, ch: Expr, window: list[Expr]) -> tuple[Stmt, ...]:
        index: list[Expr] = [n, ch]
        first: list[Expr] = [n, ch]
        valid: Expr | None = None
        count: Expr = const_i(1)
        for d in range(nd):
            size, o = xs[2 + d], out[d]
            start = _i("div", mul_i(window[d], size), const_i(o))
            end = _i("div", add_i(mul_i(add_i(window[d], const_i(1)), size), const_i(o - 1)),
                     const_i(o))
            pos = add_i(start, taps[d])
            ok = Binary("lt", pos, end, DType.bool)
            valid = ok if valid is None else Binary("and", valid, ok, DType.bool)
            index.append(_min(pos, const_i(size - 1), DType.int64))
            first.append(start)
            count = Binary("mul", count, _i("sub", end, start), DType.int64)
        at = linear_index(index, row_major_strides(xs))
        grad = Load(0, linear_index([n, ch, *window], row_major_strides(_static(dy))), dt)
        if not is_max:
            share = Binary("div", grad, Cast(count, dt), dt)
            return _taps(widest, (_add_at(node, at, share, valid),))
        v = Select(valid, Load(1, at, x.dtype), _c(-np.inf, x.dtype), x.dtype)
        best, where = Var("best", x.dtype), Var("where", DType.int64)
        beats = _beats(v, best)
        start_at = linear_index(first, row_major_strides(xs))
        search = (Assign("where", Select(beats, at, where, DType.int64)),
                  Assign("best", Select(beats, v, best, x.dtype)))
        return (Declare("best", x.dtype, Load(1, start_at, x.dtype)),
                Declare("where", DType.int64, start_at), *_taps(widest, search),
                _add_at(node, where, grad, None))

    return _plane_scatter(node, name, out, body)


# -- slice and pad gradients ---------------------------------------------------------------------


def _lower_slice_grad(node: Node, name: str) -> Kernel:
    """dx[i] = dy[(i - start) / step] where i lies on the slice's lattice, else 0."""
    dy, x = node.inputs
    xs, ds, dt = _static(x), _static(dy), node.dtype

    def value(v: list[Expr]) -> Expr:
        src: list[Expr] = []
        valid: Expr | None = None
        for d, (a, b, s) in enumerate(zip(node.attrs["starts"], node.attrs["stops"],
                                          node.attrs["steps"])):
            start, _, step = slice(a, b, s).indices(xs[d])
            diff = add_i(v[d], const_i(-start))
            q = _i("div", diff, const_i(step))  # truncates: exact on the lattice
            ok = Binary("and", Binary("eq", diff, mul_i(q, step), DType.bool),
                        Binary("and", Binary("ge", q, const_i(0), DType.bool),
                               Binary("lt", q, const_i(ds[d]), DType.bool), DType.bool),
                        DType.bool)
            valid = ok if valid is None else Binary("and", valid, ok, DType.bool)
            src.append(_min(_max(q, const_i(0), DType.int64), const_i(max(ds[d] - 1, 0)),
                            DType.int64))
        if math.prod(ds) == 0:
            return _c(0, dt)
        load = Load(0, linear_index(src, row_major_strides(ds)), dt)
        return load if valid is None else Select(valid, load, _c(0, dt), dt)

    return _out_nest(node, name, value)


def _pad_sources(i: Expr, k: Var, size: int, begin: int, end: int, mode: str
                 ) -> tuple[int, Expr, Expr | None]:
    """The padded positions whose value is x[i] along one axis, as candidate k of a loop:
    (the loop's extent, the position, whether candidate k is one). Constant: i + begin; edge:
    every position that clamps to i; reflect: i, and its mirrors -i and 2(size - 1) - i where
    they fall inside the padding (pads are smaller than the axis, so nothing reflects twice)."""
    if mode == "constant" or begin == end == 0:
        return 1, add_i(i, const_i(begin)), None
    if mode == "edge":  # candidates i .. i + begin + end
        p = add_i(i, k)
        clamped = _min(_max(add_i(p, const_i(-begin)), const_i(0), DType.int64),
                       const_i(size - 1), DType.int64)
        return begin + end + 1, p, Binary("eq", clamped, i, DType.bool)
    mirror_low = Unary("neg", i, DType.int64)
    mirror_high = _i("sub", const_i(2 * (size - 1)), i)
    q = Select(Binary("eq", k, const_i(0), DType.bool), i,
               Select(Binary("eq", k, const_i(1), DType.bool), mirror_low, mirror_high,
                      DType.int64), DType.int64)
    low_ok = Binary("and", Binary("gt", i, const_i(0), DType.bool),
                    Binary("le", i, const_i(begin), DType.bool), DType.bool)
    high_ok = Binary("and", Binary("lt", i, const_i(size - 1), DType.bool),
                     Binary("le", _i("sub", const_i(size - 1), i), const_i(end), DType.bool),
                     DType.bool)
    ok = Select(Binary("eq", k, const_i(0), DType.bool), Const(True, DType.bool),
                Select(Binary("eq", k, const_i(1), DType.bool), low_ok, high_ok, DType.bool),
                DType.bool)
    return 3, add_i(q, const_i(begin)), ok


def _lower_pad_grad(node: Node, name: str) -> Kernel:
    """dx[i] = the sum of dy over the padded positions that copy x[i] (``_pad_sources``)."""
    dy, x = node.inputs
    xs, ds, dt, nd = _static(x), _static(dy), node.dtype, node.ndim
    pads, mode = node.attrs["pads"], node.attrs["mode"]
    vars_: list[Expr] = [Var(f"i{d}") for d in range(nd)]
    pos: list[Expr] = []
    valid: Expr | None = None
    extents = []
    for d in range(nd):
        extent, p, ok = _pad_sources(vars_[d], Var(f"k{d}"), xs[d], pads[d], pads[d + nd], mode)
        extents.append(extent)
        pos.append(p)
        if ok is not None:
            valid = ok if valid is None else Binary("and", valid, ok, DType.bool)
    load: Expr = Load(0, linear_index(pos, row_major_strides(ds)), dt)
    if valid is not None:  # an invalid candidate's position may lie outside dy: clamp it
        safe = [_min(_max(p, const_i(0), DType.int64), const_i(s - 1), DType.int64)
                for p, s in zip(pos, ds)]
        load = Select(valid, Load(0, linear_index(safe, row_major_strides(ds)), dt), _c(0, dt),
                      dt)
    inner: tuple[Stmt, ...] = (Assign("acc", _add(Var("acc", dt), load, dt)),)
    for d in reversed(range(nd)):
        if extents[d] > 1:
            inner = (Loop(f"k{d}", extents[d], inner),)
    at = linear_index(vars_, row_major_strides(xs))
    body = [Declare("acc", dt, _c(0, dt)), *inner, Store(2, at, Var("acc", dt))]
    return Kernel(name, _inputs_params(node), _nest(xs, body), (node.op,))


def _planes(channels: int) -> tuple[Expr, Expr]:
    """(n, ch) of plane ``nc`` of a ``Loop("nc", N * channels)``: pooling runs one parallel
    iteration per (sample, channel) plane, so one image still splits between threads."""
    nc = Var("nc")
    n = _i("div", nc, const_i(channels))
    return n, _i("sub", nc, mul_i(n, channels))


def _plane_loop(shape: Sequence[int], body: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
    return (Loop("nc", shape[0] * shape[1], body, parallel=True),)


def _lower_max_pool(node: Node, name: str) -> Kernel | None:
    x = node.inputs[0]
    a, nd = node.attrs, node.ndim - 2
    params = (Param("in0", x.dtype, _static(x)), Param("out", node.dtype, _static(node), True))
    out_vars: list[Expr] = [Var(f"y{d}") for d in range(nd)]
    taps: list[Expr] = [Var(f"k{d}") for d in range(nd)]
    n, ch = _planes(node.shape[1] or 0)
    dt = node.dtype
    pixel = _window_loads(params[0], 0, n, ch, out_vars, taps, a["stride"], a["dilation"],
                          a["pads"][:nd], _c(-np.inf, dt),
                          window_reach(_static(node)[2:], a["kernel_size"], a["stride"],
                                       a["dilation"]))
    acc = Var("acc", dt)
    inner: tuple[Stmt, ...] = (Assign("acc", _max(acc, pixel, dt)),)
    for d in reversed(range(nd)):
        inner = (Loop(f"k{d}", a["kernel_size"][d], inner),)
    out_index = linear_index([n, ch, *out_vars], row_major_strides(_static(node)))
    stmts: tuple[Stmt, ...] = (Declare("acc", dt, _c(-np.inf, dt)), *inner,
                               Store(1, out_index, acc))
    for d in reversed(range(nd)):
        stmts = (Loop(f"y{d}", node.shape[2 + d] or 0, stmts, vectorize=d == nd - 1),)
    return Kernel(name, params, _plane_loop(_static(node), stmts), ("max_pool",))


# -- row-wise and multi-pass reductions: softmax, log_softmax, logsumexp, var, std, argmax ------


def _is_finite(v: Expr, dt: DType) -> Expr:
    return Binary("and", Binary("eq", v, v, DType.bool),
                  Binary("ne", Unary("abs", v, dt), _c(np.inf, dt), DType.bool), DType.bool)


def _split(shape: tuple[int, ...], axes: Sequence[int]) -> tuple[list[Expr], list[int]]:
    """Index variables for ``shape`` (i<d> kept, r<d> reduced) and the kept dims."""
    vars_: list[Expr] = [Var(f"r{d}") if d in axes else Var(f"i{d}") for d in range(len(shape))]
    return vars_, [d for d in range(len(shape)) if d not in axes]


def _over(shape: tuple[int, ...], axes: Sequence[int], body: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
    for d in reversed(axes):
        body = (Loop(f"r{d}", shape[d], body),)
    return body


def _rows(shape: tuple[int, ...], axes: Sequence[int]) -> tuple[tuple[int, ...], list[int]]:
    """Reductions over the trailing dims read rows of one contiguous run each: index them as
    (rows, run) so the kept dims form one parallel loop (a (1, 4, 128, 128) softmax ran its
    512 rows on one thread, the batch dim being 1); other axes stay as they are."""
    axes = sorted(a % len(shape) for a in axes) if shape else []
    if not axes or axes != list(range(len(shape) - len(axes), len(shape))):
        return shape, list(axes)
    kept = len(shape) - len(axes)
    return (math.prod(shape[:kept]), math.prod(shape[kept:])), [1]


def _around(shape: tuple[int, ...], kept: list[int], body: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
    for pos, d in reversed(list(enumerate(kept))):
        body = (Loop(f"i{d}", shape[d], body, parallel=pos == 0),)
    return body


def _lower_rowwise(node: Node, name: str) -> Kernel | None:
    """softmax / log_softmax along one axis: a max pass, a sum-of-exp pass (softmax stores the
    exps), a write pass (softmax divides them in place)."""
    x = node.inputs[0]
    xs, dt = _static(x), node.dtype
    shape, (axis,) = _rows(xs, [node.attrs["axis"] % x.ndim])
    vars_, kept = _split(shape, [axis])
    at = linear_index(vars_, row_major_strides(shape))
    v = Load(0, at, dt)
    m, total = Var("m", dt), Var("s", dt)
    shifted = Binary("sub", v, m, dt)
    e = Unary("exp", shifted, dt)
    # softmax keeps each exp in the output for the last pass (one exp per element, not two)
    keep: tuple[Stmt, ...] = (Store(1, at, e),) if node.op == "softmax" else ()
    result: Expr = (Binary("div", Load(1, at, dt), total, dt) if node.op == "softmax"
                    else Binary("sub", shifted, Unary("log", total, dt), dt))
    body = (Declare("m", dt, _c(-np.inf, dt)),
            *_over(shape, [axis], (Assign("m", _max(m, v, dt)),)),
            Declare("s", dt, _c(0, dt)),
            *_over(shape, [axis], (Assign("s", _add(total, e, dt)), *keep)),
            *_over(shape, [axis], (Store(1, at, result),)))
    params = (Param("in0", x.dtype, xs), Param("out", dt, _static(node), True))
    return Kernel(name, params, _around(shape, kept, body), (node.op,))


def _lower_multipass(node: Node, name: str) -> Kernel | None:
    """logsumexp, var and std over any axes: two passes over the reduced elements."""
    x = node.inputs[0]
    xs, dt = _static(x), node.dtype
    count = math.prod(xs[d] for d in node.attrs["axes"])
    xs, axes = _rows(xs, node.attrs["axes"])
    vars_, kept = _split(xs, axes)
    v = Load(0, linear_index(vars_, row_major_strides(xs)), dt)
    a, total = Var("a", dt), Var("s", dt)
    if node.op == "logsumexp":  # max-shifted; a non-finite max shifts by 0, as the reference
        first: Stmt = Assign("a", _max(a, v, dt))
        a_init: Expr = _c(-np.inf, dt)
        safe = Select(_is_finite(a, dt), a, _c(0, dt), dt)
        second: Stmt = Assign("s", _add(total, Unary("exp", Binary("sub", v, safe, dt), dt), dt))
        result: Expr = _add(Unary("log", total, dt), safe, dt)
    else:  # var / std: the mean, then the sum of squared deviations
        first, a_init = Assign("a", _add(a, v, dt)), _c(0, dt)
        mean = Binary("div", a, _c(count, dt), dt)
        dev = Binary("sub", v, mean, dt)
        second = Assign("s", _add(total, _mul(dev, dev, dt), dt))
        result = Binary("div", total, _c(count - node.attrs["correction"], dt), dt)
        if node.op == "std":
            result = Unary("sqrt", result, dt)
    out_index = linear_index([Var(f"i{d}") for d in kept],
                             row_major_strides(tuple(xs[d] for d in kept)))
    body = (Declare("a", dt, a_init), *_over(xs, axes, (first,)), Declare("s", dt, _c(0, dt)),
            *_over(xs, axes, (second,)), Store(1, out_index, result))
    params = (Param("in0", x.dtype, _static(x)), Param("out", dt, _static(node), True))
    return Kernel(name, params, _around(xs, kept, body), (node.op,))


def _lower_arg(node: Node, name: str) -> Kernel | None:
    """argmax / argmin: the first index of the extreme value; NaN counts as the extreme (numpy).
    With no axis, x is read as one row of all its elements (numpy's flattened index)."""
    x = node.inputs[0]
    xs, dt, axis = _static(x), x.dtype, node.attrs["axis"]
    if axis is None:
        xs, axis = (math.prod(xs),), 0
        if not xs[0]:
            return None  # numpy raises on an empty array: the reference says so
    xs, (axis,) = _rows(xs, [axis % len(xs)])
    vars_, kept = _split(xs, [axis])
    v = Load(0, linear_index(vars_, row_major_strides(xs)), dt)
    best, where = Var("best", dt), Var("where", DType.int64)
    beats = Binary("gt" if node.op == "argmax" else "lt", v, best, DType.bool)
    if dt.is_float:  # a NaN wins over any number, and the first NaN stays
        beats = Binary("or", beats, Binary("and", Binary("ne", v, v, DType.bool),
                                           Binary("eq", best, best, DType.bool), DType.bool),
                       DType.bool)
    init = _INIT["max" if node.op == "argmax" else "min"](dt)
    r = Var(f"r{axis}")
    body = (Declare("best", dt, init), Declare("where", DType.int64, const_i(0)),
            *_over(xs, [axis], (Assign("where", Select(beats, r, where, DType.int64)),
                                Assign("best", Select(beats, v, best, dt)))),
            Store(1, linear_index([Var(f"i{d}") for d in kept],
                                  row_major_strides(tuple(xs[d] for d in kept))), where))
    params = (Param("in0", dt, xs), Param("out", DType.int64, _static(node), True))
    return Kernel(name, params, _around(xs, kept, body), (node.op,))


# -- indexing by data: take, gather and their gradients ------------------------------------------


def _status_param() -> Param:
    return Param("status", DType.int32, (1,), status=True)


def _checked_index(raw: Expr, n: int) -> tuple[Expr, Expr]:
    """(index clamped into [0, n), out of range?) for an index read from data: negative indices
    count from the end (numpy.take, ONNX Gather); the clamp keeps a bad index inside the buffer
    until the executable sees the status flag and raises."""
    i = raw if raw.dtype is DType.int64 else Cast(raw, DType.int64)
    wrapped = Select(Binary("lt", i, const_i(0), DType.bool), add_i(i, const_i(n)), i,
                     DType.int64)
    bad = Binary("or", Binary("lt", wrapped, const_i(0), DType.bool),
                 Binary("ge", wrapped, const_i(n), DType.bool), DType.bool)
    return _min(_max(wrapped, const_i(0), DType.int64), const_i(max(n - 1, 0)), DType.int64), bad


def _flag(bad: Expr, params: tuple[Param, ...], code: int = INDEX_OUT_OF_RANGE) -> Store:
    """Set the kernel's status flag (its last parameter) to ``code`` where ``bad`` holds."""
    return Store(len(params) - 1, const_i(0), Const(code, DType.int32), mask=bad)


def _lower_take(node: Node, name: str) -> Kernel:
    """out[a, i, b] = x[a, idx[i], b] (a: the axes before ``axis``, i: idx's, b: those after),
    one output element per iteration, so GPUs read and write consecutive elements."""
    x, idx = node.inputs
    xs, ishape = _static(x), _static(idx)
    axis, k = node.attrs["axis"] % x.ndim, idx.ndim
    params = _inputs_params(node) + (_status_param(),)

    def body(v: list[Expr]) -> list[Stmt]:
        at, bad = _checked_index(Load(1, linear_index(v[axis:axis + k],
                                                      row_major_strides(ishape)), idx.dtype),
                                 xs[axis])
        src = linear_index(v[:axis] + [at] + v[axis + k:], row_major_strides(xs))
        value = Load(0, src, x.dtype) if xs[axis] else _c(0, x.dtype)
        out = linear_index(v, row_major_strides(_static(node)))
        return [_flag(bad, params), Store(2, out, value)]

    vars_: list[Expr] = [Var(f"i{d}") for d in range(node.ndim)]
    return Kernel(name, params, _nest(_static(node), body(vars_)), (node.op,))


def _lower_gather(node: Node, name: str) -> Kernel:
    """out[..., j, ...] = x[..., idx[..., j, ...], ...] along ``axis`` (numpy.take_along_axis)."""
    x, idx = node.inputs
    xs = _static(x)
    axis = node.attrs["axis"] % x.ndim
    params = _inputs_params(node) + (_status_param(),)
    vars_: list[Expr] = [Var(f"i{d}") for d in range(node.ndim)]
    here = linear_index(vars_, row_major_strides(_static(node)))
    at, bad = _checked_index(Load(1, here, idx.dtype), xs[axis])
    src = linear_index(vars_[:axis] + [at] + vars_[axis + 1:], row_major_strides(xs))
    value = Load(0, src, x.dtype) if xs[axis] else _c(0, x.dtype)
    return Kernel(name, params, _nest(_static(node), [_flag(bad, params), Store(2, here, value)]),
                  (node.op,))


def _scatter_add(node: Node, name: str, gather_like: bool, gpu: bool) -> Kernel:
    """take_grad / gather_grad: dx = zeros like x, then dx[a, idx[..], b] += dy[a, t, b] for
    each of the m dy elements t landing in column (a, b) (a: the axes before ``axis``, b: those
    after). dy elements are added in order, as numpy's ``np.add.at`` (the reference) does, and
    no two parallel iterations write one element:

    - CPUs: one iteration per a; it zeroes its slab, then adds each dy row t into row idx[t]
      with a unit-stride, vectorisable loop over b.
    - GPUs (``gpu``): one work-item per column (a, b), so neighbouring work-items touch
      neighbouring elements; it zeroes its column, then adds its m elements.
    """
    dy, idx, x = node.inputs
    axis = node.attrs["axis"] % node.ndim
    xs, ds = _static(x), _static(dy)
    n, inner, outer = xs[axis], math.prod(xs[axis + 1:]), math.prod(xs[:axis])
    m = ds[axis] if gather_like else math.prod(_static(idx))
    params = _inputs_params(node) + (_status_param(),)
    t = Var("t")

    def add(a: Expr, b: Expr) -> tuple[Store, tuple[Store, ...]]:
        """(the flag, the add) of dy[a, t, b] into dx[a, idx[..], b] (no add when n is 0)."""
        at_dy = add_i(mul_i(add_i(mul_i(a, m), t), inner), b)
        row, bad = _checked_index(Load(1, at_dy if gather_like else t, idx.dtype), n)
        dx = add_i(mul_i(add_i(mul_i(a, n), row), inner), b)
        acc = Store(3, dx, _add(Load(3, dx, node.dtype), Load(0, at_dy, dy.dtype), node.dtype))
        return _flag(bad, params), (acc,) if n else ()

    if gpu:
        c, j = Var("c"), Var("j")
        a, b = _i("div", c, const_i(inner)), _mod(c, inner)
        zero = Loop("j", n, (Store(3, add_i(mul_i(add_i(mul_i(a, n), j), inner), b),
                                   _c(0, node.dtype)),))
        flag, acc = add(a, b)
        body = (zero, Loop("t", m, (flag, *acc)))
        return Kernel(name, params, (Loop("c", outer * inner, body, parallel=True),),
                      (node.op,))
    a, b = Var("a"), Var("b")
    zero = Loop("z", n * inner, (Store(3, add_i(mul_i(a, n * inner), Var("z")),
                                       _c(0, node.dtype)),), vectorize=True)
    flag, acc = add(a, b)
    # take's index is one per row t: its check stays out of the vectorised loop
    row = Loop("b", inner, (flag, *acc) if gather_like else acc, vectorize=True)
    rows = Loop("t", m, (row,) if gather_like else (flag, row))
    return Kernel(name, params, (Loop("a", outer, (zero, rows), parallel=True),), (node.op,))


# -- random numbers: dropout ---------------------------------------------------------------------


def _lower_dropout(node: Node, name: str) -> Kernel:
    """Inverted dropout with graphnn.random's counter-based numbers, bit for bit the reference's:
    element i is kept where lowbias32(lowbias32(i ^ key) + key) >> 8 >= p * 2**24, with
    key = lowbias32(lowbias32(seed) ^ counter) and counter the session's run counter (a
    parameter, so one compiled kernel serves every run); kept values are x / (1 - p)."""
    x, dt, p = node.inputs[0], node.dtype, node.attrs["p"]
    size = math.prod(_static(x))
    i = Var("i0")
    if p in (0.0, 1.0):  # no random numbers: a copy, or zeros
        value: Expr = Load(0, i, dt) if p == 0.0 else _c(0, dt)
        return Kernel(name, _inputs_params(node), _nest((size,), [Store(1, i, value)]),
                      (node.op,))
    params = _inputs_params(node) + (Param("counter", DType.int64, (1,), counter=True),)
    seed_bits = int(grandom.lowbias32(np.array([node.attrs["seed"] & 0xFFFFFFFF], np.uint32))[0])
    key = Unary("hash32", Binary("xor", const_i(seed_bits), Load(2, const_i(0), DType.int64),
                                 DType.int64), DType.int64)
    bits = Unary("hash32", add_i(Unary("hash32", Binary("xor", i, key, DType.int64),
                                       DType.int64), key), DType.int64)
    # u = (bits >> 8) * 2**-24 >= p  <=>  bits >= ceil(p * 2**24) * 2**8 (exact: integers)
    keep = Binary("ge", bits, const_i(math.ceil(p * 2.0**24) << 8), DType.bool)
    value = Binary("div", _mul(Load(0, i, dt), Cast(keep, dt), dt), _c(1.0 - p, dt), dt)
    return Kernel(name, params, _nest((size,), [Store(1, i, value)]), (node.op,))


# -- data movement: concat, stack, tile, pad, one_hot ---------------------------------------------


def _out_nest(node: Node, name: str, value: Callable[[list[Expr]], Expr]) -> Kernel:
    """out[i...] = value(i...) over the output's index space."""
    vars_: list[Expr] = [Var(f"i{d}") for d in range(node.ndim)]
    at = linear_index(vars_, row_major_strides(_static(node)))
    params = _inputs_params(node)
    return Kernel(name, params, _nest(_static(node), [Store(len(params) - 1, at, value(vars_))]),
                  (node.op,))


def _lower_size(node: Node, name: str) -> Kernel:
    """The element count of the static axes, stored as a constant (x is not read)."""
    xs = _static(node.inputs[0])
    count = math.prod(xs[a] for a in node.attrs["axes"])
    return _out_nest(node, name, lambda v: _c(count, node.dtype))


def _inputs_params(node: Node) -> tuple[Param, ...]:
    return tuple(Param(f"in{k}", i.dtype, _static(i)) for k, i in enumerate(node.inputs)) + (
        Param("out", node.dtype, _static(node), True),)


def _lower_concat(node: Node, name: str) -> Kernel:
    """One loop nest per input, each writing its slab of the output."""
    axis = node.attrs["axis"] % node.ndim
    out_shape = _static(node)
    body: list[Stmt] = []
    offset = 0
    for k, x in enumerate(node.inputs):
        xs = _static(x)
        vars_: list[Expr] = [Var(f"i{d}") for d in range(node.ndim)]
        dst = list(vars_)
        dst[axis] = add_i(vars_[axis], const_i(offset))
        body.extend(_nest(xs, [Store(len(node.inputs), linear_index(dst, row_major_strides(
            out_shape)), Load(k, linear_index(vars_, row_major_strides(xs)), x.dtype))]))
        offset += xs[axis]
    return Kernel(name, _inputs_params(node), tuple(body), (node.op,))


def _lower_stack(node: Node, name: str) -> Kernel:
    axis = node.attrs["axis"] % node.ndim
    body: list[Stmt] = []
    for k, x in enumerate(node.inputs):
        xs = _static(x)
        vars_: list[Expr] = [Var(f"i{d}") for d in range(x.ndim)]
        dst = vars_[:axis] + [const_i(k)] + vars_[axis:]
        body.extend(_nest(xs, [Store(len(node.inputs), linear_index(dst, row_major_strides(
            _static(node))), Load(k, linear_index(vars_, row_major_strides(xs)), x.dtype))]))
    return Kernel(name, _inputs_params(node), tuple(body), (node.op,))


def _mod(a: Expr, n: int) -> Expr:
    return _i("sub", a, mul_i(_i("div", a, const_i(n)), n))


def _lower_tile(node: Node, name: str) -> Kernel:
    x = node.inputs[0]
    xs = _static(x)
    return _out_nest(node, name, lambda v: Load(0, linear_index(
        [_mod(i, d) for i, d in zip(v, xs)], row_major_strides(xs)), x.dtype))


def _lower_pad(node: Node, name: str) -> Kernel:
    x = node.inputs[0]
    xs, nd, mode = _static(x), x.ndim, node.attrs["mode"]
    pads = node.attrs["pads"]

    def value(v: list[Expr]) -> Expr:
        src, valid = [], None
        for d in range(nd):
            pos = add_i(v[d], const_i(-pads[d]))
            if mode == "reflect":  # mirror without repeating the edge: |p|, then 2(L-1) - p
                pos = Unary("abs", pos, DType.int64)
                pos = _min(pos, _i("sub", const_i(2 * (xs[d] - 1)), pos), DType.int64)
            ok = Binary("and", Binary("ge", pos, const_i(0), DType.bool),
                        Binary("lt", pos, const_i(xs[d]), DType.bool), DType.bool)
            valid = ok if valid is None else Binary("and", valid, ok, DType.bool)
            src.append(_min(_max(pos, const_i(0), DType.int64), const_i(xs[d] - 1), DType.int64))
        load = Load(0, linear_index(src, row_major_strides(xs)), x.dtype)
        if mode != "constant" or valid is None:
            return load  # edge: the clamped index is the answer
        return Select(valid, load, _c(node.attrs["value"], x.dtype), x.dtype)

    return _out_nest(node, name, value)


def _lower_one_hot(node: Node, name: str) -> Kernel:
    idx = node.inputs[0]
    dt = node.dtype

    def value(v: list[Expr]) -> Expr:
        i = Load(0, linear_index(v[:-1], row_major_strides(_static(idx))), idx.dtype)
        i64 = Cast(i, DType.int64) if idx.dtype is not DType.int64 else i
        return Select(Binary("eq", i64, v[-1], DType.bool), _c(1, dt), _c(0, dt), dt)

    return _out_nest(node, name, value)


# -- normalisations -----------------------------------------------------------------------------


def _lower_batch_norm(node: Node, name: str) -> Kernel:
    """Inference batch norm is elementwise once the (C,) parameters are viewed as (1, C, 1, ...)."""
    x, dt = node.inputs[0], node.dtype
    chan = (1, x.shape[1] or 0) + (1,) * (x.ndim - 2)
    ins = [(dt, _static(x))] + [(dt, chan)] * 4

    def build(v: list[Expr]) -> Expr:
        xv, m, var, w, b = v
        inv = Binary("div", _c(1, dt), Unary("sqrt", _add(var, _c(node.attrs["eps"], dt), dt), dt),
                     dt)
        return _add(_mul(_mul(Binary("sub", xv, m, dt), inv, dt), w, dt), b, dt)

    return elementwise_kernel(name, ins, (dt, _static(node)), build, ("batch_norm",))


def _lower_row_norm(node: Node, name: str) -> Kernel | None:
    """layer_norm and rms_norm over the trailing ``normalized_shape`` dims: statistics passes,
    then a write pass with the optional affine parameters (shaped like the trailing dims)."""
    x, dt = node.inputs[0], node.dtype
    xs = _static(x)
    k = len(node.attrs["normalized_shape"])
    axes = list(range(x.ndim - k, x.ndim))
    vars_, kept = _split(xs, axes)
    at = linear_index(vars_, row_major_strides(xs))
    v = Load(0, at, dt)
    count = math.prod(xs[d] for d in axes)
    a, t = Var("a", dt), Var("t", dt)
    trail = linear_index(vars_[x.ndim - k:], row_major_strides(xs[x.ndim - k:]))
    if node.op == "layer_norm":
        eps = node.attrs["eps"]
        mean = Binary("div", a, _c(count, dt), dt)
        dev = Binary("sub", v, mean, dt)
        passes = [Declare("a", dt, _c(0, dt)), *_over(xs, axes, (Assign("a", _add(a, v, dt)),)),
                  Declare("t", dt, _c(0, dt)),
                  *_over(xs, axes, (Assign("t", _add(t, _mul(dev, dev, dt), dt)),))]
        normed: Expr = Binary("div", dev, Unary("sqrt", _add(
            Binary("div", t, _c(count, dt), dt), _c(eps, dt), dt), dt), dt)
    else:
        eps = node.attrs["eps"] if node.attrs["eps"] is not None else float(np.finfo(dt.np).eps)
        passes = [Declare("a", dt, _c(0, dt)),
                  *_over(xs, axes, (Assign("a", _add(a, _mul(v, v, dt), dt)),))]
        normed = Binary("div", v, Unary("sqrt", _add(Binary("div", a, _c(count, dt), dt),
                                                     _c(eps, dt), dt), dt), dt)
    if len(node.inputs) > 1:
        normed = _mul(normed, Load(1, trail, dt), dt)
    if len(node.inputs) > 2:
        normed = _add(normed, Load(2, trail, dt), dt)
    body = (*passes, *_over(xs, axes, (Store(len(node.inputs), at, normed),)))
    return Kernel(name, _inputs_params(node), _around(xs, kept, body), (node.op,))


def _lower_avg_pool(node: Node, name: str) -> Kernel | None:
    """Average pooling with PyTorch's divisor: the window clipped to the padded input when
    padding counts (count_include_pad), else to the input; the ceil-mode overhang never counts."""
    x = node.inputs[0]
    a, nd, dt = node.attrs, node.ndim - 2, node.dtype
    xs = _static(x)
    params = (Param("in0", x.dtype, xs), Param("out", dt, _static(node), True))
    out_vars: list[Expr] = [Var(f"y{d}") for d in range(nd)]
    taps: list[Expr] = [Var(f"k{d}") for d in range(nd)]
    n, ch = _planes(xs[1])
    pads = a["pads"]
    pixel = _window_loads(params[0], 0, n, ch, out_vars, taps, a["stride"], a["dilation"],
                          pads[:nd], _c(0, dt),
                          window_reach(_static(node)[2:], a["kernel_size"], a["stride"],
                                       a["dilation"]))
    divisor: Expr = const_i(1)
    for d in range(nd):
        start = add_i(mul_i(out_vars[d], a["stride"][d]), const_i(-pads[d]))
        end = add_i(start, const_i(a["kernel_size"][d]))
        if a["count_include_pad"]:
            lo, hi = start, _min(end, const_i(xs[2 + d] + pads[d + nd]), DType.int64)
        else:
            lo = _max(start, const_i(0), DType.int64)
            hi = _min(end, const_i(xs[2 + d]), DType.int64)
        divisor = Binary("mul", divisor, _i("sub", hi, lo), DType.int64)
    acc = Var("acc", dt)
    inner: tuple[Stmt, ...] = (Assign("acc", _add(acc, pixel, dt)),)
    for d in reversed(range(nd)):
        inner = (Loop(f"k{d}", a["kernel_size"][d], inner),)
    out_index = linear_index([n, ch, *out_vars], row_major_strides(_static(node)))
    stmts: tuple[Stmt, ...] = (Declare("acc", dt, _c(0, dt)), *inner,
                               Store(1, out_index, Binary("div", acc, Cast(divisor, dt), dt)))
    for d in reversed(range(nd)):
        stmts = (Loop(f"y{d}", node.shape[2 + d] or 0, stmts, vectorize=d == nd - 1),)
    return Kernel(name, params, _plane_loop(_static(node), stmts), ("avg_pool",))


def _lower_group_norm(node: Node, name: str) -> Kernel | None:
    """Per (sample, group): the group's channels and all positions are one contiguous run of
    Cg * S elements in NCHW, so the statistics are row passes over it."""
    x, dt = node.inputs[0], node.dtype
    xs = _static(x)
    g = node.attrs["num_groups"]
    spatial = math.prod(xs[2:])
    run = xs[1] // g * spatial
    ng, r = Var("ng"), Var("r")
    at = add_i(mul_i(ng, run), r)
    v = Load(0, at, dt)
    a, t = Var("a", dt), Var("t", dt)
    dev = Binary("sub", v, Binary("div", a, _c(run, dt), dt), dt)
    normed: Expr = Binary("div", dev, Unary("sqrt", _add(Binary("div", t, _c(run, dt), dt),
                                                         _c(node.attrs["eps"], dt), dt), dt), dt)
    channel = add_i(mul_i(_i("sub", ng, mul_i(_i("div", ng, const_i(g)), g)), xs[1] // g),
                    _i("div", r, const_i(spatial)))
    if len(node.inputs) > 1:
        normed = _mul(normed, Load(1, channel, dt), dt)
    if len(node.inputs) > 2:
        normed = _add(normed, Load(2, channel, dt), dt)
    body = (Declare("a", dt, _c(0, dt)), Loop("r", run, (Assign("a", _add(a, v, dt)),)),
            Declare("t", dt, _c(0, dt)), Loop("r", run, (Assign("t", _add(t, _mul(dev, dev, dt),
                                                                                dt)),)),
            Loop("r", run, (Store(len(node.inputs), at, normed),), vectorize=True))
    return Kernel(name, _inputs_params(node), (Loop("ng", xs[0] * g, body, parallel=True),),
                  (node.op,))


def _lower_adaptive(node: Node, name: str) -> Kernel | None:
    """Adaptive pooling: window i of a dim spans [floor(i L / o), ceil((i + 1) L / o)); loops run
    over the largest window with a mask, the bounds are index arithmetic."""
    x, dt = node.inputs[0], node.dtype
    xs, out = _static(x), node.attrs["output_size"]
    nd = len(out)
    is_max = node.op == "adaptive_max_pool"
    n, ch = _planes(xs[1])
    ovars = [Var(f"y{d}") for d in range(nd)]
    taps = [Var(f"k{d}") for d in range(nd)]
    index: list[Expr] = [n, ch]
    valid: Expr | None = None
    count: Expr = const_i(1)
    widest = []
    for d in range(nd):
        size, o = xs[2 + d], out[d]
        start = _i("div", mul_i(ovars[d], size), const_i(o))
        end = _i("div", add_i(mul_i(add_i(ovars[d], const_i(1)), size), const_i(o - 1)),
                 const_i(o))
        widest.append(max(-(-((i + 1) * size) // o) - (i * size) // o for i in range(o)))
        pos = add_i(start, taps[d])
        ok = Binary("lt", pos, end, DType.bool)
        valid = ok if valid is None else Binary("and", valid, ok, DType.bool)
        index.append(_min(pos, const_i(size - 1), DType.int64))
        count = Binary("mul", count, _i("sub", end, start), DType.int64)
    fill = _c(-np.inf if is_max else 0, dt)
    pixel = Select(valid, Load(0, linear_index(index, row_major_strides(xs)), dt), fill, dt)
    acc = Var("acc", dt)
    update = _max(acc, pixel, dt) if is_max else _add(acc, pixel, dt)
    inner: tuple[Stmt, ...] = (Assign("acc", update),)
    for d in reversed(range(nd)):
        inner = (Loop(f"k{d}", widest[d], inner),)
    result: Expr = acc if is_max else Binary("div", acc, Cast(count, dt), dt)
    out_index = linear_index([n, ch, *ovars], row_major_strides(_static(node)))
    stmts: tuple[Stmt, ...] = (Declare("acc", dt, fill), *inner, Store(1, out_index, result))
    for d in reversed(range(nd)):
        stmts = (Loop(f"y{d}", out[d], stmts),)
    params = (Param("in0", dt, xs), Param("out", dt, _static(node), True))
    return Kernel(name, params, _plane_loop(xs, stmts), (node.op,))


# -- attention -----------------------------------------------------------------------------------


def _unflatten(r: Expr, shape: Sequence[int]) -> list[Expr]:
    """The multi-index of flat row-major position ``r`` in ``shape``."""
    out: list[Expr] = []
    stride = 1
    for d in reversed(range(len(shape))):
        at = _i("div", r, const_i(stride)) if stride != 1 else r
        out.append(at if d == 0 else _mod(at, shape[d]))
        stride *= shape[d]
    return out[::-1]


def _lower_attention(node: Node, name: str) -> Kernel | None:
    """scaled_dot_product_attention (torch's semantics: broadcast batch axes, a bool or additive
    mask, is_causal, scale), one query row per parallel iteration, with an online softmax
    (Milakov & Gimelshein 2018, as FlashAttention): one pass over the keys keeps the largest
    score so far, rescales the row's running sum and output row when it grows, and adds
    exp(score - largest) * v[j], vectorised along v's last axis; then the row is divided by the
    sum. No scratch buffer and one pass, but no GEMM either: at O2, decompose_attention makes
    the op two GEMMs and a softmax instead."""
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) == 4 else None
    dt, out = node.dtype, _static(node)
    batch, length, ev = out[:-2], out[-2], out[-1]
    keys, e_dim = _static(k)[-2], _static(q)[-1]
    if not keys:
        return None  # softmax over no keys: the reference raises
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1 / math.sqrt(e_dim)
    r = Var("r")
    *bvars, i = _unflatten(r, (*batch, length))

    def at(x: Node, shape: tuple[int, ...], vars_: list[Expr]) -> Expr:
        return linear_index(vars_, _broadcast_strides(_static(x), shape))

    def score() -> tuple[list[Stmt], Expr]:
        """(statements, the score of key j) for this row."""
        j, d, acc = Var("j"), Var("d"), Var("acc", dt)
        prod = _mul(Load(0, at(q, (*batch, length, e_dim), [*bvars, i, d]), dt),
                    Load(1, at(k, (*batch, keys, e_dim), [*bvars, j, d]), dt), dt)
        stmts: list[Stmt] = [Declare(acc.name, dt, _c(0, dt)),
                             Loop(d.name, e_dim, (Assign(acc.name, _add(acc, prod, dt)),))]
        s: Expr = _mul(acc, _c(scale, dt), dt)
        if node.attrs["is_causal"]:
            s = Select(Binary("le", j, i, DType.bool), s, _c(-np.inf, dt), dt)
        elif mask is not None:
            m = Load(3, at(mask, (*batch, length, keys), [*bvars, i, j]), mask.dtype)
            s = Select(m, s, _c(-np.inf, dt), dt) if mask.dtype.is_bool else _add(s, m, dt)
        return stmts, s

    top, total, new, corr, w, s = (Var(n, dt) for n in ("top", "total", "new", "corr", "w", "s"))
    o = len(node.inputs)  # the output's parameter
    row = _i("mul", r, const_i(ev))
    e0, e1, e2 = Var("e0"), Var("e1"), Var("e2")
    stmts, score_j = score()
    ninf = _c(-np.inf, dt)
    vj = Load(2, at(v, (*batch, keys, ev), [*bvars, Var("j"), e1]), dt)
    step = (*stmts, Declare("s", dt, score_j),
            Declare("new", dt, _max(top, s, dt)),
            # rescale what came before; both -inf (nothing kept yet) leaves it as it is
            Declare("corr", dt, Select(Binary("eq", top, new, DType.bool), _c(1, dt),
                                       Unary("exp", Binary("sub", top, new, dt), dt), dt)),
            Declare("w", dt, Select(Binary("eq", s, ninf, DType.bool), _c(0, dt),
                                    Unary("exp", Binary("sub", s, new, dt), dt), dt)),
            Assign("total", _add(_mul(total, corr, dt), w, dt)),
            Loop("e1", ev, (Store(o, add_i(row, e1), _add(
                _mul(Load(o, add_i(row, e1), dt), corr, dt), _mul(w, vj, dt), dt)),),
                 vectorize=True),
            Assign("top", new))
    body = (Declare("top", dt, ninf), Declare("total", dt, _c(0, dt)),
            Loop("e0", ev, (Store(o, add_i(row, e0), _c(0, dt)),), vectorize=True),
            Loop("j", keys, step),
            Loop("e2", ev, (Store(o, add_i(row, e2), Binary(
                "div", Load(o, add_i(row, e2), dt), total, dt)),), vectorize=True))
    rows = math.prod(batch) * length
    return Kernel(name, _inputs_params(node), (Loop("r", rows, body, parallel=True),),
                  (node.op,))


COPIES = frozenset({"reshape", "flatten", "squeeze", "unsqueeze", "reshape_like"})
REDUCTIONS = frozenset(_COMBINE)


def _scalar_ok(n: Node) -> bool:
    """An op SCALAR expresses that needs no status flag: integer pow checks its exponent, which
    elementwise kernels do and the reduction and epilogue templates do not."""
    return n.op in SCALAR and not (n.op == "pow" and n.dtype.is_int)


def _handlers(gpu: bool) -> dict[str, Callable[[Node, str], Kernel | None]]:
    """The lowering of each op outside SCALAR, COPIES and REDUCTIONS; ``gpu`` picks the scatter
    kernels' loop order (``lower``)."""
    return {
        "transpose": _lower_transpose, "slice": _lower_slice, "full_like": _lower_full_like,
        "matmul": _lower_matmul, "conv": _lower_conv, "max_pool": _lower_max_pool,
        "softmax": _lower_rowwise, "log_softmax": _lower_rowwise, "logsumexp": _lower_multipass,
        "var": _lower_multipass, "std": _lower_multipass, "argmax": _lower_arg,
        "argmin": _lower_arg, "concat": _lower_concat, "stack": _lower_stack,
        "tile": _lower_tile, "pad": _lower_pad, "one_hot": _lower_one_hot,
        "batch_norm": _lower_batch_norm, "layer_norm": _lower_row_norm,
        "rms_norm": _lower_row_norm, "avg_pool": _lower_avg_pool,
        "group_norm": _lower_group_norm, "adaptive_avg_pool": _lower_adaptive,
        "adaptive_max_pool": _lower_adaptive, "conv_weight_grad": _lower_conv_weight_grad,
        "max_pool_grad": _lower_max_pool_grad, "conv_transpose": _lower_conv_transpose,
        "take": _lower_take, "gather": _lower_gather, "avg_pool_grad": _lower_avg_pool_grad,
        "adaptive_pool_grad": _lower_adaptive_pool_grad, "slice_grad": _lower_slice_grad,
        "pad_grad": _lower_pad_grad, "einsum": _lower_einsum, "gemm": _lower_gemm,
        "size": _lower_size, "dropout": _lower_dropout,
        "scaled_dot_product_attention": _lower_attention,
        "take_grad": lambda n, nm: _scatter_add(n, nm, gather_like=False, gpu=gpu),
        "gather_grad": lambda n, nm: _scatter_add(n, nm, gather_like=True, gpu=gpu)}


def lower(node: Node, name: str, skip: frozenset[str] = frozenset(), gpu: bool = False,
          mark_constants: bool = True) -> Kernel | None:
    """The kernel computing ``node``, or None when the lowering declines it (see the module
    docstring) or its op is in ``skip`` (ops a backend prefers to leave to their reference
    implementation). ``gpu``: the kernel's
    parallel iterations become work-items of a GPU, not threads of a CPU; the scatter kernels
    (take_grad, gather_grad) then take a loop order that suits that. With ``mark_constants``,
    the parameters of inputs that are constant nodes are marked ``Param.constant`` (off where
    several calls of the code may run at once: an AOT library's contexts)."""
    kernel = _lower(node, name, skip, gpu)
    constants = {i for i, x in enumerate(node.inputs) if x.op == "constant" and mark_constants}
    if kernel is None or not constants:
        return kernel
    return dataclasses.replace(kernel, params=tuple(
        dataclasses.replace(p, constant=True) if i in constants else p
        for i, p in enumerate(kernel.params)))


def _lower(node: Node, name: str, skip: frozenset[str], gpu: bool) -> Kernel | None:
    if any(d is None for d in node.shape) or any(d is None for i in node.inputs for d in i.shape):
        return None
    if node.op in skip or (node.op == "fused" and skip & set(node.attrs["body"].ops)):
        return None
    if node.op in SCALAR:
        return _lower_elementwise(node, name)
    if node.op in COPIES:
        return _lower_copy(node, name)
    if node.op in REDUCTIONS:
        return _lower_plain_reduce(node, name)
    handlers = _handlers(gpu)
    if node.op in handlers:
        return handlers[node.op](node, name)
    if node.op == "fused" and node.attrs["kind"] == "elementwise":
        return _lower_fused_elementwise(node, name)
    if node.op == "fused" and node.attrs["kind"] == "reduction":
        return _lower_fused_reduce(node, name)
    if node.op == "fused" and node.attrs["kind"] == "epilogue":
        return _lower_fused_epilogue(node, name)
    return None


def lowered_ops() -> set[str]:
    return set(SCALAR) | COPIES | REDUCTIONS | set(_handlers(gpu=False))
