"""The onnxruntime peer: each inference workload written as an ONNX graph (onnx.helper, opset
20) over the same numpy weights, run by onnxruntime's CPU provider with all graph optimisations
and ``intra_op_num_threads`` equal to graphnn's thread count.

Needs the ``bench`` extra (``pip install -e ".[bench]"``: onnx and onnxruntime); no PyTorch.
The forward passes of W3 and W4 are the ones in ``run.py``, written once over an ops table:
``OnnxOps`` is that table for ONNX (operators per the ONNX operator spec: Conv,
BatchNormalization, MaxPool, GlobalAveragePool, LayerNormalization, Gelu, Softmax, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

OPSET = 20  # Gelu (with approximate="tanh") is in the default domain from opset 20


class OnnxGraph:
    """Accumulates nodes and initializers; every value is named by the string an op returns."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        from onnx import helper

        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def model(self, feeds: dict[str, np.ndarray], output: str) -> bytes:
        from onnx import TensorProto, helper, shape_inference

        inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
                  for k, v in feeds.items()]
        outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)]
        graph = helper.make_graph(self.nodes, "workload", inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", OPSET)]
        # the lowest IR version for the opset, not the onnx package's newest: an older
        # onnxruntime refuses models of an IR version it does not know
        model = helper.make_model(graph, opset_imports=opsets,
                                  ir_version=helper.find_min_ir_version_for(opsets))
        # strict shape inference checks every node against the operator spec
        return shape_inference.infer_shapes(model, strict_mode=True).SerializeToString()


def runner(build: Callable[[OnnxGraph], tuple[dict[str, np.ndarray], str]], threads: int
           ) -> Callable[[], Callable[[], np.ndarray]]:
    """A benchmark runner: ``build`` adds the workload to a graph and returns (feeds, output)."""
    def setup() -> Callable[[], np.ndarray]:
        import onnxruntime as ort

        g = OnnxGraph()
        feeds, output = build(g)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(g.model(feeds, output), opts,
                                    providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, feeds)[0]

    return setup


class OnnxOps:
    """The ops table of run.py's ``_resnet18`` and ``_encoder`` for ONNX, adding nodes to one
    graph; tensors are value names. ``head_dim``: attention's scale is 1/sqrt(head_dim)."""

    def __init__(self, g: OnnxGraph, head_dim: int = 1) -> None:
        self.g, self.head_dim = g, head_dim

    def weights(self, params: dict[str, np.ndarray]) -> dict[str, str]:
        """The weights as initializers, by name."""
        return {k: self.g.const(v) for k, v in params.items()}

    def conv(self, h: str, w: str, s: int, pad: int) -> str:
        return self.g.op("Conv", h, w, strides=[s, s], pads=[pad] * 4)

    def bn(self, h: str, m: str, v: str, gamma: str, beta: str) -> str:
        return self.g.op("BatchNormalization", h, gamma, beta, m, v, epsilon=1e-5)

    def relu(self, h: str) -> str:
        return self.g.op("Relu", h)

    def add(self, a: str, b: str) -> str:
        return self.g.op("Add", a, b)

    def maxpool(self, h: str) -> str:
        return self.g.op("MaxPool", h, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])

    def head(self, h: str, w: str, b: str) -> str:
        flat = self.g.op("Flatten", self.g.op("GlobalAveragePool", h))
        return self.g.op("Add", self.g.op("MatMul", flat, w), b)

    def linear(self, x: str, w: str, b: str) -> str:
        return self.g.op("Add", self.g.op("MatMul", x, w), b)

    def reshape(self, t: str, shape: tuple[int, ...]) -> str:
        return self.g.op("Reshape", t, self.g.const(np.array(shape, np.int64)))

    def transpose(self, t: str, perm: tuple[int, ...]) -> str:
        return self.g.op("Transpose", t, perm=list(perm))

    def attention(self, q: str, k: str, v: str) -> str:
        """softmax(q k^T / sqrt(d)) v over (batch, heads, seq, d)."""
        scale = self.g.const(np.float32(1.0 / np.sqrt(self.head_dim)))
        scores = self.g.op("Mul", self.g.op("MatMul", q, self.g.op("Transpose", k,
                                                               perm=[0, 1, 3, 2])), scale)
        return self.g.op("MatMul", self.g.op("Softmax", scores, axis=-1), v)

    def gelu(self, x: str) -> str:
        return self.g.op("Gelu", x)

    def norm(self, x: str, gamma: str, beta: str) -> str:
        return self.g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=1e-5)
