"""``graphnn.load_compiled``: a compiled model's shared library as a Python callable (ctypes).

For tests and for users who want it; the library itself needs no Python. The library's metadata
(``<name>_metadata()``) gives the inputs, outputs and target; before any generated code runs the
host's CPU features are checked against the target's, so a library built for another CPU raises
a clear error instead of crashing on an illegal instruction.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
from typing import Any

import numpy as np
from graphnn.backends.aot.api import CPUID_BITS

from graphnn.errors import ExecutionError, FeedError, GraphnnError


def _name_from_path(path: str) -> str:
    m = re.fullmatch(r"lib(\w+)\.(so|dylib)(\..*)?", os.path.basename(path))
    if m is None:
        raise GraphnnError(f"{path}: expected a library named lib<name>.so; pass name=")
    return m.group(1)


def missing_features(features: str) -> list[str]:
    """The target's ``+features`` (those the library checks) that this host's CPU lacks."""
    import llvmlite.binding as llvm

    host = llvm.get_host_cpu_features()
    return [f[1:] for f in features.split(",")
            if f.startswith("+") and f[1:] in CPUID_BITS and not host.get(f[1:], False)]


class CompiledModel:
    """A loaded library: ``model(*inputs) -> output`` (or a tuple of outputs).

    Attributes: name, path, metadata (dict), inputs/outputs (metadata entries: name, dtype,
    shape). Inputs are converted to the compiled dtype (same kind only) and must have the
    compiled shape. ``close()`` frees the native context (also on garbage collection).
    """

    def __init__(self, path: str, name: str | None = None, weights: str | None = None,
                 threads: int | None = None) -> None:
        self.path = os.fspath(path)
        self.name = name or _name_from_path(self.path)
        try:
            self._lib = ctypes.CDLL(os.path.abspath(self.path))
            meta_fn = getattr(self._lib, f"{self.name}_metadata")
        except (OSError, AttributeError) as e:
            raise GraphnnError(f"{self.path} is not a graphnn-compiled library named "
                               f"{self.name!r}: {e}") from None
        meta_fn.restype = ctypes.c_char_p
        self.metadata: dict[str, Any] = json.loads(meta_fn())
        self.inputs, self.outputs = self.metadata["inputs"], self.metadata["outputs"]
        target = self.metadata["target"]
        missing = missing_features(target["features"])
        if missing:
            raise GraphnnError(f"{self.path} was compiled for {target['cpu']} and uses "
                               f"{', '.join(missing)}, which this CPU lacks; recompile with "
                               "cpu=/features= for this machine (e.g. cpu='x86-64-v2')")
        fn = self._fn
        fn("create", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p])
        fn("run", ctypes.c_int, [ctypes.c_void_p] * (1 + len(self.inputs) + len(self.outputs)))
        fn("destroy", None, [ctypes.c_void_p])
        fn("error_string", ctypes.c_char_p, [ctypes.c_int])
        fn("set_num_threads", None, [ctypes.c_int])
        if self.metadata["weights"]["storage"] == "file" and weights is None:
            weights = os.path.join(os.path.dirname(self.path), f"{self.name}.weights")
        self._ctx = ctypes.c_void_p()
        status = self._call("create", ctypes.byref(self._ctx),
                            None if weights is None else os.fsencode(weights))
        if status:
            raise GraphnnError(f"{self.name}_create failed: {self._message(status)}")
        if threads is not None:
            self._call("set_num_threads", int(threads))

    def _fn(self, what: str, restype: Any, argtypes: list[Any]) -> None:
        f = getattr(self._lib, f"{self.name}_{what}")
        f.restype, f.argtypes = restype, argtypes

    def _call(self, what: str, *args: Any) -> Any:
        return getattr(self._lib, f"{self.name}_{what}")(*args)

    def _message(self, status: int) -> str:
        return str(self._call("error_string", status).decode())

    def __call__(self, *arrays: Any) -> Any:
        if self._ctx is None or not self._ctx.value:
            raise ExecutionError(f"{self.name}: the model was closed")
        if len(arrays) != len(self.inputs):
            raise FeedError(f"{self.name} takes {len(self.inputs)} inputs "
                            f"({', '.join(t['name'] for t in self.inputs)}), got {len(arrays)}")
        feeds = [self._check(t, a) for t, a in zip(self.inputs, arrays)]
        outs = [np.empty(t["shape"], t["dtype"]) for t in self.outputs]
        status = self._call("run", self._ctx, *[a.ctypes.data for a in feeds],
                            *[o.ctypes.data for o in outs])
        if status:
            raise ExecutionError(f"{self.name}_run failed: {self._message(status)}")
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _check(self, spec: dict[str, Any], a: Any) -> np.ndarray:
        a = np.asarray(a)
        want = np.dtype(spec["dtype"])
        if a.dtype != want and a.dtype.kind != want.kind:
            raise FeedError(f"{self.name}: input {spec['name']} is {want}, got {a.dtype}")
        if list(a.shape) != spec["shape"]:
            raise FeedError(f"{self.name}: input {spec['name']} has shape {spec['shape']}, got "
                            f"{list(a.shape)} (the library was compiled for fixed shapes)")
        return np.require(a.astype(want, copy=False), requirements="C")

    def set_num_threads(self, threads: int) -> None:
        """Threads for large kernels, for every context of this library."""
        self._call("set_num_threads", int(threads))

    def close(self) -> None:
        if getattr(self, "_ctx", None) is not None and self._ctx.value:
            self._call("destroy", self._ctx)
        self._ctx = None  # type: ignore[assignment]

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CompiledModel({self.path!r}, inputs={self.inputs}, outputs={self.outputs})"


def load_compiled(path: str | os.PathLike[str], name: str | None = None,
                  weights: str | None = None, threads: int | None = None) -> CompiledModel:
    """Load ``lib<name>.so`` written by ``graphnn.compile``.

    Args:
        path: the shared library.
        name: the API prefix (default: from the file name ``lib<name>.so``).
        weights: the weights file of a model compiled with ``weights="file"`` (default:
            ``<name>.weights`` next to the library).
        threads: threads for large kernels (default: GRAPHNN_NUM_THREADS, else all CPUs).

    Raises:  GraphnnError when the file is not such a library, when this CPU lacks a feature the
             library was compiled for, or when ``<name>_create`` fails (e.g. a bad weights file).
    """
    return CompiledModel(os.fspath(path), name, weights, threads)
