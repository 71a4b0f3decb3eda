"""Losses as graph functions, with PyTorch's names, arguments and reductions.

Every loss takes ``reduction`` = "mean" (default), "sum" or "none" (per-element or per-sample
values). Forms that involve logs are computed from logits with log-sum-exp or log-sigmoid
identities, so they stay finite for logits of any size (tested at +-1e4).

Refs: torch.nn.functional losses (the definitions, argument names and defaults); Lin et al. 2017
(focal loss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from graphnn.errors import AttrError, DTypeError, ShapeError
from graphnn.ir import Node
from graphnn.ops import api as F
from graphnn.ops.source import as_node

REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Node, reduction: str) -> Node:
    if reduction == "mean":
        return F.mean(loss)
    if reduction == "sum":
        return F.sum(loss)
    if reduction == "none":
        return loss
    raise AttrError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _pair(input: Node, target: Any) -> Node:
    t = as_node(target, like=input)
    if t.dtype is not input.dtype:
        t = F.cast(t, input.dtype)
    return t


def mse_loss(input: Node, target: Any, reduction: str = "mean") -> Node:
    """mean((input - target)^2).  Shapes: broadcast together.  Ref: torch mse_loss"""
    d = F.sub(input, _pair(input, target))
    return _reduce(F.mul(d, d), reduction)


def l1_loss(input: Node, target: Any, reduction: str = "mean") -> Node:
    """mean(|input - target|).  Ref: torch l1_loss"""
    return _reduce(F.abs(F.sub(input, _pair(input, target))), reduction)


mae_loss = l1_loss


def huber_loss(input: Node, target: Any, reduction: str = "mean", delta: float = 1.0) -> Node:
    """0.5 d^2 where |d| < delta, else delta * (|d| - 0.5 delta).  Ref: torch huber_loss"""
    d = F.abs(F.sub(input, _pair(input, target)))
    quad = F.mul(F.mul(d, d), 0.5)
    return _reduce(F.where(F.less(d, delta), quad, F.mul(F.sub(d, 0.5 * delta), delta)),
                   reduction)


def smooth_l1_loss(input: Node, target: Any, reduction: str = "mean", beta: float = 1.0) -> Node:
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (= huber / beta).  Ref: torch"""
    d = F.abs(F.sub(input, _pair(input, target)))
    if beta == 0:
        return _reduce(d, reduction)
    quad = F.div(F.mul(F.mul(d, d), 0.5), beta)
    return _reduce(F.where(F.less(d, beta), quad, F.sub(d, 0.5 * beta)), reduction)


def _log_sigmoid(x: Node) -> Node:
    # log(sigmoid(x)) = -softplus(-x), finite for any x
    return F.neg(F.softplus(F.neg(x), threshold=1e30))


def binary_cross_entropy(input: Node, target: Any, weight: Any = None,
                         reduction: str = "mean") -> Node:
    """-(t log p + (1 - t) log(1 - p)) on probabilities; logs clamped at -100 (PyTorch).

    Prefer ``binary_cross_entropy_with_logits``, which is stable for extreme logits.
    """
    t = _pair(input, target)
    log_p = F.maximum(F.log(input), -100.0)
    log_q = F.maximum(F.log(F.sub(1.0, input)), -100.0)
    loss = F.neg(F.add(F.mul(t, log_p), F.mul(F.sub(1.0, t), log_q)))
    return _reduce(loss if weight is None else F.mul(loss, _pair(input, weight)), reduction)


def binary_cross_entropy_with_logits(input: Node, target: Any, weight: Any = None,
                                     pos_weight: Any = None, reduction: str = "mean") -> Node:
    """-(pos_weight * t log sigmoid(x) + (1 - t) log sigmoid(-x)), stable for any x.

    Shapes:  input, target broadcast; pos_weight broadcasts over the class (last) axis.
    Ref:     torch.nn.functional.binary_cross_entropy_with_logits
    """
    t = _pair(input, target)
    pos = F.mul(t, _log_sigmoid(input))
    if pos_weight is not None:
        pos = F.mul(pos, _pair(input, pos_weight))
    loss = F.neg(F.add(pos, F.mul(F.sub(1.0, t), _log_sigmoid(F.neg(input)))))
    return _reduce(loss if weight is None else F.mul(loss, _pair(input, weight)), reduction)


bce_with_logits = binary_cross_entropy_with_logits


def nll_loss(input: Node, target: Node, weight: Any = None, ignore_index: int = -100,
             reduction: str = "mean") -> Node:
    """-input[n, target[n]] * weight[target[n]] from log-probabilities (N, C) or (N, C, d...).

    "mean" divides by the summed weight of the targets that are not ``ignore_index`` (PyTorch).
    Raises:  DTypeError unless target is int32/int64.
    """
    if not target.dtype.is_int:
        raise DTypeError(f"nll_loss: target must hold class indices (int), got {target.type_str}")
    c = input.shape[1]
    if c is None:
        raise ShapeError(f"nll_loss: the class dimension of {input.type_str} must be known")
    valid = F.not_equal(target, ignore_index)
    safe = F.where(valid, target, F.full_like(target, 0))
    onehot = F.one_hot(safe, c, dtype=input.dtype)  # (N, d..., C)
    moved = F.transpose(input, (0, *range(2, input.ndim), 1))
    picked = F.sum(F.mul(moved, onehot), axis=-1)
    w = F.cast(valid, input.dtype)
    if weight is not None:
        w = F.mul(w, F.sum(F.mul(onehot, _pair(input, weight)), axis=-1))
    loss = F.neg(F.mul(picked, w))
    if reduction == "mean":
        return F.div(F.sum(loss), F.sum(w))
    return _reduce(loss, reduction)


def cross_entropy(input: Node, target: Any, weight: Any = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Node:
    """Softmax cross-entropy from logits, via log_softmax (stable for any logits).

    Shapes:  input (N, C) or (N, C, d...); target class indices (N, d...) int, or probabilities
             shaped like input (float).
    Math:    with label smoothing e: (1 - e) * nll + e * mean_c(-log_softmax) (PyTorch's form).
    Ref:     torch.nn.functional.cross_entropy
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise AttrError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    logp = F.log_softmax(input, axis=1)
    target = target if isinstance(target, Node) else as_node(np.asarray(target))
    if target.dtype.is_float:  # class probabilities
        t = _pair(input, target)
        if label_smoothing:
            c = input.shape[1]
            if c is None:
                raise ShapeError(f"cross_entropy: the class dimension of {input.type_str} must "
                                 "be known")
            t = F.add(F.mul(t, 1 - label_smoothing), label_smoothing / c)
        per = F.neg(F.sum(F.mul(logp, t if weight is None else F.mul(t, _channel(input, weight))),
                          axis=1))
        return _reduce(per, reduction)
    nll = nll_loss(logp, target, weight, ignore_index, reduction)
    if not label_smoothing:
        return nll
    valid = F.cast(F.not_equal(target, ignore_index), input.dtype)
    w = logp if weight is None else F.mul(logp, _channel(input, weight))
    smooth = F.mul(F.neg(F.mean(w, axis=1)), valid)
    if reduction == "mean":
        denom = F.sum(valid) if weight is None else _weight_sum(input, target, weight, ignore_index)
        smooth = F.div(F.sum(smooth), denom)
    else:
        smooth = _reduce(smooth, reduction)
    return F.add(F.mul(nll, 1 - label_smoothing), F.mul(smooth, label_smoothing))


def _channel(input: Node, weight: Any) -> Node:
    return F.reshape(_pair(input, weight), (1, -1) + (1,) * (input.ndim - 2))


def _weight_sum(input: Node, target: Node, weight: Any, ignore_index: int) -> Node:
    c = input.shape[1]
    assert c is not None
    valid = F.not_equal(target, ignore_index)
    onehot = F.one_hot(F.where(valid, target, F.full_like(target, 0)), c, dtype=input.dtype)
    return F.sum(F.mul(F.sum(F.mul(onehot, _pair(input, weight)), axis=-1),
                       F.cast(valid, input.dtype)))


def kl_div(input: Node, target: Any, reduction: str = "mean", log_target: bool = False) -> Node:
    """target * (log target - input), input being log-probabilities (PyTorch's convention).

    ``reduction="batchmean"`` divides the sum by the batch size, the mathematically correct KL.
    """
    t = _pair(input, target)
    if log_target:
        loss = F.mul(F.exp(t), F.sub(t, input))
    else:  # 0 * log 0 = 0
        safe = F.where(F.greater(t, 0.0), t, 1.0)
        loss = F.where(F.greater(t, 0.0), F.mul(t, F.sub(F.log(safe), input)), 0.0)
    if reduction == "batchmean":
        return F.div(F.sum(loss), F.size(input, (0,), dtype=input.dtype))
    return _reduce(loss, reduction)


def focal_loss(input: Node, target: Any, alpha: float = 0.25, gamma: float = 2.0,
               reduction: str = "mean") -> Node:
    """Sigmoid focal loss from logits: alpha_t (1 - p_t)^gamma * BCE (Lin et al. 2017;
    torchvision.ops.sigmoid_focal_loss; alpha < 0 disables the weighting)."""
    t = _pair(input, target)
    ce = binary_cross_entropy_with_logits(input, t, reduction="none")
    p = F.sigmoid(input)
    p_t = F.add(F.mul(p, t), F.mul(F.sub(1.0, p), F.sub(1.0, t)))
    loss = F.mul(ce, F.pow(F.sub(1.0, p_t), gamma))
    if alpha >= 0:
        loss = F.mul(loss, F.add(F.mul(t, alpha), F.mul(F.sub(1.0, t), 1 - alpha)))
    return _reduce(loss, reduction)


def hinge_loss(input: Node, target: Any, margin: float = 1.0, reduction: str = "mean") -> Node:
    """max(0, margin - target * input) with targets in {-1, +1} (SVM hinge; Keras "hinge")."""
    return _reduce(F.relu(F.sub(margin, F.mul(_pair(input, target), input))), reduction)


def cosine_embedding_loss(input1: Node, input2: Node, target: Any, margin: float = 0.0,
                          reduction: str = "mean") -> Node:
    """1 - cos(x1, x2) for target 1, max(0, cos - margin) for target -1 (rows of (N, D)).

    Ref: torch.nn.functional.cosine_embedding_loss (eps 1e-8 in the norms)
    """
    t = _pair(input1, target)
    dot = F.sum(F.mul(input1, input2), axis=-1)
    norms = F.sqrt(F.mul(F.add(F.sum(F.mul(input1, input1), axis=-1), 1e-8),
                         F.add(F.sum(F.mul(input2, input2), axis=-1), 1e-8)))
    cos = F.div(dot, norms)
    loss = F.where(F.greater(t, 0.0), F.sub(1.0, cos), F.relu(F.sub(cos, margin)))
    return _reduce(loss, reduction)


LOSSES: dict[str, Callable[..., Node]] = {
    "mse": mse_loss, "l1": l1_loss, "mae": l1_loss, "huber": huber_loss,
    "smooth_l1": smooth_l1_loss, "binary_cross_entropy": binary_cross_entropy,
    "bce_with_logits": binary_cross_entropy_with_logits, "cross_entropy": cross_entropy,
    "nll": nll_loss, "kl_div": kl_div, "focal": focal_loss, "hinge": hinge_loss,
}


def get(name_or_fn: str | Callable[..., Node]) -> Callable[..., Node]:
    """A loss function by name ("cross_entropy", "mse", ...) or the callable itself."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return LOSSES[name_or_fn]
    except KeyError:
        raise AttrError(f"unknown loss {name_or_fn!r}; known: {', '.join(sorted(LOSSES))}") \
            from None
