"""The op registry: one ``OpDef`` per op, and ``make_node``, the only way nodes are built.

An ``OpDef`` holds everything graphnn knows about an op in one place: its attribute schema, its
shape/dtype rule, flags the passes consult (``elementwise``, ``commutative``, ``pure``), and its
numpy reference implementation (the oracle of every backend). Gradient rules and lowerings are
attached by later stages under the same name.

``make_node`` validates attributes, infers the output type, and turns any ``ShapeError``,
``DTypeError`` or ``AttrError`` raised by the rule into one whose message names the op, the node
it would have become and the types of its inputs, e.g.::

    ShapeError: matmul (node %3): inner dimensions differ: 784 vs 100
      inputs: %x: f32[32,784], %w: f32[100,128]
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from graphnn.dtypes import DType, as_dtype
from graphnn.errors import AttrError, DTypeError, GraphError, ShapeError
from graphnn.ir import ArrayValue, Attrs, Graph, Node, Shape, get_default_graph

InferFn = Callable[[Sequence[Node], Attrs], tuple[Shape, DType]]
# (forward node, gradient of its output) -> one gradient (or None) per input, before the driver
# reduces broadcast dimensions; see graphnn.autodiff.
GradFn = Callable[[Node, Node], Sequence[Node | None]]
_REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """One attribute of an op: a converter to the canonical value, and a default.

    ``convert`` turns what a user may pass (a list, a numpy integer) into the canonical, hashable
    form stored in the node, raising ``AttrError`` for values it cannot accept.
    """

    convert: Callable[[Any], Any]
    default: Any = _REQUIRED


@dataclass(frozen=True)
class OpDef:
    """Everything about one op.

    Attributes:
        name: the op name printed in the IR.
        infer: ``(inputs, attrs) -> (shape, dtype)``; raises ShapeError/DTypeError/AttrError.
        reference: numpy implementation ``fn(*arrays, **attrs) -> ndarray`` (random ops also get
            ``counter=``, the session's run counter); None for ops the backend interprets
            (placeholder, variable).
        attrs: attribute schema.
        arity: (min, max) number of inputs; max None for variadic ops.
        elementwise: output element i depends only on input elements i (after broadcasting).
        commutative: binary op whose inputs may be swapped.
        pure: no state and no randomness: may be folded, merged by CSE, or dropped when unused.
        random: draws random numbers (reference receives ``counter``).
        writes_input: index of the variable input this op assigns (assign, assign_add).
        no_value: fetching it returns None (``group``).
        nondiff_inputs: inputs that carry no gradient (indices, masks, conditions).
    """

    name: str
    infer: InferFn
    reference: Callable[..., Any] | None
    attrs: Mapping[str, Attr] = field(default_factory=dict)
    arity: tuple[int, int | None] = (1, 1)
    elementwise: bool = False
    commutative: bool = False
    pure: bool = True
    random: bool = False
    writes_input: int | None = None
    no_value: bool = False
    nondiff_inputs: tuple[int, ...] = ()
    doc: str = ""
    gradient: GradFn | None = None

    def check_attrs(self, given: Mapping[str, Any]) -> Attrs:
        unknown = set(given) - set(self.attrs)
        if unknown:
            raise AttrError(
                f"unknown attribute(s) {sorted(unknown)}; {self.name} takes {sorted(self.attrs)}"
            )
        out: dict[str, Any] = {}
        for key, spec in self.attrs.items():
            if key in given:
                try:
                    out[key] = spec.convert(given[key])
                except AttrError as e:
                    raise AttrError(f"attribute {key}={given[key]!r}: {e}") from None
            elif spec.default is _REQUIRED:
                raise AttrError(f"missing required attribute {key!r}")
            else:
                out[key] = spec.default
        return Attrs(out)


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    """Add an op to the registry; registering a name twice is a programming error."""
    if opdef.name in _REGISTRY:
        raise GraphError(f"op {opdef.name!r} is registered twice")
    _REGISTRY[opdef.name] = opdef
    return opdef


def def_gradient(*ops: str) -> Callable[[GradFn], GradFn]:
    """Decorator attaching a gradient rule to registered ops (next to their definition)."""

    def attach(fn: GradFn) -> GradFn:
        for op in ops:
            _REGISTRY[op] = replace(get_op(op), gradient=fn)
        return fn

    return attach


def get_op(name: str) -> OpDef:
    """The ``OpDef`` called ``name``; raises GraphError for an unknown op."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GraphError(f"unknown op {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    """A copy of the registry, name -> OpDef."""
    return dict(_REGISTRY)


# -- scopes: the user's layer path, recorded on every node built inside --------------------------

_local = threading.local()


@contextlib.contextmanager
def name_scope(scope: str, absolute: bool = False) -> Iterator[str]:
    """Record ``scope`` (nested scopes join with ``.``) on every node built inside the block;
    ``absolute=True`` replaces the enclosing scopes (a module's full path).

    Scopes show as trailing comments in the text IR and in error messages, so a node can be traced
    to the user's layer (``features.0.conv``).
    """
    saved: list[str] = _local.__dict__.setdefault("scopes", [])
    _local.scopes = ([] if absolute else list(saved)) + ([scope] if scope else [])
    try:
        yield ".".join(_local.scopes)
    finally:
        _local.scopes = saved


def current_scope() -> str | None:
    stack = _local.__dict__.get("scopes")
    return ".".join(stack) if stack else None


# -- building nodes -------------------------------------------------------------------------------


def make_node(
    op: str,
    inputs: Sequence[Node],
    attrs: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    graph: Graph | None = None,
    origin: tuple[str, ...] = (),
) -> Node:
    """Validate, infer and append one node; the single entry point for building nodes.

    Raises:  ShapeError, DTypeError, AttrError with the op, node and input types in the message;
             GraphError if inputs come from different graphs or ``op`` is unknown.
    """
    opdef = get_op(op)
    g = graph or (inputs[0].graph if inputs else None) or get_default_graph()
    for i in inputs:
        if not isinstance(i, Node):
            raise GraphError(f"{op}: input {i!r} is not a graphnn node")
        if i.graph is not g:
            raise GraphError(
                f"{op}: input {describe(i)} belongs to graph {i.graph.name if i.graph else None!r}"
                f", not {g.name!r}; build one computation inside one `with Graph():` block"
            )
    ident = f"'{name}'" if name else f"%{len(g.nodes)}"
    try:
        lo, hi = opdef.arity
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any number'}"
            raise AttrError(f"takes {want} inputs, got {len(inputs)}")
        canonical = opdef.check_attrs(attrs or {})
        shape, dtype = opdef.infer(inputs, canonical)
    except (ShapeError, DTypeError, AttrError) as e:
        raise type(e)(context_message(op, ident, inputs, str(e))) from None
    node_name = g.unique_name(name) if name is not None else None
    node = Node(op, tuple(inputs), canonical, tuple(shape), dtype, node_name, current_scope(), g,
                origin)
    return g.add(node)


def describe(node: Node) -> str:
    """``%x: f32[?,784]``: the node as the text IR names it."""
    if node.name is not None:
        label = node.name
    elif node.graph is not None:
        label = str(node.graph.nodes.index(node))
    else:
        label = "?"
    return f"%{label}: {node.type_str}"


def context_message(op: str, ident: str, inputs: Sequence[Node], msg: str) -> str:
    where = f"{op} (node {ident}"
    scope = current_scope()
    if scope:
        where += f" in {scope}"
    lines = [f"{where}): {msg}"]
    if inputs:
        lines.append("  inputs: " + ", ".join(describe(i) for i in inputs))
    return "\n".join(lines)


# -- attribute converters -------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def int_(v: Any) -> int:
    if not _is_int(v):
        raise AttrError(f"expected an int, got {type(v).__name__}")
    return int(v)


def float_(v: Any) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise AttrError(f"expected a number, got {type(v).__name__}")
    return float(v)


def bool_(v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise AttrError(f"expected a bool, got {type(v).__name__}")
    return bool(v)


def ints(v: Any) -> tuple[int, ...]:
    if _is_int(v):
        return (int(v),)
    if not isinstance(v, (tuple, list)) or not all(_is_int(x) for x in v):
        raise AttrError(f"expected a tuple of ints, got {v!r}")
    return tuple(int(x) for x in v)


def optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else convert(v)


def one_of(*choices: str) -> Callable[[Any], str]:
    def convert(v: Any) -> str:
        if v not in choices:
            raise AttrError(f"expected one of {list(choices)}, got {v!r}")
        return str(v)

    return convert


def dtype_(v: Any) -> DType:
    try:
        return as_dtype(v)
    except DTypeError as e:
        raise AttrError(str(e)) from None


def array_(v: Any) -> ArrayValue:
    if isinstance(v, ArrayValue):
        return v
    if isinstance(v, np.ndarray):
        return ArrayValue(v)
    raise AttrError(f"expected an ArrayValue or ndarray, got {type(v).__name__}")


def nested_ints(v: Any) -> Any:
    """A possibly nested tuple of ints or None (slice bounds)."""
    if v is None or _is_int(v):
        return None if v is None else int(v)
    if isinstance(v, (tuple, list)):
        return tuple(nested_ints(x) for x in v)
    raise AttrError(f"expected ints or None, got {v!r}")
