"""Copying part of a graph into a new one (saved models, inference graphs).

``extract(graph, outputs, values)`` rebuilds, node by node through the op registry, everything
``outputs`` depend on: names, scopes and attributes are kept, and variables take their values
from ``values`` (typically a session's current state) as initial values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from graphnn.ir import ArrayValue, Graph, Node
from graphnn.ops.registry import make_node, name_scope
from graphnn.ops.source import placeholder


def extract(graph: Graph, outputs: Sequence[Node], values: Mapping[Node, np.ndarray] | None = None,
            name: str | None = None) -> tuple[Graph, dict[Node, Node]]:
    """A new graph holding the nodes ``outputs`` need, and the old-to-new node mapping."""
    values = values or {}
    new = Graph(name or graph.name)
    mapping: dict[Node, Node] = {}
    with new:
        for n in graph.subgraph_order(list(outputs)):
            with name_scope(n.scope or "", absolute=True):
                if n.op == "placeholder":
                    m = placeholder(n.shape, n.dtype, n.name)
                elif n.op == "variable" and n in values:
                    attrs = {"init": ArrayValue(np.asarray(values[n], n.dtype.np)),
                             "trainable": n.attrs["trainable"]}
                    m = make_node("variable", [], attrs, name=n.name)
                else:
                    m = make_node(n.op, [mapping[i] for i in n.inputs], dict(n.attrs), name=n.name)
            mapping[n] = m
        new.outputs = tuple(mapping[o] for o in outputs)
    return new, mapping
