"""graphnn-llvm's compile time per workload: cold (an empty compile cache) and warm (a new
process that finds the disk cache).

    python benchmarks/compile_time.py                  # every workload of run.py
    python benchmarks/compile_time.py --workload W2 W3

Each measurement runs in a fresh Python process, so no in-memory cache helps: it builds the
workload's graph and session, then the compile time is the first ``run`` minus a later one (the
passes, the lowering, LLVM's O3 and code generation, or loading the cached object). Both runs
of a workload share one temporary ``GRAPHNN_CACHE_DIR``. Prints a table in seconds; ``--json``
writes records ``{"workload", "batch", "cold_s", "warm_s"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(workload: str, index: int) -> None:
    """Runs in the measured process: one workload case, timed from a cold start."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run

    case = run.WORKLOADS[workload]()[index]
    step = case.runners["graphnn-llvm"]()
    t0 = time.perf_counter()
    step()
    t1 = time.perf_counter()
    step()
    t2 = time.perf_counter()
    print(json.dumps({"batch": case.batch, "compile_s": max((t1 - t0) - (t2 - t1), 0.0)}))


def measure(workload: str, index: int, cache: str) -> dict:
    env = {**os.environ, "GRAPHNN_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", workload,
                          str(index)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", nargs="*", default=list(run.WORKLOADS))
    parser.add_argument("--json", help="write the records to this file")
    args = parser.parse_args(argv)
    records = []
    print(f"{'workload':<9}{'batch':>6}{'cold s':>10}{'warm s':>10}")
    for name in args.workload:
        for index in range(len(run.WORKLOADS[name]())):
            with tempfile.TemporaryDirectory(prefix="graphnn-cache-") as cache:
                cold = measure(name, index, cache)
                warm = measure(name, index, cache)
            rec = {"workload": name, "batch": cold["batch"], "cold_s": cold["compile_s"],
                   "warm_s": warm["compile_s"]}
            print(f"{name:<9}{rec['batch']:>6}{rec['cold_s']:>10.3f}{rec['warm_s']:>10.3f}")
            records.append(rec)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
