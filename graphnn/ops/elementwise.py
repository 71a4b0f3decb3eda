"""Elementwise ops: unary math and activations, binary arithmetic and comparisons, ``where``.

Binary ops broadcast as numpy does. Both tensor inputs must share a dtype (graphnn does not
promote, as ONNX and TensorFlow); a Python number or numpy array combined with a tensor takes the
tensor's dtype when that loses nothing (``x + 1`` works for float32 ``x``).

Integer ``div`` truncates toward zero (ONNX Div, C semantics), unlike PyTorch's true division.
Each row of the tables below is one op: its numpy reference, its allowed dtypes, its attributes
and the source of its math.

Shapes:  same as the (broadcast) inputs.
Raises:  DTypeError for a dtype outside the op's set, or mixed dtypes; ShapeError when the inputs
         do not broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphnn import dtypes as dt
from graphnn.dtypes import DType
from graphnn.ir import Attrs, Node, Shape
from graphnn.ops.registry import Attr, OpDef, dtype_, float_, make_node, one_of, optional, register
from graphnn.ops.source import as_node
from graphnn.shapes import broadcast_shapes, require_dtype, require_same_dtype

TensorLike = Node | float | int | np.ndarray

_erf_scalar = np.frompyfunc(math.erf, 1, 1)
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf; libm's (through math.erf) is exact to an ulp, which an oracle wants.
    return np.asarray(_erf_scalar(x), dtype=x.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows: stable for large |x|
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _softplus(x: np.ndarray, beta: float = 1.0, threshold: float = 20.0) -> np.ndarray:
    bx = x * beta
    return np.where(bx > threshold, x, np.logaddexp(0, bx) / beta).astype(x.dtype)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        c = math.sqrt(2 / math.pi)
        return (0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3)))).astype(x.dtype)
    return (0.5 * x * (1 + _erf(x / math.sqrt(2)))).astype(x.dtype)


def _trunc_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return a / b
    q = np.floor_divide(a, b)
    fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return q + fix


@dataclass(frozen=True)
class Unary:
    """One unary op: reference, accepted dtypes, attributes, doc line and the source of its math."""

    fn: Callable[..., np.ndarray]
    dtypes: frozenset[DType]
    doc: str
    ref: str
    attrs: dict[str, Attr] = field(default_factory=dict)


F, N, A = dt.FLOATS, dt.NUMERIC, dt.ALL

UNARY: dict[str, Unary] = {
    "neg": Unary(np.negative, N, "-x", "ONNX Neg"),
    "abs": Unary(np.abs, N, "|x|", "ONNX Abs"),
    "sign": Unary(np.sign, N, "-1, 0 or 1 by the sign of x (0 for 0)", "ONNX Sign"),
    "exp": Unary(np.exp, F, "e**x", "ONNX Exp"),
    "log": Unary(np.log, F, "natural logarithm (-inf at 0, nan below)", "ONNX Log"),
    "log1p": Unary(np.log1p, F, "log(1 + x), accurate near 0", "torch.log1p"),
    "expm1": Unary(np.expm1, F, "exp(x) - 1, accurate near 0", "torch.expm1"),
    "sqrt": Unary(np.sqrt, F, "square root", "ONNX Sqrt"),
    "rsqrt": Unary(lambda x: 1 / np.sqrt(x), F, "1 / sqrt(x)", "torch.rsqrt"),
    "reciprocal": Unary(lambda x: 1 / x, F, "1 / x", "ONNX Reciprocal"),
    "sin": Unary(np.sin, F, "sine (radians)", "ONNX Sin"),
    "cos": Unary(np.cos, F, "cosine (radians)", "ONNX Cos"),
    "tanh": Unary(np.tanh, F, "hyperbolic tangent", "ONNX Tanh"),
    "sigmoid": Unary(_sigmoid, F, "1 / (1 + exp(-x)), evaluated without overflow", "ONNX Sigmoid"),
    "erf": Unary(_erf, F, "the error function", "ONNX Erf"),
    "relu": Unary(lambda x: np.maximum(x, 0).astype(x.dtype), N, "max(x, 0)", "ONNX Relu"),
    "leaky_relu": Unary(
        lambda x, negative_slope: np.where(x >= 0, x, x * negative_slope).astype(x.dtype),
        F, "x if x >= 0 else negative_slope * x", "torch.nn.functional.leaky_relu",
        {"negative_slope": Attr(float_, 0.01)}),
    "elu": Unary(lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(x)).astype(x.dtype),
                 F, "x if x > 0 else alpha * (exp(x) - 1)", "Clevert et al. 2015; torch elu",
                 {"alpha": Attr(float_, 1.0)}),
    "selu": Unary(
        lambda x: (_SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(x))).astype(x.dtype),
        F, "scale * (x if x > 0 else alpha * (exp(x) - 1)), alpha=1.6733, scale=1.0507",
        "Klambauer et al. 2017; ONNX Selu"),
    "celu": Unary(
        lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(x / alpha)).astype(x.dtype),
        F, "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))", "Barron 2017; ONNX Celu",
        {"alpha": Attr(float_, 1.0)}),
    "gelu": Unary(_gelu, F, "x * Phi(x); approximate='tanh' uses the tanh formula",
                  "Hendrycks & Gimpel 2016; torch.nn.functional.gelu",
                  {"approximate": Attr(one_of("none", "tanh"), "none")}),
    "silu": Unary(lambda x: (x * _sigmoid(x)).astype(x.dtype), F, "x * sigmoid(x) (swish)",
                  "Elfwing et al. 2017; torch silu"),
    "mish": Unary(lambda x: (x * np.tanh(np.logaddexp(0, x))).astype(x.dtype), F,
                  "x * tanh(softplus(x))", "Misra 2019; torch mish"),
    "softplus": Unary(_softplus, F, "log(1 + exp(beta*x)) / beta; x where beta*x > threshold",
                      "torch.nn.functional.softplus",
                      {"beta": Attr(float_, 1.0), "threshold": Attr(float_, 20.0)}),
    "softsign": Unary(lambda x: x / (1 + np.abs(x)), F, "x / (1 + |x|)", "ONNX Softsign"),
    "hard_sigmoid": Unary(
        lambda x, alpha, beta: np.clip(alpha * x + beta, 0, 1).astype(x.dtype),
        F, "clip(alpha*x + beta, 0, 1); defaults are PyTorch's (ONNX's are alpha=0.2)",
        "torch hardsigmoid; ONNX HardSigmoid attribute names",
        {"alpha": Attr(float_, 1 / 6), "beta": Attr(float_, 0.5)}),
    "hard_swish": Unary(lambda x: (x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype), F,
                        "x * relu6(x + 3) / 6", "Howard et al. 2019; ONNX HardSwish"),
    "hard_tanh": Unary(lambda x, min_val, max_val: np.clip(x, min_val, max_val).astype(x.dtype),
                       F, "clip(x, min_val, max_val)", "torch.nn.functional.hardtanh",
                       {"min_val": Attr(float_, -1.0), "max_val": Attr(float_, 1.0)}),
    "clip": Unary(
        lambda x, min, max: np.clip(x, min, max).astype(x.dtype), N,  # noqa: A002 - ONNX names
        "clamp to [min, max]; None leaves that side open; min > max gives max (as PyTorch)",
        "ONNX Clip; torch.clamp",
        {"min": Attr(optional(float_), None), "max": Attr(optional(float_), None)}),
    "floor": Unary(np.floor, F, "round toward -inf", "ONNX Floor"),
    "ceil": Unary(np.ceil, F, "round toward +inf", "ONNX Ceil"),
    "round": Unary(np.round, F, "round half to even", "ONNX Round"),
    "logical_not": Unary(np.logical_not, frozenset({DType.bool}), "not x", "ONNX Not"),
    "identity": Unary(lambda x: x.copy(), A, "x", "ONNX Identity"),
    "cast": Unary(lambda x, to: x.astype(to.np), A,
                  "convert to dtype `to` (float to int truncates toward zero; nonzero is True)",
                  "ONNX Cast", {"to": Attr(dtype_)}),
}


@dataclass(frozen=True)
class Binary:
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    dtypes: frozenset[DType]
    doc: str
    ref: str
    commutative: bool = False
    to_bool: bool = False


BOOL = frozenset({DType.bool})
BINARY: dict[str, Binary] = {
    "add": Binary(np.add, N, "a + b", "ONNX Add", commutative=True),
    "sub": Binary(np.subtract, N, "a - b", "ONNX Sub"),
    "mul": Binary(np.multiply, N, "a * b", "ONNX Mul", commutative=True),
    "div": Binary(_trunc_div, N, "a / b (integers truncate toward zero)", "ONNX Div"),
    "pow": Binary(np.power, N, "a ** b", "ONNX Pow"),
    "maximum": Binary(np.maximum, N, "elementwise max (nan propagates)", "ONNX Max", True),
    "minimum": Binary(np.minimum, N, "elementwise min (nan propagates)", "ONNX Min", True),
    "equal": Binary(np.equal, A, "a == b", "ONNX Equal", True, True),
    "not_equal": Binary(np.not_equal, A, "a != b", "torch.ne", True, True),
    "less": Binary(np.less, N, "a < b", "ONNX Less", to_bool=True),
    "less_equal": Binary(np.less_equal, N, "a <= b", "ONNX LessOrEqual", to_bool=True),
    "greater": Binary(np.greater, N, "a > b", "ONNX Greater", to_bool=True),
    "greater_equal": Binary(np.greater_equal, N, "a >= b", "ONNX GreaterOrEqual", to_bool=True),
    "logical_and": Binary(np.logical_and, BOOL, "a and b", "ONNX And", True, True),
    "logical_or": Binary(np.logical_or, BOOL, "a or b", "ONNX Or", True, True),
    "logical_xor": Binary(np.logical_xor, BOOL, "a xor b", "ONNX Xor", True, True),
}


def _unary_infer(spec: Unary) -> Callable[[Sequence[Node], Attrs], tuple[Shape, DType]]:
    def infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
        require_dtype(inputs[0], spec.dtypes)
        return inputs[0].shape, attrs["to"] if "to" in attrs else inputs[0].dtype

    return infer


def _binary_infer(spec: Binary) -> Callable[[Sequence[Node], Attrs], tuple[Shape, DType]]:
    def infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
        dtype = require_same_dtype(inputs)
        require_dtype(inputs[0], spec.dtypes)
        shape = broadcast_shapes(*(i.shape for i in inputs))
        return shape, DType.bool if spec.to_bool else dtype

    return infer


def _where_infer(inputs: Sequence[Node], attrs: Attrs) -> tuple[Shape, DType]:
    require_dtype(inputs[0], BOOL, "condition")
    dtype = require_same_dtype(inputs[1:])
    return broadcast_shapes(*(i.shape for i in inputs)), dtype


for _name, _u in UNARY.items():
    register(OpDef(_name, _unary_infer(_u), _u.fn, attrs=_u.attrs, elementwise=True,
                   nondiff_inputs=(0,) if _name == "logical_not" else (),
                   doc=f"{_u.doc}. Ref: {_u.ref}"))
for _name, _b in BINARY.items():
    register(OpDef(_name, _binary_infer(_b), _b.fn, arity=(2, 2), elementwise=True,
                   commutative=_b.commutative,
                   nondiff_inputs=(0, 1) if _b.to_bool else (),
                   doc=f"{_b.doc}. Ref: {_b.ref}"))
register(OpDef("where", _where_infer, np.where, arity=(3, 3), elementwise=True,
               nondiff_inputs=(0,), doc="x where condition else y. Ref: ONNX Where"))


# -- frontend -------------------------------------------------------------------------------------


def _unary(op: str, x: TensorLike, name: str | None = None, **attrs: Any) -> Node:
    return make_node(op, [as_node(x)], attrs, name=name)


def _binary(op: str, a: TensorLike, b: TensorLike, name: str | None = None) -> Node:
    if isinstance(a, Node):
        b = as_node(b, like=a)
    elif isinstance(b, Node):
        a = as_node(a, like=b)
    else:
        a, b = as_node(a), as_node(b)
    return make_node(op, [a, b], name=name)


def where(condition: TensorLike, x: TensorLike, y: TensorLike, name: str | None = None) -> Node:
    """``x`` where ``condition`` is True, else ``y``; the three broadcast together.

    Dtypes:  condition bool; x and y the same dtype (a Python number takes the other's dtype).
    Ref:     ONNX Where; numpy.where
    """
    like = x if isinstance(x, Node) else y if isinstance(y, Node) else None
    xs = as_node(x, like=like if isinstance(like, Node) else None)
    ys = as_node(y, like=xs)
    return make_node("where", [as_node(condition), xs, ys], name=name)


def neg(x: TensorLike, name: str | None = None) -> Node: return _unary("neg", x, name)
def abs(x: TensorLike, name: str | None = None) -> Node: return _unary("abs", x, name)  # noqa: A001
def sign(x: TensorLike, name: str | None = None) -> Node: return _unary("sign", x, name)
def exp(x: TensorLike, name: str | None = None) -> Node: return _unary("exp", x, name)
def log(x: TensorLike, name: str | None = None) -> Node: return _unary("log", x, name)
def log1p(x: TensorLike, name: str | None = None) -> Node: return _unary("log1p", x, name)
def expm1(x: TensorLike, name: str | None = None) -> Node: return _unary("expm1", x, name)
def sqrt(x: TensorLike, name: str | None = None) -> Node: return _unary("sqrt", x, name)
def rsqrt(x: TensorLike, name: str | None = None) -> Node: return _unary("rsqrt", x, name)
def reciprocal(x: TensorLike, name: str | None = None) -> Node: return _unary("reciprocal", x, name)
def sin(x: TensorLike, name: str | None = None) -> Node: return _unary("sin", x, name)
def cos(x: TensorLike, name: str | None = None) -> Node: return _unary("cos", x, name)
def tanh(x: TensorLike, name: str | None = None) -> Node: return _unary("tanh", x, name)
def sigmoid(x: TensorLike, name: str | None = None) -> Node: return _unary("sigmoid", x, name)
def erf(x: TensorLike, name: str | None = None) -> Node: return _unary("erf", x, name)
def relu(x: TensorLike, name: str | None = None) -> Node: return _unary("relu", x, name)
def selu(x: TensorLike, name: str | None = None) -> Node: return _unary("selu", x, name)
def silu(x: TensorLike, name: str | None = None) -> Node: return _unary("silu", x, name)
def mish(x: TensorLike, name: str | None = None) -> Node: return _unary("mish", x, name)
def softsign(x: TensorLike, name: str | None = None) -> Node: return _unary("softsign", x, name)
def hard_swish(x: TensorLike, name: str | None = None) -> Node: return _unary("hard_swish", x, name)
def floor(x: TensorLike, name: str | None = None) -> Node: return _unary("floor", x, name)
def ceil(x: TensorLike, name: str | None = None) -> Node: return _unary("ceil", x, name)
def round(x: TensorLike, name: str | None = None) -> Node: return _unary("round", x, name)  # noqa: A001
def logical_not(x: TensorLike, name: str | None = None) -> Node: return _unary("logical_not", x, name)
def identity(x: TensorLike, name: str | None = None) -> Node: return _unary("identity", x, name)


def leaky_relu(x: TensorLike, negative_slope: float = 0.01, name: str | None = None) -> Node:
    return _unary("leaky_relu", x, name, negative_slope=negative_slope)


def elu(x: TensorLike, alpha: float = 1.0, name: str | None = None) -> Node:
    return _unary("elu", x, name, alpha=alpha)


def celu(x: TensorLike, alpha: float = 1.0, name: str | None = None) -> Node:
    return _unary("celu", x, name, alpha=alpha)


def gelu(x: TensorLike, approximate: str = "none", name: str | None = None) -> Node:
    return _unary("gelu", x, name, approximate=approximate)


def softplus(x: TensorLike, beta: float = 1.0, threshold: float = 20.0,
             name: str | None = None) -> Node:
    return _unary("softplus", x, name, beta=beta, threshold=threshold)


def hard_sigmoid(x: TensorLike, alpha: float = 1 / 6, beta: float = 0.5,
                 name: str | None = None) -> Node:
    return _unary("hard_sigmoid", x, name, alpha=alpha, beta=beta)


def hard_tanh(x: TensorLike, min_val: float = -1.0, max_val: float = 1.0,
              name: str | None = None) -> Node:
    return _unary("hard_tanh", x, name, min_val=min_val, max_val=max_val)


def clip(x: TensorLike, min: float | None = None, max: float | None = None,  # noqa: A002
         name: str | None = None) -> Node:
    return _unary("clip", x, name, min=min, max=max)


def cast(x: TensorLike, dtype: Any, name: str | None = None) -> Node:
    return _unary("cast", x, name, to=dtype)


def add(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("add", a, b, name)
def sub(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("sub", a, b, name)
def mul(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("mul", a, b, name)
def div(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("div", a, b, name)
def pow(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("pow", a, b, name)  # noqa: A001
def maximum(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("maximum", a, b, name)
def minimum(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("minimum", a, b, name)
def equal(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("equal", a, b, name)
def not_equal(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("not_equal", a, b, name)
def less(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("less", a, b, name)
def less_equal(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("less_equal", a, b, name)
def greater(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("greater", a, b, name)
def greater_equal(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("greater_equal", a, b, name)
def logical_and(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("logical_and", a, b, name)
def logical_or(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("logical_or", a, b, name)
def logical_xor(a: TensorLike, b: TensorLike, name: str | None = None) -> Node: return _binary("logical_xor", a, b, name)


def add_n(xs: Sequence[TensorLike], name: str | None = None) -> Node:
    """Sum of a list of tensors (broadcast together), as ``tf.add_n``."""
    if not xs:
        raise ValueError("add_n needs at least one tensor")
    total = as_node(xs[0]) if len(xs) == 1 else add(xs[0], xs[1])
    for x in xs[2:]:
        total = add(total, x)
    return total


def _attach_docs() -> None:
    """Give each one-line frontend the doc block of its table row (shapes, dtypes, math, ref)."""
    for table in (UNARY, BINARY):
        for op, spec in table.items():
            fn = globals()[op]
            dtypes_ = ", ".join(sorted(d.name for d in spec.dtypes))
            out = "bool" if getattr(spec, "to_bool", False) else "same as input"
            fn.__doc__ = (
                f"Elementwise {op}: {spec.doc}.\n\n"
                f"Shapes:  {'x' if table is UNARY else 'a, b broadcast'} -> same (broadcast) shape\n"
                f"Dtypes:  {dtypes_}; output {out}\n"
                f"Raises:  DTypeError for other dtypes{'' if table is UNARY else ' or mixed dtypes'}"
                f"{'' if table is UNARY else '; ShapeError when a and b do not broadcast'}\n"
                f"Ref:     {spec.ref}\n"
            )


_attach_docs()


# -- gradients (d input = rule(node, dy); the driver reduces broadcast axes) ----------------------
def _rule(*ops: str):  # type: ignore[no-untyped-def]
    from graphnn.ops.registry import def_gradient

    return def_gradient(*ops)


def _f(x: Node, v: bool | Node) -> Node:
    """A 0/1 mask of x's dtype from a bool node."""
    return cast(v, x.dtype)  # type: ignore[arg-type]


def _zeros(x: Node) -> Node:
    from graphnn.ops.shape import full_like

    return full_like(x, 0.0)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@_rule("add")
def _g_add(n: Node, dy: Node) -> list[Node | None]: return [dy, dy]
@_rule("sub")
def _g_sub(n: Node, dy: Node) -> list[Node | None]: return [dy, neg(dy)]
@_rule("mul")
def _g_mul(n: Node, dy: Node) -> list[Node | None]: return [mul(dy, n.inputs[1]), mul(dy, n.inputs[0])]


@_rule("div")
def _g_div(n: Node, dy: Node) -> list[Node | None]:
    a, b = n.inputs
    return [div(dy, b), neg(div(mul(dy, n), b))]


@_rule("pow")
def _g_pow(n: Node, dy: Node) -> list[Node | None]:
    # d/db a**b = a**b * log(a); taken as 0 where a <= 0 (where log is undefined), as JAX does.
    a, b = n.inputs
    da = mul(dy, mul(b, pow(a, sub(b, 1.0))))
    safe_log = where(greater(a, 0.0), log(where(greater(a, 0.0), a, 1.0)), 0.0)
    return [da, mul(dy, mul(n, safe_log))]


def _minmax(n: Node, dy: Node, wins: Callable[[Node, Node], Node]) -> list[Node | None]:
    # Ties split the gradient in half, as PyTorch's maximum/minimum.
    a, b = n.inputs
    tie = mul(_f(dy, equal(a, b)), 0.5)
    return [mul(dy, add(_f(dy, wins(a, b)), tie)), mul(dy, add(_f(dy, wins(b, a)), tie))]


@_rule("maximum")
def _g_maximum(n: Node, dy: Node) -> list[Node | None]: return _minmax(n, dy, greater)
@_rule("minimum")
def _g_minimum(n: Node, dy: Node) -> list[Node | None]: return _minmax(n, dy, less)
@_rule("where")
def _g_where(n: Node, dy: Node) -> list[Node | None]:
    c = n.inputs[0]
    return [None, where(c, dy, 0.0), where(c, 0.0, dy)]


@_rule("neg")
def _g_neg(n: Node, dy: Node) -> list[Node | None]: return [neg(dy)]
@_rule("abs")
def _g_abs(n: Node, dy: Node) -> list[Node | None]: return [mul(dy, sign(n.inputs[0]))]
@_rule("sign", "floor", "ceil", "round")
def _g_step(n: Node, dy: Node) -> list[Node | None]: return [_zeros(n.inputs[0])]
@_rule("identity")
def _g_identity(n: Node, dy: Node) -> list[Node | None]: return [dy]
@_rule("exp")
def _g_exp(n: Node, dy: Node) -> list[Node | None]: return [mul(dy, n)]
@_rule("log")
def _g_log(n: Node, dy: Node) -> list[Node | None]: return [div(dy, n.inputs[0])]
@_rule("log1p")
def _g_log1p(n: Node, dy: Node) -> list[Node | None]: return [div(dy, add(n.inputs[0], 1.0))]
@_rule("expm1")
def _g_expm1(n: Node, dy: Node) -> list[Node | None]: return [mul(dy, add(n, 1.0))]
@_rule("sqrt")
def _g_sqrt(n: Node, dy: Node) -> list[Node | None]: return [div(mul(dy, 0.5), n)]
@_rule("rsqrt")
def _g_rsqrt(n: Node, dy: Node) -> list[Node | None]: return [mul(dy, div(mul(n, -0.5), n.inputs[0]))]
@_rule("reciprocal")
def _g_reciprocal(n: Node, dy: Node) -> list[Node | None]: return [neg(mul(dy, mul(n, n)))]
@_rule("sin")
def _g_sin(n: Node, dy: Node) -> list[Node | None]: return [mul(dy, cos(n.inputs[0]))]
@_rule("cos")
def _g_cos(n: Node, dy: Node) -> list[Node | None]: return [neg(mul(dy, sin(n.inputs[0])))]
@_rule("tanh")
def _g_tanh(n: Node, dy: Node) -> list[Node | None]: return [mul(dy, sub(1.0, mul(n, n)))]
@_rule("sigmoid")
def _g_sigmoid(n: Node, dy: Node) -> list[Node | None]: return [mul(dy, mul(n, sub(1.0, n)))]


@_rule("erf")
def _g_erf(n: Node, dy: Node) -> list[Node | None]:
    x = n.inputs[0]
    return [mul(dy, mul(exp(neg(mul(x, x))), 2 / math.sqrt(math.pi)))]


@_rule("relu")
def _g_relu(n: Node, dy: Node) -> list[Node | None]:
    # relu(x) > 0 exactly where x > 0 (NaN and -0.0 included); reading the output, as PyTorch's
    # threshold_backward does, leaves x to relu alone, so a convolution or matmul before it
    # can take the relu as its fused epilogue in a training graph too
    return [mul(dy, _f(dy, greater(n, 0)))]


@_rule("leaky_relu")
def _g_leaky_relu(n: Node, dy: Node) -> list[Node | None]:
    return [where(greater_equal(n.inputs[0], 0.0), dy, mul(dy, n.attrs["negative_slope"]))]


@_rule("elu")
def _g_elu(n: Node, dy: Node) -> list[Node | None]:
    return [where(greater(n.inputs[0], 0.0), dy, mul(dy, add(n, n.attrs["alpha"])))]


@_rule("selu")
def _g_selu(n: Node, dy: Node) -> list[Node | None]:
    return [where(greater(n.inputs[0], 0.0), mul(dy, _SELU_SCALE),
                  mul(dy, add(n, _SELU_SCALE * _SELU_ALPHA)))]


@_rule("celu")
def _g_celu(n: Node, dy: Node) -> list[Node | None]:
    x = n.inputs[0]
    return [where(greater(x, 0.0), dy, mul(dy, exp(div(x, n.attrs["alpha"]))))]


@_rule("gelu")
def _g_gelu(n: Node, dy: Node) -> list[Node | None]:
    x = n.inputs[0]
    if n.attrs["approximate"] == "tanh":
        t = tanh(mul(add(x, mul(pow(x, 3.0), 0.044715)), _SQRT_2_OVER_PI))
        du = mul(add(mul(mul(x, x), 3 * 0.044715), 1.0), _SQRT_2_OVER_PI)
        d = add(mul(add(t, 1.0), 0.5), mul(mul(x, 0.5), mul(sub(1.0, mul(t, t)), du)))
        return [mul(dy, d)]
    cdf = mul(add(erf(mul(x, 1 / math.sqrt(2))), 1.0), 0.5)
    pdf = mul(exp(mul(mul(x, x), -0.5)), 1 / math.sqrt(2 * math.pi))
    return [mul(dy, add(cdf, mul(x, pdf)))]


@_rule("silu")
def _g_silu(n: Node, dy: Node) -> list[Node | None]:
    x = n.inputs[0]
    s = sigmoid(x)
    return [mul(dy, add(s, mul(x, mul(s, sub(1.0, s)))))]


@_rule("mish")
def _g_mish(n: Node, dy: Node) -> list[Node | None]:
    x = n.inputs[0]
    t = tanh(softplus(x))
    return [mul(dy, add(t, mul(x, mul(sub(1.0, mul(t, t)), sigmoid(x)))))]


@_rule("softplus")
def _g_softplus(n: Node, dy: Node) -> list[Node | None]:
    x, beta = n.inputs[0], n.attrs["beta"]
    linear = greater(mul(x, beta), n.attrs["threshold"])
    return [where(linear, dy, mul(dy, sigmoid(mul(x, beta))))]


@_rule("softsign")
def _g_softsign(n: Node, dy: Node) -> list[Node | None]:
    d = add(abs(n.inputs[0]), 1.0)
    return [div(dy, mul(d, d))]


@_rule("hard_sigmoid")
def _g_hard_sigmoid(n: Node, dy: Node) -> list[Node | None]:
    z = add(mul(n.inputs[0], n.attrs["alpha"]), n.attrs["beta"])
    inside = logical_and(greater(z, 0.0), less(z, 1.0))
    return [mul(dy, mul(_f(dy, inside), n.attrs["alpha"]))]


@_rule("hard_swish")
def _g_hard_swish(n: Node, dy: Node) -> list[Node | None]:
    x = n.inputs[0]  # PyTorch: 0 below -3, x/3 + 1/2 up to 3, 1 above
    mid = where(less_equal(x, 3.0), add(div(x, 3.0), 0.5), 1.0)
    return [mul(dy, where(less(x, -3.0), 0.0, mid))]


@_rule("hard_tanh")
def _g_hard_tanh(n: Node, dy: Node) -> list[Node | None]:
    x = n.inputs[0]
    inside = logical_and(greater(x, n.attrs["min_val"]), less(x, n.attrs["max_val"]))
    return [mul(dy, _f(dy, inside))]


@_rule("clip")
def _g_clip(n: Node, dy: Node) -> list[Node | None]:
    x, lo, hi = n.inputs[0], n.attrs["min"], n.attrs["max"]
    keep = dy  # PyTorch: the gradient passes where min <= x <= max
    if lo is not None:
        keep = mul(keep, _f(dy, greater_equal(x, lo)))
    if hi is not None:
        keep = mul(keep, _f(dy, less_equal(x, hi)))
    return [keep]


@_rule("cast")
def _g_cast(n: Node, dy: Node) -> list[Node | None]:
    x = n.inputs[0]
    return [cast(dy, x.dtype) if x.dtype.is_float else None]
