"""The host target and the JIT: LLVM IR text -> optimised machine code in this process.

Uses llvmlite's new pass-builder API (llvmlite >= 0.45 removed the legacy pass manager):
``create_pipeline_tuning_options`` + ``create_pass_builder(...).getModulePassManager()`` at O3,
for the host's triple, CPU name and features (AVX2/AVX-512 where present), or for ``cpu=`` and
``features=`` given explicitly.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import tempfile
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


CODEGEN_FLAGS = "O3+loop-vectorize+slp-vectorize"
_MAGIC = b"GNNOBJ1\n"


def cache_dir() -> str:
    """``GRAPHNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphnn``, else ``~/.cache/graphnn``."""
    env = os.environ.get("GRAPHNN_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "graphnn")


def cache_key(llvm_ir: str, target: Target) -> str:
    """Everything the machine code depends on: the IR, the runtime, the target, the flags and
    the versions of llvmlite and graphnn."""
    import llvmlite
    from graphnn.backends.llvm.runtime import POOL_IR

    import graphnn

    parts = [llvm_ir, POOL_IR, target.triple, target.cpu, target.features, CODEGEN_FLAGS,
             llvmlite.__version__, graphnn.__version__]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class Compiled:
    """An optimised module loaded into an MCJIT engine (kept alive as long as this object).

    Machine code is cached on disk (``cache_dir()``) by ``cache_key``: a second process with the
    same graph, shapes and target loads the object file instead of optimising and generating
    code again. A damaged entry (bad magic or checksum) is deleted and rebuilt.
    """

    def __init__(self, llvm_ir: str, target: Target, use_cache: bool = True) -> None:
        from graphnn.backends.llvm.runtime import THREADS_IR, install_pool

        start = time.perf_counter()
        tm = target.machine()
        self.key = cache_key(llvm_ir, target)
        self.path = os.path.join(cache_dir(), self.key[:2], self.key + ".o")
        cached = _read_object(self.path) if use_cache else None
        module = llvm.parse_assembly(llvm_ir)
        self.threaded = "graphnn_parallel_for" in llvm_ir
        if self.threaded:  # the thread pool is shared by every module of the process
            install_pool()
            module.link_in(llvm.parse_assembly(THREADS_IR))
        module.triple, module.data_layout = target.triple, str(tm.target_data)
        module.verify()
        if cached is None:
            pto = llvm.create_pipeline_tuning_options(speed_level=3)
            pto.loop_vectorization = True
            pto.slp_vectorization = True
            pb = llvm.create_pass_builder(tm, pto)
            pb.getModulePassManager().run(module, pb)
        self.from_cache = cached is not None
        self._module, self._tm = module, tm  # for the dumps, made on demand
        self._optimized_ir: str | None = None
        self._assembly: str | None = None
        self.engine = llvm.create_mcjit_compiler(module, tm)
        fresh: list[bytes] = []
        self.engine.set_object_cache(lambda m, buf: fresh.append(bytes(buf)),
                                     lambda m: cached)
        self.engine.finalize_object()
        if fresh and use_cache:
            _write_object(self.path, fresh[0])
        self.seconds = time.perf_counter() - start
        log.debug("%s: %d bytes of LLVM IR in %.3f s (cache %s)", self.key[:12], len(llvm_ir),
                  self.seconds, "hit" if self.from_cache else "miss")

    @property
    def optimized_ir(self) -> str | None:
        """The module after O3 (None when loaded from the cache: no optimisation ran)."""
        if self._optimized_ir is None and not self.from_cache:
            self._optimized_ir = str(self._module)
        return self._optimized_ir

    @property
    def assembly(self) -> str | None:
        """The machine code as assembly, generated on first use: emitting it with every compile
        took as long as the code generation itself (ResNet-18: 6.8 of 24 s). None when loaded
        from the cache."""
        if self._assembly is None and not self.from_cache:
            self._assembly = self._tm.emit_assembly(self._module)
        return self._assembly

    def address(self, name: str) -> int:
        return int(self.engine.get_function_address(name))

    def set_threads(self, n: int) -> None:
        """How many threads large kernels use from now on (the runtime's global)."""
        if not self.threaded:
            return
        ctypes.c_int64.from_address(self.engine.get_global_value_address(
            "graphnn_num_threads")).value = max(1, int(n))


def _read_object(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    digest, payload = blob[len(_MAGIC):len(_MAGIC) + 32], blob[len(_MAGIC) + 32:]
    if not blob.startswith(_MAGIC) or hashlib.sha256(payload).digest() != digest:
        log.warning("compile cache entry %s is damaged: rebuilding it", path)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return payload


def _write_object(path: str, payload: bytes) -> None:
    write_atomically(path, _MAGIC + hashlib.sha256(payload).digest() + payload)


def write_atomically(path: str, data: bytes) -> None:
    """A cache entry, through a temporary file and a rename: a crash leaves either no entry or
    a whole one. A read-only or full disk only costs the next process the work again (a
    warning, no error)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write the cache entry %s: %s", path, e)


def default_threads() -> int:
    """``GRAPHNN_NUM_THREADS``, else the cores this process may run on."""
    env = os.environ.get("GRAPHNN_NUM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
