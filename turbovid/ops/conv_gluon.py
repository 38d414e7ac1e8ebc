"""The VAE's full-resolution 96 -> 96 causal conv on Hopper, in Gluon: warp-specialized, persistent,
each input row read once for the three vertical taps.

Same contract as causal_conv.launch for a 3x3x3 conv of 96 -> 96 channels: frames after two history
frames (each read where it lies), bias, and the fused epilogue (+ residual, the sum stored to x_out,
the next RMS norm + SiLU, the last two output frames again to history_out).

Why a second kernel: the Triton conv runs the 96-channel convs at ~540 TFLOP/s against 760-790 for
the 192 / 384-channel ones, and they are a third of the 480p decode. Its products are 64 + 32 wide,
and a wgmma that reads both operands from shared memory at that width is bound by the SM's
shared-memory bandwidth: a 16-deep slice of 64 input pixels (2 KiB) is read once for the 64-wide and
once for the 32-wide product, beside 3 KiB of weights, for 48 cycles of tensor-core work. Here:

- A program owns tiles of 6 output rows x 64 columns of one frame (all 96 outputs), persistent (one
  an SM). A loader warp streams each tile's 27 steps (dt, dw, 32-channel slice) through a ring of
  STAGES: one TMA box of the 8 input rows the 6 output rows need (rows and columns outside the
  image, and a missing history, read as zeros: the padding) and the three dh taps' weights.
- Two consumer warpgroups compute 3 output rows each. Each loads its 5 input rows from shared
  memory into registers once a step and multiplies each by up to three taps' weights (wgmma with
  its first operand in registers), so only the weights are read per product. A step waits for its
  own products (the registers of an in-flight product's operand must not be reused); the other
  warpgroup's keep the tensor cores busy meanwhile.
- The epilogue runs in the consumers' registers, one output row at a time.

benchmarks/explore_conv_ws.py measured the main loop's forms on an H100 (2026-11-27, 4 frames, plain
epilogue): 1.157 ms at 480p and 2.775 ms at 720p against the Triton kernel's 1.471 / 3.342 ms.

The kernel is compiled for sm_90 only (wgmma, setmaxnreg); Triton's interpreter does not run Gluon,
so CPU tests compile it offline (tests/test_offline_compile.py) and the GPU tests compare it with
the PyTorch reference (tests/test_vae_gpu.py).
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Optional

import torch

from turbovid.ops import gluon_switch

log = logging.getLogger(__name__)

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    # Triton 3.6 (the GPU image) names the TMA copies async_copy_*; later releases async_load / async_store
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
    # a barrier over the partition's warps: thread_barrier in 3.6, barrier in later releases
    _barrier = getattr(gl, "thread_barrier", None) or gl.barrier
except ImportError:  # pragma: no cover - Triton without Gluon (< 3.5)
    gluon = None

CHANNELS = 96
TILE_ROWS = 6  # output rows a tile: 3 a consumer warpgroup; the 8 input rows are one power-of-two box
TILE_COLS = 64  # output columns a tile: one m64 product a row
BLOCK_K = 32  # input channels a step
# 50 KiB a stage. With a residual (three staging rows a consumer: residual, sum, output; 72 KiB) 4
# stages do not fit; the plain and normed epilogues stage the output only (24 KiB) and take 4: the
# main loop's rows of benchmarks/explore_conv_ws.py (session 28) ran 1.157 / 2.775 ms on 4 stages
# against 1.170 / 2.841 on 3 (480p / 720p, 4 frames)
STAGES = 3
STAGES_PLAIN = 4
CONSUMER_REGS = 232  # the second consumer's registers (setmaxnreg); the loader takes 24
MAXNREG = 168  # 12 warps x 168 fill the register file at launch


def epilogue_buffers(residual: bool) -> int:
    """Staging rows a consumer: the residual, the sum and the output with a residual, else the output."""
    return 3 if residual else 1


def stages(residual: bool) -> int:
    return STAGES if residual else STAGES_PLAIN


def smem_bytes(residual: bool = False) -> int:
    """The ring (a stage: the 8 input rows and three taps' weights) and both consumers' epilogue
    buffers (output rows of 96 channels), bf16."""
    ring = stages(residual) * BLOCK_K * ((TILE_ROWS + 2) * TILE_COLS + 3 * CHANNELS)
    return (ring + 2 * epilogue_buffers(residual) * TILE_COLS * CHANNELS) * 2


if gluon is not None:
    _N1 = gl.constexpr(64)  # the 96 outputs as two power-of-two accumulators
    _N2 = gl.constexpr(32)

    @gluon.constexpr_function
    def _row_layout(n):
        """shared_layout(2, n), for the staging buffers."""
        return gl.NVMMASharedLayout(swizzle_byte_width=min(n * 2, 128), element_bitwidth=16, rank=2)

    @gluon.constexpr_function
    def _acc_layout(n):
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])

    @gluon.jit
    def _tile(t, H, W, R: gl.constexpr, BW: gl.constexpr):
        """(frame, first row, first column) of tile t: frames, then rows of tiles, then columns."""
        n_w = gl.cdiv(W, BW)
        n_h = gl.cdiv(H, R)
        return t // (n_h * n_w), (t // n_w) % n_h * R, (t % n_w) * BW

    @gluon.jit
    def _invalidate(ready, empty, rbars, STAGES: gl.constexpr):
        """The ring's barriers and the two consumers' residual barriers, once every partition is done
        (this kernel's and conv_gluon_coop's; conv_gluon_wide's has turn barriers between them)."""
        for st in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(st))
            mbarrier.invalidate(empty.index(st))
        for wg in gl.static_range(2):
            mbarrier.invalidate(rbars.index(wg))

    @gluon.jit
    def _tap_step(i, f, h0, w0, hslot, cslot, C: gl.constexpr, BK: gl.constexpr):
        """Step i of a tile of the wide kernels (conv_gluon_wide's, conv_gluon_coop's): 27 taps x C / BK
        channel slices, tap-major. Returns the input box's coordinates in the 5-D descriptor over
        [history; frames] (frame f + dt - 2 in its slot; rows h0 + dh - 1 .., columns w0 + dw - 1 ..)
        and the weights' column (tap * C + slice)."""
        tap = i // (C // BK)
        c0 = (i % (C // BK)) * BK
        dt = tap // 9
        hist = (f + dt < 2).to(gl.int32)
        slot = cslot + (hslot - cslot) * hist
        frame = f + dt - 2 * (1 - hist)
        return slot, frame, h0 + (tap // 3) % 3 - 1, w0 + tap % 3 - 1, c0, tap * C + c0

    @gluon.jit
    def _loader(xd, w1d, w2d, a_bufs, b1_bufs, b2_bufs, ready, empty, hslot, cslot, H, W, n_tiles,
                C: gl.constexpr, R: gl.constexpr, BW: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr):
        """Each step (dt, dw, slice) of this program's tiles into the next free stage: input frame
        f + dt of [history; frames] (its slot of the 5-D descriptor), rows h0 - 1 .. h0 + R, columns
        w0 + dw - 1 .. (zeros outside), and the three dh taps' weights."""
        NC: gl.constexpr = C // BK
        NBYTES: gl.constexpr = xd.block_type.nbytes + 3 * (w1d.block_type.nbytes + w2d.block_type.nbytes)
        g = 0
        for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            f, h0, w0 = _tile(t, H, W, R, BW)
            for i in range(9 * NC):
                dt = i // (3 * NC)
                dw = (i // NC) % 3
                c0 = (i % NC) * BK
                hist = (f + dt < 2).to(gl.int32)
                slot = cslot + (hslot - cslot) * hist
                frame = f + dt - 2 * (1 - hist)
                s = g % STAGES
                mbarrier.wait(empty.index(s), phase=((g // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
                bar = ready.index(s)
                mbarrier.expect(bar, NBYTES)
                _tma_load(xd, [slot, frame, h0 - 1, w0 + dw - 1, c0], bar, a_bufs.index(s).reshape(xd.block_type.shape))
                _load_taps(w1d, w2d, b1_bufs, b2_bufs, bar, s, dt, dw, c0, C)
                g += 1

    @gluon.jit
    def _load_taps(w1d, w2d, b1_bufs, b2_bufs, bar, s, dt, dw, c0, C: gl.constexpr):
        """The three dh taps' weights of step (dt, dw, channel slice c0) into slots 3 s .. 3 s + 2,
        completing on bar: rows (outputs) 0-63 and 64-95, columns (dt, dh, dw, c) of weight_k."""
        for dh in gl.static_range(3):
            k = (dt * 9 + dh * 3 + dw) * C + c0
            _tma_load(w1d, [0, k], bar, b1_bufs.index(3 * s + dh))
            _tma_load(w2d, [0, k], bar, b2_bufs.index(3 * s + dh))

    @gluon.jit
    def _operand(a_buf, q: gl.constexpr, BW: gl.constexpr, d1: gl.constexpr, d2: gl.constexpr):
        """Input row q of a stage in registers, in the operand layouts of both accumulators (the same
        registers: the layouts differ only in the product's width)."""
        a = a_buf.slice(q * BW, BW, dim=0).load(d1)
        return a, gl.convert_layout(a, d2)

    @gluon.jit
    def _mac(a, a2, b1_bufs, b2_bufs, s, dh: gl.constexpr, x, y):
        """x, y += input row a times tap dh's weights (64 and 32 outputs), asynchronously."""
        x = warpgroup_mma(a, b1_bufs.index(3 * s + dh).permute((1, 0)), x, is_async=True)
        y = warpgroup_mma(a2, b2_bufs.index(3 * s + dh).permute((1, 0)), y, is_async=True)
        return x, y

    @gluon.jit
    def _step(a_buf, b1_bufs, b2_bufs, s, x0, y0, x1, y1, x2, y2, q0: gl.constexpr, BW: gl.constexpr,
              d1: gl.constexpr, d2: gl.constexpr):
        """One step of output rows q0 .. q0 + 2: input row q0 + r feeds output row q0 + j at tap r - j.
        Waits for its products with the operands kept alive until then."""
        a0, c0 = _operand(a_buf, q0, BW, d1, d2)
        x0, y0 = _mac(a0, c0, b1_bufs, b2_bufs, s, 0, x0, y0)
        a1, c1 = _operand(a_buf, q0 + 1, BW, d1, d2)
        x0, y0 = _mac(a1, c1, b1_bufs, b2_bufs, s, 1, x0, y0)
        x1, y1 = _mac(a1, c1, b1_bufs, b2_bufs, s, 0, x1, y1)
        a2, c2 = _operand(a_buf, q0 + 2, BW, d1, d2)
        x0, y0 = _mac(a2, c2, b1_bufs, b2_bufs, s, 2, x0, y0)
        x1, y1 = _mac(a2, c2, b1_bufs, b2_bufs, s, 1, x1, y1)
        x2, y2 = _mac(a2, c2, b1_bufs, b2_bufs, s, 0, x2, y2)
        a3, c3 = _operand(a_buf, q0 + 3, BW, d1, d2)
        x1, y1 = _mac(a3, c3, b1_bufs, b2_bufs, s, 2, x1, y1)
        x2, y2 = _mac(a3, c3, b1_bufs, b2_bufs, s, 1, x2, y2)
        a4, c4 = _operand(a_buf, q0 + 4, BW, d1, d2)
        x2, y2 = _mac(a4, c4, b1_bufs, b2_bufs, s, 2, x2, y2)
        x0, y0, x1, y1, x2, y2, a0, a1, a2, a3, a4, c0, c1, c2, c3, c4 = warpgroup_mma_wait(
            num_outstanding=0, deps=(x0, y0, x1, y1, x2, y2, a0, a1, a2, a3, a4, c0, c1, c2, c3, c4))
        return x0, y0, x1, y1, x2, y2

    @gluon.jit
    def _load_residual(rd1, rd2, r1, r2, rbar, f, hh, w0):
        """The residual's output row hh (channels 0-63, 64-95) into r1, r2, completing on rbar."""
        mbarrier.expect(rbar, rd1.block_type.nbytes + rd2.block_type.nbytes)
        _tma_load(rd1, [f, hh, w0, 0], rbar, r1.reshape(rd1.block_type.shape))
        _tma_load(rd2, [f, hh, w0, _N1], rbar, r2.reshape(rd2.block_type.shape))

    @gluon.jit
    def _tma_out(v1, v2, s1, s2, d1, d2, f, hh, w0, PENDING: gl.constexpr):
        """v1, v2 (channels 0-63, 64-95 of one output row) through the staging buffers s1, s2 to d1 / d2
        at pixel (f, hh, w0); the descriptors drop what lies outside the tensor. Once at most PENDING
        stores are in flight (the newer ones, which read other buffers: the buffers' last stores have
        read them); the two stores are left in flight."""
        tma.store_wait(pendings=PENDING)  # the issuing thread waits; the barrier holds the others
        _barrier()
        s1.store(v1)
        s2.store(v2)
        fence_async_shared()
        _tma_store(d1, [f, hh, w0, 0], s1.reshape(d1.block_type.shape))
        _tma_store(d2, [f, hh, w0, _N1], s2.reshape(d2.block_type.shape))

    @gluon.jit
    def _epilogue(x, y, f, hh, w0, bufs, rbar, rphase, B, G, io, scale, hist_from, MORE: gl.constexpr,
                  HAS_BIAS: gl.constexpr, HAS_RES: gl.constexpr, WRITE_X: gl.constexpr, NORM: gl.constexpr,
                  SILU: gl.constexpr, HIST_OUT: gl.constexpr):
        """Output row hh, columns w0 .. w0 + 63: causal_conv's epilogue (store_normed / store_channels),
        every tensor through TMA (no per-element pointers in the registers). The residual row was
        loaded ahead into bufs' first pair; the next row's (MORE) is loaded here, during this row's
        stores. The sum and the output have staging buffers of their own, so a row's stores overlap
        the next row's work. Returns rbar's next phase."""
        yd1, yd2, rd1, rd2, xd1, xd2, hd1, hd2 = io
        r1, r2, sx1, sx2, sy1, sy2 = bufs
        dtype: gl.constexpr = yd1.dtype
        l1: gl.constexpr = x.type.layout
        l2: gl.constexpr = y.type.layout
        n1 = gl.arange(0, _N1, layout=gl.SliceLayout(0, l1))
        n2 = _N1 + gl.arange(0, _N2, layout=gl.SliceLayout(0, l2))
        if HAS_BIAS:
            x += gl.load(B + n1).to(gl.float32)[None, :]
            y += gl.load(B + n2).to(gl.float32)[None, :]
        if HAS_RES:
            mbarrier.wait(rbar, phase=rphase)
            rphase ^= 1
            # the sum rounded as the stored tensor is (the norm reads the rounded values)
            x = (x + r1.load(l1).to(gl.float32)).to(dtype).to(gl.float32)
            y = (y + r2.load(l2).to(gl.float32)).to(dtype).to(gl.float32)
            if MORE:
                _barrier()  # every thread has read this row's residual
                _load_residual(rd1, rd2, r1, r2, rbar, f, hh + 1, w0)
        elif WRITE_X:
            x = x.to(dtype).to(gl.float32)
            y = y.to(dtype).to(gl.float32)
        if WRITE_X:  # in flight, newer than the last row's sum: that row's output (2) and history (0 or 2)
            _tma_out(x.to(dtype), y.to(dtype), sx1, sx2, xd1, xd2, f, hh, w0, 2)
        if NORM:
            ss = gl.sum(x * x, axis=1) + gl.convert_layout(gl.sum(y * y, axis=1), gl.SliceLayout(1, l1))
            inv = scale / gl.maximum(gl.sqrt(ss), 1e-12)
            x = _silu_normed(x, n1, G, inv, SILU)
            y = _silu_normed(y, n2, G, gl.convert_layout(inv, gl.SliceLayout(1, l2)), SILU)
        # in flight, newer than the last row's output and history: this row's sum (2, with WRITE_X)
        _tma_out(x.to(dtype), y.to(dtype), sy1, sy2, yd1, yd2, f, hh, w0, 2 if WRITE_X else 0)
        if HIST_OUT:
            if f >= hist_from:  # the last two output frames, again, from the same staging buffers
                _tma_store(hd1, [f - hist_from, hh, w0, 0], sy1.reshape(hd1.block_type.shape))
                _tma_store(hd2, [f - hist_from, hh, w0, _N1], sy2.reshape(hd2.block_type.shape))
        return rphase

    @gluon.jit
    def _silu_normed(v, n, G, inv, SILU: gl.constexpr):
        v = v * inv[:, None] * gl.load(G + n).to(gl.float32)[None, :]
        if SILU:
            v = v * (1.0 / (1.0 + gl.exp(-v)))
        return v

    @gluon.jit
    def _consumer(a_bufs, b1_bufs, b2_bufs, ready, empty, bufs, rbar, B, G, io, H, W, n_tiles, scale, hist_from,
                  WG: gl.constexpr, C: gl.constexpr, R: gl.constexpr, BW: gl.constexpr, BK: gl.constexpr,
                  STAGES: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_RES: gl.constexpr, WRITE_X: gl.constexpr,
                  NORM: gl.constexpr, SILU: gl.constexpr, HIST_OUT: gl.constexpr):
        """Output rows 3 WG .. 3 WG + 2 of each of this program's tiles; bufs, rbar: this warpgroup's
        epilogue buffers (residual, sum, output: two channel blocks each) and residual barrier."""
        NS: gl.constexpr = 9 * (C // BK)
        l1: gl.constexpr = _acc_layout(_N1)
        l2: gl.constexpr = _acc_layout(_N2)
        d1: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=l1, k_width=2)
        d2: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=l2, k_width=2)
        q0: gl.constexpr = 3 * WG
        g = 0
        rphase = 0
        for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            f, h0, w0 = _tile(t, H, W, R, BW)
            if HAS_RES:  # the first row's residual arrives during the main loop
                _load_residual(io[2], io[3], bufs[0], bufs[1], rbar, f, h0 + q0, w0)
            x0 = gl.zeros([BW, _N1], gl.float32, layout=l1)
            x1 = gl.zeros([BW, _N1], gl.float32, layout=l1)
            x2 = gl.zeros([BW, _N1], gl.float32, layout=l1)
            y0 = gl.zeros([BW, _N2], gl.float32, layout=l2)
            y1 = gl.zeros([BW, _N2], gl.float32, layout=l2)
            y2 = gl.zeros([BW, _N2], gl.float32, layout=l2)
            for i in range(NS):
                s = g % STAGES
                mbarrier.wait(ready.index(s), phase=(g // STAGES) & 1)
                x0, y0, x1, y1, x2, y2 = _step(a_bufs.index(s), b1_bufs, b2_bufs, s, x0, y0, x1, y1, x2, y2, q0, BW,
                                               d1, d2)
                mbarrier.arrive(empty.index(s), count=1)  # this warpgroup's products that read it are done
                g += 1
            rphase = _epilogue(x0, y0, f, h0 + q0, w0, bufs, rbar, rphase, B, G, io, scale, hist_from, True,
                               HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU, HIST_OUT)
            rphase = _epilogue(x1, y1, f, h0 + q0 + 1, w0, bufs, rbar, rphase, B, G, io, scale, hist_from, True,
                               HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU, HIST_OUT)
            rphase = _epilogue(x2, y2, f, h0 + q0 + 2, w0, bufs, rbar, rphase, B, G, io, scale, hist_from, False,
                               HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU, HIST_OUT)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _epilogue_bufs(e1, e2, WG: gl.constexpr, EPI: gl.constexpr):
        """Consumer WG's (residual, sum, output) buffers, two channel blocks each: slots EPI WG ..
        EPI WG + 2 (EPI = 3), or one slot for all three (EPI = 1: only the output is staged)."""
        D: gl.constexpr = (EPI - 1) // 2
        return (e1.index(EPI * WG), e2.index(EPI * WG), e1.index(EPI * WG + D), e2.index(EPI * WG + D),
                e1.index(EPI * WG + 2 * D), e2.index(EPI * WG + 2 * D))

    # the slots depend on where the allocator put the two tensors, hist_from on the chunk: not
    # specialised (a value of 1 would compile a second kernel mid-decode)
    @gluon.jit(do_not_specialize=["hslot", "cslot", "hist_from"])
    def _conv96_kernel(xd, w1d, w2d, hslot, cslot, yd1, yd2, rd1, rd2, xd1, xd2, hd1, hd2, B, G, H, W, n_tiles,
                       scale, hist_from, C: gl.constexpr, STAGES: gl.constexpr, A_LAYOUT: gl.constexpr,
                       HAS_BIAS: gl.constexpr, HAS_RES: gl.constexpr, WRITE_X: gl.constexpr, NORM: gl.constexpr,
                       SILU: gl.constexpr, HIST_OUT: gl.constexpr, EPI: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                       num_warps: gl.constexpr):
        R: gl.constexpr = xd.block_type.shape[2] - 2
        BW: gl.constexpr = xd.block_type.shape[3]
        BK: gl.constexpr = xd.block_type.shape[4]
        gl.static_assert(R == 6, "6 output rows a tile: 3 for each of two consumer warpgroups")
        gl.static_assert(EPI == 3 or not (HAS_RES or WRITE_X), "a residual epilogue stages three rows")
        a_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, (R + 2) * BW, BK], A_LAYOUT)
        b1_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 3, _N1, BK], w1d.layout)
        b2_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 3, _N2, BK], w2d.layout)
        # each consumer's epilogue buffers, one output row's 64 + 32 channels each (_epilogue_bufs);
        # and its residual barrier
        e1 = gl.allocate_shared_memory(yd1.dtype, [2 * EPI, BW, _N1], _row_layout(_N1))
        e2 = gl.allocate_shared_memory(yd1.dtype, [2 * EPI, BW, _N2], _row_layout(_N2))
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        rbars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for st in gl.static_range(STAGES):
            mbarrier.init(ready.index(st), count=1)
            mbarrier.init(empty.index(st), count=2)  # one arrival from each consumer
        for wg in gl.static_range(2):
            mbarrier.init(rbars.index(wg), count=1)
        io = (yd1, yd2, rd1, rd2, xd1, xd2, hd1, hd2)
        gl.warp_specialize([
            (_consumer, (a_bufs, b1_bufs, b2_bufs, ready, empty, _epilogue_bufs(e1, e2, 0, EPI), rbars.index(0), B, G, io, H,
                         W, n_tiles, scale, hist_from, 0, C, R, BW, BK, STAGES, HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU,
                         HIST_OUT)),
            (_consumer, (a_bufs, b1_bufs, b2_bufs, ready, empty, _epilogue_bufs(e1, e2, 1, EPI), rbars.index(1), B, G, io, H,
                         W, n_tiles, scale, hist_from, 1, C, R, BW, BK, STAGES, HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU,
                         HIST_OUT)),
            (_loader, (xd, w1d, w2d, a_bufs, b1_bufs, b2_bufs, ready, empty, hslot, cslot, H, W, n_tiles, C, R, BW, BK,
                       STAGES)),
        ], [4, 1], [CONSUMER_REGS, 24])
        _invalidate(ready, empty, rbars, STAGES)


def shared_layout(rank: int, width: int = BLOCK_K):
    """A tile's shared-memory layout: `width` bf16 channels a row (32: the operands; 64 and 32: an
    output row's two channel blocks), swizzled."""
    return gl.NVMMASharedLayout(swizzle_byte_width=min(width * 2, 128), element_bitwidth=16, rank=rank)


def _descriptor(t: torch.Tensor, shape: list[int], strides: list[int], block: list[int], width: int = BLOCK_K):
    return GluonDescriptor(t, shape, strides, block, shared_layout(len(block), width))


def pack_weight(packed_weight: torch.Tensor, cout: int = CHANNELS) -> torch.Tensor:
    """causal_conv.PackedConv.weight [27 C, Cout (+ padding)] -> [Cout, 27 C]: each output's row of
    taps, K contiguous (the products' second operand, read transposed); every Gluon conv's."""
    return packed_weight[:, :cout].t().contiguous()


def runs_here(frames: torch.Tensor, what: str, smem: int, taps: tuple[int, int], offset: tuple[int, int],
              out: torch.Tensor) -> bool:
    """What every Gluon conv needs (this kernel's, conv_gluon_wide's, conv_gluon_coop's) beside its
    channel counts: Gluon on (TURBOVID_GLUON, logged once as `what`), an sm_90 GPU with `smem` bytes
    of shared memory a block, a 3x3x3 conv of bf16 frames, an output whose channels are contiguous."""
    if gluon is None or not gluon_switch.enabled(what, log):
        return False
    if not (frames.is_cuda and torch.cuda.get_device_capability(frames.device) == (9, 0)):
        return False
    if gluon_switch.smem_optin(frames.device) < smem + 1024:
        return False
    return (tuple(taps) == (3, 3) and tuple(offset) == (-1, -1) and frames.dtype == torch.bfloat16
            and out.stride(-1) == 1)


def available(frames: torch.Tensor, cin: int, cout: int, taps: tuple[int, int], offset: tuple[int, int],
              out: torch.Tensor, residual: bool = False) -> bool:
    """Whether this kernel runs the conv: Gluon, an sm_90 GPU, a 96 -> 96 3x3x3 conv of bf16 frames,
    an output whose channels are contiguous, no residual in the epilogue. TURBOVID_GLUON=0 turns it off.

    With a residual (the sum stored, then the next norm) the Triton kernel is faster: 1.76 against
    2.10 ms at a 480p chunk (benchmarks/explore_conv_ws.py, H100, 2026-11-27). Its two programs an SM
    overlap one's epilogue with the other's products; here both consumers finish a tile together
    and the tensor cores wait for the three rows' loads, norms and stores."""
    return (not residual and cin == CHANNELS and cout == CHANNELS
            and runs_here(frames, "VAE 96-channel conv", smem_bytes(residual), taps, offset, out))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch(frames: torch.Tensor, history: Optional[torch.Tensor], weight_k: torch.Tensor,
           bias: Optional[torch.Tensor], out: torch.Tensor, stream_descriptor: Callable, gamma=None,
           silu: bool = True, residual=None, x_out=None, history_out=None) -> torch.Tensor:
    """causal_conv.launch's conv and epilogue for checked arguments (available() true): frames
    [T, H, W, 96] after `history` ([2, H, W, 96] or None: zeros), weight_k from pack_weight, bias
    applied if given; out, residual, x_out and history_out are [*, H, W, 96] with contiguous channels.
    stream_descriptor(frames, history, box, make) builds the input's 5-D descriptor
    (causal_conv's, with this module's descriptor type)."""
    t, h, w, c = frames.shape
    xd, hslot, cslot = stream_descriptor(frames, history, [1, 1, TILE_ROWS + 2, TILE_COLS, BLOCK_K], _descriptor)
    w1d = _descriptor(weight_k, [CHANNELS, weight_k.shape[1]], list(weight_k.stride()), [64, BLOCK_K])
    w2d = _descriptor(weight_k[64:], [32, weight_k.shape[1]], list(weight_k.stride()), [32, BLOCK_K])
    io = []
    for x in (out, residual, x_out, history_out):  # two channel blocks of one output row each
        x = out if x is None else x
        io += [_descriptor(x, list(x.shape), list(x.stride()), [1, 1, TILE_COLS, n], n) for n in (64, 32)]
    n_tiles = t * -(-h // TILE_ROWS) * -(-w // TILE_COLS)
    res = residual is not None or x_out is not None
    _conv96_kernel[(min(n_tiles, _sm_count(frames.device)),)](
        xd, w1d, w2d, hslot, cslot, *io, out if bias is None else bias, out if gamma is None else gamma,
        h, w, n_tiles, float(CHANNELS) ** 0.5, t - 2,
        C=CHANNELS, STAGES=stages(res), A_LAYOUT=shared_layout(2), HAS_BIAS=bias is not None,
        HAS_RES=residual is not None, WRITE_X=x_out is not None, NORM=gamma is not None, SILU=silu,
        HIST_OUT=history_out is not None, EPI=epilogue_buffers(res), CONSUMER_REGS=CONSUMER_REGS, num_warps=4,
        maxnreg=MAXNREG)
    return out
