"""The LLVM backend's matmul template: a register-blocked, cache-blocked GEMM with explicit
vectors, plugged in behind the kernel IR's ``("matmul", a, b)`` schedule: 2-D operands, batched
rows against a 2-D b (one matrix of all rows), or one GEMM per batch index when a, b and the
output share their batch dims. The convolution templates (``conv_gemm.py``, ``conv_grads.py``)
reuse it with their own operand addressing.

For the rows [lo, hi) a thread owns (the parallel-for splits the rows, or the batch indices):
for each block of ``KC`` steps of k, and within it each panel of ``NC`` columns (so the
``KC x NC`` block of b stays in L2 while the row blocks sweep it), each ``MR x NR`` block of the
output is accumulated in MR x 2 vector registers (MR = 12 rows with AVX-512's 32 registers, 6
with 16; NR = 2 vectors of the target's width: 32 floats with AVX-512, 16 with AVX2, 8 with SSE
or NEON): per k, two vector loads of b, MR broadcasts of a and 2 MR fused multiply-adds
(``llvm.fmuladd``: an FMA where the target has one). The first k-block starts from zero, later
ones from the partial sums in the output. Columns past the last whole NR block take one vector,
then one vector with the lanes past n masked off (``llvm.masked.load``/``store``: AVX-512 and
AVX2 have them); rows past the last whole MR block go in blocks of 8 and 4 (those smaller than
MR), pairs, then alone. The fused epilogue (bias, activation, residual) runs over the thread's
rows once all k-blocks are done (the plain GEMM's on each finished block, in the last k-block's
write-back, while it is in L1). This is the BLIS/GotoBLAS blocking; GEMMs of PACK_ROWS rows or
more also pack each panel of b so that every NR-column tile's KC x NR block is contiguous (a of
a row block is read in place); a constant b is packed so once per module (``prepacked``), for
any row count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from graphnn.backends.kernel.ir import Kernel, Loop, Stmt
from graphnn.backends.kernel.lower import splits_columns
from llvmlite import ir

from graphnn.dtypes import DType

if TYPE_CHECKING:
    from graphnn.backends.llvm.codegen import KernelEmitter

I32, I64 = ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType()
MR = 6  # rows per register block with 16 vector registers; the fewest rows a template takes
MR_WIDE = 12  # rows per register block with AVX-512's 32 registers (24 accumulators)
KC = 256  # k-steps per cache block
NR_TILE = 64  # pixels per parallel iteration of a one-image convolution: a multiple of every NR
NC = 256  # columns per panel: a KC x NC float32 block of b is 256 KiB, a quarter of an L2
PACK_ROWS = 256  # rows of one GEMM from which its panels of b are packed
MAX_PREPACKED = 1 << 23  # values of a constant b packed once per module, at most (32 MiB f32)
MIN_WORK = 1 << 15  # m * n * k below this: the generic loop nest (no blocking overhead)


def vector_bits(features: str) -> int:
    """The widest vector registers the target features promise (bits)."""
    flags = set(features.split(","))
    if "+avx512f" in flags:
        return 512
    if "+avx" in flags or "+avx2" in flags:
        return 256
    return 128


def _prod(dims: tuple[int, ...]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _lanes(dtype: DType, bits: int) -> int:
    """NR: the columns of a register block (two vectors)."""
    return 2 * bits // (32 if dtype is DType.float32 else 64)


def applies(kernel: Kernel, bits: int = 128) -> bool:
    """The template handles float matmuls (with any fused epilogue) of a 2-D b, with a and the
    output 2-D or with the same batch dims (a dense layer over a sequence: the rows of all
    batches form one row-major matrix), or of a, b and out with the same batch dims (attention's
    q k^T and p v: one GEMM per batch index), big enough to pay: at least MR rows and MIN_WORK
    multiply-adds per matrix. Any number of columns: fewer than a vector are one masked vector
    (the edge tiles), which still beat the loop nest (its accumulators in memory) by far: a
    256x512 @ 512x10 dense layer 0.15x the time, @ 512x1 0.38x, 1024x64 @ 64x3 0.60x."""
    if kernel.schedule[:1] != ("matmul",) or splits_columns(kernel):
        return False
    _, a, b = kernel.schedule
    out, pa, pb = kernel.params[-1], kernel.params[int(a)], kernel.params[int(b)]
    if len(pa.shape) != len(out.shape) or pa.shape[:-2] != out.shape[:-2]:
        return False
    if len(pb.shape) == 2:
        m = _prod(out.shape[:-1])
    elif pb.shape[:-2] == out.shape[:-2]:
        m = out.shape[-2]
    else:
        return False
    n, k = out.shape[-1], pa.shape[-1]
    return out.dtype in (DType.float32, DType.float64) and m >= MR and k >= 1 and \
        m * n * k >= MIN_WORK


class GemmEmitter:
    """Emits the template into the function the KernelEmitter is building."""

    groups = 1  # the convolutions' groups: m // groups rows per GEMM
    packable = True  # whether big GEMMs may pack panels of b (``b_at`` addresses every k)
    KNOBS: tuple[str, ...] = ("kc", "nc", "mr")  # what schedule tuning may set (tuning.py)

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        self.em, self.b, self.k = em, em.b, kernel
        _, a, b = kernel.schedule
        self.a, self.bb, self.o = int(a), int(b), len(kernel.params) - 1
        out = kernel.params[-1]
        self.batch = len(out.shape) > 2  # rows of all batches as one matrix ...
        self.batched_b = len(kernel.params[self.bb].shape) > 2  # ... or one GEMM per batch
        self.m = out.shape[-2] if self.batched_b else _prod(out.shape[:-1])
        self.n = out.shape[-1]
        self.kk = kernel.params[self.a].shape[-1]
        self.types(out.dtype, bits)
        # operand addressing (row-major): element (row, k) of a, (k, col) of b, (row, col) of out
        self.a_at = lambda row, k: self.ptr(self.a, self.at(row, k, self.kk))
        self.b_at = lambda k, col: self.ptr(self.bb, self.at(k, col, self.n))
        self.out_at = lambda row, col: self.ptr(self.o, self.at(row, col, self.n))

    def types(self, dtype: DType, bits: int) -> None:
        """Scalar and vector types for ``dtype`` at the target's vector width (``bits``)."""
        f32 = dtype is DType.float32
        self.ty = ir.FloatType() if f32 else ir.DoubleType()
        self.width = bits // (32 if f32 else 64)
        self.vec = ir.VectorType(self.ty, self.width)
        self.nr = 2 * self.width
        # 2 MR accumulators, two vectors of b and a broadcast must fit in the registers
        # (measured, one thread of an AVX-512 Xeon: 1024^3 14.9 -> 13.3 ms with 12 rows, W1
        # batch 256 2.45 -> 2.28, W4 batch 8 32.1 -> 29.7; a Zen 4 ran 6, 8 and 12 alike)
        self.mr = MR_WIDE if bits >= 512 else MR
        self.kc, self.nc = KC, NC  # the cache blocking (tuning may set both)
        self.align = 4 if f32 else 8
        self.vec_bytes = bits // 8  # a packed panel's vectors lie on multiples of this
        self.fma_vec = f"llvm.fmuladd.v{self.width}f{32 if f32 else 64}"
        self.fma = f"llvm.fmuladd.f{32 if f32 else 64}"

    def configure(self, schedule: dict[str, int]) -> None:
        """Take a tuned schedule's knobs (``tuning.py``; those not in KNOBS are the caller's)."""
        for knob in self.KNOBS:
            if knob in schedule:
                setattr(self, knob, int(schedule[knob]))

    # -- helpers -----------------------------------------------------------------------------
    def c(self, v: int) -> ir.Constant:
        return ir.Constant(I64, v)

    def ptr(self, buf: int, index: ir.Value) -> ir.Value:
        return self.b.gep(self.em.params[buf], [index], inbounds=True, source_etype=self.ty)

    def at(self, row: ir.Value, col: ir.Value, stride: int) -> ir.Value:
        return self.b.add(self.b.mul(row, self.c(stride)), col)

    def splat(self, x: ir.Value) -> ir.Value:
        undef = ir.Constant(self.vec, ir.Undefined)
        one = self.b.insert_element(undef, x, ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), self.width), [0] * self.width)
        return self.b.shuffle_vector(one, undef, mask)

    def lane_mask(self, keep: list[bool]) -> ir.Constant | None:
        """A constant mask of the vector lanes to keep (for ``load_vec``/``store_vec``), or
        None where all are kept."""
        return None if all(keep) else ir.Constant(ir.VectorType(ir.IntType(1), self.width),
                                                  [int(x) for x in keep])

    def lane_order(self, lanes: list[int]) -> ir.Constant:
        """A shuffle's lane indices (into the two vectors it takes, the second's from width):
        ``lane_order(list(range(0, 2 * width, 2)))`` picks the even lanes of a pair."""
        return ir.Constant(ir.VectorType(I32, self.width), lanes)

    def malloc(self, elements: int | ir.Value) -> ir.Value:
        """A scratch buffer of ``elements`` values from the runtime's cache (its own for this
        call, so threads never share one, and reused by later calls: ``runtime.py``); ``free``
        it before the function returns."""
        module = self.em.module
        fn = module.globals.get("graphnn_scratch_alloc")
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(PTR, [I64]), "graphnn_scratch_alloc")
            fn.return_value.add_attribute("noalias")  # as malloc's: aliases nothing alive
        return self.b.call(fn, [self.bytes(elements)])

    def zero(self, at: ir.Value, elements: int | ir.Value) -> None:
        """``elements`` values from ``at`` set to 0.0 (llvm.memset: all-zero bits)."""
        module = self.em.module
        name = "llvm.memset.p0.i64"
        fn = module.globals.get(name) or ir.Function(module, ir.FunctionType(
            ir.VoidType(), [PTR, ir.IntType(8), I64, ir.IntType(1)]), name)
        self.b.call(fn, [at, ir.Constant(ir.IntType(8), 0), self.bytes(elements),
                         ir.Constant(ir.IntType(1), 0)])

    def copy(self, dst: ir.Value, src: ir.Value, elements: int) -> None:
        """``elements`` values from src to dst (llvm.memcpy of a constant size: inline moves)."""
        module = self.em.module
        name = "llvm.memcpy.p0.p0.i64"
        fn = module.globals.get(name) or ir.Function(module, ir.FunctionType(
            ir.VoidType(), [PTR, PTR, I64, ir.IntType(1)]), name)
        self.b.call(fn, [dst, src, self.bytes(elements), ir.Constant(ir.IntType(1), 0)])

    def bytes(self, elements: int | ir.Value) -> ir.Value:
        if isinstance(elements, int):
            return self.c(elements * self.align)
        return self.b.mul(elements, self.c(self.align))

    def free(self, buffer: ir.Value) -> None:
        module = self.em.module
        fn = module.globals.get("graphnn_scratch_free") or ir.Function(
            module, ir.FunctionType(ir.VoidType(), [PTR]), "graphnn_scratch_free")
        self.b.call(fn, [buffer])

    def slot(self, ty: ir.Type, name: str) -> ir.AllocaInstr:
        """A stack slot in the entry block (SROA turns it into a register)."""
        with self.b.goto_block(self.em.entry):
            self.b.position_at_start(self.em.entry)
            return self.b.alloca(ty, name=name)

    # -- the template --------------------------------------------------------------------------
    @staticmethod
    def parallel_extent(kernel: Kernel, bits: int) -> int | None:
        """The threads split the rows of all batches (a 2-D b: so one sequence's rows are
        shared out too) or the batch indices (batched b)."""
        if kernel.schedule[:1] != ("matmul",):
            return None  # the convolution templates split the outer loop, as their loop nests
        out, b = kernel.params[-1], kernel.params[int(kernel.schedule[2])]
        return _prod(out.shape[:-2]) if len(b.shape) > 2 else _prod(out.shape[:-1])

    @staticmethod
    def workspace(kernel: Kernel, bits: int) -> int:
        """Values of a buffer the kernel's wrapper allocates per call and hands to every
        thread's ``emit`` (as ``em.params[len(kernel.params)]``), then to ``finish``: 0, none."""
        return 0

    def prepare(self) -> None:
        """What the wrapper runs on the calling thread before the threads start (or ``emit``
        itself, called with no bounds, where the kernel runs on one thread): a constant b's
        panels packed, on the module's first call (``prepacked``)."""
        from graphnn.backends.llvm.codegen import for_range

        if not self.prepacked():
            return
        packed, ready = self.module_array("packed_b", self.prepacked_size())

        def fill() -> None:
            base = self.untyped(packed)
            with for_range(self.b, self.k_blocks(), "pkc") as kc:
                k0, k1 = self.k_block(kc)
                self.packed = self.prepacked_panel(base, kc, self.c(0))
                self.pack(self.c(0), self.c(self.n // self.nr), k0, k1)

        self.fill_once(ready, fill)

    def module_array(self, what: str, size: int) -> tuple[ir.GlobalVariable, ir.GlobalVariable]:
        """``{kernel}_{what}``: a global array of ``size`` values of the module (zero-filled
        memory, not part of the object file, 64-byte aligned) and its flag, 0 until
        ``fill_once`` has filled it: what a template derives once from a constant input (the
        same array, never written, in every run of the JIT's executable; AOT libraries mark no
        input constant, as their contexts may run at once and a module-wide array filled on
        first use would race between them)."""
        module, name = self.em.module, f"{self.k.name}_{what}"
        if name not in module.globals:
            ty = ir.ArrayType(self.ty, size)
            array = ir.GlobalVariable(module, ty, name)
            array.linkage, array.initializer, array.align = "internal", ir.Constant(ty, None), 64
            ready = ir.GlobalVariable(module, ir.IntType(8), name + "_ready")
            ready.linkage, ready.initializer = "internal", ir.Constant(ir.IntType(8), 0)
        return module.globals[name], module.globals[name + "_ready"]

    def fill_once(self, ready: ir.GlobalVariable, fill: Callable[[], None]) -> None:
        """``fill()`` where ``ready`` is still 0, then ready = 1."""
        b, flag = self.b, ir.IntType(8)
        with b.if_then(b.icmp_unsigned("==", b.load(ready, typ=flag), ir.Constant(flag, 0))):
            fill()
            b.store(ir.Constant(flag, 1), ready)

    def untyped(self, array: ir.GlobalVariable) -> ir.Value:
        """An array's address as an untyped pointer, as the vector loads and stores take it
        (llvmlite types a global's address by the array, and keeps that type through a
        bitcast)."""
        return self.b.inttoptr(self.b.ptrtoint(array, I64), PTR)

    def prepacked(self) -> bool:
        """Whether b is a constant (inference weights) whose panels are packed once per module
        (``module_array``): every panel's copy saved on every call and thread, and b read as
        one stream however few rows the GEMM has."""
        return self.packable and self.k.schedule[:1] == ("matmul",) and not self.batched_b \
            and self.k.params[self.bb].constant and self.n >= self.nr \
            and self.prepacked_size() <= MAX_PREPACKED

    def prepacked_size(self) -> int:
        """Values of the packed b: every k-block's KC x NR block of each whole tile."""
        return self.k_blocks() * self.kc * (self.n // self.nr) * self.nr

    def prepacked_panel(self, base: ir.Value, kc: ir.Value, j_lo: ir.Value) -> ir.Value:
        """Where k-block kc's panel starting at column j_lo begins in the packed array."""
        b, tiles = self.b, self.n // self.nr
        tile = b.add(b.mul(kc, self.c(tiles)), b.sdiv(j_lo, self.c(self.nr)))
        return b.gep(base, [b.mul(tile, self.c(self.kc * self.nr))], inbounds=True,
                     source_etype=self.ty)

    def finish(self) -> None:
        """What the wrapper runs once every thread is done (with a workspace only)."""

    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        lo, hi = bounds if bounds is not None else (
            self.c(0), self.c(self.parallel_extent(self.k, 0) or 0))
        if bounds is None:  # the kernel unsplit, no wrapper: a constant b is not packed yet
            self.prepare()
        self.slots()
        if not self.batched_b:  # rows [lo, hi) of the one matrix, the epilogue on each block
            full = b.mul(b.sdiv(b.sub(hi, lo), self.c(self.mr)), self.c(self.mr))
            self.rows(lo, hi, full, b.add(lo, full), accumulate=False, write_back=True)
            self.release()
            return
        m, n, kk = self.m, self.n, self.kk
        with for_range(b, hi, "bt", start=lo) as bt:  # one GEMM per batch index
            self.a_at = lambda row, k: self.ptr(self.a, self.at(b.add(b.mul(bt, self.c(m)), row),
                                                                k, kk))
            self.b_at = lambda k, col: self.ptr(self.bb, self.at(b.add(b.mul(bt, self.c(kk)), k),
                                                                 col, n))
            self.out_at = lambda row, col: self.ptr(self.o, self.at(
                b.add(b.mul(bt, self.c(m)), row), col, n))
            full = self.c(m // self.mr * self.mr)
            self.rows(self.c(0), self.c(m), full, full, accumulate=False)
            self.epilogue(b.mul(bt, self.c(m)), b.mul(b.add(bt, self.c(1)), self.c(m)))
        self.release()

    def slots(self) -> None:
        """The accumulators' stack slots and, where one GEMM has PACK_ROWS rows or more, this
        call's buffer for packed panels of b (``release`` frees it)."""
        self.accs = [[self.slot(self.vec, f"acc{r}_{v}") for v in range(2)] for r in range(self.mr)]
        # packing costs a pass over each panel, which pays once enough row blocks read it
        # (measured, 2 threads: 1024^3 10.8 -> 10.1 ms; 64x288x576 0.108 -> 0.121 ms)
        self.prepacks = self.prepacked()
        self.packs = self.prepacks or (self.packable and self.m // self.groups >= PACK_ROWS)
        if self.prepacks:
            self.packed_base = self.untyped(self.module_array("packed_b",
                                                              self.prepacked_size())[0])
        elif self.packs:
            self.pack_raw = self.malloc(self.kc * self.nc + 64 // self.align)
            addr = self.b.ptrtoint(self.pack_raw, I64)  # aligned to a cache line
            addr = self.b.and_(self.b.add(addr, self.c(63)), self.c(-64))
            self.packed = self.b.inttoptr(addr, PTR)

    def release(self) -> None:
        """Frees what ``slots`` allocated."""
        if self.packs and not self.prepacks:
            self.free(self.pack_raw)

    def pack(self, j_lo: ir.Value, tiles: ir.Value, k0: ir.Value, k1: ir.Value) -> None:
        """packed[t][k - k0][:] = b[k, j_lo + t * NR : j_lo + (t + 1) * NR] for the panel's
        tiles t: each tile's KC x NR block contiguous, so the micro-kernel reads b as one
        stream (a row of b is a whole line apart: 2.3 KB in a 576-pixel convolution)."""
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        with for_range(b, tiles, "pt") as t:
            j0 = b.add(j_lo, b.mul(t, self.c(self.nr)))
            with for_range(b, k1, "pk", start=k0) as k:
                for v in range(2):
                    value = self.load_vec(self.b_at(k, b.add(j0, self.c(v * self.width))), None)
                    self.store_vec(value, self.packed_at(t, b.sub(k, k0), v), None, aligned=True)

    def packed_at(self, t: ir.Value, k: ir.Value, v: int) -> ir.Value:
        b = self.b
        at = b.add(b.mul(b.add(b.mul(t, self.c(self.kc)), k), self.c(self.nr)),
                   self.c(v * self.width))
        return b.gep(self.packed, [at], inbounds=True, source_etype=self.ty)

    def rows(self, lo: ir.Value, hi: ir.Value, full: ir.Value, split: ir.Value,
             accumulate: bool, cols: tuple[ir.Value, ir.Value] | None = None,
             edges: ir.Value | None = None, write_back: bool = False) -> None:
        """out[lo:hi, :] = a[lo:hi, :] @ b (+ out when ``accumulate``), k-block by k-block and,
        within one, panel by panel of NC columns, so the KC x NC block of b the row blocks
        sweep stays in L2 (W3's 3136-pixel convolutions re-read a 3 MB block per row block
        before). ``cols``: only the whole-tile columns [begin, end) (multiples of NR), and the
        edge columns past the last whole tile only where ``edges`` holds. ``write_back``: the
        kernel's fused epilogue on each block of the output as the last k-block finishes it, while
        it is in L1 (the plain GEMM's; measured the same as after the GEMM, 0.99-1.01x)."""
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        blocks = self.k_blocks()
        epilogue = write_back and len(row_loop(self.k).body) >= 3  # a fused epilogue to run
        whole = (self.n // self.nr) * self.nr  # columns in whole NR tiles
        j_begin, j_end = cols if cols is not None else (self.c(0), self.c(whole))
        panels = b.sdiv(b.add(b.sub(j_end, j_begin), self.c(self.nc - 1)), self.c(self.nc))
        with for_range(b, blocks, "kc") as kc:
            k0, k1 = self.k_block(kc)
            first = b.icmp_signed("==", kc, self.c(0))
            last = b.icmp_signed("==", kc, self.c(blocks - 1))
            if accumulate:
                first = ir.Constant(ir.IntType(1), 0)

            def finished(i0: ir.Value, r: int, c_lo: ir.Value, c_hi: ir.Value) -> None:
                if epilogue:  # the block is final: its epilogue while it is in L1
                    with b.if_then(last):
                        self.epilogue(i0, b.add(i0, self.c(r)), (c_lo, c_hi))

            with for_range(b, panels, "jc") as jc:
                j_lo = b.add(j_begin, b.mul(jc, self.c(self.nc)))
                tiles = b.sdiv(b.sub(self.min(b.add(j_lo, self.c(self.nc)), j_end), j_lo),
                               self.c(self.nr))
                j_hi = b.add(j_lo, b.mul(tiles, self.c(self.nr)))
                if self.prepacks:
                    self.packed = self.prepacked_panel(self.packed_base, kc, j_lo)
                elif self.packs:
                    self.pack(j_lo, tiles, k0, k1)

                def block(i0: ir.Value, r: int) -> None:
                    self.panel(i0, r, j_lo, tiles, k0, k1, first)
                    finished(i0, r, j_lo, j_hi)

                with for_range(b, b.sdiv(full, self.c(self.mr)), "ib") as ib:
                    block(b.add(lo, b.mul(ib, self.c(self.mr))), self.mr)
                self.leftover_rows(split, hi, block)
            if whole < self.n:

                def edge(i0: ir.Value, r: int) -> None:
                    self.edges(i0, r, k0, k1, first)
                    finished(i0, r, self.c(whole), self.c(self.n))

                with b.if_then(edges if edges is not None else ir.Constant(ir.IntType(1), 1)):
                    with for_range(b, b.sdiv(full, self.c(self.mr)), "ie") as ib:
                        edge(b.add(lo, b.mul(ib, self.c(self.mr))), self.mr)
                    self.leftover_rows(split, hi, edge)

    def k_blocks(self) -> int:
        """How many cache blocks the k range is cut into (``k_block`` gives each one's)."""
        return -(-self.kk // self.kc)

    def k_block(self, kc: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Block kc's bounds [k0, k1) as ``k_steps`` takes them: KC steps of k."""
        return self.block(kc, self.kc, self.kk)

    def block(self, index: ir.Value, size: int, total: int) -> tuple[ir.Value, ir.Value]:
        """[index * size, min((index + 1) * size, total)): block ``index`` of ``total``."""
        lo = self.b.mul(index, self.c(size))
        return lo, self.min(self.b.add(lo, self.c(size)), self.c(total))

    def k_steps(self, k0: ir.Value, k1: ir.Value, step: Callable[
            [ir.Value, Callable[[ir.Value], ir.Value], Callable[[ir.Value], ir.Value]], None]
            ) -> None:
        """The micro-kernel's loop over one k-block: ``step(k, a_of_row, b_of_col)`` with the
        pointers to a[row, k] and b[k, col] for each k."""
        from graphnn.backends.llvm.codegen import for_range

        with for_range(self.b, k1, "k", start=k0) as k:
            step(k, lambda row: self.a_at(row, k), lambda col: self.b_at(k, col))

    def leftover_rows(self, split: ir.Value, hi: ir.Value,
                      body: Callable[[ir.Value, int], None]) -> None:
        """The rows [split, hi) past the last register block (fewer than ``self.mr``): blocks of
        8 and of 4 where they are smaller than a register block, then pairs, then a single row
        (a pair loads b once for two rows: a 64-channel convolution has 4 such rows per image
        with 6 or 12 rows per block)."""
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        for size in (8, 4, 2):
            if size >= self.mr:
                continue
            count = b.sdiv(b.sub(hi, split), self.c(size))
            with for_range(b, count, f"ip{size}") as ip:
                body(b.add(split, b.mul(ip, self.c(size))), size)
            split = b.add(split, b.mul(count, self.c(size)))
        with b.if_then(b.icmp_signed("<", split, hi)):
            body(split, 1)

    def clamp(self, v: ir.Value, lo: ir.Value, hi: ir.Value) -> ir.Value:
        b = self.b
        v = b.select(b.icmp_signed("<", v, lo), lo, v)
        return b.select(b.icmp_signed(">", v, hi), hi, v)

    def group_planes(self, lo: ir.Value, hi: ir.Value, c_out: int, per_group: int,
                     groups: int, body: Callable[..., None]) -> None:
        """For the (image, channel) planes [lo, hi) of an NCHW output (plane = image * c_out +
        channel): ``body(img, g, g_lo, r_lo, r_hi)`` for each image and group with planes in
        the range, [r_lo, r_hi) those planes and g_lo the group's first plane."""
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        first_img = b.sdiv(lo, self.c(c_out))
        last_img = b.add(b.sdiv(b.sub(hi, self.c(1)), self.c(c_out)), self.c(1))
        with for_range(b, last_img, "img", start=first_img) as img:
            base = b.mul(img, self.c(c_out))
            with for_range(b, groups, "grp") as g:
                g_lo = b.add(base, b.mul(g, self.c(per_group)))
                r_lo = self.clamp(lo, g_lo, b.add(g_lo, self.c(per_group)))
                r_hi = self.clamp(hi, g_lo, b.add(g_lo, self.c(per_group)))
                with b.if_then(b.icmp_signed("<", r_lo, r_hi)):
                    body(img, g, g_lo, r_lo, r_hi)

    def min(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.select(self.b.icmp_signed("<", a, b), a, b)

    def panel(self, i0: ir.Value, rows: int, j_lo: ir.Value, tiles: ir.Value, k0: ir.Value,
              k1: ir.Value, first: ir.Value) -> None:
        """out[i0:i0+rows, j_lo:j_lo+tiles*NR] (+)= a[i0:i0+rows, k0:k1] @ b[k0:k1, ...]."""
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        with for_range(b, tiles, "jb") as jb:
            packed = (lambda k, v: self.packed_at(jb, b.sub(k, k0), v)) if self.packs else None
            self.tile(i0, rows, b.add(j_lo, b.mul(jb, self.c(self.nr))), 2, k0, k1, first,
                      packed=packed)

    def edges(self, i0: ir.Value, rows: int, k0: ir.Value, k1: ir.Value,
              first: ir.Value) -> None:
        """The columns past the last whole NR tile: one single-vector tile where a vector's
        worth is left, then one masked vector for the rest."""
        done = (self.n // self.nr) * self.nr
        if self.n - done >= self.width:
            self.tile(i0, rows, self.c(done), 1, k0, k1, first)
            done += self.width
        if done < self.n:  # the last columns: one vector with the lanes past n masked off
            self.tile(i0, rows, self.c(done), 1, k0, k1, first, lanes=self.n - done)

    def tile(self, i0: ir.Value, rows: int, j0: ir.Value, nvec: int, k0: ir.Value,
             k1: ir.Value, first: ir.Value, lanes: int = 0,
             packed: Callable[[ir.Value, int], ir.Value] | None = None) -> None:
        """The micro-kernel: rows x nvec vectors of out at (i0, j0) accumulated in registers;
        ``lanes`` > 0: one vector of which only the first ``lanes`` columns exist (masked loads
        and stores, which never touch memory past the masked-off lanes)."""

        b, width = self.b, self.width
        zero = ir.Constant(self.vec, [0.0] * width)
        mask = self.lane_mask([i < lanes for i in range(width)]) if lanes else None
        outs = [[self.out_at(b.add(i0, self.c(r)), b.add(j0, self.c(v * width)))
                 for v in range(nvec)] for r in range(rows)]
        for r in range(rows):
            for v in range(nvec):
                old = self.load_vec(outs[r][v], mask)
                b.store(b.select(first, zero, old), self.accs[r][v])
        def step(k: ir.Value, a_of: Callable[[ir.Value], ir.Value],
                 b_of: Callable[[ir.Value], ir.Value]) -> None:
            bv = [self.load_vec(packed(k, v), None, aligned=True) if packed else
                  self.load_vec(b_of(b.add(j0, self.c(v * width))), mask)
                  for v in range(nvec)]
            for r in range(rows):
                s = self.splat(b.load(a_of(b.add(i0, self.c(r))), typ=self.ty))
                for v in range(nvec):
                    acc = b.load(self.accs[r][v], typ=self.vec)
                    b.store(self.em._call(self.fma_vec, self.vec, s, bv[v], acc),
                            self.accs[r][v])

        self.k_steps(k0, k1, step)
        for r in range(rows):
            for v in range(nvec):
                self.store_vec(b.load(self.accs[r][v], typ=self.vec), outs[r][v], mask)

    def load_vec(self, at: ir.Value, mask: ir.Constant | None, aligned: bool = False
                 ) -> ir.Value:
        if mask is None:
            return self.b.load(at, typ=self.vec, align=self.vec_bytes if aligned else self.align)
        fn = self.intrinsic("load", self.vec, [PTR, I32, mask.type, self.vec])
        return self.b.call(fn, [at, ir.Constant(I32, self.align), mask,
                                ir.Constant(self.vec, [0.0] * self.width)])

    def store_vec(self, value: ir.Value, at: ir.Value, mask: ir.Constant | None,
                  aligned: bool = False) -> None:
        if mask is None:
            self.b.store(value, at, align=self.vec_bytes if aligned else self.align)
            return
        fn = self.intrinsic("store", ir.VoidType(), [self.vec, PTR, I32, mask.type])
        self.b.call(fn, [value, at, ir.Constant(I32, self.align), mask])

    def intrinsic(self, what: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        """``llvm.masked.load``/``store`` for this vector type."""
        name = f"llvm.masked.{what}.v{self.width}f{self.align * 8}.p0"
        module = self.em.module
        return module.globals.get(name) or ir.Function(module, ir.FunctionType(ret, args), name)

    def epilogue(self, lo: ir.Value, hi: ir.Value,
                 cols: tuple[ir.Value, ir.Value] | None = None) -> None:
        """The kernel's fused epilogue loop (the IR's last statement in the row loop) over the
        flat rows [lo, hi) and the columns ``cols`` (default: all)."""
        from graphnn.backends.llvm.codegen import for_range

        rows = row_loop(self.k)
        if len(rows.body) < 3:
            return
        b, shape = self.b, self.k.params[-1].shape
        with for_range(b, hi, "ie", start=lo) as flat:  # flat row -> (b0, b1, ..., i)
            self.em.vars["i"] = b.srem(flat, self.c(shape[-2]))
            inner = shape[-2]
            for d in reversed(range(len(shape) - 2)):
                self.em.vars[f"b{d}"] = b.srem(b.sdiv(flat, self.c(inner)), self.c(shape[d]))
                inner *= shape[d]
            self.em.stmt(rows.body[-1], cols)


def innermost(stmt: Stmt) -> Stmt:
    """The statement under a chain of loops, each loop's first (a conv nest's plane -> the
    statement it runs per pixel)."""
    while isinstance(stmt, Loop):
        stmt = stmt.body[0]
    return stmt


def row_loop(kernel: Kernel) -> Loop:
    """A matmul kernel's row loop (``i``), under its batch or column-block loops: its
    statements are zero, the k loop and, with a fused epilogue, the epilogue loop."""
    rows = kernel.body[0]
    while isinstance(rows, Loop) and rows.var != "i":
        rows = rows.body[0]
    assert isinstance(rows, Loop)
    return rows


def _zero(dt: DType):  # type: ignore[no-untyped-def]
    from graphnn.backends.kernel.ir import Const

    return Const(0.0, dt)
