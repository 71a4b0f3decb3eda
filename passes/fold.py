"""``fold_constants``: replace every pure node whose inputs are all constants by its value.

Preconditions: none. Run first: it exposes rewrites to ``simplify`` and ``cse``.
With ``variables_as_constants=True`` (inference with frozen weights) variables count as constants,
so a weight's transpose or reshape is computed once, at compile time.

    before:  %w: f32[10,128] = variable[...]();  %1: f32[128,10] = transpose[perm=(1, 0)](%w)
    after:   %1: f32[128,10] = constant[value=array<f32[128,10]>(...)]()   # <- %1 transpose
"""

from __future__ import annotations

import numpy as np
from graphnn.passes.rewrite import origin_of, rewrite

from graphnn.ir import ArrayValue, Graph, Node
from graphnn.ops.registry import get_op, make_node


def fold_constants(graph: Graph, variables_as_constants: bool = False) -> Graph:
    """Evaluate constant subgraphs with the reference implementations (see module docstring)."""
    from graphnn.backends.reference import _evaluate

    def rule(n: Node, inputs: list[Node]) -> Node | None:
        if n.op == "variable" and variables_as_constants:
            return make_node("constant", [], {"value": n.attrs["init"]}, name=n.name,
                             origin=origin_of(graph, n))
        opdef = get_op(n.op)
        if not inputs or not opdef.pure or opdef.reference is None:
            return None
        if not all(i.op == "constant" for i in inputs):
            return None
        value = _evaluate(n, [i.attrs["value"].array for i in inputs], 0)
        return make_node("constant", [], {"value": ArrayValue(np.asarray(value))}, name=n.name,
                         origin=origin_of(graph, n))

    return rewrite(graph, rule)[0]
