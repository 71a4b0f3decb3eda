"""``verify(graph)``: the invariants every pass and the parser must keep.

Checks that every op is registered, every input is defined earlier in the same graph, names are
unique, the graph is acyclic (networkx), outputs belong to the graph, and each node's shape and
dtype are what its op's rule infers from its inputs and attributes.
"""

from __future__ import annotations

import networkx as nx

from graphnn.errors import GraphnnError, VerificationError
from graphnn.ir import Graph
from graphnn.ops.registry import get_op
from graphnn.text_ir import node_id


def verify(graph: Graph) -> None:
    """Raise VerificationError naming the first broken invariant; return None if all hold."""
    seen: set[int] = set()
    names: set[str] = set()
    for index, node in enumerate(graph.nodes):
        where = f"node %{node_id(node, index)} ({node.op})"
        try:
            opdef = get_op(node.op)
        except GraphnnError as e:
            raise VerificationError(f"{where}: {e}") from None
        if node.graph is not graph:
            raise VerificationError(f"{where} belongs to another graph")
        for inp in node.inputs:
            if id(inp) not in seen:
                raise VerificationError(f"{where}: input {inp!r} is not defined before use")
        if node.name is not None:
            if node.name in names:
                raise VerificationError(f"{where}: duplicate name {node.name!r}")
            names.add(node.name)
        if node.op != "placeholder":
            try:
                shape, dtype = opdef.infer(node.inputs, node.attrs)
            except GraphnnError as e:
                raise VerificationError(f"{where}: its rule rejects it: {e}") from None
            if tuple(shape) != node.shape or dtype is not node.dtype:
                raise VerificationError(
                    f"{where}: recorded type {node.type_str} but the rule gives "
                    f"{dtype.value}{list(shape)}")
        seen.add(id(node))
    if not nx.is_directed_acyclic_graph(graph.to_networkx()):
        raise VerificationError(f"graph {graph.name!r} has a cycle")
    for out in graph.outputs:
        if id(out) not in seen:
            raise VerificationError(f"output {out!r} is not a node of graph {graph.name!r}")
