"""Fusion: groups of nodes become one ``fused`` kernel node holding its subgraph.

``fuse_epilogue``: a matmul, gemm or convolution absorbs the chain of elementwise ops that
consumes it (bias add, activation, residual add, scaling), while each link has one consumer and
keeps the output shape, and the elementwise ops of that shape that compute the chain's other
operands for it alone: the backend applies them in the kernel's write-back.

``fuse_elementwise``: maximal groups of elementwise ops, and reductions (sum, mean, softmax, ...)
together with the elementwise ops that produce their input, become one kernel each.

Rules that keep fusion legal and cheap:
- a node joins a group only if every one of its consumers is in the group, so no value is
  computed twice and a value used outside stays materialised once (as its own kernel's output);
- graph outputs end groups; scalar constants are copied into the body, other inputs stay inputs;
- the contracted graph is checked to be acyclic with networkx.

    before:  %3 = matmul(%x, %w);  %4 = add(%3, %b);  %5 = relu(%4)
    after:   %5 = fused[kind="epilogue"](%x, %w, %b) { matmul, add, relu }
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import networkx as nx
from graphnn.passes.rewrite import SKIP, PassError, consumers, origin_of, rewrite

from graphnn.ir import Graph, Node
from graphnn.ops.fused import FusedBody
from graphnn.ops.registry import get_op, make_node, name_scope
from graphnn.ops.source import placeholder

ANCHORS = frozenset({"matmul", "gemm", "conv", "conv_transpose"})
REDUCTIONS = frozenset({"sum", "mean", "max", "min", "prod", "logsumexp", "var", "std",
                        "softmax", "log_softmax"})


def _elementwise(n: Node) -> bool:
    return get_op(n.op).elementwise


def fuse_epilogue(graph: Graph) -> Graph:
    users, outputs = consumers(graph), set(graph.outputs)
    groups: list[tuple[str, list[Node]]] = []
    taken: set[Node] = set()
    for n in graph.nodes:
        if n.op not in ANCHORS or n in taken or min(i.ndim for i in n.inputs[:2]) < 2:
            continue  # (a vector matmul runs the GEMM as a one-row or one-column matrix, and
            # its epilogue as an elementwise kernel of its own)
        members, root = [n], n
        while root not in outputs and len(users[root]) == 1:
            nxt = users[root][0]
            if not _elementwise(nxt) or nxt.shape != root.shape or nxt in taken:
                break
            members.append(nxt)
            root = nxt
        if len(members) > 1:
            inside = _with_producers(members, users, outputs | taken)
            groups.append(("epilogue", [n] + [m for m in graph.nodes if m in inside and m != n]))
            taken.update(inside)
    return _apply(graph, groups)


def _with_producers(chain: list[Node], users: dict[Node, list[Node]],
                    excluded: set[Node]) -> set[Node]:
    """The epilogue chain (anchor first) and the elementwise nodes of the chain's shape whose
    every consumer is in it: side operands computed just for the epilogue, such as a ReLU
    gradient's mask ``cast(greater(x, 0))``, are computed in the write-back instead of as a
    kernel of their own (W6: ``conv_transpose + mul`` reads x instead of a mask that one more
    pass wrote). The anchor's own inputs stay outside: the template reads them."""
    shape = chain[-1].shape
    return _absorb(set(chain), users, lambda p: p not in excluded and p.shape == shape,
                   anchor=chain[0])


def _absorb(members: set[Node], users: dict[Node, list[Node]], admit: Callable[[Node], bool],
            anchor: Node | None = None) -> set[Node]:
    """``members`` and, transitively, the elementwise producers of their inputs (but not of the
    anchor's) whose every consumer is among them and that ``admit`` lets in."""
    changed = True
    while changed:
        changed = False
        for m in list(members - {anchor}):
            for p in m.inputs:
                if (p not in members and _elementwise(p) and admit(p)
                        and all(u in members for u in users[p])):
                    members.add(p)
                    changed = True
    return members


def fuse_elementwise(graph: Graph) -> Graph:
    users, outputs = consumers(graph), set(graph.outputs)
    grouped: set[Node] = set()
    groups: list[tuple[str, list[Node]]] = []
    for n in reversed(graph.nodes):
        if n in grouped or n.op == "fused" or not (_elementwise(n) or n.op in REDUCTIONS):
            continue
        members = _absorb({n}, users, lambda p: p not in grouped and p not in outputs)
        if len(members) > 1:
            order = [m for m in graph.nodes if m in members]
            groups.append(("reduction" if n.op in REDUCTIONS else "elementwise", order))
            grouped.update(members)
    return _apply(graph, groups)


def _apply(graph: Graph, groups: list[tuple[str, list[Node]]]) -> Graph:
    if not groups:
        return graph
    _check_acyclic(graph, [g for _, g in groups])
    root_of = {g[-1]: (kind, g) for kind, g in groups}
    members = {m for _, g in groups for m in g[:-1]}
    mapping: dict[Node, Node] = {}

    def rule(n: Node, inputs: list[Node]) -> object:
        if n in members:
            return SKIP
        if n in root_of:
            kind, group = root_of[n]
            return _fused_node(graph, kind, group, mapping)
        return None

    return rewrite(graph, rule, mapping)[0]


def _fused_node(graph: Graph, kind: str, group: list[Node], mapping: dict[Node, Node]) -> Node:
    """Build the body from the old group and a fused node on the rewritten external inputs."""
    inside = set(group)
    externals: list[Node] = []
    for m in group:
        for i in m.inputs:
            if i not in inside and i not in externals and not _inlinable(i):
                externals.append(i)
    body = Graph("kernel")
    local: dict[Node, Node] = {}
    with body, name_scope("", absolute=True):  # the fused node carries the scope, not its body
        for k, e in enumerate(externals):
            local[e] = placeholder(e.shape, e.dtype, f"in{k}")
        for m in group:
            args = []
            for i in m.inputs:
                if i not in local:  # a scalar constant, copied into the body
                    local[i] = make_node("constant", [], dict(i.attrs))
                args.append(local[i])
            local[m] = make_node(m.op, args, dict(m.attrs))
        body.outputs = (local[group[-1]],)
    root = group[-1]
    return make_node("fused", [mapping[e] for e in externals],
                     {"kind": kind, "body": FusedBody(body)}, name=root.name,
                     origin=origin_of(graph, *group))


def _inlinable(n: Node) -> bool:
    return n.op == "constant" and n.attrs["value"].array.size <= 1


def _check_acyclic(graph: Graph, groups: Iterable[list[Node]]) -> None:
    """Contract each group to one vertex; fusion is legal only if the result stays a DAG."""
    g = graph.to_networkx()
    block = {m: i for i, grp in enumerate(groups) for m in grp}
    contracted = nx.DiGraph()
    contracted.add_nodes_from(block.get(n, n) for n in g.nodes)
    contracted.add_edges_from((block.get(a, a), block.get(b, b)) for a, b in g.edges
                              if block.get(a, a) != block.get(b, b))
    if not nx.is_directed_acyclic_graph(contracted):
        raise PassError("fusion would create a cycle through nodes outside a group")
