"""Backends: one interface (``base.Backend``), looked up by name.

``reference`` (numpy) is the oracle; ``llvm`` and ``opencl`` generate code. ``llvm`` is the
default (``DEFAULT_BACKEND``); ``GRAPHNN_BACKEND`` names another for the process. (The
ahead-of-time compiler, ``graphnn.backends.aot``, builds libraries rather than sessions.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from graphnn.backends.base import Backend, Executable, RunResult

from graphnn.errors import GraphError

_FACTORIES: dict[str, Callable[..., Backend]] = {}
DEFAULT_BACKEND = "llvm"


def default_backend() -> str:
    """The backend a Session, ``Module.compile`` or ``load_model`` gets when given none:
    ``GRAPHNN_BACKEND`` if set, else ``DEFAULT_BACKEND`` ("llvm")."""
    return os.environ.get("GRAPHNN_BACKEND") or DEFAULT_BACKEND


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Make ``Session(backend=name)`` build its backend with ``factory()``."""
    _FACTORIES[name] = factory


def get_backend(name: str | Backend | None = None, **options: Any) -> Backend:
    """The backend called ``name`` (None: ``default_backend()``) built with ``options``
    (``device=`` for opencl); a Backend instance passes through.

    Raises:  GraphError naming the available backends for an unknown name, or naming the options
             the backend does not take.
    """
    source = ""
    if name is None:
        name = default_backend()
        source = " (from GRAPHNN_BACKEND)" if os.environ.get("GRAPHNN_BACKEND") else ""
    if not isinstance(name, str):
        return name
    if name not in _FACTORIES:
        raise GraphError(f"unknown backend {name!r}{source}; available: "
                         f"{', '.join(sorted(_FACTORIES))}")
    try:
        return _FACTORIES[name](**options)
    except TypeError as e:
        if not options:
            raise
        raise GraphError(f"backend {name!r} does not take {', '.join(options)}= ({e})") from None


def available_backends() -> list[str]:
    return sorted(_FACTORIES)


def _reference() -> Backend:
    from graphnn.backends.reference import ReferenceBackend

    return ReferenceBackend()


def _llvm() -> Backend:
    from graphnn.backends.llvm import LLVMBackend

    return LLVMBackend()


def _opencl(device: str | int | None = None) -> Backend:
    from graphnn.backends.opencl import OpenCLBackend

    return OpenCLBackend(device)


register_backend("reference", _reference)
register_backend("llvm", _llvm)
register_backend("opencl", _opencl)

__all__ = ["Backend", "Executable", "RunResult", "available_backends", "get_backend",
           "register_backend"]
