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
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
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
    """The ops table of run.py's ``_resnet18`` and ``_encoder`` for ONNX; ``g`` is set per model
    and tensors are value names."""

    g: OnnxGraph

    @classmethod
    def conv(cls, h: str, w: str, s: int, pad: int) -> str:
        return cls.g.op("Conv", h, w, strides=[s, s], pads=[pad] * 4)

    @classmethod
    def bn(cls, h: str, m: str, v: str, gamma: str, beta: str) -> str:
        return cls.g.op("BatchNormalization", h, gamma, beta, m, v, epsilon=1e-5)

    @classmethod
    def relu(cls, h: str) -> str:
        return cls.g.op("Relu", h)

    @classmethod
    def add(cls, a: str, b: str) -> str:
        return cls.g.op("Add", a, b)

    @classmethod
    def maxpool(cls, h: str) -> str:
        return cls.g.op("MaxPool", h, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])

    @classmethod
    def head(cls, h: str, w: str, b: str) -> str:
        flat = cls.g.op("Flatten", cls.g.op("GlobalAveragePool", h))
        return cls.g.op("Add", cls.g.op("MatMul", flat, w), b)

    @classmethod
    def linear(cls, x: str, w: str, b: str) -> str:
        return cls.g.op("Add", cls.g.op("MatMul", x, w), b)

    @classmethod
    def reshape(cls, t: str, shape: tuple[int, ...]) -> str:
        return cls.g.op("Reshape", t, cls.g.const(np.array(shape, np.int64)))

    @classmethod
    def transpose(cls, t: str, perm: tuple[int, ...]) -> str:
        return cls.g.op("Transpose", t, perm=list(perm))

    @classmethod
    def attention(cls, q: str, k: str, v: str) -> str:
        """softmax(q k^T / sqrt(d)) v over (batch, heads, seq, d)."""
        scale = cls.g.const(np.float32(1.0 / np.sqrt(cls.head_dim)))
        scores = cls.g.op("Mul", cls.g.op("MatMul", q, cls.g.op("Transpose", k,
                                                               perm=[0, 1, 3, 2])), scale)
        return cls.g.op("MatMul", cls.g.op("Softmax", scores, axis=-1), v)

    @classmethod
    def gelu(cls, x: str) -> str:
        return cls.g.op("Gelu", x)

    @classmethod
    def norm(cls, x: str, gamma: str, beta: str) -> str:
        return cls.g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=1e-5)

    head_dim = 1


def with_graph(g: OnnxGraph, params: dict[str, np.ndarray], head_dim: int = 1
               ) -> dict[str, str]:
    """Point ``OnnxOps`` at ``g`` and turn the weights into initializers."""
    OnnxOps.g, OnnxOps.head_dim = g, head_dim
    return {k: g.const(v) for k, v in params.items()}
