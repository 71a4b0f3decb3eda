"""Shape specialisation and weight freezing.

``specialize(graph, shapes)`` gives placeholders the shapes they are fed with (unknown batch
dimensions become known) and re-infers every node, so later passes and code generators see static
shapes. ``freeze_variables(graph, values)`` turns variables into constants holding ``values``
(a session's current weights) for inference and ahead-of-time compilation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from graphnn.passes.rewrite import origin_of, rewrite

from graphnn.errors import ShapeError
from graphnn.ir import ArrayValue, Graph, Node
from graphnn.ops.registry import make_node
from graphnn.ops.source import placeholder


def specialize(graph: Graph, shapes: Mapping[str, Sequence[int]]) -> Graph:
    """Placeholders named in ``shapes`` take those shapes (checked against the known dims)."""

    def rule(n: Node, inputs: list[Node]) -> Node | None:
        if n.op != "placeholder" or n.name is None or n.name not in shapes:
            return None
        shape = tuple(int(d) for d in shapes[n.name])
        if len(shape) != n.ndim or any(d is not None and d != s for d, s in zip(n.shape, shape)):
            raise ShapeError(f"placeholder {n.name!r} is {n.type_str}, cannot specialise it to "
                             f"{list(shape)}")
        return placeholder(shape, n.dtype, n.name)

    return rewrite(graph, rule)[0]


def freeze_variables(graph: Graph, values: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Variables become constants with ``values[name]`` (default: their initial values)."""
    values = values or {}

    def rule(n: Node, inputs: list[Node]) -> Node | None:
        if n.op != "variable":
            return None
        value = values.get(n.name or "", n.attrs["init"].array)
        return make_node("constant", [], {"value": ArrayValue(np.asarray(value, n.dtype.np))},
                         name=n.name, origin=origin_of(graph, n))

    return rewrite(graph, rule)[0]
