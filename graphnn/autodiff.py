"""Reverse-mode automatic differentiation as a graph transformation.

``gradients(ys, xs, grad_ys)`` adds gradient nodes to the graph and returns them, with TensorFlow
1's ``tf.gradients`` semantics: the result is d(sum of ys * grad_ys)/d(x) for each x, an ordinary
node that passes and backends see like any other. The driver walks the nodes between xs and ys in
reverse order, calls each op's rule (``OpDef.gradient``, declared beside the op), sums fan-out, and
reduces broadcast gradients to each input's shape, so no rule handles broadcasting itself.
Rules are built from differentiable ops, so second derivatives work wherever the rules' own ops
have rules (all elementwise ops, matmul, reductions, shape ops).
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx

from graphnn.errors import GraphError
from graphnn.ir import Graph, Node
from graphnn.ops.registry import describe, get_op, name_scope


def gradients(ys: Node | Sequence[Node], xs: Node | Sequence[Node],
              grad_ys: Node | Sequence[Node] | None = None) -> list[Node | None]:
    """Symbolic gradients of ``sum(ys * grad_ys)`` with respect to each of ``xs``.

    Shapes:  each result has its x's shape and dtype; ``grad_ys`` default to ones shaped like ys.
    Returns: one node per x; None for an x that the ys do not depend on (as TensorFlow).
    Raises:  GraphError when an x is only reached through a non-differentiable input (indices,
             masks, conditions) or is not floating point, or when an op on the path has no
             gradient rule.
    Ref:     tf.compat.v1.gradients; Griewank & Walther, "Evaluating Derivatives" (2008)
    """
    ys = [ys] if isinstance(ys, Node) else list(ys)
    xs = [xs] if isinstance(xs, Node) else list(xs)
    graph = ys[0].graph
    assert graph is not None
    with graph:  # rules may build constants: they belong to this graph, whatever the default is
        return _gradients(graph, ys, xs, grad_ys)


def _gradients(graph: Graph, ys: list[Node], xs: list[Node],
               grad_ys: Node | Sequence[Node] | None) -> list[Node | None]:
    seeds = _seed_gradients(ys, grad_ys)
    for x in xs:
        if not x.dtype.is_float:
            raise GraphError(f"cannot differentiate with respect to {describe(x)}: its dtype "
                             f"{x.dtype.name} is not floating point")
    g = graph.to_networkx()
    reach_y: set[Node] = set(ys).union(*(nx.ancestors(g, y) for y in ys))
    from_x: set[Node] = set(xs).union(*(nx.descendants(g, x) for x in xs))
    between = reach_y & from_x
    pending: dict[Node, list[Node]] = {}
    for y, s in zip(ys, seeds):
        pending.setdefault(y, []).append(s)
    result: dict[Node, Node] = {}
    blocked: dict[Node, str] = {}  # x -> why its gradient cannot flow
    xset = set(xs)
    for node in reversed(graph.nodes):
        if node not in between or node not in pending:
            continue
        dy = _sum(pending.pop(node))
        if node in xset:
            result[node] = dy
        if node.inputs:
            _backprop(node, dy, between, pending, blocked)
    out: list[Node | None] = []
    for x in xs:
        if x in result:
            out.append(result[x])
            continue
        # Connected, yet nothing arrived: some edge on the way is not differentiable.
        reasons = [blocked[n] for n in [x, *nx.descendants(g, x)] if n in blocked]
        if x in between and reasons:
            raise GraphError(f"no gradient flows to {describe(x)}: {reasons[0]}")
        out.append(None)
    return out


def _seed_gradients(ys: list[Node], grad_ys: Node | Sequence[Node] | None) -> list[Node]:
    from graphnn.ops.shape import full_like
    from graphnn.ops.source import as_node

    if grad_ys is None:
        return [full_like(y, 1.0) for y in ys]
    given = [grad_ys] if isinstance(grad_ys, Node) else list(grad_ys)
    if len(given) != len(ys):
        raise GraphError(f"grad_ys has {len(given)} entries for {len(ys)} ys")
    return [as_node(gy, like=y) for gy, y in zip(given, ys)]


def _backprop(node: Node, dy: Node, between: set[Node], pending: dict[Node, list[Node]],
              blocked: dict[Node, str]) -> None:
    opdef = get_op(node.op)
    wanted = [i for i, inp in enumerate(node.inputs) if inp in between]
    live = [i for i in wanted if i not in opdef.nondiff_inputs and node.inputs[i].dtype.is_float]
    for i in set(wanted) - set(live):
        blocked.setdefault(node.inputs[i], f"it is input {i} of {node.op} "
                           f"({describe(node)}), which is not differentiable")
    if not live:
        return
    if opdef.gradient is None:
        raise GraphError(f"op {node.op} ({describe(node)}) has no gradient rule")
    with name_scope(f"grad.{node.scope}" if node.scope else "grad"):
        grads = opdef.gradient(node, dy)
        for i in live:
            g = grads[i]
            if g is None:
                continue
            pending.setdefault(node.inputs[i], []).append(_unbroadcast(g, node.inputs[i]))


def _sum(parts: list[Node]) -> Node:
    from graphnn.ops.elementwise import add

    total = parts[0]
    for p in parts[1:]:
        total = add(total, p)
    return total


def _unbroadcast(g: Node, like: Node) -> Node:
    """Sum ``g`` over the axes that broadcasting added or stretched, down to ``like``'s shape."""
    from graphnn.ops.reduce import sum as reduce_sum
    from graphnn.ops.shape import reshape_like

    if g.shape == like.shape:
        return g
    lead = g.ndim - like.ndim
    axes = list(range(lead)) + [lead + i for i, d in enumerate(like.shape)
                                if d == 1 and g.shape[lead + i] != 1]
    if axes:
        g = reduce_sum(g, axis=axes, keepdims=True)
    return reshape_like(g, like) if g.shape != like.shape else g
