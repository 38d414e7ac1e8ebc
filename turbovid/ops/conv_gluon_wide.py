"""The VAE's 192 -> 192 causal convs on Hopper, in Gluon: warp-specialized, persistent, the two
consumer warpgroups on tiles of their own (ping-pong), so one's epilogue runs under the other's
products.

Same contract as causal_conv.launch for a 3x3x3 conv of 192 -> 192 channels: frames after two
history frames (each read where it lies), bias, and the fused epilogue (+ residual, the sum stored
to x_out, the next RMS norm + SiLU, the last two output frames again to history_out).

Why a second kernel: the Triton kernel runs these convs (148 ms of the 480p decode) with one program
an SM (its 3 stages of 40 KiB), so the epilogue leaves the tensor cores idle: an 8-frame 480p chunk
took 2.17 ms plain, 2.34 with the next norm and 2.68 with the residual sum too (profile of session
32). Here (benchmarks/explore_conv192_ws.py, H100, 2026-11-28; ms, plain / normed / residual, the
Triton kernel before and after in the same process): 2.01 / 2.17 / 2.50 against 2.16-2.39 /
2.35-2.42 / 2.65-2.72 at an 8-frame 480p chunk, 2.32 / 2.69 / 2.85 against 2.91-3.12 / 3.14-3.19 /
3.72-3.73 at a 4-frame 720p one; the same bf16 outputs as the Triton kernel's. Here:

- A tile is 4 image rows x 32 columns of one frame (128 pixels, all 192 outputs), whose box TMA
  reads straight into the operand's shared-memory layout (rows and columns outside the image, and a
  missing history, read as zeros: the padding); the products read it from shared memory (no register
  operand, so no wait for a step's products before the next step's loads).
- A loader warp streams each tile's 81 steps (27 taps x three 64-channel slices: the input box and
  the tap's weights) through a ring of stages, in tile order.
- Consumer warpgroup w takes this program's tiles w, w + 2, ...: it computes a tile's 128 x 192
  outputs (two 64-pixel halves x (128 + 64) outputs, 192 accumulator registers a thread) while the
  other warpgroup stores its last tile. The ring's order keeps the two out of step: a warpgroup's
  next tile's stages come after the other's.
- The epilogue runs in the consumer's registers, one 64-pixel half at a time, through staging
  buffers and TMA stores.

The kernel is compiled for sm_90 only (wgmma, setmaxnreg); Triton's interpreter does not run Gluon,
so CPU tests compile it offline (tests/test_offline_compile.py) and the GPU tests compare it with
the PyTorch reference (tests/test_vae_gpu.py).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from turbovid.ops import conv_gluon
from turbovid.ops.conv_gluon import _sm_count

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
    )

    from turbovid.ops.conv_gluon import (_acc_layout, _barrier, _row_layout, _silu_normed, _tap_step, _tile, _tma_load,
                                         _tma_store)
except ImportError:  # pragma: no cover - Triton without Gluon (< 3.5)
    gluon = None

CHANNELS = 192
N1, N2 = 128, 64  # the 192 outputs as two power-of-two accumulators
TILE_ROWS = 4  # a tile: 4 rows x 32 columns = 128 pixels, two halves of 2 rows (one m64 product each)
TILE_COLS = 32
BLOCK_K = 64  # input channels a step
# 40 KiB a stage (a 128 x 64 input box, 192 x 64 weights) and a half's 64 pixels x 192 channels
# staged a consumer (24 KiB; with a residual: the residual, the sum and the output in turn) leave
# room for 4 stages. The ring's depth is what the products wait on (benchmarks/explore_conv192_ws.py,
# H100, 2026-11-28, an 8-frame 480p chunk: 3 stages 2.47 / 2.64 / 2.94 ms against 4 stages' 2.14 /
# 2.27 / 2.54, plain / normed / residual); 5 stages with the epilogue read and written from the
# registers instead of staged were slower again (2.30 / 2.43 / 2.70 against 2.01 / 2.17 / 2.50).
STAGES = 4
CONSUMER_REGS = 240  # each consumer's registers (setmaxnreg); the loader's warpgroup takes 24
MAXNREG = 168  # 12 warps x 168 fill the register file at launch


def smem_bytes() -> int:
    """The ring (a stage: the 128-pixel input box and the step's 192 x 64 weights) and both consumers'
    staging buffers, bf16."""
    return (STAGES * BLOCK_K * (TILE_ROWS * TILE_COLS + CHANNELS) + 2 * 64 * CHANNELS) * 2


if gluon is not None:
    _N1 = gl.constexpr(N1)
    _N2 = gl.constexpr(N2)

    @gluon.jit
    def _loader(xd, w1d, w2d, a_bufs, b1_bufs, b2_bufs, ready, empty, hslot, cslot, H, W, n_tiles,
                C: gl.constexpr, R: gl.constexpr, BW: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr):
        """Each step (tap, slice) of this program's tiles into the next free stage: input frame f + dt of
        [history; frames] (its slot of the 5-D descriptor), rows h0 + dh - 1 .., columns w0 + dw - 1 ..
        (zeros outside), and the tap's weights for that slice."""
        NBYTES: gl.constexpr = xd.block_type.nbytes + w1d.block_type.nbytes + w2d.block_type.nbytes
        g = 0
        for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            f, h0, w0 = _tile(t, H, W, R, BW)
            for i in range(27 * (C // BK)):
                slot, frame, hh, ww, c0, k = _tap_step(i, f, h0, w0, hslot, cslot, C, BK)
                s = g % STAGES
                mbarrier.wait(empty.index(s), phase=((g // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
                bar = ready.index(s)
                mbarrier.expect(bar, NBYTES)
                _tma_load(xd, [slot, frame, hh, ww, c0], bar, a_bufs.index(s).reshape(xd.block_type.shape))
                _tma_load(w1d, [0, k], bar, b1_bufs.index(s))
                _tma_load(w2d, [0, k], bar, b2_bufs.index(s))
                g += 1

    @gluon.jit
    def _mainloop(a_bufs, b1_bufs, b2_bufs, ready, empty, turn_next, g, NS: gl.constexpr, STAGES: gl.constexpr):
        """One tile's NS steps from ring position g: the two halves' products, each step's left in
        flight while the next is issued; a stage is released once its products are done. Once its
        last stage has arrived, the other consumer's turn (turn_next) begins."""
        l1: gl.constexpr = _acc_layout(_N1)
        l2: gl.constexpr = _acc_layout(_N2)
        x0 = gl.zeros([64, _N1], gl.float32, layout=l1)
        y0 = gl.zeros([64, _N2], gl.float32, layout=l2)
        x1 = gl.zeros([64, _N1], gl.float32, layout=l1)
        y1 = gl.zeros([64, _N2], gl.float32, layout=l2)
        for i in range(NS):
            s = g % STAGES
            mbarrier.wait(ready.index(s), phase=(g // STAGES) & 1)
            a = a_bufs.index(s)
            b1 = b1_bufs.index(s).permute((1, 0))
            b2 = b2_bufs.index(s).permute((1, 0))
            x0 = warpgroup_mma(a.slice(0, 64, dim=0), b1, x0, is_async=True)
            y0 = warpgroup_mma(a.slice(0, 64, dim=0), b2, y0, is_async=True)
            x1 = warpgroup_mma(a.slice(64, 64, dim=0), b1, x1, is_async=True)
            y1 = warpgroup_mma(a.slice(64, 64, dim=0), b2, y1, is_async=True)
            # the previous step's products are done: its stage is free
            x0, y0, x1, y1 = warpgroup_mma_wait(num_outstanding=4, deps=(x0, y0, x1, y1))
            if i > 0:
                mbarrier.arrive(empty.index((g + STAGES - 1) % STAGES), count=1)
            g += 1
        mbarrier.arrive(turn_next, count=1)
        x0, y0, x1, y1 = warpgroup_mma_wait(num_outstanding=0, deps=(x0, y0, x1, y1))
        mbarrier.arrive(empty.index((g + STAGES - 1) % STAGES), count=1)
        return x0, y0, x1, y1, g

    @gluon.jit
    def _store(v1, v2, s1, s2, d1, d2, f, hh, w0):
        """v1, v2 (channels 0-127, 128-191 of a half) through the staging buffers s1, s2 to d1 / d2 at
        pixel (f, hh, w0); the descriptors drop what lies outside the tensor."""
        s1.store(v1)
        s2.store(v2)
        fence_async_shared()
        _tma_store(d1, [f, hh, w0, 0], s1.reshape(d1.block_type.shape))
        _tma_store(d2, [f, hh, w0, _N1], s2.reshape(d2.block_type.shape))

    @gluon.jit
    def _epilogue(x, y, f, hh, w0, bufs, rbar, rphase, B, G, io, scale, hist_from, HAS_BIAS: gl.constexpr,
                  HAS_RES: gl.constexpr, WRITE_X: gl.constexpr, NORM: gl.constexpr, SILU: gl.constexpr,
                  HIST_OUT: gl.constexpr):
        """Rows hh, hh + 1 x columns w0 .. w0 + 31 (one half): causal_conv's epilogue (store_normed /
        store_channels), every tensor through TMA. Waits for this consumer's earlier stores before
        reusing their buffers (the other consumer's products run meanwhile). Returns rbar's next
        phase."""
        yd1, yd2, rd1, rd2, xd1, xd2, hd1, hd2 = io
        o1, o2 = bufs  # the residual, the sum and the output in turn
        dtype: gl.constexpr = yd1.dtype
        l1: gl.constexpr = x.type.layout
        l2: gl.constexpr = y.type.layout
        n1 = gl.arange(0, _N1, layout=gl.SliceLayout(0, l1))
        n2 = _N1 + gl.arange(0, _N2, layout=gl.SliceLayout(0, l2))
        tma.store_wait(pendings=0)  # the issuing thread waits; the barrier holds the others
        _barrier()
        if HAS_RES:
            mbarrier.expect(rbar, rd1.block_type.nbytes + rd2.block_type.nbytes)
            _tma_load(rd1, [f, hh, w0, 0], rbar, o1.reshape(rd1.block_type.shape))
            _tma_load(rd2, [f, hh, w0, _N1], rbar, o2.reshape(rd2.block_type.shape))
        if HAS_BIAS:
            x += gl.load(B + n1).to(gl.float32)[None, :]
            y += gl.load(B + n2).to(gl.float32)[None, :]
        if HAS_RES:
            mbarrier.wait(rbar, phase=rphase)
            rphase ^= 1
            # the sum rounded as the stored tensor is (the norm reads the rounded values)
            x = (x + o1.load(l1).to(gl.float32)).to(dtype).to(gl.float32)
            y = (y + o2.load(l2).to(gl.float32)).to(dtype).to(gl.float32)
            _barrier()  # every thread has read the residual: its buffers take the sum
        elif WRITE_X:
            x = x.to(dtype).to(gl.float32)
            y = y.to(dtype).to(gl.float32)
        if WRITE_X:
            _store(x.to(dtype), y.to(dtype), o1, o2, xd1, xd2, f, hh, w0)
            tma.store_wait(pendings=0)  # the sum's stores read the buffers the output goes to next
            _barrier()
        if NORM:
            ss = gl.sum(x * x, axis=1) + gl.convert_layout(gl.sum(y * y, axis=1), gl.SliceLayout(1, l1))
            inv = scale / gl.maximum(gl.sqrt(ss), 1e-12)
            x = _silu_normed(x, n1, G, inv, SILU)
            y = _silu_normed(y, n2, G, gl.convert_layout(inv, gl.SliceLayout(1, l2)), SILU)
        _store(x.to(dtype), y.to(dtype), o1, o2, yd1, yd2, f, hh, w0)
        if HIST_OUT:
            if f >= hist_from:  # the last two output frames, again, from the same staging buffers
                _tma_store(hd1, [f - hist_from, hh, w0, 0], o1.reshape(hd1.block_type.shape))
                _tma_store(hd2, [f - hist_from, hh, w0, _N1], o2.reshape(hd2.block_type.shape))
        return rphase

    @gluon.jit
    def _consumer(a_bufs, b1_bufs, b2_bufs, ready, empty, turns, bufs, rbar, B, G, io, H, W, n_tiles, scale,
                  hist_from,
                  WG: gl.constexpr, C: gl.constexpr, R: gl.constexpr, BW: gl.constexpr, BK: gl.constexpr,
                  STAGES: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_RES: gl.constexpr, WRITE_X: gl.constexpr,
                  NORM: gl.constexpr, SILU: gl.constexpr, HIST_OUT: gl.constexpr):
        """Tiles WG, WG + 2, ... of this program's; the other consumer's steps are skipped in the ring.

        A stage's barriers tell phases apart by parity only, so a consumer must not wait for its
        tile's stages before the other has received all of its own: it waits for its turn (turns
        WG; the first tile of consumer 0 passes: a fresh barrier passes parity 1)."""
        NS: gl.constexpr = 27 * (C // BK)
        g = 0
        j = 0
        k = 0  # this consumer's tiles so far
        rphase = 0
        for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            if j % 2 == WG:
                f, h0, w0 = _tile(t, H, W, R, BW)
                mbarrier.wait(turns.index(WG), phase=(k & 1) ^ (1 - WG))
                x0, y0, x1, y1, g = _mainloop(a_bufs, b1_bufs, b2_bufs, ready, empty, turns.index(1 - WG), g, NS,
                                              STAGES)
                k += 1
                rphase = _epilogue(x0, y0, f, h0, w0, bufs, rbar, rphase, B, G, io, scale, hist_from,
                                   HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU, HIST_OUT)
                rphase = _epilogue(x1, y1, f, h0 + R // 2, w0, bufs, rbar, rphase, B, G, io, scale, hist_from,
                                   HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU, HIST_OUT)
            else:
                g += NS
            j += 1
        tma.store_wait(pendings=0)

    # the slots depend on where the allocator put the two tensors, hist_from on the chunk: not
    # specialised (a value of 1 would compile a second kernel mid-decode)
    @gluon.jit(do_not_specialize=["hslot", "cslot", "hist_from"])
    def _conv192_kernel(xd, w1d, w2d, hslot, cslot, yd1, yd2, rd1, rd2, xd1, xd2, hd1, hd2, B, G, H, W, n_tiles,
                        scale, hist_from, C: gl.constexpr, STAGES: gl.constexpr, A_LAYOUT: gl.constexpr,
                        HAS_BIAS: gl.constexpr, HAS_RES: gl.constexpr, WRITE_X: gl.constexpr, NORM: gl.constexpr,
                        SILU: gl.constexpr, HIST_OUT: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                        num_warps: gl.constexpr):
        R: gl.constexpr = xd.block_type.shape[2]
        BW: gl.constexpr = xd.block_type.shape[3]
        BK: gl.constexpr = xd.block_type.shape[4]
        gl.static_assert(R * BW == 128, "128 pixels a tile: two 64-pixel halves")
        a_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, R * BW, BK], A_LAYOUT)
        b1_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, _N1, BK], w1d.layout)
        b2_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, _N2, BK], w2d.layout)
        # each consumer's staging buffers: a half's two channel blocks, for the residual, the sum and
        # the output in turn
        e1 = gl.allocate_shared_memory(yd1.dtype, [2, 64, _N1], _row_layout(_N1))
        e2 = gl.allocate_shared_memory(yd1.dtype, [2, 64, _N2], _row_layout(_N2))
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        rbars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for st in gl.static_range(STAGES):
            mbarrier.init(ready.index(st), count=1)
            mbarrier.init(empty.index(st), count=1)  # one consumer reads a stage
        for wg in gl.static_range(2):
            mbarrier.init(rbars.index(wg), count=1)
            mbarrier.init(turns.index(wg), count=1)
        io = (yd1, yd2, rd1, rd2, xd1, xd2, hd1, hd2)
        bufs0 = (e1.index(0), e2.index(0))
        bufs1 = (e1.index(1), e2.index(1))
        gl.warp_specialize([
            (_consumer, (a_bufs, b1_bufs, b2_bufs, ready, empty, turns, bufs0, rbars.index(0), B, G, io, H, W, n_tiles,
                         scale, hist_from, 0, C, R, BW, BK, STAGES, HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU,
                         HIST_OUT)),
            (_consumer, (a_bufs, b1_bufs, b2_bufs, ready, empty, turns, bufs1, rbars.index(1), B, G, io, H, W, n_tiles,
                         scale, hist_from, 1, C, R, BW, BK, STAGES, HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU,
                         HIST_OUT)),
            (_loader, (xd, w1d, w2d, a_bufs, b1_bufs, b2_bufs, ready, empty, hslot, cslot, H, W, n_tiles, C, R, BW,
                       BK, STAGES)),
        ], [4, 1], [CONSUMER_REGS, 24])
        for st in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(st))
            mbarrier.invalidate(empty.index(st))
        for wg in gl.static_range(2):
            mbarrier.invalidate(rbars.index(wg))
            mbarrier.invalidate(turns.index(wg))


def _descriptor(t: torch.Tensor, shape: list[int], strides: list[int], block: list[int], width: int = BLOCK_K):
    return conv_gluon._descriptor(t, shape, strides, block, width)


def available(frames: torch.Tensor, cin: int, cout: int, taps: tuple[int, int], offset: tuple[int, int],
              out: torch.Tensor, residual: bool = False) -> bool:
    """Whether this kernel runs the conv (every epilogue, `residual` included): Gluon, an sm_90 GPU, a
    192 -> 192 3x3x3 conv of bf16 frames, an output whose channels are contiguous.
    TURBOVID_GLUON=0 turns it off."""
    return (cin == CHANNELS and cout == CHANNELS
            and conv_gluon.runs_here(frames, "VAE 192-channel conv", smem_bytes(), taps, offset, out))


def launch(frames: torch.Tensor, history: Optional[torch.Tensor], weight_k: torch.Tensor,
           bias: Optional[torch.Tensor], out: torch.Tensor, stream_descriptor: Callable, gamma=None,
           silu: bool = True, residual=None, x_out=None, history_out=None) -> torch.Tensor:
    """causal_conv.launch's conv and epilogue for checked arguments (available() true): frames
    [T, H, W, 192] after `history` ([2, H, W, 192] or None: zeros), weight_k from conv_gluon.pack_weight, bias
    applied if given; out, residual, x_out and history_out are [*, H, W, 192] with contiguous
    channels. stream_descriptor(frames, history, box, make) builds the input's 5-D descriptor
    (causal_conv's, with this module's descriptor type)."""
    t, h, w, c = frames.shape
    xd, hslot, cslot = stream_descriptor(frames, history, [1, 1, TILE_ROWS, TILE_COLS, BLOCK_K], _descriptor)
    w1d = _descriptor(weight_k, [N1, weight_k.shape[1]], list(weight_k.stride()), [N1, BLOCK_K])
    w2d = _descriptor(weight_k[N1:], [N2, weight_k.shape[1]], list(weight_k.stride()), [N2, BLOCK_K])
    io = []
    for x in (out, residual, x_out, history_out):  # a half's two channel blocks (2 rows x 32 columns)
        x = out if x is None else x
        io += [_descriptor(x, list(x.shape), list(x.stride()), [1, TILE_ROWS // 2, TILE_COLS, n], n)
               for n in (N1, N2)]
    n_tiles = t * -(-h // TILE_ROWS) * -(-w // TILE_COLS)
    _conv192_kernel[(min(n_tiles, _sm_count(frames.device)),)](
        xd, w1d, w2d, hslot, cslot, *io, out if bias is None else bias, out if gamma is None else gamma,
        h, w, n_tiles, float(CHANNELS) ** 0.5, t - 2,
        C=CHANNELS, STAGES=STAGES, A_LAYOUT=conv_gluon.shared_layout(2, BLOCK_K), HAS_BIAS=bias is not None,
        HAS_RES=residual is not None, WRITE_X=x_out is not None, NORM=gamma is not None, SILU=silu,
        HIST_OUT=history_out is not None, CONSUMER_REGS=CONSUMER_REGS, num_warps=4, maxnreg=MAXNREG)
    return out
