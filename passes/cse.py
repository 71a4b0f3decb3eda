"""``eliminate_common_subexpressions``: merge pure nodes that compute the same value.

Two nodes merge when they have the same op, attributes, type and (already merged) inputs;
commutative ops (the registry's flag) compare their inputs as a set. Constants merge by value.
Stateful and random ops never merge. Run after folding, before DCE.

    before:  %2 = exp(%x);  %3 = exp(%x);  %4 = add(%2, %3)
    after:   %2 = exp(%x);  %4 = add(%2, %2)
"""

from __future__ import annotations

from typing import Any

from graphnn.passes.rewrite import copy_node, rewrite

from graphnn.ir import Graph, Node
from graphnn.ops.registry import get_op


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    seen: dict[tuple[Any, ...], Node] = {}

    def rule(n: Node, inputs: list[Node]) -> Node | None:
        opdef = get_op(n.op)
        if not opdef.pure:
            return None
        ids = tuple(id(i) for i in inputs)
        key = (n.op, tuple(sorted(ids)) if opdef.commutative else ids, n.attrs, n.shape, n.dtype)
        if key in seen:
            return seen[key]
        seen[key] = copy_node(n, inputs)
        return seen[key]

    return rewrite(graph, rule)[0]
