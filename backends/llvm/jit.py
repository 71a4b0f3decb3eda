"""The host target and the JIT: LLVM IR text -> optimised machine code in this process.

Uses llvmlite's new pass-builder API (llvmlite >= 0.45 removed the legacy pass manager):
``create_pipeline_tuning_options`` + ``create_pass_builder(...).getModulePassManager()`` at O3,
for the host's triple, CPU name and features (AVX2/AVX-512 where present), or for ``cpu=`` and
``features=`` given explicitly.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import time
from dataclasses import dataclass

import llvmlite.binding as llvm

log = logging.getLogger("graphnn.llvm")


@functools.cache
def _initialise() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


@dataclass(frozen=True)
class Target:
    triple: str
    cpu: str
    features: str

    @staticmethod
    def host(cpu: str | None = None, features: str | None = None) -> Target:
        _initialise()
        return Target(llvm.get_default_triple(), cpu or llvm.get_host_cpu_name(),
                      features if features is not None else llvm.get_host_cpu_features().flatten())

    def machine(self) -> llvm.TargetMachine:
        _initialise()
        return llvm.Target.from_triple(self.triple).create_target_machine(
            cpu=self.cpu, features=self.features, opt=3, codemodel="jitdefault")


class Compiled:
    """An optimised module loaded into an MCJIT engine (kept alive as long as this object)."""

    def __init__(self, llvm_ir: str, target: Target) -> None:
        start = time.perf_counter()
        tm = target.machine()
        from graphnn.backends.llvm.runtime import RUNTIME_IR

        module = llvm.parse_assembly(llvm_ir)
        module.link_in(llvm.parse_assembly(RUNTIME_IR))
        module.triple, module.data_layout = target.triple, str(tm.target_data)
        module.verify()
        pto = llvm.create_pipeline_tuning_options(speed_level=3)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(module, pb)
        self.optimized_ir = str(module)
        self.engine = llvm.create_mcjit_compiler(module, tm)
        self.engine.finalize_object()
        self.assembly = tm.emit_assembly(module)
        self.seconds = time.perf_counter() - start
        log.debug("compiled %d bytes of LLVM IR in %.3f s", len(llvm_ir), self.seconds)

    def address(self, name: str) -> int:
        return int(self.engine.get_function_address(name))

    def set_threads(self, n: int) -> None:
        """How many threads large kernels use from now on (the runtime's global)."""
        ctypes.c_int64.from_address(self.engine.get_global_value_address(
            "graphnn_num_threads")).value = max(1, int(n))


def default_threads() -> int:
    """``GRAPHNN_NUM_THREADS``, else the cores this process may run on."""
    env = os.environ.get("GRAPHNN_NUM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
