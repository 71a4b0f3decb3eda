"""The pass registry, the optimisation levels, and ``PassManager``, which runs pipelines.

Levels:  O0 nothing; O1 clean-up (fold_constants, simplify, cse, dce); O2 O1 then
         decompose_attention, decompose_contractions and fusion (fold_batch_norm,
         fuse_epilogue, fuse_elementwise, dce);
         O3 O2 then plan_memory.
Each pass is a function ``Graph -> Graph`` taking keyword options. The manager verifies the graph
after every pass when asked (``verify=True``, or ``GRAPHNN_VERIFY=1``; always in the tests), keeps
every stage (``history``), records statistics and time per pass, and with ``dump_dir`` (or
``GRAPHNN_DUMP``) writes each stage as text IR and DOT (``03_simplify.txt``, ``03_simplify.dot``).
A failure names the pass.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from graphnn.passes.bn_fold import fold_batch_norm
from graphnn.passes.cse import eliminate_common_subexpressions
from graphnn.passes.dce import eliminate_dead_code
from graphnn.passes.decompose import decompose_attention, decompose_contractions
from graphnn.passes.fold import fold_constants
from graphnn.passes.fuse import fuse_elementwise, fuse_epilogue
from graphnn.passes.memory import SOURCES, plan_memory
from graphnn.passes.rewrite import PassError
from graphnn.passes.simplify import simplify
from graphnn.passes.specialize import freeze_variables, specialize

from graphnn.dot import to_dot
from graphnn.errors import GraphnnError
from graphnn.ir import Graph, Node
from graphnn.shapes import num_elements
from graphnn.text_ir import print_graph
from graphnn.verify import verify

PassFn = Callable[..., Graph]
PASSES: dict[str, PassFn] = {}


def register_pass(name: str, fn: PassFn) -> None:
    """Make ``fn`` available to pipelines and the CLI as ``name``."""
    PASSES[name] = fn


for _name, _fn in {"fold_constants": fold_constants, "simplify": simplify,
                   "cse": eliminate_common_subexpressions, "dce": eliminate_dead_code,
                   "fold_batch_norm": fold_batch_norm, "fuse_epilogue": fuse_epilogue,
                   "fuse_elementwise": fuse_elementwise, "plan_memory": plan_memory,
                   "specialize": specialize, "freeze_variables": freeze_variables,
                   "decompose_attention": decompose_attention,
                   "decompose_contractions": decompose_contractions}.items():
    register_pass(_name, _fn)

_O1 = ["fold_constants", "simplify", "cse", "dce"]
_O2 = _O1 + ["decompose_attention", "decompose_contractions", "fold_batch_norm",
             "fuse_epilogue", "fuse_elementwise", "dce"]
PIPELINES: dict[int, list[str]] = {0: [], 1: _O1, 2: _O2, 3: _O2 + ["plan_memory"]}


@dataclass
class Stage:
    """One pass's result: its graph, statistics and the seconds it took."""

    name: str
    graph: Graph
    seconds: float
    stats: dict[str, Any]


def graph_stats(graph: Graph) -> dict[str, Any]:
    """Node count, kernel count (nodes that compute), and bytes of intermediate values
    (None when a shape is unknown)."""
    kernels = [n for n in graph.nodes if n.op not in SOURCES]
    outputs = set(graph.outputs)
    sizes = [num_elements(n.shape) for n in kernels if n not in outputs]
    total = None if any(s is None for s in sizes) else sum(
        (s or 0) * n.dtype.itemsize for s, n in zip(sizes, kernels))
    plan = graph.meta.get("memory_plan")
    return {"nodes": len(graph.nodes), "kernels": len(kernels), "intermediate_bytes": total,
            "arena_bytes": getattr(plan, "arena_bytes", None)}


class PassManager:
    """Runs a pipeline (``opt_level`` or an explicit ``passes`` list) over a graph.

    Args:
        passes: pass names, or (name, options) pairs; overrides opt_level.
        opt_level: 0-3, see the module docstring.
        verify: check invariants after each pass (default: the GRAPHNN_VERIFY variable).
        dump_dir: write each stage there (default: the GRAPHNN_DUMP variable).
        verbose: print the statistics table after the run.
        options: keyword options passed to every pass that accepts them (e.g. fast_math=True,
            variables_as_constants=True, shapes={...} for specialize).
    """

    def __init__(self, passes: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
                 opt_level: int = 1, verify: bool | None = None, dump_dir: str | None = None,
                 verbose: bool = False, **options: Any) -> None:
        if passes is None and opt_level not in PIPELINES:
            raise GraphnnError(f"opt_level must be one of {sorted(PIPELINES)}, got {opt_level}")
        self.passes = [(p, {}) if isinstance(p, str) else p
                       for p in (PIPELINES[opt_level] if passes is None else passes)]
        for name, _ in self.passes:
            if name not in PASSES:
                raise GraphnnError(f"unknown pass {name!r}; known: {', '.join(sorted(PASSES))}")
        self.verify = os.environ.get("GRAPHNN_VERIFY") == "1" if verify is None else verify
        self.dump_dir = dump_dir if dump_dir is not None else os.environ.get("GRAPHNN_DUMP")
        self.verbose, self.options = verbose, options
        self.history: list[Stage] = []

    def run(self, graph: Graph) -> Graph:
        """The graph after every pass (``self.history`` keeps each stage)."""
        graph = stamp_provenance(graph)
        self.history = [Stage("input", graph, 0.0, graph_stats(graph))]
        self._dump(0, "input", graph)
        for k, (name, opts) in enumerate(self.passes, start=1):
            fn = PASSES[name]
            accepted = inspect.signature(fn).parameters
            kwargs = {key: v for key, v in {**self.options, **opts}.items() if key in accepted}
            start = time.perf_counter()
            try:
                graph = fn(graph, **kwargs)
                if self.verify:
                    verify(graph)
            except GraphnnError as e:
                raise PassError(f"pass {name} failed: {type(e).__name__}: {e}") from e
            self.history.append(Stage(name, graph, time.perf_counter() - start,
                                      graph_stats(graph)))
            self._dump(k, name, graph)
        if self.verbose:
            print(self.report())
        return graph

    def report(self) -> str:
        """One line per stage: nodes, kernels, intermediate bytes, milliseconds."""
        rows = [f"{'stage':<18} {'nodes':>6} {'kernels':>8} {'interm. bytes':>14} {'ms':>8}"]
        for s in self.history:
            b = s.stats["intermediate_bytes"]
            rows.append(f"{s.name:<18} {s.stats['nodes']:>6} {s.stats['kernels']:>8} "
                        f"{'?' if b is None else f'{b:,}':>14} {s.seconds * 1e3:>8.2f}")
        plan: Any = self.history[-1].graph.meta.get("memory_plan")
        if plan is not None:
            rows.append(plan.report())
        return "\n".join(rows)

    def _dump(self, k: int, name: str, graph: Graph) -> None:
        if not self.dump_dir:
            return
        os.makedirs(self.dump_dir, exist_ok=True)
        stem = os.path.join(self.dump_dir, f"{k:02d}_{name}")
        with open(stem + ".txt", "w") as f:
            f.write(f"# graph {graph.name}, after {name}\n{print_graph(graph)}\n")
        with open(stem + ".dot", "w") as f:
            f.write(to_dot(graph) + "\n")


def stamp_provenance(graph: Graph) -> Graph:
    """Record each node's id in the input graph, so every later stage can name its sources."""
    from graphnn.passes.rewrite import origin_of, rewrite

    from graphnn.ops.registry import make_node

    def rule(n: Node, inputs: list[Node]) -> Node | None:
        if n.origin or n.op == "placeholder":
            return None
        return make_node(n.op, inputs, dict(n.attrs), name=n.name, origin=origin_of(graph, n))

    return rewrite(graph, rule)[0]


def run_passes(graph: Graph, passes: Sequence[str | tuple[str, dict[str, Any]]],
               verify: bool = True, history: list[Stage] | None = None, **options: Any) -> Graph:
    """Run ``passes`` in order; appends each stage to ``history`` when given."""
    pm = PassManager(passes, verify=verify, **options)
    out = pm.run(graph)
    if history is not None:
        history.extend(pm.history)
    return out


def optimize(graph: Graph, opt_level: int = 2, **kwargs: Any) -> Graph:
    """``PassManager(opt_level=...).run(graph)``."""
    return PassManager(opt_level=opt_level, **kwargs).run(graph)


__all__ = ["PASSES", "PIPELINES", "PassError", "PassManager", "Stage", "graph_stats",
           "optimize", "register_pass", "run_passes"]
