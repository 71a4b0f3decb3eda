"""``eliminate_dead_code``: drop every node the graph's outputs do not need (networkx ancestors).

Precondition: ``graph.outputs`` is set (the fetches); side effects count only when fetched, as in
``Session.run``. Run last in each stage.
"""

from __future__ import annotations

from graphnn.passes.rewrite import SKIP, PassError, rewrite

from graphnn.ir import Graph, Node


def eliminate_dead_code(graph: Graph) -> Graph:
    if not graph.outputs:
        raise PassError("eliminate_dead_code needs graph.outputs (the values to keep)")
    live = set(graph.subgraph_order(list(graph.outputs)))

    def rule(n: Node, inputs: list[Node]) -> object:
        return None if n in live else SKIP

    return rewrite(graph, rule)[0]
