"""The VAE's convs to 384 channels on Hopper (384 -> 384 and 192 -> 384), in Gluon: warp-specialized,
persistent, the two consumer warpgroups sharing each tile (cooperative).

Same contract as causal_conv.launch for a 3x3x3 conv to 384 channels: frames after two history
frames (each read where it lies), bias, and the fused epilogue (+ residual, the sum stored to x_out,
the next RMS norm + SiLU, the last two output frames again to history_out).

Why a third kernel: the Triton kernel runs these convs (~90 ms of the 480p decode) with their input
box passing through registers, which needs a wait for each step's products before the next step's
loads (the fence of causal_conv.fence_a), and with its epilogue under no other tile's products: 1.34
ms plain and 1.48 ms with the residual at a 4-frame 480p chunk (~540-590 TFLOP/s, against ~720 for
the 192-channel convs; profile of session 32). Here:

- A tile is 128 pixels of one frame (R rows x BW columns: tile_shape() picks the box that wastes
  least of the image), all 384 outputs. TMA reads each step's input box straight into the products'
  shared-memory operand (rows and columns outside the image, and a missing history, read as zeros:
  the padding).
- A loader warp streams each tile's 27 taps x C / 64 channel slices (the input box and the tap's
  384 x 64 weights: 64 KiB a stage) through a ring of 3 stages.
- Both consumer warpgroups read every stage: warpgroup w computes the tile's pixels 64 w .. 64 w + 63
  x 384 outputs (three 128-wide accumulators, 192 registers a thread). A 128 x 384 tile is all the
  accumulators the register file holds, and sharing it reads each stage's weights (three quarters
  of the stage) once for both. The 192-channel kernel's ping-pong (a tile a consumer) would read
  them once a 64-pixel tile.
- The epilogue runs in the consumer's registers, a 128-channel block at a time through one staging
  buffer and TMA stores. It leaves the tensor cores idle (both consumers reach it together), but a
  tile's main loop is 4x the 192-channel kernel's, and the loader fills the ring meanwhile.

The kernel is compiled for sm_90 only (wgmma, setmaxnreg); Triton's interpreter does not run Gluon,
so CPU tests compile it offline (tests/test_offline_compile.py) and the GPU tests compare it with
the PyTorch reference (tests/test_vae_gpu.py).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from turbovid.ops import conv_gluon
from turbovid.ops.conv_gluon import _sm_count, gluon  # gluon None: Triton without Gluon (< 3.5)

if gluon is not None:
    from turbovid.ops.conv_gluon import (
        _acc_layout, _barrier, _invalidate, _row_layout, _silu_normed, _tap_step, _tile, _tma_load, _tma_store,
        fence_async_shared, gl, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
    )

CHANNELS = 384  # outputs
INPUTS = (192, 384)  # input channels it takes
NB = 128  # outputs an accumulator (three a consumer)
PIXELS = 128  # a tile: 64 a consumer (one m64 product a block)
BLOCK_K = 64  # input channels a step
# 64 KiB a stage (a 128 x 64 input box, 384 x 64 weights) and one 64 x 128 staging buffer a
# consumer (16 KiB): 224 of the 227 KiB a block may take
STAGES = 3
CONSUMER_REGS = 240  # each consumer's registers (setmaxnreg); the loader's warpgroup takes 24
MAXNREG = 168  # 12 warps x 168 fill the register file at launch
TILE_WIDTHS = (32, 16, 8)  # columns a tile may span (the rows: 128 pixels / columns)


def smem_bytes() -> int:
    """The ring (a stage: the 128-pixel input box and the step's 384 x 64 weights) and both consumers'
    staging buffers, bf16."""
    return (STAGES * BLOCK_K * (PIXELS + CHANNELS) + 2 * 64 * NB) * 2


def tile_shape(h: int, w: int) -> tuple[int, int]:
    """(rows, columns) of the 128-pixel tile that covers an h x w frame with the fewest pixels outside
    it; the wider one on a tie (longer TMA rows). Rows are even: a consumer takes half of them."""
    def padded(cols: int) -> int:
        rows = PIXELS // cols
        return -(-h // rows) * rows * -(-w // cols) * cols
    cols = min(TILE_WIDTHS, key=lambda c: (padded(c), -c))
    return PIXELS // cols, cols


if gluon is not None:
    _NB = gl.constexpr(NB)

    @gluon.jit
    def _loader(xd, wd, a_bufs, b_bufs, ready, empty, hslot, cslot, H, W, n_tiles, C: gl.constexpr,
                R: gl.constexpr, BW: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr):
        """Each step (tap, slice) of this program's tiles into the next free stage: input frame f + dt of
        [history; frames] (its slot of the 5-D descriptor), rows h0 + dh - 1 .., columns w0 + dw - 1 ..
        (zeros outside), and the tap's weights for that slice as three 128-output blocks."""
        g = 0
        for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            f, h0, w0 = _tile(t, H, W, R, BW)
            for i in range(27 * (C // BK)):
                slot, frame, hh, ww, c0, k = _tap_step(i, f, h0, w0, hslot, cslot, C, BK)
                s = g % STAGES
                mbarrier.wait(empty.index(s), phase=((g // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
                bar = ready.index(s)
                # the stage's 64 KiB as two expects of 32 (the ready barrier counts both arrivals): the
                # form measured on the GPU (session 34); one expect of 64 KiB is within the barrier's
                # range but was not run once the hang it was suspected of had its real cause (launch())
                mbarrier.expect(bar, xd.block_type.nbytes + wd.block_type.nbytes)
                _tma_load(xd, [slot, frame, hh, ww, c0], bar, a_bufs.index(s).reshape(xd.block_type.shape))
                _tma_load(wd, [0, k], bar, b_bufs.index(3 * s))
                mbarrier.expect(bar, 2 * wd.block_type.nbytes)
                _tma_load(wd, [_NB, k], bar, b_bufs.index(3 * s + 1))
                _tma_load(wd, [2 * _NB, k], bar, b_bufs.index(3 * s + 2))
                g += 1

    @gluon.jit
    def _mainloop(a_bufs, b_bufs, ready, empty, g, WG: gl.constexpr, NS: gl.constexpr, STAGES: gl.constexpr):
        """One tile's NS steps from ring position g for this consumer's 64 pixels: each step's products
        left in flight while the next is issued; a stage is released (one of its two arrivals) once
        this consumer's products that read it are done."""
        acc: gl.constexpr = _acc_layout(_NB)
        x0 = gl.zeros([64, _NB], gl.float32, layout=acc)
        x1 = gl.zeros([64, _NB], gl.float32, layout=acc)
        x2 = gl.zeros([64, _NB], gl.float32, layout=acc)
        for i in range(NS):
            s = g % STAGES
            mbarrier.wait(ready.index(s), phase=(g // STAGES) & 1)
            a = a_bufs.index(s).slice(64 * WG, 64, dim=0)
            x0 = warpgroup_mma(a, b_bufs.index(3 * s).permute((1, 0)), x0, is_async=True)
            x1 = warpgroup_mma(a, b_bufs.index(3 * s + 1).permute((1, 0)), x1, is_async=True)
            x2 = warpgroup_mma(a, b_bufs.index(3 * s + 2).permute((1, 0)), x2, is_async=True)
            # the previous step's products are done: its stage is free of this consumer
            x0, x1, x2 = warpgroup_mma_wait(num_outstanding=3, deps=(x0, x1, x2))
            if i > 0:
                mbarrier.arrive(empty.index((g + STAGES - 1) % STAGES), count=1)
            g += 1
        x0, x1, x2 = warpgroup_mma_wait(num_outstanding=0, deps=(x0, x1, x2))
        mbarrier.arrive(empty.index((g + STAGES - 1) % STAGES), count=1)
        return x0, x1, x2, g

    @gluon.jit
    def _stage_out(v, buf, d, f, hh, w0, n0):
        """v (one 128-channel block of this consumer's pixels) through the staging buffer to d at pixel
        (f, hh, w0), channel n0, once the buffer's last stores have read it; the store is left in
        flight. The descriptor drops what lies outside the tensor."""
        tma.store_wait(pendings=0)  # the issuing thread waits; the barrier holds the others
        _barrier()
        buf.store(v)
        fence_async_shared()
        _tma_store(d, [f, hh, w0, n0], buf.reshape(d.block_type.shape))

    @gluon.jit
    def _block_in(v, n, n0, d, buf, rbar, rphase, B, f, hh, w0, HAS_BIAS: gl.constexpr, HAS_RES: gl.constexpr,
                  WRITE_X: gl.constexpr):
        """Output block v (channels n = n0 ..) + bias (+ the residual's block, read through the staging
        buffer; the sum rounded as the stored tensor is, and stored through it to x_out). A rounded
        sum is returned in the output's dtype: half the registers while the other blocks are formed."""
        yd, rd, xd, hd = d
        dtype: gl.constexpr = yd.dtype
        if HAS_BIAS:
            v += gl.load(B + n).to(gl.float32)[None, :]
        if HAS_RES:
            tma.store_wait(pendings=0)  # the buffer's last stores have read it
            _barrier()
            mbarrier.expect(rbar, rd.block_type.nbytes)
            _tma_load(rd, [f, hh, w0, n0], rbar, buf.reshape(rd.block_type.shape))
            mbarrier.wait(rbar, phase=rphase)
            rphase ^= 1
            v = (v + buf.load(v.type.layout).to(gl.float32)).to(dtype)
            _barrier()  # every thread has read the residual: the buffer takes the sum
        elif WRITE_X:
            v = v.to(dtype)
        if WRITE_X:
            _stage_out(v, buf, xd, f, hh, w0, n0)
        return v, rphase

    @gluon.jit
    def _block_out(v, n0, d, buf, f, hh, w0, hist_from, HIST_OUT: gl.constexpr):
        """The output's block at channel n0, and again to history_out for the last two frames."""
        yd, rd, xd, hd = d
        _stage_out(v.to(yd.dtype), buf, yd, f, hh, w0, n0)
        if HIST_OUT:
            if f >= hist_from:  # the last two output frames, again, from the same staging buffer
                _tma_store(hd, [f - hist_from, hh, w0, n0], buf.reshape(hd.block_type.shape))

    @gluon.jit
    def _squares(v):
        v = v.to(gl.float32)
        return gl.sum(v * v, axis=1)

    @gluon.jit
    def _epilogue(x0, x1, x2, f, hh, w0, buf, rbar, rphase, B, G, io, scale, hist_from, HAS_BIAS: gl.constexpr,
                  HAS_RES: gl.constexpr, WRITE_X: gl.constexpr, NORM: gl.constexpr, SILU: gl.constexpr,
                  HIST_OUT: gl.constexpr):
        """This consumer's R / 2 rows from hh, columns w0 .. w0 + BW - 1: causal_conv's epilogue
        (store_normed / store_channels), every tensor through TMA. Returns rbar's next phase."""
        n = gl.arange(0, _NB, layout=gl.SliceLayout(0, x0.type.layout))
        x0, rphase = _block_in(x0, n, 0, io, buf, rbar, rphase, B, f, hh, w0, HAS_BIAS, HAS_RES, WRITE_X)
        x1, rphase = _block_in(x1, n + _NB, _NB, io, buf, rbar, rphase, B, f, hh, w0, HAS_BIAS, HAS_RES, WRITE_X)
        x2, rphase = _block_in(x2, n + 2 * _NB, 2 * _NB, io, buf, rbar, rphase, B, f, hh, w0, HAS_BIAS, HAS_RES, WRITE_X)
        if NORM:  # each block normalised just before its store: one block's weights (gamma) live at a time
            inv = scale / gl.maximum(gl.sqrt(_squares(x0) + _squares(x1) + _squares(x2)), 1e-12)
            _block_out(_silu_normed(x0.to(gl.float32), n, G, inv, SILU), 0, io, buf, f, hh, w0, hist_from, HIST_OUT)
            _block_out(_silu_normed(x1.to(gl.float32), n + _NB, G, inv, SILU), _NB, io, buf, f, hh, w0, hist_from,
                       HIST_OUT)
            _block_out(_silu_normed(x2.to(gl.float32), n + 2 * _NB, G, inv, SILU), 2 * _NB, io, buf, f, hh, w0,
                       hist_from, HIST_OUT)
        else:
            _block_out(x0, 0, io, buf, f, hh, w0, hist_from, HIST_OUT)
            _block_out(x1, _NB, io, buf, f, hh, w0, hist_from, HIST_OUT)
            _block_out(x2, 2 * _NB, io, buf, f, hh, w0, hist_from, HIST_OUT)
        return rphase

    @gluon.jit
    def _consumer(a_bufs, b_bufs, ready, empty, buf, rbar, B, G, io, H, W, n_tiles, scale, hist_from,
                  WG: gl.constexpr, C: gl.constexpr, R: gl.constexpr, BW: gl.constexpr, BK: gl.constexpr,
                  STAGES: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_RES: gl.constexpr, WRITE_X: gl.constexpr,
                  NORM: gl.constexpr, SILU: gl.constexpr, HIST_OUT: gl.constexpr):
        """Rows R / 2 WG .. of each of this program's tiles. Both consumers read every stage, so their
        waits on a stage's barrier are never a whole ring apart (the loader refills a stage only
        once both have released it)."""
        NS: gl.constexpr = 27 * (C // BK)
        g = 0
        rphase = 0
        for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            f, h0, w0 = _tile(t, H, W, R, BW)
            x0, x1, x2, g = _mainloop(a_bufs, b_bufs, ready, empty, g, WG, NS, STAGES)
            rphase = _epilogue(x0, x1, x2, f, h0 + WG * (R // 2), w0, buf, rbar, rphase, B, G, io, scale, hist_from,
                               HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU, HIST_OUT)
        tma.store_wait(pendings=0)

    # the slots depend on where the allocator put the two tensors, hist_from on the chunk: not
    # specialised (a value of 1 would compile a second kernel mid-decode)
    @gluon.jit(do_not_specialize=["hslot", "cslot", "hist_from"])
    def _conv384_kernel(xd, wd, hslot, cslot, yd, rd, xod, hd, B, G, H, W, n_tiles, scale, hist_from,
                        C: gl.constexpr, STAGES: gl.constexpr, A_LAYOUT: gl.constexpr, HAS_BIAS: gl.constexpr,
                        HAS_RES: gl.constexpr, WRITE_X: gl.constexpr, NORM: gl.constexpr, SILU: gl.constexpr,
                        HIST_OUT: gl.constexpr, CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr):
        R: gl.constexpr = xd.block_type.shape[2]
        BW: gl.constexpr = xd.block_type.shape[3]
        BK: gl.constexpr = xd.block_type.shape[4]
        gl.static_assert(R * BW == 128, "128 pixels a tile: 64 a consumer")
        a_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, R * BW, BK], A_LAYOUT)
        b_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 3, _NB, BK], wd.layout)
        e = gl.allocate_shared_memory(yd.dtype, [2, 64, _NB], _row_layout(_NB))  # a staging buffer a consumer
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        rbars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for st in gl.static_range(STAGES):
            mbarrier.init(ready.index(st), count=2)  # the loader's two expects (_loader)
            mbarrier.init(empty.index(st), count=2)  # one arrival from each consumer
        for wg in gl.static_range(2):
            mbarrier.init(rbars.index(wg), count=1)
        io = (yd, rd, xod, hd)
        gl.warp_specialize([
            (_consumer, (a_bufs, b_bufs, ready, empty, e.index(0), rbars.index(0), B, G, io, H, W, n_tiles, scale,
                         hist_from, 0, C, R, BW, BK, STAGES, HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU, HIST_OUT)),
            (_consumer, (a_bufs, b_bufs, ready, empty, e.index(1), rbars.index(1), B, G, io, H, W, n_tiles, scale,
                         hist_from, 1, C, R, BW, BK, STAGES, HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU, HIST_OUT)),
            (_loader, (xd, wd, a_bufs, b_bufs, ready, empty, hslot, cslot, H, W, n_tiles, C, R, BW, BK, STAGES)),
        ], [4, 1], [CONSUMER_REGS, 24])
        _invalidate(ready, empty, rbars, STAGES)


def available(frames: torch.Tensor, cin: int, cout: int, taps: tuple[int, int], offset: tuple[int, int],
              out: torch.Tensor, residual: bool = False) -> bool:
    """Whether this kernel runs the conv: Gluon, an sm_90 GPU, a 192 or 384 -> 384 3x3x3 conv of bf16
    frames, an output whose channels are contiguous; with a residual in the epilogue only 384 -> 384.
    TURBOVID_GLUON=0 turns it off.

    The residual epilogue (three round trips through the staging buffer a tile) is where this kernel
    gains least: 384 -> 384 at a 4-frame 480p chunk 1.25 against the Triton kernel's 1.29-1.33 ms;
    192 -> 384 (no decode conv has it) 0.77 against 0.71-0.73, so that one stays on the Triton kernel
    (benchmarks/explore_conv384.py, H100, session 34)."""
    return (cin in INPUTS and cout == CHANNELS and not (residual and cin != CHANNELS)
            and conv_gluon.runs_here(frames, "VAE 384-channel conv", smem_bytes(), taps, offset, out))


def launch(frames: torch.Tensor, history: Optional[torch.Tensor], weight_k: torch.Tensor,
           bias: Optional[torch.Tensor], out: torch.Tensor, stream_descriptor: Callable, gamma=None,
           silu: bool = True, residual=None, x_out=None, history_out=None) -> torch.Tensor:
    """causal_conv.launch's conv and epilogue for checked arguments (available() true): frames
    [T, H, W, C] (C in INPUTS) after `history` ([2, H, W, C] or None: zeros), weight_k
    ([384, 27 C] from conv_gluon.pack_weight), bias applied if given; out, residual, x_out and
    history_out are [*, H, W, 384] with contiguous channels. stream_descriptor(frames, history, box,
    make) builds the input's 5-D descriptor (causal_conv's, with this module's descriptor type)."""
    t, h, w, c = frames.shape
    rows, cols = tile_shape(h, w)
    # the input box's rows are BLOCK_K channels (128 bytes), so its layout swizzles 128 bytes: with
    # conv_gluon's default (its 32-channel rows, 64 bytes) the loads never completed and the kernel hung
    xd, hslot, cslot = stream_descriptor(frames, history, [1, 1, rows, cols, BLOCK_K],
                                         functools.partial(conv_gluon._descriptor, width=BLOCK_K))
    wd = conv_gluon._descriptor(weight_k, [CHANNELS, weight_k.shape[1]], list(weight_k.stride()), [NB, BLOCK_K],
                                BLOCK_K)
    io = []
    for x in (out, residual, x_out, history_out):  # a consumer's rows, one 128-channel block
        x = out if x is None else x
        io.append(conv_gluon._descriptor(x, list(x.shape), list(x.stride()), [1, rows // 2, cols, NB], NB))
    n_tiles = t * -(-h // rows) * -(-w // cols)
    _conv384_kernel[(min(n_tiles, _sm_count(frames.device)),)](
        xd, wd, hslot, cslot, *io, out if bias is None else bias, out if gamma is None else gamma,
        h, w, n_tiles, float(CHANNELS) ** 0.5, t - 2,
        C=c, STAGES=STAGES, A_LAYOUT=conv_gluon.shared_layout(2, BLOCK_K), HAS_BIAS=bias is not None,
        HAS_RES=residual is not None, WRITE_X=x_out is not None, NORM=gamma is not None, SILU=silu,
        HIST_OUT=history_out is not None, CONSUMER_REGS=CONSUMER_REGS, num_warps=4, maxnreg=MAXNREG)
    return out
