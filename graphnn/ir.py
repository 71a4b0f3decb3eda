"""The graph IR: ``Node`` (one typed value), ``Graph`` (nodes in topological order), attributes.

A node is built fully typed: op name, input nodes, immutable attributes, output shape and dtype.
Nodes compare by identity (``eq=False``): structural equality would silently merge nodes in
dicts; common-subexpression elimination is an explicit pass that uses ``Node.key``.

Every op has exactly one output. Ops that ONNX defines with several outputs (``split``) are built
by the frontend from single-output nodes, which keeps every backend's value model to "one node,
one buffer".

Shapes are tuples of ``int`` or ``None``; ``None`` is a dimension known only when ``run`` is fed
(typically the batch dimension of a placeholder).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from graphnn.dtypes import DType
from graphnn.errors import GraphError

Dim = int | None
Shape = tuple[Dim, ...]

# Letters, digits, '_' and '.', not all digits (those are the text IR's ids of unnamed nodes).
_NAME_RE = re.compile(r"(?!\d+\Z)[A-Za-z0-9_][A-Za-z0-9_.]*\Z")


class ArrayValue:
    """An immutable numpy array usable as a node attribute (constants, initial values).

    Hashes and compares by dtype, shape and bytes, so CSE can merge equal constants and a parsed
    graph compares equal to the printed one. The wrapped array is read-only.
    """

    __slots__ = ("array", "_digest")

    def __init__(self, array: np.ndarray) -> None:
        arr = np.array(array, copy=True, order="C")
        arr.setflags(write=False)
        self.array = arr
        self._digest = hashlib.blake2b(
            arr.tobytes() + str((arr.dtype.str, arr.shape)).encode(), digest_size=16
        ).digest()

    def __hash__(self) -> int:
        return hash(self._digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArrayValue) and self._digest == other._digest

    def __repr__(self) -> str:
        return f"ArrayValue({self.array.dtype}{list(self.array.shape)})"


class Attrs(Mapping[str, Any]):
    """An immutable, hashable mapping of attribute names to values, kept sorted by name.

    Values are ints, floats, bools, strings, None, ``DType``, ``ArrayValue`` or tuples of these.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: tuple[tuple[str, Any], ...] = tuple(sorted(pairs))

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return _attr_eq(self._items, other._items)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Attrs({dict(self._items)!r})"


def _attr_eq(a: Any, b: Any) -> bool:
    """Attribute equality where float NaN equals NaN and -0.0 differs from 0.0 (bitwise)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_attr_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    return type(a) is type(b) and a == b


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """One value of the graph: ``op(inputs)[attrs]`` of static ``shape`` and ``dtype``.

    Build nodes with the op functions (``graphnn.matmul``, ``x + y``, ...), never directly:
    those validate attributes and infer the shape and dtype. ``name`` is unique in its graph
    (or None); ``scope`` is the user's layer path (``features.0.conv``) shown in dumps.
    Nodes support ``+ - * / ** @``, unary minus, comparisons through ``graphnn.less`` and
    friends (``==`` stays identity, as in TensorFlow), indexing and slicing, ``.T``,
    ``.reshape``.
    """

    op: str
    inputs: tuple[Node, ...]
    attrs: Attrs
    shape: Shape
    dtype: DType
    name: str | None = None
    scope: str | None = None
    graph: Graph | None = field(default=None, repr=False)
    # Provenance: the source nodes a pass built this node from ("%3 add"), shown in dumps.
    origin: tuple[str, ...] = field(default=(), repr=False)

    # numpy must hand ``ndarray + node`` to ``Node.__radd__`` instead of broadcasting over it.
    __array_ufunc__ = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def key(self) -> tuple[Any, ...]:
        """Structural identity for CSE: equal keys compute equal values (for pure ops)."""
        return (self.op, tuple(id(i) for i in self.inputs), self.attrs, self.shape, self.dtype)

    @property
    def type_str(self) -> str:
        """``f32[?,784]``: dtype and shape as the text IR prints them."""
        return f"{self.dtype.value}[{','.join('?' if d is None else str(d) for d in self.shape)}]"

    def __repr__(self) -> str:
        label = self.name if self.name is not None else f"<{self.op}>"
        return f"<graphnn.Node %{label}: {self.type_str} = {self.op}>"

    def __bool__(self) -> bool:
        raise TypeError(
            f"the truth value of symbolic tensor {self!r} is unknown until the graph runs; "
            "use graphnn.where or compare results after Session.run"
        )

    # -- Python operators: thin calls into graphnn.ops.api, defined in one place there. --
    def __add__(self, o: Any) -> Node: return _ops().add(self, o)
    def __radd__(self, o: Any) -> Node: return _ops().add(o, self)
    def __sub__(self, o: Any) -> Node: return _ops().sub(self, o)
    def __rsub__(self, o: Any) -> Node: return _ops().sub(o, self)
    def __mul__(self, o: Any) -> Node: return _ops().mul(self, o)
    def __rmul__(self, o: Any) -> Node: return _ops().mul(o, self)
    def __truediv__(self, o: Any) -> Node: return _ops().div(self, o)
    def __rtruediv__(self, o: Any) -> Node: return _ops().div(o, self)
    def __pow__(self, o: Any) -> Node: return _ops().pow(self, o)
    def __rpow__(self, o: Any) -> Node: return _ops().pow(o, self)
    def __matmul__(self, o: Any) -> Node: return _ops().matmul(self, o)
    def __rmatmul__(self, o: Any) -> Node: return _ops().matmul(o, self)
    def __neg__(self) -> Node: return _ops().neg(self)
    def __abs__(self) -> Node: return _ops().abs(self)
    def __lt__(self, o: Any) -> Node: return _ops().less(self, o)
    def __le__(self, o: Any) -> Node: return _ops().less_equal(self, o)
    def __gt__(self, o: Any) -> Node: return _ops().greater(self, o)
    def __ge__(self, o: Any) -> Node: return _ops().greater_equal(self, o)
    def __getitem__(self, index: Any) -> Node: return _ops().getitem(self, index)

    @property
    def T(self) -> Node:  # noqa: N802 - numpy's name
        """The transpose (all axes reversed), as ``ndarray.T``."""
        return _ops().transpose(self)

    def reshape(self, *shape: Any) -> Node:
        """``x.reshape(2, -1)`` or ``x.reshape((2, -1))``, as ``ndarray.reshape``."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)


def _ops() -> Any:
    from graphnn.ops import api

    return api


class Graph:
    """A static dataflow graph: nodes in topological (creation) order, optional outputs.

    Use as a context manager to make it the default graph, as in TensorFlow 1::

        with graphnn.Graph("mlp") as g:
            x = graphnn.placeholder((None, 784), name="x")
            y = graphnn.relu(x @ w)

    Graph algorithms (reachability, topological order, cycle checks) go through networkx on the
    view returned by ``to_networkx``; the IR itself is stored as the node list.
    """

    def __init__(self, name: str = "main", seed: int = 0) -> None:
        self.name = name
        self.seed = seed  # default seed of random ops (dropout) built in this graph
        self.nodes: list[Node] = []
        self.outputs: tuple[Node, ...] = ()
        self.meta: dict[str, object] = {}  # analysis results of passes (e.g. the memory plan)
        self._names: dict[str, Node] = {}
        self._nx: nx.DiGraph | None = None

    # -- building --
    def add(self, node: Node) -> Node:
        """Append a node built by ``ops.registry.make_node`` (inputs must already be here)."""
        for inp in node.inputs:
            if inp.graph is not self:
                raise GraphError(
                    f"{node.op}: input {inp!r} belongs to another graph than {self.name!r}; "
                    "build all nodes of one computation inside the same `with Graph():` block"
                )
        if node.name is not None:
            if node.name in self._names:
                raise GraphError(f"{node.op}: a node named {node.name!r} already exists")
            self._names[node.name] = node
        self.nodes.append(node)
        self._nx = None
        return node

    def unique_name(self, base: str) -> str:
        """``base`` if unused in this graph, else ``base_1``, ``base_2``, ..."""
        check_name(base)
        if base not in self._names:
            return base
        i = 1
        while f"{base}_{i}" in self._names:
            i += 1
        return f"{base}_{i}"

    def next_seed(self) -> int:
        """A deterministic seed for the next random op: derived from the graph seed and position."""
        return (self.seed * 1_000_003 + len(self.nodes)) & 0x7FFFFFFF

    def get(self, name: str) -> Node:
        """The node called ``name``; raises GraphError naming close matches when absent."""
        try:
            return self._names[name]
        except KeyError:
            raise GraphError(
                f"graph {self.name!r} has no node named {name!r}; named nodes: "
                f"{', '.join(sorted(self._names)[:20]) or '(none)'}"
            ) from None

    # -- queries --
    def by_op(self, *ops: str) -> list[Node]:
        return [n for n in self.nodes if n.op in ops]

    @property
    def placeholders(self) -> list[Node]:
        return self.by_op("placeholder")

    @property
    def variables(self) -> list[Node]:
        return self.by_op("variable")

    def to_networkx(self) -> nx.DiGraph:
        """A DiGraph with an edge per data dependency (cached until a node is added)."""
        if self._nx is None:
            g = nx.DiGraph()
            for i, n in enumerate(self.nodes):
                g.add_node(n, index=i)
            g.add_edges_from((inp, n) for n in self.nodes for inp in n.inputs)
            self._nx = g
        return self._nx

    def subgraph_order(self, fetches: Sequence[Node]) -> list[Node]:
        """The nodes ``fetches`` depend on (fetches included), in graph order."""
        g = self.to_networkx()
        needed: set[Node] = set(fetches)
        for f in fetches:
            if f not in g:
                raise GraphError(f"fetch {f!r} is not a node of graph {self.name!r}")
            needed |= nx.ancestors(g, f)
        return [n for n in self.nodes if n in needed]

    def topological_order(self) -> list[Node]:
        """A topological order that keeps creation order where dependencies allow it."""
        g = self.to_networkx()
        index = {n: i for i, n in enumerate(self.nodes)}
        return list(nx.lexicographical_topological_sort(g, key=index.__getitem__))

    def structurally_equal(self, other: Graph) -> bool:
        """Same ops, attributes, types, names, scopes and wiring, node by node (provenance, which is
        metadata, is not compared)."""
        if len(self.nodes) != len(other.nodes) or self.name != other.name:
            return False
        pos_a = {n: i for i, n in enumerate(self.nodes)}
        pos_b = {n: i for i, n in enumerate(other.nodes)}
        for a, b in zip(self.nodes, other.nodes):
            fields = ((n.op, n.shape, n.dtype, n.name, n.scope) for n in (a, b))
            if next(fields) != next(fields):
                return False
            if a.attrs != b.attrs:
                return False
            if [pos_a[i] for i in a.inputs] != [pos_b[i] for i in b.inputs]:
                return False
        return [pos_a[o] for o in self.outputs] == [pos_b[o] for o in other.outputs]

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __str__(self) -> str:
        from graphnn.text_ir import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return f"<graphnn.Graph {self.name!r}: {len(self.nodes)} nodes>"

    # -- default-graph context --
    def __enter__(self) -> Graph:
        _stack().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _stack().pop()

    def as_default(self) -> Graph:
        """Alias of the context manager, as ``tf.Graph.as_default``."""
        return self


def check_name(name: str) -> str:
    """Names hold letters, digits, ``_`` and ``.`` and are not all digits (``0.weight`` is fine)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise GraphError(
            f"invalid node name {name!r}: names contain only letters, digits, '_' and '.' and "
            "are not all digits"
        )
    return name


_local = threading.local()
_global_default: list[Graph] = [Graph("main")]


def _stack() -> list[Graph]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    stack: list[Graph] = _local.stack
    return stack


def get_default_graph() -> Graph:
    """The innermost ``with Graph():`` graph of this thread, else the process-wide default."""
    stack = _stack()
    return stack[-1] if stack else _global_default[0]


def reset_default_graph() -> Graph:
    """Replace the process-wide default graph by a new empty one and return it."""
    _global_default[0] = Graph("main")
    return _global_default[0]


def format_shape(shape: Shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"
