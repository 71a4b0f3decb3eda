"""The one interface every backend implements.

``Backend.compile(graph, fetches)`` returns an ``Executable`` for that fetch set;
``Executable.run(feeds, state, counter)`` computes the fetches from placeholder values and
variable values and returns the outputs plus the variable writes (``RunResult``). Executables are
pure: they never mutate ``state``; the Session commits ``updates`` only when the run succeeds.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from graphnn.errors import ExecutionError
from graphnn.ir import Graph, Node
from graphnn.ops.registry import describe


@dataclass
class RunResult:
    """Fetched values (None for ``group`` nodes) and the new value of each written variable."""

    outputs: list[np.ndarray | None]
    updates: dict[Node, np.ndarray] = field(default_factory=dict)


class Executable(Protocol):
    fetches: tuple[Node, ...]
    placeholders: tuple[Node, ...]  # the feeds this fetch set needs
    variables: tuple[Node, ...]  # the variables it reads or writes
    random: bool  # draws random numbers: the session advances its counter after each run

    def run(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, np.ndarray],
            counter: int) -> RunResult:
        """Compute the fetches; ``counter`` is the session's run count (random ops use it)."""
        ...


class Backend(Protocol):
    name: str

    def compile(self, graph: Graph, fetches: Sequence[Node]) -> Executable:
        """Prepare ``fetches`` of ``graph`` for repeated runs."""
        ...


class ReturnedArrays:
    """The host arrays an executable returns fetched values in, reused across runs: a node's
    array from the last run is handed out again once the caller no longer references it (no
    view either: a view holds its base), which saves the page faults of a fresh array (on a
    64 MB output, about as long as the copy into it)."""

    def __init__(self) -> None:
        self._arrays: dict[Node, np.ndarray] = {}

    def get(self, node: Node, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype`` for ``node``."""
        old = self._arrays.get(node)
        # references: the dict, ``old`` and getrefcount's argument
        if old is None or sys.getrefcount(old) > 3:
            old = np.empty(shape, dtype)
            self._arrays[node] = old
        return old


def _indexed_size(node: Node) -> int:
    """The size of the axis ``node`` (take, gather or their gradient) indexes."""
    indexed = node.inputs[0] if node.op in ("take", "gather") else node
    return int(indexed.shape[int(node.attrs["axis"])] or 0)


def bad_index(node: Node, indices: np.ndarray) -> int | None:
    """The first entry of ``indices`` (the index input of ``node``: take, gather or their
    gradient) outside [-size, size) of the indexed axis, or None."""
    size = _indexed_size(node)
    flat = np.asarray(indices).reshape(-1).astype(np.int64)
    bad = flat[(flat < -size) | (flat >= size)]
    return int(bad[0]) if bad.size else None


def index_error(node: Node, indices: np.ndarray) -> ExecutionError:
    """The error a native take, gather or their gradient raises after its kernel flagged an
    index out of range (``Param.status``): the message names the node and the first bad index,
    as the numpy reference's does. ``indices`` is the node's index input, read back."""
    bad = bad_index(node, indices)
    scope = f" in {node.scope}" if node.scope else ""
    what = "an index was out of range" if bad is None else (
        f"index {bad} is out of bounds for axis {node.attrs['axis']} with size "
        f"{_indexed_size(node)}")
    return ExecutionError(f"{node.op} (node {describe(node)}{scope}) failed: IndexError: {what}")
