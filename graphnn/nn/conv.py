"""Convolution and pooling layers (channels first), constructed as in ``torch.nn``.

Weights: Conv (out, in/groups, *k); ConvTranspose (in, out/groups, *k). Default initialisation is
PyTorch's: weight kaiming_uniform(a=sqrt(5)) and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from graphnn.errors import ShapeError
from graphnn.ir import Node
from graphnn.nn import init
from graphnn.nn.module import Module
from graphnn.ops import api as F

IntOrTuple = int | Sequence[int]


def _tuple(v: IntOrTuple, n: int) -> tuple[int, ...]:
    return (int(v),) * n if isinstance(v, int) else tuple(int(i) for i in v)


class _ConvNd(Module):
    transposed = False
    nd = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple,
                 stride: IntOrTuple = 1, padding: Any = 0, dilation: IntOrTuple = 1,
                 groups: int = 1, bias: bool = True, output_padding: IntOrTuple = 0) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must be "
                             f"divisible by groups {groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, self.nd)
        self.stride, self.dilation = _tuple(stride, self.nd), _tuple(dilation, self.nd)
        self.padding, self.output_padding = padding, _tuple(output_padding, self.nd)
        shape = ((in_channels, out_channels // groups) if self.transposed
                 else (out_channels, in_channels // groups)) + self.kernel_size
        self.add_parameter("weight", init.kaiming_uniform(shape, a=math.sqrt(5)))
        self.has_bias = bias
        if bias:
            fan_in = init.fans(shape)[0]
            bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
            self.add_parameter("bias", init.uniform((out_channels,), -bound, bound))

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        if x.ndim != self.nd + 2 or x.shape[1] not in (None, self.in_channels):
            raise ShapeError(f"{type(self).__name__} {self._path!r} expects (N, {self.in_channels}"
                             f", {self.nd} spatial dims), got {x.type_str}")
        b = self.var("bias") if self.has_bias else None
        if self.transposed:
            return F.conv_transpose(x, self.var("weight"), b, self.stride, self.padding,
                                    self.output_padding, self.groups, self.dilation)
        return F.conv(x, self.var("weight"), b, self.stride, self.padding, self.dilation,
                      self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}"
                + (f", groups={self.groups}" if self.groups > 1 else ""))


class Conv1d(_ConvNd):
    """1-d convolution over (N, C, L).  Ref: torch.nn.Conv1d"""
    nd = 1


class Conv2d(_ConvNd):
    """2-d convolution over (N, C, H, W).  Ref: torch.nn.Conv2d"""
    nd = 2


class Conv3d(_ConvNd):
    """3-d convolution over (N, C, D, H, W).  Ref: torch.nn.Conv3d"""
    nd = 3


class ConvTranspose1d(_ConvNd):
    """Transposed 1-d convolution.  Ref: torch.nn.ConvTranspose1d"""
    nd, transposed = 1, True


class ConvTranspose2d(_ConvNd):
    """Transposed 2-d convolution.  Ref: torch.nn.ConvTranspose2d"""
    nd, transposed = 2, True


class _Pool(Module):
    nd = 2
    kind = "max"

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
                 count_include_pad: bool = True) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode
        self.count_include_pad = count_include_pad

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        if x.ndim != self.nd + 2:
            raise ShapeError(f"{type(self).__name__} expects {self.nd} spatial dims, got "
                             f"{x.type_str}")
        if self.kind == "max":
            return F.max_pool(x, self.kernel_size, self.stride, self.padding, self.dilation,
                              self.ceil_mode)
        return F.avg_pool(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}"


class MaxPool1d(_Pool):
    """Ref: torch.nn.MaxPool1d"""
    nd = 1


class MaxPool2d(_Pool):
    """Ref: torch.nn.MaxPool2d"""
    nd = 2


class MaxPool3d(_Pool):
    """Ref: torch.nn.MaxPool3d"""
    nd = 3


class AvgPool1d(_Pool):
    """Ref: torch.nn.AvgPool1d"""
    nd, kind = 1, "avg"


class AvgPool2d(_Pool):
    """Ref: torch.nn.AvgPool2d"""
    nd, kind = 2, "avg"


class AvgPool3d(_Pool):
    """Ref: torch.nn.AvgPool3d"""
    nd, kind = 3, "avg"


class AdaptiveAvgPool2d(Module):
    """Average to a fixed (H_out, W_out).  Ref: torch.nn.AdaptiveAvgPool2d"""

    def __init__(self, output_size: IntOrTuple) -> None:
        super().__init__()
        self.output_size = _tuple(output_size, 2)

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        return F.adaptive_avg_pool(x, self.output_size)


class AdaptiveMaxPool2d(AdaptiveAvgPool2d):
    """Max to a fixed (H_out, W_out).  Ref: torch.nn.AdaptiveMaxPool2d"""

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        return F.adaptive_max_pool(x, self.output_size)


class GlobalAvgPool(Module):
    """Mean over all spatial dims: (N, C, *spatial) -> (N, C), or (N, C, 1, ...) with keepdims.

    Ref: Keras GlobalAveragePooling2D; ONNX GlobalAveragePool (keepdims=True)
    """

    def __init__(self, keepdims: bool = False) -> None:
        super().__init__()
        self.keepdims = keepdims

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        return F.mean(x, axis=tuple(range(2, x.ndim)), keepdims=self.keepdims)
