"""``plan_memory``: one arena for all intermediate values, reused across their lifetimes.

Liveness over the graph's order: a value lives from the node that computes it to its last
consumer. Intermediates (computed values that are not graph outputs, nor placeholders, variables
or constants) get byte offsets in one arena: a value whose lifetime is over frees its block, and
later values reuse free blocks (best fit, coalesced). An elementwise kernel whose input dies at it
and has the same size writes in place, into that input's block.

Precondition: static shapes (``specialize`` first); the plan is stored in
``graph.meta["memory_plan"]`` for the code generators, with the peak bytes before (every value its
own buffer) and after.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from graphnn.passes.rewrite import PassError, consumers

from graphnn.ir import Graph, Node
from graphnn.ops.registry import get_op
from graphnn.shapes import num_elements
from graphnn.text_ir import node_id

SOURCES = frozenset({"placeholder", "variable", "constant"})


@dataclass
class MemoryPlan:
    """Byte offsets in one arena, by node id (text IR ids), and what planning saved."""

    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (offset, bytes)
    arena_bytes: int = 0
    unplanned_bytes: int = 0  # every intermediate in its own buffer
    in_place: list[tuple[str, str]] = field(default_factory=list)  # (node, input it overwrites)

    def report(self) -> str:
        saved = 1 - self.arena_bytes / self.unplanned_bytes if self.unplanned_bytes else 0.0
        return (f"intermediates: {self.unplanned_bytes:,} bytes unplanned, {self.arena_bytes:,} "
                f"bytes in the arena ({saved:.0%} saved), {len(self.in_place)} in place")


def _nbytes(n: Node, alignment: int) -> int:
    count = num_elements(n.shape)
    if count is None:
        raise PassError(f"plan_memory needs static shapes; {n.type_str} has an unknown dimension "
                        "(run specialize first)")
    raw = count * n.dtype.itemsize
    return -(-raw // alignment) * alignment if raw else 0


def plan_memory(graph: Graph, alignment: int = 64) -> Graph:
    """Attach a ``MemoryPlan`` to the graph (see the module docstring); nodes are unchanged."""
    users, outputs = consumers(graph), set(graph.outputs)
    index = {n: i for i, n in enumerate(graph.nodes)}
    planned = [n for n in graph.nodes if n.op not in SOURCES and n not in outputs
               and not get_op(n.op).no_value]
    last_use = {n: max((index[u] for u in users[n]), default=index[n]) for n in planned}
    plan = MemoryPlan()
    free: list[tuple[int, int]] = []  # (offset, size), kept sorted and coalesced
    block: dict[Node, tuple[int, int]] = {}
    dying: dict[int, list[Node]] = {}
    for n in planned:
        dying.setdefault(last_use[n], []).append(n)
    for i, n in enumerate(graph.nodes):
        if n in last_use:
            size = _nbytes(n, alignment)
            plan.unplanned_bytes += size
            reuse = _in_place_candidate(n, block, last_use, index)
            if reuse is not None and block[reuse][1] == size:
                block[n] = block.pop(reuse)  # the input's block now belongs to n
                plan.in_place.append((node_id(n, i), node_id(reuse, index[reuse])))
            else:
                block[n] = _allocate(free, size, plan)
            plan.offsets[node_id(n, i)] = block[n]
        for d in dying.get(i, []):  # values last read here (or never read) free their blocks
            if d in block:
                _release(free, block.pop(d))
    graph.meta["memory_plan"] = plan
    return graph


def plan_buffers(order: Sequence[Node], planned: Collection[Node], alignment: int = 64,
                 also_reads: Mapping[Node, Sequence[Node]] | None = None
                 ) -> tuple[dict[Node, tuple[int, int]], int]:
    """Byte (offset, size) in one arena for each node of ``planned``, over the execution order
    ``order`` (which holds their consumers that run): a value lives from its node to its last
    consumer in ``order``, and its block is free for later values after that; no value is put
    in place of an input (the JIT's kernels keep their no-alias facts). ``also_reads``: values
    a node's kernel reads besides its inputs (the LLVM backend's pooled convolution, computed
    at the pool's node, reads the convolution's inputs). Returns the offsets and the arena's
    size in bytes. The JIT's executables plan their intermediates this way.

    Raises:
        PassError: a planned node's shape is not static."""
    index = {n: i for i, n in enumerate(order)}
    last_use = {n: index[n] for n in planned}
    for n in order:
        for x in (*n.inputs, *(also_reads or {}).get(n, ())):
            if x in last_use:
                last_use[x] = max(last_use[x], index[n])
    dying: dict[int, list[Node]] = {}
    for n, i in last_use.items():
        dying.setdefault(i, []).append(n)
    plan, free = MemoryPlan(), list[tuple[int, int]]()
    block: dict[Node, tuple[int, int]] = {}
    for i, n in enumerate(order):
        if n in last_use:  # allocated before this node's dying inputs are freed: no overlap
            block[n] = _allocate(free, _nbytes(n, alignment), plan)
        for d in dying.get(i, []):
            _release(free, block[d])
    return block, plan.arena_bytes


def _in_place_candidate(n: Node, block: dict[Node, tuple[int, int]], last_use: dict[Node, int],
                        index: dict[Node, int]) -> Node | None:
    """An input of an elementwise node that dies here, of the same shape and dtype."""
    fused_elementwise = n.op == "fused" and n.attrs["kind"] == "elementwise"
    if not (get_op(n.op).elementwise or fused_elementwise):
        return None
    for x in n.inputs:
        if x in block and last_use.get(x) == index[n] and x.shape == n.shape \
                and x.dtype is n.dtype and n.inputs.count(x) == 1:
            return x
    return None


def _allocate(free: list[tuple[int, int]], size: int, plan: MemoryPlan) -> tuple[int, int]:
    fits = [(s, o) for o, s in free if s >= size]
    if fits:
        s, o = min(fits)  # best fit
        free.remove((o, s))
        if s > size:
            _release(free, (o + size, s - size))
        return o, size
    # grow the arena, absorbing a free block at its end
    end = plan.arena_bytes
    if free and free[-1][0] + free[-1][1] == end:
        o, s = free.pop()
        plan.arena_bytes = o + size
        return o, size
    plan.arena_bytes = end + size
    return end, size


def _release(free: list[tuple[int, int]], blk: tuple[int, int]) -> None:
    if blk[1] == 0:
        return
    free.append(blk)
    free.sort()
    merged: list[tuple[int, int]] = []
    for o, s in free:
        if merged and merged[-1][0] + merged[-1][1] == o:
            merged[-1] = (merged[-1][0], merged[-1][1] + s)
        else:
            merged.append((o, s))
    free[:] = merged
