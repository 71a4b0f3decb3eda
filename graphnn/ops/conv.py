"""Convolution and transposed convolution over 1, 2 or 3 spatial dims, channels first (NCHW).

One op each (``conv``, ``conv_transpose``) covers every spatial rank, as ONNX Conv does; the
frontends ``conv1d/2d/3d`` and ``conv_transpose1d/2d/3d`` take PyTorch's arguments.

Canonical attributes: ``stride``, ``dilation`` (one int per spatial dim), ``pads`` in ONNX layout
``(begin_0, begin_1, ..., end_0, end_1, ...)``, ``groups``; ``output_padding`` for the transpose.

Padding forms accepted by the frontends: an int (every side); one int per spatial dim (both sides,
PyTorch); ``2*nd`` ints in ONNX layout; one ``(begin, end)`` pair per spatial dim; ``"valid"``
(no padding); ``"same"`` (output size ceil(L / stride); the odd pad goes at the end, as ONNX
SAME_UPPER and TensorFlow; PyTorch allows "same" only with stride 1, graphnn allows any stride).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphnn import dtypes as dt
from graphnn.dtypes import DType
from graphnn.errors import AttrError, ShapeError
from graphnn.ir import Attrs, Dim, Node, Shape
from graphnn.ops.elementwise import TensorLike
from graphnn.ops.registry import Attr, OpDef, int_, ints, make_node, register
from graphnn.ops.source import as_node
from graphnn.shapes import require_dtype, require_same_dtype, same_dim

Padding = int | str | Sequence[int] | Sequence[tuple[int, int]]

_CONV_ATTRS = {"stride": Attr(ints), "pads": Attr(ints), "dilation": Attr(ints),
               "groups": Attr(int_, 1)}


def conv_out_size(size: Dim, k: int, stride: int, dilation: int, pad_total: int) -> Dim:
    """floor((L + pads - dilation*(k-1) - 1) / stride) + 1, or None when L is unknown."""
    if size is None:
        return None
    return (size + pad_total - dilation * (k - 1) - 1) // stride + 1


def _check_common(x: Node, w: Node, attrs: Attrs) -> int:
    nd = x.ndim - 2
    if nd < 1 or w.ndim != x.ndim:
        raise ShapeError(f"expected x (N, C, *spatial) and weight of the same rank, "
                         f"got {x.type_str} and {w.type_str}")
    for key, n in (("stride", nd), ("dilation", nd), ("pads", 2 * nd)):
        if len(attrs[key]) != n:
            raise AttrError(f"{key} {attrs[key]} needs {n} entries for {nd} spatial dims")
    if any(s <= 0 for s in attrs["stride"]) or any(d <= 0 for d in attrs["dilation"]):
        raise AttrError("stride and dilation must be positive")
    if any(p < 0 for p in attrs["pads"]):
        raise AttrError("pads must be non-negative")
    if attrs["groups"] <= 0:
        raise AttrError("groups must be positive")
    return nd


def _conv_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, w = inputs[:2]
    dtype = require_same_dtype(inputs)
    require_dtype(x, dt.FLOATS)
    nd, g = _check_common(x, w, attrs), attrs["groups"]
    c_in, c_out = x.shape[1], w.shape[0]
    if c_in is not None and c_in % g:
        raise ShapeError(f"input channels {c_in} are not divisible by groups={g}")
    if c_out is not None and c_out % g:
        raise ShapeError(f"output channels {c_out} are not divisible by groups={g}")
    if c_in is not None and w.shape[1] is not None and w.shape[1] * g != c_in:
        raise ShapeError(f"weight {w.type_str} expects {w.shape[1]}*groups={w.shape[1] * g} "
                         f"input channels, x {x.type_str} has {c_in}")
    _check_bias(inputs, c_out)
    spatial = []
    for i in range(nd):
        k = w.shape[2 + i]
        if k is None:
            raise ShapeError("kernel size must be known")
        o = conv_out_size(x.shape[2 + i], k, attrs["stride"][i], attrs["dilation"][i],
                          attrs["pads"][i] + attrs["pads"][i + nd])
        if o is not None and o <= 0:
            raise ShapeError(f"kernel {w.shape[2:]} (dilation {attrs['dilation']}) is larger "
                             f"than the padded input {x.shape[2:]}")
        spatial.append(o)
    return (x.shape[0], c_out, *spatial), dtype


def _check_bias(inputs: Sequence[Node], channels: Dim) -> None:
    if len(inputs) == 3:
        b = inputs[2]
        if b.ndim != 1 or not same_dim(b.shape[0], channels):
            raise ShapeError(f"bias must have shape ({channels},), got {b.type_str}")


def _windows(xp: np.ndarray, kernel: Sequence[int], stride: Sequence[int],
             dilation: Sequence[int], out: Sequence[int]) -> np.ndarray:
    """(N, C, *kernel, *out): the input element under each kernel tap at each output position."""
    n, c = xp.shape[:2]
    cols = np.empty((n, c, *kernel, *out), dtype=xp.dtype)
    for taps in np.ndindex(*kernel):
        region = tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                       for t, d, s, o in zip(taps, dilation, stride, out))
        cols[(slice(None), slice(None)) + taps] = xp[(slice(None), slice(None)) + region]
    return cols


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, stride: tuple,
          pads: tuple, dilation: tuple, groups: int) -> np.ndarray:
    nd = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    kernel = w.shape[2:]
    out = [conv_out_size(xp.shape[2 + i], kernel[i], stride[i], dilation[i], 0) for i in range(nd)]
    cols = _windows(xp, kernel, stride, dilation, out)  # type: ignore[arg-type]
    n, c = x.shape[:2]
    k = math.prod(kernel)
    cols = cols.reshape(n, groups, (c // groups) * k, -1)
    wg = w.reshape(groups, w.shape[0] // groups, -1)
    y = np.einsum("gok,ngkp->ngop", wg, cols, optimize=True).reshape(n, w.shape[0], *out)
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nd)
    return y.astype(x.dtype)


register(OpDef("conv", _conv_infer, _conv, attrs=_CONV_ATTRS, arity=(2, 3),
               doc="N-d convolution (cross-correlation), channels first. Ref: ONNX Conv; "
                   "torch.nn.functional.conv2d"))


def _conv_transpose_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, w = inputs[:2]
    dtype = require_same_dtype(inputs)
    require_dtype(x, dt.FLOATS)
    nd, g = _check_common(x, w, attrs), attrs["groups"]
    if len(attrs["output_padding"]) != nd:
        raise AttrError(f"output_padding needs {nd} entries")
    for op_, s, d in zip(attrs["output_padding"], attrs["stride"], attrs["dilation"]):
        if not 0 <= op_ < max(s, d):
            raise AttrError(f"output_padding {op_} must be smaller than stride {s} or dilation {d}")
    if not same_dim(x.shape[1], w.shape[0]):
        raise ShapeError(f"weight {w.type_str} expects {w.shape[0]} input channels, "
                         f"x {x.type_str} has {x.shape[1]}")
    if w.shape[0] is not None and w.shape[0] % g:
        raise ShapeError(f"input channels {w.shape[0]} are not divisible by groups={g}")
    c_out = None if w.shape[1] is None else w.shape[1] * g
    _check_bias(inputs, c_out)
    spatial: list[Dim] = []
    for i in range(nd):
        size, k = x.shape[2 + i], w.shape[2 + i]
        if k is None:
            raise ShapeError("kernel size must be known")
        o = None if size is None else (
            (size - 1) * attrs["stride"][i] - attrs["pads"][i] - attrs["pads"][i + nd]
            + attrs["dilation"][i] * (k - 1) + attrs["output_padding"][i] + 1)
        if o is not None and o <= 0:
            raise ShapeError(f"padding {attrs['pads']} leaves no output for input {x.type_str}")
        spatial.append(o)
    return (x.shape[0], c_out, *spatial), dtype


def _conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, stride: tuple,
                    pads: tuple, dilation: tuple, groups: int,
                    output_padding: tuple) -> np.ndarray:
    nd, (n, c_in), size = x.ndim - 2, x.shape[:2], x.shape[2:]
    kernel, cog = w.shape[2:], w.shape[1]
    full = [(size[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 + output_padding[i]
            for i in range(nd)]
    y = np.zeros((n, groups, cog, *full), dtype=np.result_type(x, w))
    xg = x.reshape(n, groups, c_in // groups, -1)
    wg = w.reshape(groups, c_in // groups, cog, *kernel)
    for taps in np.ndindex(*kernel):
        contrib = np.einsum("ngcp,gco->ngop", xg, wg[(Ellipsis,) + taps], optimize=True)
        region = tuple(slice(t * d, t * d + s * (L - 1) + 1, s)
                       for t, d, s, L in zip(taps, dilation, stride, size))
        y[(slice(None),) * 3 + region] += contrib.reshape(n, groups, cog, *size)
    crop = tuple(slice(pads[i], full[i] - pads[i + nd]) for i in range(nd))
    y = y.reshape(n, groups * cog, *full)[(slice(None), slice(None)) + crop]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nd)
    return y.astype(x.dtype)


register(OpDef("conv_transpose", _conv_transpose_infer, _conv_transpose,
               attrs={**_CONV_ATTRS, "output_padding": Attr(ints)}, arity=(2, 3),
               doc="Gradient of conv w.r.t. its input, as a layer. Ref: ONNX ConvTranspose; "
                   "torch.nn.functional.conv_transpose2d"))


# -- frontend --------------------------------------------------------------------------------------


def _tuple(v: int | Sequence[int], nd: int, what: str) -> tuple[int, ...]:
    t = (int(v),) * nd if isinstance(v, (int, np.integer)) else tuple(int(i) for i in v)
    if len(t) != nd:
        raise AttrError(f"{what} {v!r} needs 1 or {nd} values")
    return t


def resolve_padding(padding: Padding, nd: int, spatial: Sequence[Dim], kernel: Sequence[int],
                    stride: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """Any accepted padding form -> ONNX ``pads`` (begins then ends).

    Raises:  AttrError for a malformed spec; ShapeError for "same" with stride > 1 on an unknown
             input size.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * (2 * nd)
        if padding != "same":
            raise AttrError(f"padding must be 'same', 'valid', ints or pairs, got {padding!r}")
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, stride, dilation):
            if s == 1:  # output size L: the padding does not depend on L
                total = d * (k - 1)
            elif size is None:
                raise ShapeError("padding='same' with stride > 1 needs a known input size")
            else:  # output size ceil(L / s)
                total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            begins.append(total // 2)
            ends.append(total - total // 2)
        return tuple(begins + ends)
    if isinstance(padding, (int, np.integer)):
        return (int(padding),) * (2 * nd)
    items: list[Any] = list(padding)
    if len(items) == nd and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in items):
        return tuple(int(p[0]) for p in items) + tuple(int(p[1]) for p in items)
    if len(items) == nd and all(isinstance(p, (int, np.integer)) for p in items):
        return tuple(int(p) for p in items) * 2
    if len(items) == 2 * nd and all(isinstance(p, (int, np.integer)) for p in items):
        return tuple(int(p) for p in items)
    raise AttrError(f"padding {padding!r}: expected an int, {nd} ints, {2 * nd} ints (ONNX "
                    f"begins then ends), {nd} (begin, end) pairs, 'same' or 'valid'")


def conv(x: TensorLike, weight: TensorLike, bias: TensorLike | None = None,
         stride: int | Sequence[int] = 1, padding: Padding = 0,
         dilation: int | Sequence[int] = 1, groups: int = 1, name: str | None = None) -> Node:
    """N-d convolution (cross-correlation, as every DL framework), channels first.

    Shapes:  x: (N, C_in, *L), weight: (C_out, C_in/groups, *k), bias: (C_out,)
             -> (N, C_out, *L_out)
    Dtypes:  float32, float64, all alike; other dtypes raise DTypeError
    Math:    L_out = floor((L + pad_begin + pad_end - dilation*(k-1) - 1) / stride) + 1
    Raises:  ShapeError if C_in or C_out is not divisible by groups, the weight does not match,
             or the kernel exceeds the padded input; AttrError for bad stride/padding/dilation
    Ref:     ONNX Conv (opset 11+); torch.nn.functional.conv1d/conv2d/conv3d
    """
    x_node = as_node(x)
    w_node = as_node(weight, like=x_node)
    nd = max(x_node.ndim - 2, 1)
    try:
        st, dil = _tuple(stride, nd, "stride"), _tuple(dilation, nd, "dilation")
        kernel = [k if k is not None else 1 for k in w_node.shape[2:]] or [1] * nd
        pads = resolve_padding(padding, nd, x_node.shape[2:], kernel, st, dil)
    except (AttrError, ShapeError) as e:
        from graphnn.ops.registry import context_message

        raise type(e)(context_message("conv", f"'{name}'" if name else "%?", [x_node, w_node],
                                      str(e))) from None
    inputs = [x_node, w_node] + ([] if bias is None else [as_node(bias, like=x_node)])
    attrs = {"stride": st, "pads": pads, "dilation": dil, "groups": groups}
    return make_node("conv", inputs, attrs, name=name)


def conv_transpose(x: TensorLike, weight: TensorLike, bias: TensorLike | None = None,
                   stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                   output_padding: int | Sequence[int] = 0, groups: int = 1,
                   dilation: int | Sequence[int] = 1, name: str | None = None) -> Node:
    """N-d transposed convolution ("deconvolution"), channels first; argument order as PyTorch.

    Shapes:  x: (N, C_in, *L), weight: (C_in, C_out/groups, *k), bias: (C_out,)
             -> (N, C_out, *L_out)
    Math:    L_out = (L-1)*stride - pad_begin - pad_end + dilation*(k-1) + output_padding + 1
    Raises:  ShapeError for channel mismatches; AttrError if output_padding >= max(stride,
             dilation)
    Ref:     ONNX ConvTranspose; torch.nn.functional.conv_transpose2d
    """
    x_node = as_node(x)
    w_node = as_node(weight, like=x_node)
    nd = max(x_node.ndim - 2, 1)
    st, dil = _tuple(stride, nd, "stride"), _tuple(dilation, nd, "dilation")
    pads = resolve_padding(padding, nd, x_node.shape[2:], [1] * nd, st, dil)
    inputs = [x_node, w_node] + ([] if bias is None else [as_node(bias, like=x_node)])
    attrs = {"stride": st, "pads": pads, "dilation": dil, "groups": groups,
             "output_padding": _tuple(output_padding, nd, "output_padding")}
    return make_node("conv_transpose", inputs, attrs, name=name)


def with_rank(fn: Any, nd: int, label: str) -> Any:
    """``fn`` restricted to inputs (N, C, *spatial) with ``nd`` spatial dims (conv2d, max_pool2d:
    the rank-specific names PyTorch users call)."""

    def wrapper(x: TensorLike, *args: Any, **kwargs: Any) -> Node:
        x_node = as_node(x)
        if x_node.ndim != nd + 2:
            from graphnn.ops.registry import context_message

            raise ShapeError(context_message(
                label, "%?", [x_node], f"expects a rank-{nd + 2} input (N, C, {nd} spatial dims)"))
        return fn(x_node, *args, **kwargs)

    wrapper.__name__ = label
    wrapper.__doc__ = f"{label}: ``{fn.__name__}`` for {nd} spatial dim(s).\n\n{fn.__doc__}"
    return wrapper


conv1d = with_rank(conv, 1, "conv1d")
conv2d = with_rank(conv, 2, "conv2d")
conv3d = with_rank(conv, 3, "conv3d")
conv_transpose1d = with_rank(conv_transpose, 1, "conv_transpose1d")
conv_transpose2d = with_rank(conv_transpose, 2, "conv_transpose2d")
conv_transpose3d = with_rank(conv_transpose, 3, "conv_transpose3d")




# -- gradients ------------------------------------------------------------------------------------
from graphnn.ops.registry import def_gradient  # noqa: E402 - rules follow the ops they differentiate


def _bias_grad(dy: Node) -> Node:
    from graphnn.ops.reduce import sum as reduce_sum

    return reduce_sum(dy, axis=(0, *range(2, dy.ndim)))


@def_gradient("conv")
def _g_conv(n: Node, dy: Node) -> list[Node | None]:
    x, w = n.inputs[:2]
    a, nd = n.attrs, x.ndim - 2
    base = {"stride": a["stride"], "pads": a["pads"], "dilation": a["dilation"],
            "groups": a["groups"]}
    out_pad = []
    for i in range(nd):
        size, k = x.shape[2 + i], w.shape[2 + i]
        if size is None or k is None:
            raise ShapeError("conv gradient needs known spatial sizes")
        span = size + a["pads"][i] + a["pads"][i + nd] - a["dilation"][i] * (k - 1) - 1
        out_pad.append(span % a["stride"][i])  # input rows the strided windows never reached
    dx = make_node("conv_transpose", [dy, w], {**base, "output_padding": tuple(out_pad)})
    dw = make_node("conv_weight_grad", [x, dy], {**base, "kernel_size": tuple(w.shape[2:])})
    grads: list[Node | None] = [dx, dw]
    return grads + ([_bias_grad(dy)] if len(n.inputs) == 3 else [])


@def_gradient("conv_transpose")
def _g_conv_transpose(n: Node, dy: Node) -> list[Node | None]:
    x, w = n.inputs[:2]
    a = n.attrs
    base = {"stride": a["stride"], "pads": a["pads"], "dilation": a["dilation"],
            "groups": a["groups"]}
    dx = make_node("conv", [dy, w], base)  # conv is the adjoint of the transposed conv
    dw = make_node("conv_weight_grad", [dy, x], {**base, "kernel_size": tuple(w.shape[2:])})
    grads: list[Node | None] = [dx, dw]
    return grads + ([_bias_grad(dy)] if len(n.inputs) == 3 else [])
