"""The LLVM backend's conv + 2x2 max-pool fusion: a convolution (with its bias and, fused, a
ReLU) whose only consumer is a 2x2, stride-2 max_pool right after it is computed by one kernel
that writes the pooled output, the convolution's never stored.

Winograd F(2x2, 3x3) computes the convolution in 2x2 output tiles, which are exactly the pool's
windows when the output's height and width are even: the output transform's four pixel
vectors (one lane a tile) reduce to the pooled row with three maxima, before the bias and the
ReLU (both are monotone, so max(relu(a + b), ...) = relu(max(a, ...) + b), bit for bit). That
saves the convolution's output store, the pooling kernel's pass over it and its threads' start
(W2, whose two pools follow such convolutions: batch 1 0.95-0.96x the time, batch 64
0.90-0.94x, same process, interleaved, 2-core Xeon).

Only the LLVM backend's Winograd template renders such a kernel: the executable fuses a pair
only where ``codegen.template_for`` gives it that template, and the graph keeps both nodes (every
other backend pools as before; ``Session.profile`` shows the pool's node computed by the fused
kernel). The kernel is the convolution's (``lower``) with the pool's output parameter (the
pooled shape) and ``source`` ending in ``"max_pool"`` (``is_pooled``); template code reads the
convolution's output shape as twice the parameter's. It runs at the pool's step and reads the
convolution's inputs there, so the memory plan keeps them alive until then (``plan_buffers``'
``also_reads``: the pool's output had taken the freed block of the input it was computed from).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from graphnn.backends.kernel.ir import Kernel, Param
from graphnn.backends.kernel.lower import lower

from graphnn.ir import Node

POOL = "max_pool"  # the last entry of a fused kernel's ``source``


def is_pooled(kernel: Kernel) -> bool:
    """Whether ``kernel`` is a convolution that writes its 2x2 max-pooled output."""
    return kernel.source[-1:] == (POOL,)


def _pool_2x2(node: Node) -> bool:
    a = node.attrs
    return node.op == POOL and tuple(a["kernel_size"]) == (2, 2) and \
        tuple(a["stride"]) == (2, 2) and not any(a["pads"]) and tuple(a["dilation"]) == (1, 1)


def _conv_relu(node: Node) -> bool:
    """A 2-D convolution, alone or with only a ReLU fused after it."""
    ops = tuple(node.attrs["body"].ops) if node.op == "fused" else (node.op,)
    return ops in (("conv",), ("conv", "relu")) and len(node.shape) == 4


def candidates(order: Sequence[Node], fetches: Sequence[Node]) -> dict[Node, Node]:
    """{conv node: pool node} for each pair that may fuse: the pool right after the
    convolution in ``order`` (no other node runs between them), its only consumer, the
    convolution not fetched, its output's height and width even."""
    users: dict[Node, int] = {}
    for n in order:
        for i in n.inputs:
            users[i] = users.get(i, 0) + 1
    pairs = {}
    for conv, pool in zip(order, order[1:]):
        if _conv_relu(conv) and _pool_2x2(pool) and list(pool.inputs) == [conv] and \
                users.get(conv) == 1 and conv not in fetches and \
                all(d is not None and d % 2 == 0 for d in conv.shape[2:]):
            pairs[conv] = pool
    return pairs


def pooled_kernel(conv: Node, pool: Node, name: str) -> Kernel | None:
    """The convolution's kernel writing ``pool``'s output, or None where it has none."""
    kernel = lower(conv, name)
    if kernel is None:
        return None
    out = kernel.params[-1]
    params = (*kernel.params[:-1], Param(out.name, pool.dtype, tuple(pool.shape), True))
    return replace(kernel, params=params, source=(*kernel.source, POOL))
