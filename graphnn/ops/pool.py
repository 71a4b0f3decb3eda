"""Pooling over 1, 2 or 3 spatial dims, channels first: max, average, adaptive, global.

``max_pool`` and ``avg_pool`` follow PyTorch exactly, including ``ceil_mode`` (a last window is
kept only if it starts inside the input or the begin padding) and ``count_include_pad`` (padding
counts in the divisor, the ceil-mode overhang never does). Padding must be at most half the
(dilated) kernel, as PyTorch requires. Canonical ``pads`` use ONNX layout (begins, then ends).

Global pools are reductions (``mean``/``max`` over spatial axes, kept as size 1, ONNX
GlobalAveragePool), so they add no op.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphnn import dtypes as dt
from graphnn.dtypes import DType
from graphnn.errors import AttrError, ShapeError
from graphnn.ir import Attrs, Dim, Node, Shape
from graphnn.ops.conv import _tuple, _windows, resolve_padding, with_rank
from graphnn.ops.elementwise import TensorLike
from graphnn.ops.reduce import max as reduce_max
from graphnn.ops.reduce import mean
from graphnn.ops.registry import Attr, OpDef, bool_, ints, make_node, register
from graphnn.ops.source import as_node
from graphnn.shapes import require_dtype

_POOL_ATTRS = {"kernel_size": Attr(ints), "stride": Attr(ints), "pads": Attr(ints),
               "dilation": Attr(ints), "ceil_mode": Attr(bool_, False)}


def pool_out_size(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size, with ceil_mode's rule for the last window."""
    span = size + pb + pe - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + pb:
        out -= 1
    return out


def _pool_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x = inputs[0]
    require_dtype(x, dt.FLOATS)
    nd = x.ndim - 2
    if nd < 1:
        raise ShapeError(f"expected (N, C, *spatial), got {x.type_str}")
    k, s, d, p = attrs["kernel_size"], attrs["stride"], attrs["dilation"], attrs["pads"]
    if not (len(k) == len(s) == len(d) == nd and len(p) == 2 * nd):
        raise AttrError(f"kernel_size/stride/dilation need {nd} entries and pads {2 * nd}")
    if min(k + s + d) <= 0 or min(p, default=0) < 0:
        raise AttrError("kernel_size, stride, dilation must be positive and pads non-negative")
    out: list[Dim] = list(x.shape[:2])
    for i in range(nd):
        if max(p[i], p[i + nd]) > (d[i] * (k[i] - 1) + 1) // 2:
            raise AttrError(f"padding {p[i]}/{p[i + nd]} exceeds half the kernel "
                            f"{d[i] * (k[i] - 1) + 1} on spatial axis {i}")
        size = x.shape[2 + i]
        o = None if size is None else pool_out_size(size, k[i], s[i], d[i], p[i], p[i + nd],
                                                    attrs["ceil_mode"])
        if o is not None and o <= 0:
            raise ShapeError(f"kernel {k} is larger than the padded input {x.shape[2:]}")
        out.append(o)
    return tuple(out), x.dtype


def _geometry(shape: tuple[int, ...], kernel_size: tuple, stride: tuple, pads: tuple,
              dilation: tuple, ceil_mode: bool) -> tuple[list[int], list[tuple[int, int]],
                                                         list[int]]:
    """Output sizes, (begin, end) padding, and the ceil-mode overhang past the end padding."""
    nd = len(shape) - 2
    out = [pool_out_size(shape[2 + i], kernel_size[i], stride[i], dilation[i], pads[i],
                         pads[i + nd], ceil_mode) for i in range(nd)]
    widths = [(pads[i], pads[i + nd]) for i in range(nd)]
    overhang = [max(0, (out[i] - 1) * stride[i] + dilation[i] * (kernel_size[i] - 1) + 1
                    - (shape[2 + i] + pads[i] + pads[i + nd])) for i in range(nd)]
    return out, widths, overhang


def _pooled(x: np.ndarray, fill: float, widths: list[tuple[int, int]], overhang: list[int],
            kernel_size: tuple, stride: tuple, dilation: tuple, out: list[int]) -> np.ndarray:
    full = [(0, 0)] * (x.ndim - len(widths)) + [(b, e + o) for (b, e), o in zip(widths, overhang)]
    cols = _windows(np.pad(x, full, constant_values=fill), kernel_size, stride, dilation, out)
    return cols


def _max_pool(x: np.ndarray, *, kernel_size: tuple, stride: tuple, pads: tuple, dilation: tuple,
              ceil_mode: bool) -> np.ndarray:
    out, widths, overhang = _geometry(x.shape, kernel_size, stride, pads, dilation, ceil_mode)
    cols = _pooled(x, -np.inf, widths, overhang, kernel_size, stride, dilation, out)
    return np.max(cols, axis=tuple(range(2, 2 + len(out)))).astype(x.dtype)


def _avg_pool(x: np.ndarray, *, kernel_size: tuple, stride: tuple, pads: tuple, dilation: tuple,
              ceil_mode: bool, count_include_pad: bool) -> np.ndarray:
    out, widths, overhang = _geometry(x.shape, kernel_size, stride, pads, dilation, ceil_mode)
    axes = tuple(range(2, 2 + len(out)))
    sums = _pooled(x, 0.0, widths, overhang, kernel_size, stride, dilation, out).sum(axis=axes)
    # The divisor is a pooled mask: 1 on the input, 1 on the padding only if it counts, 0 on the
    # ceil-mode overhang (PyTorch's rule, written as data rather than index arithmetic).
    mask = np.pad(np.ones(x.shape[2:], x.dtype), widths, constant_values=float(count_include_pad))
    counts = _pooled(mask[None, None], 0.0, [(0, 0)] * len(out), overhang, kernel_size, stride,
                     dilation, out).sum(axis=axes)
    return (sums / counts).astype(x.dtype)


register(OpDef("max_pool", _pool_infer, _max_pool, attrs=_POOL_ATTRS,
               doc="Ref: ONNX MaxPool; torch.nn.functional.max_pool2d"))
register(OpDef("avg_pool", _pool_infer, _avg_pool,
               attrs={**_POOL_ATTRS, "count_include_pad": Attr(bool_, True)},
               doc="Ref: ONNX AveragePool; torch.nn.functional.avg_pool2d"))


def _adaptive_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x = inputs[0]
    require_dtype(x, dt.FLOATS)
    nd = x.ndim - 2
    if nd < 1 or len(attrs["output_size"]) != nd or min(attrs["output_size"]) <= 0:
        raise AttrError(f"output_size {attrs['output_size']} needs {max(nd, 1)} positive sizes "
                        f"for input {x.type_str}")
    if any(d == 0 for d in x.shape[2:]):
        raise ShapeError(f"cannot pool an empty spatial dimension of {x.type_str}")
    return x.shape[:2] + attrs["output_size"], x.dtype


def _adaptive(reduce: str):  # type: ignore[no-untyped-def]
    def ref(x: np.ndarray, output_size: tuple[int, ...]) -> np.ndarray:
        nd = x.ndim - 2
        y = np.empty(x.shape[:2] + output_size, dtype=x.dtype)
        for pos in np.ndindex(*output_size):
            # PyTorch: start = floor(i*L/out), end = ceil((i+1)*L/out)
            region = tuple(slice((i * L) // o, -(-((i + 1) * L) // o))
                           for i, L, o in zip(pos, x.shape[2:], output_size))
            win = x[(slice(None), slice(None)) + region]
            y[(slice(None), slice(None)) + pos] = getattr(np, reduce)(
                win, axis=tuple(range(2, 2 + nd)))
        return y

    return ref


register(OpDef("adaptive_avg_pool", _adaptive_infer, _adaptive("mean"),
               attrs={"output_size": Attr(ints)},
               doc="Ref: torch.nn.functional.adaptive_avg_pool2d"))
register(OpDef("adaptive_max_pool", _adaptive_infer, _adaptive("max"),
               attrs={"output_size": Attr(ints)},
               doc="Ref: torch.nn.functional.adaptive_max_pool2d"))


# -- frontend --------------------------------------------------------------------------------------


def _pool(op: str, x: TensorLike, kernel_size: int | Sequence[int],
          stride: int | Sequence[int] | None, padding: int | Sequence[int],
          dilation: int | Sequence[int], ceil_mode: bool, name: str | None,
          **extra: object) -> Node:
    x_node = as_node(x)
    nd = max(x_node.ndim - 2, 1)
    k = _tuple(kernel_size, nd, "kernel_size")
    s = k if stride is None else _tuple(stride, nd, "stride")
    d = _tuple(dilation, nd, "dilation")
    pads = resolve_padding(padding, nd, x_node.shape[2:], k, s, d)
    attrs = {"kernel_size": k, "stride": s, "pads": pads, "dilation": d, "ceil_mode": ceil_mode}
    return make_node(op, [x_node], {**attrs, **extra}, name=name)


def max_pool(x: TensorLike, kernel_size: int | Sequence[int],
             stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0,
             dilation: int | Sequence[int] = 1, ceil_mode: bool = False,
             name: str | None = None) -> Node:
    """Max pooling over the spatial dims of (N, C, *L) (any spatial rank; ``max_pool2d`` etc.).

    Shapes:  (N, C, *L) -> (N, C, *L_out); stride defaults to kernel_size
    Math:    L_out = floor_or_ceil((L + pads - dilation*(k-1) - 1) / stride) + 1, with PyTorch's
             ceil_mode rule
    Dtypes:  float32, float64.  Raises: AttrError when padding exceeds half the kernel
    Ref:     torch.nn.functional.max_pool2d; ONNX MaxPool
    """
    return _pool("max_pool", x, kernel_size, stride, padding, dilation, ceil_mode, name)


def avg_pool(x: TensorLike, kernel_size: int | Sequence[int],
             stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0,
             ceil_mode: bool = False, count_include_pad: bool = True,
             name: str | None = None) -> Node:
    """Average pooling over the spatial dims of (N, C, *L); PyTorch's divisor rules.

    Shapes:  (N, C, *L) -> (N, C, *L_out); stride defaults to kernel_size
    Dtypes:  float32, float64.  Ref: torch.nn.functional.avg_pool2d; ONNX AveragePool
    """
    return _pool("avg_pool", x, kernel_size, stride, padding, 1, ceil_mode, name,
                 count_include_pad=count_include_pad)


max_pool1d, max_pool2d, max_pool3d = (with_rank(max_pool, n, f"max_pool{n}d") for n in (1, 2, 3))
avg_pool1d, avg_pool2d, avg_pool3d = (with_rank(avg_pool, n, f"avg_pool{n}d") for n in (1, 2, 3))


def adaptive_avg_pool(x: TensorLike, output_size: int | Sequence[int],
                      name: str | None = None) -> Node:
    """Average over PyTorch's adaptive windows so the spatial output is ``output_size``.

    Shapes:  (N, C, *L) -> (N, C, *output_size).  Ref: torch.nn.functional.adaptive_avg_pool2d
    """
    x_node = as_node(x)
    size = _tuple(output_size, max(x_node.ndim - 2, 1), "output_size")
    return make_node("adaptive_avg_pool", [x_node], {"output_size": size}, name=name)


def adaptive_max_pool(x: TensorLike, output_size: int | Sequence[int],
                      name: str | None = None) -> Node:
    """Max over PyTorch's adaptive windows.  Ref: torch.nn.functional.adaptive_max_pool2d."""
    x_node = as_node(x)
    size = _tuple(output_size, max(x_node.ndim - 2, 1), "output_size")
    return make_node("adaptive_max_pool", [x_node], {"output_size": size}, name=name)


def global_avg_pool(x: TensorLike, name: str | None = None) -> Node:
    """Mean over all spatial dims, kept as size 1: (N, C, *L) -> (N, C, 1, ..., 1).

    Ref: ONNX GlobalAveragePool
    """
    x_node = as_node(x)
    return mean(x_node, axis=tuple(range(2, x_node.ndim)), keepdims=True, name=name)


def global_max_pool(x: TensorLike, name: str | None = None) -> Node:
    """Max over all spatial dims, kept as size 1.  Ref: ONNX GlobalMaxPool."""
    x_node = as_node(x)
    return reduce_max(x_node, axis=tuple(range(2, x_node.ndim)), keepdims=True, name=name)


# -- gradients ------------------------------------------------------------------------------------
from graphnn.ops.registry import def_gradient  # noqa: E402 - rules follow the ops they differentiate


@def_gradient("max_pool", "avg_pool")
def _g_pool(n: Node, dy: Node) -> list[Node | None]:
    return [make_node(f"{n.op}_grad", [dy, n.inputs[0]], dict(n.attrs))]


@def_gradient("adaptive_avg_pool", "adaptive_max_pool")
def _g_adaptive(n: Node, dy: Node) -> list[Node | None]:
    mode = "avg" if n.op == "adaptive_avg_pool" else "max"
    return [make_node("adaptive_pool_grad", [dy, n.inputs[0]],
                      {"output_size": n.attrs["output_size"], "mode": mode})]
