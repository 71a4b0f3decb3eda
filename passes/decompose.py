"""``decompose_attention``: scaled_dot_product_attention becomes its definition in primitive ops.

    before:  %4 = scaled_dot_product_attention(%q, %k, %v)
    after:   %5 = transpose(%k);  %6 = matmul(%q, %5);  %7 = mul(%6, 0.125)
             %8 = softmax(%7, axis=-1);  %4 = matmul(%8, %v)

Why: the code-generating backends have fast kernels for the pieces (the GEMM template runs one
GEMM per batch index and head, the scale joins the first GEMM's epilogue, softmax is a row
kernel) and none for the whole op, which would otherwise run its numpy reference between native
segments. The definition is the one autodiff differentiates (``graphnn.ops.nn._sdpa_def``:
masks, ``is_causal`` and ``scale`` as torch.nn.functional.scaled_dot_product_attention), so the
result is the op's up to rounding.
"""

from __future__ import annotations

from graphnn.passes.rewrite import rewrite

from graphnn.ir import Graph, Node


def decompose_attention(graph: Graph) -> Graph:
    from graphnn.ops.nn import _sdpa_def

    def rule(n: Node, inputs: list[Node]) -> Node | None:
        if n.op != "scaled_dot_product_attention" or any(i is None for i in inputs):
            return None
        if n.attrs["is_causal"] and None in (n.inputs[0].shape[-2], n.inputs[1].shape[-2]):
            return None  # the causal mask needs the sequence lengths: keep the op
        return _sdpa_def(n, *inputs)

    return rewrite(graph, rule)[0]
