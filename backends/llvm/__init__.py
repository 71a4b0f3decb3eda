"""The LLVM backend (``backend="llvm"``): kernel IR rendered to LLVM IR, optimised at O3 for the
host CPU and run in-process through MCJIT.

State (docs/llvm.md): elementwise ops, fused kernels, reductions, softmax-like row ops, matmul
with epilogues, max pooling, data movement run as native, multi-threaded code, cached on disk.
Other ops still run their numpy reference between native segments (the executable's
``fallback_ops``); a packed GEMM, im2col convolution and a single native entry point using the
memory plan are the next steps.
"""

from graphnn.backends.llvm.executable import LLVMBackend, LLVMExecutable

__all__ = ["LLVMBackend", "LLVMExecutable"]
