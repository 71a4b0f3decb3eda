"""Backends: one interface (``base.Backend``), looked up by name.

``reference`` (numpy) is the oracle. The code-generating backends (``llvm``, ``opencl``) and the
ahead-of-time compiler register here when they land.
"""

from __future__ import annotations

from collections.abc import Callable

from graphnn.backends.base import Backend, Executable, RunResult

from graphnn.errors import GraphError

_FACTORIES: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``Session(backend=name)`` build its backend with ``factory()``."""
    _FACTORIES[name] = factory


def get_backend(name: str | Backend) -> Backend:
    """The backend called ``name`` (a Backend instance passes through).

    Raises:  GraphError naming the available backends for an unknown name.
    """
    if not isinstance(name, str):
        return name
    if name not in _FACTORIES:
        raise GraphError(f"unknown backend {name!r}; available: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[name]()


def available_backends() -> list[str]:
    return sorted(_FACTORIES)


def _reference() -> Backend:
    from graphnn.backends.reference import ReferenceBackend

    return ReferenceBackend()


def _llvm() -> Backend:
    from graphnn.backends.llvm import LLVMBackend

    return LLVMBackend()


register_backend("reference", _reference)
register_backend("llvm", _llvm)

__all__ = ["Backend", "Executable", "RunResult", "available_backends", "get_backend",
           "register_backend"]
