"""Reductions over any axes (sum mean max min prod var std logsumexp argmax argmin), softmax.

Canonical attributes: ``axes`` is a sorted tuple of non-negative axes (``axis=None`` in the
frontend means every axis); ``keepdims`` defaults to False as in PyTorch and numpy.
``var``/``std`` take PyTorch's ``correction`` (1: Bessel's correction, the default; 0: population).

Shapes:  x: (d0, ..., dn) -> the dims not in ``axes`` (kept as 1 with keepdims)
Dtypes:  sum max min prod: int32, int64, float32, float64; mean var std logsumexp softmax
         log_softmax: float32, float64; argmax/argmin return int64.
Raises:  AttrError for an axis out of range; DTypeError for other dtypes; ShapeError when max,
         min, argmax or argmin reduce a dimension known to be empty (no identity exists).
Ref:     ONNX ReduceSum/ReduceMean/ReduceMax/ReduceMin/ReduceProd/ReduceLogSumExp, ArgMax,
         Softmax, LogSoftmax (opset 13+); torch.var/std for ``correction``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from graphnn import dtypes as dt
from graphnn.dtypes import DType
from graphnn.errors import ShapeError
from graphnn.ir import Attrs, Node, Shape
from graphnn.ops.elementwise import TensorLike
from graphnn.ops.registry import (
    Attr,
    OpDef,
    bool_,
    float_,
    int_,
    ints,
    make_node,
    optional,
    register,
)
from graphnn.ops.source import as_node
from graphnn.shapes import normalize_axes, normalize_axis, require_dtype


def _reduced_shape(shape: Shape, axes: Iterable[int], keepdims: bool) -> Shape:
    axes = set(axes)
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce_infer(allowed: frozenset[DType], needs_identity: bool = False) -> Callable[..., Any]:
    def infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
        x = inputs[0]
        require_dtype(x, allowed)
        axes = attrs["axes"]
        if any(a >= x.ndim for a in axes):
            raise ShapeError(f"axes {axes} out of range for rank {x.ndim}")
        if needs_identity and any(x.shape[a] == 0 for a in axes):
            raise ShapeError(f"cannot reduce over an empty dimension of {x.type_str}")
        return _reduced_shape(x.shape, axes, attrs["keepdims"]), x.dtype

    return infer


def _logsumexp(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    m = np.max(x, axis=axes, keepdims=True) if x.size else np.zeros([1] * x.ndim, x.dtype)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axes)


_AXES = {"axes": Attr(ints), "keepdims": Attr(bool_, False)}
_N, _F = dt.NUMERIC, dt.FLOATS


def _ref(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    return lambda x, axes, keepdims: fn(x, axis=axes, keepdims=keepdims)


REDUCTIONS: dict[str, tuple[Callable[..., np.ndarray], frozenset[DType], bool]] = {
    # name: (reference, dtypes, needs a non-empty reduced dimension)
    "sum": (_ref(np.sum), _N, False),
    "mean": (_ref(np.mean), _F, False),
    "max": (_ref(np.max), _N, True),
    "min": (_ref(np.min), _N, True),
    "prod": (_ref(np.prod), _N, False),
    "logsumexp": (_logsumexp, _F, False),
}
for _name, (_fn, _dtypes, _ident) in REDUCTIONS.items():
    register(OpDef(_name, _reduce_infer(_dtypes, _ident), _fn, attrs=_AXES,
                   doc=f"{_name} over `axes`."))

for _name, _np_fn in (("var", np.var), ("std", np.std)):
    register(OpDef(
        _name, _reduce_infer(_F),
        (lambda f: lambda x, axes, keepdims, correction: f(
            x, axis=axes, keepdims=keepdims, ddof=correction))(_np_fn),
        attrs={**_AXES, "correction": Attr(float_, 1.0)},
        doc=f"{_name} over `axes` with `correction` (PyTorch semantics)."))


def _arg_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x = inputs[0]
    require_dtype(x, _N)
    axis = attrs["axis"]
    if axis is None:
        if 0 in x.shape:
            raise ShapeError(f"cannot take {x.type_str}'s argmax/argmin: it has no elements")
        return ((1,) * x.ndim if attrs["keepdims"] else ()), DType.int64
    axis = normalize_axis(axis, x.ndim)
    if x.shape[axis] == 0:
        raise ShapeError(f"cannot take {x.type_str}'s argmax/argmin over an empty axis")
    return _reduced_shape(x.shape, (axis,), attrs["keepdims"]), DType.int64


def _arg_ref(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    # numpy returns the first index of the extreme value, as ONNX (select_last_index=0) and torch.
    return lambda x, axis, keepdims: fn(x, axis=axis, keepdims=keepdims)


_ARG_ATTRS = {"axis": Attr(optional(int_), None), "keepdims": Attr(bool_, False)}
register(OpDef("argmax", _arg_infer, _arg_ref(np.argmax), attrs=_ARG_ATTRS, nondiff_inputs=(0,),
               doc="index of the first maximum along `axis` (flattened when None)."))
register(OpDef("argmin", _arg_infer, _arg_ref(np.argmin), attrs=_ARG_ATTRS, nondiff_inputs=(0,),
               doc="index of the first minimum along `axis` (flattened when None)."))


def _softmax_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x = inputs[0]
    require_dtype(x, _F)
    if x.ndim == 0:
        raise ShapeError("softmax needs a tensor of rank >= 1")
    normalize_axis(attrs["axis"], x.ndim)
    return x.shape, x.dtype


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


register(OpDef("softmax", _softmax_infer, _softmax, attrs={"axis": Attr(int_, -1)},
               doc="exp(x) / sum(exp(x)) along `axis`, max-shifted."))
register(OpDef("log_softmax", _softmax_infer, _log_softmax, attrs={"axis": Attr(int_, -1)},
               doc="x - logsumexp(x) along `axis`."))


# -- frontend -------------------------------------------------------------------------------------

Axes = int | Sequence[int] | None


def _reduce(op: str, x: TensorLike, axis: Axes, keepdims: bool, name: str | None,
            **extra: Any) -> Node:
    x = as_node(x)
    axes = normalize_axes(axis, x.ndim) if x.ndim or axis is None else normalize_axes(axis, 0)
    return make_node(op, [x], {"axes": axes, "keepdims": keepdims, **extra}, name=name)


def sum(x: TensorLike, axis: Axes = None, keepdims: bool = False,  # noqa: A001
        name: str | None = None) -> Node:
    return _reduce("sum", x, axis, keepdims, name)


def mean(x: TensorLike, axis: Axes = None, keepdims: bool = False, name: str | None = None) -> Node:
    return _reduce("mean", x, axis, keepdims, name)


def max(x: TensorLike, axis: Axes = None, keepdims: bool = False,  # noqa: A001
        name: str | None = None) -> Node:
    return _reduce("max", x, axis, keepdims, name)


def min(x: TensorLike, axis: Axes = None, keepdims: bool = False,  # noqa: A001
        name: str | None = None) -> Node:
    return _reduce("min", x, axis, keepdims, name)


def prod(x: TensorLike, axis: Axes = None, keepdims: bool = False, name: str | None = None) -> Node:
    return _reduce("prod", x, axis, keepdims, name)


def logsumexp(x: TensorLike, axis: Axes = None, keepdims: bool = False,
              name: str | None = None) -> Node:
    return _reduce("logsumexp", x, axis, keepdims, name)


def var(x: TensorLike, axis: Axes = None, keepdims: bool = False, correction: float = 1,
        name: str | None = None) -> Node:
    return _reduce("var", x, axis, keepdims, name, correction=correction)


def std(x: TensorLike, axis: Axes = None, keepdims: bool = False, correction: float = 1,
        name: str | None = None) -> Node:
    return _reduce("std", x, axis, keepdims, name, correction=correction)


def argmax(x: TensorLike, axis: int | None = None, keepdims: bool = False,
           name: str | None = None) -> Node:
    return make_node("argmax", [as_node(x)], {"axis": axis, "keepdims": keepdims}, name=name)


def argmin(x: TensorLike, axis: int | None = None, keepdims: bool = False,
           name: str | None = None) -> Node:
    return make_node("argmin", [as_node(x)], {"axis": axis, "keepdims": keepdims}, name=name)


def softmax(x: TensorLike, axis: int = -1, name: str | None = None) -> Node:
    """exp(x) / sum(exp(x)) along ``axis``; shape and dtype of x (float). Ref: ONNX Softmax-13."""
    return make_node("softmax", [as_node(x)], {"axis": axis}, name=name)


def log_softmax(x: TensorLike, axis: int = -1, name: str | None = None) -> Node:
    """x - logsumexp(x) along ``axis``; shape and dtype of x (float). Ref: ONNX LogSoftmax-13."""
    return make_node("log_softmax", [as_node(x)], {"axis": axis}, name=name)


for _f in (sum, mean, max, min, prod, logsumexp, var, std, argmax, argmin):
    _f.__doc__ = (
        f"{_f.__name__} of x over ``axis`` (an int, a tuple, or None for all axes).\n\n"
        "See the module docstring for shapes, dtypes, errors and references.\n"
    )


# -- gradients ------------------------------------------------------------------------------------
from graphnn.ops.registry import def_gradient  # noqa: E402 - rules follow the ops they differentiate


def _kept(n: Node, dy: Node) -> Node:
    """dy with the reduced axes restored as size 1 (what keepdims=True would have given)."""
    from graphnn.ops.shape import unsqueeze

    return dy if n.attrs["keepdims"] or not n.attrs["axes"] else unsqueeze(dy, n.attrs["axes"])


def _count(n: Node) -> Node:
    from graphnn.ops.shape import size

    return size(n.inputs[0], n.attrs["axes"], dtype=n.dtype)


@def_gradient("sum")
def _g_sum(n: Node, dy: Node) -> list[Node | None]:
    from graphnn.ops.shape import broadcast_like

    return [broadcast_like(_kept(n, dy), n.inputs[0])]


@def_gradient("mean")
def _g_mean(n: Node, dy: Node) -> list[Node | None]:
    from graphnn.ops.elementwise import div
    from graphnn.ops.shape import broadcast_like

    return [broadcast_like(div(_kept(n, dy), _count(n)), n.inputs[0])]


@def_gradient("max", "min")
def _g_extreme(n: Node, dy: Node) -> list[Node | None]:
    # Ties share the gradient equally, as PyTorch's amax/amin.
    from graphnn.ops.elementwise import cast, div, equal, mul
    from graphnn.ops.shape import broadcast_like

    x = n.inputs[0]
    y = n if n.attrs["keepdims"] else _kept(n, n)
    hit = cast(equal(x, broadcast_like(y, x)), x.dtype)
    share = div(hit, sum(hit, axis=n.attrs["axes"], keepdims=True))
    return [mul(broadcast_like(_kept(n, dy), x), share)]


@def_gradient("prod")
def _g_prod(n: Node, dy: Node) -> list[Node | None]:
    # y / x: exact for nonzero x; zeros in x give nan here (PyTorch special-cases them).
    from graphnn.ops.elementwise import div, mul
    from graphnn.ops.shape import broadcast_like

    x = n.inputs[0]
    y = n if n.attrs["keepdims"] else _kept(n, n)
    return [mul(broadcast_like(_kept(n, dy), x), div(broadcast_like(y, x), x))]


@def_gradient("var", "std")
def _g_var(n: Node, dy: Node) -> list[Node | None]:
    from graphnn.ops.elementwise import div, mul, sub
    from graphnn.ops.shape import broadcast_like

    x, axes = n.inputs[0], n.attrs["axes"]
    centred = sub(x, mean(x, axis=axes, keepdims=True))
    dof = sub(_count(n), n.attrs["correction"])
    scale = div(_kept(n, dy), dof)
    if n.op == "std":  # d std = d var / (2 std)
        scale = div(scale, n if n.attrs["keepdims"] else _kept(n, n))
    else:
        scale = mul(scale, 2.0)
    return [mul(broadcast_like(scale, x), centred)]


@def_gradient("logsumexp")
def _g_logsumexp(n: Node, dy: Node) -> list[Node | None]:
    from graphnn.ops.elementwise import exp, mul, sub
    from graphnn.ops.shape import broadcast_like

    x = n.inputs[0]
    y = n if n.attrs["keepdims"] else _kept(n, n)
    return [mul(broadcast_like(_kept(n, dy), x), exp(sub(x, broadcast_like(y, x))))]


@def_gradient("softmax")
def _g_softmax(n: Node, dy: Node) -> list[Node | None]:
    from graphnn.ops.elementwise import mul, sub

    return [mul(n, sub(dy, sum(mul(dy, n), axis=n.attrs["axis"], keepdims=True)))]


@def_gradient("log_softmax")
def _g_log_softmax(n: Node, dy: Node) -> list[Node | None]:
    from graphnn.ops.elementwise import exp, mul, sub

    return [sub(dy, mul(exp(n), sum(dy, axis=n.attrs["axis"], keepdims=True)))]
