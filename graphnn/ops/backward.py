"""Backward kernels: ops that only gradient rules build (scatter-adds and pooling/conv adjoints).

Each takes the forward input ``x`` as its last input for its shape (so unknown batch sizes work)
and the forward op's attributes. They have no gradient rules of their own: second derivatives
through them raise a clear error. Their semantics are checked by finite differences of the
forward ops (tests/test_autodiff.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphnn.dtypes import DType
from graphnn.ir import Attrs, Node, Shape
from graphnn.ops.conv import _CONV_ATTRS, _windows
from graphnn.ops.pool import _POOL_ATTRS, _geometry
from graphnn.ops.registry import (
    Attr,
    OpDef,
    bool_,
    int_,
    ints,
    make_node,
    nested_ints,
    one_of,
    register,
)
from graphnn.shapes import require_same_dtype


def _like_last(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    return inputs[-1].shape, inputs[0].dtype


def _slice_grad(dy: np.ndarray, x: np.ndarray, *, starts: tuple, stops: tuple,
                steps: tuple) -> np.ndarray:
    out = np.zeros(x.shape, dy.dtype)
    out[tuple(slice(a, b, s) for a, b, s in zip(starts, stops, steps))] = dy
    return out


def _rows(idx: np.ndarray, n: int) -> np.ndarray:
    """idx with negative entries counted from the end; IndexError for one out of [-n, n), as the
    forward op (numpy.take) raises."""
    return np.take(np.arange(n), idx)


def _take_grad(dy: np.ndarray, idx: np.ndarray, x: np.ndarray, *, axis: int) -> np.ndarray:
    axis %= x.ndim
    out = np.zeros(x.shape, dy.dtype)
    moved = np.moveaxis(out, axis, 0)  # a view: scatter along axis 0 of it
    np.add.at(moved, _rows(idx.reshape(-1), x.shape[axis]),
              np.moveaxis(dy.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 1:]), axis, 0))
    return out


def _gather_grad(dy: np.ndarray, idx: np.ndarray, x: np.ndarray, *, axis: int) -> np.ndarray:
    out = np.zeros(x.shape, dy.dtype)
    grid: list[Any] = list(np.indices(idx.shape, sparse=True))
    grid[axis] = _rows(idx, x.shape[axis])
    np.add.at(out, tuple(grid), dy)
    return out


def _pad_grad(dy: np.ndarray, x: np.ndarray, *, pads: tuple, mode: str, value: float) -> np.ndarray:
    # Which input element each padded position copies (np.pad of the index ranges), then add back.
    nd = x.ndim
    out = np.zeros(x.shape, dy.dtype)
    pad_mode: Any = mode
    src = [np.pad(np.arange(d), (pads[i], pads[i + nd]), mode="constant", constant_values=-1)
           if mode == "constant" else np.pad(np.arange(d), (pads[i], pads[i + nd]), mode=pad_mode)
           for i, d in enumerate(x.shape)]
    grid = np.ix_(*src)
    valid = np.ones(dy.shape, bool)
    for g in grid:
        valid &= g >= 0
    full = tuple(np.broadcast_to(g, dy.shape)[valid] for g in grid)
    np.add.at(out, full, dy[valid])
    return out


register(OpDef("slice_grad", _like_last, _slice_grad, arity=(2, 2), nondiff_inputs=(1,),
               attrs={"starts": Attr(nested_ints), "stops": Attr(nested_ints),
                      "steps": Attr(ints)}, doc="Scatter dy into zeros shaped like x."))
register(OpDef("take_grad", _like_last, _take_grad, arity=(3, 3), nondiff_inputs=(1, 2),
               attrs={"axis": Attr(int_)}, doc="Scatter-add dy to the taken indices."))
register(OpDef("gather_grad", _like_last, _gather_grad, arity=(3, 3), nondiff_inputs=(1, 2),
               attrs={"axis": Attr(int_)}, doc="Scatter-add dy along axis at index."))
register(OpDef("pad_grad", _like_last, _pad_grad, arity=(2, 2), nondiff_inputs=(1,),
               attrs={"pads": Attr(ints), "mode": Attr(one_of("constant", "reflect", "edge")),
                      "value": Attr(lambda v: float(v))},
               doc="Add each padded position's gradient to the element it copies."))


def _conv_weight_grad_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, dy = inputs
    dtype = require_same_dtype(inputs)
    c_in = x.shape[1]
    per_group = None if c_in is None else c_in // attrs["groups"]
    return (dy.shape[1], per_group, *attrs["kernel_size"]), dtype


def _conv_weight_grad(x: np.ndarray, dy: np.ndarray, *, stride: tuple, pads: tuple,
                      dilation: tuple, groups: int, kernel_size: tuple) -> np.ndarray:
    nd = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    cols = _windows(xp, kernel_size, stride, dilation, dy.shape[2:])
    n, c = x.shape[:2]
    cols = cols.reshape(n, groups, c // groups * int(np.prod(kernel_size)), -1)
    dyg = dy.reshape(n, groups, dy.shape[1] // groups, -1)
    w = np.einsum("ngop,ngkp->gok", dyg, cols, optimize=True)
    return w.reshape(dy.shape[1], c // groups, *kernel_size).astype(x.dtype)


register(OpDef("conv_weight_grad", _conv_weight_grad_infer, _conv_weight_grad, arity=(2, 2),
               attrs={**_CONV_ATTRS, "kernel_size": Attr(ints)},
               doc="d(conv)/d(weight): correlate x with dy."))


def _scatter_windows(grad_cols: np.ndarray, shape: tuple[int, ...], widths: list, overhang: list,
                     kernel: tuple, stride: tuple, dilation: tuple, out: list) -> np.ndarray:
    """Adjoint of pooling's window extraction: add each tap's values back, then crop padding."""
    nd = len(out)
    padded = [shape[2 + i] + widths[i][0] + widths[i][1] + overhang[i] for i in range(nd)]
    acc = np.zeros(shape[:2] + tuple(padded), grad_cols.dtype)
    for taps in np.ndindex(*kernel):
        region = tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                       for t, d, s, o in zip(taps, dilation, stride, out))
        acc[(slice(None), slice(None)) + region] += grad_cols[(slice(None), slice(None)) + taps]
    crop = tuple(slice(widths[i][0], widths[i][0] + shape[2 + i]) for i in range(nd))
    return acc[(slice(None), slice(None)) + crop]


def _max_pool_grad(dy: np.ndarray, x: np.ndarray, *, kernel_size: tuple, stride: tuple,
                   pads: tuple, dilation: tuple, ceil_mode: bool) -> np.ndarray:
    out, widths, overhang = _geometry(x.shape, kernel_size, stride, pads, dilation, ceil_mode)
    full = [(0, 0), (0, 0)] + [(b, e + o) for (b, e), o in zip(widths, overhang)]
    cols = _windows(np.pad(x, full, constant_values=-np.inf), kernel_size, stride, dilation, out)
    nd, k = len(out), int(np.prod(kernel_size))
    flat = cols.reshape(cols.shape[:2] + (k,) + cols.shape[2 + nd:])
    first = np.argmax(flat, axis=2)  # the first maximum takes the gradient, as PyTorch
    onehot = (np.arange(k).reshape((1, 1, k) + (1,) * nd) == first[:, :, None]) * dy[:, :, None]
    grad_cols = onehot.reshape(cols.shape).astype(dy.dtype)
    return _scatter_windows(grad_cols, x.shape, widths, overhang, kernel_size, stride, dilation,
                            out)


def _avg_pool_grad(dy: np.ndarray, x: np.ndarray, *, kernel_size: tuple, stride: tuple,
                   pads: tuple, dilation: tuple, ceil_mode: bool,
                   count_include_pad: bool) -> np.ndarray:
    out, widths, overhang = _geometry(x.shape, kernel_size, stride, pads, dilation, ceil_mode)
    mask = np.pad(np.ones(x.shape[2:], x.dtype), widths, constant_values=float(count_include_pad))
    mask = np.pad(mask, [(0, o) for o in overhang])[None, None]
    axes = tuple(range(2, 2 + len(out)))
    counts = _windows(mask, kernel_size, stride, dilation, out).sum(axis=axes)
    share = (dy / counts)[(slice(None), slice(None)) + (None,) * len(out)]
    grad_cols = np.broadcast_to(share, dy.shape[:2] + tuple(kernel_size) + dy.shape[2:])
    return _scatter_windows(grad_cols.astype(dy.dtype), x.shape, widths, overhang, kernel_size,
                            stride, dilation, out)


register(OpDef("max_pool_grad", _like_last, _max_pool_grad, arity=(2, 2), nondiff_inputs=(1,),
               attrs=_POOL_ATTRS, doc="Route dy to the first maximum of each window."))
register(OpDef("avg_pool_grad", _like_last, _avg_pool_grad, arity=(2, 2), nondiff_inputs=(1,),
               attrs={**_POOL_ATTRS, "count_include_pad": Attr(bool_)},
               doc="Spread dy over each window by its divisor."))


def _adaptive_grad(dy: np.ndarray, x: np.ndarray, *, output_size: tuple, mode: str) -> np.ndarray:
    out = np.zeros(x.shape, dy.dtype)
    for pos in np.ndindex(*output_size):
        region = tuple(slice((i * L) // o, -(-((i + 1) * L) // o))
                       for i, L, o in zip(pos, x.shape[2:], output_size))
        sel = (slice(None), slice(None)) + region
        g = dy[(slice(None), slice(None)) + pos]
        win = x[sel]
        if mode == "avg":
            share: Any = g / win[0, 0].size
            out[sel] += share.reshape(share.shape + (1,) * len(pos))
            continue
        flat: Any = win.reshape(win.shape[:2] + (-1,))
        hit = np.arange(flat.shape[2]) == np.argmax(flat, axis=2)[..., None]
        out[sel] += (hit * g[..., None]).reshape(win.shape)
    return out


register(OpDef("adaptive_pool_grad", _like_last, _adaptive_grad, arity=(2, 2),
               nondiff_inputs=(1,),
               attrs={"output_size": Attr(ints), "mode": Attr(one_of("avg", "max"))},
               doc="Adjoint of adaptive average/max pooling."))


def backward_op(op: str, inputs: Sequence[Node], attrs: dict[str, Any]) -> Node:
    """Build one backward kernel (used by the gradient rules)."""
    return make_node(op, list(inputs), attrs)
