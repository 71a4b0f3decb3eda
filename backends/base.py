"""The one interface every backend implements.

``Backend.compile(graph, fetches)`` returns an ``Executable`` for that fetch set;
``Executable.run(feeds, state, counter)`` computes the fetches from placeholder values and
variable values and returns the outputs plus the variable writes (``RunResult``). Executables are
pure: they never mutate ``state``; the Session commits ``updates`` only when the run succeeds.
An executable may also time its steps one by one, ``profile(feeds, state, counter, repeat)`` ->
``list[graphnn.profiler.KernelTime]``, for ``Session.profile`` (the reference, LLVM and OpenCL
executables do).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from graphnn.ir import Graph, Node


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
