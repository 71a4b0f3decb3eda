"""``fold_batch_norm``: fold an inference batch norm into the convolution or dense layer before it.

    y = conv(x, W, b);  z = (y - m) / sqrt(v + eps) * g + beta
    ==> z = conv(x, W * s, (b - m) * s + beta)   with s = g / sqrt(v + eps) per output channel

The same holds for ``matmul(x, W) [+ b]`` on (N, C) features. Preconditions: the batch norm's
statistics and affine parameters and the layer's weights are constants (run after
``freeze_variables`` and ``fold_constants``), and the layer's output feeds only the batch norm.
Not bit-exact: the product is rounded once instead of twice.
"""

from __future__ import annotations

import numpy as np
from graphnn.passes.rewrite import consumers, origin_of, rewrite

from graphnn.ir import ArrayValue, Graph, Node
from graphnn.ops.registry import make_node


def _c(n: Node) -> np.ndarray | None:
    return n.attrs["value"].array.astype(np.float64) if n.op == "constant" else None


def _const(array: np.ndarray, like: Node) -> Node:
    return make_node("constant", [], {"value": ArrayValue(array.astype(like.dtype.np))})


def fold_batch_norm(graph: Graph) -> Graph:
    users = consumers(graph)
    outputs = set(graph.outputs)

    def rule(n: Node, inputs: list[Node]) -> Node | None:
        if n.op != "batch_norm":
            return None
        layer = n.inputs[0]
        if len(users[layer]) != 1 or layer in outputs:
            return None
        stats = [_c(i) for i in inputs[1:]]
        if any(s is None for s in stats):
            return None
        m, v, g, beta = (s for s in stats if s is not None)
        scale = g / np.sqrt(v + n.attrs["eps"])
        new_layer = inputs[0]
        origin = origin_of(graph, layer, n)
        if layer.op == "conv":
            return _fold_conv(new_layer, m, scale, beta, origin)
        if layer.op in ("matmul", "add") and n.ndim == 2:
            return _fold_dense(new_layer, m, scale, beta, origin)
        return None

    return rewrite(graph, rule)[0]


def _fold_conv(conv: Node, m: np.ndarray, s: np.ndarray, beta: np.ndarray,
               origin: tuple[str, ...]) -> Node | None:
    x, w = conv.inputs[:2]
    wv = _c(w)
    b = _c(conv.inputs[2]) if len(conv.inputs) == 3 else np.zeros(len(s))
    if wv is None or b is None:
        return None
    w2 = wv * s.reshape((-1,) + (1,) * (wv.ndim - 1))
    b2 = (b - m) * s + beta
    return make_node("conv", [x, _const(w2, w), _const(b2, w)], dict(conv.attrs), origin=origin)


def _fold_dense(y: Node, m: np.ndarray, s: np.ndarray, beta: np.ndarray,
                origin: tuple[str, ...]) -> Node | None:
    bias = np.zeros(len(s))
    mm = y
    if y.op == "add":
        mm, b_node = y.inputs
        b = _c(b_node)
        if mm.op != "matmul" or b is None or b.shape != (len(s),):
            return None
        bias = b
    x, w = mm.inputs
    wv = _c(w)
    if wv is None or wv.ndim != 2:
        return None
    folded = make_node("matmul", [x, _const(wv * s[None, :], w)], origin=origin)
    return make_node("add", [folded, _const((bias - m) * s + beta, w)], origin=origin)
