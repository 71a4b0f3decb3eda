"""Ahead-of-time compilation: a model -> a standalone shared library with a C header.

``compile`` (exported as ``graphnn.compile``) builds it; ``load_compiled`` loads it back into
Python with ctypes. See docs/deployment.md.
"""

from graphnn.backends.aot.build import Artifact, compile
from graphnn.backends.aot.loader import CompiledModel, load_compiled

__all__ = ["Artifact", "CompiledModel", "compile", "load_compiled"]
