"""``simplify``: local algebraic rewrites from a rule table, applied to a fixpoint.

Every rule is exact in IEEE floating point: ``x + 0 -> x`` is not (``-0.0 + 0.0 = +0.0``), so only
``x + (-0.0)`` is removed unless ``fast_math=True``. A rule fires only when the result keeps the
node's shape and dtype (``x * ones(4)`` with x of shape (1,) broadcasts, so it stays).
Run after folding (which exposes constants) and before CSE.

    before:  %1 = transpose[perm=(1, 0)](%x);  %2 = transpose[perm=(1, 0)](%1);  %3 = mul(%2, 1.0)
    after:   (uses of %3 read %x)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from graphnn.passes.rewrite import rewrite

from graphnn.ir import Graph, Node
from graphnn.ops import api as F

Rule = Callable[[Node, list[Node], bool], Node | None]


def _const(n: Node) -> np.ndarray | None:
    return n.attrs["value"].array if n.op == "constant" else None


def _all_equal(n: Node, value: float, negative_zero: bool | None = None) -> bool:
    """``n`` is a constant whose every element equals ``value`` (and has the sign bit asked)."""
    c = _const(n)
    if c is None or c.size == 0 or not np.all(c == value):
        return False
    if negative_zero is None or c.dtype.kind != "f":
        return True
    return bool(np.all(np.signbit(c) == negative_zero))


def _keeps(n: Node, x: Node) -> Node | None:
    """x, if it can stand for n (same shape and dtype)."""
    return x if x.shape == n.shape and x.dtype is n.dtype else None


def _mul_one(n: Node, xs: list[Node], fast: bool) -> Node | None:  # x*1 -> x, 1*x -> x
    a, b = xs
    return _keeps(n, a) if _all_equal(b, 1) else _keeps(n, b) if _all_equal(a, 1) else None


def _add_zero(n: Node, xs: list[Node], fast: bool) -> Node | None:  # x+(-0) -> x; x+0 -> x fast
    a, b = xs
    sign = None if fast or n.dtype.is_int else True
    if _all_equal(b, 0, sign):
        return _keeps(n, a)
    return _keeps(n, b) if _all_equal(a, 0, sign) else None


def _sub_zero(n: Node, xs: list[Node], fast: bool) -> Node | None:  # x-0 -> x (x - (+0) is exact)
    sign = None if fast or n.dtype.is_int else False
    return _keeps(n, xs[0]) if _all_equal(xs[1], 0, sign) else None


def _div_one(n: Node, xs: list[Node], fast: bool) -> Node | None:  # x/1 -> x
    return _keeps(n, xs[0]) if _all_equal(xs[1], 1) else None


def _pow_one(n: Node, xs: list[Node], fast: bool) -> Node | None:  # x**1 -> x
    return _keeps(n, xs[0]) if _all_equal(xs[1], 1) else None


def _neg_neg(n: Node, xs: list[Node], fast: bool) -> Node | None:  # neg(neg(x)) -> x
    return xs[0].inputs[0] if xs[0].op == "neg" else None


def _identity(n: Node, xs: list[Node], fast: bool) -> Node | None:  # identity(x) -> x
    return xs[0]


def _cast_same(n: Node, xs: list[Node], fast: bool) -> Node | None:  # cast(x: T, T) -> x
    return xs[0] if xs[0].dtype is n.dtype else None


def _transpose(n: Node, xs: list[Node], fast: bool) -> Node | None:
    # transpose(transpose(x, p), q) -> transpose(x, p[q]); transpose(x, identity) -> x
    x, perm = xs[0], n.attrs["perm"]
    if x.op == "transpose":
        perm = tuple(x.attrs["perm"][i] for i in perm)
        x = x.inputs[0]
    if perm == tuple(range(len(perm))):
        return x
    return F.transpose(x, perm) if x is not xs[0] else None


def _reshape(n: Node, xs: list[Node], fast: bool) -> Node | None:
    # reshape(reshape(x, s), t) -> reshape(x, t); reshape to x's own static shape -> x
    x = xs[0]
    if None not in n.shape and x.shape == n.shape:
        return x
    if x.op == "reshape":
        return F.reshape(x.inputs[0], n.attrs["shape"])
    return None


def _broadcast_same(n: Node, xs: list[Node], fast: bool) -> Node | None:  # broadcast_to(x, x.shape)
    return _keeps(n, xs[0])


def _reduce_unit_axes(n: Node, xs: list[Node], fast: bool) -> Node | None:
    # sum/mean/max/min/prod over axes of size 1 -> x (keepdims) or squeeze(x)
    x, axes = xs[0], n.attrs["axes"]
    if not axes or any(x.shape[a] != 1 for a in axes):
        return None
    return x if n.attrs["keepdims"] else F.squeeze(x, axes)


RULES: dict[str, list[Rule]] = {
    "mul": [_mul_one], "add": [_add_zero], "sub": [_sub_zero], "div": [_div_one],
    "pow": [_pow_one], "neg": [_neg_neg], "identity": [_identity], "cast": [_cast_same],
    "transpose": [_transpose], "reshape": [_reshape], "broadcast_to": [_broadcast_same],
    **{op: [_reduce_unit_axes] for op in ("sum", "mean", "max", "min", "prod")},
}


def simplify(graph: Graph, fast_math: bool = False, max_rounds: int = 10) -> Graph:
    """Apply ``RULES`` until none fires (at most ``max_rounds`` sweeps)."""
    for _ in range(max_rounds):
        graph, fired = _sweep(graph, fast_math)
        if not fired:
            break
    return graph


def _sweep(graph: Graph, fast_math: bool) -> tuple[Graph, int]:
    fired = 0

    def rule(n: Node, inputs: list[Node]) -> Node | None:
        nonlocal fired
        for r in RULES.get(n.op, ()):
            out = r(n, inputs, fast_math)
            if out is not None:
                fired += 1
                return out
        return None

    return rewrite(graph, rule)[0], fired
