"""Basic layers: Linear, Embedding, Flatten, Identity, Dropout, SpatialDropout, activations, PReLU.

Constructors, parameter names, shapes and default initialisations follow PyTorch's ``torch.nn``
(``Linear.weight`` is (out_features, in_features)), so state dicts carry over.
"""

from __future__ import annotations

import math
from typing import Any

from graphnn.errors import ShapeError
from graphnn.ir import Node
from graphnn.nn import init
from graphnn.nn.module import Module
from graphnn.ops import api as F


class Linear(Module):
    """y = x @ W.T + b.

    Shapes:  x: (..., in_features) -> (..., out_features); weight (out, in), bias (out,)
    Init:    weight and bias U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's kaiming_uniform(a=sqrt(5)))
    Ref:     torch.nn.Linear
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.add_parameter("weight", init.kaiming_uniform((out_features, in_features),
                                                          a=math.sqrt(5)))
        if bias:
            bound = 1 / math.sqrt(in_features) if in_features else 0.0
            self.add_parameter("bias", init.uniform((out_features,), -bound, bound))
        self.has_bias = bias

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        if x.shape and x.shape[-1] not in (None, self.in_features):
            raise ShapeError(f"Linear {self._path!r} expects {self.in_features} input features, "
                             f"got {x.type_str}")
        return F.dense(x, self.var("weight"), self.var("bias") if self.has_bias else None,
                       transpose_weight=True)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.has_bias}"


Dense = Linear


class Embedding(Module):
    """Rows of a (num_embeddings, embedding_dim) table selected by integer indices.

    Shapes:  indices (...) int32/int64 -> (..., embedding_dim).  Init: N(0, 1) (PyTorch)
    Ref:     torch.nn.Embedding
    """

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.add_parameter("weight", init.normal((num_embeddings, embedding_dim), 1.0))

    def forward(self, indices: Node) -> Node:  # type: ignore[override]
        return F.take(self.var("weight"), indices, axis=0)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Flatten(Module):
    """Merge dims start_dim..end_dim (start_dim=1 keeps the batch, as torch.nn.Flatten)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        return F.flatten(x, self.start_dim, self.end_dim)


class Identity(Module):
    def forward(self, x: Node) -> Node:  # type: ignore[override]
        return x


class Dropout(Module):
    """Inverted dropout in training mode, the identity in eval mode.  Ref: torch.nn.Dropout."""

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        self.p, self.seed = p, seed

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        return F.dropout(x, self.p, training=self.training, seed=self.seed)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SpatialDropout(Dropout):
    """Drop whole channels of (N, C, *spatial): one mask value per (sample, channel).

    Ref: Tompson et al. 2015; torch.nn.Dropout2d; Keras SpatialDropout2D
    """

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        if not self.training or self.p == 0:
            return x
        per_channel = F.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)
        mask = F.dropout(F.ones_like(per_channel), self.p, seed=self.seed)
        return F.mul(x, mask)


class PReLU(Module):
    """max(0, x) + a * min(0, x) with a learnable slope (one, or one per channel on axis 1).

    Init:    0.25 (PyTorch).  Ref: He et al. 2015; torch.nn.PReLU
    """

    def __init__(self, num_parameters: int = 1, init_value: float = 0.25) -> None:
        super().__init__()
        self.num_parameters = num_parameters
        self.add_parameter("weight", init.constant((num_parameters,), init_value))

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        a = self.var("weight")
        if self.num_parameters > 1:
            a = F.reshape(a, (-1,) + (1,) * (x.ndim - 2))
        return F.add(F.relu(x), F.mul(a, F.minimum(x, 0.0)))


def _activation(name: str, fn: Any, doc: str, **defaults: Any) -> type[Module]:
    """A parameter-free activation module calling ``fn(x, **kwargs)``."""

    def __init__(self: Module, **kwargs: Any) -> None:
        Module.__init__(self)
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"{name} got unexpected arguments {sorted(unknown)}")
        object.__setattr__(self, "kwargs", {**defaults, **kwargs})

    def forward(self: Module, x: Node) -> Node:
        return fn(x, **self.kwargs)  # type: ignore[attr-defined]

    def extra_repr(self: Module) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())  # type: ignore[attr-defined]

    return type(name, (Module,), {"__init__": __init__, "forward": forward,
                                  "extra_repr": extra_repr, "__doc__": doc})


ReLU = _activation("ReLU", F.relu, "max(x, 0). Ref: torch.nn.ReLU")
LeakyReLU = _activation("LeakyReLU", F.leaky_relu, "Ref: torch.nn.LeakyReLU",
                        negative_slope=0.01)
ELU = _activation("ELU", F.elu, "Ref: torch.nn.ELU", alpha=1.0)
SELU = _activation("SELU", F.selu, "Ref: torch.nn.SELU")
CELU = _activation("CELU", F.celu, "Ref: torch.nn.CELU", alpha=1.0)
GELU = _activation("GELU", F.gelu, "Ref: torch.nn.GELU", approximate="none")
SiLU = _activation("SiLU", F.silu, "Ref: torch.nn.SiLU")
Mish = _activation("Mish", F.mish, "Ref: torch.nn.Mish")
Softplus = _activation("Softplus", F.softplus, "Ref: torch.nn.Softplus", beta=1.0,
                       threshold=20.0)
Softsign = _activation("Softsign", F.softsign, "Ref: torch.nn.Softsign")
Sigmoid = _activation("Sigmoid", F.sigmoid, "Ref: torch.nn.Sigmoid")
Tanh = _activation("Tanh", F.tanh, "Ref: torch.nn.Tanh")
Hardsigmoid = _activation("Hardsigmoid", F.hard_sigmoid, "Ref: torch.nn.Hardsigmoid")
Hardswish = _activation("Hardswish", F.hard_swish, "Ref: torch.nn.Hardswish")
Hardtanh = _activation("Hardtanh", F.hard_tanh, "Ref: torch.nn.Hardtanh", min_val=-1.0,
                       max_val=1.0)
Softmax = _activation("Softmax", F.softmax, "Ref: torch.nn.Softmax", axis=-1)
LogSoftmax = _activation("LogSoftmax", F.log_softmax, "Ref: torch.nn.LogSoftmax", axis=-1)

ACTIVATIONS = {m.__name__: m for m in (ReLU, LeakyReLU, ELU, SELU, CELU, GELU, SiLU, Mish,
                                       Softplus, Softsign, Sigmoid, Tanh, Hardsigmoid, Hardswish,
                                       Hardtanh, Softmax, LogSoftmax, PReLU)}
