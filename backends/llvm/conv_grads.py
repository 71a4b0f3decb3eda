"""The convolution's two gradients (and the transposed-convolution layer) as the blocked GEMM of
``gemm.py``, so a CNN's training step runs natively instead of in numpy.

With ``cols`` the im2col matrix of an image and group (``ConvGemm``'s: row q = (input channel,
tap), column p = output pixel) and ``og`` output channels per group:

- ``WeightGradGemm``, ``conv_weight_grad``: dW[o, q] = sum over images and p of
  dy[n, o, p] * cols[q, p], i.e. dW += dy[n] (og x pixels) @ colsT (pixels x cg * taps) per image,
  with colsT built pixel-major so the GEMM's b operand is row-major. A thread owns output-channel
  rows and builds every image's colsT itself (the im2col costs 1/og of the GEMM).
- ``TransposedConvGemm``, ``conv_transpose`` (conv's input gradient): per image and group,
  cols (cog * taps x input pixels) = W^T @ x[n, g] (W^T is a strided a operand: the template
  loads a one scalar at a time), then col2im adds each tap's row into the output plane at
  z = i * stride + t * dilation - pad, over the static range of i that lands inside. A thread owns
  output (image, channel) planes, so no two threads write the same element. Bias and the fused
  epilogue plane run as in ``ConvGemm``.

Measured on W6's layers (2 cores, AVX-512, float32, batch 64): see docs/performance.md.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from graphnn.backends.kernel.ir import Kernel, Loop, Var, const_i, geometry
from graphnn.backends.llvm.conv_gemm import gemm_sized
from graphnn.backends.llvm.gemm import MIN_WORK, MR, GemmEmitter, _prod, _zero
from llvmlite import ir

from graphnn.dtypes import DType

if TYPE_CHECKING:
    from graphnn.backends.llvm.codegen import KernelEmitter


def weight_grad_applies(kernel: Kernel, bits: int = 128) -> bool:
    """Float conv_weight_grad whose GEMM has at least MR rows per group and MIN_WORK
    multiply-adds per image. Few columns (a first layer's 1 channel x 9 taps) are fine: they
    take one masked vector (measured: W6's 32x1x3x3 gradient 1 ms, numpy 9 ms)."""
    if kernel.schedule[:1] != ("conv_weight_grad",):
        return False
    x, dy, dw = kernel.params
    og, q = dw.shape[0] // int(kernel.schedule[3]), _prod(dw.shape[1:])
    return dw.dtype in (DType.float32, DType.float64) and og >= MR and \
        og * q * _prod(dy.shape[2:]) >= MIN_WORK


def transpose_applies(kernel: Kernel, bits: int = 128) -> bool:
    """Float conv_transpose whose per-group GEMM (cog * taps x input pixels, depth input
    channels per group) is big enough for the template."""
    if kernel.schedule[:1] != ("conv_transpose",):
        return False
    _, xb, wb, _, groups, *_ = kernel.schedule
    x, w = kernel.params[int(xb)], kernel.params[int(wb)]
    return gemm_sized(kernel.params[-1].dtype, _prod(w.shape[1:]), _prod(x.shape[2:]),
                      int(x.shape[1]) // int(groups), bits)


class WeightGradGemm(GemmEmitter):
    """conv_weight_grad as one GEMM per image and group (see the module docstring)."""

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        self.em, self.b, self.k = em, em.b, kernel
        x, dy, dw = kernel.params
        self.nd = len(x.shape) - 2
        self.groups = int(kernel.schedule[3])
        self.stride, self.dil, self.pads = geometry(kernel.schedule, self.nd)
        self.c_out, self.cg, self.taps = dw.shape[0], dw.shape[1], tuple(dw.shape[2:])
        self.og, self.ntaps = self.c_out // self.groups, _prod(self.taps)
        self.osz, self.pixels = tuple(dy.shape[2:]), _prod(dy.shape[2:])
        self.o = 2
        # GEMM: rows o, columns q = (c, tap), depth p (output pixels)
        self.m, self.n, self.kk = self.c_out, self.cg * self.ntaps, self.pixels
        self.types(dw.dtype, bits)

    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        lo, hi = bounds if bounds is not None else (self.c(0), self.c(self.c_out))
        with for_range(b, b.mul(hi, self.c(self.n)), "z", start=b.mul(lo, self.c(self.n))) as z:
            b.store(ir.Constant(self.ty, 0.0), self.ptr(self.o, z))
        self.slots()
        cols = self.malloc(self.pixels * self.n)
        batch = self.k.params[1].shape[0]
        with for_range(b, batch, "img") as img:
            self.em.vars["img"] = img
            with for_range(b, self.groups, "grp") as g:
                g_lo = b.mul(g, self.c(self.og))
                r_lo = self.clamp(lo, g_lo, b.add(g_lo, self.c(self.og)))
                r_hi = self.clamp(hi, g_lo, b.add(g_lo, self.c(self.og)))
                with b.if_then(b.icmp_signed("<", r_lo, r_hi)):
                    self.im2col_t(cols, g)
                    dy_row = b.mul(img, self.c(self.c_out))
                    self.a_at = lambda row, k: self.ptr(1, self.at(b.add(dy_row, row), k,
                                                                   self.pixels))
                    self.b_at = lambda k, col: b.gep(cols, [self.at(k, col, self.n)],
                                                     inbounds=True, source_etype=self.ty)
                    self.out_at = lambda row, col: self.ptr(self.o, self.at(row, col, self.n))
                    full = b.mul(b.sdiv(b.sub(r_hi, r_lo), self.c(self.mr)), self.c(self.mr))
                    self.rows(r_lo, r_hi, full, b.add(r_lo, full), accumulate=True)
        self.free(cols)
        self.release()

    def im2col_t(self, cols: ir.Value, g: ir.Value) -> None:
        """colsT[p * n + c * taps + t] = x[img, g * cg + c, p * stride + t * dil - pad]:
        pixel-major, so each pixel's row of the b operand is written contiguously."""
        from graphnn.backends.kernel.lower import _window_loads, window_reach
        from graphnn.backends.llvm.codegen import for_range

        b, em = self.b, self.em
        x = self.k.params[0]
        ys = [Var(f"yy{d}") for d in range(self.nd)]

        def pixels(d: int, flat: ir.Value) -> None:
            with for_range(b, self.osz[d], f"yy{d}") as y:
                em.vars[f"yy{d}"] = y
                at = b.add(b.mul(flat, self.c(self.osz[d])), y)
                if d + 1 < self.nd:
                    pixels(d + 1, at)
                    return
                with for_range(b, self.cg, "cc") as c:
                    em.vars["ch"] = b.add(b.mul(g, self.c(self.cg)), c)
                    row = b.add(b.mul(at, self.c(self.n)), b.mul(c, self.c(self.ntaps)))
                    for t_flat, taps in enumerate(itertools.product(*map(range, self.taps))):
                        value = _window_loads(x, 0, Var("img"), Var("ch"), list(ys),
                                              [const_i(t) for t in taps], self.stride, self.dil,
                                              self.pads, _zero(x.dtype), window_reach(
                                                  self.osz, [t + 1 for t in taps],
                                                  self.stride, self.dil))
                        b.store(em.expr(value), b.gep(cols, [b.add(row, self.c(t_flat))],
                                                      inbounds=True, source_etype=self.ty))

        pixels(0, self.c(0))


class TransposedConvGemm(GemmEmitter):
    """conv_transpose as one GEMM plus col2im per image and group (see the module docstring)."""

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        self.em, self.b, self.k = em, em.b, kernel
        _, xb, wb, bb, groups, *_ = kernel.schedule
        self.xb, self.wb, self.bb, self.groups = int(xb), int(wb), int(bb), int(groups)
        x, w, out = kernel.params[self.xb], kernel.params[self.wb], kernel.params[-1]
        self.nd = len(x.shape) - 2
        self.stride, self.dil, self.pads = geometry(kernel.schedule, self.nd)
        self.c_in, self.c_out = x.shape[1], out.shape[1]
        self.cpg, self.cog, self.taps = self.c_in // self.groups, w.shape[1], tuple(w.shape[2:])
        self.ntaps = _prod(self.taps)
        self.isz, self.osz = tuple(x.shape[2:]), tuple(out.shape[2:])
        self.pin, self.pout = _prod(self.isz), _prod(self.osz)
        self.o = len(kernel.params) - 1
        # GEMM: rows q = (output channel in group, tap), columns input pixels, depth channels
        self.m, self.n, self.kk = self.cog * self.ntaps, self.pin, self.cpg
        self.types(out.dtype, bits)

    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        outer = self.k.body[0]
        assert isinstance(outer, Loop)
        lo, hi = bounds if bounds is not None else (self.c(0), self.c(outer.extent))
        self.slots()
        cols = self.malloc(self.m * self.pin)
        def group(img: ir.Value, g: ir.Value, g_lo: ir.Value, r_lo: ir.Value,
                  r_hi: ir.Value) -> None:
            self.gemm(cols, img, g, b.sub(r_lo, g_lo), b.sub(r_hi, g_lo))
            self.col2im(cols, g_lo, r_lo, r_hi)

        self.group_planes(lo, hi, self.c_out, self.cog, self.groups, group)
        self.free(cols)
        self.release()
        if len(outer.body) > 1:  # the fused epilogue plane
            with for_range(b, hi, "no", start=lo) as no:
                self.em.vars["no"] = no
                self.em.stmt(outer.body[-1])

    def gemm(self, cols: ir.Value, img: ir.Value, g: ir.Value, co_lo: ir.Value,
             co_hi: ir.Value) -> None:
        """cols[q, i] = sum over c of w[g * cpg + c, q] * x[img, g * cpg + c, i] for the rows q
        of the output channels [co_lo, co_hi) of the group."""
        b = self.b
        ch0 = b.mul(g, self.c(self.cpg))
        x_row = b.add(b.mul(img, self.c(self.c_in)), ch0)
        self.a_at = lambda row, k: self.ptr(self.wb, self.at(b.add(ch0, k), row, self.m))
        self.b_at = lambda k, col: self.ptr(self.xb, self.at(b.add(x_row, k), col, self.pin))
        self.out_at = lambda row, col: b.gep(cols, [self.at(row, col, self.pin)], inbounds=True,
                                             source_etype=self.ty)
        q_lo, q_hi = b.mul(co_lo, self.c(self.ntaps)), b.mul(co_hi, self.c(self.ntaps))
        full = b.mul(b.sdiv(b.sub(q_hi, q_lo), self.c(self.mr)), self.c(self.mr))
        self.rows(q_lo, q_hi, full, b.add(q_lo, full), accumulate=False)

    def col2im(self, cols: ir.Value, g_lo: ir.Value, r_lo: ir.Value, r_hi: ir.Value) -> None:
        """out[no, z] = bias + sum over taps t and input pixels i with
        z = i * stride + t * dilation - pad of cols[(co * taps + t), i], for no in [r_lo, r_hi)."""
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        with for_range(b, r_hi, "no", start=r_lo) as no:
            plane = b.mul(no, self.c(self.pout))
            if self.bb >= 0:
                o = b.srem(no, self.c(self.c_out))
                init = b.load(self.ptr(self.bb, o), typ=self.ty)
            else:
                init = ir.Constant(self.ty, 0.0)
            with for_range(b, self.pout, "z") as z:
                b.store(init, self.ptr(self.o, b.add(plane, z)))
            co = b.sub(no, g_lo)
            for t_flat, taps in enumerate(itertools.product(*map(range, self.taps))):
                ranges = [self.tap_range(d, t) for d, t in enumerate(taps)]
                if any(hi <= lo for lo, hi in ranges):
                    continue
                row = b.mul(b.add(b.mul(co, self.c(self.ntaps)), self.c(t_flat)),
                            self.c(self.pin))
                self.scatter(0, ranges, taps, row, plane, self.c(0), self.c(0), cols)

    def tap_range(self, d: int, t: int) -> tuple[int, int]:
        """Input positions i whose output position i * stride + t * dil - pad is inside."""
        s, off = self.stride[d], t * self.dil[d] - self.pads[d]
        lo = max(0, -(off // s))  # ceil(-off / s)
        hi = min(self.isz[d], (self.osz[d] - 1 - off) // s + 1)
        return lo, max(lo, hi)

    def scatter(self, d: int, ranges: list[tuple[int, int]], taps: tuple[int, ...],
                row: ir.Value, plane: ir.Value, i_flat: ir.Value, z_flat: ir.Value,
                cols: ir.Value) -> None:
        from graphnn.backends.llvm.codegen import for_range, no_unroll, vectorize_here

        b = self.b
        lo, hi = ranges[d]
        off = taps[d] * self.dil[d] - self.pads[d]
        # a row of at least one vector gets loop hints: LLVM otherwise unrolls the plane's
        # constant-bound nest and vectorises it with gathers and scatters (W6's 24-wide rows:
        # 12.4 -> 8.0 ms); shorter rows did better that way (10 wide: 5.1 ms, 6.0 with hints)
        long_row = d + 1 == self.nd and hi - lo >= self.width
        hints = vectorize_here(self.em.module) if long_row else \
            no_unroll(self.em.module) if d + 1 < self.nd else None
        with for_range(b, self.c(hi), f"si{d}", start=self.c(lo), hints=hints) as i:
            z = b.add(b.mul(i, self.c(self.stride[d])), self.c(off))
            i_at = b.add(b.mul(i_flat, self.c(self.isz[d])), i)
            z_at = b.add(b.mul(z_flat, self.c(self.osz[d])), z)
            if d + 1 < self.nd:
                self.scatter(d + 1, ranges, taps, row, plane, i_at, z_at, cols)
                return
            src = b.load(b.gep(cols, [b.add(row, i_at)], inbounds=True, source_etype=self.ty),
                         typ=self.ty)
            dst = self.ptr(self.o, b.add(plane, z_at))
            b.store(b.fadd(b.load(dst, typ=self.ty), src), dst)
