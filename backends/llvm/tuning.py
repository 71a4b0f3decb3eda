"""Opt-in schedule tuning for the LLVM backend's templated kernels (GEMM, split-K GEMV, the
convolutions and their gradients).

The templates' blocking and thread split come from fixed heuristics (``gemm.KC``, ``gemm.NC``,
``MR``/``MR_WIDE``, every thread for a big kernel), which must be good by default. With
``LLVMBackend(tune=True)`` (or ``GRAPHNN_TUNE=1``) each templated kernel is also compiled with
other values of these knobs, each variant timed on random data, and the fastest kept. The choice
is cached on disk (``cache_dir()/tuning``, one small JSON file per kernel, written atomically),
keyed by the kernel IR (its name aside), the target, the thread count, the search space and the
graphnn version, so a later compile of the same kernel, in any process, reads it instead of
measuring. A tuned schedule only changes speed: every variant computes the same result (up to
rounding where the k-blocks or the thread split regroup sums).

Knobs (a ``Schedule`` maps a knob to its value; an absent knob keeps the heuristic):

- ``kc``: k-steps per cache block; ``nc``: columns per panel of b (the BLIS blocking);
- ``mr``: rows per register block (6; also 8 and 12 where 32 vector registers hold them);
- ``threads``: at most this many threads for the kernel (1: no parallel-for, but in the split-K
  GEMV, whose wrapper owns its partials).

The search is coordinate descent from the heuristic: one knob at a time over its values, the
others at their best so far (AutoTVM and Ansor search far larger spaces; these four knobs are
the ones the templates expose). A candidate whose LLVM IR equals one already timed is skipped.
Each candidate is timed as the fastest of ``repeat`` calls after one warm-up call, on the
backend's thread count (the fastest, not the median: on a shared machine the median moved by
10-30% between identical candidates), and replaces the best so far only when MARGIN faster.
Tuning a kernel takes 0.1-0.7 s per candidate, most of it the compile (W2 batch 64's three
convolutions: 3-6 s each).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np
from graphnn.backends.kernel.ir import Kernel, format_kernel
from graphnn.backends.llvm import gemm
from llvmlite import ir

if TYPE_CHECKING:
    from graphnn.backends.llvm.jit import Target

log = logging.getLogger("graphnn.llvm")

Schedule = dict[str, int]
TUNING_VERSION = 1  # bump when the knobs' meaning changes: older choices are then ignored
MARGIN = 0.03  # a candidate replaces the best so far when at least this much faster


def space(kernel: Kernel, bits: int) -> dict[str, list[int]]:
    """Each knob's candidate values for ``kernel`` (its template's knobs, ``threads`` for all);
    the heuristic's value first. Empty: not a templated kernel, nothing to tune."""
    from graphnn.backends.llvm.codegen import template_for

    template = template_for(kernel, bits)
    if template is None:
        return {}
    knobs: dict[str, list[int]] = {}
    if "kc" in template.KNOBS:
        knobs["kc"] = [gemm.KC, 128, 512]
    if "nc" in template.KNOBS:
        knobs["nc"] = [gemm.NC, 128, 512]
    if "mr" in template.KNOBS and bits >= 512:
        knobs["mr"] = [gemm.MR_WIDE, gemm.MR, 8]
    knobs["threads"] = [0, 1]  # 0: the backend's thread count
    return knobs


def kernel_key(kernel: Kernel, target: Target, bits: int, threads: int) -> str:
    """What a schedule depends on: the kernel IR without its name, the target, the thread count,
    the search space and the versions."""
    import graphnn

    listing = format_kernel(kernel).replace(kernel.name, "kernel", 1)
    parts = [listing, target.triple, target.cpu, target.features, str(bits), str(threads),
             json.dumps(space(kernel, bits), sort_keys=True), str(TUNING_VERSION),
             graphnn.__version__]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class Tuner:
    """Finds (``measure``) or recalls (the disk cache) each templated kernel's schedule.

    Args:
        target: the machine code's target (the host: tuning runs the candidates).
        bits: the target's vector width.
        threads: the thread count the kernels run with (``threads = 0`` means this many).
        repeat: timed calls per candidate (the median counts).
        directory: where the choices are cached (default ``cache_dir()/tuning``).
    """

    def __init__(self, target: Target, bits: int, threads: int, repeat: int = 10,
                 directory: str | None = None) -> None:
        from graphnn.backends.llvm.jit import cache_dir

        self.target, self.bits, self.threads, self.repeat = target, bits, threads, repeat
        self.directory = directory or os.path.join(cache_dir(), "tuning")

    def schedule(self, kernel: Kernel) -> Schedule:
        """The kernel's schedule: cached, else measured and cached; {} for untemplated ones."""
        if not space(kernel, self.bits):
            return {}
        path = os.path.join(self.directory, kernel_key(kernel, self.target, self.bits,
                                                          self.threads) + ".json")
        cached = _read(path)
        if cached is not None:
            return cached
        start = time.perf_counter()
        best = self.measure(kernel)
        _write(path, best)
        log.debug("tuned %s in %.1f s: %s", kernel.name, time.perf_counter() - start, best)
        return best

    def measure(self, kernel: Kernel) -> Schedule:
        """Coordinate descent over ``space(kernel)`` (see the module docstring)."""
        knobs = space(kernel, self.bits)
        best: Schedule = {name: values[0] for name, values in knobs.items()}
        buffers = _buffers(kernel)
        seen: dict[str, float] = {}
        best_s = self._time(kernel, best, buffers, seen)
        for name, values in knobs.items():
            for value in values[1:]:
                candidate = {**best, name: value}
                seconds = self._time(kernel, candidate, buffers, seen)
                if seconds < best_s * (1 - MARGIN):
                    best, best_s = candidate, seconds
        return {k: v for k, v in best.items() if v != knobs[k][0]}  # the heuristic's: absent

    def _time(self, kernel: Kernel, schedule: Schedule, buffers: list[np.ndarray],
              seen: dict[str, float]) -> float:
        from graphnn.backends.llvm.codegen import KernelEmitter
        from graphnn.backends.llvm.jit import Compiled

        module = ir.Module(name="tune")
        emitter = KernelEmitter(module, self.bits)
        emitter.schedules[kernel.name] = {k: v for k, v in schedule.items() if v}
        emitter.emit(kernel)
        text = str(module)
        if text in seen:
            return seen[text]
        compiled = Compiled(text, self.target, use_cache=False)
        compiled.set_threads(self.threads)
        fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(buffers))(
            compiled.address(kernel.name))
        args = [a.ctypes.data for a in buffers]
        fn(*args)
        times = []
        for _ in range(self.repeat):
            t = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t)
        seen[text] = min(times)
        log.debug("  %s %s: %.3f ms", kernel.name, schedule, seen[text] * 1e3)
        return seen[text]


def _buffers(kernel: Kernel) -> list[np.ndarray]:
    """Random data for the kernel's parameters (the templates take float ones)."""
    rng = np.random.default_rng(0)
    out = []
    for p in kernel.params:
        shape = [max(d, 0) for d in p.shape]
        if p.dtype.is_float:
            out.append(rng.standard_normal(shape).astype(p.dtype.np))
        else:
            out.append(np.zeros(shape, p.dtype.np))
    return out


def _read(path: str) -> Schedule | None:
    """A cached schedule, or None (missing, or damaged: then measured again)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, int)
                                              for k, v in value.items()):
        return None
    return value


def _write(path: str, schedule: Schedule) -> None:
    from graphnn.backends.llvm.jit import write_atomically

    write_atomically(path, json.dumps(schedule).encode())
