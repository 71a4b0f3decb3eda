"""Normalisation layers: BatchNorm1d/2d, LayerNorm, GroupNorm, InstanceNorm2d, RMSNorm.

BatchNorm in training mode normalises with the batch statistics and registers running-average
updates (``running = (1 - momentum) * running + momentum * batch``, with the unbiased batch
variance, as PyTorch) that the training step runs; in eval mode it uses the running statistics
(the ``batch_norm`` op, which the passes can fold into a preceding conv or linear layer).
"""

from __future__ import annotations

from collections.abc import Sequence

from graphnn.errors import ShapeError
from graphnn.ir import Node
from graphnn.nn import init
from graphnn.nn.module import Module
from graphnn.ops import api as F


class _BatchNorm(Module):
    spatial_ranks: tuple[int, ...] = (0,)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.add_parameter("weight", init.ones((num_features,)))
            self.add_parameter("bias", init.zeros((num_features,)))
        if track_running_stats:
            self.add_parameter("running_mean", init.zeros((num_features,)), trainable=False)
            self.add_parameter("running_var", init.ones((num_features,)), trainable=False)

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        if x.ndim - 2 not in self.spatial_ranks or x.shape[1] not in (None, self.num_features):
            raise ShapeError(f"{type(self).__name__} {self._path!r} expects (N, "
                             f"{self.num_features}, ...) with {self.spatial_ranks} spatial dims, "
                             f"got {x.type_str}")
        w = self.var("weight") if self.affine else None
        b = self.var("bias") if self.affine else None
        if not self.training and self.track_running_stats:
            return F.batch_norm(x, self.var("running_mean"), self.var("running_var"), w, b,
                                self.eps)
        axes = (0, *range(2, x.ndim))
        mean = F.mean(x, axis=axes)
        var = F.var(x, axis=axes, correction=0)
        if self.training and self.track_running_stats:
            self._register_running_updates(mean, F.var(x, axis=axes, correction=1))
        return F.batch_norm(x, mean, var, w, b, self.eps)

    def _register_running_updates(self, mean: Node, unbiased_var: Node) -> None:
        m = self.momentum
        for name, batch in (("running_mean", mean), ("running_var", unbiased_var)):
            running = self.var(name)
            self.add_update(F.assign(running, F.add(F.mul(running, 1 - m), F.mul(batch, m))))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over (N, C) or (N, C, L).  Ref: Ioffe & Szegedy 2015; torch.nn."""
    spatial_ranks = (0, 1)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, C, H, W).  Ref: Ioffe & Szegedy 2015; torch.nn.BatchNorm2d"""
    spatial_ranks = (2,)


class LayerNorm(Module):
    """Normalise over the trailing ``normalized_shape`` dims.  Ref: Ba et al. 2016; torch.nn."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.normalized_shape = ((normalized_shape,) if isinstance(normalized_shape, int)
                                 else tuple(normalized_shape))
        self.eps, self.affine, self.has_bias = eps, elementwise_affine, bias and elementwise_affine
        if elementwise_affine:
            self.add_parameter("weight", init.ones(self.normalized_shape))
            if bias:
                self.add_parameter("bias", init.zeros(self.normalized_shape))

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        w = self.var("weight") if self.affine else None
        b = self.var("bias") if self.has_bias else None
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


class GroupNorm(Module):
    """Normalise groups of channels.  Ref: Wu & He 2018; torch.nn.GroupNorm"""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True) -> None:
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels {num_channels} must be divisible by num_groups "
                             f"{num_groups}")
        self.num_groups, self.num_channels, self.eps, self.affine = (num_groups, num_channels,
                                                                    eps, affine)
        if affine:
            self.add_parameter("weight", init.ones((num_channels,)))
            self.add_parameter("bias", init.zeros((num_channels,)))

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        w, b = (self.var("weight"), self.var("bias")) if self.affine else (None, None)
        return F.group_norm(x, self.num_groups, w, b, self.eps)


class InstanceNorm2d(Module):
    """Normalise each (sample, channel) over H, W; affine off by default (PyTorch)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False) -> None:
        super().__init__()
        self.num_features, self.eps, self.affine = num_features, eps, affine
        if affine:
            self.add_parameter("weight", init.ones((num_features,)))
            self.add_parameter("bias", init.zeros((num_features,)))

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        w, b = (self.var("weight"), self.var("bias")) if self.affine else (None, None)
        return F.instance_norm(x, w, b, self.eps)


class RMSNorm(Module):
    """x / sqrt(mean(x^2) + eps) * weight over the trailing dims.  Ref: torch.nn.RMSNorm"""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True) -> None:
        super().__init__()
        self.normalized_shape = ((normalized_shape,) if isinstance(normalized_shape, int)
                                 else tuple(normalized_shape))
        self.eps, self.affine = eps, elementwise_affine
        if elementwise_affine:
            self.add_parameter("weight", init.ones(self.normalized_shape))

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        return F.rms_norm(x, self.normalized_shape, self.var("weight") if self.affine else None,
                          self.eps)
