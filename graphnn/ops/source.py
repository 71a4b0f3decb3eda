"""Source ops: placeholder (fed at run time), constant (a value in the graph), variable (state).

Text IR::

    %x: f32[?,784] = placeholder()
    %w: f32[784,10] = variable[init=array<f32[784,10]>(...), trainable=true]()
    %0: f32[] = constant[value=array<f32[]>(0.5)]()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphnn.dtypes import DType, as_dtype, infer_from_value
from graphnn.errors import DTypeError, ShapeError
from graphnn.ir import ArrayValue, Attrs, Dim, Node, Shape
from graphnn.ops.registry import Attr, OpDef, array_, bool_, make_node, register


def _placeholder_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    raise AssertionError("placeholders are built by graphnn.placeholder")  # pragma: no cover


def _value_infer(key: str) -> Any:
    def infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
        arr = attrs[key].array
        return tuple(arr.shape), as_dtype(arr.dtype)

    return infer


register(OpDef("placeholder", _placeholder_infer, None, arity=(0, 0), pure=False,
               doc="A value fed at run time through feed_dict."))
register(OpDef("constant", _value_infer("value"), lambda *, value: value.array,
               attrs={"value": Attr(array_)}, arity=(0, 0), doc="A constant array."))
register(OpDef("variable", _value_infer("init"), None,
               attrs={"init": Attr(array_), "trainable": Attr(bool_, True)},
               arity=(0, 0), pure=False,
               doc="Mutable state owned by the Session, initialised from `init`."))


def placeholder(shape: Sequence[Dim], dtype: Any = DType.float32, name: str | None = None) -> Node:
    """A graph input fed through ``Session.run(..., feed_dict={x: array})``.

    Shapes:  ``shape`` of ints; ``None`` marks a dimension known only when fed (the batch).
    Dtypes:  any graphnn dtype (float32 by default).
    Raises:  ShapeError for negative sizes; DTypeError for unsupported dtypes.
    Ref:     tf.compat.v1.placeholder
    """
    dims = tuple(None if d is None else int(d) for d in shape)
    if any(d is not None and d < 0 for d in dims):
        raise ShapeError(f"placeholder {name or ''}: negative dimension in shape {dims}")
    from graphnn.ir import get_default_graph
    from graphnn.ops.registry import current_scope

    g = get_default_graph()
    node = Node("placeholder", (), Attrs(), dims, as_dtype(dtype),
                g.unique_name(name or "placeholder"), current_scope(), g)
    return g.add(node)


def constant(value: Any, dtype: Any = None, name: str | None = None) -> Node:
    """A constant tensor holding ``value`` (array-like).

    Dtypes:  ``dtype`` if given (the value is cast, same-kind casts only), else numpy arrays keep
             theirs, Python floats become float32, ints int64, bools bool.
    Raises:  DTypeError for values that cannot be represented (float value into int dtype).
    """
    arr = _as_array(value, dtype)
    return make_node("constant", [], {"value": ArrayValue(arr)}, name=name)


def variable(
    initial_value: Any, name: str | None = None, trainable: bool = True, dtype: Any = None
) -> Node:
    """A variable: state held by the Session, read by this node, written by ``assign``.

    A session initialises each variable from ``initial_value`` the first time a run needs it
    (``global_variables_initializer()`` re-initialises all of them). Reads within one ``run`` see
    the value from the start of that run; assignments become visible when the run succeeds.
    Shapes:  those of ``initial_value``.  Ref: tf.compat.v1.Variable
    """
    arr = _as_array(initial_value, dtype)
    return make_node("variable", [], {"init": ArrayValue(arr), "trainable": bool(trainable)},
                     name=name or "variable")


def _as_array(value: Any, dtype: Any) -> np.ndarray:
    if isinstance(value, Node):
        raise DTypeError(f"expected a concrete value, got symbolic tensor {value!r}")
    target = as_dtype(dtype) if dtype is not None else infer_from_value(value)
    arr = np.asarray(value)
    if arr.dtype != target.np and arr.size and not np.can_cast(arr.dtype, target.np, "same_kind"):
        raise DTypeError(f"cannot represent a {arr.dtype} value as {target.name}")
    return np.array(arr, dtype=target.np, order="C")  # keeps 0-d (ascontiguousarray would not)


def as_node(value: Any, like: Node | None = None) -> Node:
    """``value`` if it is a node, else a constant; with ``like``, of ``like``'s dtype and graph.

    A Python number or array combined with a node takes the node's dtype when the conversion is
    same-kind (an int into float32 is fine, 1.5 into int32 raises DTypeError), as in TensorFlow.
    """
    if isinstance(value, Node):
        return value
    if like is None:
        return constant(value)
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise DTypeError(f"cannot combine {type(value).__name__} with tensor {like!r}")
    if arr.dtype != like.dtype.np and not np.can_cast(arr.dtype, like.dtype.np, "same_kind"):
        if not (arr.dtype.kind == "f" and like.dtype.is_int and np.all(arr == np.round(arr))):
            raise DTypeError(
                f"cannot combine a {arr.dtype} value with {like.dtype.name} tensor {like!r} "
                "without losing precision; cast the tensor with graphnn.cast first"
            )
    from graphnn.ir import get_default_graph

    with like.graph or get_default_graph():
        return constant(arr.astype(like.dtype.np))
