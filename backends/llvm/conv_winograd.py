"""The LLVM backend's Winograd convolution F(2x2, 3x3) for 3x3, stride-1, dilation-1,
one-group float32 convolutions (and transposed convolutions: conv's data gradient) with many
output tiles (the weight gradient's is ``winograd_weight_grad.py``).

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016): each 2x2 block
of output pixels ("tile") of channel o is

    Y = A^T [ sum over input channels c of (G g_oc G^T) * (B^T d_c B) ] A

with d_c the 4x4 input patch under the tile (zero outside the input), g_oc the 3x3 weights,
``*`` the elementwise product, and

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]],
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].

So the sum over channels is 16 independent GEMMs, one per position xi of the 4x4 transformed
tile: M[xi] (og x tiles) = U[xi] (og x cg) @ V[xi] (cg x tiles), 16 multiply-adds per 4 output
pixels where the direct convolution does 36: 2.25 times fewer.

The weights are transformed into U (16 x og x cg values) on the calling thread before the
threads start (``prepare``): into a workspace the kernel's wrapper allocates per call (at most
1 MiB, ``MAX_WEIGHTS``), or, for constant weights, once per module into a global array of the
module (at most 4 MiB; inference). Then each thread works through its items: an item is a block
of whole tile rows (across images: the tile rows of all images are numbered img * tile_rows +
ty) and, where there are few blocks, half of the output channels. For a block it transforms the
input into V (16 x cg x columns: the block's tiles, row after row, rounded up to whole
register tiles; only the columns past the shortest block's tiles are zeroed, once a call: a
memset of all of V had taken 5% of W2 batch 1's time, and an unused column after each tile
row, left from a first input transform, 8% more GEMM columns for 26x26 inputs: without
both, W2 batch 1 0.93-0.94x the time), runs the 16 GEMMs (``gemm.GemmEmitter``'s micro-kernel,
with a, b and the output addressed in U, V and M), then transforms M back into output pixels
with the bias, and runs the fused epilogue over whole output lines. A block's V and M take
about ``BLOCK_BYTES``, so they stay in L2 between the GEMMs and the output transform. The input
and output transforms, which read or write every other column (a tile's columns 0, 2 and 1, 3;
its two pixels of a row), work on explicit vectors of tiles with shuffles, the padding as
masked-off lanes: left to LLVM they became gathers and scatters (the explicit ones measured
0.86-0.88x the time of W2 batch 64's layers, 0.96-0.97x of ResNet-18's 56x56 and 28x28 ones);
the input's in one pass (the first version went down the rows into a buffer of column pairs,
then across: one pass measured 0.86-1.02x of that, and tiles over the padding left to scalar
code had taken 40% of a transposed convolution's time).

Measured (2 threads, AVX-512 Xeon, float32, interleaved in one process, against the implicit
GEMM, constant weights): W2 batch 64's 26x26x32 -> 64 0.76-0.89x, 12x12x64 -> 128
0.78-0.94x; ResNet-18's 56x56x64 0.86-0.90x, 28x28x128 (196 tiles) 0.71-0.85x; 14x14x128
(49 tiles) 0.84-0.95x; with the vector transforms and aligned scratch buffers, W2 batch 1's
26x26x32 -> 64 (144 tiles) 0.96x and 12x12x64 -> 128 (25 tiles) 0.81x, taken since (``MIN_MACS``,
``MIN_FILL_TILES``); small ones still lose (1x128x7x7 -> 128, 16 tiles in 32 columns: 1.38x).
With the weights transformed per thread and call, before ``prepare``, ResNet-18's 28x28x128
had been 0.99-1.05x. A stride-1 conv_transpose is the convolution of its input, padded by
2 - pad, with the weights flipped and their channels swapped (``weight``): W6's data gradients
against GEMM + col2im, in the step (interleaved, disk cache off), 64x64x24x24 -> 32x26x26 with
its ReLU mask 4.12 -> 3.57 ms, 64x128x10x10 -> 64x12x12 2.87 -> 2.89; the step 0.945-0.96x.
(Measured at 1.2-1.8x and 0.96-1.28x in an earlier session, before the skewed matrices.)
Rounding differs from the
direct sum (the transforms add and halve): about 1e-6 of the output's scale for unit-scale
data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from graphnn.backends.kernel.ir import Kernel, Stmt
from graphnn.backends.llvm.conv_implicit import Shape, conv_epilogue
from graphnn.backends.llvm.gemm import MR, GemmEmitter, _lanes
from graphnn.backends.llvm.pool_fusion import is_pooled
from llvmlite import ir

from graphnn.dtypes import DType

if TYPE_CHECKING:
    from graphnn.backends.llvm.codegen import KernelEmitter

# og * cg at most (U holds 16 of these: 1 MiB of float32), as transforming weights every call
# costs; constant weights, transformed once, up to MAX_CONSTANT_WEIGHTS (ResNet-18's
# 14x14x256 layers: 0.75-0.79x the implicit GEMM's time, for 4 MiB of U each)
MAX_WEIGHTS, MAX_CONSTANT_WEIGHTS = 128 * 128, 256 * 256
MIN_CHANNELS = 16  # input channels at least: below, the GEMMs are too shallow to pay
# output tiles (2x2 pixels) in all at least: with fewer than DEEP_CHANNELS input channels the
# 16 GEMMs are shallow (their accumulators' loads and stores weigh more), so they need more
MIN_TILES, MIN_TILES_DEEP, DEEP_CHANNELS = 512, 48, 64
# constant weights: multiply-adds of the direct convolution, and the share of the GEMMs' columns
# that are tiles, at least (measured against the implicit GEMM, 2 threads: W2 batch 1's
# 26x26x32 -> 64, 10.6M and 0.90, 0.96x the time; 12x12x64 -> 128, 7.4M and 0.78, 0.81x;
# 1x64x28x28 -> 64, 28.9M and 0.77, 0.74x; but 1x128x7x7 -> 128, 7.2M and 0.50, 1.38x;
# 1x16x26x26 -> 32, 2.7M, 1.09x; 1x32x14x14 -> 32, 1.8M, 1.22x)
MIN_MACS, MIN_FILL_TILES = 1 << 22, 0.7
# ... and output pixels filling MIN_PIXEL_SHARE of the tiles' (1x128x9x9 -> 128: a 7x7 output in
# 16 tiles, 0.77 of them, 1.07x the implicit GEMM's time; 1x128x8x8 padded, 0.98x); with fewer
# than WIDE_CHANNELS output channels, MIN_TILES_NARROW tiles (each input channel's transform is
# shared by fewer GEMM rows: 1x64x14x14 -> 64 padded, 49 tiles, 1.11x; 1x32x12x12 -> 64, 36
# tiles, 1.26x; 2x64x14x14 -> 64, 98 tiles, 0.91x; 1x32x26x26 -> 64, 144 tiles, 0.87x; with 128
# output channels 0.96-0.99x from 16 tiles on, 0.82x for 1x64x12x12 -> 128)
MIN_PIXEL_SHARE, WIDE_CHANNELS, MIN_TILES_NARROW = 0.85, 128, 96
BLOCK_BYTES = 1 << 20  # a block's V and M: 16 x (cg + og) x columns float32 values, in L2
SKEW_PAGE, SKEW_LINE = 1024, 16  # float32 values: 4 KiB and a 64-byte cache line
SPLIT_BELOW = 4  # fewer blocks than this: each block's output channels split in two items
# ... unless SPLIT_BELOW blocks use this much of their GEMM columns at least (1x64x28x28 -> 64:
# 4 blocks of 60 of 64 columns 0.80x the time of 2 blocks of 105 of 128, split in halves;
# 1x256x14x14: 4 blocks of 16 of 32 columns 1.4x the time of 2 blocks, split)
MIN_FILL = 0.875


def winograd_shape(kernel: Kernel) -> Shape | None:
    """The kernel's convolution shape (a conv_transpose's as the convolution with flipped
    weights) where F(2x2, 3x3) takes it, else None."""
    shape = Shape.of(kernel)
    if shape is None or not shape.fits() or kernel.params[-1].dtype is not DType.float32:
        return None
    if shape.groups != 1 or shape.taps != (3, 3) or \
            shape.dilation != (1, 1):
        return None
    constant = kernel.params[int(kernel.schedule[2])].constant
    pairs = shape.og * shape.cg
    if shape.cg < MIN_CHANNELS or shape.og < MR or pairs > MAX_CONSTANT_WEIGHTS or \
            (pairs > MAX_WEIGHTS and not constant):
        return None
    return shape


def winograd_applies(kernel: Kernel, bits: int = 128) -> bool:
    """A 3x3, stride-1, dilation-1, one-group float32 convolution with at least MIN_CHANNELS
    input channels and MR output channels, whose transformed weights fit ``MAX_WEIGHTS`` (or,
    constant, ``MAX_CONSTANT_WEIGHTS``); with constant weights (transformed once), at least
    MIN_MACS multiply-adds done directly, tiles filling MIN_FILL_TILES of the GEMM columns,
    output pixels MIN_PIXEL_SHARE of the tiles' and, below WIDE_CHANNELS output channels,
    MIN_TILES_NARROW tiles, else (transformed every call) MIN_TILES output tiles
    (MIN_TILES_DEEP from DEEP_CHANNELS input channels)."""
    shape = winograd_shape(kernel)
    if shape is None:
        return False
    lay = _Layout(kernel, shape, bits)
    if kernel.params[int(kernel.schedule[2])].constant:
        pixels = kernel.params[-1].shape[0] * shape.out_sz[0] * shape.out_sz[1]
        macs = shape.og * shape.cg * 9 * pixels
        return macs >= MIN_MACS and lay.tiles >= MIN_FILL_TILES * lay.blocks * lay.columns \
            and pixels >= MIN_PIXEL_SHARE * 4 * lay.tiles \
            and (shape.og >= WIDE_CHANNELS or lay.tiles >= MIN_TILES_NARROW)
    least = MIN_TILES if shape.cg < DEEP_CHANNELS else MIN_TILES_DEEP
    return lay.tiles >= least


def _skewed(values: int) -> int:
    """The stride (float32 values) between two of V's or M's 16 matrices of ``values`` each:
    a whole number of 4 KiB pages and one cache line, so the 16 values of a tile, stored and
    loaded together by the transforms, fall in 16 consecutive cache sets. (Unskewed, W2's
    32 x 160 and 64 x 160 matrices are multiples of 4 KiB apart: the 16 values of a tile
    shared one set of the 12-way L1, and the input transform took 39% of the 32 -> 64 layer's
    time. Skewed, against unskewed, interleaved, 2 threads: W2 batch 1 0.90-0.93x the time,
    batch 64 0.92x, ResNet-18 0.95x, W6 0.98x.)"""
    return -(-values // SKEW_PAGE) * SKEW_PAGE + SKEW_LINE


class _Layout:
    """How the tiles are blocked: ``rows`` tile rows a block (``columns`` = rows x tiles per
    row GEMM columns), ``blocks`` blocks, ``splits`` items per block (by output channels)."""

    def __init__(self, kernel: Kernel, shape: Shape, bits: int) -> None:
        images = kernel.params[-1].shape[0]
        h, w = shape.out_sz
        self.tile_rows, self.tile_cols = -(-h // 2), -(-w // 2)
        self.tiles = images * self.tile_rows * self.tile_cols
        total = images * self.tile_rows  # tile rows of all images
        nr = _lanes(DType.float32, bits)
        budget = max(nr, BLOCK_BYTES // (16 * (shape.cg + shape.og) * 4))
        self.pitch = self.tile_cols  # GEMM columns a tile row
        blocks = -(-total // max(1, budget // self.tile_cols))
        if blocks >= SPLIT_BELOW:  # a multiple of 4 blocks, so 2 or 4 threads share evenly
            blocks = min(total, -(-blocks // 4) * 4)
        elif total >= SPLIT_BELOW:  # few blocks: SPLIT_BELOW smaller ones if they fill their
            rows = -(-total // SPLIT_BELOW)  # register tiles, else halves of the channels
            if rows * self.pitch >= MIN_FILL * (-(-rows * self.pitch // nr) * nr):
                blocks = SPLIT_BELOW
        self.rows = -(-total // blocks)
        self.blocks = -(-total // self.rows)
        self.total = total
        # whole register tiles: the edge tiles of a ragged width cost about as much as whole
        # ones (their broadcasts of a bound them) for a fraction of the columns
        self.columns = -(-self.rows * self.pitch // nr) * nr
        # columns no block's input transform writes: past the shortest (last) block's tiles
        self.unwritten = self.columns - (total - (self.blocks - 1) * self.rows) * self.pitch
        self.splits = 2 if self.blocks < SPLIT_BELOW and shape.og >= 4 * MR else 1


class WinogradConv(GemmEmitter):
    """F(2x2, 3x3) convolution (see the module docstring); the threads split items (blocks of
    tile rows, and halves of the output channels where blocks are few)."""

    packable = False  # b is V, already laid out a row of tiles per channel
    KNOBS = ("mr",)

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        shape = winograd_shape(kernel)
        assert shape is not None
        self.em, self.b, self.k, self.shape = em, em.b, kernel, shape
        _, xb, wb, bias, *_ = kernel.schedule
        self.xb, self.wb, self.bias = int(xb), int(wb), int(bias)
        self.o = len(kernel.params) - 1
        self.types(DType.float32, bits)
        self.lay = _Layout(kernel, shape, bits)
        self.cg, self.og = shape.cg, shape.og
        self.m, self.kk, self.n = self.og, self.cg, self.lay.columns
        self.v_pitch = self.n  # V's and M's rows
        # V's and M's 16 matrices, skewed so a tile's 16 values fall in different cache sets
        self.v_pos, self.m_pos = _skewed(self.cg * self.n), _skewed(self.og * self.n)
        self.h, self.w = shape.out_sz
        self.h_in, self.w_in = shape.in_sz
        self.pad_top, self.pad_left = shape.pads_begin
        # writing the 2x2 max-pooled output (pool_fusion.py): its tiles are the pool's windows
        self.pooled, self.relu = is_pooled(kernel), "relu" in kernel.source
        assert not self.pooled or (self.h % 2 == 0 and self.w % 2 == 0)

    @staticmethod
    def parallel_extent(kernel: Kernel, bits: int) -> int | None:
        shape = winograd_shape(kernel)
        assert shape is not None
        lay = _Layout(kernel, shape, bits)
        return lay.blocks * lay.splits

    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        from graphnn.backends.llvm.codegen import for_range

        b, lay, og, cg, n = self.b, self.lay, self.og, self.cg, self.n
        lo, hi = bounds if bounds is not None else (self.c(0),
                                                    self.c(lay.blocks * lay.splits))
        if bounds is None:  # the kernel unsplit, no wrapper (constant weights): U is not ready
            self.prepare()
        self.slots()
        u, v, m = self.weights_buffer(), self.malloc(16 * self.v_pos), self.malloc(16 * self.m_pos)
        zeros = self.malloc(self.w_in)
        self.zero(zeros, self.w_in)
        if lay.unwritten:  # V's columns past the last block's tiles: finite, for the GEMMs
            with for_range(b, 16, "vxi") as xi, for_range(b, cg, "vrow") as row:
                self.zero(self.position(v, self.v_pos, xi, row, self.c(n - lay.unwritten)),
                          lay.unwritten)
        done = self.slot(ir.IntType(64), "done_block")  # the block now in V
        b.store(self.c(-1), done)
        per = -(-og // lay.splits)
        with for_range(b, hi, "item", start=lo) as item:
            blk = b.sdiv(item, self.c(lay.splits))
            r_lo = b.mul(b.srem(item, self.c(lay.splits)), self.c(per))
            r_hi = self.min(b.add(r_lo, self.c(per)), self.c(og))
            with b.if_then(b.icmp_signed("!=", b.load(done), blk)):
                self.transform_input(blk, v, zeros)
                b.store(blk, done)
            with for_range(b, 16, "xi") as xi:
                self.a_at = lambda row, k: self.at_in(u, b.add(b.mul(xi, self.c(og)), row), k, cg)
                self.b_at = lambda k, col: self.position(v, self.v_pos, xi, k, col)
                self.out_at = lambda row, col: self.position(m, self.m_pos, xi, row, col)
                full = b.mul(b.sdiv(b.sub(r_hi, r_lo), self.c(self.mr)), self.c(self.mr))
                self.rows(r_lo, r_hi, full, b.add(r_lo, full), accumulate=False)
            self.transform_output(blk, r_lo, r_hi, m)
        for buffer in (v, m, zeros):
            self.free(buffer)
        self.release()

    def at_in(self, buffer: ir.Value, row: ir.Value, col: ir.Value, pitch: int) -> ir.Value:
        return self.b.gep(buffer, [self.at(row, col, pitch)], inbounds=True, source_etype=self.ty)

    def position(self, buffer: ir.Value, stride: int, xi: ir.Value, row: ir.Value,
                 col: ir.Value, pitch: int | None = None) -> ir.Value:
        """Element (row, col) of position xi's matrix (``stride`` values apart) in V or M: rows
        of ``pitch`` values, by default ``v_pitch`` (V's and, here, M's: the GEMM columns)."""
        b = self.b
        rows = self.v_pitch if pitch is None else pitch
        at = b.add(b.mul(xi, self.c(stride)), b.add(b.mul(row, self.c(rows)), col))
        return b.gep(buffer, [at], inbounds=True, source_etype=self.ty)

    # -- U = G g G^T -----------------------------------------------------------------------------
    @staticmethod
    def workspace(kernel: Kernel, bits: int) -> int:
        """U for weights that may change between calls (the wrapper allocates it per call, so
        calls running at once, as an AOT library's contexts may, each have their own); none
        for constant weights, whose U is the module's."""
        shape = winograd_shape(kernel)
        assert shape is not None
        constant = kernel.params[int(kernel.schedule[2])].constant
        return 0 if constant else 16 * shape.og * shape.cg

    def weights_buffer(self) -> ir.Value:
        """U: the workspace; for constant weights the module's array (``module_array``)."""
        if not self.k.params[self.wb].constant:
            return self.em.params[len(self.k.params)]
        u, _ = self.module_array("winograd_u", 16 * self.og * self.cg)
        # its first element's address: llvmlite types a global's pointer by the array
        return self.b.gep(u, [self.c(0), self.c(0)], inbounds=True)

    def prepare(self) -> None:
        """U from the weights, before the threads start: every call, or once for the module
        where the weights are a constant (``module_array``)."""
        u = self.weights_buffer()
        if not self.k.params[self.wb].constant:
            self.transform_weights(u)
            return
        _, ready = self.module_array("winograd_u", 16 * self.og * self.cg)
        self.fill_once(ready, lambda: self.transform_weights(u))

    def weight(self, o: ir.Value, c: ir.Value, t: int) -> ir.Value:
        """Tap t (row-major 3x3) of output channel o and input channel c: w[o, c, t]."""
        b = self.b
        if self.shape.transposed:  # w[c, o, 2 - r, 2 - s]: flipped, channels swapped
            at = b.add(b.mul(b.add(b.mul(c, self.c(self.og)), o), self.c(9)), self.c(8 - t))
        else:
            at = b.add(b.mul(b.add(b.mul(o, self.c(self.cg)), c), self.c(9)), self.c(t))
        return b.load(self.ptr(self.wb, at), typ=self.ty)

    def transform_weights(self, u: ir.Value) -> None:
        """U[xi, o, c] = (G g_oc G^T)[xi] for every output and input channel."""
        from graphnn.backends.llvm.codegen import for_range, vectorize_here

        b, og, cg = self.b, self.og, self.cg

        with for_range(b, og, "wo") as o, for_range(b, cg, "wc",
                                                     hints=vectorize_here(self.em.module)) as c:
            g = [[self.weight(o, c, 3 * r + s) for s in range(3)] for r in range(3)]
            rows = [self.g_transform(g[0][s], g[1][s], g[2][s]) for s in range(3)]  # G g
            for r in range(4):
                for s, value in enumerate(self.g_transform(*[rows[col][r] for col in range(3)])):
                    b.store(value, self.at_in(u, self.c((4 * r + s) * og * cg), b.add(
                        b.mul(o, self.c(cg)), c), 1))

    def g_transform(self, a: ir.Value, m: ir.Value, z: ir.Value) -> list[ir.Value]:
        """G (a, m, z): a, (a + m + z) / 2, (a - m + z) / 2, z."""
        b = self.b
        half = ir.Constant(self.ty, 0.5)
        az = b.fadd(a, z)
        return [a, b.fmul(b.fadd(az, m), half), b.fmul(b.fsub(az, m), half), z]

    # -- V = B^T d B -----------------------------------------------------------------------------
    def transform_input(self, blk: ir.Value, v: ir.Value, zeros: ir.Value) -> None:
        """V[xi, c, q * pitch + tx] for the block's tile rows q and every channel, in one pass:
        tile tx reads input columns 2 tx - pad_left + (0..3) of 4 input rows (a line of zeros
        for rows in the padding), a vector of tiles at a time (``tiles_in``)."""
        from graphnn.backends.llvm.codegen import for_range

        b, lay, cg = self.b, self.lay, self.cg
        first, last = self.block(blk, lay.rows, lay.total)
        x = self.k.params[self.xb]
        plane = self.h_in * self.w_in
        with for_range(b, last, "tr", start=first) as tr:
            img, ty = b.sdiv(tr, self.c(lay.tile_rows)), b.srem(tr, self.c(lay.tile_rows))
            q0 = b.mul(b.sub(tr, first), self.c(lay.pitch))
            with for_range(b, cg, "ic") as c:
                base = b.mul(b.add(b.mul(img, self.c(x.shape[1])), c), self.c(plane))
                rows = []
                for k in range(4):  # input row 2 ty - pad_top + k, or a line of zeros
                    y = b.add(b.mul(ty, self.c(2)), self.c(k - self.pad_top))
                    ok = b.and_(b.icmp_signed(">=", y, self.c(0)),
                                b.icmp_signed("<", y, self.c(self.h_in)))
                    y = b.select(ok, y, self.c(0))  # a pointer inside x even where unused
                    row = self.ptr(self.xb, b.add(base, b.mul(y, self.c(self.w_in))))
                    rows.append(b.select(ok, row, zeros))
                def dest(xi: int, t: ir.Value) -> ir.Value:
                    return self.position(v, self.v_pos, self.c(xi), c, b.add(q0, t))

                self.tile_row_in(rows, dest)

    def tile_row_in(self, rows: list[ir.Value],
                    dest: Callable[[int, ir.Value], ir.Value]) -> None:
        """``tiles_in`` over a tile row, a vector of tiles at a time: the vectors over the
        padding or past the last tile one by one (their masks differ), those between them in a
        loop (an image thousands of pixels wide stays a short loop body)."""
        from graphnn.backends.llvm.codegen import for_range

        width, cols = self.width, self.lay.tile_cols
        starts = range(0, cols, width)
        plain = [t0 for t0 in starts if t0 + width <= cols and 2 * t0 - self.pad_left >= 0
                 and 2 * (t0 + width) + 1 - self.pad_left < self.w_in]
        lo, hi = (plain[0], plain[-1] + width) if plain else (0, 0)
        for t0 in starts:
            if not lo <= t0 < hi:
                self.tiles_in(t0, min(width, cols - t0), rows, dest)
            elif t0 == lo:
                with for_range(self.b, (hi - lo) // width, "tv") as i:
                    self.tiles_in(self.b.add(self.c(lo), self.b.mul(i, self.c(width))), width,
                                  rows, dest)

    def tiles_in(self, t0: int | ir.Value, lanes: int, rows: list[ir.Value],
                 dest: Callable[[int, ir.Value], ir.Value]) -> None:
        """B^T d B for the tiles [t0, t0 + lanes) of a tile row, one per vector lane: per input
        row, loads of 2 x width columns from the tiles' first column and from two further,
        split into even and odd columns by shuffles (the tiles' columns 0, 1 and 2, 3); the 16
        values stored at dest(xi, t0), contiguous in the tiles. For a constant t0 the loads'
        masks leave out the columns in the padding (masked-off lanes read as zero: the
        padding's value) and past the last tile, the stores' the lanes past the last tile; a
        variable t0 takes whole vectors inside the input. (Left to LLVM, the stride-2 reads
        became gathers; tiles over the padding done one by one took 40% of the time.)"""
        b, width = self.b, self.width
        even = self.lane_order(list(range(0, 2 * width, 2)))
        odd = self.lane_order(list(range(1, 2 * width, 2)))
        d = []
        for row in rows:
            line = []
            for shift in (0, 2):
                halves = []
                for h in range(2):
                    if isinstance(t0, int):
                        first = 2 * t0 - self.pad_left + shift + h * width  # lane 0's column
                        keep = [h * width // 2 + e // 2 < lanes and 0 <= first + e < self.w_in
                                for e in range(width)]
                        # not inbounds: the address may lie before the row (lanes masked off)
                        at = b.gep(row, [self.c(first)], source_etype=self.ty)
                        halves.append(self.load_vec(at, self.lane_mask(keep)) if any(keep)
                                      else ir.Constant(self.vec, [0.0] * width))
                    else:
                        first = b.add(b.mul(t0, self.c(2)),
                                      self.c(shift + h * width - self.pad_left))
                        halves.append(self.load_vec(b.gep(row, [first], inbounds=True,
                                                          source_etype=self.ty), None))
                line += [b.shuffle_vector(*halves, even), b.shuffle_vector(*halves, odd)]
            d.append(line)
        across = [self.bt_transform(*line) for line in d]
        down = [self.bt_transform(*[across[k][s] for k in range(4)]) for s in range(4)]
        mask = self.lane_mask([e < lanes for e in range(width)])
        at = self.c(t0) if isinstance(t0, int) else t0
        for r in range(4):
            for s in range(4):
                self.store_vec(down[s][r], dest(4 * r + s, at), mask)

    def bt_transform(self, d0: ir.Value, d1: ir.Value, d2: ir.Value, d3: ir.Value
                     ) -> list[ir.Value]:
        """B^T (d0, d1, d2, d3): d0 - d2, d1 + d2, d2 - d1, d1 - d3."""
        b = self.b
        return [b.fsub(d0, d2), b.fadd(d1, d2), b.fsub(d2, d1), b.fsub(d1, d3)]

    # -- Y = A^T M A -----------------------------------------------------------------------------
    def transform_output(self, blk: ir.Value, r_lo: ir.Value, r_hi: ir.Value,
                         m: ir.Value) -> None:
        """out[img, o, 2 ty + i, 2 tx + j] = (A^T M A)[i, j] + bias[o], then the epilogue, for
        the block's tile rows and the output channels [r_lo, r_hi); a pooled kernel's
        out[img, o, ty, tx] = the tile's maximum + bias[o], then the ReLU."""
        from graphnn.backends.llvm.codegen import for_range

        b, lay, em = self.b, self.lay, self.em
        first, last = self.block(blk, lay.rows, lay.total)  # the block's tile rows
        c_out = self.k.params[-1].shape[1]
        whole = self.w // 2  # tiles with both columns in the output
        epilogue = conv_epilogue(self.k)
        with for_range(b, r_hi, "oo", start=r_lo) as o:
            bias = b.load(self.ptr(self.bias, o), typ=self.ty) if self.bias >= 0 \
                else ir.Constant(self.ty, 0.0)
            with for_range(b, last, "otr", start=first) as tr:
                img, ty = b.sdiv(tr, self.c(lay.tile_rows)), b.srem(tr, self.c(lay.tile_rows))
                no = b.add(b.mul(img, self.c(c_out)), o)
                em.vars["no"] = no
                col0 = b.mul(b.sub(tr, first), self.c(lay.pitch))
                y0 = b.mul(ty, self.c(2))
                if self.pooled:
                    self.pooled_tiles(m, o, no, col0, ty, bias)
                else:
                    self.pixel_tiles(m, o, no, col0, ty, y0, bias, whole, epilogue)

    def tile_pixels(self, m: ir.Value, o: ir.Value, col0: ir.Value, tx: ir.Value,
                    lanes: int) -> list[list[ir.Value]]:
        """A^T M A for output channel o's tiles [tx, tx + lanes) of a tile row (M's columns
        from col0): y[i][j], the vector of the tiles' pixel (i, j); lanes past ``lanes``
        masked off in the loads."""
        b = self.b
        mask = self.lane_mask([e < lanes for e in range(self.width)])
        col = b.add(col0, tx)
        t = [[self.load_vec(self.position(m, self.m_pos, self.c(4 * r + s), o, col), mask)
              for s in range(4)] for r in range(4)]
        z = [self.at_transform(*[t[r][s] for r in range(4)]) for s in range(4)]  # A^T M
        return [self.at_transform(*[z[s][i] for s in range(4)]) for i in range(2)]  # .. A

    def vector_tiles(self, m: ir.Value, o: ir.Value, no: ir.Value, col0: ir.Value,
                     whole: int, y0: ir.Value, bias: ir.Value, both_rows: bool) -> None:
        """The tiles [0, whole) of a tile row (both columns in the output), a vector of tiles
        at a time: A^T M A on vectors of M's columns, then each output row's two columns
        interleaved by shuffles into two vectors of consecutive pixels (left to LLVM, the
        stride-2 stores became scatters). The last vector's lanes past ``whole`` are masked
        off."""
        from graphnn.backends.llvm.codegen import for_range

        b, width = self.b, self.width
        low, high = (self.lane_order([h * width // 2 + e // 2 + (width if e % 2 else 0)
                                      for e in range(width)]) for h in range(2))
        plane = b.mul(no, self.c(self.h * self.w))
        biases = self.splat(bias)

        def chunk(tx: ir.Value, lanes: int) -> None:
            y = self.tile_pixels(m, o, col0, tx, lanes)
            for i in range(2 if both_rows else 1):
                row = b.add(plane, b.mul(b.add(y0, self.c(i)), self.c(self.w)))
                at = self.ptr(self.o, b.add(row, b.mul(tx, self.c(2))))
                for h, order in enumerate((low, high)):
                    keep = self.lane_mask([h * width // 2 + e // 2 < lanes
                                           for e in range(width)])
                    if h * width // 2 < lanes:
                        pixels = b.fadd(b.shuffle_vector(y[i][0], y[i][1], order), biases)
                        self.store_vec(pixels, b.gep(at, [self.c(h * width)], inbounds=True,
                                                     source_etype=self.ty), keep)

        full = whole // width
        with for_range(b, full, "otx") as k:
            chunk(b.mul(k, self.c(width)), width)
        if full * width < whole:
            chunk(self.c(full * width), whole - full * width)

    def pixel_tiles(self, m: ir.Value, o: ir.Value, no: ir.Value, col0: ir.Value,
                    ty: ir.Value, y0: ir.Value, bias: ir.Value, whole: int,
                    epilogue: Stmt | None) -> None:
        """Tile row ty's output pixels (rows y0 and y0 + 1, one where the height is odd) with
        the bias, then the fused epilogue over those output lines."""
        from graphnn.backends.llvm.codegen import for_range

        b, em, lay = self.b, self.em, self.lay

        def tiles(both_rows: bool) -> None:
            self.vector_tiles(m, o, no, col0, whole, y0, bias, both_rows)
            if whole < lay.tile_cols:  # an odd width: the last tile's first column
                self.output_tile(m, o, no, col0, self.c(whole), y0, bias, both_rows, False)

        def rows(count: int) -> None:
            tiles(count == 2)
            if epilogue is None:
                return
            # the epilogue over whole output lines: in the tile loop, its load of each value
            # just stored became gathers and scatters
            for i in range(count):
                em.vars["y0"] = b.add(y0, self.c(i))
                with for_range(b, self.w, "ox") as x:
                    em.vars["y1"] = x
                    em.stmt(epilogue)

        if self.h % 2 == 0:
            rows(2)
        else:  # an odd height: the last tile row has one output row
            with b.if_else(b.icmp_signed("<", b.add(y0, self.c(1)), self.c(self.h))) \
                    as (then, otherwise):
                with then:
                    rows(2)
                with otherwise:
                    rows(1)

    def pooled_tiles(self, m: ir.Value, o: ir.Value, no: ir.Value, col0: ir.Value,
                     ty: ir.Value, bias: ir.Value) -> None:
        """Tile row ty's pooled outputs, a vector of tiles at a time: the maximum of each tile's
        four pixels (NaN-propagating, as max_pool), then the bias and the ReLU (monotone, so
        the same values as pooling after them)."""
        from graphnn.backends.llvm.codegen import for_range

        b, width = self.b, self.width
        whole = self.w // 2
        row = b.add(b.mul(no, self.c(self.h // 2 * whole)), b.mul(ty, self.c(whole)))
        biases, zero = self.splat(bias), ir.Constant(self.vec, [0.0] * width)
        maximum = f"llvm.maximum.v{width}f32"

        def chunk(tx: ir.Value, lanes: int) -> None:
            mask = self.lane_mask([e < lanes for e in range(width)])
            y = self.tile_pixels(m, o, col0, tx, lanes)
            top = self.em._call(maximum, self.vec, self.em._call(maximum, self.vec, *y[0]),
                                self.em._call(maximum, self.vec, *y[1]))
            value = b.fadd(top, biases)
            if self.relu:
                value = self.em._call(maximum, self.vec, value, zero)
            self.store_vec(value, self.ptr(self.o, b.add(row, tx)), mask)

        full = whole // width
        with for_range(b, full, "ptx") as k:
            chunk(b.mul(k, self.c(width)), width)
        if full * width < whole:
            chunk(self.c(full * width), whole - full * width)

    def output_tile(self, m: ir.Value, o: ir.Value, no: ir.Value, col0: ir.Value,
                    tx: ir.Value, y0: ir.Value, bias: ir.Value, both_rows: bool,
                    both_cols: bool) -> None:
        b = self.b
        col = b.add(col0, tx)
        t = [[b.load(self.position(m, self.m_pos, self.c(4 * r + s), o, col), typ=self.ty)
              for s in range(4)] for r in range(4)]
        z = [self.at_transform(*[t[r][s] for r in range(4)]) for s in range(4)]  # A^T M
        y = [self.at_transform(*[z[s][i] for s in range(4)]) for i in range(2)]  # (A^T M) A
        x0 = b.mul(tx, self.c(2))
        plane = b.mul(no, self.c(self.h * self.w))
        for i in range(2 if both_rows else 1):
            row = b.add(y0, self.c(i))
            for j in range(2 if both_cols else 1):
                x = b.add(x0, self.c(j))
                at = b.add(plane, b.add(b.mul(row, self.c(self.w)), x))
                b.store(b.fadd(y[i][j], bias), self.ptr(self.o, at))

    def at_transform(self, m0: ir.Value, m1: ir.Value, m2: ir.Value, m3: ir.Value
                     ) -> list[ir.Value]:
        """A^T (m0, m1, m2, m3): m0 + m1 + m2, m1 - m2 - m3."""
        b = self.b
        return [b.fadd(b.fadd(m0, m1), m2), b.fsub(b.fsub(m1, m2), m3)]
