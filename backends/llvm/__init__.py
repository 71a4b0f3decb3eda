"""The LLVM backend (``backend="llvm"``): kernel IR rendered to LLVM IR, optimised at O3 for the
host CPU and run in-process through MCJIT.

State (docs/llvm.md): every op of the op set, fused kernels and gradients run as native,
multi-threaded code, cached on disk; GEMM and convolution through blocked templates. Nodes a
lowering declines, or that ``skip`` names, run their numpy reference between native segments
(the executable's ``fallback_ops``). A single native entry point per run using the memory plan
is a next step.
"""

from graphnn.backends.llvm.executable import LLVMBackend, LLVMExecutable

__all__ = ["LLVMBackend", "LLVMExecutable"]
