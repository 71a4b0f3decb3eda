"""State ops: ``assign`` and ``assign_add`` write a variable; ``group`` runs several ops.

Semantics of one ``Session.run``: every read of a variable sees its value from the start of the
run; an assign's output is the new value; all writes are committed together when the run
succeeds, so a failed run changes nothing. Two writes to one variable in one run are an error.
This makes a training step a pure function of (state, feeds), which is what the code-generating
backends compile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphnn.dtypes import DType
from graphnn.errors import DTypeError, ShapeError
from graphnn.ir import Attrs, Graph, Node, Shape, get_default_graph
from graphnn.ops.elementwise import TensorLike
from graphnn.ops.registry import OpDef, make_node, register
from graphnn.ops.source import as_node, constant
from graphnn.shapes import broadcast_shapes


def _assign_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    ref, value = inputs
    if ref.op != "variable":
        raise DTypeError(f"can only assign to a variable, got a {ref.op} node")
    if value.dtype is not ref.dtype:
        raise DTypeError(f"value dtype {value.dtype.name} differs from variable dtype "
                         f"{ref.dtype.name}")
    try:
        fits = broadcast_shapes(value.shape, ref.shape) == ref.shape
    except ShapeError:
        fits = False
    if not fits:
        raise ShapeError(f"value {value.type_str} does not broadcast to variable {ref.type_str}")
    return ref.shape, ref.dtype


register(OpDef("assign", _assign_infer,
               lambda ref, value: np.broadcast_to(value, ref.shape).copy(), arity=(2, 2),
               pure=False, writes_input=0, nondiff_inputs=(0, 1),
               doc="variable <- value; returns the new value. Ref: tf.compat.v1.assign"))
register(OpDef("assign_add", _assign_infer, lambda ref, value: ref + value, arity=(2, 2),
               pure=False, writes_input=0, nondiff_inputs=(0, 1),
               doc="variable <- variable + value; returns the new value. Ref: tf.assign_add"))


def _group_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    return (), DType.bool


register(OpDef("group", _group_infer, lambda *xs: np.bool_(True), arity=(0, None), pure=False,
               no_value=True, nondiff_inputs=(),
               doc="Runs its inputs; fetching it returns None. Ref: tf.group"))


def assign(ref: Node, value: TensorLike, name: str | None = None) -> Node:
    """Write ``value`` into variable ``ref`` when the run succeeds; returns the new value.

    Shapes:  value broadcasts to ref's shape (as ``v[...] = value``); dtypes must match (a Python
             value is converted).
    Raises:  DTypeError if ref is not a variable or dtypes differ; ShapeError if shapes differ.
    """
    return make_node("assign", [ref, as_node(value, like=ref)], name=name)


def assign_add(ref: Node, delta: TensorLike, name: str | None = None) -> Node:
    """``ref += delta`` when the run succeeds; returns the new value. Same checks as assign."""
    return make_node("assign_add", [ref, as_node(delta, like=ref)], name=name)


def group(*ops: Node, name: str | None = None) -> Node:
    """One node that runs all ``ops``; ``Session.run`` returns None for it (tf.group)."""
    return make_node("group", list(ops), name=name)


def global_variables_initializer(graph: Graph | None = None) -> Node:
    """A ``group`` that (re)sets every variable of the graph to its initial value.

    Sessions also initialise variables lazily on first use, so running this is optional; it
    resets trained values, as in TensorFlow 1.
    """
    g = graph or get_default_graph()
    with g:
        assigns = [make_node("assign", [v, constant(v.attrs["init"].array)]) for v in g.variables]
        return group(*assigns, name="init")
