"""Graph-to-graph optimisation passes (installed as ``graphnn.passes``).

Each pass lives in its own module and is a function ``Graph -> Graph``; ``manager`` registers
them, defines the optimisation levels and runs pipelines with verification, statistics and dumps.
"""

from graphnn.passes.manager import (
    PASSES,
    PIPELINES,
    PassError,
    PassManager,
    Stage,
    graph_stats,
    optimize,
    register_pass,
    run_passes,
)

__all__ = ["PASSES", "PIPELINES", "PassError", "PassManager", "Stage", "graph_stats", "optimize",
           "register_pass", "run_passes"]
