"""The LLVM backend's implicit-GEMM convolution for stride 1: the blocked GEMM of ``gemm.py``
reads its b operand straight from the input (zero-padded where the convolution pads) instead
of from an im2col buffer.

With stride 1, output pixel y and kernel tap t read input pixel y + t * dilation - pad. Lay the
input out zero-padded, with pitches P_d = in_d + pad_begin_d + pad_end_d and row-major strides
S, and number the output pixels by the same strides, p' = sum_d y_d * S_d. Then

    b[(c, t), p'] = xpad[c, p' + off(t)],   off(t) = sum_d t_d * dilation_d * S_d,

an affine read for every tap, so the micro-kernel's k loop runs over the input channels with
the taps unrolled. The GEMM computes the "wide" columns p' in [0, N'), N' = p'(last pixel) + 1;
those with some y_d >= out_d are not output pixels (they straddle the padded rows' ends) and
are dropped when the result is copied out, with the bias and the fused epilogue. That costs
N' / pixels - 1 more multiply-adds (8% for a 3x3 kernel over 26-wide rows) and saves the im2col
pass: taps x the input written, then read back by the GEMM from L2, where this reads the input
itself, from L1. (cuDNN's IMPLICIT_GEMM algorithm, Chetlur et al. 2014, also forms b from the
input on the fly; the padded pitch is what makes every tap's read a plain offset here.)

conv_transpose with stride 1 is the same computation: the convolution of its input, padded by
dilation * (taps - 1) - pad, with each (input, output) channel pair's taps flipped. Its taps
over the padding add zeros, so it pays only where few of them do (``implicit_applies``).

Two ways to split the work between threads, as in ``conv_gemm.py``: (image, output channel)
rows (``ConvGemm``'s split), or, for one image whose input is bigger than its weights,
blocks of wide columns.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from graphnn.backends.kernel.ir import Kernel, Loop, Stmt, geometry
from graphnn.backends.llvm.conv_gemm import gemm_sized
from graphnn.backends.llvm.gemm import I64, NR_TILE, PTR, GemmEmitter, _prod, innermost
from graphnn.backends.llvm.pool_fusion import is_pooled
from llvmlite import ir

if TYPE_CHECKING:
    from graphnn.backends.llvm.codegen import KernelEmitter

# the micro-kernel's k-step: step(k, a_of_row, b_of_col), as GemmEmitter.k_steps calls it
Step = Callable[[ir.Value, Callable[[ir.Value], ir.Value], Callable[[ir.Value], ir.Value]], None]

# k steps per cache block: the input channels of a block times the taps, at most this many
# (a 64-channel 3x3 convolution: two blocks of 288)
KC_IMPLICIT = 320
# GEMM columns per useful one above which im2col (conv) or GEMM + col2im (conv_transpose) pays
# instead (see ``implicit_applies``)
MAX_WIDENING = {"conv": 1.3, "conv_transpose": 1.2}
# output pixels per cache block of the weight gradient's depth (whole output lines)
LINES_PIXELS = 256


def _strides(dims: tuple[int, ...]) -> tuple[int, ...]:
    out: list[int] = []
    acc = 1
    for d in reversed(dims):
        out.insert(0, acc)
        acc *= d
    return tuple(out)


@dataclass(frozen=True)
class Shape:
    """A convolution kernel (``conv``, or ``conv_transpose`` seen as the convolution of its
    input with the flipped, transposed weights) as the implicit GEMM sees it: per group, og
    output channels (the GEMM's rows) from cg input channels times the taps (its depth)."""

    transposed: bool
    groups: int
    cg: int
    og: int
    taps: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    in_sz: tuple[int, ...]
    out_sz: tuple[int, ...]
    pads_begin: tuple[int, ...]  # of the padded input the GEMM reads

    @staticmethod
    def of(kernel: Kernel) -> Shape | None:
        """The kernel's shape, or None where it is no convolution."""
        kind = kernel.schedule[0] if kernel.schedule else None
        if kind not in ("conv", "conv_transpose"):
            return None
        x, w = kernel.params[int(kernel.schedule[1])], kernel.params[int(kernel.schedule[2])]
        out, groups = kernel.params[-1], int(kernel.schedule[4])
        nd = len(x.shape) - 2
        stride, dil, pads = geometry(kernel.schedule, nd)
        taps = tuple(w.shape[2:])
        if kind == "conv":
            cg, og = w.shape[1], out.shape[1] // groups
        else:  # tap t of the transposed convolution is tap (taps - 1 - t) of a convolution
            cg, og = x.shape[1] // groups, w.shape[1]
            pads = tuple(dil[d] * (taps[d] - 1) - pads[d] for d in range(nd))
        # a convolution writing its 2x2 max-pooled output: the convolution's is twice as big
        scale = 2 if is_pooled(kernel) else 1
        return Shape(kind == "conv_transpose", groups, cg, og, taps, stride, dil,
                     tuple(x.shape[2:]), tuple(scale * d for d in out.shape[2:]), pads)

    @property
    def pitches(self) -> tuple[int, ...]:
        """The zero-padded input's dims (stride 1): P_d = out_d + dilation_d * (taps_d - 1)."""
        return tuple(o + d * (t - 1) for o, d, t in zip(self.out_sz, self.dilation, self.taps))

    @property
    def wide(self) -> int:
        """N': the wide columns p' = sum_d y_d * S_d up to the last output pixel's."""
        return sum((o - 1) * s for o, s in zip(self.out_sz, _strides(self.pitches))) + 1

    def fits(self) -> bool:
        """Stride 1, and the padding is not negative on either side (conv_transpose's pads
        beyond dilation * (taps - 1) crop instead)."""
        return all(s == 1 for s in self.stride) and all(
            0 <= b <= p - i for b, p, i in zip(self.pads_begin, self.pitches, self.in_sz))


def implicit_applies(kernel: Kernel, bits: int = 128) -> bool:
    """A stride-1 float convolution or conv_transpose big enough for the GEMM template (as
    ``conv_gemm.applies``) that computes at most MAX_WIDENING wide columns per useful one: per
    output pixel (conv), per input pixel (conv_transpose, whose taps over the padding only add
    zeros). Measured (2 threads, AVX-512 Xeon, float32, ms, implicit against im2col or col2im):

    - conv, batch 64: W2's 26x26x32 -> 64 (1.08 wide columns per pixel) 5.4-6.0 against 6.3-6.9;
      12x12x64 -> 128 (1.18) 3.7-3.9 against 3.9-4.4; 8x8x64 -> 64 (1.28) 0.68 against 0.75-0.81;
    - conv, one image of ResNet-18 (pad 1): 56x56x64 (1.04) 0.81 against 1.45; 28x28x128 0.79
      against 1.3; 14x14x256 0.77-0.82 against 0.93-1.08; 7x7x512 (1.24) 0.89-0.96 against
      1.03-1.42;
    - conv_transpose, batch 64, 64 -> 32 channels: 24x24 pad 1 (1.08) 4.7 against 5.0-5.4;
      W6's 24x24 -> 26x26 (1.26) 5.4 against 4.9; W6's 10x10 -> 12x12 (1.66) 4.8 against
      3.6-3.9."""
    shape = Shape.of(kernel)
    if shape is None or not shape.fits():
        return False
    pixels = _prod(shape.out_sz)
    useful = _prod(shape.in_sz) if shape.transposed else pixels
    limit = MAX_WIDENING["conv_transpose" if shape.transposed else "conv"]
    return gemm_sized(kernel.params[-1].dtype, shape.og, pixels, shape.cg * _prod(shape.taps),
                      bits) and shape.wide <= limit * useful


def columns_split(kernel: Kernel) -> bool:
    """One image whose zero-padded input is bigger than its weights: the threads share out
    blocks of wide columns (each reads all the weights and its part of the input); else they
    share out output channels (each reads all the input and its part of the weights)."""
    shape = Shape.of(kernel)
    assert shape is not None
    return kernel.params[-1].shape[0] == 1 and \
        shape.cg * _prod(shape.pitches) > shape.og * shape.cg * _prod(shape.taps)


class ImplicitConvGemm(GemmEmitter):
    """Stride-1 convolution (or conv_transpose) as a GEMM over the padded input (see the module
    docstring), the threads sharing out (image, output channel) rows; ``parallel_extent`` and
    ``emit`` switch to blocks of wide columns where ``columns_split`` holds."""

    packable = False  # b is the input itself: no panel is copied
    slack = 0  # values after the padded buffer that whole tiles past the last pixel may read

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        shape = Shape.of(kernel)
        assert shape is not None
        self.em, self.b, self.k = em, em.b, kernel
        self.geometry(shape)
        _, xb, wb, *_ = kernel.schedule
        self.xb, self.wb = int(xb), int(wb)
        self.o = len(kernel.params) - 1
        self.c_out = kernel.params[-1].shape[1]
        self.m, self.kk = self.c_out, self.cg * self.ntaps
        self.types(kernel.params[-1].dtype, bits)
        self.n = shape.wide
        blocks = -(-self.kk // KC_IMPLICIT)
        self.block_channels = -(-self.cg // blocks)
        self.by_columns = columns_split(kernel)
        if self.padded and not self.by_columns:
            # whole register tiles: the columns past the last output pixel's read the padded
            # buffer's slack (zeros); edge tiles cost about as much as whole ones (ResNet-18's
            # 7x7 layers: 61 wide columns were one whole tile and two edge tiles)
            self.slack = -self.n % self.nr
            self.n += self.slack
        self.src: ir.Value | None = None  # the group's (padded) input channel 0
        # the weight w[o, c, t] of output channel o (absolute), input channel c of its group
        # and tap t (flat), for the group of the rows being computed
        self.weight: Callable[[ir.Value, ir.Value, ir.Value], ir.Value] | None = None

    def geometry(self, shape: Shape) -> None:
        """The convolution's sizes, the padded input's pitches and strides, and each tap's
        offset in it (both implicit GEMMs read the input this way)."""
        self.shape, self.groups, self.cg, self.og = shape, shape.groups, shape.cg, shape.og
        self.nd, self.dil, self.taps = len(shape.in_sz), shape.dilation, shape.taps
        self.osz, self.in_sz = shape.out_sz, shape.in_sz
        self.pixels, self.ntaps = _prod(self.osz), _prod(self.taps)
        self.pitches, self.pads_begin = shape.pitches, shape.pads_begin
        self.wide_strides = _strides(self.pitches)
        self.plane_size = _prod(self.pitches)
        self.offsets = [sum(t * self.dil[d] * self.wide_strides[d] for d, t in enumerate(taps))
                        for taps in itertools.product(*[range(t) for t in self.taps])]
        self.padded = self.pitches != self.in_sz

    @staticmethod
    def parallel_extent(kernel: Kernel, bits: int) -> int | None:
        """Blocks of NR_TILE wide columns where the threads split them, else None (the outer
        loop's (image, channel) rows)."""
        shape = Shape.of(kernel)
        assert shape is not None
        return -(-shape.wide // NR_TILE) if columns_split(kernel) else None

    def weights_of(self, g: ir.Value, base: ir.Value) -> None:
        """Sets ``weight`` for group g, the rows being output channel + base: conv's w[o, c, t]
        at (o * cg + c) * taps + t; conv_transpose's w[g * cg + c, o - g * og, taps - 1 - t]."""
        b = self.b
        if not self.shape.transposed:
            self.weight = lambda row, c, t: self.ptr(self.wb, b.add(
                b.mul(b.add(b.mul(b.sub(row, base), self.c(self.cg)), c), self.c(self.ntaps)),
                t))
            return
        first = b.mul(g, self.c(self.cg))
        j0 = b.add(base, b.mul(g, self.c(self.og)))
        self.weight = lambda row, c, t: self.ptr(self.wb, b.add(b.mul(b.add(
            b.mul(b.add(first, c), self.c(self.og)), b.sub(row, j0)), self.c(self.ntaps)),
            b.sub(self.c(self.ntaps - 1), t)))

    # -- the GEMM's k loop: channel blocks, then the taps ----------------------------------
    def k_blocks(self) -> int:
        return -(-self.cg // self.block_channels)

    def k_block(self, kc: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Block kc's input channels [c0, c1) (``k_steps`` walks their taps)."""
        return self.block(kc, self.block_channels, self.cg)

    def k_steps(self, c0: ir.Value, c1: ir.Value, step: Step) -> None:
        """k = (c, t) for the block's channels c and every tap t: a loop over the taps whose
        offsets come from a constant table, which LLVM unrolls (written out here, each of the
        template's 15 tile shapes had 9 copies of its k-step: W2's three convolutions took
        1.1 s to emit and print, so a cached graph took 0.5 s to load)."""
        from graphnn.backends.llvm.codegen import for_range, unroll_fully

        b, weight = self.b, self.weight
        assert self.src is not None and weight is not None
        table = self.tap_table()
        with for_range(b, c1, "c", start=c0) as c:
            base = b.mul(c, self.c(self.plane_size))
            with for_range(b, self.ntaps, "t", hints=unroll_fully(self.em.module)) as t:
                off = b.load(b.gep(table, [self.c(0), t], inbounds=True), typ=I64)
                at = b.add(base, off)
                step(b.add(b.mul(c, self.c(self.ntaps)), t), lambda row: weight(row, c, t),
                     lambda col: b.gep(self.src, [b.add(at, col)], inbounds=True,
                                       source_etype=self.ty))

    def tap_table(self) -> ir.GlobalVariable:
        """The taps' offsets off(t) in the padded input, a constant array of the module."""
        module = self.em.module
        name = f"{self.k.name}_taps"
        if name in module.globals:
            return module.globals[name]
        ty = ir.ArrayType(I64, self.ntaps)
        table = ir.GlobalVariable(module, ty, name)
        table.global_constant, table.linkage = True, "internal"
        table.initializer = ir.Constant(ty, self.offsets)
        return table

    # -- the two thread splits --------------------------------------------------------------
    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        if self.by_columns:
            self.emit_columns(bounds)
            return
        b = self.b
        lo, hi = bounds if bounds is not None else (self.c(0), self.c(self.k.body[0].extent))
        self.slots()
        wide = self.malloc(self.og * self.n)
        xpad = self.padded_buffer()

        def group(img: ir.Value, g: ir.Value, g_lo: ir.Value, r_lo: ir.Value,
                  r_hi: ir.Value) -> None:
            self.src = self.source(xpad, img, g, self.c(0), self.c(self.padded_lines()))
            base = b.mul(img, self.c(self.c_out))  # rows are "no" = img * c_out + o
            self.weights_of(g, base)
            self.out_at = lambda row, col: b.gep(wide, [self.at(b.sub(row, r_lo), col, self.n)],
                                                 inbounds=True, source_etype=self.ty)
            full = b.mul(b.sdiv(b.sub(r_hi, r_lo), self.c(self.mr)), self.c(self.mr))
            self.rows(r_lo, r_hi, full, b.add(r_lo, full), accumulate=False)
            self.copy_out(wide, r_lo, r_hi, base, self.c(0), self.c(self.n), self.c(self.n))

        self.group_planes(lo, hi, self.c_out, self.og, self.groups, group)
        self.free_buffers(wide, xpad)

    def emit_columns(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        """One image, the thread's wide columns [p_lo, p_hi) for every output channel."""
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        lo, hi = bounds if bounds is not None else (
            self.c(0), self.c(-(-self.n // NR_TILE)))
        p_lo = self.min(b.mul(lo, self.c(NR_TILE)), self.c(self.n))
        p_hi = self.min(b.mul(hi, self.c(NR_TILE)), self.c(self.n))
        width = b.sub(p_hi, p_lo)
        self.slots()
        wide = self.malloc(b.mul(width, self.c(self.c_out)))
        xpad = self.padded_buffer()
        whole = (self.n // self.nr) * self.nr
        j_end = self.min(p_hi, self.c(whole))
        # the padded lines the columns' taps reach: [p_lo, p_hi - 1 + the last tap's offset]
        pitch = self.pitches[-1]
        l_lo = b.sdiv(p_lo, self.c(pitch))
        l_hi = self.min(b.add(b.sdiv(b.add(p_hi, self.c(self.offsets[-1] - 1)), self.c(pitch)),
                              self.c(1)), self.c(self.padded_lines()))
        with b.if_then(b.icmp_signed("<", p_lo, p_hi)):
            with for_range(b, self.groups, "grp") as g:
                self.src = self.source(xpad, self.c(0), g, l_lo, l_hi)
                self.weights_of(g, self.c(0))
                self.out_at = lambda row, col: b.gep(
                    wide, [b.add(b.mul(row, width), b.sub(col, p_lo))], inbounds=True,
                    source_etype=self.ty)
                r_lo = b.mul(g, self.c(self.og))
                r_hi = b.add(r_lo, self.c(self.og))
                full = self.c(self.og // self.mr * self.mr)
                self.rows(r_lo, r_hi, full, b.add(r_lo, full), accumulate=False,
                          cols=(p_lo, b.select(b.icmp_signed("<", p_lo, j_end), j_end, p_lo)),
                          edges=b.icmp_signed("==", p_hi, self.c(self.n)))
            self.copy_out(wide, self.c(0), self.c(self.c_out), self.c(0), p_lo, p_hi, width)
        self.free_buffers(wide, xpad)

    def free_buffers(self, wide: ir.Value, xpad: ir.Value | None) -> None:
        self.free(wide)
        if xpad is not None:
            self.free(xpad)
        self.release()

    # -- the padded input -------------------------------------------------------------------
    def padded_lines(self) -> int:
        """Lines (all dims but the last) of one padded input channel."""
        return _prod(self.pitches[:-1])

    def padded_buffer(self) -> ir.Value | None:
        """This call's buffer for one image's padded group of channels, where there is padding,
        and ``slack`` zeros after them."""
        if not self.padded:
            return None
        size = self.cg * self.plane_size
        xpad = self.malloc(size + self.slack)
        if self.slack:
            self.zero(self.b.gep(xpad, [self.c(size)], inbounds=True, source_etype=self.ty),
                      self.slack)
        return xpad

    def source(self, xpad: ir.Value | None, img: ir.Value, g: ir.Value, l_lo: ir.Value,
               l_hi: ir.Value) -> ir.Value:
        """The b operand's channel 0 for image img and group g: the input itself, or xpad with
        the padded lines [l_lo, l_hi) of every channel filled in."""
        b = self.b
        x = self.k.params[self.xb]
        first = b.add(b.mul(img, self.c(x.shape[1])), b.mul(g, self.c(self.cg)))
        if xpad is None:
            return self.ptr(self.xb, b.mul(first, self.c(self.plane_size)))
        from graphnn.backends.llvm.codegen import for_range

        in_lines = _strides(self.in_sz[:-1] + (1,))[:-1]  # each outer input dim's line stride
        before, row = self.pads_begin[-1], self.in_sz[-1]
        after = self.pitches[-1] - before - row
        with for_range(b, self.cg, "pc") as c:
            channel = b.mul(b.add(first, c), self.c(_prod(self.in_sz)))
            with for_range(b, l_hi, "pl", start=l_lo) as line:
                dst = b.gep(xpad, [b.add(b.mul(c, self.c(self.plane_size)),
                                         b.mul(line, self.c(self.pitches[-1])))],
                            inbounds=True, source_etype=self.ty)
                inside = ir.Constant(ir.IntType(1), 1)
                src_line, rest = self.c(0), line
                for d in reversed(range(len(self.pitches) - 1)):
                    q = b.sub(b.srem(rest, self.c(self.pitches[d])), self.c(self.pads_begin[d]))
                    rest = b.sdiv(rest, self.c(self.pitches[d]))
                    inside = b.and_(inside, b.and_(b.icmp_signed(">=", q, self.c(0)),
                                                   b.icmp_signed("<", q, self.c(self.in_sz[d]))))
                    src_line = b.add(src_line, b.mul(q, self.c(in_lines[d])))
                with b.if_else(inside) as (then, otherwise):
                    with then:
                        if before:
                            self.zero(dst, before)
                        src = self.ptr(self.xb, b.add(channel, b.mul(src_line, self.c(row))))
                        self.copy(b.gep(dst, [self.c(before)], inbounds=True,
                                        source_etype=self.ty), src, row)
                        if after:
                            self.zero(b.gep(dst, [self.c(before + row)], inbounds=True,
                                            source_etype=self.ty), after)
                    with otherwise:
                        self.zero(dst, self.pitches[-1])
        return xpad

    # -- the result ---------------------------------------------------------------------------
    def copy_out(self, wide: ir.Value, r_lo: ir.Value, r_hi: ir.Value, base: ir.Value,
                 p_lo: ir.Value, p_hi: ir.Value, pitch: ir.Value) -> None:
        """out[no, y] = wide[no - r_lo, p'(y) - p_lo] + bias[no - base], then the fused
        epilogue, for the rows [r_lo, r_hi) and the output pixels whose wide column p'(y) lies
        in [p_lo, p_hi), line by line (one vectorised loop over each line's pixels: without
        the loop hints LLVM unrolled a short line and vectorised the loop over lines with
        gathers and scatters, 2.5x the time of W2's first convolution, whose GEMM is 9 deep)."""
        from graphnn.backends.llvm.codegen import for_range, vectorize_here

        b, em, nd, last = self.b, self.em, self.nd, self.osz[-1]
        epilogue = conv_epilogue(self.k)
        bias_buf = int(self.k.schedule[3])
        with for_range(b, r_hi, "no", start=r_lo) as no:
            em.vars["no"] = no
            bias = b.load(self.ptr(bias_buf, b.sub(no, base)), typ=self.ty) \
                if bias_buf >= 0 else ir.Constant(self.ty, 0.0)
            src_row = b.sub(b.mul(b.sub(no, r_lo), pitch), p_lo)
            with for_range(b, _prod(self.osz[:-1]), "line") as line:
                rest, w0 = line, self.c(0)  # w0: the line's first wide column
                for d in reversed(range(nd - 1)):
                    em.vars[f"y{d}"] = b.srem(rest, self.c(self.osz[d]))
                    rest = b.sdiv(rest, self.c(self.osz[d]))
                    w0 = b.add(w0, b.mul(em.vars[f"y{d}"], self.c(self.wide_strides[d])))
                x_lo = b.sub(p_lo, w0)
                x_lo = b.select(b.icmp_signed(">", x_lo, self.c(0)), x_lo, self.c(0))
                x_hi = self.min(b.sub(p_hi, w0), self.c(last))
                src = b.add(src_row, w0)
                dst = b.add(b.mul(no, self.c(self.pixels)), b.mul(line, self.c(last)))
                with for_range(b, x_hi, f"y{nd - 1}", x_lo, vectorize_here(em.module)) as x:
                    value = b.load(b.gep(wide, [b.add(src, x)], inbounds=True,
                                         source_etype=self.ty), typ=self.ty)
                    b.store(b.fadd(value, bias), self.ptr(self.o, b.add(dst, x)))
                    if epilogue is not None:
                        em.vars[f"y{nd - 1}"] = x
                        em.stmt(epilogue)


def conv_epilogue(kernel: Kernel) -> Stmt | None:
    """A conv or conv_transpose kernel's fused epilogue: the statement its loop nest runs per
    output pixel after the sum (with ``no`` and ``y0``, ``y1``, ... set), or None."""
    outer = kernel.body[0]
    assert isinstance(outer, Loop)
    planes = [s for s in outer.body if isinstance(s, Loop) and s.var == "y0"]
    return innermost(planes[1]) if len(planes) > 1 else None


# -- the weight gradient ---------------------------------------------------------------------


def weight_grad_shape(kernel: Kernel) -> Shape | None:
    """A conv_weight_grad kernel (x, dy -> dw) as the convolution whose weights it is the
    gradient of, or None for other kernels."""
    if kernel.schedule[:1] != ("conv_weight_grad",):
        return None
    x, dy, dw = kernel.params
    nd, groups = len(x.shape) - 2, int(kernel.schedule[3])
    stride, dil, pads = geometry(kernel.schedule, nd)
    return Shape(False, groups, x.shape[1] // groups, dw.shape[0] // groups, tuple(dw.shape[2:]),
                 stride, dil, tuple(x.shape[2:]), tuple(dy.shape[2:]), pads)


MIN_IMAGES = 4  # fewer images split too few ways: WeightGradGemm splits output channels


def weight_grad_applies(kernel: Kernel, bits: int = 128) -> bool:
    """A stride-1, one-group float conv_weight_grad of MIN_IMAGES images or more whose per-image
    GEMM (input channels x taps rows, output channels columns, pixels deep) is big enough for
    the template (``gemm_sized``)."""
    shape = weight_grad_shape(kernel)
    if shape is None or shape.groups != 1 or not shape.fits() or \
            kernel.params[0].shape[0] < MIN_IMAGES:
        return False
    return gemm_sized(kernel.params[-1].dtype, shape.cg * _prod(shape.taps), shape.og,
                      _prod(shape.out_sz), bits)


class ImplicitWeightGrad(ImplicitConvGemm):
    """conv_weight_grad with stride 1 as one GEMM per image over the padded input, no im2col:

        dW^T[(c, t), o] += sum over output pixels y of xpad[c, p'(y) + off(t)] * dy^T[y, o],

    the rows (c, t) read the (padded) input at each tap's constant offset, as the forward
    implicit GEMM's b operand does; the columns are the output channels, from this image's dy
    transposed pixel-major (og x pixels values: a 1/(cg * taps) share of the GEMM's reads) so a
    row of b is contiguous; the depth walks the output pixels line by line (``k_steps``). The
    images are the sum's outer index, so the threads split them: each accumulates a partial
    dW^T of its images in a buffer of its own, whose address it leaves in the workspace's slot
    of its first image (the rest of its range null); the wrapper adds the partials into dW,
    transposing, once every thread is done (``finish``), as the split-K GEMV does. Measured on
    W6 (2 threads, AVX-512 Xeon): see docs/llvm.md."""

    KNOBS = ("nc", "mr")  # the depth is blocked by output lines (LINES_PIXELS), not KC

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        shape = weight_grad_shape(kernel)
        assert shape is not None
        x, _, dw = kernel.params
        self.em, self.b, self.k = em, em.b, kernel
        self.geometry(shape)
        self.xb, self.o = 0, 2
        self.m, self.n, self.kk = self.cg * self.ntaps, self.og, self.pixels
        self.types(dw.dtype, bits)
        self.images = x.shape[0]
        self.lines = _prod(self.osz[:-1])  # output lines (all dims but the last)
        self.lines_per_block = max(1, LINES_PIXELS // self.osz[-1])
        self.src: ir.Value | None = None
        self.dyt: ir.Value | None = None

    @staticmethod
    def parallel_extent(kernel: Kernel, bits: int) -> int | None:
        return int(kernel.params[0].shape[0])  # the images

    @staticmethod
    def workspace(kernel: Kernel, bits: int) -> int:
        """One pointer per image (the threads' partials), in values of dw's dtype."""
        return int(kernel.params[0].shape[0]) * 8 // kernel.params[-1].dtype.np.itemsize

    # -- the depth: output pixels, line by line --------------------------------------------
    def k_blocks(self) -> int:
        return -(-self.lines // self.lines_per_block)

    def k_block(self, kc: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Block kc's output lines [l0, l1)."""
        return self.block(kc, self.lines_per_block, self.lines)

    def k_steps(self, l0: ir.Value, l1: ir.Value, step: Step) -> None:
        """k = output pixel (line, x): row (c, t) of a at xpad[c, p'(line, x) + off(t)], the
        column o of b at dy^T[pixel, o]."""
        from graphnn.backends.llvm.codegen import for_range

        b, last = self.b, self.osz[-1]
        assert self.src is not None and self.dyt is not None
        src, dyt, table = self.src, self.dyt, self.tap_table()
        with for_range(b, l1, "line", start=l0) as line:
            rest, w0 = line, self.c(0)  # the line's first wide column
            for d in reversed(range(self.nd - 1)):
                w0 = b.add(w0, b.mul(b.srem(rest, self.c(self.osz[d])),
                                     self.c(self.wide_strides[d])))
                rest = b.sdiv(rest, self.c(self.osz[d]))
            p0 = b.mul(line, self.c(last))
            with for_range(b, last, "px") as x:
                k = b.add(p0, x)
                wide = b.add(w0, x)

                def a_of(row: ir.Value, wide: ir.Value = wide) -> ir.Value:
                    c, t = b.sdiv(row, self.c(self.ntaps)), b.srem(row, self.c(self.ntaps))
                    off = b.load(b.gep(table, [self.c(0), t], inbounds=True), typ=I64)
                    at = b.add(b.add(b.mul(c, self.c(self.plane_size)), off), wide)
                    return b.gep(src, [at], inbounds=True, source_etype=self.ty)

                def b_of(col: ir.Value, k: ir.Value = k) -> ir.Value:
                    return b.gep(dyt, [self.at(k, col, self.og)], inbounds=True,
                                 source_etype=self.ty)

                step(k, a_of, b_of)

    # -- the threads' images, and the sum -------------------------------------------------
    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        lo, hi = bounds if bounds is not None else (self.c(0), self.c(self.images))
        with b.if_then(b.icmp_signed("<", lo, hi)):  # a thread past the last image: idle
            part = claim_partial(self, lo, hi, self.m * self.n)
            self.slots()
            self.dyt = self.malloc(self.pixels * self.og)
            xpad = self.padded_buffer()
            self.out_at = lambda row, col: b.gep(part, [self.at(row, col, self.n)],
                                                 inbounds=True, source_etype=self.ty)
            with for_range(b, hi, "img", start=lo) as img:
                self.transpose_dy(img)
                self.src = self.source(xpad, img, self.c(0), self.c(0),
                                       self.c(self.padded_lines()))
                full = self.c(self.m // self.mr * self.mr)
                self.rows(self.c(0), self.c(self.m), full, full, accumulate=True)
            self.free(self.dyt)
            if xpad is not None:
                self.free(xpad)
            self.release()

    def transpose_dy(self, img: ir.Value) -> None:
        """dy^T[p, o] = dy[img, o, p] in 8 x 8 register transposes (``transpose_rows``; done one
        value at a time, it had taken 0.4-0.7 ms of W6's 4.7 ms 32 -> 64-channel weight
        gradient)."""
        assert self.dyt is not None
        transpose_rows(self, 1, self.b.mul(img, self.c(self.og * self.pixels)), self.og,
                       self.pixels, self.dyt)

    def finish(self) -> None:
        """dw[o, q] = the sum over the threads' partials of partial[q, o] (in slot order)."""
        from graphnn.backends.llvm.codegen import for_range

        b, m, n = self.b, self.m, self.n
        self.zero(self.ptr(self.o, self.c(0)), m * n)

        def add(part: ir.Value) -> None:
            with for_range(b, n, "fo") as o:
                with for_range(b, m, "fq") as q:
                    dst = self.ptr(self.o, self.at(o, q, m))
                    value = b.load(b.gep(part, [self.at(q, o, n)], inbounds=True,
                                         source_etype=self.ty), typ=self.ty)
                    b.store(b.fadd(b.load(dst, typ=self.ty), value), dst)

        each_partial(self, 0, self.images, add)


def partial_slot(t: GemmEmitter, item: ir.Value) -> ir.Value:
    """The workspace's pointer slot of parallel item ``item`` (``claim_partial``)."""
    return t.b.gep(t.em.params[len(t.k.params)], [item], inbounds=True, source_etype=PTR)


def claim_partial(t: GemmEmitter, lo: ir.Value, hi: ir.Value, size: int) -> ir.Value:
    """A thread's zeroed partial sum of ``size`` values for its items [lo, hi): its address in
    the slot of item lo, null in the others, for the wrapper's ``finish`` to add up
    (``each_partial``; the weight-gradient templates split their sum over the threads so)."""
    from graphnn.backends.llvm.codegen import for_range

    b = t.b
    part = t.malloc(size)
    t.zero(part, size)
    b.store(part, partial_slot(t, lo))
    with for_range(b, hi, "slot", start=b.add(lo, t.c(1))) as s:
        b.store(ir.Constant(PTR, None), partial_slot(t, s))
    return part


def each_partial(t: GemmEmitter, start: int, items: int,
                 use: Callable[[ir.Value], None]) -> None:
    """``use(part)`` on each thread's partial in the slots [start, items), in slot order, then
    frees it."""
    from graphnn.backends.llvm.codegen import for_range

    b = t.b
    with for_range(b, items, "part", start=t.c(start)) as s:
        part = b.load(partial_slot(t, s), typ=PTR)
        with b.if_then(b.icmp_unsigned("!=", part, ir.Constant(PTR, None))):
            use(part)
            t.free(part)


def transpose_rows(t: GemmEmitter, buf: int, base: ir.Value, rows: int, cols: int,
                   dst: ir.Value, pitch: int | None = None) -> None:
    """dst[c * rows + r] = param ``buf``[base + r * pitch + c] for a rows x cols block (``pitch``
    defaults to ``cols``): 8 x 8
    blocks transposed in registers (``transpose8``), the edges past the last whole block one
    value at a time (a weight gradient's output gradient, pixel-major: ``ImplicitWeightGrad``,
    ``WinogradWeightGrad``)."""
    from graphnn.backends.llvm.codegen import for_range

    b = t.b
    vec8 = ir.VectorType(t.ty, 8)

    def src(r: ir.Value, c: ir.Value) -> ir.Value:
        return t.ptr(buf, b.add(base, t.at(r, c, cols if pitch is None else pitch)))

    def move(r: ir.Value, c: ir.Value) -> None:
        b.store(b.load(src(r, c), typ=t.ty),
                b.gep(dst, [t.at(c, r, rows)], inbounds=True, source_etype=t.ty))

    r8, c8 = rows // 8 * 8, cols // 8 * 8
    with for_range(b, r8 // 8, "to") as rb:
        r0 = b.mul(rb, t.c(8))
        with for_range(b, c8 // 8, "tp") as cb:
            c0 = b.mul(cb, t.c(8))
            lines = [b.load(src(b.add(r0, t.c(k)), c0), typ=vec8, align=t.align)
                     for k in range(8)]
            for k, column in enumerate(transpose8(b, lines)):
                b.store(column, b.gep(dst, [t.at(b.add(c0, t.c(k)), r0, rows)], inbounds=True,
                                      source_etype=t.ty), align=t.align)
        if c8 < cols:  # the columns past the last whole block
            with for_range(b, 8, "tr") as k:
                with for_range(b, cols, "tq", start=t.c(c8)) as c:
                    move(b.add(r0, k), c)
    if r8 < rows:  # the rows past the last whole block
        with for_range(b, rows, "tro", start=t.c(r8)) as r:
            with for_range(b, cols, "trp") as c:
                move(r, c)


def transpose8(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The 8 x 8 transpose of eight 8-lane vectors in three rounds of two-input shuffles
    (interleave pairs, then pairs of pairs, then halves: the unpack / shuffle / permute2f128
    sequence of the usual AVX 8 x 8 float transpose, written as generic ``shufflevector``s that
    LLVM lowers for the target)."""
    def shuffle(x: ir.Value, y: ir.Value, mask: list[int]) -> ir.Value:
        return b.shuffle_vector(x, y, ir.Constant(ir.VectorType(ir.IntType(32), 8), mask))

    lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = [shuffle(rows[i], rows[i + 1], m) for i in range(0, 8, 2) for m in (lo, hi)]
    # t[2k]: rows 2k, 2k+1 interleaved at elements 0,1 | 4,5; t[2k+1]: at 2,3 | 6,7
    even, odd = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    s = []
    for q in (0, 4):  # rows 0-3, then 4-7
        for src in (0, 1):
            a, c = t[q + src], t[q + src + 2]
            s += [shuffle(a, c, even), shuffle(a, c, odd)]
    # s[0..3]: rows 0-3 of columns (0|4), (1|5), (2|6), (3|7); s[4..7]: rows 4-7 of the same
    low, high = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return [shuffle(s[j], s[j + 4], low) for j in range(4)] + \
        [shuffle(s[j], s[j + 4], high) for j in range(4)]
