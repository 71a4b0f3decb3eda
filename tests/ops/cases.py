"""The op test table: one row per (op, shape case), with an expectation written independently of
graphnn's reference implementations (numpy formulas in float64, scipy, or naive loops that follow
the definition). ``test_matrix.py`` runs every row on every backend and dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.special as sp

import graphnn as gn

FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
NUMERIC = FLOATS + INTS


@dataclass
class In:
    """An input: shape and value domain. ``dtype`` fixes it (indices); else the case dtype."""

    shape: tuple[int, ...]
    domain: str = "normal"  # normal | positive | unit | int | bool | index:<n> | values
    dtype: str | None = None
    values: Any = None

    def make(self, rng: np.random.Generator, dtype: str) -> np.ndarray:
        dt = self.dtype or dtype
        if self.values is not None:
            return np.asarray(self.values, dtype=dt)
        if self.domain.startswith("index:"):
            return rng.integers(0, int(self.domain[6:]), self.shape).astype(dt)
        if self.domain == "bool" or dt == "bool":
            return rng.random(self.shape) < 0.5
        if dt.startswith("int"):
            lo = 1 if self.domain == "positive" else -5
            return rng.integers(lo, 6, self.shape).astype(dt)
        if self.domain == "positive":
            return rng.uniform(0.1, 3.0, self.shape).astype(dt)
        if self.domain == "unit":
            return rng.uniform(-0.9, 0.9, self.shape).astype(dt)
        return rng.standard_normal(self.shape).astype(dt)


@dataclass
class Case:
    op: str
    id: str
    build: Callable[..., gn.Node]
    inputs: Sequence[In]
    expect: Callable[..., np.ndarray]
    dtypes: Sequence[str] = FLOATS
    rtol: float | None = None
    atol: float | None = None
    out_dtype: str | None = None  # when the output dtype is fixed (comparisons, argmax)
    extra: dict[str, Any] = field(default_factory=dict)


CASES: list[Case] = []


def case(op: str, id: str, build: Callable[..., gn.Node], inputs: Sequence[In],
         expect: Callable[..., np.ndarray], **kw: Any) -> None:
    CASES.append(Case(op, f"{op}-{id}", build, inputs, expect, **kw))


f64 = np.float64
SHAPES_1 = [(), (1,), (5,), (3, 1, 4), (2, 7)]
BROADCAST_PAIRS = [((3, 4), (3, 4)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((1,), (5,)),
                   ((4, 1), (1, 6))]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-f64(x)))


# -- elementwise unary: expectation formulas in float64 -------------------------------------------
UNARY_EXPECT: dict[str, tuple[Callable[..., Any], str, Sequence[str], dict[str, Any]]] = {
    # op: (expectation, domain, dtypes, attrs)
    "neg": (lambda x: -x, "normal", NUMERIC, {}),
    "abs": (np.abs, "normal", NUMERIC, {}),
    "sign": (np.sign, "normal", NUMERIC, {}),
    "exp": (lambda x: np.exp(f64(x)), "normal", FLOATS, {}),
    "log": (lambda x: np.log(f64(x)), "positive", FLOATS, {}),
    "log1p": (lambda x: np.log(1 + f64(x)), "positive", FLOATS, {}),
    "expm1": (lambda x: np.exp(f64(x)) - 1, "unit", FLOATS, {}),
    "sqrt": (lambda x: f64(x) ** 0.5, "positive", FLOATS, {}),
    "rsqrt": (lambda x: f64(x) ** -0.5, "positive", FLOATS, {}),
    "reciprocal": (lambda x: 1 / f64(x), "positive", FLOATS, {}),
    "sin": (lambda x: np.sin(f64(x)), "normal", FLOATS, {}),
    "cos": (lambda x: np.cos(f64(x)), "normal", FLOATS, {}),
    "tanh": (lambda x: np.tanh(f64(x)), "normal", FLOATS, {}),
    "sigmoid": (_sigmoid, "normal", FLOATS, {}),
    "erf": (lambda x: sp.erf(f64(x)), "normal", FLOATS, {}),
    "relu": (lambda x: x * (x > 0), "normal", NUMERIC, {}),
    "leaky_relu": (lambda x: np.where(x >= 0, x, 0.2 * f64(x)), "normal", FLOATS,
                   {"negative_slope": 0.2}),
    "elu": (lambda x: np.where(x > 0, x, 1.5 * (np.exp(f64(x)) - 1)), "normal", FLOATS,
            {"alpha": 1.5}),
    "selu": (lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (
        np.exp(f64(x)) - 1)), "normal", FLOATS, {}),
    "celu": (lambda x: np.maximum(0, x) + np.minimum(0, 0.5 * (np.exp(f64(x) / 0.5) - 1)),
             "normal", FLOATS, {"alpha": 0.5}),
    "gelu": (lambda x: f64(x) * 0.5 * (1 + sp.erf(f64(x) / math.sqrt(2))), "normal", FLOATS, {}),
    "silu": (lambda x: f64(x) * _sigmoid(x), "normal", FLOATS, {}),
    "mish": (lambda x: f64(x) * np.tanh(np.log1p(np.exp(f64(x)))), "normal", FLOATS, {}),
    "softplus": (lambda x: np.log1p(np.exp(2 * f64(x))) / 2, "normal", FLOATS, {"beta": 2.0}),
    "softsign": (lambda x: f64(x) / (1 + np.abs(f64(x))), "normal", FLOATS, {}),
    "hard_sigmoid": (lambda x: np.minimum(1, np.maximum(0, f64(x) / 6 + 0.5)), "normal", FLOATS,
                     {}),
    "hard_swish": (lambda x: f64(x) * np.minimum(6, np.maximum(0, f64(x) + 3)) / 6, "normal",
                   FLOATS, {}),
    "hard_tanh": (lambda x: np.minimum(0.5, np.maximum(-0.5, x)), "normal", FLOATS,
                  {"min_val": -0.5, "max_val": 0.5}),
    "clip": (lambda x: np.minimum(2, np.maximum(-1, x)), "normal", NUMERIC,
             {"min": -1, "max": 2}),
    "floor": (np.floor, "normal", FLOATS, {}),
    "ceil": (np.ceil, "normal", FLOATS, {}),
    "round": (np.round, "normal", FLOATS, {}),
    "identity": (lambda x: x, "normal", NUMERIC, {}),
}

for _op, (_fn, _dom, _dts, _attrs) in UNARY_EXPECT.items():
    for _shape in SHAPES_1:
        case(_op, f"{_shape}", (lambda op, a: lambda x: getattr(gn, op)(x, **a))(_op, _attrs),
             [In(_shape, _dom)], _fn, dtypes=_dts)

case("gelu", "tanh", lambda x: gn.gelu(x, approximate="tanh"), [In((3, 5))],
     lambda x: 0.5 * f64(x) * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * f64(x)**3))))
case("softplus", "threshold", lambda x: gn.softplus(x, threshold=1.0), [In((4, 4))],
     lambda x: np.where(x > 1.0, x, np.log1p(np.exp(f64(x)))))
case("clip", "min-only", lambda x: gn.clip(x, min=0.25), [In((6,))], lambda x: np.maximum(x, 0.25))
case("round", "half-even", gn.round, [In((6,), values=[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])],
     lambda x: np.array([-2.0, -2.0, -0.0, 0.0, 2.0, 2.0]))
case("logical_not", "bool", gn.logical_not, [In((3, 4), dtype="bool")], np.logical_not,
     dtypes=("bool",), out_dtype="bool")
for _to in ("float64", "int32", "bool"):
    case("cast", f"to-{_to}", (lambda t: lambda x: gn.cast(x, t))(_to), [In((2, 5))],
         (lambda t: lambda x: np.trunc(x).astype(t) if t.startswith("int") else x.astype(t))(_to),
         out_dtype=_to)

# -- elementwise binary ----------------------------------------------------------------------------
BINARY_EXPECT: dict[str, tuple[Callable[..., Any], Sequence[str], str, str | None]] = {
    "add": (lambda a, b: f64(a) + b, NUMERIC, "normal", None),
    "sub": (lambda a, b: f64(a) - b, NUMERIC, "normal", None),
    "mul": (lambda a, b: f64(a) * b, NUMERIC, "normal", None),
    "div": (lambda a, b: f64(a) / b, FLOATS, "positive", None),
    "pow": (lambda a, b: f64(a) ** b, FLOATS, "positive", None),
    "maximum": (np.maximum, NUMERIC, "normal", None),
    "minimum": (np.minimum, NUMERIC, "normal", None),
    "equal": (lambda a, b: a == b, NUMERIC, "normal", "bool"),
    "not_equal": (lambda a, b: a != b, NUMERIC, "normal", "bool"),
    "less": (lambda a, b: a < b, NUMERIC, "normal", "bool"),
    "less_equal": (lambda a, b: a <= b, NUMERIC, "normal", "bool"),
    "greater": (lambda a, b: a > b, NUMERIC, "normal", "bool"),
    "greater_equal": (lambda a, b: a >= b, NUMERIC, "normal", "bool"),
}
for _op, (_fn, _dts, _dom, _out) in BINARY_EXPECT.items():
    for _sa, _sb in BROADCAST_PAIRS:
        case(_op, f"{_sa}x{_sb}", getattr(gn, _op), [In(_sa, _dom), In(_sb, _dom)], _fn,
             dtypes=_dts, out_dtype=_out)
for _op, _fn in (("logical_and", np.logical_and), ("logical_or", np.logical_or),
                 ("logical_xor", np.logical_xor)):
    case(_op, "bcast", getattr(gn, _op), [In((2, 1, 3), dtype="bool"), In((4, 3), dtype="bool")],
         _fn, dtypes=("bool",), out_dtype="bool")
case("div", "int-truncates", gn.div, [In((6,), values=[7, -7, 7, -7, 0, 9]),
                                      In((6,), values=[2, 2, -2, -2, 3, 3])],
     lambda a, b: np.array([3, -3, -3, 3, 0, 3]), dtypes=INTS)
case("pow", "int", gn.pow, [In((4,), values=[2, -3, 0, 5]), In((4,), values=[3, 2, 4, 0])],
     lambda a, b: np.array([8, 9, 0, 1]), dtypes=INTS)
case("where", "bcast", gn.where, [In((3, 1), dtype="bool"), In((1, 4)), In((3, 4))],
     lambda c, x, y: np.where(c, x, y), dtypes=NUMERIC)
case("where", "0d-cond", gn.where, [In((), dtype="bool", values=True), In((2,)), In((2,))],
     lambda c, x, y: x)

# -- reductions ------------------------------------------------------------------------------------
AXES_CASES: list[tuple[tuple[int, ...], Any, bool]] = [
    ((2, 3, 4), None, False), ((2, 3, 4), 1, False), ((2, 3, 4), (0, 2), True),
    ((2, 3, 4), -1, True), ((5,), 0, False), ((), None, False), ((3, 1), 1, False),
]
REDUCE_EXPECT: dict[str, tuple[Callable[..., Any], Sequence[str]]] = {
    "sum": (lambda x, axis, keepdims: np.add.reduce(f64(x), axis=axis, keepdims=keepdims), NUMERIC),
    "mean": (lambda x, axis, keepdims: np.add.reduce(f64(x), axis=axis, keepdims=keepdims)
             / (x.size / max(np.add.reduce(np.ones_like(x), axis=axis, keepdims=keepdims).size, 1)
                if x.ndim else 1), FLOATS),
    "max": (lambda x, axis, keepdims: np.maximum.reduce(x, axis=axis, keepdims=keepdims), NUMERIC),
    "min": (lambda x, axis, keepdims: np.minimum.reduce(x, axis=axis, keepdims=keepdims), NUMERIC),
    "prod": (lambda x, axis, keepdims: np.multiply.reduce(f64(x), axis=axis, keepdims=keepdims),
             NUMERIC),
    "logsumexp": (lambda x, axis, keepdims: np.log(np.add.reduce(
        np.exp(f64(x)), axis=axis, keepdims=keepdims)), FLOATS),
}


def _norm_axis(axis: Any, nd: int) -> Any:
    return tuple(range(nd)) if axis is None else axis


for _op, (_fn, _dts) in REDUCE_EXPECT.items():
    for _shape, _axis, _keep in AXES_CASES:
        case(_op, f"{_shape}-{_axis}-{_keep}",
             (lambda op, a, k: lambda x: getattr(gn, op)(x, axis=a, keepdims=k))(_op, _axis, _keep),
             [In(_shape)],
             (lambda f, a, k: lambda x: f(x, _norm_axis(a, x.ndim), k))(_fn, _axis, _keep),
             dtypes=_dts)
for _op, _root in (("var", False), ("std", True)):
    for _corr in (0, 1):
        for _shape, _axis, _keep in AXES_CASES[:5]:
            def _var(x: np.ndarray, a: Any = _axis, k: bool = _keep, c: int = _corr,
                     r: bool = _root) -> np.ndarray:
                ax = _norm_axis(a, x.ndim)
                mu = f64(x).mean(axis=ax, keepdims=True)
                n = f64(x).size / f64(x).mean(axis=ax, keepdims=True).size
                v = ((f64(x) - mu) ** 2).sum(axis=ax, keepdims=k) / (n - c)
                return np.sqrt(v) if r else v
            case(_op, f"{_shape}-{_axis}-c{_corr}",
                 (lambda op, a, k, c: lambda x: getattr(gn, op)(x, axis=a, keepdims=k,
                                                                 correction=c))(
                     _op, _axis, _keep, _corr), [In(_shape)], _var)
for _op, _np in (("argmax", np.argmax), ("argmin", np.argmin)):
    for _axis, _keep in ((None, False), (1, False), (-1, True), (0, True)):
        case(_op, f"{_axis}-{_keep}",
             (lambda op, a, k: lambda x: getattr(gn, op)(x, axis=a, keepdims=k))(_op, _axis, _keep),
             [In((3, 5))], (lambda f, a, k: lambda x: f(x, axis=a, keepdims=k))(_np, _axis, _keep),
             dtypes=NUMERIC, out_dtype="int64")
case("argmax", "first-of-ties", lambda x: gn.argmax(x, axis=0), [In((4,), values=[1, 3, 3, 2])],
     lambda x: np.array(1), dtypes=NUMERIC, out_dtype="int64")


def _softmax64(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(f64(x))
    return e / e.sum(axis=axis, keepdims=True)


for _axis in (-1, 0, 1):
    case("softmax", f"axis{_axis}", (lambda a: lambda x: gn.softmax(x, axis=a))(_axis),
         [In((3, 4, 2))], (lambda a: lambda x: _softmax64(x, a))(_axis))
    case("log_softmax", f"axis{_axis}", (lambda a: lambda x: gn.log_softmax(x, axis=a))(_axis),
         [In((3, 4, 2))], (lambda a: lambda x: np.log(_softmax64(x, a)))(_axis))
case("softmax", "extreme", gn.softmax, [In((2, 3), values=[[1000, 0, -1000], [-1e4, -1e4, -1e4]])],
     lambda x: np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]]))
case("log_softmax", "extreme", gn.log_softmax, [In((1, 2), values=[[800, 0]])],
     lambda x: np.array([[0, -800]]))
case("logsumexp", "extreme", lambda x: gn.logsumexp(x, axis=1),
     [In((2, 2), values=[[1000, 1000], [-1000, -1000]])],
     lambda x: np.array([1000 + math.log(2), -1000 + math.log(2)]))

# -- linear algebra -------------------------------------------------------------------------------


def _matmul_loops(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = f64(a)[None] if a.ndim == 1 else f64(a)
    b2 = f64(b)[..., None] if b.ndim == 1 else f64(b)
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    a2 = np.broadcast_to(a2, batch + a2.shape[-2:])
    b2 = np.broadcast_to(b2, batch + b2.shape[-2:])
    out = np.zeros(batch + (a2.shape[-2], b2.shape[-1]))
    for idx in itertools.product(*map(range, batch)):
        for i, j in itertools.product(range(a2.shape[-2]), range(b2.shape[-1])):
            out[idx + (i, j)] = sum(a2[idx + (i, k)] * b2[idx + (k, j)]
                                    for k in range(a2.shape[-1]))
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


for _sa, _sb in (((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)),
                 ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4,)), ((1, 1), (1, 1))):
    case("matmul", f"{_sa}@{_sb}", gn.matmul, [In(_sa), In(_sb)], _matmul_loops, dtypes=NUMERIC)
for _ta, _tb in itertools.product((False, True), repeat=2):
    case("gemm", f"t{int(_ta)}{int(_tb)}",
         (lambda ta, tb: lambda a, b, c: gn.gemm(a, b, c, alpha=0.5, beta=2.0, trans_a=ta,
                                                 trans_b=tb))(_ta, _tb),
         [In((4, 3) if _ta else (3, 4)), In((5, 4) if _tb else (4, 5)), In((5,))],
         (lambda ta, tb: lambda a, b, c: 0.5 * _matmul_loops(a.T if ta else a, b.T if tb else b)
          + 2.0 * f64(c))(_ta, _tb))
case("gemm", "no-c", gn.gemm, [In((2, 3)), In((3, 2))], _matmul_loops, dtypes=NUMERIC)
for _eq, _shapes in (("ij,jk->ik", [(3, 4), (4, 5)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
                     ("ij->ji", [(3, 4)]), ("ii->i", [(3, 3)]), ("i,i->", [(5,), (5,)]),
                     ("ij,kj", [(2, 3), (4, 3)]),
                     ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)])):
    case("einsum", _eq, (lambda e: lambda *xs: gn.einsum(e, *xs))(_eq), [In(s) for s in _shapes],
         (lambda e: lambda *xs: np.einsum(e, *map(f64, xs)))(_eq))

# -- shape ops -------------------------------------------------------------------------------------
for _shape, _target in (((2, 3, 4), (6, 4)), ((2, 3, 4), (-1,)), ((2, 3, 4), (4, -1, 2)),
                        ((), (1, 1)), ((6,), (2, 3)), ((0, 3), (3, 0))):
    case("reshape", f"{_shape}->{_target}", (lambda t: lambda x: gn.reshape(x, t))(_target),
         [In(_shape)], (lambda t: lambda x: x.reshape(t))(_target), dtypes=NUMERIC)
for _s, _e in ((0, -1), (1, -1), (1, 2), (0, 0)):
    case("flatten", f"{_s}-{_e}", (lambda s, e: lambda x: gn.flatten(x, s, e))(_s, _e),
         [In((2, 3, 4, 5))],
         (lambda s, e: lambda x: x.reshape(x.shape[:s] + (-1,) + x.shape[e % 4 + 1:]))(_s, _e))
for _perm in (None, (1, 0, 2), (2, 0, 1)):
    case("transpose", f"{_perm}", (lambda p: lambda x: gn.transpose(x, p))(_perm), [In((2, 3, 4))],
         (lambda p: lambda x: x.transpose(p))(_perm), dtypes=NUMERIC)
case("transpose", "T", lambda x: x.T, [In((3, 5))], lambda x: x.T)
for _shape, _target in (((3, 1), (2, 3, 4)), ((), (2, 2)), ((4,), (3, 4))):
    case("broadcast_to", f"{_shape}->{_target}",
         (lambda t: lambda x: gn.broadcast_to(x, t))(_target),
         [In(_shape)], (lambda t: lambda x: np.broadcast_to(x, t))(_target), dtypes=NUMERIC)
case("squeeze", "all", gn.squeeze, [In((1, 3, 1, 2))], lambda x: x.reshape(3, 2))
case("squeeze", "axis", lambda x: gn.squeeze(x, -2), [In((1, 3, 1, 2))],
     lambda x: x.reshape(1, 3, 2))
case("unsqueeze", "front", lambda x: gn.unsqueeze(x, 0), [In((3, 2))], lambda x: x[None])
case("unsqueeze", "multi", lambda x: gn.unsqueeze(x, (1, -1)), [In((3, 2))],
     lambda x: x[:, None, :, None])
case("concat", "axis1", lambda a, b, c: gn.concat([a, b, c], axis=1),
     [In((2, 1, 3)), In((2, 4, 3)), In((2, 0, 3))],
     lambda a, b, c: np.concatenate([a, b, c], axis=1), dtypes=NUMERIC)
case("concat", "neg-axis", lambda a, b: gn.concat([a, b], axis=-1), [In((3,)), In((2,))],
     lambda a, b: np.concatenate([a, b]))
case("stack", "axis0", lambda a, b: gn.stack([a, b]), [In((2, 3)), In((2, 3))],
     lambda a, b: np.stack([a, b]), dtypes=NUMERIC)
case("stack", "last", lambda a, b: gn.stack([a, b], axis=-1), [In((2, 3)), In((2, 3))],
     lambda a, b: np.stack([a, b], axis=-1))
case("tile", "2d", lambda x: gn.tile(x, (2, 3)), [In((2, 2))], lambda x: np.block([[x] * 3] * 2))


def _index_case(id: str, index: Any, shape: tuple[int, ...] = (4, 5, 6)) -> None:
    op = "slice"
    probe = np.zeros(shape)[index]
    if isinstance(index, int) or (isinstance(index, tuple) and any(
            isinstance(i, int) for i in index)):
        op = "squeeze"
    if index is None or (isinstance(index, tuple) and None in index):
        op = "unsqueeze"
    assert probe is not None
    case(op, f"getitem-{id}", lambda x: x[index], [In(shape)], lambda x: x[index], dtypes=NUMERIC)


_index_case("basic", (slice(1, 3),))
_index_case("strided", (slice(None, None, 2), slice(1, None, 3)))
_index_case("negative", (slice(-3, -1), slice(None, None, -1)))
_index_case("reverse-step", (slice(None), slice(4, 0, -2)))
_index_case("int", 2)
_index_case("neg-int", (-1, slice(None), -2))
_index_case("newaxis", (None, slice(1, 2), Ellipsis, None))
_index_case("ellipsis-int", (Ellipsis, 0))
_index_case("out-of-range-slice", (slice(2, 100),))
case("slice", "explicit", lambda x: gn.slice_(x, [1, None], [None, -1], [2, 1]), [In((5, 4))],
     lambda x: x[1::2, :-1])
case("slice", "split-sizes", lambda x: gn.split(x, [1, 3], axis=1)[1], [In((2, 4))],
     lambda x: x[:, 1:])
case("slice", "split-chunks", lambda x: gn.split(x, 2, axis=0)[-1], [In((5, 3))],
     lambda x: x[4:])
case("take", "axis0", lambda x, i: gn.take(x, i), [In((5, 3)), In((2, 4), "index:5", "int64")],
     lambda x, i: x[i], dtypes=NUMERIC)
case("take", "axis1-neg", lambda x, i: gn.take(x, i, axis=1),
     [In((2, 4)), In((3,), dtype="int32", values=[-1, 0, 2])], lambda x, i: x[:, [3, 0, 2]])
case("take", "getitem-list", lambda x: x[[2, 0]], [In((3, 2))], lambda x: x[[2, 0]])


def _gather_loop(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    out = np.empty(idx.shape, x.dtype)
    for pos in np.ndindex(*idx.shape):
        src = list(pos)
        src[axis] = idx[pos]
        out[pos] = x[tuple(src)]
    return out


case("gather", "axis1", lambda x, i: gn.gather(x, i, axis=1),
     [In((3, 4)), In((3, 6), "index:4", "int64")], lambda x, i: _gather_loop(x, i, 1),
     dtypes=NUMERIC)
case("gather", "axis0", lambda x, i: gn.gather(x, i, axis=0),
     [In((4, 2)), In((3, 2), "index:4", "int32")], lambda x, i: _gather_loop(x, i, 0))
case("one_hot", "basic", lambda i: gn.one_hot(i, 4), [In((2, 3), "index:4", "int64")],
     lambda i: np.eye(4)[i], dtypes=("int64",), out_dtype="float32")
case("one_hot", "out-of-range", lambda i: gn.one_hot(i, 3, dtype="int32"),
     [In((3,), dtype="int32", values=[0, 3, -1])],
     lambda i: np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0]]), dtypes=("int32",), out_dtype="int32")
for _mode in ("constant", "reflect", "edge"):
    case("pad", _mode, (lambda m: lambda x: gn.pad(x, [(1, 2), (0, 3)], mode=m, value=7.0))(_mode),
         [In((4, 5))],
         (lambda m: lambda x: np.pad(x, [(1, 2), (0, 3)], mode=m, **(
             {"constant_values": 7} if m == "constant" else {})))(_mode))
case("pad", "int", lambda x: gn.pad(x, 1), [In((2, 2))], lambda x: np.pad(x, 1), dtypes=NUMERIC)

# -- shape-polymorphic helpers ------------------------------------------------------------------
case("full_like", "f", lambda x: gn.full_like(x, 2.5), [In((2, 3))], lambda x: np.full((2, 3), 2.5))
case("full_like", "dtype", lambda x: gn.full_like(x, 1, dtype="int32"), [In((4,))],
     lambda x: np.ones(4), out_dtype="int32")
case("size", "node", lambda x: gn.ops.make_node("size", [x], {"axes": (0, 1)}), [In((3, 4))],
     lambda x: np.array(12.0), out_dtype="float32", dtypes=("float32",))
case("broadcast_like", "bcast", gn.broadcast_like, [In((3, 1)), In((2, 3, 4))],
     lambda x, like: np.broadcast_to(x, like.shape), dtypes=NUMERIC)
case("reshape_like", "flat", gn.reshape_like, [In((2, 6)), In((3, 4))],
     lambda x, like: x.reshape(3, 4), dtypes=NUMERIC)
