"""The LLVM backend's Winograd F(2x2, 3x3) weight gradient: conv_weight_grad of a 3x3, stride-1,
dilation-1, one-group float32 convolution, in 2.25 times fewer multiply-adds than the direct sum.

The forward convolution's output tile Y (2x2 pixels of output channel o) is (``conv_winograd.py``)

    Y = A^T [ sum over input channels c of U_oc * V_c ] A,   U_oc = G g_oc G^T,  V_c = B^T d_c B,

so, by the chain rule through the linear maps, the gradient of the 3x3 weights g_oc is

    dg_oc = G^T [ sum over images and tiles of (A dY_o A^T) * V_c ] G

with dY_o the tile's 2x2 output gradient, V_c the forward's transformed 4x4 input patch and
``*`` the elementwise product (the forward is Lavin and Gray's, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016; the gradient transposes its linear maps). Per
position xi of the 4x4 tile that is one GEMM over all tiles:

    M[xi] (cg x og) += V[xi] (cg x tiles) @ D[xi] (tiles x og),   D = A dY A^T,

16 multiply-adds per tile and channel pair where the direct sum does 36 (9 taps x 4 pixels);
then dg_oc = G^T M_oc G (4x4 -> 3x3) once, after the sum.

The threads share out blocks of about ``BLOCK_TILES`` tiles (whole tile rows, numbered image
by image: the GEMMs' depth; their V and D stay in L2). For a block a thread transforms the input
with the forward's code (``WinogradConv.transform_input``: V[xi, c, tile], tiles contiguous, the
a operand), transposes each tile row's two lines of dy to pixel-major
(``conv_implicit.transpose_rows``) so the output gradient's transform runs on vectors of output
channels and D[xi, tile, o] has the channels contiguous (the b operand), then runs the 16 GEMMs
into its own partial M. The wrapper adds the threads' partials and applies G^T . G
(``finish``), as the implicit weight gradient does. Rounding differs from the direct sum (the
transforms add and halve).

Measured against the implicit weight gradient (2 threads, AVX-512 Xeon, each kernel alone,
interleaved): W6's 64x32x26x26 -> 64 0.65-0.69x the time, 64x64x12x12 -> 128 0.65-0.73x;
16x32x58x58 -> 32 0.83x (blocks of whole images, 784 tiles each, had been 1.36x: V and D
outgrew L2); 8x16x34x34 -> 16 0.49x, 2x64x26x26 -> 64 (288 tiles) 0.49x, 4x128x16x16 -> 128
(196 tiles) 0.69x, one 1x32x34x34 image (256 tiles; against the im2col GEMM) 0.50x; but with
fewer tiles than MIN_TILES the partials' zeroing, sum and transform outweigh the saving:
8x32x8x8 -> 32 (72 tiles) 1.38x, 2x16x14x14 -> 16 (72) 1.65x, 1x64x9x9 -> 64 (16) 2.7x,
4x16x10x10 -> 16 (64) 0.93x. Blocks of 96 or 128 tiles measured the same or slower than 48.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphnn.backends.kernel.ir import Kernel
from graphnn.backends.llvm.conv_implicit import (
    Shape,
    claim_partial,
    each_partial,
    partial_slot,
    transpose_rows,
    weight_grad_shape,
)
from graphnn.backends.llvm.conv_winograd import MAX_WEIGHTS, MIN_CHANNELS, WinogradConv, _skewed
from graphnn.backends.llvm.gemm import MR, PTR
from llvmlite import ir

from graphnn.dtypes import DType

if TYPE_CHECKING:
    from graphnn.backends.llvm.codegen import KernelEmitter

BLOCK_TILES = 48  # tiles a block, about (whole tile rows): the depth of its 16 GEMMs
MIN_TILES = 128  # tiles (2x2 pixels of dy) in all at least


def winograd_grad_shape(kernel: Kernel) -> Shape | None:
    """The forward convolution's shape where F(2x2, 3x3) takes its weight gradient, else None."""
    shape = weight_grad_shape(kernel)
    if shape is None or not shape.fits() or kernel.params[-1].dtype is not DType.float32:
        return None
    if shape.groups != 1 or shape.taps != (3, 3) or shape.dilation != (1, 1) or \
            shape.cg < MIN_CHANNELS or shape.og < MR or shape.og * shape.cg > MAX_WEIGHTS:
        return None
    return shape


def winograd_grad_applies(kernel: Kernel, bits: int = 128) -> bool:
    """A 3x3, stride-1, dilation-1, one-group float32 weight gradient with at least
    MIN_CHANNELS input and MR output channels, at most MAX_WEIGHTS channel pairs (each thread's
    partial M holds 16 values a pair) and MIN_TILES output tiles (2x2 pixels) in all."""
    shape = winograd_grad_shape(kernel)
    if shape is None:
        return False
    return _GradLayout(kernel, shape).tiles >= MIN_TILES


class _GradLayout:
    """Blocks of ``rows`` tile rows (of all images, numbered image by image: a block may end in
    the next image), ``columns`` tiles a block; the last block's tiles ``short``."""

    def __init__(self, kernel: Kernel, shape: Shape) -> None:
        images = kernel.params[0].shape[0]
        h, w = shape.out_sz
        self.tile_rows, self.tile_cols = -(-h // 2), -(-w // 2)
        self.tiles = images * self.tile_rows * self.tile_cols
        self.total, self.pitch = images * self.tile_rows, self.tile_cols
        self.rows = min(self.total, max(1, round(BLOCK_TILES / self.tile_cols)))
        self.blocks = -(-self.total // self.rows)
        self.columns = self.rows * self.tile_cols
        self.short = (self.total - (self.blocks - 1) * self.rows) * self.tile_cols


class WinogradWeightGrad(WinogradConv):
    """conv_weight_grad as F(2x2, 3x3) (see the module docstring); the threads split blocks of
    tile rows, each summing a partial M of its own. A ``WinogradConv`` for the forward's input
    transform (``transform_input`` and its helpers, writing V through ``position`` at
    ``v_pitch``) and the
    GEMM machinery; its own fields are set here, not by the forward's constructor."""

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        shape = winograd_grad_shape(kernel)
        assert shape is not None
        self.em, self.b, self.k, self.shape = em, em.b, kernel, shape
        self.xb, self.o = 0, 2
        self.types(DType.float32, bits)
        self.lay = _GradLayout(kernel, shape)  # type: ignore[assignment]
        self.cg, self.og = shape.cg, shape.og
        self.h, self.w = shape.out_sz
        self.h_in, self.w_in = shape.in_sz
        self.pad_top, self.pad_left = shape.pads_begin
        self.pooled, self.relu = False, False
        self.cols = self.v_pitch = self.lay.columns  # V's rows: a block's tiles
        self.m, self.kk, self.n = self.cg, self.cols, self.og  # GEMM: M[xi] += V[xi] @ D[xi]
        self.v_pos, self.d_pos = _skewed(self.cg * self.cols), _skewed(self.cols * self.og)
        self.m_pos = _skewed(self.cg * self.og)
        self.pixels = self.h * self.w
        self.dyt: ir.Value | None = None

    @staticmethod
    def parallel_extent(kernel: Kernel, bits: int) -> int | None:
        shape = winograd_grad_shape(kernel)
        assert shape is not None
        return _GradLayout(kernel, shape).blocks

    @staticmethod
    def workspace(kernel: Kernel, bits: int) -> int:
        """One pointer per block (the threads' partials), in float32 values."""
        shape = winograd_grad_shape(kernel)
        assert shape is not None
        return _GradLayout(kernel, shape).blocks * 2

    def prepare(self) -> None:
        """Nothing before the threads start (the weights are the output)."""

    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        from graphnn.backends.llvm.codegen import for_range

        b, lay, cg, og, cols = self.b, self.lay, self.cg, self.og, self.cols
        assert bounds is not None  # a workspace: always through the wrapper
        lo, hi = bounds
        with b.if_then(b.icmp_signed("<", lo, hi)):  # a thread past the last block: idle
            part = claim_partial(self, lo, hi, 16 * self.m_pos)
            self.slots()
            v, d = self.malloc(16 * self.v_pos), self.malloc(16 * self.d_pos)
            self.dyt = self.malloc(2 * self.w * og)  # a tile row's two lines of dy
            zeros = self.malloc(self.w_in)
            self.zero(zeros, self.w_in)
            with for_range(b, hi, "item", start=lo) as blk:
                if lay.short < cols:  # the last block's missing tiles: zeros in V and D
                    with b.if_then(b.icmp_signed("==", blk, self.c(lay.blocks - 1))):
                        with for_range(b, 16, "zxi") as xi:
                            with for_range(b, cg, "zc") as c:
                                self.zero(self.position(v, self.v_pos, xi, c, self.c(lay.short)),
                                          cols - lay.short)
                            self.zero(self.position(d, self.d_pos, xi, self.c(lay.short),
                                                    self.c(0), pitch=og), (cols - lay.short) * og)
                self.transform_input(blk, v, zeros)
                self.transform_dy(blk, d)
                with for_range(b, 16, "xi") as xi:
                    self.a_at = lambda row, k: self.position(v, self.v_pos, xi, row, k)
                    self.b_at = lambda k, col: self.position(d, self.d_pos, xi, k, col, og)
                    self.out_at = lambda row, col: self.position(part, self.m_pos, xi, row, col,
                                                                 og)
                    full = self.c(cg // self.mr * self.mr)
                    self.rows(self.c(0), self.c(cg), full, full, accumulate=True)
            for buffer in (v, d, self.dyt, zeros):
                self.free(buffer)
            self.release()

    # -- D = A dY A^T ----------------------------------------------------------------------------
    def transform_dy(self, blk: ir.Value, d: ir.Value) -> None:
        """D[xi, q, o] for the block's tiles q and every output channel o: per tile row, its two
        lines of dy transposed pixel-major (one where the height is odd and the row is the
        last), then per tile its 2x2 output gradients as vectors of channels (zero past the
        output's last row or column) through A (y0, y1) = (y0, y0 + y1, y0 - y1, -y1) down and
        across."""
        from graphnn.backends.llvm.codegen import for_range

        b, lay, og, width, w = self.b, self.lay, self.og, self.width, self.w
        first, last = self.block(blk, lay.rows, lay.total)
        zero = ir.Constant(self.vec, [0.0] * width)
        dyt = self.dyt
        assert dyt is not None
        with for_range(b, last, "dtr", start=first) as tr:
            img, ty = b.sdiv(tr, self.c(lay.tile_rows)), b.srem(tr, self.c(lay.tile_rows))
            base = b.add(b.mul(img, self.c(og * self.pixels)), b.mul(ty, self.c(2 * w)))

            def lines(count: int) -> None:
                transpose_rows(self, 1, base, og, count * w, dyt, pitch=self.pixels)

            if self.h % 2:
                with b.if_else(b.icmp_signed("<", b.add(b.mul(ty, self.c(2)), self.c(1)),
                                             self.c(self.h))) as (both, one):
                    with both:
                        lines(2)
                    with one:
                        lines(1)
            else:
                lines(2)
            q_row = b.mul(b.sub(tr, first), self.c(lay.pitch))
            with for_range(b, lay.tile_cols, "dtx") as tx:
                q = b.add(q_row, tx)
                for o0 in range(0, og, width):
                    lanes = min(width, og - o0)
                    mask = self.lane_mask([e < lanes for e in range(width)])
                    y = [[self.dy_vec(dyt, ty, tx, i, j, o0, mask, zero) for j in range(2)]
                         for i in range(2)]
                    down = [self.a_transform(y[0][j], y[1][j]) for j in range(2)]  # A dY
                    for r in range(4):
                        for s, value in enumerate(self.a_transform(down[0][r], down[1][r])):
                            at = self.position(d, self.d_pos, self.c(4 * r + s), q,
                                               self.c(o0), og)
                            self.store_vec(value, at, mask)

    def dy_vec(self, dyt: ir.Value, ty: ir.Value, tx: ir.Value, i: int, j: int, o0: int,
               mask: ir.Constant | None, zero: ir.Constant) -> ir.Value:
        """dy[img, o0:o0 + width, 2 ty + i, 2 tx + j] from the tile row's transposed lines;
        zero past the output's edge (only an odd height or width has one)."""
        b = self.b
        x = b.add(b.mul(tx, self.c(2)), self.c(j))
        inside = ir.Constant(ir.IntType(1), 1)
        line = self.c(i)
        if i and self.h % 2:
            inside = b.icmp_signed("<", b.add(b.mul(ty, self.c(2)), self.c(1)), self.c(self.h))
            line = b.select(inside, line, self.c(0))
        if j and self.w % 2:
            ok = b.icmp_signed("<", x, self.c(self.w))
            inside, x = b.and_(inside, ok), b.select(ok, x, self.c(0))
        p = b.add(b.mul(line, self.c(self.w)), x)
        value = self.load_vec(b.gep(dyt, [b.add(b.mul(p, self.c(self.og)), self.c(o0))],
                                    inbounds=True, source_etype=self.ty), mask)
        return value if (i == 0 or self.h % 2 == 0) and (j == 0 or self.w % 2 == 0) \
            else b.select(inside, value, zero)

    def a_transform(self, y0: ir.Value, y1: ir.Value) -> list[ir.Value]:
        """A (y0, y1): y0, y0 + y1, y0 - y1, -y1."""
        b = self.b
        return [y0, b.fadd(y0, y1), b.fsub(y0, y1), b.fneg(y1)]

    # -- dg = G^T M G, the threads' partials summed -----------------------------------------------
    def finish(self) -> None:
        """dw[o, c] = G^T (sum of the partials' M[:, c, o]) G, with G^T's rows (1, 1/2, 1/2, 0),
        (0, 1/2, -1/2, 0), (0, 1/2, 1/2, 1); the partials added into the first one."""
        from graphnn.backends.llvm.codegen import for_range

        b, cg, og = self.b, self.cg, self.og
        size = 16 * self.m_pos
        total = b.load(partial_slot(self, self.c(0)), typ=PTR)  # the first thread's

        def add(part: ir.Value) -> None:
            with for_range(b, size, "fz") as z:
                dst = b.gep(total, [z], inbounds=True, source_etype=self.ty)
                value = b.load(b.gep(part, [z], inbounds=True, source_etype=self.ty),
                               typ=self.ty)
                b.store(b.fadd(b.load(dst, typ=self.ty), value), dst)

        each_partial(self, 1, self.lay.blocks, add)
        half = ir.Constant(self.ty, 0.5)
        with for_range(b, og, "fo") as o, for_range(b, cg, "fc") as c:
            m = [[b.load(self.position(total, self.m_pos, self.c(4 * r + s), c, o, pitch=og),
                         typ=self.ty) for s in range(4)] for r in range(4)]
            t = [self.gt_transform(m[0][s], m[1][s], m[2][s], m[3][s], half)
                 for s in range(4)]  # G^T M: t[s][i]
            base = b.mul(b.add(b.mul(o, self.c(cg)), c), self.c(9))
            for i in range(3):  # (G^T M) G
                for j, value in enumerate(self.gt_transform(t[0][i], t[1][i], t[2][i], t[3][i],
                                                            half)):
                    b.store(value, self.ptr(self.o, b.add(base, self.c(3 * i + j))))
        self.free(total)

    def gt_transform(self, m0: ir.Value, m1: ir.Value, m2: ir.Value, m3: ir.Value,
                     half: ir.Constant) -> list[ir.Value]:
        """G^T (m0, m1, m2, m3): m0 + (m1 + m2) / 2, (m1 - m2) / 2, (m1 + m2) / 2 + m3."""
        b = self.b
        mid = b.fmul(b.fadd(m1, m2), half)
        return [b.fadd(m0, mid), b.fmul(b.fsub(m1, m2), half), b.fadd(mid, m3)]

