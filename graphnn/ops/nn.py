"""Neural-network ops: batch/layer/group/instance/RMS normalisation, dropout, attention.

``batch_norm`` here is the inference form (running statistics are inputs); the training form with
batch statistics and running-average updates is built by the BatchNorm layer from reductions.
``instance_norm`` is ``group_norm`` with one group per channel, so it adds no op.
Normalisations use the population variance, as every framework does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from graphnn import dtypes as dt
from graphnn import random as grandom
from graphnn.dtypes import DType
from graphnn.errors import AttrError, ShapeError
from graphnn.ir import Attrs, Node, Shape, get_default_graph
from graphnn.ops.elementwise import TensorLike
from graphnn.ops.registry import (
    Attr,
    OpDef,
    bool_,
    float_,
    int_,
    ints,
    make_node,
    optional,
    register,
)
from graphnn.ops.source import as_node, constant
from graphnn.shapes import broadcast_shapes, require_dtype, require_same_dtype, same_dim


def _check_param(p: Node, shape: Shape, role: str) -> None:
    if p.ndim != len(shape) or not all(map(same_dim, p.shape, shape)):
        dims = ",".join("?" if d is None else str(d) for d in shape)
        raise ShapeError(f"{role} must have shape [{dims}], got {p.type_str}")


def _batch_norm_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x = inputs[0]
    dtype = require_same_dtype(inputs)
    require_dtype(x, dt.FLOATS)
    if x.ndim < 2:
        raise ShapeError(f"expected (N, C, ...), got {x.type_str}")
    for p, role in zip(inputs[1:], ("running_mean", "running_var", "weight", "bias")):
        _check_param(p, (x.shape[1],), role)
    return x.shape, dtype


def _channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _batch_norm(x: np.ndarray, mean: np.ndarray, var: np.ndarray, weight: np.ndarray,
                bias: np.ndarray, *, eps: float) -> np.ndarray:
    y = (x - _channel(mean, x.ndim)) / np.sqrt(_channel(var, x.ndim) + eps)
    return (y * _channel(weight, x.ndim) + _channel(bias, x.ndim)).astype(x.dtype)


register(OpDef("batch_norm", _batch_norm_infer, _batch_norm, arity=(5, 5),
               attrs={"eps": Attr(float_, 1e-5)},
               doc="(x - mean) / sqrt(var + eps) * weight + bias per channel (axis 1). "
                   "Ref: Ioffe & Szegedy 2015; ONNX BatchNormalization (inference)"))


def _layer_norm_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, shape = inputs[0], attrs["normalized_shape"]
    dtype = require_same_dtype(inputs)
    require_dtype(x, dt.FLOATS)
    if len(shape) > x.ndim or not all(map(same_dim, x.shape[x.ndim - len(shape):], shape)):
        raise ShapeError(f"normalized_shape {list(shape)} does not match the trailing dims of "
                         f"{x.type_str}")
    for p, role in zip(inputs[1:], ("weight", "bias")):
        _check_param(p, shape, role)
    return x.shape, dtype


def _layer_norm(x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None,
                *, normalized_shape: tuple[int, ...], eps: float) -> np.ndarray:
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True) + eps)
    y = y if weight is None else y * weight
    return (y if bias is None else y + bias).astype(x.dtype)


register(OpDef("layer_norm", _layer_norm_infer, _layer_norm, arity=(1, 3),
               attrs={"normalized_shape": Attr(ints), "eps": Attr(float_, 1e-5)},
               doc="Normalise over the trailing normalized_shape dims. Ref: Ba et al. 2016; "
                   "torch.nn.functional.layer_norm; ONNX LayerNormalization"))


def _group_norm_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    x, g = inputs[0], attrs["num_groups"]
    dtype = require_same_dtype(inputs)
    require_dtype(x, dt.FLOATS)
    if x.ndim < 2:
        raise ShapeError(f"expected (N, C, ...), got {x.type_str}")
    if g <= 0 or (x.shape[1] is not None and x.shape[1] % g):
        raise ShapeError(f"channels {x.shape[1]} are not divisible by num_groups={g}")
    for p, role in zip(inputs[1:], ("weight", "bias")):
        _check_param(p, (x.shape[1],), role)
    return x.shape, dtype


def _group_norm(x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None,
                *, num_groups: int, eps: float) -> np.ndarray:
    g = x.reshape(x.shape[0], num_groups, -1)
    mu = g.mean(axis=-1, keepdims=True)
    y = ((g - mu) / np.sqrt(((g - mu) ** 2).mean(axis=-1, keepdims=True) + eps)).reshape(x.shape)
    y = y if weight is None else y * _channel(weight, x.ndim)
    return (y if bias is None else y + _channel(bias, x.ndim)).astype(x.dtype)


register(OpDef("group_norm", _group_norm_infer, _group_norm, arity=(1, 3),
               attrs={"num_groups": Attr(int_), "eps": Attr(float_, 1e-5)},
               doc="Normalise over channel groups and space. Ref: Wu & He 2018; "
                   "torch.nn.functional.group_norm"))


def _rms_norm(x: np.ndarray, weight: np.ndarray | None = None, *,
              normalized_shape: tuple[int, ...], eps: float | None) -> np.ndarray:
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    e = np.finfo(x.dtype).eps if eps is None else eps
    y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + e)
    return (y if weight is None else y * weight).astype(x.dtype)


register(OpDef("rms_norm", _layer_norm_infer, _rms_norm, arity=(1, 2),
               attrs={"normalized_shape": Attr(ints), "eps": Attr(optional(float_), None)},
               doc="x / sqrt(mean(x^2) + eps) * weight; eps None means the dtype's machine "
                   "epsilon. Ref: Zhang & Sennrich 2019; torch.nn.functional.rms_norm"))


def _dropout_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    require_dtype(inputs[0], dt.FLOATS)
    if not 0.0 <= attrs["p"] <= 1.0:
        raise AttrError(f"dropout probability p={attrs['p']} is not in [0, 1]")
    return inputs[0].shape, inputs[0].dtype


def _dropout(x: np.ndarray, *, p: float, seed: int, counter: int) -> np.ndarray:
    if p == 0.0:
        return x.copy()
    if p == 1.0:
        return np.zeros_like(x)
    keep = grandom.uniform(seed, counter, x.shape) >= p
    return (x * keep / (1.0 - p)).astype(x.dtype)


register(OpDef("dropout", _dropout_infer, _dropout, pure=False, random=True,
               attrs={"p": Attr(float_, 0.5), "seed": Attr(int_)},
               doc="Zero each element with probability p, scale the rest by 1/(1-p); mask from "
                   "graphnn.random (seed, run counter). Ref: Srivastava et al. 2014"))


def _sdpa_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    q, k, v = inputs[:3]
    dtype = require_same_dtype(inputs[:3])
    require_dtype(q, dt.FLOATS)
    if min(q.ndim, k.ndim, v.ndim) < 2:
        raise ShapeError("q, k, v need rank >= 2: (..., L, E), (..., S, E), (..., S, Ev)")
    if not same_dim(q.shape[-1], k.shape[-1]):
        raise ShapeError(f"q {q.type_str} and k {k.type_str} differ in the embedding dim")
    if not same_dim(k.shape[-2], v.shape[-2]):
        raise ShapeError(f"k {k.type_str} and v {v.type_str} differ in the source length")
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if len(inputs) == 4:
        mask = inputs[3]
        if mask.dtype is not DType.bool and mask.dtype is not dtype:
            raise ShapeError(f"attn_mask must be bool or {dtype.name}, got {mask.dtype.name}")
        broadcast_shapes(mask.shape, batch + (q.shape[-2], k.shape[-2]))
        if attrs["is_causal"]:
            raise AttrError("attn_mask and is_causal cannot both be set (as PyTorch)")
    return batch + (q.shape[-2], v.shape[-1]), dtype


def _sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, *,
          is_causal: bool, scale: float | None) -> np.ndarray:
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ np.swapaxes(k, -1, -2)) * s
    if is_causal:
        mask = np.tril(np.ones((q.shape[-2], k.shape[-2]), dtype=bool))
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    z = scores - np.max(scores, axis=-1, keepdims=True)
    w = np.exp(z)
    return ((w / np.sum(w, axis=-1, keepdims=True)) @ v).astype(q.dtype)


register(OpDef("scaled_dot_product_attention", _sdpa_infer, _sdpa, arity=(3, 4),
               attrs={"is_causal": Attr(bool_, False), "scale": Attr(optional(float_), None)},
               nondiff_inputs=(3,),
               doc="softmax(q k^T * scale + mask) v. Ref: Vaswani et al. 2017; "
                   "torch.nn.functional.scaled_dot_product_attention"))


# -- frontend --------------------------------------------------------------------------------------


def batch_norm(x: TensorLike, running_mean: TensorLike, running_var: TensorLike,
               weight: TensorLike | None = None, bias: TensorLike | None = None,
               eps: float = 1e-5, name: str | None = None) -> Node:
    """Batch normalisation with given statistics (inference form), per channel on axis 1.

    Shapes:  x: (N, C, ...), running_mean/var, weight, bias: (C,) -> x's shape
    Dtypes:  float32, float64, all alike.  Raises: ShapeError for parameter shapes
    Ref:     Ioffe & Szegedy 2015; torch.nn.functional.batch_norm(training=False)
    """
    x = as_node(x)
    c = x.shape[1] if x.ndim > 1 and x.shape[1] is not None else 1
    params = [as_node(p, like=x) if p is not None else as_node(np.full(c, fill), like=x)
              for p, fill in ((running_mean, 0), (running_var, 1), (weight, 1), (bias, 0))]
    return make_node("batch_norm", [x, *params], {"eps": eps}, name=name)


def _affine(x: Node, weight: TensorLike | None, bias: TensorLike | None,
            shape: Sequence[int]) -> list[Node]:
    if weight is None and bias is None:
        return []
    w = as_node(weight, like=x) if weight is not None else as_node(np.ones(shape), like=x)
    return [w] if bias is None else [w, as_node(bias, like=x)]


def layer_norm(x: TensorLike, normalized_shape: int | Sequence[int],
               weight: TensorLike | None = None, bias: TensorLike | None = None,
               eps: float = 1e-5, name: str | None = None) -> Node:
    """Layer normalisation over the trailing ``normalized_shape`` dims.

    Shapes:  x: (..., *normalized_shape); weight, bias: normalized_shape -> x's shape
    Math:    (x - mean) / sqrt(var + eps) * weight + bias (population variance)
    Ref:     Ba et al. 2016; torch.nn.functional.layer_norm
    """
    x = as_node(x)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return make_node("layer_norm", [x, *_affine(x, weight, bias, shape)],
                     {"normalized_shape": shape, "eps": eps}, name=name)


def group_norm(x: TensorLike, num_groups: int, weight: TensorLike | None = None,
               bias: TensorLike | None = None, eps: float = 1e-5,
               name: str | None = None) -> Node:
    """Group normalisation: statistics over each group of C/num_groups channels and all of space.

    Shapes:  x: (N, C, ...); weight, bias: (C,) -> x's shape
    Raises:  ShapeError if C is not divisible by num_groups.  Ref: Wu & He 2018
    """
    x = as_node(x)
    c = x.shape[1] if x.ndim > 1 and x.shape[1] is not None else 1
    return make_node("group_norm", [x, *_affine(x, weight, bias, (c,))],
                     {"num_groups": num_groups, "eps": eps}, name=name)


def instance_norm(x: TensorLike, weight: TensorLike | None = None, bias: TensorLike | None = None,
                  eps: float = 1e-5, name: str | None = None) -> Node:
    """Instance normalisation: each (sample, channel) over space; group_norm with C groups.

    Shapes:  x: (N, C, ...) with C known; weight, bias: (C,).  Ref: Ulyanov et al. 2016
    """
    x = as_node(x)
    if x.ndim < 2 or x.shape[1] is None:
        raise ShapeError(f"instance_norm needs (N, C, ...) with known C, got {x.type_str}")
    return group_norm(x, x.shape[1], weight, bias, eps, name=name)


def rms_norm(x: TensorLike, normalized_shape: int | Sequence[int],
             weight: TensorLike | None = None, eps: float | None = None,
             name: str | None = None) -> Node:
    """RMS normalisation over the trailing dims: x / sqrt(mean(x^2) + eps) * weight.

    ``eps=None`` uses the dtype's machine epsilon, as PyTorch.  Ref: Zhang & Sennrich 2019
    """
    x = as_node(x)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    inputs = [x] if weight is None else [x, as_node(weight, like=x)]
    return make_node("rms_norm", inputs, {"normalized_shape": shape, "eps": eps}, name=name)


def dropout(x: TensorLike, p: float = 0.5, training: bool = True, seed: int | None = None,
            name: str | None = None) -> Node:
    """Inverted dropout: zero elements with probability ``p``, scale the others by 1/(1-p).

    With ``training=False`` it returns ``x`` unchanged (no node). The mask depends on ``seed``
    (default: derived from the graph's seed and the node's position) and the session's run
    counter, so each run draws a new mask and runs are reproducible (graphnn.random).
    Ref:     Srivastava et al. 2014; torch.nn.functional.dropout
    """
    x = as_node(x)
    if not training:
        return x
    graph = x.graph or get_default_graph()
    return make_node("dropout", [x], {"p": p, "seed": graph.next_seed() if seed is None else seed},
                     name=name)


def scaled_dot_product_attention(query: TensorLike, key: TensorLike, value: TensorLike,
                                 attn_mask: TensorLike | None = None, is_causal: bool = False,
                                 scale: float | None = None, name: str | None = None) -> Node:
    """softmax(q @ k^T * scale + mask) @ v.

    Shapes:  q: (..., L, E), k: (..., S, E), v: (..., S, Ev), attn_mask broadcast to (..., L, S)
             -> (..., L, Ev)
    Masks:   bool (True takes part, as PyTorch) or additive float; is_causal masks j > i.
    Math:    scale defaults to 1/sqrt(E)
    Ref:     Vaswani et al. 2017; torch.nn.functional.scaled_dot_product_attention
    """
    q = as_node(query)
    inputs = [q, as_node(key, like=q), as_node(value, like=q)]
    if attn_mask is not None:
        inputs.append(attn_mask if isinstance(attn_mask, Node) else constant(attn_mask))
    return make_node("scaled_dot_product_attention", inputs,
                     {"is_causal": is_causal, "scale": scale}, name=name)


# -- gradients ------------------------------------------------------------------------------------
# The normalisations and attention are differentiated through their definitions in primitive ops,
# so their gradients (and second derivatives) come from rules already tested one by one.
from collections.abc import Callable  # noqa: E402

from graphnn.ops.registry import def_gradient  # noqa: E402


def _through(definition: Callable[..., Node]) -> Callable[[Node, Node], list[Node | None]]:
    def rule(n: Node, dy: Node) -> list[Node | None]:
        from graphnn.autodiff import gradients

        diff = [i for i, x in enumerate(n.inputs)
                if x.dtype.is_float and i not in get_op_nondiff(n.op)]
        out = definition(n, *n.inputs)
        grads = gradients([out], [n.inputs[i] for i in diff], [dy])
        full: list[Node | None] = [None] * len(n.inputs)
        for i, g in zip(diff, grads):
            full[i] = g
        return full

    return rule


def get_op_nondiff(op: str) -> tuple[int, ...]:
    from graphnn.ops.registry import get_op

    return get_op(op).nondiff_inputs


def _per_channel(p: Node, ndim: int) -> Node:
    from graphnn.ops.shape import reshape

    return reshape(p, (1, -1) + (1,) * (ndim - 2))


def _normalise(x: Node, axes: tuple[int, ...], eps: float) -> Node:
    from graphnn.ops import api as F

    centred = F.sub(x, F.mean(x, axis=axes, keepdims=True))
    var = F.mean(F.mul(centred, centred), axis=axes, keepdims=True)
    return F.mul(centred, F.rsqrt(F.add(var, eps)))


def _batch_norm_def(n: Node, x: Node, m: Node, v: Node, w: Node, b: Node) -> Node:
    from graphnn.ops import api as F

    nd = x.ndim
    y = F.mul(F.sub(x, _per_channel(m, nd)), F.rsqrt(F.add(_per_channel(v, nd), n.attrs["eps"])))
    return F.add(F.mul(y, _per_channel(w, nd)), _per_channel(b, nd))


def _layer_norm_def(n: Node, x: Node, *affine: Node) -> Node:
    from graphnn.ops import api as F

    axes = tuple(range(x.ndim - len(n.attrs["normalized_shape"]), x.ndim))
    y = _normalise(x, axes, n.attrs["eps"])
    y = F.mul(y, affine[0]) if affine else y
    return F.add(y, affine[1]) if len(affine) > 1 else y


def _group_norm_def(n: Node, x: Node, *affine: Node) -> Node:
    from graphnn.ops import api as F

    g = n.attrs["num_groups"]
    if any(d is None for d in x.shape[1:]):
        raise ShapeError("group_norm gradient needs the channel and spatial sizes to be known")
    rest = math.prod(d for d in x.shape[1:] if d is not None)
    grouped = F.reshape(x, (-1, g, rest // g))
    y = F.reshape_like(_normalise(grouped, (2,), n.attrs["eps"]), x)
    y = F.mul(y, _per_channel(affine[0], x.ndim)) if affine else y
    return F.add(y, _per_channel(affine[1], x.ndim)) if len(affine) > 1 else y


def _rms_norm_def(n: Node, x: Node, *weight: Node) -> Node:
    from graphnn.ops import api as F

    axes = tuple(range(x.ndim - len(n.attrs["normalized_shape"]), x.ndim))
    eps = n.attrs["eps"] if n.attrs["eps"] is not None else float(np.finfo(x.dtype.np).eps)
    y = F.mul(x, F.rsqrt(F.add(F.mean(F.mul(x, x), axis=axes, keepdims=True), eps)))
    return F.mul(y, weight[0]) if weight else y


def _sdpa_def(n: Node, q: Node, k: Node, v: Node, *mask: Node) -> Node:
    from graphnn.ops import api as F
    from graphnn.ops.linalg import _swap_last

    scale = n.attrs["scale"] if n.attrs["scale"] is not None else 1 / math.sqrt(q.shape[-1] or 1)
    scores = F.mul(F.matmul(q, _swap_last(k)), scale)
    if n.attrs["is_causal"]:
        L, S = q.shape[-2], k.shape[-2]
        if L is None or S is None:
            raise ShapeError("causal attention gradient needs known sequence lengths")
        mask = (constant(np.tril(np.ones((L, S), bool))),)
    if mask:
        m = mask[0]
        scores = F.where(m, scores, -np.inf) if m.dtype is DType.bool else F.add(scores, m)
    return F.matmul(F.softmax(scores, axis=-1), v)


def_gradient("batch_norm")(_through(_batch_norm_def))
def_gradient("layer_norm")(_through(_layer_norm_def))
def_gradient("group_norm")(_through(_group_norm_def))
def_gradient("rms_norm")(_through(_rms_norm_def))
def_gradient("scaled_dot_product_attention")(_through(_sdpa_def))


@def_gradient("dropout")
def _g_dropout(n: Node, dy: Node) -> list[Node | None]:
    # Same seed, same run counter, same shape: the same mask and scale apply to dy.
    return [make_node("dropout", [dy], dict(n.attrs))]
