"""The LLVM backend's forward convolution: im2col plus the blocked GEMM of ``gemm.py``, behind
the kernel IR's ``("conv", ...)`` schedule (``conv_kernel``'s loop nest, NCHW).

out[n, o, p] = bias[o] + sum over q = (c, taps) of w[o, q] * cols[q, p], where cols[q, p] is the
input pixel tap q reads for output pixel p (zero in the padding). Two ways to split the work
between threads:

- ``ConvGemm`` (batches): each thread owns (image, output channel) rows and builds, per image,
  the columns it needs in a buffer of its own;
- ``PixelConvGemm`` (one image): each thread owns a range of output pixels, all channels, and
  builds only those pixels' columns, so no thread repeats another's im2col (with rows split,
  both threads built all of a layer's columns: W3's 7x7 stem ran no faster on 2 threads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from graphnn.backends.kernel.ir import Kernel, Loop, geometry
from graphnn.backends.llvm.gemm import (
    MIN_WORK,
    MR,
    NR_TILE,
    GemmEmitter,
    _lanes,
    _prod,
    innermost,
)
from llvmlite import ir

from graphnn.dtypes import DType

if TYPE_CHECKING:
    from graphnn.backends.llvm.codegen import KernelEmitter


def applies(kernel: Kernel, bits: int = 128) -> bool:
    """Float convolutions whose per-group GEMM (out channels x in channels * taps x pixels) is
    big enough for the blocked template (``gemm_sized``)."""
    if kernel.schedule[:1] != ("conv",):
        return False
    out, w = kernel.params[-1], kernel.params[int(kernel.schedule[2])]
    return gemm_sized(out.dtype, out.shape[1] // int(kernel.schedule[4]), _prod(out.shape[2:]),
                      _prod(w.shape[1:]), bits)


def gemm_sized(dtype: DType, rows: int, pixels: int, depth: int, bits: int) -> bool:
    """A float convolution's per-group GEMM (rows output channels x depth, over pixels) is big
    enough for the blocked template: at least MR rows, NR pixels and MIN_WORK multiply-adds
    (measured: the digits CNN's 4x4-pixel convolution took 77 us per image as a GEMM whose 16
    columns all fell to the scalar edge path, 16 us direct)."""
    return dtype in (DType.float32, DType.float64) and rows >= MR and \
        pixels >= _lanes(dtype, bits) and rows * pixels * depth >= MIN_WORK


class ConvGemm(GemmEmitter):
    """Convolution as im2col + the blocked GEMM, per image and group (NCHW):
    out[n, o, p] = bias[o] + sum over q = (c, taps) of w[o, q] * cols[q, p], cols[q, p] = the
    input pixel tap q reads for output pixel p (zero in the padding). For the (image, channel)
    rows [lo, hi) a thread owns: the IR's bias plane initialises the rows, each image's columns
    are built in a buffer from malloc (one per call: threads do not share it), the GEMM adds
    onto the rows, then the IR's epilogue plane (if fused) runs over them."""

    def __init__(self, em: KernelEmitter, kernel: Kernel, bits: int) -> None:
        _, xb, wb, bb, groups, *_ = kernel.schedule
        self.xb, self.wb, self.groups = int(xb), int(wb), int(groups)
        x, w, out = kernel.params[self.xb], kernel.params[self.wb], kernel.params[-1]
        self.nd = len(x.shape) - 2
        self.stride, self.dil, self.pads = geometry(kernel.schedule, self.nd)
        self.c_out, self.cg, self.taps = out.shape[1], w.shape[1], tuple(w.shape[2:])
        self.og = self.c_out // self.groups
        self.osz = tuple(out.shape[2:])
        self.pixels, self.ntaps = _prod(self.osz), _prod(self.taps)
        self.em, self.b, self.k = em, em.b, kernel
        self.o = len(kernel.params) - 1
        self.m, self.n, self.kk = self.c_out, self.pixels, self.cg * self.ntaps
        self.types(out.dtype, bits)

    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        b = self.b
        lo, hi = bounds if bounds is not None else (self.c(0), self.c(self.k.body[0].extent))
        outer = self.k.body[0]
        assert isinstance(outer, Loop)
        planes = [s for s in outer.body if isinstance(s, Loop) and s.var == "y0"]
        self.plane(planes[0], lo, hi)  # out = bias (or 0)
        self.slots()
        cols = self.malloc(self.kk * self.pixels)

        def group(img: ir.Value, g: ir.Value, g_lo: ir.Value, r_lo: ir.Value,
                  r_hi: ir.Value) -> None:
            self.im2col(cols, img, g, self.c(0), self.c(self.pixels), self.c(self.pixels))
            # rows are absolute "no" = img * c_out + o; w's row is o
            base = b.mul(img, self.c(self.c_out))
            self.a_at = lambda row, k: self.ptr(self.wb, self.at(b.sub(row, base), k, self.kk))
            self.b_at = lambda k, col: b.gep(cols, [self.at(k, col, self.pixels)],
                                             inbounds=True, source_etype=self.ty)
            self.out_at = lambda row, col: self.ptr(self.o, self.at(row, col, self.pixels))
            full = b.mul(b.sdiv(b.sub(r_hi, r_lo), self.c(self.mr)), self.c(self.mr))
            self.rows(r_lo, r_hi, full, b.add(r_lo, full), accumulate=True)

        self.group_planes(lo, hi, self.c_out, self.og, self.groups, group)
        self.free(cols)
        self.release()
        if len(planes) > 1:  # the fused epilogue
            self.plane(planes[1], lo, hi)

    def plane(self, plane: Loop, lo: ir.Value, hi: ir.Value) -> None:
        """One of the conv nest's per-(image, channel) planes, for "no" in [lo, hi)."""
        from graphnn.backends.llvm.codegen import for_range

        with for_range(self.b, hi, "no", start=lo) as no:
            self.em.vars["no"] = no
            self.em.stmt(plane)

    def lines(self, p_lo: ir.Value, p_hi: ir.Value, body: Callable[..., None]) -> None:
        """For each line of the output (all dims but the last fixed) that meets [p_lo, p_hi):
        ``body(line, outer_coords, x_lo, x_hi)`` with the line's column range inside it."""
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        w_last = self.osz[-1]
        first = b.sdiv(p_lo, self.c(w_last))
        last = b.sdiv(b.add(p_hi, self.c(w_last - 1)), self.c(w_last))
        with for_range(b, last, "line", start=first) as line:
            base = b.mul(line, self.c(w_last))
            x_lo = b.select(b.icmp_signed(">", p_lo, base), b.sub(p_lo, base), self.c(0))
            x_hi = self.min(b.sub(p_hi, base), self.c(w_last))
            coords: list[ir.Value] = []
            rest = line
            for d in reversed(range(self.nd - 1)):
                coords.insert(0, b.srem(rest, self.c(self.osz[d])))
                rest = b.sdiv(rest, self.c(self.osz[d]))
            body(line, coords, x_lo, x_hi)

    def im2col(self, cols: ir.Value, img: ir.Value, g: ir.Value, p_lo: ir.Value,
               p_hi: ir.Value, width: ir.Value) -> None:
        """cols[q * width + p - p_lo] = x[img, g * cg + c, p * stride + t * dil - pad] for the
        group's rows q = (c, tap t) and the output pixels p in [p_lo, p_hi), zero in the
        padding. Per tap, the output positions whose input lies inside form a static box
        (``_tap_range``), so each output line is a strided copy of an input row (unit stride
        when the convolution's is 1, which LLVM vectorises) between zero-filled ends (measured:
        W3's 56x56 layers had spent most of their time in per-element bounds checks)."""
        import functools
        import itertools

        from graphnn.backends.kernel.lower import _tap_range
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        x = self.k.params[self.xb]
        in_sz = tuple(x.shape[2:])
        with for_range(b, self.cg, "cc") as c:
            ch = b.add(b.add(b.mul(img, self.c(x.shape[1])), b.mul(g, self.c(self.cg))), c)
            plane = b.mul(ch, self.c(_prod(in_sz)))
            for t_flat, taps in enumerate(itertools.product(*[range(t) for t in self.taps])):
                row = b.mul(b.add(b.mul(c, self.c(self.ntaps)), self.c(t_flat)), width)
                ranges = [_tap_range(t, in_sz[d], self.osz[d], self.stride[d], self.dil[d],
                                     self.pads[d]) for d, t in enumerate(taps)]
                self.lines(p_lo, p_hi, functools.partial(
                    self._im2col_line, cols, plane, row, p_lo, taps, ranges))

    def _im2col_line(self, cols: ir.Value, plane: ir.Value, row: ir.Value, p_lo: ir.Value,
                     taps: tuple[int, ...], ranges: list[tuple[int, int]], line: ir.Value,
                     coords: list[ir.Value], x_lo: ir.Value, x_hi: ir.Value) -> None:
        """One tap's row of cols over one output line's columns [x_lo, x_hi)."""
        from graphnn.backends.llvm.codegen import for_range, no_vectorize

        b = self.b
        in_sz = tuple(self.k.params[self.xb].shape[2:])
        dst0 = b.add(row, b.sub(b.mul(line, self.c(self.osz[-1])), p_lo))
        if any(lo > 0 or hi < self.osz[d] for d, (lo, hi) in enumerate(ranges)):
            self.zero(b.gep(cols, [b.add(dst0, x_lo)], inbounds=True, source_etype=self.ty),
                      b.sub(x_hi, x_lo))
        ok = ir.Constant(ir.IntType(1), 1)
        src = self.c(0)
        for d, y in enumerate(coords):  # the outer dims: is the tap inside the input?
            lo_d, hi_d = ranges[d]
            ok = b.and_(ok, b.and_(b.icmp_signed(">=", y, self.c(lo_d)),
                                   b.icmp_signed("<", y, self.c(hi_d))))
            pos = b.add(b.mul(y, self.c(self.stride[d])),
                        self.c(taps[d] * self.dil[d] - self.pads[d]))
            src = b.add(b.mul(src, self.c(in_sz[d])), pos)
        t_lo, t_hi = ranges[-1]
        start = b.select(b.icmp_signed(">", x_lo, self.c(t_lo)), x_lo, self.c(t_lo))
        with b.if_then(ok):
            base = b.add(plane, b.mul(src, self.c(in_sz[-1])))
            off = taps[-1] * self.dil[-1] - self.pads[-1]
            stop, hints = self.min(x_hi, self.c(t_hi)), None
            if self.stride[-1] == 2:  # vectors of the even columns (LLVM gathered them)
                start = self.even_columns(cols, dst0, b.add(base, self.c(off)), start, stop)
                hints = no_vectorize(self.em.module)  # the tail: less than a vector
            with for_range(b, stop, "xx", start, hints) as xx:
                at = b.add(base, b.add(b.mul(xx, self.c(self.stride[-1])), self.c(off)))
                b.store(b.load(self.ptr(self.xb, at), typ=self.ty),
                        b.gep(cols, [b.add(dst0, xx)], inbounds=True, source_etype=self.ty))

    def even_columns(self, cols: ir.Value, dst0: ir.Value, src0: ir.Value, start: ir.Value,
                     stop: ir.Value) -> ir.Value:
        """cols[dst0 + xx] = x[src0 + 2 xx] for whole vectors of xx from ``start``: two loads
        and a shuffle of the even lanes per vector (the odd value after the last even one
        masked off, so no read passes the row's last used column). Returns where the scalar
        tail starts."""
        from graphnn.backends.llvm.codegen import for_range

        b, width = self.b, self.width
        count = b.sdiv(b.sub(stop, start), self.c(width))
        count = b.select(b.icmp_signed(">", count, self.c(0)), count, self.c(0))  # none left
        with for_range(b, count, "xv") as v:
            xx = b.add(start, b.mul(v, self.c(width)))
            value = self.strided_load(self.xb, b.add(src0, b.mul(xx, self.c(2))), 2,
                                      2 * width - 1)
            self.store_vec(value, b.gep(cols, [b.add(dst0, xx)], inbounds=True,
                                        source_etype=self.ty), None)
        return b.add(start, b.mul(count, self.c(width)))

    def strided_load(self, buf: int, at: ir.Value, stride: int, avail: int) -> ir.Value:
        """The vector of params[buf][at + i * stride] for its lanes i: ``stride`` contiguous
        vector loads of which only the first ``avail`` values are read (the rest masked off, so
        no read passes a row's last used value), then shuffles picking every stride-th value
        (LLVM had made stride-2 reads gathers)."""
        b, width = self.b, self.width
        parts = [self.load_vec(self.ptr(buf, b.add(at, self.c(v * width))),
                               self.lane_mask([v * width + i < avail for i in range(width)]))
                 for v in range(stride)]
        if stride == 1:
            return parts[0]
        # lane i takes value i * stride of the concatenation: the first shuffle from the first
        # two vectors, each later one from the next vector where i * stride reaches into it
        out = b.shuffle_vector(parts[0], parts[1], self.lane_order(
            [i * stride if i * stride < 2 * width else 0 for i in range(width)]))
        for v in range(2, stride):
            out = b.shuffle_vector(out, parts[v], self.lane_order(
                [width + i * stride - v * width if v * width <= i * stride < (v + 1) * width
                 else i for i in range(width)]))
        return out

CHUNK_VALUES = 1 << 17  # a chunk's columns at most (512 KiB of float32), PixelConvGemm


def pixel_applies(kernel: Kernel, bits: int = 128) -> bool:
    """A convolution of one image the template takes (``applies``) where copying the columns
    costs about as much as the GEMM: fewer than 128 output channels per group (each copied
    value feeds og multiply-adds) and at least 8 blocks of pixels to share out (measured, 2
    threads: ResNet-18's 7x7 stem 3.3 -> 2.7 ms, its 64-channel 56x56 layers 2.0 -> 1.8 ms; a
    256-channel 14x14 layer 1.4 -> 1.6 ms, so that one keeps the row split)."""
    if not applies(kernel, bits) or kernel.params[-1].shape[0] != 1:
        return False
    og = kernel.params[-1].shape[1] // int(kernel.schedule[4])
    return og < 128 and _prod(kernel.params[-1].shape[2:]) >= 8 * NR_TILE


class PixelConvGemm(ConvGemm):
    """One image, the threads splitting its output pixels (see the module docstring): the
    parallel loop runs over blocks of NR_TILE pixels; a thread's block [p_lo, p_hi) gets its
    bias, its columns (a kk x width buffer) and the GEMM for every output channel, then the
    fused epilogue. Rows of the output (the last spatial dim) are walked as lines, so every
    inner loop is affine and vectorises."""

    @staticmethod
    def parallel_extent(kernel: Kernel, bits: int) -> int:
        """Iterations of the parallel loop: blocks of NR_TILE output pixels."""
        return -(-_prod(kernel.params[-1].shape[2:]) // NR_TILE)

    def emit(self, bounds: tuple[ir.Value, ir.Value] | None) -> None:
        from graphnn.backends.llvm.codegen import for_range

        b = self.b
        lo, hi = bounds if bounds is not None else (
            self.c(0), self.c(self.parallel_extent(self.k, 0)))
        p_lo = self.min(b.mul(lo, self.c(NR_TILE)), self.c(self.pixels))
        p_hi = self.min(b.mul(hi, self.c(NR_TILE)), self.c(self.pixels))
        outer = self.k.body[0]
        assert isinstance(outer, Loop)
        planes = [s for s in outer.body if isinstance(s, Loop) and s.var == "y0"]
        self.slots()
        # the thread's pixels in chunks whose columns (kk x chunk) stay in L2: a whole half of
        # ResNet-18's 7x7 stem (147 x 6272 values, 3.7 MB) went out to memory and back
        chunk = max(NR_TILE, CHUNK_VALUES // self.kk // NR_TILE * NR_TILE)
        cols = self.malloc(chunk * self.kk)
        whole = (self.pixels // self.nr) * self.nr
        count = b.sdiv(b.add(b.sub(p_hi, p_lo), self.c(chunk - 1)), self.c(chunk))
        with for_range(b, count, "chunk") as ci:
            q_lo = b.add(p_lo, b.mul(ci, self.c(chunk)))
            q_hi = self.min(b.add(q_lo, self.c(chunk)), p_hi)
            width = b.sub(q_hi, q_lo)
            self.over_pixels(planes[0], q_lo, q_hi)  # out = bias (or 0)
            j_end = self.min(q_hi, self.c(whole))
            for g in range(self.groups):
                self.im2col(cols, self.c(0), self.c(g), q_lo, q_hi, width)
                self.a_at = lambda row, k: self.ptr(self.wb, self.at(row, k, self.kk))
                self.b_at = lambda k, col: b.gep(
                    cols, [b.add(b.mul(k, width), b.sub(col, q_lo))], inbounds=True,
                    source_etype=self.ty)
                self.out_at = lambda row, col: self.ptr(self.o, self.at(row, col, self.pixels))
                r_lo, r_hi = self.c(g * self.og), self.c((g + 1) * self.og)
                full = self.c(self.og // self.mr * self.mr)
                self.rows(r_lo, r_hi, full, b.add(r_lo, full), accumulate=True,
                          cols=(q_lo, b.select(b.icmp_signed("<", q_lo, j_end), j_end, q_lo)),
                          edges=b.icmp_signed("==", q_hi, self.c(self.pixels)))
            if len(planes) > 1:  # the fused epilogue
                self.over_pixels(planes[1], q_lo, q_hi)
        self.free(cols)
        self.release()

    def over_pixels(self, plane: Loop, p_lo: ir.Value, p_hi: ir.Value) -> None:
        """One of the conv nest's planes (its innermost statement) for every output channel,
        over the pixels [p_lo, p_hi) only."""
        from graphnn.backends.llvm.codegen import for_range

        stmt = innermost(plane)
        em = self.em
        with for_range(self.b, self.c_out, "o") as o:
            em.vars["no"] = o  # one image: no = o

            def body(line: ir.Value, coords: list[ir.Value], x_lo: ir.Value,
                     x_hi: ir.Value) -> None:
                for d, v in enumerate(coords):
                    em.vars[f"y{d}"] = v
                with for_range(self.b, x_hi, f"y{self.nd - 1}", start=x_lo) as x:
                    em.vars[f"y{self.nd - 1}"] = x
                    em.stmt(stmt)

            self.lines(p_lo, p_hi, body)
