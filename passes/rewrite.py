"""The one rewriting loop every pass uses: rebuild a graph node by node into a fresh graph.

``rewrite(graph, rule)`` visits nodes in order with their already-rewritten inputs (None for an
input that was dropped); ``rule`` returns a replacement node (built in the new graph, possibly one
of the inputs), ``SKIP`` to drop the node (a fusion pass drops the members of a group it
replaces), or None to copy it unchanged (a node with a dropped input is then dropped too).
Copies keep name, scope and provenance; new nodes are built through ``make_node``, so every
rewritten graph is type-checked as it is built.
"""

from __future__ import annotations

from collections.abc import Callable

from graphnn.errors import GraphnnError
from graphnn.ir import Graph, Node
from graphnn.ops.registry import make_node, name_scope
from graphnn.ops.source import placeholder
from graphnn.text_ir import node_id

SKIP = object()
Rule = Callable[[Node, list[Node]], object]


class PassError(GraphnnError, RuntimeError):
    """A pass failed or produced an invalid graph; the message names the pass."""


def rewrite(graph: Graph, rule: Rule, mapping: dict[Node, Node] | None = None
            ) -> tuple[Graph, dict[Node, Node]]:
    """A new graph with ``rule`` applied to every node, and the old-to-new mapping (filled into
    ``mapping`` when given, so a rule can look up any rewritten node)."""
    new = Graph(graph.name, graph.seed)
    mapping = {} if mapping is None else mapping
    with new:
        for n in graph.nodes:
            inputs = [mapping.get(i) for i in n.inputs]
            with name_scope(n.scope or "", absolute=True):
                out = rule(n, inputs)  # type: ignore[arg-type]
                if out is SKIP:
                    continue
                if isinstance(out, Node):
                    mapping[n] = out
                elif all(i is not None for i in inputs):
                    mapping[n] = copy_node(n, inputs)  # type: ignore[arg-type]
        missing = [o for o in graph.outputs if o not in mapping]
        if missing:
            raise PassError(f"the rewrite dropped output(s) {missing}")
        new.outputs = tuple(mapping[o] for o in graph.outputs)
    return new, mapping


def copy_node(n: Node, inputs: list[Node], **overrides: object) -> Node:
    """``n`` rebuilt on ``inputs`` in the current default graph (same name, attrs, provenance)."""
    if n.op == "placeholder":
        return placeholder(n.shape, n.dtype, n.name)
    attrs = dict(n.attrs)
    attrs.update(overrides)
    return make_node(n.op, inputs, attrs, name=n.name, origin=n.origin)


def origin_of(graph: Graph, *nodes: Node) -> tuple[str, ...]:
    """Provenance strings (``%3 add``) for nodes of ``graph``, keeping what they came from."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    out: list[str] = []
    for n in nodes:
        out.extend(n.origin or (f"%{node_id(n, index[n])} {n.op}",))
    return tuple(dict.fromkeys(out))


def consumers(graph: Graph) -> dict[Node, list[Node]]:
    """Each node's consumers, in graph order (a node consuming twice appears twice)."""
    out: dict[Node, list[Node]] = {n: [] for n in graph.nodes}
    for n in graph.nodes:
        for i in n.inputs:
            out[i].append(n)
    return out
