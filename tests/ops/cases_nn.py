"""NN rows of the op table: expectations are direct loops over the definitions (PyTorch docs)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

import graphnn as gn
from tests.ops.cases import In, case, f64


def conv_loops(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple, pads: tuple,
               dilation: tuple, groups: int) -> np.ndarray:
    """out[n, o, p] = b[o] + sum_{c in group(o), k} w[o, c, k] * xpad[n, c, p*s + k*d]."""
    nd = x.ndim - 2
    xp = np.pad(f64(x), [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    kernel = w.shape[2:]
    out_sz = [(xp.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
              for i in range(nd)]
    c_out, cg = w.shape[0], w.shape[1]
    og = c_out // groups
    out = np.zeros((x.shape[0], c_out, *out_sz))
    for n, o in itertools.product(range(x.shape[0]), range(c_out)):
        g = o // og
        for p in itertools.product(*map(range, out_sz)):
            acc = 0.0 if b is None else float(b[o])
            for c in range(cg):
                for k in itertools.product(*map(range, kernel)):
                    src = tuple(p[i] * stride[i] + k[i] * dilation[i] for i in range(nd))
                    acc += w[(o, c) + k] * xp[(n, g * cg + c) + src]
            out[(n, o) + p] = acc
    return out


def conv_transpose_loops(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple,
                         pads: tuple, dilation: tuple, groups: int, output_padding: tuple
                         ) -> np.ndarray:
    """Scatter: each x[n, c, i] adds w[c, o, k] * x to out[n, g*Cog + o, i*s + k*d - pad]."""
    nd = x.ndim - 2
    kernel, cog = w.shape[2:], w.shape[1]
    cig = x.shape[1] // groups
    full = [(x.shape[2 + i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
            + output_padding[i] for i in range(nd)]
    out = np.zeros((x.shape[0], cog * groups, *full))
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        g = c // cig
        for i in itertools.product(*map(range, x.shape[2:])):
            for o in range(cog):
                for k in itertools.product(*map(range, kernel)):
                    dst = tuple(i[d] * stride[d] + k[d] * dilation[d] for d in range(nd))
                    out[(n, g * cog + o) + dst] += w[(c, o) + k] * x[(n, c) + i]
    crop = tuple(slice(pads[d], full[d] - pads[d + nd]) for d in range(nd))
    out = out[(slice(None), slice(None)) + crop]
    if b is not None:
        out = out + f64(b).reshape((1, -1) + (1,) * nd)
    return out


def pool_loops(x: np.ndarray, kind: str, k: tuple, s: tuple, p: tuple, d: tuple, ceil: bool,
               include_pad: bool = True) -> np.ndarray:
    """PyTorch's pooling, position by position (aten's pooling_output_shape and avg divisor)."""
    nd = x.ndim - 2
    out_sz = []
    for i in range(nd):
        L = x.shape[2 + i]
        num = L + 2 * p[i] - d[i] * (k[i] - 1) - 1
        o = (math.ceil(num / s[i]) if ceil else num // s[i]) + 1
        if ceil and (o - 1) * s[i] >= L + p[i]:
            o -= 1
        out_sz.append(o)
    out = np.zeros(x.shape[:2] + tuple(out_sz))
    for n, c in itertools.product(*map(range, x.shape[:2])):
        for pos in itertools.product(*map(range, out_sz)):
            vals, div = [], 1
            starts = [pos[i] * s[i] - p[i] for i in range(nd)]
            for kk in itertools.product(*map(range, k)):
                src = tuple(starts[i] + kk[i] * d[i] for i in range(nd))
                if all(0 <= src[i] < x.shape[2 + i] for i in range(nd)):
                    vals.append(x[(n, c) + src])
            if kind == "max":
                out[(n, c) + pos] = max(vals)
                continue
            if include_pad:  # window clipped to the padded input, never beyond
                div = math.prod(min(starts[i] + k[i], x.shape[2 + i] + p[i]) - starts[i]
                                for i in range(nd))
            else:
                div = len(vals)
            out[(n, c) + pos] = sum(vals) / div
    return out


CONV_CASES: list[tuple[str, tuple, tuple, dict[str, Any]]] = [
    # id, x shape, w shape, kwargs
    ("1d", (2, 3, 9), (4, 3, 3), {}),
    ("1d-stride-pad", (1, 2, 10), (3, 2, 4), {"stride": 2, "padding": 1}),
    ("2d", (2, 3, 6, 5), (4, 3, 3, 3), {}),
    ("2d-same", (1, 2, 7, 7), (3, 2, 3, 3), {"padding": "same"}),
    ("2d-same-stride2", (1, 2, 7, 8), (3, 2, 3, 3), {"padding": "same", "stride": 2}),
    ("2d-dilation", (1, 2, 9, 9), (2, 2, 3, 3), {"dilation": 2, "padding": (2, 1)}),
    ("2d-groups", (2, 4, 5, 5), (6, 2, 3, 3), {"groups": 2, "padding": 1}),
    ("2d-depthwise", (1, 3, 6, 6), (3, 1, 3, 3), {"groups": 3, "stride": (2, 1)}),
    ("2d-asym-pads", (1, 1, 5, 5), (2, 1, 2, 3), {"padding": [(1, 0), (0, 2)]}),
    ("2d-1x1", (2, 5, 4, 4), (3, 5, 1, 1), {}),
    ("3d", (1, 2, 4, 5, 4), (2, 2, 2, 3, 2), {"padding": 1, "stride": (1, 2, 1)}),
]
for _id, _xs, _ws, _kw in CONV_CASES:
    for _bias in (False, True):
        def _build(x: Any, w: Any, *b: Any, kw: dict = _kw) -> gn.Node:
            return gn.conv(x, w, b[0] if b else None, **kw)

        def _expect(x: np.ndarray, w: np.ndarray, *b: np.ndarray, kw: dict = _kw) -> np.ndarray:
            node_attrs = _attrs_of(gn.conv, x.shape, w.shape, kw)
            return conv_loops(x, w, b[0] if b else None, node_attrs["stride"], node_attrs["pads"],
                              node_attrs["dilation"], node_attrs["groups"])

        case("conv", f"{_id}{'-bias' if _bias else ''}", _build,
             [In(_xs), In(_ws)] + ([In((_ws[0],))] if _bias else []), _expect)


def _attrs_of(fn: Any, xs: tuple, ws: tuple, kw: dict) -> dict:
    """The canonical attributes graphnn resolves for these arguments (padding='same' etc.)."""
    with gn.Graph():
        node = fn(gn.placeholder(xs), gn.placeholder(ws), **kw)
    return dict(node.attrs)


CONVT_CASES: list[tuple[str, tuple, tuple, dict[str, Any]]] = [
    ("1d", (2, 3, 5), (3, 2, 3), {}),
    ("1d-stride-outpad", (1, 2, 4), (2, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1}),
    ("2d", (1, 2, 3, 4), (2, 3, 3, 2), {"stride": 2}),
    ("2d-groups-dilation", (2, 4, 3, 3), (4, 1, 2, 2), {"groups": 2, "dilation": 2, "padding": 1}),
    ("3d", (1, 2, 2, 3, 2), (2, 1, 2, 2, 2), {"stride": (2, 1, 2)}),
]
for _id, _xs, _ws, _kw in CONVT_CASES:
    def _build_t(x: Any, w: Any, b: Any, kw: dict = _kw) -> gn.Node:
        return gn.conv_transpose(x, w, b, **kw)

    def _expect_t(x: np.ndarray, w: np.ndarray, b: np.ndarray, kw: dict = _kw) -> np.ndarray:
        a = _attrs_of(gn.conv_transpose, x.shape, w.shape, kw)
        return conv_transpose_loops(x, w, b, a["stride"], a["pads"], a["dilation"], a["groups"],
                                    a["output_padding"])

    _groups = _kw.get("groups", 1)
    case("conv_transpose", _id, _build_t, [In(_xs), In(_ws), In((_ws[1] * _groups,))], _expect_t)

POOL_CASES: list[tuple[str, tuple, dict[str, Any]]] = [
    ("2d", (2, 3, 6, 6), {"kernel_size": 2}),
    ("2d-stride-pad", (1, 2, 7, 7), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("2d-ceil", (1, 1, 6, 7), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
    ("2d-ceil-pad", (1, 2, 5, 5), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("2d-rect", (1, 1, 5, 8), {"kernel_size": (2, 3), "stride": (1, 2)}),
    ("1d", (2, 2, 9), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("3d", (1, 2, 4, 4, 5), {"kernel_size": 2, "stride": (2, 2, 1)}),
]
for _id, _xs, _kw in POOL_CASES:
    def _pattrs(kw: dict, nd: int) -> tuple:
        def t(v: Any) -> tuple:
            return (v,) * nd if isinstance(v, int) else tuple(v)
        k = t(kw["kernel_size"])
        return k, t(kw.get("stride", k)), t(kw.get("padding", 0)), kw.get("ceil_mode", False)

    case("max_pool", _id, (lambda kw: lambda x: gn.max_pool(x, **kw))(_kw), [In(_xs)],
         (lambda kw: lambda x: pool_loops(x, "max", *_pattrs(kw, x.ndim - 2)[:3],
                                          (1,) * (x.ndim - 2), _pattrs(kw, x.ndim - 2)[3]))(_kw))
    for _inc in (True, False):
        case("avg_pool", f"{_id}-incpad{int(_inc)}",
             (lambda kw, inc: lambda x: gn.avg_pool(x, count_include_pad=inc, **kw))(_kw, _inc),
             [In(_xs)],
             (lambda kw, inc: lambda x: pool_loops(
                 x, "avg", *_pattrs(kw, x.ndim - 2)[:3], (1,) * (x.ndim - 2),
                 _pattrs(kw, x.ndim - 2)[3], inc))(_kw, _inc))
case("max_pool", "dilation", lambda x: gn.max_pool(x, 2, stride=1, dilation=2, padding=1),
     [In((1, 2, 6, 6))], lambda x: pool_loops(x, "max", (2, 2), (1, 1), (1, 1), (2, 2), False))
case("max_pool", "2d-alias", lambda x: gn.max_pool2d(x, 2), [In((1, 1, 4, 4))],
     lambda x: x.reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5)))


def _adaptive_loops(x: np.ndarray, size: tuple, fn: Any) -> np.ndarray:
    out = np.zeros(x.shape[:2] + size)
    for pos in itertools.product(*map(range, size)):
        region = tuple(slice(math.floor(i * L / o), math.ceil((i + 1) * L / o))
                       for i, L, o in zip(pos, x.shape[2:], size))
        out[(slice(None), slice(None)) + pos] = fn(
            x[(slice(None), slice(None)) + region], axis=tuple(range(2, x.ndim)))
    return out


for _xs, _size in (((2, 3, 7, 5), (3, 2)), ((1, 2, 6, 6), (3, 3)), ((1, 1, 5), (7,)),
                   ((1, 2, 4, 4), (1, 1))):
    case("adaptive_avg_pool", f"{_xs}->{_size}",
         (lambda s: lambda x: gn.adaptive_avg_pool(x, s))(_size), [In(_xs)],
         (lambda s: lambda x: _adaptive_loops(f64(x), s, np.mean))(_size))
    case("adaptive_max_pool", f"{_xs}->{_size}",
         (lambda s: lambda x: gn.adaptive_max_pool(x, s))(_size), [In(_xs)],
         (lambda s: lambda x: _adaptive_loops(x, s, np.max))(_size))
case("mean", "global_avg_pool", gn.global_avg_pool, [In((2, 3, 4, 5))],
     lambda x: f64(x).mean(axis=(2, 3), keepdims=True))
case("max", "global_max_pool", gn.global_max_pool, [In((2, 3, 4))],
     lambda x: x.max(axis=2, keepdims=True))


def _normalize(x: np.ndarray, axes: tuple, eps: float) -> np.ndarray:
    x = f64(x)
    mu = x.mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True) + eps)


def _ch(v: np.ndarray, nd: int) -> np.ndarray:
    return f64(v).reshape((1, -1) + (1,) * (nd - 2))


case("batch_norm", "4d", lambda x, m, v, w, b: gn.batch_norm(x, m, v, w, b, eps=1e-3),
     [In((2, 3, 4, 4)), In((3,)), In((3,), "positive"), In((3,)), In((3,))],
     lambda x, m, v, w, b: (f64(x) - _ch(m, 4)) / np.sqrt(_ch(v, 4) + 1e-3) * _ch(w, 4) + _ch(b, 4))
case("batch_norm", "2d-no-affine", lambda x, m, v: gn.batch_norm(x, m, v),
     [In((5, 3)), In((3,)), In((3,), "positive")],
     lambda x, m, v: (f64(x) - m) / np.sqrt(f64(v) + 1e-5))
case("layer_norm", "last", lambda x, w, b: gn.layer_norm(x, 4, w, b), [In((2, 3, 4)), In((4,)),
                                                                    In((4,))],
     lambda x, w, b: _normalize(x, (2,), 1e-5) * w + b)
case("layer_norm", "last2-no-affine", lambda x: gn.layer_norm(x, (3, 4), eps=0.1), [In((2, 3, 4))],
     lambda x: _normalize(x, (1, 2), 0.1))
case("layer_norm", "weight-only", lambda x, w: gn.layer_norm(x, 3, w), [In((4, 3)), In((3,))],
     lambda x, w: _normalize(x, (1,), 1e-5) * w)
case("group_norm", "2groups", lambda x, w, b: gn.group_norm(x, 2, w, b),
     [In((2, 4, 3, 3)), In((4,)), In((4,))],
     lambda x, w, b: _normalize(f64(x).reshape(2, 2, -1), (2,), 1e-5).reshape(x.shape)
     * _ch(w, 4) + _ch(b, 4))
case("group_norm", "instance_norm", lambda x: gn.instance_norm(x), [In((2, 3, 5))],
     lambda x: _normalize(x, (2,), 1e-5))
case("rms_norm", "weight", lambda x, w: gn.rms_norm(x, 4, w, eps=1e-6), [In((3, 4)), In((4,))],
     lambda x, w: f64(x) / np.sqrt((f64(x) ** 2).mean(axis=-1, keepdims=True) + 1e-6) * w)
case("rms_norm", "default-eps", lambda x: gn.rms_norm(x, (2, 3)), [In((2, 2, 3))],
     lambda x: f64(x) / np.sqrt((f64(x) ** 2).mean(axis=(1, 2), keepdims=True)
                                + np.finfo(x.dtype).eps))


def _attention_loops(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: Any = None,
                     causal: bool = False, scale: float | None = None) -> np.ndarray:
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    L, S = q.shape[-2], k.shape[-2]
    out = np.zeros(batch + (L, v.shape[-1]))
    sc = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    qb, kb, vb = (np.broadcast_to(f64(t), batch + t.shape[-2:]) for t in (q, k, v))
    mb = None if mask is None else np.broadcast_to(mask, batch + (L, S))
    for idx in itertools.product(*map(range, batch)):
        for i in range(L):
            scores = np.array([sc * qb[idx + (i,)] @ kb[idx + (j,)] for j in range(S)])
            if causal:
                scores[i + 1:] = -np.inf
            if mb is not None:
                m = mb[idx + (i,)]
                scores = np.where(m, scores, -np.inf) if m.dtype == bool else scores + m
            p = np.exp(scores - scores.max())
            out[idx + (i,)] = (p / p.sum()) @ vb[idx]
    return out


case("scaled_dot_product_attention", "basic", gn.scaled_dot_product_attention,
     [In((2, 3, 4)), In((2, 5, 4)), In((2, 5, 6))], _attention_loops)
case("scaled_dot_product_attention", "causal-heads",
     lambda q, k, v: gn.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3),
     [In((1, 2, 4, 3)), In((1, 2, 4, 3)), In((1, 2, 4, 3))],
     lambda q, k, v: _attention_loops(q, k, v, causal=True, scale=0.3))
case("scaled_dot_product_attention", "bool-mask",
     lambda q, k, v, m: gn.scaled_dot_product_attention(q, k, v, m),
     [In((2, 3, 4)), In((2, 3, 4)), In((2, 3, 2)),
      In((3, 3), dtype="bool", values=[[1, 0, 1], [1, 1, 0], [0, 0, 1]])],
     lambda q, k, v, m: _attention_loops(q, k, v, m))
case("scaled_dot_product_attention", "additive-mask",
     lambda q, k, v, m: gn.scaled_dot_product_attention(q, k, v, m),
     [In((3, 4)), In((5, 4)), In((5, 2)), In((3, 5))],
     lambda q, k, v, m: _attention_loops(q, k, v, m))
