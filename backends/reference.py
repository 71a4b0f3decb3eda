"""The reference backend: runs each node's numpy reference implementation in graph order.

It is the oracle every other backend is tested against, so it stays simple: no rewriting, no
fusion, one numpy call per node, float exceptions follow IEEE (``log(0) = -inf``, no warnings).
It also checks each result against the node's declared dtype and shape, which catches a wrong
reference implementation or shape rule at once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
from graphnn.backends.base import RunResult

from graphnn.errors import ExecutionError, GraphError
from graphnn.ir import Graph, Node
from graphnn.ops.registry import describe, get_op
from graphnn.profiler import KernelTime, median_time


class ReferenceExecutable:
    """The nodes ``fetches`` need, in order, ready to interpret."""

    def __init__(self, graph: Graph, fetches: Sequence[Node]) -> None:
        self.fetches = tuple(fetches)
        self.order = graph.subgraph_order(self.fetches)
        self.placeholders = tuple(n for n in self.order if n.op == "placeholder")
        self.variables = tuple(n for n in self.order if n.op == "variable")
        self.random = any(get_op(n.op).random for n in self.order)
        writers: dict[Node, Node] = {}
        for n in self.order:
            w = get_op(n.op).writes_input
            if w is not None:
                var = n.inputs[w]
                if var in writers:
                    raise GraphError(
                        f"variable {var.name!r} is written twice in one run, by "
                        f"{describe(writers[var])} and {describe(n)}; run them separately")
                writers[var] = n
        self._writers = writers  # variable -> the node that writes its new value

    def run(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, np.ndarray],
            counter: int) -> RunResult:
        values = self._values(feeds, state, counter)
        updates = {var: values[writer] for var, writer in self._writers.items()}
        outputs = [None if get_op(f.op).no_value else np.array(values[f], copy=True)
                   for f in self.fetches]
        return RunResult(outputs, updates)

    def _values(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, np.ndarray],
                counter: int) -> dict[Node, np.ndarray]:
        """Every node's value, in order."""
        values: dict[Node, np.ndarray] = {}
        with np.errstate(all="ignore"):
            for node in self.order:
                if node.op == "placeholder":
                    values[node] = feeds[node]
                elif node.op == "variable":
                    values[node] = state[node]
                else:
                    values[node] = _evaluate(node, [values[i] for i in node.inputs], counter)
        return values

    def profile(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, np.ndarray],
                counter: int, repeat: int) -> list[KernelTime]:
        """Each computed node's numpy reference timed alone (median of ``repeat`` calls) on the
        inputs one run computed (``graphnn.profiler``)."""
        values = self._values(feeds, state, counter)
        times = []
        with np.errstate(all="ignore"):
            for node in self.order:
                if node.op in ("placeholder", "variable", "constant"):
                    continue
                args = [values[i] for i in node.inputs]
                seconds = median_time(functools.partial(_evaluate, node, args, counter), repeat)
                times.append(KernelTime.of(node, "numpy", seconds))
        return times


def _evaluate(node: Node, args: list[np.ndarray], counter: int) -> np.ndarray:
    opdef = get_op(node.op)
    kwargs = dict(node.attrs)
    if opdef.random:
        kwargs["counter"] = counter
    assert opdef.reference is not None, node.op
    try:
        out = np.asarray(opdef.reference(*args, **kwargs))
    except Exception as e:  # numpy's errors become one that names the node and its inputs
        shapes = ", ".join(f"{a.dtype}{list(a.shape)}" for a in args)
        scope = f" in {node.scope}" if node.scope else ""
        raise ExecutionError(f"{node.op} (node {describe(node)}{scope}) failed on inputs "
                             f"({shapes}): {type(e).__name__}: {e}") from e
    if out.dtype != node.dtype.np:
        out = out.astype(node.dtype.np)
    mismatch = any(d is not None and d != o for d, o in zip(node.shape, out.shape))
    if out.ndim != node.ndim or mismatch:
        raise ExecutionError(f"reference of {node.op} returned shape {list(out.shape)} but node "
                             f"{describe(node)} declares otherwise (a bug in graphnn)")
    return out


def reference_error(node: Node, args: list[np.ndarray]) -> ExecutionError | None:
    """The error the numpy reference raises for ``node`` on ``args`` (its inputs), or None.

    A native kernel that meets data with no result (an index out of range, an integer's
    negative power) sets its status flag (``backends/kernel/ir.py``); the executable then reads
    the node's inputs back and raises this, so every backend's message is the reference's."""
    try:
        with np.errstate(all="ignore"):
            _evaluate(node, args, 0)
    except ExecutionError as e:
        return e
    return None


def flagged_error(node: Node, args: list[np.ndarray]) -> ExecutionError:
    """``reference_error``, for a node whose kernel set its status flag."""
    return reference_error(node, args) or ExecutionError(
        f"{describe(node)}: its kernel flagged bad data that the numpy reference accepts "
        "(a bug in graphnn)")


class ReferenceBackend:
    """``backend="reference"``: numpy, one op at a time."""

    name = "reference"

    def compile(self, graph: Graph, fetches: Sequence[Node]) -> ReferenceExecutable:
        return ReferenceExecutable(graph, fetches)
