"""The LLVM backend (``backend="llvm"``): kernel IR rendered to LLVM IR, optimised at O3 for the
host CPU and run in-process through MCJIT.

State: elementwise ops (all of them, broadcasting included), fused elementwise kernels, plain and
fused reductions (sum, mean, max, min, prod), reshapes, transposes, slices and fills run as native
code. Every other op still runs its numpy reference between native segments (the executable's
``fallback_ops``); matmul/convolution micro-kernels, multi-threading, the compile cache and the
single native entry point are the next steps of this backend.
"""

from graphnn.backends.llvm.executable import LLVMBackend, LLVMExecutable

__all__ = ["LLVMBackend", "LLVMExecutable"]
