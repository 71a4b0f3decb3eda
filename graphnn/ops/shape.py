"""Shape ops: reshape, flatten, transpose, broadcast_to, squeeze, unsqueeze, concat, stack,
slice (and Python indexing), split, take, gather, pad, tile, one_hot.

Naming follows PyTorch where PyTorch and ONNX disagree, and says so:
- ``gather(x, index, axis)`` is PyTorch's ``torch.gather`` / ONNX GatherElements (take along an
  axis, output shaped like ``index``); ``take(x, indices, axis)`` is ONNX Gather / ``np.take``
  (what an embedding lookup does).
- ``pad`` takes numpy-style per-axis ``(before, after)`` pairs; the node stores ONNX's layout
  ``(b0, b1, ..., e0, e1, ...)``. Modes: constant, reflect, edge (PyTorch's "replicate").
- ``one_hot`` gives float32 by default (TensorFlow's choice, what losses want); indices outside
  ``[0, num_classes)`` give all-zero rows, as TensorFlow (PyTorch raises).
- ``split`` returns a list of ``slice`` nodes: every graphnn node has one output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphnn import dtypes as dt
from graphnn.dtypes import DType
from graphnn.errors import AttrError, GraphError, ShapeError
from graphnn.ir import Attrs, Dim, Node, Shape, format_shape
from graphnn.ops.elementwise import TensorLike
from graphnn.ops.registry import (
    Attr,
    OpDef,
    dtype_,
    float_,
    int_,
    ints,
    make_node,
    nested_ints,
    one_of,
    register,
)
from graphnn.ops.source import as_node, constant
from graphnn.shapes import (
    broadcast_shapes,
    normalize_axes,
    normalize_axis,
    num_elements,
    require_dtype,
    require_same_dtype,
    same_dim,
)

# -- reshape, flatten ------------------------------------------------------------------------------


def _reshape_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, target = inputs[0], attrs["shape"]
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise ShapeError(f"bad target shape {target}: sizes >= 0 and at most one -1")
    total, known = num_elements(x.shape), math.prod(d for d in target if d != -1)
    if -1 in target:
        if total is None:
            out: tuple[Dim, ...] = tuple(None if d == -1 else d for d in target)
        elif known == 0 or total % known:
            raise ShapeError(f"cannot reshape {x.type_str} ({total} elements) into {target}")
        else:
            out = tuple(total // known if d == -1 else d for d in target)
    else:
        if total is not None and total != known:
            raise ShapeError(f"cannot reshape {x.type_str} ({total} elements) into {target}")
        out = target
    return out, x.dtype


register(OpDef("reshape", _reshape_infer, lambda x, shape: np.reshape(x, shape),
               attrs={"shape": Attr(ints)}, doc="Ref: ONNX Reshape (allowzero=1); torch.reshape"))


def _flatten_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x = inputs[0]
    nd = max(x.ndim, 1)
    s, e = normalize_axis(attrs["start_dim"], nd), normalize_axis(attrs["end_dim"], nd)
    if s > e:
        raise AttrError(f"start_dim {s} is after end_dim {e}")
    shape = x.shape or (1,)
    return shape[:s] + (num_elements(shape[s:e + 1]),) + shape[e + 1:], x.dtype


def _flatten(x: np.ndarray, start_dim: int, end_dim: int) -> np.ndarray:
    shape = x.shape or (1,)
    s, e = start_dim % len(shape), end_dim % len(shape)
    return x.reshape(shape[:s] + (-1 if 0 not in shape else 0,) + shape[e + 1:])


register(OpDef("flatten", _flatten_infer, _flatten,
               attrs={"start_dim": Attr(int_, 0), "end_dim": Attr(int_, -1)},
               doc="Merge dims start_dim..end_dim. Ref: torch.flatten"))

# -- transpose, broadcast_to, squeeze, unsqueeze ---------------------------------------------------


def _transpose_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, perm = inputs[0], attrs["perm"]
    if sorted(perm) != list(range(x.ndim)):
        raise AttrError(f"perm {perm} is not a permutation of the {x.ndim} axes of {x.type_str}")
    return tuple(x.shape[p] for p in perm), x.dtype


register(OpDef("transpose", _transpose_infer, lambda x, perm: np.transpose(x, perm),
               attrs={"perm": Attr(ints)}, doc="Ref: ONNX Transpose; torch.permute"))


def _broadcast_to_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, target = inputs[0], attrs["shape"]
    if len(target) < x.ndim or broadcast_shapes(x.shape, target) != target:
        raise ShapeError(f"cannot broadcast {x.type_str} to {format_shape(target)}")
    return target, x.dtype


register(OpDef("broadcast_to", _broadcast_to_infer,
               lambda x, shape: np.broadcast_to(x, shape).copy(), attrs={"shape": Attr(ints)},
               doc="Ref: ONNX Expand; numpy.broadcast_to"))


def _squeeze_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, axes = inputs[0], attrs["axes"]
    for a in axes:
        if a >= x.ndim:
            raise AttrError(f"axis {a} out of range for {x.type_str}")
        if x.shape[a] not in (1, None):
            raise ShapeError(f"cannot squeeze axis {a} of size {x.shape[a]} in {x.type_str}")
    return tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype


register(OpDef("squeeze", _squeeze_infer, lambda x, axes: np.squeeze(x, axis=axes),
               attrs={"axes": Attr(ints)}, doc="Ref: ONNX Squeeze; torch.squeeze"))


def _unsqueeze_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, axes = inputs[0], attrs["axes"]
    rank = x.ndim + len(axes)
    if any(a >= rank for a in axes):
        raise AttrError(f"axes {axes} out of range for output rank {rank}")
    dims = iter(x.shape)
    return tuple(1 if i in axes else next(dims) for i in range(rank)), x.dtype


register(OpDef("unsqueeze", _unsqueeze_infer, lambda x, axes: np.expand_dims(x, axes),
               attrs={"axes": Attr(ints)}, doc="Ref: ONNX Unsqueeze; torch.unsqueeze"))

# -- concat, stack, tile ---------------------------------------------------------------------------


def _concat_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    dtype = require_same_dtype(inputs)
    first, axis = inputs[0], attrs["axis"]
    if first.ndim == 0:
        raise ShapeError("cannot concatenate 0-d tensors (use stack)")
    axis = normalize_axis(axis, first.ndim)
    for n in inputs[1:]:
        if n.ndim != first.ndim or not all(
            same_dim(a, b) for i, (a, b) in enumerate(zip(n.shape, first.shape)) if i != axis
        ):
            raise ShapeError(f"concat along axis {axis}: {n.type_str} does not match "
                             f"{first.type_str} outside that axis")
    sizes = [n.shape[axis] for n in inputs]
    total = None if None in sizes else sum(d for d in sizes if d is not None)
    merged = tuple(next((n.shape[i] for n in inputs if n.shape[i] is not None), None)
                   for i in range(first.ndim))
    return merged[:axis] + (total,) + merged[axis + 1:], dtype


register(OpDef("concat", _concat_infer, lambda *xs, axis: np.concatenate(xs, axis=axis),
               attrs={"axis": Attr(int_)}, arity=(1, None), doc="Ref: ONNX Concat; torch.cat"))


def _stack_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    dtype = require_same_dtype(inputs)
    first = inputs[0]
    for n in inputs[1:]:
        if n.ndim != first.ndim or not all(map(same_dim, n.shape, first.shape)):
            raise ShapeError(f"stack: {n.type_str} differs from {first.type_str}")
    axis = normalize_axis(attrs["axis"], first.ndim + 1)
    return first.shape[:axis] + (len(inputs),) + first.shape[axis:], dtype


register(OpDef("stack", _stack_infer, lambda *xs, axis: np.stack(xs, axis=axis),
               attrs={"axis": Attr(int_, 0)}, arity=(1, None), doc="Ref: torch.stack"))


def _tile_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, reps = inputs[0], attrs["repeats"]
    if len(reps) != x.ndim or any(r < 0 for r in reps):
        raise AttrError(f"repeats {reps} must give one non-negative count per axis of {x.type_str}")
    return tuple(None if d is None else d * r for d, r in zip(x.shape, reps)), x.dtype


register(OpDef("tile", _tile_infer, lambda x, repeats: np.tile(x, repeats),
               attrs={"repeats": Attr(ints)}, doc="Ref: ONNX Tile"))

# -- slice -----------------------------------------------------------------------------------------


def _slice_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x = inputs[0]
    starts, stops, steps = attrs["starts"], attrs["stops"], attrs["steps"]
    if not len(starts) == len(stops) == len(steps) == x.ndim:
        raise AttrError(f"starts/stops/steps need one entry per axis of {x.type_str}")
    if any(s == 0 for s in steps):
        raise AttrError("slice step cannot be zero")
    out = tuple(
        None if d is None else len(range(*slice(a, b, s).indices(d)))
        for d, a, b, s in zip(x.shape, starts, stops, steps)
    )
    return out, x.dtype


def _slice(x: np.ndarray, starts: tuple, stops: tuple, steps: tuple) -> np.ndarray:
    return x[tuple(slice(a, b, s) for a, b, s in zip(starts, stops, steps))].copy()


register(OpDef("slice", _slice_infer, _slice,
               attrs={"starts": Attr(nested_ints), "stops": Attr(nested_ints),
                      "steps": Attr(ints)},
               doc="Python slicing per axis (None bounds, negative indices, strides). "
                   "Ref: ONNX Slice; numpy basic indexing"))

# -- take, gather, one_hot -------------------------------------------------------------------------


def _take_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, idx = inputs
    require_dtype(idx, dt.INTS, "indices")
    if x.ndim == 0:
        raise ShapeError("cannot take from a 0-d tensor")
    axis = normalize_axis(attrs["axis"], x.ndim)
    return x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype


register(OpDef("take", _take_infer, lambda x, i, axis: np.take(x, i, axis=axis),
               attrs={"axis": Attr(int_, 0)}, arity=(2, 2), nondiff_inputs=(1,),
               doc="Select slices by index along axis. Ref: ONNX Gather; numpy.take"))


def _gather_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, idx = inputs
    require_dtype(idx, dt.INTS, "index")
    axis = normalize_axis(attrs["axis"], max(x.ndim, 1))
    if idx.ndim != x.ndim or not all(
        same_dim(a, b) for i, (a, b) in enumerate(zip(x.shape, idx.shape)) if i != axis
    ):
        raise ShapeError(f"index {idx.type_str} must match x {x.type_str} except along axis {axis}")
    return idx.shape, x.dtype


register(OpDef("gather", _gather_infer,
               lambda x, i, axis: np.take_along_axis(x, i, axis=axis),
               attrs={"axis": Attr(int_)}, arity=(2, 2), nondiff_inputs=(1,),
               doc="out[i][j] = x[i][index[i][j]] along axis. Ref: torch.gather; "
                   "ONNX GatherElements"))


def _one_hot_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    require_dtype(inputs[0], dt.INTS, "indices")
    if attrs["num_classes"] <= 0:
        raise AttrError("num_classes must be positive")
    return inputs[0].shape + (attrs["num_classes"],), attrs["dtype"]


def _one_hot(i: np.ndarray, num_classes: int, dtype: DType) -> np.ndarray:
    return (i[..., None] == np.arange(num_classes)).astype(dtype.np)


register(OpDef("one_hot", _one_hot_infer, _one_hot,
               attrs={"num_classes": Attr(int_), "dtype": Attr(dtype_, DType.float32)},
               nondiff_inputs=(0,), doc="Ref: ONNX OneHot (axis=-1); tf.one_hot"))

# -- pad -------------------------------------------------------------------------------------------


def _pad_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, pads, mode = inputs[0], attrs["pads"], attrs["mode"]
    nd = x.ndim
    if len(pads) != 2 * nd or any(p < 0 for p in pads):
        raise AttrError(f"pads {pads} need 2*{nd} non-negative entries")
    out: list[Dim] = []
    for i, d in enumerate(x.shape):
        b, e = pads[i], pads[i + nd]
        if mode == "reflect" and d is not None and (b >= d or e >= d) and (b or e):
            raise ShapeError(f"reflect padding ({b}, {e}) must be smaller than axis {i} size {d}")
        if mode == "edge" and d == 0 and (b or e):
            raise ShapeError(f"edge padding of empty axis {i}")
        out.append(None if d is None else d + b + e)
    return tuple(out), x.dtype


def _pad(x: np.ndarray, pads: tuple[int, ...], mode: str, value: float) -> np.ndarray:
    nd = x.ndim
    width = [(pads[i], pads[i + nd]) for i in range(nd)]
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=value)
    return np.pad(x, width, mode=mode)  # type: ignore[call-overload]


register(OpDef("pad", _pad_infer, _pad,
               attrs={"pads": Attr(ints), "mode": Attr(one_of("constant", "reflect", "edge"),
                                                       "constant"),
                      "value": Attr(float_, 0.0)},
               doc="Ref: ONNX Pad (opset 11+ layout); numpy.pad"))


# -- frontend --------------------------------------------------------------------------------------


def reshape(x: TensorLike, shape: Sequence[int], name: str | None = None) -> Node:
    """Reshape to ``shape`` (one entry may be -1: inferred).

    Shapes:  x: any, element count preserved -> shape.  Raises: ShapeError when counts differ.
    Ref:     torch.reshape; ONNX Reshape with allowzero=1 (0 means an empty dimension)
    """
    return make_node("reshape", [as_node(x)], {"shape": tuple(int(d) for d in shape)}, name=name)


def flatten(x: TensorLike, start_dim: int = 0, end_dim: int = -1, name: str | None = None) -> Node:
    """Merge dims ``start_dim..end_dim`` into one (torch.flatten; nn.Flatten uses start_dim=1).

    Shapes:  (d0, ..., dn) -> (d0, ..., prod(d_start..d_end), ..., dn); unknown dims stay unknown.
    """
    return make_node("flatten", [as_node(x)], {"start_dim": start_dim, "end_dim": end_dim},
                     name=name)


def transpose(x: TensorLike, perm: Sequence[int] | None = None, name: str | None = None) -> Node:
    """Permute axes: ``out.shape[i] = x.shape[perm[i]]``; ``perm=None`` reverses them (``x.T``).

    Raises:  AttrError if perm is not a permutation.  Ref: ONNX Transpose; torch.permute
    """
    x = as_node(x)
    p = tuple(range(x.ndim))[::-1] if perm is None else tuple(
        normalize_axis(int(a), x.ndim) if -x.ndim <= int(a) < x.ndim else int(a) for a in perm)
    return make_node("transpose", [x], {"perm": p}, name=name)


permute = transpose


def broadcast_to(x: TensorLike, shape: Sequence[int], name: str | None = None) -> Node:
    """Broadcast to ``shape`` with numpy's rules. Raises ShapeError if impossible.

    Ref: ONNX Expand (one-directional); numpy.broadcast_to
    """
    return make_node("broadcast_to", [as_node(x)], {"shape": tuple(int(d) for d in shape)},
                     name=name)


def squeeze(x: TensorLike, axis: int | Sequence[int] | None = None,
            name: str | None = None) -> Node:
    """Drop size-1 axes (all known size-1 axes when ``axis`` is None).

    Raises:  ShapeError when a named axis is not of size 1.  Ref: ONNX Squeeze; torch.squeeze
    """
    x = as_node(x)
    axes = tuple(i for i, d in enumerate(x.shape) if d == 1) if axis is None else \
        _axes_in(axis, x.ndim, "squeeze", x)
    return make_node("squeeze", [x], {"axes": axes}, name=name)


def unsqueeze(x: TensorLike, axis: int | Sequence[int], name: str | None = None) -> Node:
    """Insert size-1 axes at ``axis`` (positions in the output).  Ref: ONNX Unsqueeze."""
    x = as_node(x)
    axes = _axes_in(axis, x.ndim + (1 if isinstance(axis, int) else len(axis)), "unsqueeze", x)
    return make_node("unsqueeze", [x], {"axes": axes}, name=name)


expand_dims = unsqueeze


def _axes_in(axis: int | Sequence[int], ndim: int, op: str, x: Node) -> tuple[int, ...]:
    try:
        return normalize_axes(axis, ndim)
    except AttrError as e:
        from graphnn.ops.registry import context_message

        raise AttrError(context_message(op, f"%{len(x.graph.nodes) if x.graph else '?'}",
                                        [x], str(e))) from None


def concat(tensors: Sequence[TensorLike], axis: int = 0, name: str | None = None) -> Node:
    """Join tensors along an existing axis.

    Shapes:  all equal except along ``axis``.  Raises: ShapeError, DTypeError.
    Ref:     ONNX Concat; torch.cat
    """
    nodes = _nodes(tensors)
    return make_node("concat", nodes, {"axis": axis}, name=name)


cat = concat


def stack(tensors: Sequence[TensorLike], axis: int = 0, name: str | None = None) -> Node:
    """Join equally shaped tensors along a new axis.  Ref: torch.stack."""
    return make_node("stack", _nodes(tensors), {"axis": axis}, name=name)


def _nodes(tensors: Sequence[TensorLike]) -> list[Node]:
    if not tensors:
        raise GraphError("expected at least one tensor")
    like = next((t for t in tensors if isinstance(t, Node)), None)
    return [as_node(t, like=like) for t in tensors]


def tile(x: TensorLike, repeats: Sequence[int], name: str | None = None) -> Node:
    """Repeat x ``repeats[i]`` times along axis i.  Ref: ONNX Tile; numpy.tile."""
    return make_node("tile", [as_node(x)], {"repeats": tuple(repeats)}, name=name)


def slice_(x: TensorLike, starts: Sequence[int | None], stops: Sequence[int | None],
           steps: Sequence[int] | None = None, name: str | None = None) -> Node:
    """Python slicing per axis: ``x[starts[0]:stops[0]:steps[0], ...]``.

    Shapes:  one entry per axis of x (None bounds mean the whole axis).  Ref: ONNX Slice.
    """
    x = as_node(x)
    steps = tuple(steps) if steps is not None else (1,) * len(starts)
    return make_node("slice", [x], {"starts": tuple(starts), "stops": tuple(stops),
                                    "steps": steps}, name=name)


def split(x: TensorLike, split_size_or_sections: int | Sequence[int], axis: int = 0,
          name: str | None = None) -> list[Node]:
    """Split along ``axis`` into chunks of ``split_size`` (the last may be smaller) or into the
    given section sizes, as ``torch.split``. Returns a list of ``slice`` nodes.

    Raises:  ShapeError if the axis size is unknown or the sections do not sum to it.
    """
    x = as_node(x)
    ax = normalize_axis(axis, x.ndim)
    size = x.shape[ax]
    if size is None:
        raise ShapeError(f"split: axis {ax} of {x.type_str} has unknown size")
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step <= 0:
            raise AttrError("split: split_size must be positive")
        sections = [min(step, size - s) for s in range(0, size, step)] or [0]
    else:
        sections = list(split_size_or_sections)
        if sum(sections) != size:
            raise ShapeError(f"split: sections {sections} do not sum to axis size {size}")
    out, start = [], 0
    for i, n in enumerate(sections):
        starts: list[int | None] = [None] * x.ndim
        stops: list[int | None] = [None] * x.ndim
        starts[ax], stops[ax] = start, start + n
        out.append(slice_(x, starts, stops, name=f"{name}_{i}" if name else None))
        start += n
    return out


def take(x: TensorLike, indices: TensorLike, axis: int = 0, name: str | None = None) -> Node:
    """Select slices of x by integer indices along ``axis`` (negative indices count from the end).

    Shapes:  x: (a..., n, b...), indices: (i...) -> (a..., i..., b...)
    Dtypes:  indices int32/int64.  Ref: ONNX Gather; numpy.take
    """
    idx = indices if isinstance(indices, Node) else constant(np.asarray(indices, np.int64))
    return make_node("take", [as_node(x), idx], {"axis": axis}, name=name)


def gather(x: TensorLike, index: TensorLike, axis: int, name: str | None = None) -> Node:
    """``out[..., j, ...] = x[..., index[..., j, ...], ...]`` along ``axis`` (torch.gather).

    Shapes:  index has x's rank and x's sizes except along axis -> index's shape
    Ref:     torch.gather; ONNX GatherElements; numpy.take_along_axis
    """
    idx = index if isinstance(index, Node) else constant(np.asarray(index, np.int64))
    return make_node("gather", [as_node(x), idx], {"axis": axis}, name=name)


def one_hot(indices: TensorLike, num_classes: int, dtype: Any = DType.float32,
            name: str | None = None) -> Node:
    """One-hot encode integer ``indices`` along a new last axis.

    Shapes:  (...) -> (..., num_classes); out-of-range indices give an all-zero row.
    Dtypes:  indices int32/int64; output ``dtype`` (float32 default).  Ref: ONNX OneHot; tf.one_hot
    """
    idx = indices if isinstance(indices, Node) else constant(np.asarray(indices, np.int64))
    return make_node("one_hot", [idx], {"num_classes": num_classes, "dtype": dtype}, name=name)


def pad(x: TensorLike, pads: int | Sequence[tuple[int, int]], mode: str = "constant",
        value: float = 0.0, name: str | None = None) -> Node:
    """Pad with ``pads``: an int for every side, or one ``(before, after)`` pair per axis.

    Modes:   constant (``value``), reflect (mirror without the edge), edge (repeat the edge).
    Raises:  ShapeError when reflect padding is not smaller than the axis.  Ref: ONNX Pad; np.pad
    """
    x = as_node(x)
    pairs = [(pads, pads)] * x.ndim if isinstance(pads, int) else [tuple(p) for p in pads]
    if len(pairs) != x.ndim or any(len(p) != 2 for p in pairs):
        from graphnn.ops.registry import context_message

        raise AttrError(context_message("pad", "%?", [x],
                                        f"pads {pads} must give (before, after) per axis"))
    flat = tuple(p[0] for p in pairs) + tuple(p[1] for p in pairs)
    return make_node("pad", [x], {"pads": flat, "mode": mode, "value": value}, name=name)


def getitem(x: Node, index: Any) -> Node:
    """``x[index]`` with basic indexing: ints, slices (strided, negative), ``None``, ``...``;
    an integer list or int tensor as the only index selects along axis 0 (``take``).

    Raises:  ShapeError for an out-of-range int; GraphError for boolean masks (shape unknown
             until run: use ``where``).
    """
    if isinstance(index, (Node, list, np.ndarray)):
        idx_node = index if isinstance(index, Node) else None
        if idx_node is not None and idx_node.dtype is DType.bool or (
            not isinstance(index, Node) and np.asarray(index).dtype == np.bool_
        ):
            raise GraphError("boolean-mask indexing has a data-dependent shape; use graphnn.where")
        return take(x, index if isinstance(index, Node) else np.asarray(index), axis=0)
    items = list(index) if isinstance(index, tuple) else [index]
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    if items.count(Ellipsis) > 1:
        raise GraphError("an index can hold only one ellipsis")
    if n_real > x.ndim:
        raise ShapeError(f"too many indices ({n_real}) for {x.type_str}")
    if Ellipsis in items:
        e = items.index(Ellipsis)
        items[e:e + 1] = [slice(None)] * (x.ndim - n_real)
    items += [slice(None)] * (x.ndim - sum(1 for i in items if i is not None))
    starts: list[int | None] = []
    stops: list[int | None] = []
    steps: list[int] = []
    squeeze_axes: list[int] = []
    new_axes: list[int] = []
    axis = out_pos = 0  # position in x, position in the result
    for it in items:
        if it is None:
            new_axes.append(out_pos)
            out_pos += 1
            continue
        if isinstance(it, slice):
            out_pos += 1
            starts.append(_int_or_none(it.start))
            stops.append(_int_or_none(it.stop))
            steps.append(1 if it.step is None else int(it.step))
        elif isinstance(it, (int, np.integer)):
            i, d = int(it), x.shape[axis]
            if d is not None and not -d <= i < d:
                raise ShapeError(f"index {i} is out of bounds for axis {axis} of {x.type_str}")
            starts.append(i)
            stops.append(i + 1 if i != -1 else None)
            steps.append(1)
            squeeze_axes.append(axis)
        else:
            raise GraphError(f"unsupported index {it!r} of type {type(it).__name__}")
        axis += 1
    out = x
    if any(s is not None for s in starts + stops) or any(s != 1 for s in steps):
        out = slice_(x, starts, stops, steps)
    if squeeze_axes:
        out = make_node("squeeze", [out], {"axes": tuple(squeeze_axes)})
    if new_axes:
        out = make_node("unsqueeze", [out], {"axes": tuple(new_axes)})
    return out if out is not x else make_node("identity", [x])


def _int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)


# -- shape-polymorphic helpers (used by gradients; they work with unknown batch dims) --------------


def _optional_dtype(v: Any) -> DType | None:
    return None if v is None else dtype_(v)


def _full_like_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    return inputs[0].shape, attrs["dtype"] or inputs[0].dtype


register(OpDef("full_like", _full_like_infer,
               lambda x, fill_value, dtype: np.full(x.shape, fill_value,
                                                    dtype=(dtype.np if dtype else x.dtype)),
               attrs={"fill_value": Attr(float_), "dtype": Attr(_optional_dtype, None)},
               nondiff_inputs=(0,), doc="A tensor of x's shape filled with fill_value. "
                                        "Ref: torch.full_like"))


def _size_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x = inputs[0]
    if any(a >= x.ndim for a in attrs["axes"]):
        raise AttrError(f"axes {attrs['axes']} out of range for {x.type_str}")
    return (), attrs["dtype"]


register(OpDef("size", _size_infer,
               lambda x, axes, dtype: np.array(math.prod(x.shape[a] for a in axes), dtype.np),
               attrs={"axes": Attr(ints), "dtype": Attr(dtype_, DType.float32)},
               nondiff_inputs=(0,), doc="Number of elements along axes, as a scalar of dtype."))


def _like_infer(broadcast: bool) -> Any:
    def infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
        x, like = inputs
        if broadcast:
            if x.ndim > like.ndim or broadcast_shapes(x.shape, like.shape) != like.shape:
                raise ShapeError(f"cannot broadcast {x.type_str} like {like.type_str}")
        else:
            n, m = num_elements(x.shape), num_elements(like.shape)
            if n is not None and m is not None and n != m:
                raise ShapeError(f"cannot reshape {x.type_str} like {like.type_str}")
        return like.shape, x.dtype

    return infer


register(OpDef("broadcast_like", _like_infer(True),
               lambda x, like: np.broadcast_to(x, like.shape).copy(), arity=(2, 2),
               nondiff_inputs=(1,), doc="Broadcast x to like's (run-time) shape."))
register(OpDef("reshape_like", _like_infer(False), lambda x, like: x.reshape(like.shape),
               arity=(2, 2), nondiff_inputs=(1,), doc="Reshape x to like's (run-time) shape."))


def full_like(x: Node, fill_value: float, dtype: Any = None, name: str | None = None) -> Node:
    """A tensor shaped like ``x`` (also when its batch size is known only at run time), filled
    with ``fill_value``, of ``dtype`` (x's by default).  Ref: torch.full_like."""
    return make_node("full_like", [x], {"fill_value": fill_value, "dtype": dtype}, name=name)


def zeros_like(x: Node, dtype: Any = None) -> Node:
    return full_like(x, 0.0, dtype)


def ones_like(x: Node, dtype: Any = None) -> Node:
    return full_like(x, 1.0, dtype)


def size(x: Node, axes: Sequence[int] | None = None, dtype: Any = DType.float32) -> Node:
    """The number of elements of ``x`` along ``axes`` (all by default) as a 0-d tensor.

    A constant when those dims are known at build time; a ``size`` node otherwise.
    """
    ax = normalize_axes(axes, x.ndim)
    dims = [x.shape[a] for a in ax]
    if all(d is not None for d in dims):
        with x.graph or _default_graph():
            return constant(np.array(math.prod(d for d in dims if d is not None)), dtype=dtype)
    return make_node("size", [x], {"axes": ax, "dtype": dtype})


def broadcast_like(x: Node, like: Node) -> Node:
    """``x`` broadcast to ``like``'s shape, known or not until run time."""
    return make_node("broadcast_like", [x, like])


def reshape_like(x: Node, like: Node) -> Node:
    """``x`` reshaped to ``like``'s shape, known or not until run time."""
    return make_node("reshape_like", [x, like])


def _default_graph() -> Any:
    from graphnn.ir import get_default_graph

    return get_default_graph()


# -- gradients ------------------------------------------------------------------------------------
from graphnn.ops.registry import def_gradient  # noqa: E402 - rules follow the ops they differentiate


@def_gradient("reshape", "flatten", "squeeze", "unsqueeze")
def _g_reshape(n: Node, dy: Node) -> list[Node | None]:
    return [reshape_like(dy, n.inputs[0])]


@def_gradient("reshape_like")
def _g_reshape_like(n: Node, dy: Node) -> list[Node | None]:
    return [reshape_like(dy, n.inputs[0]), None]


@def_gradient("broadcast_to", "broadcast_like")
def _g_broadcast(n: Node, dy: Node) -> list[Node | None]:
    return [dy, None]  # the autodiff driver sums the broadcast axes


@def_gradient("transpose")
def _g_transpose(n: Node, dy: Node) -> list[Node | None]:
    return [transpose(dy, [int(i) for i in np.argsort(n.attrs["perm"])])]


def _pieces(n: Node, dy: Node, axis: int) -> list[tuple[Node, int, int]]:
    sizes = [x.shape[axis] for x in n.inputs]
    if any(s is None for s in sizes):
        raise ShapeError(f"{n.op} gradient needs the sizes along axis {axis} to be known")
    out, start = [], 0
    for x, s in zip(n.inputs, sizes):
        assert s is not None
        out.append((x, start, start + s))
        start += s
    return out


@def_gradient("concat")
def _g_concat(n: Node, dy: Node) -> list[Node | None]:
    axis = normalize_axis(n.attrs["axis"], dy.ndim)
    grads: list[Node | None] = []
    for _, a, b in _pieces(n, dy, axis):
        starts: list[int | None] = [None] * dy.ndim
        stops: list[int | None] = [None] * dy.ndim
        starts[axis], stops[axis] = a, b
        grads.append(slice_(dy, starts, stops))
    return grads


@def_gradient("stack")
def _g_stack(n: Node, dy: Node) -> list[Node | None]:
    axis = normalize_axis(n.attrs["axis"], dy.ndim)
    grads: list[Node | None] = []
    for i, x in enumerate(n.inputs):
        starts: list[int | None] = [None] * dy.ndim
        stops: list[int | None] = [None] * dy.ndim
        starts[axis], stops[axis] = i, i + 1
        grads.append(reshape_like(slice_(dy, starts, stops), x))
    return grads


@def_gradient("slice")
def _g_slice(n: Node, dy: Node) -> list[Node | None]:
    return [make_node("slice_grad", [dy, n.inputs[0]], dict(n.attrs))]


@def_gradient("take", "gather")
def _g_take(n: Node, dy: Node) -> list[Node | None]:
    x, idx = n.inputs
    return [make_node(f"{n.op}_grad", [dy, idx, x], {"axis": normalize_axis(n.attrs["axis"],
                                                                           x.ndim)}), None]


@def_gradient("pad")
def _g_pad(n: Node, dy: Node) -> list[Node | None]:
    return [make_node("pad_grad", [dy, n.inputs[0]], dict(n.attrs))]


@def_gradient("tile")
def _g_tile(n: Node, dy: Node) -> list[Node | None]:
    from graphnn.ops.reduce import sum as reduce_sum

    x, reps = n.inputs[0], n.attrs["repeats"]
    if any(d is None for d in x.shape):
        raise ShapeError("tile gradient needs the input shape to be known")
    split = [int(v) for r, d in zip(reps, x.shape) for v in (r, d) if v is not None]
    summed = reduce_sum(reshape(dy, split), axis=tuple(range(0, 2 * x.ndim, 2)))
    return [summed]
