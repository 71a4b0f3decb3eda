"""The text form of a graph: ``print_graph`` writes it, ``parse_graph`` reads it back.

::

    graph mlp {
      %x: f32[?,784] = placeholder()
      %w1: f32[784,10] = variable[init=array<f32[784,10]>(...), trainable=true]()
      %2: f32[?,10] = matmul(%x, %w1)                      # dense_1
      %3: f32[?,10] = softmax[axis=-1](%2)                  # dense_1
      return %3
    }

One line per node: ``%id: dtype[shape] = op[attrs](inputs)``, the user's layer as a trailing
comment. ``id`` is the node's name, or its position for unnamed nodes. Arrays (constant values,
initial values) print inline up to ``inline_limit`` elements and as ``(...)`` beyond;
``parse_graph`` takes the elided ones from its ``arrays`` argument, keyed by node id. Floats
print in numpy's shortest round-trip form, so a parsed graph equals the printed one bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from graphnn.dtypes import DType
from graphnn.errors import GraphnnError, ParseError
from graphnn.ir import ArrayValue, Graph, Node

INLINE_LIMIT = 8


def dump(graph: Graph, file: Any = None) -> None:
    """Print the text IR of ``graph`` (fused kernels with their bodies indented)."""
    print(print_graph(graph), file=file)


def node_id(node: Node, index: int) -> str:
    return node.name if node.name is not None else str(index)


def print_graph(graph: Graph, inline_limit: int = INLINE_LIMIT) -> str:
    """The text IR of ``graph`` (see the module docstring)."""
    from graphnn.ops.fused import FusedBody

    ids = {n: node_id(n, i) for i, n in enumerate(graph.nodes)}
    lines = [f"graph {graph.name} {{"]
    for n in graph.nodes:
        body = next((v for v in n.attrs.values() if isinstance(v, FusedBody)), None)
        attrs = ", ".join(f"{k}={format_value(v, inline_limit)}" for k, v in n.attrs.items()
                          if not isinstance(v, FusedBody))
        text = f"  %{ids[n]}: {n.type_str} = {n.op}"
        text += f"[{attrs}]" if attrs else ""
        text += "(" + ", ".join(f"%{ids[i]}" for i in n.inputs) + ")"
        text += " {" if body is not None else ""
        comment = (n.scope or "") + (" <- " + ", ".join(n.origin) if _telling(n) else "")
        if comment:
            text = f"{text:<60}  # {comment.strip()}"
        lines.append(text)
        if body is not None:  # the kernel's body, indented under the fused node
            lines.extend("  " + line for line in print_graph(body.graph).splitlines()[1:-1])
            lines.append("  }")
    if graph.outputs:
        lines.append("  return " + ", ".join(f"%{ids[o]}" for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines)


def _telling(n: Node) -> bool:
    """Provenance worth printing: several sources, or a source of another op."""
    return len(n.origin) > 1 or (len(n.origin) == 1 and not n.origin[0].endswith(f" {n.op}"))


def format_value(v: Any, inline_limit: int = INLINE_LIMIT) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, DType):
        return v.value
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _format_float(np.float64(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, tuple):
        inner = ", ".join(format_value(x, inline_limit) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, ArrayValue):
        arr = v.array
        head = f"array<{DType(_short(arr.dtype)).value}[{','.join(map(str, arr.shape))}]>"
        if arr.size > inline_limit:
            return head + "(...)"
        return head + "(" + ", ".join(_format_scalar(x) for x in arr.reshape(-1)) + ")"
    raise GraphnnError(f"cannot print attribute value {v!r}")


def _short(npd: np.dtype) -> str:
    from graphnn.dtypes import as_dtype

    return as_dtype(npd).value


def _format_float(x: np.floating) -> str:
    s = str(x)  # numpy's shortest repr that round-trips in x's own precision
    return s if any(c in s for c in ".eninf") else s + ".0"


def _format_scalar(x: Any) -> str:
    if isinstance(x, np.bool_):
        return "true" if x else "false"
    if isinstance(x, np.floating):
        return _format_float(x)
    return str(int(x))


# -- parser ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#.*)
  | (?P<ref>%[A-Za-z0-9_.]+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<ellipsis>\.\.\.)
  | (?P<number>-?(?:inf|nan)\b|-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[:=\[\](){},<>?])
""", re.VERBOSE)


class _Line:
    """Tokens of one line with a cursor; errors name the line and column."""

    def __init__(self, text: str, lineno: int) -> None:
        self.text, self.lineno = text, lineno
        self.tokens: list[tuple[str, str, int]] = []
        self.comment: str | None = None
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise self.error(f"unexpected character {text[pos]!r}", pos)
            kind = m.lastgroup or ""
            if kind == "comment":
                self.comment = m.group()[1:].strip()
            elif kind != "ws":
                self.tokens.append((kind, m.group(), pos))
            pos = m.end()
        self.i = 0

    def error(self, msg: str, col: int | None = None) -> ParseError:
        if col is None:
            col = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)
        return ParseError(f"line {self.lineno}, column {col + 1}: {msg}\n  {self.text}\n"
                          f"  {' ' * col}^")

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None, kind: str | None = None) -> str:
        if self.i >= len(self.tokens):
            raise self.error(f"expected {expected or kind}, found end of line")
        k, v, _ = self.tokens[self.i]
        if (expected is not None and v != expected) or (kind is not None and k != kind):
            raise self.error(f"expected {expected or kind}, found {v!r}")
        self.i += 1
        return v

    def done(self) -> bool:
        return self.i >= len(self.tokens)


def _parse_type(line: _Line) -> tuple[DType, tuple[int | None, ...]]:
    word = line.take(kind="word")
    try:
        dtype = DType(word)
    except ValueError:
        raise line.error(f"unknown dtype {word!r}") from None
    line.take("[")
    dims: list[int | None] = []
    while line.peek() != "]":
        tok = line.take()
        dims.append(None if tok == "?" else int(tok))
        if line.peek() == ",":
            line.take(",")
    line.take("]")
    return dtype, tuple(dims)


def _parse_value(line: _Line, node_key: str, arrays: Mapping[str, np.ndarray]) -> Any:
    tok = line.peek()
    kind = line.tokens[line.i][0] if tok is not None else ""
    if tok == "(":
        line.take("(")
        items = []
        while line.peek() != ")":
            items.append(_parse_value(line, node_key, arrays))
            if line.peek() == ",":
                line.take(",")
        line.take(")")
        return tuple(items)
    if tok == "array":
        return _parse_array(line, node_key, arrays)
    line.take()
    if kind == "string":
        return json.loads(tok)  # type: ignore[arg-type]
    if kind == "number":
        assert tok is not None
        return int(tok) if re.fullmatch(r"-?\d+", tok) else float(tok)
    words = {"true": True, "false": False, "none": None}
    if tok in words:
        return words[tok]
    try:
        return DType(tok)
    except ValueError:
        raise line.error(f"unknown value {tok!r}") from None


def _parse_array(line: _Line, node_key: str, arrays: Mapping[str, np.ndarray]) -> ArrayValue:
    line.take("array")
    line.take("<")
    dtype, shape = _parse_type(line)
    line.take(">")
    line.take("(")
    if line.peek() == "...":
        line.take("...")
        line.take(")")
        if node_key not in arrays:
            raise line.error(f"array of %{node_key} was elided; pass it as arrays[{node_key!r}]")
        arr = np.asarray(arrays[node_key])
        if arr.shape != shape:
            raise line.error(f"arrays[{node_key!r}] has shape {arr.shape}, expected {shape}")
        return ArrayValue(arr.astype(dtype.np))
    values: list[Any] = []
    while line.peek() != ")":
        values.append(_parse_value(line, node_key, arrays))
        if line.peek() == ",":
            line.take(",")
    line.take(")")
    return ArrayValue(np.array(values, dtype=dtype.np).reshape([d or 0 for d in shape]))


def parse_graph(text: str, arrays: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Read the text IR back into a ``Graph`` (every node re-inferred and checked).

    Args:     text: what ``print_graph`` wrote; arrays: values of elided arrays by node id.
    Raises:   ParseError naming the line and column, also when a declared type disagrees with
              the type the op infers.
    """
    from graphnn.ops.registry import make_node, name_scope
    from graphnn.ops.source import placeholder

    arrays = arrays or {}
    lines = [(i + 1, s) for i, s in enumerate(text.splitlines()) if s.strip()]
    if not lines:
        raise ParseError("empty text")
    head = _Line(lines[0][1], lines[0][0])
    head.take("graph")
    graph = Graph(head.take(kind="word"))
    head.take("{")
    env: dict[str, Node] = {}
    i, closed = 1, False
    with graph:
        while i < len(lines):
            lineno, raw = lines[i]
            line = _Line(raw, lineno)
            i += 1
            if line.peek() == "}":
                closed = True
                break
            if line.peek() == "return":
                line.take("return")
                graph.outputs = tuple(_ref(line, env) for _ in _comma_list(line))
                continue
            extra: dict[str, Any] = {}
            if line.tokens and line.tokens[-1][1] == "{":  # a fused kernel: its body follows
                line.tokens.pop()
                end = next((j for j in range(i, len(lines)) if lines[j][1].strip() == "}"), None)
                if end is None:
                    raise line.error("the kernel body is not closed by '}'")
                extra["body"] = _parse_body(lines[i:end], arrays)
                i = end + 1
            _parse_node(line, env, arrays, graph, make_node, name_scope, placeholder, extra)
    if not closed:
        raise ParseError("missing closing '}'")
    return graph


def _parse_body(lines: list[tuple[int, str]], arrays: Mapping[str, np.ndarray]) -> Any:
    from graphnn.ops.fused import FusedBody

    text = "graph kernel {\n" + "\n".join(raw for _, raw in lines) + "\n}"
    try:
        return FusedBody(parse_graph(text, arrays))
    except ParseError as e:
        raise ParseError(f"in the kernel body starting at line {lines[0][0]}: {e}") from None


def _comma_list(line: _Line) -> Any:
    while not line.done():
        yield
        if line.peek() == ",":
            line.take(",")


def _ref(line: _Line, env: Mapping[str, Node]) -> Node:
    col = line.tokens[line.i][2] if not line.done() else None
    tok = line.take(kind="ref")[1:]
    if tok not in env:
        raise line.error(f"%{tok} is used before it is defined", col)
    return env[tok]


def _parse_node(line: _Line, env: dict[str, Node], arrays: Mapping[str, np.ndarray],
                graph: Graph, make_node: Any, name_scope: Any, placeholder: Any,
                extra: dict[str, Any]) -> None:
    key = line.take(kind="ref")[1:]
    if key in env:
        raise line.error(f"%{key} is defined twice")
    line.take(":")
    dtype, shape = _parse_type(line)
    line.take("=")
    op = line.take(kind="word")
    attrs: dict[str, Any] = {}
    if line.peek() == "[":
        line.take("[")
        while line.peek() != "]":
            name = line.take(kind="word")
            line.take("=")
            attrs[name] = _parse_value(line, key, arrays)
            if line.peek() == ",":
                line.take(",")
        line.take("]")
    line.take("(")
    inputs = []
    while line.peek() != ")":
        inputs.append(_ref(line, env))
        if line.peek() == ",":
            line.take(",")
    line.take(")")
    if not line.done():
        raise line.error("unexpected text after the node")
    node_name = None if key.isdigit() else key
    scope, _, origin_text = (line.comment or "").partition("<-")
    origin = tuple(o.strip() for o in origin_text.split(",")) if origin_text.strip() else ()
    try:
        with name_scope(scope.strip(), absolute=True) if scope.strip() \
                else contextlib.nullcontext():
            if op == "placeholder":
                node = placeholder(shape, dtype, name=node_name)
            else:
                node = make_node(op, inputs, {**attrs, **extra}, name=node_name, graph=graph,
                                 origin=origin)
    except GraphnnError as e:
        raise line.error(f"cannot build {op}: {e}") from None
    if node.shape != shape or node.dtype is not dtype:
        raise line.error(f"declared type {dtype.value}{list(shape)} but {op} gives {node.type_str}")
    env[key] = node
