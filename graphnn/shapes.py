"""Shape arithmetic shared by the shape rules: broadcasting, axes, element counts.

Dimensions are ``int`` or ``None`` (known only at run time). Rules treat ``None`` as "any size":
a check that needs the size is deferred to the run, where the reference backend's numpy raises.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from graphnn.dtypes import DType
from graphnn.errors import AttrError, DTypeError, ShapeError
from graphnn.ir import Dim, Node, Shape, format_shape


def broadcast_shapes(*shapes: Shape) -> Shape:
    """numpy broadcasting of static shapes (``None`` matches anything; ``None`` vs 1 stays None).

    Raises:  ShapeError when two known sizes differ and neither is 1.
    """
    ndim = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(ndim):
        dims = [s[len(s) - ndim + axis] for s in shapes if len(s) - ndim + axis >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise ShapeError(
                "cannot broadcast shapes " + " and ".join(format_shape(s) for s in shapes)
                + f" (axis {axis - ndim}: sizes {sorted(known)})"
            )
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def normalize_axis(axis: int, ndim: int, *, what: str = "axis") -> int:
    """Map a possibly negative axis into ``[0, ndim)``; AttrError when out of range."""
    if not -ndim <= axis < ndim:
        raise AttrError(f"{what} {axis} is out of range for a tensor of rank {ndim}")
    return axis % ndim


def normalize_axes(axes: int | Iterable[int] | None, ndim: int) -> tuple[int, ...]:
    """Sorted, non-negative, duplicate-free axes; ``None`` means all axes."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int):
        axes = (axes,)
    out = tuple(sorted({normalize_axis(a, ndim) for a in axes}))
    if len(out) != len(tuple(axes)):
        raise AttrError(f"repeated axis in {tuple(axes)}")
    return out


def num_elements(shape: Shape) -> int | None:
    """Product of the dimensions, or None if any is unknown."""
    if any(d is None for d in shape):
        return None
    return math.prod(d for d in shape if d is not None)


def same_dim(a: Dim, b: Dim) -> bool:
    """True unless both sizes are known and differ."""
    return a is None or b is None or a == b


def require_dtype(node: Node, allowed: Iterable[DType], role: str = "input") -> None:
    """DTypeError naming the allowed dtypes if ``node.dtype`` is not among them."""
    allowed = frozenset(allowed)
    if node.dtype not in allowed:
        names = ", ".join(sorted(d.name for d in allowed))
        raise DTypeError(f"{role} has dtype {node.dtype.name}; expected one of: {names}")


def require_same_dtype(nodes: Sequence[Node]) -> DType:
    """The common dtype of ``nodes``; DTypeError listing them when they differ.

    graphnn does not promote between tensors (as ONNX and TensorFlow): cast explicitly.
    """
    dtypes = {n.dtype for n in nodes}
    if len(dtypes) > 1:
        listed = ", ".join(n.dtype.name for n in nodes)
        raise DTypeError(f"inputs have different dtypes ({listed}); cast one with graphnn.cast")
    return nodes[0].dtype


def require_rank(node: Node, rank: int | Iterable[int], role: str = "input") -> None:
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if node.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ShapeError(f"{role} must have rank {want}, got {node.type_str}")
