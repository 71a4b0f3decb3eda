"""Linear algebra: matmul (numpy rules, batched), gemm (ONNX), einsum, and the dense helper.

``dense`` is not an op: it builds ``matmul`` then ``add``, which the fusion pass turns back into
one kernel with a bias epilogue. Keeping the IR small keeps every backend and gradient rule small.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

from graphnn import dtypes as dt
from graphnn.dtypes import DType
from graphnn.errors import AttrError, ShapeError
from graphnn.ir import Attrs, Dim, Node, Shape
from graphnn.ops.elementwise import TensorLike, add
from graphnn.ops.registry import Attr, OpDef, bool_, float_, make_node, register
from graphnn.ops.source import as_node
from graphnn.shapes import broadcast_shapes, require_dtype, require_same_dtype, same_dim


def _matmul_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    a, b = inputs
    dtype = require_same_dtype(inputs)
    require_dtype(a, dt.NUMERIC)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError("matmul needs inputs of rank >= 1 (use mul for scalars)")
    sa = (1,) + a.shape if a.ndim == 1 else a.shape
    sb = b.shape + (1,) if b.ndim == 1 else b.shape
    if not same_dim(sa[-1], sb[-2]):
        raise ShapeError(f"inner dimensions differ: {sa[-1]} vs {sb[-2]}")
    batch = broadcast_shapes(sa[:-2], sb[:-2])
    out: tuple[Dim, ...] = batch + (sa[-2], sb[-1])
    if a.ndim == 1:
        out = out[:-2] + out[-1:]
    if b.ndim == 1:
        out = out[:-1]
    return out, dtype


register(OpDef("matmul", _matmul_infer, np.matmul, arity=(2, 2),
               doc="Matrix product with numpy broadcasting. Ref: ONNX MatMul; numpy.matmul"))


def _gemm_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    a, b = inputs[:2]
    dtype = require_same_dtype(inputs)
    require_dtype(a, dt.NUMERIC)
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"gemm takes 2-D a and b, got {a.type_str} and {b.type_str}")
    m, k = a.shape[::-1] if attrs["trans_a"] else a.shape
    k2, n = b.shape[::-1] if attrs["trans_b"] else b.shape
    if not same_dim(k, k2):
        raise ShapeError(f"inner dimensions differ: {k} vs {k2}")
    if len(inputs) == 3:
        broadcast_shapes(inputs[2].shape, (m, n))
        if inputs[2].ndim > 2 or broadcast_shapes(inputs[2].shape, (m, n)) != (m, n):
            raise ShapeError(f"c {inputs[2].type_str} does not broadcast to ({m}, {n})")
    return (m, n), dtype


def _gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, *, alpha: float,
          beta: float, trans_a: bool, trans_b: bool) -> np.ndarray:
    out = alpha * ((a.T if trans_a else a) @ (b.T if trans_b else b))
    return (out if c is None else out + beta * c).astype(a.dtype)


register(OpDef("gemm", _gemm_infer, _gemm, arity=(2, 3),
               attrs={"alpha": Attr(float_, 1.0), "beta": Attr(float_, 1.0),
                      "trans_a": Attr(bool_, False), "trans_b": Attr(bool_, False)},
               doc="alpha * op(a) @ op(b) + beta * c. Ref: ONNX Gemm"))


def parse_einsum(equation: str, ndims: Sequence[int]) -> tuple[list[str], str]:
    """(one letter string per operand, the output's letters) of an einsum ``equation`` over
    operands of ranks ``ndims``; without ``->`` the output is the letters used once, sorted
    (numpy.einsum's rule).

    Raises:  AttrError for '...', a wrong operand count or a bad output term; ShapeError when a
             term's length differs from its operand's rank.
    """
    eq = equation.replace(" ", "")
    if "." in eq:
        raise AttrError("einsum with '...' is not supported; name every axis with a letter")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        raise AttrError(f"equation {equation!r} names {len(terms)} operands, got {len(ndims)}")
    for t, nd in zip(terms, ndims):
        if len(t) != nd or any(c not in string.ascii_letters for c in t):
            raise ShapeError(f"einsum term {t!r} does not match an operand of rank {nd}")
    if not arrow:  # implicit output: letters used once, sorted (numpy's rule)
        letters = "".join(terms)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(set(rhs)) != len(rhs) or any(c not in "".join(terms) for c in rhs):
        raise AttrError(f"bad output term {rhs!r} in {equation!r}")
    return terms, rhs


def _einsum_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    dtype = require_same_dtype(inputs)
    require_dtype(inputs[0], dt.NUMERIC)
    terms, rhs = parse_einsum(attrs["equation"], [i.ndim for i in inputs])
    sizes: dict[str, Dim] = {}
    for t, node in zip(terms, inputs):
        for c, d in zip(t, node.shape):
            if not same_dim(sizes.get(c), d):
                raise ShapeError(f"einsum index {c!r} has sizes {sizes[c]} and {d}")
            sizes[c] = d if sizes.get(c) is None else sizes[c]
    return tuple(sizes[c] for c in rhs), dtype


def _einsum_equation(v: object) -> str:
    if not isinstance(v, str):
        raise AttrError("equation must be a string")
    return v


register(OpDef("einsum", _einsum_infer,
               lambda *xs, equation: np.einsum(equation, *xs, optimize=True),
               attrs={"equation": Attr(_einsum_equation)}, arity=(1, None),
               doc="Einstein summation over lettered axes. Ref: ONNX Einsum; numpy.einsum"))


# -- frontend -------------------------------------------------------------------------------------


def matmul(a: TensorLike, b: TensorLike, name: str | None = None) -> Node:
    """Matrix product with numpy's rules (1-D operands promoted, batch dims broadcast).

    Shapes:  a: (..., M, K), b: (..., K, N) -> (broadcast(...), M, N)
    Dtypes:  int32, int64, float32, float64; a and b alike
    Raises:  ShapeError if K differs or the batch dims do not broadcast; DTypeError
    Ref:     ONNX MatMul; numpy.matmul
    """
    a_node = as_node(a) if isinstance(a, Node) or not isinstance(b, Node) else as_node(a, like=b)
    return make_node("matmul", [a_node, as_node(b, like=a_node)], name=name)


def gemm(a: TensorLike, b: TensorLike, c: TensorLike | None = None, alpha: float = 1.0,
         beta: float = 1.0, trans_a: bool = False, trans_b: bool = False,
         name: str | None = None) -> Node:
    """``alpha * op(a) @ op(b) + beta * c`` with optional transposes.

    Shapes:  a: (M, K) or (K, M) with trans_a; b: (K, N) or (N, K) with trans_b; c broadcasts to
             (M, N) -> (M, N)
    Dtypes:  int32, int64, float32, float64, all alike
    Ref:     ONNX Gemm (opset 13)
    """
    a_node = as_node(a)
    nodes = [a_node, as_node(b, like=a_node)] + ([] if c is None else [as_node(c, like=a_node)])
    attrs = {"alpha": alpha, "beta": beta, "trans_a": trans_a, "trans_b": trans_b}
    return make_node("gemm", nodes, attrs, name=name)


def einsum(equation: str, *operands: TensorLike, name: str | None = None) -> Node:
    """Einstein summation, e.g. ``einsum("bij,bjk->bik", a, b)``.

    Shapes:  each operand's rank equals its term's length; shared letters share sizes.
    Dtypes:  numeric, all alike.  Raises: ShapeError for size or rank mismatches; AttrError for
             malformed equations or '...' (not supported: name every axis).
    Ref:     ONNX Einsum; numpy.einsum
    """
    first = as_node(operands[0])
    nodes = [first] + [as_node(o, like=first) for o in operands[1:]]
    return make_node("einsum", nodes, {"equation": equation}, name=name)


def dense(x: TensorLike, weight: TensorLike, bias: TensorLike | None = None,
          transpose_weight: bool = False, name: str | None = None) -> Node:
    """Fully connected layer ``x @ W + b`` (``x @ W.T + b`` with transpose_weight, as PyTorch's
    ``F.linear`` stores W as (out, in)).

    Shapes:  x: (..., in), weight: (in, out) or (out, in) -> (..., out); bias: (out,)
    Dtypes:  float32, float64 (numeric accepted), all alike
    Ref:     torch.nn.functional.linear; Keras Dense
    """
    from graphnn.ops.shape import transpose

    w = as_node(weight)
    y = matmul(x, transpose(w) if transpose_weight else w)
    return y if bias is None else add(y, bias, name=name)


# -- gradients ------------------------------------------------------------------------------------
from graphnn.ops.registry import def_gradient  # noqa: E402 - rules follow the ops they differentiate


def _swap_last(x: Node) -> Node:
    from graphnn.ops.shape import transpose

    perm = list(range(x.ndim))
    perm[-2:] = perm[-1], perm[-2]
    return transpose(x, perm)


@def_gradient("matmul")
def _g_matmul(n: Node, dy: Node) -> list[Node | None]:
    from graphnn.ops.shape import squeeze, unsqueeze

    a, b = n.inputs
    a2 = a if a.ndim > 1 else unsqueeze(a, 0)
    b2 = b if b.ndim > 1 else unsqueeze(b, -1)
    dy2 = dy if a.ndim > 1 else unsqueeze(dy, -2 if dy.ndim else 0)
    dy2 = dy2 if b.ndim > 1 else unsqueeze(dy2, -1)
    da = matmul(dy2, _swap_last(b2))
    db = matmul(_swap_last(a2), dy2)
    return [da if a.ndim > 1 else squeeze(da, -2), db if b.ndim > 1 else squeeze(db, -1)]


@def_gradient("gemm")
def _g_gemm(n: Node, dy: Node) -> list[Node | None]:
    from graphnn.ops.elementwise import mul
    from graphnn.ops.shape import transpose

    a, b = n.inputs[:2]
    alpha = n.attrs["alpha"]
    op_a = transpose(a) if n.attrs["trans_a"] else a
    op_b = transpose(b) if n.attrs["trans_b"] else b
    d_op_a = mul(matmul(dy, transpose(op_b)), alpha)
    d_op_b = mul(matmul(transpose(op_a), dy), alpha)
    grads: list[Node | None] = [transpose(d_op_a) if n.attrs["trans_a"] else d_op_a,
                                transpose(d_op_b) if n.attrs["trans_b"] else d_op_b]
    if len(n.inputs) == 3:
        grads.append(mul(dy, n.attrs["beta"]))
    return grads


@def_gradient("einsum")
def _g_einsum(n: Node, dy: Node) -> list[Node | None]:
    """d operand_i = einsum(other operands and dy -> the letters of operand i), re-expanded."""
    terms, out = parse_einsum(n.attrs["equation"], [i.ndim for i in n.inputs])
    grads: list[Node | None] = []
    for i, (term, x) in enumerate(zip(terms, n.inputs)):
        others = [t for j, t in enumerate(terms) if j != i] + [out]
        unique = "".join(dict.fromkeys(term))
        present = "".join(c for c in unique if any(c in t for t in others))
        operands = [o for j, o in enumerate(n.inputs) if j != i] + [dy]
        g = einsum(",".join(others) + "->" + present, *operands)
        grads.append(_expand_to_term(g, present, term, x))
    return grads


def _expand_to_term(g: Node, letters: str, term: str, x: Node) -> Node:
    """Place g (axes ``letters``) on x's axes (``term``): broadcast letters summed only in x, and
    keep only the diagonal where x repeats a letter (``ii``)."""
    from graphnn.ops.elementwise import mul
    from graphnn.ops.shape import broadcast_like, unsqueeze

    first = [k for k, c in enumerate(term) if term.index(c) == k and c in letters]
    missing = [k for k in range(len(term)) if k not in first]
    g = broadcast_like(unsqueeze(g, missing), x) if missing else g
    if len(set(term)) == len(term):
        return g
    if any(d is None for d in x.shape):
        raise AttrError("einsum gradient with a repeated index needs known sizes")
    grids = np.indices(tuple(d for d in x.shape if d is not None))
    diag = np.ones(grids.shape[1:], bool)
    for k, c in enumerate(term):
        diag &= grids[k] == grids[term.index(c)]
    return mul(g, diag.astype(x.dtype.np))
