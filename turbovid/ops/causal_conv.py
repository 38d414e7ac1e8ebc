"""A causal 3x3x3 convolution of channels-last frames with few channels, as one Triton kernel.

Used by the VAE's fast decode (models/vae_fast.py, SMALL_CONV = "triton") for the convs cuDNN
runs poorly: the full-resolution 96 -> 96 convs (cuDNN's conv3d picks an sm80 kernel; the
stacked-taps conv2d pads 96 output channels to 128-wide tiles and needs its input written three
times) and the 96 -> 3 head (an sm80 "indexed" kernel at ~20 TFLOP/s).

    buf: [P + T, H, W, C] contiguous, the time-padded input (P = 2 frames of causal history, then
         the T frames: what rms_silu_stream(taps=1) writes); zero padding of 1 in H and W.
    out[t, h, w, o] = bias[o] + sum_{dt, dh, dw, c} buf[t + dt, h + dh - 1, w + dw - 1, c] * weight[o, c, dt, dh, dw]

causal_conv_stream(frames, history, ...) is the same conv with the two history frames in a tensor of
their own (the fast decode's stream state), read where they are: on Hopper through one 5-D
descriptor [slot, frame, H, W, C] whose slot stride is the distance between the two tensors.

Implicit GEMM: a program computes BLOCK_M pixels of one output row, every output channel, over
K = 27 taps x C channels in slices of BLOCK_K. Output channels split into two power-of-two dots
(96 = 64 + 32) so no tensor-core work is spent on padding; the weights are packed once as
[27 C, N1 + N2] (tap-major rows, zero columns past Cout). On Hopper the input tiles come through a
4-D tensor descriptor, whose out-of-bounds zero fill is the conv's spatial padding.

The kernel's tap counts (KT in time, KS in each spatial direction), first spatial tap offset and output
strides are parameters (`launch`): ops/upsample_conv.py runs the upsamplers' 2x2 phase convs on it,
one launch a phase into a strided view of the upsampled output.

On an H100 the full-resolution 96 -> 96 convs without a residual run instead as ops/conv_gluon.py's
warp-specialized Gluon kernel (same contract; 1.05 against 1.50 ms at a 480p chunk); launch()
dispatches, and falls back to this kernel with one log line where that one fails. There a residual
block's sum is left to the next norm's pass (residual_in_epilogue). The 192 -> 192 convs, epilogues
included, run as ops/conv_gluon_wide.py's (consumers on tiles of their own, so one's epilogue runs
under the other's products), and the convs to 384 channels as ops/conv_gluon_coop.py's (consumers
sharing each tile's weights).

The PyTorch reference (F.conv3d) runs where the kernel cannot: no Triton, CPU tensors outside
tests (on CPU the kernel runs in Triton's interpreter after rms_silu.allow_interpreter()).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from turbovid.ops import conv_gluon, conv_gluon_coop, conv_gluon_wide, gluon_switch, rms_silu

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton
    TensorDescriptor = None

TAPS = 27
MIN_BLOCK_K = 16  # a dot's smallest depth: the input channels must be a multiple of it


def split_channels(cout: int) -> tuple[int, int]:
    """(N1, N2): two power-of-two widths (each >= 16, the dot's minimum; N2 = 0 for none) covering cout."""
    if cout <= 16:
        return 16, 0
    n1 = 1 << (cout.bit_length() - 1)
    rest = cout - n1
    return n1, 0 if rest == 0 else max(16, 1 << (rest - 1).bit_length())


# the Gluon kernels launch() hands a 3x3x3 conv to on an H100, by (C, Cout): (module, what a failure logs)
_GLUON_KERNELS = {(conv_gluon.CHANNELS,) * 2: (conv_gluon, "the VAE's 96-channel Gluon conv"),
                  (conv_gluon_wide.CHANNELS,) * 2: (conv_gluon_wide, "the VAE's 192-channel Gluon conv"),
                  **{(c, conv_gluon_coop.CHANNELS): (conv_gluon_coop, "the VAE's 384-channel Gluon conv")
                     for c in conv_gluon_coop.INPUTS}}


@dataclass(frozen=True)
class PackedConv:
    weight: torch.Tensor  # [27 C, N1 + N2], row (dt * 9 + dh * 3 + dw) * C + c, column o
    bias: Optional[torch.Tensor]  # [Cout]
    cin: int
    cout: int
    n1: int
    n2: int
    ref_weight: torch.Tensor  # [Cout, C, 3, 3, 3], the reference path's
    weight_k: Optional[torch.Tensor] = None  # convs of a Gluon kernel: [Cout, 27 x C] (_GLUON_KERNELS)


def pack(weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype) -> PackedConv:
    """A conv's [Cout, C, 3, 3, 3] weight (+ bias) in the kernel's layout and dtype."""
    cout, cin, *k = weight.shape
    if tuple(k) != (3, 3, 3):
        raise ValueError(f"causal_conv packs 3x3x3 kernels, got {tuple(k)}")
    n1, n2 = split_channels(cout)
    w = weight.detach().permute(2, 3, 4, 1, 0).reshape(TAPS * cin, cout)  # [(dt, dh, dw, c), o]
    packed = w.new_zeros(TAPS * cin, n1 + n2)
    packed[:, :cout] = w
    b = None if bias is None else bias.detach().to(dtype).contiguous()
    ref = weight.detach().to(dtype).contiguous(memory_format=torch.channels_last_3d)  # cuDNN's NDHWC kernels
    packed = packed.to(dtype).contiguous()
    weight_k = conv_gluon.pack_weight(packed, cout) if (cin, cout) in _GLUON_KERNELS else None
    return PackedConv(packed, b, cin, cout, n1, n2, ref, weight_k)


def causal_conv_reference(buf: torch.Tensor, conv: PackedConv, bias: bool = True) -> torch.Tensor:
    x = buf.permute(3, 0, 1, 2).unsqueeze(0)  # [1, C, P + T, H, W]
    y = F.conv3d(x, conv.ref_weight, conv.bias if bias else None, padding=(0, 1, 1))
    return y[0].permute(1, 2, 3, 0).contiguous()


if triton is not None:

    @triton.jit
    def frame_tile(H, W, BLOCK_M: tl.constexpr, ROWS: tl.constexpr):
        """This program's tile, ROWS x BLOCK_M / ROWS pixels of one frame (programs row-major over
        the tiles, frame by frame): (frame, first row, first column, each pixel's row and column)."""
        BW: tl.constexpr = BLOCK_M // ROWS
        pid = tl.program_id(0)
        n_w = tl.cdiv(W, BW)
        n_h = tl.cdiv(H, ROWS)
        h0 = (pid // n_w) % n_h * ROWS
        w0 = (pid % n_w) * BW
        m = tl.arange(0, BLOCK_M)
        return pid // (n_h * n_w), h0, w0, h0 + m // BW, w0 + m % BW

    @triton.jit
    def store_channels(Y, B, acc1, acc2, out, inside, COUT, N1: tl.constexpr, N2: tl.constexpr,
                       HAS_N2: tl.constexpr, HAS_BIAS: tl.constexpr):
        """The epilogue: output channels [0, N1) from acc1 and [N1, N1 + N2) from acc2 (+ bias), to
        Y + out (each row's first element, [BLOCK_M, 1]) where `inside` and the channel < COUT."""
        n = tl.arange(0, N1)
        if HAS_BIAS:
            acc1 += tl.load(B + n, mask=n < COUT, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + out + n[None, :], acc1.to(Y.dtype.element_ty), mask=inside & (n < COUT)[None, :])
        if HAS_N2:
            n = N1 + tl.arange(0, N2)
            if HAS_BIAS:
                acc2 += tl.load(B + n, mask=n < COUT, other=0.0).to(tl.float32)[None, :]
            tl.store(Y + out + n[None, :], acc2.to(Y.dtype.element_ty), mask=inside & (n < COUT)[None, :])

    @triton.jit
    def _tile_load(P, PD, out, n, mask, f, h0, w0, c0: tl.constexpr, BLOCK_M: tl.constexpr, N: tl.constexpr,
                   TMA_IO: tl.constexpr):
        """Channels [c0, c0 + N) of the tile's pixels as float32: through a descriptor (block
        [1, ROWS, BLOCK_M / ROWS, N]; out of bounds reads as zero) or the pointer P + out + n."""
        if TMA_IO:
            return PD.load([f, h0, w0, c0]).reshape(BLOCK_M, N).to(tl.float32)
        else:
            return tl.load(P + out + n[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _tile_store(P, PD, v, out, n, mask, f, h0, w0, c0: tl.constexpr, BLOCK_M: tl.constexpr,
                    ROWS: tl.constexpr, N: tl.constexpr, TMA_IO: tl.constexpr):
        """_tile_load's store (the descriptor drops what lies out of bounds)."""
        if TMA_IO:
            PD.store([f, h0, w0, c0], v.reshape(1, ROWS, BLOCK_M // ROWS, N))
        else:
            tl.store(P + out + n[None, :], v, mask=mask)

    @triton.jit
    def _finish(acc, n, c0: tl.constexpr, R, RD, XO, XOD, B, out, mask, f, h0, w0, COUT, dtype: tl.constexpr,
                HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, WRITE_X: tl.constexpr, BLOCK_M: tl.constexpr,
                ROWS: tl.constexpr, N: tl.constexpr, TMA_IO: tl.constexpr):
        """acc (+ bias) (+ residual); with a residual or WRITE_X rounded to dtype as a stored tensor is
        (kept in dtype, half the registers of float32 until the norm reads it), and with WRITE_X stored
        to XO."""
        if HAS_BIAS:
            acc += tl.load(B + n, mask=n < COUT, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            acc = (acc + _tile_load(R, RD, out, n, mask, f, h0, w0, c0, BLOCK_M, N, TMA_IO)).to(dtype)
        elif WRITE_X:
            acc = acc.to(dtype)
        if WRITE_X:
            _tile_store(XO, XOD, acc, out, n, mask, f, h0, w0, c0, BLOCK_M, ROWS, N, TMA_IO)
        return acc

    @triton.jit
    def _normed(v, n, G, inv, COUT, SILU: tl.constexpr):
        v = v.to(tl.float32) * inv * tl.load(G + n, mask=n < COUT, other=0.0).to(tl.float32)[None, :]
        if SILU:
            v = v * tl.sigmoid(v)
        return v

    @triton.jit
    def store_normed(Y, B, G, acc1, acc2, out, inside, f, h0, w0, COUT, scale, R, XO, YD1, YD2, RD1, RD2,
                     XOD1, XOD2, N1: tl.constexpr, N2: tl.constexpr, HAS_N2: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_RES: tl.constexpr, WRITE_X: tl.constexpr, NORM: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_M: tl.constexpr, ROWS: tl.constexpr, TMA_IO: tl.constexpr, HN=None, HND1=None,
                     HND2=None, hist_from=0, plane=0, HIST_OUT: tl.constexpr = False):
        """The fused epilogue: each pixel's output channels (+ bias) (+ residual) (that sum stored to XO),
        then RMS-normalised over the COUT channels (rms_silu's math) (+ SiLU), to Y, and with HIST_OUT
        output frames hist_from.. (the last two) to HN as well (plane: elements a frame). Padding columns
        of the accumulators are zero (zero weights, masked bias / residual): they add nothing to the
        norm. TMA_IO: Y, R and XO through descriptors (YD1 / YD2 for channels [0, N1) / [N1, N1 + N2),
        ...), which keeps 64-bit pointers for every element out of the registers (they spilled)."""
        dtype: tl.constexpr = Y.dtype.element_ty
        n1 = tl.arange(0, N1)
        m1 = inside & (n1 < COUT)[None, :]
        v1 = _finish(acc1, n1, 0, R, RD1, XO, XOD1, B, out, m1, f, h0, w0, COUT, dtype, HAS_BIAS, HAS_RES, WRITE_X,
                     BLOCK_M, ROWS, N1, TMA_IO)
        ss = tl.sum(v1.to(tl.float32) * v1.to(tl.float32), axis=1)
        if HAS_N2:
            n2 = N1 + tl.arange(0, N2)
            m2 = inside & (n2 < COUT)[None, :]
            v2 = _finish(acc2, n2, N1, R, RD2, XO, XOD2, B, out, m2, f, h0, w0, COUT, dtype, HAS_BIAS, HAS_RES,
                         WRITE_X, BLOCK_M, ROWS, N2, TMA_IO)
            ss += tl.sum(v2.to(tl.float32) * v2.to(tl.float32), axis=1)
        if NORM:
            inv = (scale / tl.maximum(tl.sqrt(ss), 1e-12))[:, None]
            v1 = _normed(v1, n1, G, inv, COUT, SILU)
        v1 = v1.to(dtype)
        _tile_store(Y, YD1, v1, out, n1, m1, f, h0, w0, 0, BLOCK_M, ROWS, N1, TMA_IO)
        if HIST_OUT:
            if f >= hist_from:
                hout = out - plane.to(tl.int64) * hist_from
                _tile_store(HN, HND1, v1, hout, n1, m1, f - hist_from, h0, w0, 0, BLOCK_M, ROWS, N1, TMA_IO)
        if HAS_N2:
            if NORM:
                v2 = _normed(v2, n2, G, inv, COUT, SILU)
            v2 = v2.to(dtype)
            _tile_store(Y, YD2, v2, out, n2, m2, f, h0, w0, N1, BLOCK_M, ROWS, N2, TMA_IO)
            if HIST_OUT:
                if f >= hist_from:
                    hout = out - plane.to(tl.int64) * hist_from
                    _tile_store(HN, HND2, v2, hout, n2, m2, f - hist_from, h0, w0, N1, BLOCK_M, ROWS, N2, TMA_IO)

    # the slots depend on where the allocator put the two tensors: not specialised (a value of 1
    # would compile a second kernel mid-decode, whenever the order flips)
    # the tap offsets OH / OW: -1 or 0 by the upsampler's phase (four launches, one kernel)
    @triton.jit(do_not_specialize=["HSLOT", "CSLOT", "hist_from", "OH", "OW"])
    def _causal_conv_kernel(X, XH, XD, HSLOT, CSLOT, Wt, WD1, WD2, B, Y, H, W, COUT, NP, ST, SH, SW, OH, OW,
                            C: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, HAS_N2: tl.constexpr,
                            HAS_BIAS: tl.constexpr, USE_TMA: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr = 1,
                            PRECISION: tl.constexpr = "ieee", R=None, XO=None, G=None, scale=1.0,
                            YD1=None, YD2=None, RD1=None, RD2=None, XOD1=None, XOD2=None,
                            FUSED: tl.constexpr = False, HAS_RES: tl.constexpr = False,
                            WRITE_X: tl.constexpr = False, NORM: tl.constexpr = False,
                            SILU: tl.constexpr = False, TMA_IO: tl.constexpr = False, HAS_HIST: tl.constexpr = True,
                            HN=None, HND1=None, HND2=None, hist_from=0, HIST_OUT: tl.constexpr = False,
                            KT: tl.constexpr = 3, KS: tl.constexpr = 3, A_FENCE: tl.constexpr = False):
        # a program: one tile of an output frame f, every output channel. Its taps read input frames
        # f .. f + KT - 1 of [history (KT - 1 frames); X (the T frames)]: XH / X on the pointer path
        # (no XH: zeros), slots HSLOT / CSLOT of the 5-D descriptor XD (an out-of-range slot reads as
        # zeros); rows h + OH .. h + OH + KS - 1, columns likewise. Output pixel (f, h, w) lies at
        # f ST + h SH + w SW (the upsampler's phases are strided views).
        f, h0, w0, mh, mw = frame_tile(H, W, BLOCK_M, ROWS)
        k = tl.arange(0, BLOCK_K)
        acc1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
        NC: tl.constexpr = C // BLOCK_K
        TP: tl.constexpr = KT - 1
        for it in range(KT * KS * KS * NC):
            if A_FENCE:  # the last step's products done first (fence_a); pure: the pipeliner keeps it in order
                it = tl.inline_asm_elementwise("wgmma.wait_group.sync.aligned 0;\n mov.b32 $0, $1;", "=r,r", [it], dtype=tl.int32,
                                               is_pure=True, pack=1)
            tap = it // NC
            c0 = (it - tap * NC) * BLOCK_K
            dt = tap // (KS * KS)
            dh = (tap // KS) % KS + OH
            dw = tap % KS + OW
            row = tap * C + c0
            hist = f + dt < TP
            frame = tl.where(hist, f + dt, f + dt - TP)  # within the history or X
            if USE_TMA:  # out-of-bounds rows / columns of the box read as zeros: the padding
                a = XD.load([tl.where(hist, HSLOT, CSLOT), frame, h0 + dh, w0 + dw, c0]).reshape(BLOCK_M, BLOCK_K)
                b1 = WD1.load([row, 0])
            else:
                hh = mh + dh
                ww = mw + dw
                ok = ((ww >= 0) & (ww < W) & (hh >= 0) & (hh < H))[:, None] & (k < BLOCK_K)[None, :]
                pix = (frame * H + hh).to(tl.int64) * W + ww
                offs = pix[:, None] * C + c0 + k[None, :]
                in_x = (mh * 0 + f + dt >= TP)[:, None]  # (a tensor: the interpreter's masks must be)
                a = tl.load(X + offs, mask=ok & in_x, other=0.0)
                if HAS_HIST:  # one of the two loads is all zeros
                    a += tl.load(XH + offs, mask=ok & (in_x == 0), other=0.0)
                b1 = tl.load(Wt + (row + k)[:, None] * NP + tl.arange(0, N1)[None, :])
            acc1 = tl.dot(a, b1, acc1, input_precision=PRECISION)
            if HAS_N2:
                if USE_TMA:
                    b2 = WD2.load([row, N1])
                else:
                    b2 = tl.load(Wt + (row + k)[:, None] * NP + N1 + tl.arange(0, N2)[None, :])
                acc2 = tl.dot(a, b2, acc2, input_precision=PRECISION)
        out = (f.to(tl.int64) * ST + mh.to(tl.int64) * SH + mw * SW)[:, None]
        inside = ((mh < H) & (mw < W))[:, None]
        if FUSED:
            store_normed(Y, B, G, acc1, acc2, out, inside, f, h0, w0, COUT, scale, R, XO, YD1, YD2, RD1, RD2,
                         XOD1, XOD2, N1, N2, HAS_N2, HAS_BIAS, HAS_RES, WRITE_X, NORM, SILU, BLOCK_M, ROWS, TMA_IO,
                         HN, HND1, HND2, hist_from, ST, HIST_OUT)
        else:
            store_channels(Y, B, acc1, acc2, out, inside, COUT, N1, N2, HAS_N2, HAS_BIAS)


def tile_grid(t: int, h: int, w: int, block_m: int, rows: int) -> tuple[int]:
    """The launch grid of frame_tile's programs over T frames of H x W."""
    return (t * triton.cdiv(h, rows) * triton.cdiv(w, block_m // rows),)


def dot_precision(x: torch.Tensor) -> str:
    """tl.dot's input precision for x's dtype: TF32 for float32 on CUDA where cuDNN's convs may use it
    (torch.backends.cudnn.allow_tf32), exact otherwise."""
    return "tf32" if x.dtype == torch.float32 and x.is_cuda and torch.backends.cudnn.allow_tf32 else "ieee"


def shared_memory(device: torch.device) -> int:
    """Bytes of shared memory one program may take on a CUDA `device` (the bound Triton checks a
    launch against: the SM's, less the 1 KiB the driver keeps)."""
    return torch.cuda.get_device_properties(device).shared_memory_per_multiprocessor - 1024


# The kernels' Hopper configs (this file's, ops/wide_attention.py's) take up to SMEM_BUDGET of
# pipeline buffers plus scratch: GPUs of sm_90+ with less shared memory (sm_120 cards such as the
# RTX 5090: 99 KiB) keep cuDNN and PyTorch's kernels.
HOPPER_SHARED_MEMORY = 216 << 10


def hopper_path(device: torch.device) -> bool:
    """Whether the kernel runs here with its input through tensor descriptors (sm_90+) and the
    shared memory of an H100 (HOPPER_SHARED_MEMORY): the path that was measured faster than cuDNN
    (benchmarks/explore_causal_conv.py)."""
    return (triton is not None and TensorDescriptor is not None and device.type == "cuda"
            and torch.cuda.get_device_capability(device) >= (9, 0)
            and shared_memory(device) >= HOPPER_SHARED_MEMORY)


@dataclass(frozen=True)
class Config:
    block_m: int = 256  # pixels a program: `rows` image rows of block_m // rows columns
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 4
    tma: bool = False
    rows: int = 1
    tma_io: bool = True  # with tma: the fused epilogue's tensors through descriptors too
    fence: bool = True  # fence_a's wait where it applies (False: only to time what it costs)


def fence_a(cfg: Config, wgmma: bool) -> bool:
    """Whether a launch waits for each K step's products before the next step begins.

    A multi-row descriptor tile ([ROWS, W / ROWS] pixels, reshaped) reaches the tensor cores from
    registers: Triton 3.6 loads it with ldmatrix and issues wgmma with A in registers, asynchronous,
    up to 7 left pending at the end of a step, and the next step's ldmatrix overwrites those
    registers while they may still be read (the SASS: LDSM into the A registers at the loop's top,
    the last wait before it `WARPGROUP.DEPBAR.LE gsb0, 0x7`). On an H100 this gave wrong values
    in a 16-pixel run of one tile row, in the second dot's channels, in some launches
    (benchmarks/conv_repeatability.py, 2026-11-27). A single-row tile's reshape only drops unit
    dimensions: the A tile stays in shared memory and needs no wait. wgmma: the launch runs on an
    sm_90 GPU (the wait is a wgmma instruction; elsewhere, and in the interpreter, there is none)."""
    return cfg.fence and cfg.tma and cfg.rows > 1 and wgmma


def tile_rows(h: int, w: int, block_m: int) -> int:
    """The program's tile shape for an H x W frame: the fewest rows (widest tile) among those with
    the least padding. 480p's 832 columns are 3.25 tiles of 256 (19% of the work wasted) but 13 of
    4 x 64; 720p's 1280 are 5 x 256."""
    cands = [r for r in (1, 2, 4, 8) if block_m // r >= 16]
    return min(cands, key=lambda r: (-(-h // r) * r * -(-w // (block_m // r)) * (block_m // r), r))


SMEM_BUDGET = 200 << 10  # bytes of pipeline buffers a program may take (an H100 SM has 227 KiB)


def smem_bytes(cfg: Config, cout: int, elem: int) -> int:
    """The pipeline's shared memory: num_stages x (input tile + weight tile)."""
    return cfg.num_stages * cfg.block_k * (cfg.block_m + sum(split_channels(cout))) * elem


def fit_shared_memory(cfg: Config, cout: int, elem: int) -> Config:
    """Fewer stages, then thinner K slices, then fewer pixels, until the buffers fit SMEM_BUDGET
    (float32 inputs take twice bf16's)."""
    while smem_bytes(cfg, cout, elem) > SMEM_BUDGET:
        if cfg.num_stages > 2:
            cfg = replace(cfg, num_stages=cfg.num_stages - 1)
        elif cfg.block_k > MIN_BLOCK_K:
            cfg = replace(cfg, block_k=cfg.block_k // 2)
        elif cfg.block_m // cfg.rows > 16:
            cfg = replace(cfg, block_m=cfg.block_m // 2)
        else:
            break
    return cfg


def default_config(device: torch.device, cin: int, cout: int = 0, h: int = 0, w: int = 0,
                   elem: int = 2) -> Config:
    """What benchmarks/explore_causal_conv.py measured best on an H100 (2026-11-27), 4 warps unless
    noted, configs then cut to fit shared memory (fit_shared_memory):
    - 96 -> 96: 256-pixel programs, descriptors, the tile shape with the least padding (4 x 64 at
      480p, 1 x 256 at 720p); 4 stages for multi-row tiles (480p: 1.47 vs 1.49 ms), 3 for single
      rows (720p: 3.49 vs 3.63 ms; 3.34 vs 3.35 in another run);
    - 192 and 384 outputs: 128-pixel programs (8 warps for 384), descriptors, 3 stages, the
      least-padding tile (within 6% of each shape's best: 2.08 vs 2.71 ms cuDNN at 8 x 240 x 416);
    - a 3-channel head: pointer loads (a dot this small does not hide a descriptor's latency:
      2.65 vs 2.86 ms at 720p), 4 x 64 tiles, 3 stages (1.13 / 2.57 ms at 480p / 720p)."""
    block_k = 64 if cin % 64 == 0 else 32 if cin % 32 == 0 else MIN_BLOCK_K
    hopper = hopper_path(device)
    if cout <= 16:
        cfg = Config(block_k=block_k, num_stages=3, rows=4)
    elif cout > 128:  # wide: 128-pixel programs (the accumulators of 256 would not fit the registers)
        cfg = Config(block_m=128, block_k=block_k, num_warps=8 if cout > 256 else 4, num_stages=3,
                     rows=tile_rows(h, w, 128) if h and w else 1, tma=hopper)
    else:
        rows = tile_rows(h, w, 256) if h and w else 1
        cfg = Config(block_k=block_k, num_stages=4 if rows > 1 else 3, rows=rows, tma=hopper)
    return fit_shared_memory(cfg, cout, elem)


def check_config(cfg: Config, c: int, op: str) -> None:
    """A config the kernel can run over c input channels: whole K slices, whole tile rows."""
    if c % cfg.block_k or cfg.block_m % cfg.rows:
        raise ValueError(f"{op}: {c} channels / block_k={cfg.block_k}, block_m={cfg.block_m} / rows={cfg.rows}"
                         " do not divide")


def causal_conv_fused_reference(buf: torch.Tensor, conv: PackedConv, out: torch.Tensor, bias: bool = True,
                                gamma: Optional[torch.Tensor] = None, silu: bool = True,
                                residual: Optional[torch.Tensor] = None,
                                x_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """causal_conv's fused epilogue in PyTorch: the conv (+ bias) in float32, + residual (the sum
    rounded to buf's dtype, stored to x_out), then rms_silu."""
    conv32 = replace(conv, ref_weight=conv.ref_weight.float(), bias=None if conv.bias is None else conv.bias.float())
    y = causal_conv_reference(buf.float(), conv32, bias)
    if residual is not None:
        y = (y + residual.float()).to(buf.dtype)
        if x_out is not None:
            x_out.copy_(y)
        y = y.float()
    return out.copy_(y if gamma is None else rms_silu.rms_silu_reference(y, gamma, silu))


def causal_conv(buf: torch.Tensor, conv: PackedConv, bias: bool = True, out: Optional[torch.Tensor] = None,
                config: Optional[Config] = None, gamma: Optional[torch.Tensor] = None, silu: bool = True,
                residual: Optional[torch.Tensor] = None, x_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The conv of the module docstring: buf [P + T, H, W, C] (P = 2) -> [T, H, W, Cout] in buf's dtype.

    bias=False leaves the bias out (a caller that adds it in its next pass). The epilogue can go on
    (one pass fewer over the output for the next layer): + `residual` ([T, H, W, Cout]; the sum,
    rounded to buf's dtype, stored to `x_out`, which may be `residual` itself), then with `gamma`
    ([Cout]) the RMS norm (+ SiLU) of ops/rms_silu.py, computed from the float32 sum. `out` may be
    a view into a larger buffer (the next conv's input) as long as it is contiguous."""
    if buf.dim() != 4 or buf.shape[-1] != conv.cin or buf.shape[0] < 3 or not buf.is_contiguous():
        raise ValueError(f"causal_conv: buf must be a contiguous [2 + T, H, W, {conv.cin}] tensor, "
                         f"got {tuple(buf.shape)}")
    return causal_conv_stream(buf[2:], buf[:2], conv, bias, out, config, gamma, silu, residual, x_out)


def stream_input(frames: torch.Tensor, history: Optional[torch.Tensor]) -> torch.Tensor:
    """The time-padded input [2 + T, H, W, C] that causal_conv_stream reads: history (zeros if None), frames."""
    return torch.cat([frames.new_zeros(2, *frames.shape[1:]) if history is None else history, frames])


def _stream_descriptor(frames: torch.Tensor, history: Optional[torch.Tensor], box: list[int],
                       make: Optional[Callable] = None):
    """A 5-D descriptor [slot, frame, H, W, C] over both tensors, wherever they lie: slot 0 starts at
    the lower address, slot 1 at the other (its stride the distance between them; the frame extent
    covers both). make(base, shape, strides, box) builds it (Triton's TensorDescriptor by default;
    ops/conv_gluon.py passes Gluon's). Returns (descriptor, history's slot, frames' slot); without
    history its slot is out of range, which reads as zeros."""
    make = make or TensorDescriptor
    t, h, w, c = frames.shape
    inner = list(frames.stride())
    if history is None:
        return make(frames, [1, t, h, w, c], [frames.numel()] + inner, box), 1, 0
    lo, hi = sorted((history, frames), key=torch.Tensor.data_ptr)
    gap = hi.data_ptr() - lo.data_ptr()
    if gap % 16:
        raise ValueError("causal_conv_stream: history and frames must lie a multiple of 16 bytes apart")
    d = make(lo, [2, max(t, 2), h, w, c], [gap // frames.element_size()] + inner, box)
    return (d, 0, 1) if lo is history else (d, 1, 0)


def causal_conv_stream(frames: torch.Tensor, history: Optional[torch.Tensor], conv: PackedConv, bias: bool = True,
                       out: Optional[torch.Tensor] = None, config: Optional[Config] = None,
                       gamma: Optional[torch.Tensor] = None, silu: bool = True,
                       residual: Optional[torch.Tensor] = None, x_out: Optional[torch.Tensor] = None,
                       history_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """causal_conv of the frames [T, H, W, C] after the stream's `history` [2, H, W, C] (the previous
    chunk's last two input frames, None at the start: zeros), read where they are: no time-padded
    copy of the two. Options as causal_conv's; with the fused epilogue (gamma or residual) and
    T >= 2, `history_out` ([2, H, W, Cout]) takes a second copy of the last two output frames: the
    next conv's next history, without a pass of its own."""
    if frames.dim() != 4 or frames.shape[-1] != conv.cin or not frames.is_contiguous():
        raise ValueError(f"causal_conv: frames must be a contiguous [T, H, W, {conv.cin}] tensor, "
                         f"got {tuple(frames.shape)}")
    t, h, w, c = frames.shape
    if history is not None and (tuple(history.shape) != (2, h, w, c) or not history.is_contiguous()
                                or history.dtype != frames.dtype or history.device != frames.device):
        raise ValueError(f"causal_conv: history must be a contiguous [2, {h}, {w}, {c}] {frames.dtype} tensor")
    if frames.dtype != conv.weight.dtype:
        raise ValueError(f"causal_conv: the input is {frames.dtype}, the packed weights {conv.weight.dtype}")
    shape = (t, h, w, conv.cout)
    if out is None:
        out = frames.new_empty(shape)
    for name, x in (("out", out), ("residual", residual), ("x_out", x_out)):
        if x is not None and (tuple(x.shape) != shape or not x.is_contiguous() or x.dtype != frames.dtype):
            raise ValueError(f"causal_conv: {name} must be a contiguous {shape} {frames.dtype} tensor")
    if x_out is not None and residual is None:
        raise ValueError("causal_conv: x_out takes the residual sum; pass a residual")
    if gamma is not None and gamma.numel() != conv.cout:
        raise ValueError(f"causal_conv: gamma must have {conv.cout} values (one per output channel)")
    fused = gamma is not None or residual is not None
    if history_out is not None and (not fused or t < 2 or tuple(history_out.shape) != (2, h, w, conv.cout)
                                    or not history_out.is_contiguous() or history_out.dtype != frames.dtype):
        raise ValueError(f"causal_conv: history_out must be a contiguous [2, {h}, {w}, {conv.cout}] {frames.dtype} "
                         "tensor, with the fused epilogue (gamma or residual) and at least 2 frames")
    cfg = config or default_config(frames.device, c, conv.cout, h, w, frames.element_size())
    check_config(cfg, c, "causal_conv")
    if not rms_silu._use_kernel(frames):
        buf = stream_input(frames, history)
        if not fused:
            return out.copy_(causal_conv_reference(buf, conv, bias))
        causal_conv_fused_reference(buf, conv, out, bias, gamma, silu, residual, x_out)
        if history_out is not None:
            history_out.copy_(out[-2:])
        return out
    return launch(frames, history, conv, cfg, out, bias, gamma, silu, residual, x_out, history_out)


def residual_in_epilogue(frames: torch.Tensor, conv: PackedConv) -> bool:
    """Whether a residual sum after this conv belongs in its epilogue (causal_conv_stream's residual).

    Not where the Gluon kernel takes the conv's plain epilogue but not a residual one (96 -> 96 on
    an H100): there the plain Gluon conv, then the next norm's pass forming the sum
    (rms_silu_stream with a residual) beat the Triton kernel with the residual in its epilogue: at
    an 8-frame 480p chunk ~2.1 + 0.87 ms against 3.7 ms (H100; docs/benchmarks.md, "Session 32")."""
    if conv.weight_k is None or not rms_silu._use_kernel(frames):
        return True
    return not conv_gluon.available(frames, conv.cin, conv.cout, (3, 3), (-1, -1), frames)


def launch(frames: torch.Tensor, history: Optional[torch.Tensor], conv: PackedConv, cfg: Config, out: torch.Tensor,
           bias: bool = True, gamma: Optional[torch.Tensor] = None, silu: bool = True,
           residual: Optional[torch.Tensor] = None, x_out: Optional[torch.Tensor] = None,
           history_out: Optional[torch.Tensor] = None, taps: tuple[int, int] = (3, 3),
           offset: tuple[int, int] = (-1, -1)) -> torch.Tensor:
    """The kernel over checked arguments (causal_conv_stream's, ops/upsample_conv.py's): a conv of
    taps = (KT, KS) taps in time and in each spatial direction, the first at (-KT + 1, *offset), over
    frames after KT - 1 history frames. The epilogue tensors (out, residual, x_out, history_out) may
    be strided [*, H, W, Cout] views sharing one layout; with x_out and no residual it takes the
    conv's output (+ bias) before the norm."""
    t, h, w, c = frames.shape
    kt, ks = taps
    use_tma = cfg.tma and TensorDescriptor is not None  # on the CPU: in the interpreter (tests)
    has_bias = bias and conv.bias is not None
    kernel, label = _GLUON_KERNELS.get((c, conv.cout), (None, ""))
    if conv.weight_k is not None and kernel.available(frames, c, conv.cout, taps, offset, out, residual is not None):
        done = gluon_switch.attempt(label, frames.device, log, kernel.launch, frames, history, conv.weight_k,
                                    conv.bias if has_bias else None, out, _stream_descriptor,
                                    None if gamma is None else gamma.contiguous(), silu, residual, x_out, history_out)
        if done is not None:
            return done
    box = [1, 1, cfg.rows, cfg.block_m // cfg.rows, cfg.block_k]
    xd, hslot, cslot = _stream_descriptor(frames, history, box) if use_tma else (frames, 0, 0)
    wd1 = wd2 = conv.weight  # the pointer path takes the tensors in the descriptors' places
    if use_tma:
        wd1 = TensorDescriptor.from_tensor(conv.weight, [cfg.block_k, conv.n1])
        wd2 = TensorDescriptor.from_tensor(conv.weight, [cfg.block_k, conv.n2]) if conv.n2 else wd1
    io = {}  # the fused epilogue's descriptors: two channel blocks (N1, N2) of each tensor
    fused = gamma is not None or residual is not None or x_out is not None
    tma_io = use_tma and fused and cfg.tma_io
    if tma_io:
        for name, x in (("YD", out), ("RD", residual), ("XOD", x_out), ("HND", history_out)):
            if x is not None:
                d1, d2 = (TensorDescriptor(x, list(x.shape), list(x.stride()),
                                           [1, cfg.rows, cfg.block_m // cfg.rows, n]) for n in (conv.n1, conv.n2 or 16))
                io.update({name + "1": d1, name + "2": d2})
    _causal_conv_kernel[tile_grid(t, h, w, cfg.block_m, cfg.rows)](
        frames, frames if history is None else history, xd, hslot, cslot, conv.weight, wd1, wd2,
        conv.bias if has_bias else conv.weight, out, h, w, conv.cout, conv.n1 + conv.n2, *out.stride()[:3], *offset,
        C=c, N1=conv.n1, N2=max(conv.n2, 16), HAS_N2=conv.n2 > 0, HAS_BIAS=has_bias, USE_TMA=use_tma,
        BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, ROWS=cfg.rows, PRECISION=dot_precision(frames),
        R=out if residual is None else residual, XO=out if x_out is None else x_out,
        G=out if gamma is None else gamma.contiguous(), scale=float(conv.cout) ** 0.5,
        FUSED=fused, HAS_RES=residual is not None, WRITE_X=x_out is not None, NORM=gamma is not None, SILU=silu,
        TMA_IO=tma_io, HAS_HIST=history is not None, HN=out if history_out is None else history_out,
        hist_from=t - 2, HIST_OUT=history_out is not None, KT=kt, KS=ks,
        A_FENCE=fence_a(cfg, use_tma and frames.is_cuda and torch.cuda.get_device_capability(frames.device)[0] == 9),
        **io, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out
