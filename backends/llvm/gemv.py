"""The LLVM backend's few-row matmul (a GEMV: fewer rows than a register block, such as a dense
layer at batch 1) with its depth split between threads: split-K.

The kernel IR's few-row form splits the columns of b between threads (``_matmul_by_columns``).
Each thread then reads its columns of every row of b: with b row-major, the same part of every
cache-line row, so a core's L2 holds that thread's share in half its sets (the set index comes
from the low address bits, which a column range fixes). W1 at batch 1 (784x512 and 512x512
weights, 1.3 MB per thread) thrashed its L2 that way: its two GEMVs took 33 us in a run
against 19 us each alone, cache-warm (measured on the 2-core Xeon, 2 MiB L2 per core; a C
loop reading 1.3 MB per thread: 30 us by columns, 20 us by rows).

Here the k range is cut into ``chunks(k)`` slices of consecutive rows of b, a contiguous block of
memory each; the parallel-for hands each thread a run of slices, whose partial product (rows x
n) it accumulates in registers and writes to the slot of its first slice in a workspace the
kernel's wrapper allocates. Once every thread is done, the wrapper adds the partials up in slot
order and applies the kernel IR's fused epilogue (bias, activation). One partial per thread, not
per slice: the finishing thread reads the others' partials from their cores' caches, which cost
1-4 us per kernel with 16 slices. So the sum's grouping follows the thread split, and a result
may differ in its last bits between thread counts (as OpenBLAS's do), never between runs. (cuBLAS
and CUTLASS call this split-K; TVM's rfactor makes the same cut.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphnn.backends.kernel.ir import Kernel
from graphnn.backends.kernel.lower import splits_columns
from graphnn.backends.llvm.gemm import MR, GemmEmitter, _prod, row_loop
from llvmlite import ir

from graphnn.dtypes import DType

if TYPE_CHECKING:
    from graphnn.backends.llvm.codegen import KernelEmitter

SLICE_DEPTH = 32  # the fewest k-steps of one slice
MAX_SLICES = 16  # slices of k at most (enough to keep 16 threads busy)
MIN_B = 1 << 16  # elements of b from which the split pays (256 KB of float32)
# vector registers a register block may take: 24 of AVX-512's 32, 12 of AVX2's or NEON's 16
ACCUMULATORS = {True: 24, False: 12}


def chunks(depth: int) -> int:
    """How many slices the k range of ``depth`` steps is cut into (at least 2)."""
    return max(2, min(MAX_SLICES, depth // SLICE_DEPTH))


def applies(kernel: Kernel, bits: int = 128) -> bool:
    """Float matmuls (any fused epilogue) of a 2-D b and fewer than MR rows in all (a 2-D a, or
    batched rows: a dense layer over one token) whose b has MIN_B elements or more and at least
    two slices' worth of k: any of the kernel IR's forms (columns split, rows split where no
    column block divides n, batch loops over rows)."""
    if kernel.schedule[:1] != ("matmul",):
        return False
    _, a, b = kernel.schedule
    out, pa, pb = kernel.params[-1], kernel.params[int(a)], kernel.params[int(b)]
    if len(pb.shape) != 2 or len(pa.shape) != len(out.shape) or pa.shape[:-2] != out.shape[:-2]:
        return False
    depth = pa.shape[-1]
    return out.dtype in (DType.float32, DType.float64) and _prod(out.shape[:-1]) < MR and \
        depth >= 2 * SLICE_DEPTH and depth * out.shape[-1] >= MIN_B


class SplitKGemv(GemmEmitter):
    """Emits a slice range's partial products (``emit``, in the threads) and their sum with the
    epilogue (``finish``, in the wrapper); see the module docstring."""

    packable = False
    KNOBS = ()  # no cache blocking or register rows to tune (only ``threads``)

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        super().__init__(em, kernel, bits)
        self.slices = chunks(self.kk)
        self.workspace_at = len(kernel.params)  # the workspace's position in em.params
        # a register block: all rows by nvec vectors of columns, ACCUMULATORS at most
        self.nvec = max(1, min(8, ACCUMULATORS[bits >= 512] // self.m))

    @staticmethod
    def parallel_extent(kernel: Kernel, bits: int) -> int | None:
        _, a, _ = kernel.schedule
        return chunks(kernel.params[int(a)].shape[-1])

    @staticmethod
    def workspace(kernel: Kernel, bits: int) -> int:
        """One partial product (rows x n) per slice, then one flag per slice."""
        out = kernel.params[-1]
        _, a, _ = kernel.schedule
        return chunks(kernel.params[int(a)].shape[-1]) * (_prod(out.shape) + 1)

    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        """partial[lo] = a[:, k_lo:k_hi] @ b[k_lo:k_hi, :] over the slices [lo, hi) of this
        thread, accumulated in registers; flag[lo] = 1 and the range's other flags 0, so
        ``finish`` adds just the threads' partials (the parallel-for's ranges cover every
        slice once, and the first starts at 0)."""
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        lo, hi = bounds if bounds is not None else (self.c(0), self.c(self.slices))
        self.accs = [[self.slot(self.vec, f"acc{r}_{v}") for v in range(self.nvec)]
                     for r in range(self.m)]
        first = ir.Constant(ir.IntType(1), 1)
        block = self.nvec * self.width
        ws = self.em.params[self.workspace_at]
        with b.if_then(b.icmp_signed("<", lo, hi)):  # a thread past the last slice: idle
            k0 = b.sdiv(b.mul(lo, self.c(self.kk)), self.c(self.slices))
            k1 = b.sdiv(b.mul(hi, self.c(self.kk)), self.c(self.slices))
            base = b.mul(lo, self.c(self.m * self.n))
            self.out_at = lambda row, col: b.gep(
                ws, [b.add(base, self.at(row, col, self.n))], inbounds=True,
                source_etype=self.ty)
            with for_range(b, self.n // block, "jt") as jt:
                self.tile(self.c(0), self.m, b.mul(jt, self.c(block)), self.nvec, k0, k1, first)
            done = self.n // block * block
            while self.n - done >= self.width:  # whole vectors past the last block
                self.tile(self.c(0), self.m, self.c(done), 1, k0, k1, first)
                done += self.width
            if done < self.n:  # the last columns: one masked vector
                self.tile(self.c(0), self.m, self.c(done), 1, k0, k1, first,
                          lanes=self.n - done)
            with for_range(b, hi, "flag", start=lo) as s:
                value = b.select(b.icmp_signed("==", s, lo), ir.Constant(self.ty, 1.0),
                                 ir.Constant(self.ty, 0.0))
                b.store(value, self.flag(s))

    def flag(self, s: ir.Value) -> ir.Value:
        at = self.b.add(self.c(self.slices * self.m * self.n), s)
        return self.b.gep(self.em.params[self.workspace_at], [at], inbounds=True,
                          source_etype=self.ty)

    def finish(self) -> None:
        """out = the sum of the threads' partials (slot 0's, then each flagged one's in slot
        order), then the fused epilogue; in the wrapper, after every slice is done."""
        from graphnn.backends.llvm.codegen import for_range

        b, width, size = self.b, self.width, self.m * self.n
        ws = self.em.params[self.workspace_at]
        mask = ir.Constant(ir.VectorType(ir.IntType(1), width),
                           [int(i < size % width) for i in range(width)])

        def vectors(s: ir.Value, add: bool) -> None:
            def one(at: ir.Value, lanes: ir.Constant | None) -> None:
                part = self.load_vec(b.gep(ws, [b.add(b.mul(s, self.c(size)), at)],
                                           inbounds=True, source_etype=self.ty), lanes)
                if add:
                    part = b.fadd(self.load_vec(self.ptr(self.o, at), lanes), part)
                self.store_vec(part, self.ptr(self.o, at), lanes)

            with for_range(b, size // width, "sum") as v:
                one(b.mul(v, self.c(width)), None)
            if size % width:
                one(self.c(size // width * width), mask)

        vectors(self.c(0), add=False)
        with for_range(b, self.slices, "part", start=self.c(1)) as s:
            taken = b.fcmp_ordered("!=", b.load(self.flag(s), typ=self.ty),
                                   ir.Constant(self.ty, 0.0))
            with b.if_then(taken):
                vectors(s, add=True)
        self.epilogue_rows()

    def epilogue_rows(self) -> None:
        """The kernel IR's epilogue loop (its row loop's third statement), for every row and,
        in the column-split form, every column block."""
        from graphnn.backends.llvm.codegen import for_range

        if not splits_columns(self.k):  # rows, under batch loops or not
            self.epilogue(self.c(0), self.c(self.m))
            return
        rows = row_loop(self.k)
        if len(rows.body) < 3:
            return
        blocks = self.k.body[0].extent  # type: ignore[union-attr]
        with for_range(self.b, blocks, "jbe") as jb:
            self.em.vars["jb"] = jb
            with for_range(self.b, self.m, "ie") as i:
                self.em.vars["i"] = i
                self.em.stmt(rows.body[-1])
