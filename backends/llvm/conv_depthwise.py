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
(MLAS and XNNPACK also run depthwise convolutions as direct, register-blocked kernels over a
padded input, rather than as a GEMM: each input value meets only k_h x k_w weights.)
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from graphnn.backends.kernel.ir import Kernel, Loop, geometry
from graphnn.backends.llvm.conv_gemm import ConvGemm
from graphnn.backends.llvm.gemm import _prod
from llvmlite import ir

from graphnn.dtypes import DType

if TYPE_CHECKING:
    from graphnn.backends.llvm.codegen import KernelEmitter

MAX_STEPS = 64  # (input channel, tap) pairs per output value, written out unrolled, at most
ROWS, COLS = 2, 4  # a register block: output rows x vectors (8 independent FMA chains)
MAX_SCRATCH = 1 << 22  # values of a thread's padded input channels, at most (16 MiB float32)


def applies(kernel: Kernel, bits: int = 128) -> bool:
    """Float 2-D convolutions that no GEMM template takes (fewer than MR output channels per
    group, or too little work: ``conv_gemm.applies``) with at most MAX_STEPS (input channel,
    tap) pairs per output value, strides up to 4 and a scratch of at most MAX_SCRATCH values:
    depthwise layers, and narrow groups. Rows shorter than a vector take one masked vector
    (a 1x960x7x7 depthwise layer: 0.49x the loop nest's time)."""
    from graphnn.backends.llvm import conv_gemm

    if kernel.schedule[:1] != ("conv",) or conv_gemm.applies(kernel, bits):
        return False
    x, w, out = (kernel.params[int(kernel.schedule[1])], kernel.params[int(kernel.schedule[2])],
                 kernel.params[-1])
    if len(x.shape) != 4 or out.dtype not in (DType.float32, DType.float64):
        return False
    stride = geometry(kernel.schedule, 2)[0]
    lanes = bits // (32 if out.dtype is DType.float32 else 64)
    return _prod(tuple(w.shape[1:])) <= MAX_STEPS and \
        _Plan(kernel, lanes).scratch <= MAX_SCRATCH and max(stride) <= 4


class _Plan:
    """The static layout of one thread's scratch: per input channel of the group, ``stride``
    phases of ``rows`` rows of ``pitch`` values, and which of them hold data."""

    def __init__(self, kernel: Kernel, lanes: int) -> None:
        x, w, out = (kernel.params[int(kernel.schedule[1])],
                     kernel.params[int(kernel.schedule[2])], kernel.params[-1])
        (self.sy, self.sx), (self.dy, self.dx), (self.py, self.px) = geometry(kernel.schedule, 2)
        self.cg, self.kh, self.kw = w.shape[1:]
        self.h, self.w = x.shape[2:]
        self.oh, self.ow = out.shape[2:]
        # padded rows read: the last output row's last tap (the end padding may be negative)
        self.rows = (self.oh - 1) * self.sy + (self.kh - 1) * self.dy + 1
        # a phase's columns: whole vectors of output columns past the widest tap offset
        vectors = -(-self.ow // lanes)
        self.pitch = vectors * lanes + (self.kw - 1) * self.dx // self.sx
        self.scratch = self.cg * self.sx * self.rows * self.pitch

    def phase_columns(self, q: int) -> tuple[int, int]:
        """Phase q's columns [lo, hi) that hold input (padded column j * sx + q - px in
        [0, w)) and lie inside the pitch."""
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
        with for_range(b, hi, "no", start=lo) as no:
            img = b.sdiv(no, self.c(self.c_out))
            o = b.srem(no, self.c(self.c_out))
            first = b.mul(b.sdiv(o, self.c(self.og)), self.c(self.cg))  # the group's channel 0
            for c in range(self.cg):
                ch = b.add(b.mul(img, self.c(self.cg * self.groups)), b.add(first, self.c(c)))
                self.fill(scratch, c, ch)
            self.convolve(scratch, no, o)
            if len(planes) > 1:  # the fused epilogue, over the plane while it is in cache
                self.plane(planes[1], no, b.add(no, self.c(1)))
        self.free(scratch)

    # -- 1. the padded, phase-split input --------------------------------------------------------
    def fill(self, scratch: ir.Value, c: int, ch: ir.Value) -> None:
        """Input channel ``ch`` (flat over images and channels) into the scratch's channel c."""
        from graphnn.backends.llvm.codegen import for_range

        b, plan = self.b, self.plan
        last = min(plan.h, plan.rows - plan.py)  # input rows the convolution reads
        if last <= 0:
            return
        src_plane = b.mul(ch, self.c(plan.h * plan.w))
        with for_range(b, last, "fr", start=self.c(max(0, -plan.py))) as r:
            src = b.add(src_plane, b.mul(r, self.c(plan.w)))
            for q in range(plan.sx):
                j_lo, j_hi = plan.phase_columns(q)
                if j_hi <= j_lo:
                    continue
                row = b.add(self.c((c * plan.sx + q) * plan.rows + plan.py), r)
                dst = b.add(b.mul(row, self.c(plan.pitch)), self.c(j_lo))
                first = j_lo * plan.sx + q - plan.px  # the input column of j_lo
                self.strided_copy(scratch, dst, b.add(src, self.c(first)), j_hi - j_lo,
                                  plan.w - first)

    def strided_copy(self, scratch: ir.Value, dst: ir.Value, src: ir.Value, count: int,
                     avail: int) -> None:
        """scratch[dst + j] = x[src + j * sx] for j < count, where x[src .. src + avail) is
        the input row's rest: whole vectors (sx loads and a shuffle tree, masked past the
        row's end), then one masked vector for the tail."""
        from graphnn.backends.llvm.codegen import for_range

        b, width, s = self.b, self.width, self.plan.sx
        whole = count // width
        # whole vectors whose s * width values all lie inside the row
        safe = min(whole, avail // (s * width))
        if safe > 0:
            with for_range(b, safe, "fv") as v:
                j = b.mul(v, self.c(width))
                self.store_vec(self.gather(src, j, s * width), self.at_scratch(scratch, dst, j),
                               None)
        for j0 in range(safe * width, count, width):  # the rest: masked vectors
            n = min(width, count - j0)
            value = self.gather(src, self.c(j0), min(s * width, avail - j0 * s))
            self.store_vec(value, self.at_scratch(scratch, dst, self.c(j0)),
                           self.lane_mask([i < n for i in range(width)]))

    def gather(self, src: ir.Value, j: ir.Value, avail: int) -> ir.Value:
        """The vector x[src + (j + i) * sx] for its lanes i, from sx contiguous vectors of
        which only the first ``avail`` values are read (the rest masked off)."""
        b, width, s = self.b, self.width, self.plan.sx
        base = b.add(src, b.mul(j, self.c(s)))
        parts = []
        for v in range(s):
            mask = self.lane_mask([v * width + i < avail for i in range(width)])
            parts.append(self.load_vec(self.ptr(self.xb, b.add(base, self.c(v * width))), mask))
        if s == 1:
            return parts[0]
        # lane i takes element i * s of the concatenation: the first shuffle from the first
        # two vectors, each later one from the next vector where i * s reaches into it
        out = b.shuffle_vector(parts[0], parts[1], self.lane_order(
            [i * s if i * s < 2 * width else 0 for i in range(width)]))
        for v in range(2, s):
            out = b.shuffle_vector(out, parts[v], self.lane_order(
                [width + i * s - v * width if v * width <= i * s < (v + 1) * width else i
                 for i in range(width)]))
        return out

    def at_scratch(self, scratch: ir.Value, dst: ir.Value, j: ir.Value) -> ir.Value:
        return self.b.gep(scratch, [self.b.add(dst, j)], inbounds=True, source_etype=self.ty)

    # -- 2. the register blocks ------------------------------------------------------------------
    def convolve(self, scratch: ir.Value, no: ir.Value, o: ir.Value) -> None:
        """Plane ``no`` (output channel o) from the scratch: blocks of ROWS rows x COLS
        vectors, then the rows and vectors left over."""
        from graphnn.backends.llvm.codegen import for_range

        b, plan, width = self.b, self.plan, self.width
        w_base = b.mul(o, self.c(plan.cg * plan.kh * plan.kw))
        weights = [self.splat(b.load(self.ptr(self.wb, b.add(w_base, self.c(i))), typ=self.ty))
                   for i in range(plan.cg * plan.kh * plan.kw)]
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
