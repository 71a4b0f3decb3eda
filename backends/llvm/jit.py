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
from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.binding as llvm
from graphnn.backends.llvm.runtime import THREADS_IR, install_pool

log = logging.getLogger("graphnn.llvm")


@functools.cache
def _initialise() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def host_features() -> str:
    """The host CPU's features for LLVM; with AVX-512 they turn off LLVM's ``prefer-256-bit``
    tuning (set for Intel's AVX-512 CPUs, whose first ones slowed their clock for 512-bit
    instructions), so the loop vectoriser fills whole zmm registers as the templates do: W5's
    elementwise chain 0.79x the time, the other workloads the same (0.98-1.02x)."""
    features = llvm.get_host_cpu_features().flatten()
    return features + ",-prefer-256-bit" if "+avx512f" in features.split(",") else features


@dataclass(frozen=True)
class Target:
    triple: str
    cpu: str
    features: str

    @staticmethod
    def host(cpu: str | None = None, features: str | None = None) -> Target:
        """The host's triple, and its CPU name and features (``host_features``) unless
        given."""
        _initialise()
        return Target(llvm.get_default_triple(), cpu or llvm.get_host_cpu_name(),
                      features if features is not None else host_features())

    def machine(self) -> llvm.TargetMachine:
        _initialise()
        return llvm.Target.from_triple(self.triple).create_target_machine(
            cpu=self.cpu, features=self.features, opt=3, codemodel="jitdefault")


CODEGEN_FLAGS = "O3+loop-vectorize+slp-vectorize"
_MAGIC = b"GNNOBJ2\n"  # then one flags byte, the payload's sha256, the object file
_USES_RUNTIME = 1  # flags: the object calls the runtime (parallel-for, scratch cache): install it


def cache_dir() -> str:
    """``GRAPHNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphnn``, else ``~/.cache/graphnn``."""
    env = os.environ.get("GRAPHNN_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "graphnn")


@functools.cache
def sources_digest() -> str:
    """sha256 of graphnn's Python sources (the package, its passes and backends): the code that
    turns a kernel IR into LLVM IR. A key made before emitting the LLVM IR includes it, so an
    edited code generator never meets an object file of the old one. About 2 ms, once."""
    import graphnn.backends
    import graphnn.passes

    digest = hashlib.sha256()
    roots = sorted({os.path.dirname(graphnn.__file__), *graphnn.backends.__path__,
                    *graphnn.passes.__path__})
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


def cache_key(content: str, target: Target) -> str:
    """Everything the machine code depends on: ``content`` (the LLVM IR, or what the code
    generator makes it from), graphnn's sources, the target, the flags and the versions of
    llvmlite and graphnn (the runtime's IR is in the sources)."""
    import llvmlite

    import graphnn

    parts = [content, sources_digest(), target.triple, target.cpu, target.features,
             CODEGEN_FLAGS, llvmlite.__version__, graphnn.__version__]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class Compiled:
    """An optimised module loaded into an MCJIT engine (kept alive as long as this object).

    Args:
        source: the LLVM IR, or a function that emits it, called only when the machine code is
            not in the disk cache.
        target: the machine code's target.
        use_cache: look up and store the object file in ``cache_dir()``.
        key: the cache key (``cache_key``); default: the key of the IR text. A caller that keys
            by what it emits the IR from (the executable: the kernel IR) skips emitting and
            parsing the IR on a hit.

    Machine code is cached on disk by the key: a second process with the same graph, shapes and
    target loads the object file instead of optimising and generating code again (into an
    empty module when the IR was not emitted). A damaged entry (bad magic or checksum) is
    deleted and rebuilt.
    """

    def __init__(self, source: str | Callable[[], str], target: Target, use_cache: bool = True,
                 key: str | None = None) -> None:
        start = time.perf_counter()
        self._source = source
        tm = target.machine()
        if key is None:
            key = cache_key(self.llvm_ir, target)
        self.key = key
        self.path = os.path.join(cache_dir(), key[:2], key + ".o")
        cached = _read_object(self.path) if use_cache else None
        self.from_cache = cached is not None
        if cached is not None:
            flags, obj = cached
            self.uses_runtime = bool(flags & _USES_RUNTIME)
            module = llvm.parse_assembly(THREADS_IR if self.uses_runtime else "")
        else:
            module = llvm.parse_assembly(self.llvm_ir)
            # whether the code calls the runtime (the pool, the scratch cache): install it
            self.uses_runtime = "graphnn_parallel_for" in self.llvm_ir or \
                "graphnn_scratch_" in self.llvm_ir
            if self.uses_runtime:
                module.link_in(llvm.parse_assembly(THREADS_IR))
        if self.uses_runtime:  # the thread pool is shared by every module of the process
            install_pool()
        module.triple, module.data_layout = target.triple, str(tm.target_data)
        module.verify()
        if cached is None:
            pto = llvm.create_pipeline_tuning_options(speed_level=3)
            pto.loop_vectorization = True
            pto.slp_vectorization = True
            pb = llvm.create_pass_builder(tm, pto)
            pb.getModulePassManager().run(module, pb)
        self._module, self._tm = module, tm  # for the dumps, made on demand
        self._optimized_ir: str | None = None
        self._assembly: str | None = None
        self.engine = llvm.create_mcjit_compiler(module, tm)
        fresh: list[bytes] = []
        self.engine.set_object_cache(lambda m, buf: fresh.append(bytes(buf)),
                                     lambda m: cached[1] if cached else None)
        self.engine.finalize_object()
        if fresh and use_cache:
            _write_object(self.path, _USES_RUNTIME if self.uses_runtime else 0, fresh[0])
        self.seconds = time.perf_counter() - start
        log.debug("%s: %s in %.3f s (cache %s)", key[:12], "object file loaded" if
                  self.from_cache else f"{len(self.llvm_ir)} bytes of LLVM IR compiled",
                  self.seconds, "hit" if self.from_cache else "miss")

    @functools.cached_property
    def llvm_ir(self) -> str:
        """The module's LLVM IR before optimisation (emitted on first use after a cache hit)."""
        return self._source if isinstance(self._source, str) else self._source()

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
        if not self.uses_runtime:
            return
        ctypes.c_int64.from_address(self.engine.get_global_value_address(
            "graphnn_num_threads")).value = max(1, int(n))


def _read_object(path: str) -> tuple[int, bytes] | None:
    """(flags, object file) of a cache entry; None when absent or damaged (then deleted)."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    head = len(_MAGIC)
    digest, body = blob[head + 1:head + 33], blob[head + 33:]
    if not blob.startswith(_MAGIC) or len(blob) < head + 33 or \
            hashlib.sha256(blob[head:head + 1] + body).digest() != digest:
        log.warning("compile cache entry %s is damaged: rebuilding it", path)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return blob[head], body


def _write_object(path: str, flags: int, payload: bytes) -> None:
    head = bytes([flags])
    write_atomically(path, _MAGIC + head + hashlib.sha256(head + payload).digest() + payload)


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
