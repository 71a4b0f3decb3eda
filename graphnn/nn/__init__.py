"""Layers (``graphnn.nn``): PyTorch-style modules that build graph nodes when called."""

from graphnn.nn import init
from graphnn.nn.conv import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    GlobalAvgPool,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)
from graphnn.nn.layers import (
    ACTIVATIONS,
    CELU,
    ELU,
    GELU,
    SELU,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    Identity,
    LeakyReLU,
    Linear,
    LogSoftmax,
    Mish,
    PReLU,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Softsign,
    SpatialDropout,
    Tanh,
)
from graphnn.nn.module import Module, Parameter, Sequential
from graphnn.nn.norm import (
    BatchNorm1d,
    BatchNorm2d,
    GroupNorm,
    InstanceNorm2d,
    LayerNorm,
    RMSNorm,
)

__all__ = [n for n in dir() if not n.startswith("_")]
