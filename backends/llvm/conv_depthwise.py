"""The LLVM backend's depthwise (and narrow grouped) 2-D convolution: a direct convolution that
keeps each output vector in a register across all its taps.

The GEMM templates need at least MR output channels per group; a depthwise convolution
(groups = input channels, PyTorch's ``Conv2d(c, c * m, k, groups=c)``) has m of them, each
reading one input channel, so its loop nest (``conv_kernel``) makes one pass over the output
plane per tap: load, multiply-add, store, 11 passes of a 3x3 kernel through L2 (a 1x32x112x112
layer: 3x onnxruntime's time). Here, for each output plane (n, o):

1. the group's cg input channels are copied into a zero-padded scratch plane of the thread's
   own, split by column phase for strides above 1 (column j of phase q is padded column
   j * stride + q), so that every tap of a stride-s convolution reads a contiguous run of one
   phase: out[y, j..j+V) += w[t] * phase[(t_x * dil) % s][y * s + t_y * dil, j + (t_x * dil) // s
   ..]; the padding regions are zeroed once per call and never written after;
2. blocks of ROWS output rows x COLS vectors accumulate in registers over every (channel, tap)
   pair, written out unrolled (at most MAX_STEPS pairs), starting from the bias, and are stored
   once (the last vector of a row masked);
3. the kernel IR's fused epilogue runs over the plane while it is in cache.

The threads split the (image, output channel) planes, as the loop nest's parallel loop does.

The same kernel computes the input gradient (conv_transpose) of such a layer: the convolution,
at stride 1, of dy "stuffed" by the stride (value i at position i * stride, zeros between) and
padded by dilation * (kernel - 1) - pad, with the flipped weights. ``DepthwiseWeightGrad``
computes the weight gradient from the same scratch. Both had run numpy's reference (8 x 64 x
56 x 56, 3x3: 43 and 48 ms; now 0.37 and 0.40 ms on two threads).
(MLAS and XNNPACK also run depthwise convolutions as direct, register-blocked kernels over a
padded input, rather than as a GEMM: each input value meets only k_h x k_w weights.)
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from graphnn.backends.kernel.ir import Kernel, Loop, geometry
from graphnn.backends.llvm.conv_gemm import ConvGemm
from llvmlite import ir

from graphnn.dtypes import DType

if TYPE_CHECKING:
    from graphnn.backends.llvm.codegen import KernelEmitter

MAX_STEPS = 64  # (input channel, tap) pairs per output value, written out unrolled, at most
ROWS, COLS = 2, 4  # a register block: output rows x vectors (8 independent FMA chains)
MAX_SCRATCH = 1 << 22  # values of a thread's padded input channels, at most (16 MiB float32)


def weight_grad_applies(kernel: Kernel, bits: int = 128) -> bool:
    """The weight gradients of the convolutions ``applies`` takes."""
    return kernel.schedule[:1] == ("conv_weight_grad",) and _takes(kernel, bits)


def applies(kernel: Kernel, bits: int = 128) -> bool:
    """conv and conv_transpose kernels this template takes (``_takes``)."""
    return kernel.schedule[:1] in (("conv",), ("conv_transpose",)) and _takes(kernel, bits)


def single_channel_applies(kernel: Kernel, bits: int = 128) -> bool:
    """Forward convolutions with one input channel per group, ahead of the GEMM templates
    (``codegen.TEMPLATES``), whose depth would be the taps alone: a first layer on grey images
    (W2's 1 -> 32 channels over 28x28: 0.78x the implicit GEMM's time at batch 1, 0.66x at
    batch 64), a depthwise layer with a channel multiplier of 6 or more. (Three input channels,
    an RGB image's, measured 1.6x: there the GEMM shares each input value between the output
    channels.)"""
    return kernel.schedule[:1] == ("conv",) and _takes(kernel, bits) and \
        kernel.params[int(kernel.schedule[2])].shape[1] == 1


def _takes(kernel: Kernel, bits: int) -> bool:
    """Float 2-D convolutions, conv_transposes (a convolution's input gradient) and weight
    gradients that no GEMM template takes (fewer than MR output channels per group, or too
    little work: ``codegen.TEMPLATES`` lists this template after those) with at most MAX_STEPS
    (input channel, tap) pairs per output value, strides up to 4, a conv_transpose's padding at
    most dilation * (kernel - 1), and a scratch of at most MAX_SCRATCH values: depthwise layers,
    and narrow groups. Rows shorter than a vector take one masked vector (a 1x960x7x7 depthwise
    layer: 0.49x the loop nest's time)."""
    if len(kernel.params[0].shape) != 4 or \
            kernel.params[-1].dtype not in (DType.float32, DType.float64):
        return False
    plan = _Plan(kernel, bits // (32 if kernel.params[-1].dtype is DType.float32 else 64))
    return plan.cg * plan.kh * plan.kw <= MAX_STEPS and plan.scratch <= MAX_SCRATCH and \
        max(plan.sy, plan.sx, plan.uy, plan.ux) <= 4 and min(plan.py, plan.px) >= 0


class _Plan:
    """What the kernel convolves, seen as a convolution of a source plane: conv's input x;
    conv_transpose's input dy, "stuffed" (value i at position i * stride) and padded by
    dilation * (kernel - 1) - pad, against the flipped weights at stride 1; the weight
    gradient's x, against dy. And the static layout of one thread's scratch: per input channel
    of the group, ``sx`` column phases of ``rows`` rows of ``pitch`` values."""

    def __init__(self, kernel: Kernel, lanes: int) -> None:
        self.kind = str(kernel.schedule[0])
        out = kernel.params[-1]
        (sy, sx), (self.dy, self.dx), (py, px) = geometry(kernel.schedule, 2)
        if self.kind == "conv_weight_grad":
            self.src, self.groups = 0, int(kernel.schedule[3])
            x, dy = kernel.params[0], kernel.params[1]
            self.c_out, self.cg, self.kh, self.kw = out.shape
            self.oh, self.ow = dy.shape[2:]
        else:
            self.src, self.groups = int(kernel.schedule[1]), int(kernel.schedule[4])
            x, w = kernel.params[self.src], kernel.params[int(kernel.schedule[2])]
            self.c_out, self.oh, self.ow = out.shape[1], out.shape[2], out.shape[3]
            self.cg, self.kh, self.kw = x.shape[1] // self.groups, w.shape[2], w.shape[3]
        self.c_src, (self.h, self.w) = x.shape[1], x.shape[2:]
        (self.sy, self.sx), (self.uy, self.ux), (self.py, self.px) = (sy, sx), (1, 1), (py, px)
        if self.kind == "conv_transpose":  # stride 1 over the stuffed, re-padded input
            (self.sy, self.sx), (self.uy, self.ux) = (1, 1), (sy, sx)
            self.py, self.px = self.dy * (self.kh - 1) - py, self.dx * (self.kw - 1) - px
        # padded rows read: the last output row's last tap (the end padding may be negative)
        self.rows = (self.oh - 1) * self.sy + (self.kh - 1) * self.dy + 1
        # a phase's columns: whole vectors of output columns past the widest tap offset
        vectors = -(-self.ow // lanes)
        self.pitch = vectors * lanes + (self.kw - 1) * self.dx // self.sx
        self.scratch = self.cg * self.sx * self.rows * self.pitch

    def source_rows(self) -> int:
        """How many of the source's rows (from the first) land inside the scratch's rows."""
        return max(0, min(self.h, (self.rows - 1 - self.py) // self.uy + 1))

    def phase_columns(self, q: int) -> tuple[int, int]:
        """Phase q's columns [lo, hi) that hold input (padded column j * sx + q - px in
        [0, w)) and lie inside the pitch (no stuffing)."""
        lo = max(0, -(-(self.px - q) // self.sx))
        hi = min(self.pitch, (self.w - 1 + self.px - q) // self.sx + 1)
        return lo, max(lo, hi)


class DepthwiseConv(ConvGemm):
    """The direct, register-blocked convolution of the module docstring, for the (image,
    output channel) planes [lo, hi) a thread owns."""

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        super().__init__(em, kernel, bits)
        self.plan = _Plan(kernel, self.width)
        self.bias = int(kernel.schedule[3])

    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        from graphnn.backends.llvm.codegen import for_range

        b, plan = self.b, self.plan
        lo, hi = bounds if bounds is not None else (self.c(0), self.c(self.k.body[0].extent))
        outer = self.k.body[0]
        assert isinstance(outer, Loop)
        planes = [s for s in outer.body if isinstance(s, Loop) and s.var == "y0"]
        scratch = self.malloc(plan.scratch)
        self.zero(scratch, plan.scratch)  # the padding: never written after this
        filled = self.slot(ir.IntType(64), "filled")  # the (image, group) in the scratch
        b.store(self.c(-1), filled)
        with for_range(b, hi, "no", start=lo) as no:
            img = b.sdiv(no, self.c(self.c_out))
            o = b.srem(no, self.c(self.c_out))
            # consecutive planes of one group read the same input channels: copied once
            group = b.sdiv(no, self.c(plan.c_out // plan.groups))
            with b.if_then(b.icmp_signed("!=", b.load(filled, typ=ir.IntType(64)), group)):
                self.fill_group(scratch, img, o)
                b.store(group, filled)
            self.convolve(scratch, no, o)
            if len(planes) > 1:  # the fused epilogue, over the plane while it is in cache
                self.plane(planes[1], no, b.add(no, self.c(1)))
        self.free(scratch)

    def weight_index(self, o: ir.Value, c: int, ty: int, tx: int) -> ir.Value:
        """Where w's value for output channel o, the group's input channel c and tap (ty, tx)
        is: conv's w[o, c, ty, tx]; conv_transpose's w[g * cg + c, o mod cog] at the flipped
        tap."""
        b, plan = self.b, self.plan
        if plan.kind == "conv":
            return b.add(b.mul(o, self.c(plan.cg * plan.kh * plan.kw)),
                         self.c((c * plan.kh + ty) * plan.kw + tx))
        cog = plan.c_out // plan.groups
        g, o_in = b.sdiv(o, self.c(cog)), b.srem(o, self.c(cog))
        row = b.add(b.mul(b.add(b.mul(g, self.c(plan.cg)), self.c(c)), self.c(cog)), o_in)
        tap = (plan.kh - 1 - ty) * plan.kw + plan.kw - 1 - tx
        return b.add(b.mul(row, self.c(plan.kh * plan.kw)), self.c(tap))

    def fill_group(self, scratch: ir.Value, img: ir.Value, o: ir.Value) -> None:
        """The group of output channel o's input channels of image img into the scratch."""
        b, plan = self.b, self.plan
        first = b.mul(b.sdiv(o, self.c(plan.c_out // plan.groups)), self.c(plan.cg))
        for c in range(plan.cg):
            ch = b.add(b.mul(img, self.c(plan.c_src)), b.add(first, self.c(c)))
            self.fill(scratch, c, ch)

    # -- 1. the padded, phase-split input --------------------------------------------------------
    def fill(self, scratch: ir.Value, c: int, ch: ir.Value) -> None:
        """Source channel ``ch`` (flat over images and channels) into the scratch's channel c:
        each row split into the column phases, or stuffed (conv_transpose)."""
        from graphnn.backends.llvm.codegen import for_range

        b, plan = self.b, self.plan
        rows = plan.source_rows()
        if rows == 0:
            return
        src_plane = b.mul(ch, self.c(plan.h * plan.w))
        with for_range(b, rows, "fr") as r:
            src = b.add(src_plane, b.mul(r, self.c(plan.w)))
            prow = b.add(b.mul(r, self.c(plan.uy)), self.c(plan.py))
            if plan.ux > 1:
                self.stuff(scratch, b.mul(b.add(self.c(c * plan.rows), prow),
                                          self.c(plan.pitch)), src)
            else:
                self.phases(scratch, c, prow, src)

    def phases(self, scratch: ir.Value, c: int, prow: ir.Value, src: ir.Value) -> None:
        """One source row (from x[src]) into padded row ``prow`` of each column phase."""
        b, plan = self.b, self.plan
        for q in range(plan.sx):
            j_lo, j_hi = plan.phase_columns(q)
            if j_hi <= j_lo:
                continue
            row = b.add(self.c((c * plan.sx + q) * plan.rows), prow)
            dst = b.add(b.mul(row, self.c(plan.pitch)), self.c(j_lo))
            first = j_lo * plan.sx + q - plan.px  # the input column of j_lo
            self.strided_copy(scratch, dst, b.add(src, self.c(first)), j_hi - j_lo,
                              plan.w - first)

    def stuff(self, scratch: ir.Value, dst: ir.Value, src: ir.Value) -> None:
        """scratch[dst + px + i * ux] = x[src + i] for the row's values that land inside the
        pitch (the zeros between them stay from the scratch's clearing)."""
        from graphnn.backends.llvm.codegen import for_range

        b, plan = self.b, self.plan
        count = min(plan.w, (plan.pitch - 1 - plan.px) // plan.ux + 1)
        with for_range(b, count, "fs") as i:
            at = b.add(dst, b.add(b.mul(i, self.c(plan.ux)), self.c(plan.px)))
            b.store(b.load(self.ptr(plan.src, b.add(src, i)), typ=self.ty),
                    self.at_scratch(scratch, at, self.c(0)))

    def strided_copy(self, scratch: ir.Value, dst: ir.Value, src: ir.Value, count: int,
                     avail: int) -> None:
        """scratch[dst + j] = x[src + j * sx] for j < count, where x[src .. src + avail) is
        the input row's rest: whole vectors (sx loads and a shuffle tree, masked past the
        row's end), then one masked vector for the tail."""
        from graphnn.backends.llvm.codegen import for_range

        b, width, plan = self.b, self.width, self.plan
        s = plan.sx
        whole = count // width
        # whole vectors whose s * width values all lie inside the row
        safe = min(whole, avail // (s * width))
        if safe > 0:
            with for_range(b, safe, "fv") as v:
                j = b.mul(v, self.c(width))
                self.store_vec(self.strided_load(plan.src, b.add(src, b.mul(j, self.c(s))), s,
                                                 s * width),
                               self.at_scratch(scratch, dst, j), None)
        for j0 in range(safe * width, count, width):  # the rest: masked vectors
            n = min(width, count - j0)
            value = self.strided_load(plan.src, b.add(src, self.c(j0 * s)), s,
                                      min(s * width, avail - j0 * s))
            self.store_vec(value, self.at_scratch(scratch, dst, self.c(j0)),
                           self.lane_mask([i < n for i in range(width)]))

    def at_scratch(self, scratch: ir.Value, dst: ir.Value, j: ir.Value) -> ir.Value:
        return self.b.gep(scratch, [self.b.add(dst, j)], inbounds=True, source_etype=self.ty)

    # -- 2. the register blocks ------------------------------------------------------------------
    def convolve(self, scratch: ir.Value, no: ir.Value, o: ir.Value) -> None:
        """Plane ``no`` (output channel o) from the scratch: blocks of ROWS rows x COLS
        vectors, then the rows and vectors left over."""
        from graphnn.backends.llvm.codegen import for_range

        b, plan, width = self.b, self.plan, self.width
        weights = [self.splat(b.load(self.ptr(self.wb, self.weight_index(o, c, ty, tx)),
                                     typ=self.ty))
                   for c, ty, tx in itertools.product(range(plan.cg), range(plan.kh),
                                                      range(plan.kw))]
        bias = self.splat(b.load(self.ptr(self.bias, o), typ=self.ty)) if self.bias >= 0 else \
            ir.Constant(self.vec, [0.0] * width)
        whole = plan.ow // width  # unmasked vectors of a row
        tail = plan.ow - whole * width
        out_plane = b.mul(no, self.c(plan.oh * plan.ow))

        def rows_of(y0: ir.Value, nrows: int) -> None:
            groups = whole // COLS
            if groups:
                with for_range(b, groups, "dc") as g:
                    self.block(scratch, out_plane, weights, bias, y0, nrows,
                               b.mul(g, self.c(COLS * width)), COLS, None)
            left = [(self.c((groups * COLS + v) * width), None) for v in
                    range(whole - groups * COLS)]
            if tail:
                left.append((self.c(whole * width), self.lane_mask(
                    [i < tail for i in range(width)])))
            for j0, mask in left:
                self.block(scratch, out_plane, weights, bias, y0, nrows, j0, 1, mask)

        full = plan.oh // ROWS
        if full:
            with for_range(b, full, "dr") as r:
                rows_of(b.mul(r, self.c(ROWS)), ROWS)
        for y in range(full * ROWS, plan.oh):
            rows_of(self.c(y), 1)

    def block(self, scratch: ir.Value, out_plane: ir.Value, weights: list[ir.Value],
              bias: ir.Value, y0: ir.Value, nrows: int, j0: ir.Value, nvec: int,
              mask: ir.Constant | None) -> None:
        """Output rows [y0, y0 + nrows) x vectors [j0, j0 + nvec * width) of the plane,
        accumulated over every (channel, tap) in registers and stored once."""
        b, plan, width = self.b, self.plan, self.width
        accs = [[bias] * nvec for _ in range(nrows)]
        steps = itertools.product(range(plan.cg), range(plan.kh), range(plan.kw))
        for i, (c, ty, tx) in enumerate(steps):
            q, off = (tx * plan.dx) % plan.sx, (tx * plan.dx) // plan.sx
            for r in range(nrows):
                row = b.add(b.mul(b.add(y0, self.c(r)), self.c(plan.sy)),
                            self.c((c * plan.sx + q) * plan.rows + ty * plan.dy))
                at = b.add(b.add(b.mul(row, self.c(plan.pitch)), j0), self.c(off))
                for v in range(nvec):
                    x = self.load_vec(self.at_scratch(scratch, at, self.c(v * width)), None)
                    accs[r][v] = self.em._call(self.fma_vec, self.vec, weights[i], x, accs[r][v])
        for r in range(nrows):
            base = b.add(out_plane, b.add(b.mul(b.add(y0, self.c(r)), self.c(plan.ow)), j0))
            for v in range(nvec):
                self.store_vec(accs[r][v], self.ptr(self.o, b.add(base, self.c(v * width))),
                               mask)


class DepthwiseWeightGrad(DepthwiseConv):
    """conv_weight_grad of the same convolutions: dW[o, c, t] = sum over images n and output
    pixels y of dy[n, o, y] * x[n, g(o) + c, y * stride + t * dilation - pad]. The threads split
    the output channels o (so no two write one weight); per image, the group's input channels
    are copied into the scratch as for the forward pass, and one vector accumulator per
    (channel, tap) gathers dy's row vector times the tap's shifted row (both masked past the
    row's end), summed across its lanes once every image is done."""

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        self.em, self.b, self.k = em, em.b, kernel
        self.types(kernel.params[-1].dtype, bits)
        self.plan = _Plan(kernel, self.width)

    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        from graphnn.backends.llvm.codegen import for_range

        b, plan, width = self.b, self.plan, self.width
        lo, hi = bounds if bounds is not None else (self.c(0), self.c(plan.c_out))
        steps = list(itertools.product(range(plan.cg), range(plan.kh), range(plan.kw)))
        accs = [self.slot(self.vec, f"acc{i}") for i in range(len(steps))]
        zero = ir.Constant(self.vec, [0.0] * width)
        scratch = self.malloc(plan.scratch)
        self.zero(scratch, plan.scratch)
        images = self.k.params[1].shape[0]
        whole, tail = plan.ow // width, plan.ow % width
        with for_range(b, hi, "o", start=lo) as o:
            for acc in accs:
                b.store(zero, acc)
            with for_range(b, images, "img") as img:
                self.fill_group(scratch, img, o)
                dy_plane = b.mul(b.add(b.mul(img, self.c(plan.c_out)), o),
                                 self.c(plan.oh * plan.ow))
                with for_range(b, plan.oh, "gy") as y:
                    if whole:
                        with for_range(b, whole, "gv") as v:
                            self.accumulate(scratch, accs, steps, dy_plane, y,
                                            b.mul(v, self.c(width)), None)
                    if tail:
                        self.accumulate(scratch, accs, steps, dy_plane, y,
                                        self.c(whole * width),
                                        self.lane_mask([i < tail for i in range(width)]))
            base = b.mul(o, self.c(len(steps)))
            for i, acc in enumerate(accs):
                total = self.hsum(b.load(acc, typ=self.vec))
                b.store(total, self.ptr(2, b.add(base, self.c(i))))
        self.free(scratch)

    def accumulate(self, scratch: ir.Value, accs: list[ir.AllocaInstr],
                   steps: list[tuple[int, int, int]], dy_plane: ir.Value, y: ir.Value,
                   j0: ir.Value, mask: ir.Constant | None) -> None:
        """accs[i] += dy[.., y, j0 + lanes] * the scratch's row for step i at y."""
        b, plan = self.b, self.plan
        grad = self.load_vec(self.ptr(1, b.add(dy_plane, b.add(b.mul(y, self.c(plan.ow)), j0))),
                             mask)
        for acc, (c, ty, tx) in zip(accs, steps):
            q, off = (tx * plan.dx) % plan.sx, (tx * plan.dx) // plan.sx
            row = b.add(b.mul(y, self.c(plan.sy)),
                        self.c((c * plan.sx + q) * plan.rows + ty * plan.dy))
            at = b.add(b.add(b.mul(row, self.c(plan.pitch)), j0), self.c(off))
            x = self.load_vec(self.at_scratch(scratch, at, self.c(0)), mask)
            b.store(self.em._call(self.fma_vec, self.vec, grad, x, b.load(acc, typ=self.vec)),
                    acc)

    def hsum(self, v: ir.Value) -> ir.Value:
        """The sum of v's lanes (a tree of halves: the lanes' partial sums of the pixels)."""
        b, width = self.b, self.width
        while width > 1:
            half = width // 2
            lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), half),
                                                    list(range(half))))
            hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), half),
                                                    list(range(half, width))))
            v, width = b.fadd(lo, hi), half
        return b.extract_element(v, ir.Constant(ir.IntType(32), 0))
