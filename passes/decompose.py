"""Decompositions: ops rewritten into pieces the code-generating backends have fast kernels for.

``decompose_attention``: scaled_dot_product_attention becomes its definition in primitive ops.

    before:  %4 = scaled_dot_product_attention(%q, %k, %v)
    after:   %5 = transpose(%k);  %6 = matmul(%q, %5);  %7 = mul(%6, 0.125)
             %8 = softmax(%7, axis=-1);  %4 = matmul(%8, %v)

Why: the code-generating backends have fast kernels for the pieces (the GEMM template runs one
GEMM per batch index and head, the scale joins the first GEMM's epilogue, softmax is a row
kernel) and none for the whole op, which would otherwise run its numpy reference between native
segments. The definition is the one autodiff differentiates (``graphnn.ops.nn._sdpa_def``:
masks, ``is_causal`` and ``scale`` as torch.nn.functional.scaled_dot_product_attention), so the
result is the op's up to rounding.

``decompose_contractions``: gemm, and einsums of two operands, become transposes, reshapes and
one batched matmul (the way numpy's and opt_einsum's ``tensordot`` path evaluates them):

    before:  %3 = einsum(%a, %b, equation="bij,bkj->bik")
    after:   %4 = transpose(%b, perm=(0, 2, 1));  %3 = matmul(%a, %4)

Why: the kernel lowering writes einsum and gemm as one loop nest per output element, which is
correct for any equation but reads one operand with a stride (35x slower than numpy for a
256^3 einsum on this machine's llvm backend); the matmul runs the GEMM template. Equations with a
letter repeated in one term (a diagonal) keep the loop nest, as do graphs with unknown sizes.
"""

from __future__ import annotations

import math

from graphnn.passes.rewrite import rewrite

from graphnn.ir import Graph, Node
from graphnn.ops import api as F
from graphnn.ops.linalg import parse_einsum


def decompose_attention(graph: Graph) -> Graph:
    from graphnn.ops.nn import _sdpa_def

    def rule(n: Node, inputs: list[Node]) -> Node | None:
        if n.op != "scaled_dot_product_attention" or any(i is None for i in inputs):
            return None
        if n.attrs["is_causal"] and None in (n.inputs[0].shape[-2], n.inputs[1].shape[-2]):
            return None  # the causal mask needs the sequence lengths: keep the op
        return _sdpa_def(n, *inputs)

    return rewrite(graph, rule)[0]


def decompose_contractions(graph: Graph) -> Graph:
    def rule(n: Node, inputs: list[Node]) -> Node | None:
        if any(i is None for i in inputs) or any(d is None for i in inputs for d in i.shape):
            return None
        if n.op == "gemm":
            return _gemm_def(n, inputs)
        if n.op == "einsum" and len(inputs) == 2:
            return _einsum_def(n, inputs[0], inputs[1])
        return None

    return rewrite(graph, rule)[0]


def _gemm_def(n: Node, inputs: list[Node]) -> Node:
    a, b = inputs[:2]
    out = F.matmul(F.transpose(a) if n.attrs["trans_a"] else a,
                   F.transpose(b) if n.attrs["trans_b"] else b)
    if n.attrs["alpha"] != 1.0:
        out = F.mul(out, n.attrs["alpha"])
    if len(inputs) == 3:
        c = inputs[2] if n.attrs["beta"] == 1.0 else F.mul(inputs[2], n.attrs["beta"])
        out = F.add(out, c)
    return out


def _einsum_def(n: Node, a: Node, b: Node) -> Node | None:
    (ta, tb), rhs = parse_einsum(n.attrs["equation"], [a.ndim, b.ndim])
    if len(set(ta)) != len(ta) or len(set(tb)) != len(tb):
        return None  # a diagonal: the loop nest reads it directly
    size = dict(zip(ta, a.shape)) | dict(zip(tb, b.shape))
    # letters only one operand has and the output lacks are summed out of it first
    a, ta = _sum_out(a, ta, set(tb) | set(rhs))
    b, tb = _sum_out(b, tb, set(ta) | set(rhs))
    batch = [c for c in ta if c in tb and c in rhs]
    summed = [c for c in ta if c in tb and c not in rhs]
    free_a = [c for c in ta if c not in tb]
    free_b = [c for c in tb if c not in ta]

    def prod(letters: list[str]) -> int:
        return math.prod(int(size[c] or 0) for c in letters)

    lhs = _arrange(a, ta, batch + free_a + summed, [prod(batch), prod(free_a), prod(summed)])
    rhs_op = _arrange(b, tb, batch + summed + free_b, [prod(batch), prod(summed), prod(free_b)])
    out = F.matmul(lhs, rhs_op)
    order = batch + free_a + free_b
    return _arrange(out, "".join(order), list(rhs), [int(size[c] or 0) for c in rhs],
                    unflatten=[int(size[c] or 0) for c in order])


def _sum_out(x: Node, term: str, keep: set[str]) -> tuple[Node, str]:
    axes = [k for k, c in enumerate(term) if c not in keep]
    if not axes:
        return x, term
    return F.sum(x, axis=tuple(axes)), "".join(c for c in term if c in keep)


def _arrange(x: Node, term: str, order: list[str], shape: list[int],
             unflatten: list[int] | None = None) -> Node:
    """x (axes lettered ``term``, first reshaped to ``unflatten``) transposed to ``order`` and
    reshaped to ``shape``; steps that change nothing are left out."""
    if unflatten is not None and tuple(unflatten) != x.shape:
        x = F.reshape(x, unflatten)
    perm = [term.index(c) for c in order]
    if perm != sorted(perm):
        x = F.transpose(x, perm)
    return x if tuple(shape) == x.shape else F.reshape(x, shape)
