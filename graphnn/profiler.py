"""Per-kernel timings of one fetch set: what ``Session.profile`` returns.

::

    prof = sess.profile(logits, {"x": batch}, repeat=20)
    print(prof)                  # a table, slowest kernels first
    prof.kernels[0].seconds      # in execution order

Each kernel (a native function, an OpenCL kernel, or a node's numpy reference) is timed on its
own, re-run ``repeat`` times on the inputs one full run left in its buffers, and its median kept:
the caches are as warm as a kernel that runs twice can make them, so the sum of the kernels can
be less than a run (``Profile.run_s``), which also counts binding feeds, returning outputs and
the caches' refill between kernels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graphnn.ir import Node


@dataclass(frozen=True)
class KernelTime:
    """One step of a run.

    Attributes:
        node: the node it computes, as the text IR names it (``%name: f32[2,3]``), in the graph
            the backend compiled (the optimised one when the session optimises).
        op: the node's op; a fused node's ops joined by ``+`` (``conv+add+relu``).
        kernel: the generated kernel's name, or ``"numpy"`` where the node's reference ran.
        seconds: median wall time of one call (seconds).
    """

    node: str
    op: str
    kernel: str
    seconds: float

    @classmethod
    def of(cls, node: Node, kernel: str, seconds: float) -> KernelTime:
        """The record for ``node`` (the text IR's name and the op label above)."""
        from graphnn.ops.registry import describe

        body = node.attrs.get("body") if node.op == "fused" else None
        op = "+".join(body.ops) if body is not None else node.op
        return cls(describe(node), op, kernel, seconds)


@dataclass(frozen=True)
class Profile:
    """The steps of one fetch set in execution order, and the median time of a whole
    ``Session.run`` of it (seconds)."""

    kernels: list[KernelTime]
    run_s: float

    @property
    def kernel_s(self) -> float:
        """The kernels' medians summed (seconds)."""
        return sum(k.seconds for k in self.kernels)

    def table(self, top: int | None = None) -> str:
        """A table of the ``top`` slowest steps (all when None): milliseconds, share of the
        kernels' sum, op, kernel and node."""
        total = self.kernel_s or 1.0
        rows = sorted(self.kernels, key=lambda k: k.seconds, reverse=True)[:top]
        lines = [f"{'ms':>9} {'share':>6}  {'op':<28} {'kernel':<20} node"]
        lines += [f"{k.seconds * 1e3:9.3f} {k.seconds / total:6.1%}  {k.op:<28} "
                  f"{k.kernel:<20} {k.node}" for k in rows]
        lines.append(f"kernels {self.kernel_s * 1e3:.3f} ms; run {self.run_s * 1e3:.3f} ms")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def median_time(call: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``call`` (seconds; ``time.perf_counter``)."""
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
