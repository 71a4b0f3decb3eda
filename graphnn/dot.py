"""Graphviz DOT export of a graph (``dot -Tsvg graph.dot``), one box per node."""

from __future__ import annotations

import json

from graphnn.ir import Graph
from graphnn.text_ir import node_id


def to_dot(graph: Graph) -> str:
    """DOT text: nodes labelled ``%id = op`` and their type, edges along data flow.

    Placeholders are drawn as ellipses, variables and constants as grey boxes, outputs bold.
    """
    ids = {n: node_id(n, i) for i, n in enumerate(graph.nodes)}
    outputs = set(graph.outputs)
    lines = [f"digraph {json.dumps(graph.name)} {{", "  rankdir=TB;",
             '  node [shape=box, fontname="monospace"];']
    for n in graph.nodes:
        label = f"%{ids[n]} = {n.op}\\n{n.type_str}" + (f"\\n{n.scope}" if n.scope else "")
        style = {"placeholder": "shape=ellipse", "variable": 'style=filled, fillcolor="#dddddd"',
                 "constant": 'style=filled, fillcolor="#eeeeee"'}.get(n.op, "")
        if n in outputs:
            style = (style + ", " if style else "") + "penwidth=2"
        lines.append(f'  "{ids[n]}" [label="{label}"{", " + style if style else ""}];')
    for n in graph.nodes:
        for i in n.inputs:
            lines.append(f'  "{ids[i]}" -> "{ids[n]}";')
    lines.append("}")
    return "\n".join(lines)
