"""The ``fused`` op: one kernel made of several ops, produced by the fusion passes.

Its ``body`` attribute is a small graph whose placeholders ``in0, in1, ...`` stand for the fused
node's inputs and whose single output is the kernel's result. ``kind`` says how backends schedule
it: "elementwise" (one loop over the output), "epilogue" (a matmul or convolution whose result
passes through elementwise ops before it is stored), "reduction" (a reduction whose elementwise
producers are computed on the fly). The reference backend interprets the body op by op, so a
fused graph computes exactly what the unfused one did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphnn.dtypes import DType
from graphnn.errors import AttrError, DTypeError, ShapeError
from graphnn.ir import Attrs, Graph, Node, Shape
from graphnn.ops.registry import Attr, OpDef, one_of, register
from graphnn.shapes import same_dim

KINDS = ("elementwise", "epilogue", "reduction")


class FusedBody:
    """An immutable kernel body: a graph of placeholders in0..inK and one output.

    Compares and hashes by its text form, so CSE and the parser treat equal bodies as equal.
    """

    __slots__ = ("graph", "text")

    def __init__(self, graph: Graph) -> None:
        from graphnn.text_ir import print_graph

        if len(graph.outputs) != 1:
            raise AttrError("a fused body has exactly one output")
        self.graph = graph
        self.text = print_graph(graph, inline_limit=1 << 30)

    @property
    def inputs(self) -> list[Node]:
        return self.graph.placeholders

    @property
    def ops(self) -> list[str]:
        return [n.op for n in self.graph.nodes if n.op not in ("placeholder", "constant")]

    def __hash__(self) -> int:
        return hash(self.text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FusedBody) and self.text == other.text

    def __repr__(self) -> str:
        return f"FusedBody({'+'.join(self.ops)})"


def _body(v: Any) -> FusedBody:
    if not isinstance(v, FusedBody):
        raise AttrError(f"expected a FusedBody, got {type(v).__name__}")
    return v


def _infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    body: FusedBody = attrs["body"]
    params = body.inputs
    if len(params) != len(inputs):
        raise AttrError(f"the body takes {len(params)} inputs, got {len(inputs)}")
    for p, x in zip(params, inputs):
        if p.dtype is not x.dtype:
            raise DTypeError(f"body input {p.name} is {p.dtype.name}, given {x.dtype.name}")
        if p.ndim != x.ndim or not all(map(same_dim, p.shape, x.shape)):
            raise ShapeError(f"body input {p.name} is {p.type_str}, given {x.type_str}")
    out = body.graph.outputs[0]
    return out.shape, out.dtype


def _reference(*arrays: np.ndarray, kind: str, body: FusedBody) -> np.ndarray:
    from graphnn.backends.reference import ReferenceExecutable

    exe = ReferenceExecutable(body.graph, body.graph.outputs)
    result = exe.run(dict(zip(body.inputs, arrays)), {}, 0)
    out = result.outputs[0]
    assert out is not None
    return out


register(OpDef("fused", _infer, _reference, arity=(1, None),
               attrs={"kind": Attr(one_of(*KINDS)), "body": Attr(_body)},
               doc="Several ops computed as one kernel (built by the fusion passes)."))
