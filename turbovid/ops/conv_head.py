"""The VAE decoder's head, RMS norm + SiLU + a causal 3x3x3 conv to a few channels (96 -> 3 RGB),
computed by taps so that each input pixel is normalised and read once a tile.

With 3 output channels the conv is all input traffic: cuDNN and our implicit-GEMM kernel
(causal_conv.py) both took ~1.1 ms a 4-frame 480p chunk on an H100 (~22 TFLOP/s), reading every
pixel once per tap, after the norm kernel had written the normalised input. Here one kernel
(stream) takes a program's input tile (8 x 8 pixels, its inner 6 x 6 are its outputs) through the
chunk's frames:

    Z[p, tap, :] = rms_silu(x)[p] @ W[:, :, tap]^T   (the 27 taps' products, in registers)
    out[f, q, :] += Z[q + shift(tap), tap, :]         (each output gathers its taps' values)

input frame f adding its dt = 2, 1, 0 taps to output frames f, f + 1, f + 2. The stream's causal
state is what the chunk's last two frames add to the next chunk's first two outputs (`partial`,
float32 [2, H, W, Cout]): the conv's sums, in another order. Before (project + gather, Z stored
tap-major [27, T, H, W, Cout] float32 and its last two frames copied as the history) the head took
1.25 ms a 4-frame 480p chunk against 1.12 now (2.84 / 2.51 ms at 720p; benchmarks/explore_head.py,
H100, 2026-11-27), and Z took 1 GB at the 480p decode's 8-frame chunks.

The PyTorch reference runs where the kernel cannot (no Triton, CPU tensors outside tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from turbovid.ops import rms_silu
from turbovid.ops.causal_conv import dot_precision
from turbovid.ops.rms_silu import add_bias_residual_, rms_silu_reference

try:
    import triton
    import triton.language as tl

    from turbovid.ops.causal_conv import _normed
except ImportError:  # pragma: no cover - depends on the install
    triton = None

MAX_COUT = 16  # heads up to this many output channels go by taps
# stream()'s launch, fastest on an H100 (benchmarks/explore_head.py, 2026-11-27; a 4-frame 480p
# chunk): 8 x 8-pixel input tiles on 4 warps, 3 stages, Z 32 columns (8 taps) at a time: 1.12 ms;
# 8 x 16 tiles 1.37 ms, 4 x 16 / 16 x 4 1.39-1.45, 2 warps 1.26, 16 columns 1.26, 8 warps 2.4
STREAM_ROWS = 8
STREAM_COLS = 8
STREAM_WARPS = 4
STREAM_STAGES = 3
STREAM_NCOL = 32


@dataclass(frozen=True)
class PackedHead:
    wz: torch.Tensor  # [BLOCK_C, P]: row c, column tap * CP + o = weight[o, c, tap]; zero padding
    weight: torch.Tensor  # [Cout, C, 3, 3, 3], rounded to the kernel's dtype, as float32: the reference's
    bias: Optional[torch.Tensor]  # [Cout] float32
    cin: int
    cout: int
    cp: int  # Cout padded to a power of two


def pack(weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype) -> PackedHead:
    cout, cin, *k = weight.shape
    if tuple(k) != (3, 3, 3) or cout > MAX_COUT:
        raise ValueError(f"conv_head packs 3x3x3 kernels with at most {MAX_COUT} outputs, got {tuple(weight.shape)}")
    cp = 1 << max(0, (cout - 1).bit_length())
    block_c = 1 << max(4, (cin - 1).bit_length())
    p = 1 << (27 * cp - 1).bit_length()
    wz = weight.new_zeros(block_c, 27, cp)
    wz[:cin, :, :cout] = weight.detach().reshape(cout, cin, 27).permute(1, 2, 0)  # [c, tap, o]
    b = None if bias is None else bias.detach().float().contiguous()
    wz = torch.cat([wz.reshape(block_c, 27 * cp), wz.new_zeros(block_c, p - 27 * cp)], 1)
    return PackedHead(wz.to(dtype).contiguous(), weight.detach().to(dtype).float(), b, cin, cout, cp)


def products_reference(x: torch.Tensor, gamma: torch.Tensor, head: PackedHead, silu: bool = True,
                       bias: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
                       x_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Z [27, T, H, W, Cout] float32: each tap's products with rms_silu of x (with `residual`, of
    x + bias + residual, stored into x_out if given), the normalised input rounded to x's dtype."""
    if residual is not None:  # the residual sum rounded as add_bias_residual_ stores it
        x, bias = add_bias_residual_(x.clone(), bias, residual), None
        if x_out is not None:
            x_out.copy_(x)
    y = rms_silu_reference(x, gamma, silu, bias).float()  # normalised, rounded to x's dtype
    t, h, w, c = y.shape
    z = y.reshape(-1, c) @ head.weight.reshape(head.cout, c, 27).permute(1, 2, 0).reshape(c, 27 * head.cout)
    return z.reshape(t, h, w, 27, head.cout).permute(3, 0, 1, 2, 4).contiguous()


if triton is not None:

    @triton.jit
    def _channels(X, B, R, XO, offs, mask, cols, C, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                  WRITE_X: tl.constexpr):
        """One channel block of the head's input pixels, float32: x (+ bias + residual, rounded as
        add_bias_residual_ stores it, and stored to XO); zeros where masked (outside the frame)."""
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x = tl.where(mask, x + tl.load(B + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :], 0.0)
        if HAS_RES:
            x = (x + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)).to(X.dtype.element_ty)
            if WRITE_X:
                tl.store(XO + offs, x, mask=mask)
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _stream_kernel(X, G, B, R, XO, WZ, HB, PI, PO, Y, T, H, W, C, COUT, scale, SILU: tl.constexpr,
                       HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, WRITE_X: tl.constexpr,
                       HAS_HB: tl.constexpr, HAS_PI: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
                       C1: tl.constexpr, C2: tl.constexpr, CP: tl.constexpr, P: tl.constexpr, NCOL: tl.constexpr,
                       PRECISION: tl.constexpr):
        """One program: an input tile of ROWS x COLS pixels over the chunk's frames, one frame at a
        time; its inner (ROWS - 2) x (COLS - 2) pixels are its outputs. A frame's normalised tile
        (channels in blocks of C1 and C2, C2 = 0: none) times the taps' weights gives Z in registers,
        NCOL columns (NCOL / CP taps) at a time; each output gathers its taps' values from the
        neighbours they shift to. Output frames f, f + 1, f + 2 take input frame f's dt = 2, 1, 0 taps
        (accumulators a, b, c, rolled a frame on); PI / PO: the first two output frames' sums from
        the frames before the chunk, in and out."""
        NPIX: tl.constexpr = ROWS * COLS
        TAPS: tl.constexpr = NCOL // CP
        pid = tl.program_id(0)
        n_w = tl.cdiv(W, COLS - 2)
        q = tl.arange(0, NPIX)
        r = q // COLS
        s = q % COLS
        hh = (pid // n_w) * (ROWS - 2) - 1 + r
        ww = (pid % n_w) * (COLS - 2) - 1 + s
        inside = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        own = inside & (r >= 1) & (r < ROWS - 1) & (s >= 1) & (s < COLS - 1)
        hw = H * W
        pix = hh * W + ww
        c1 = tl.arange(0, C1)
        c2 = C1 + tl.arange(0, C2 if C2 > 0 else 16)
        o = tl.arange(0, CP)
        j = tl.arange(0, NCOL)
        out_ok = own[:, None] & (o < COUT)[None, :]
        offs = pix[:, None].to(tl.int64) * COUT + o[None, :]
        zero = tl.zeros((NPIX, CP), dtype=tl.float32)
        a = zero
        b = zero
        if HAS_PI:
            a = tl.load(PI + offs, mask=out_ok, other=0.0)
            b = tl.load(PI + hw * COUT + offs, mask=out_ok, other=0.0)
        hb = tl.zeros((CP,), dtype=tl.float32)
        if HAS_HB:
            hb = tl.load(HB + o, mask=o < COUT, other=0.0)
        for f in range(T):
            row = (f * hw + pix).to(tl.int64)[:, None] * C
            x1 = _channels(X, B, R, XO, row + c1[None, :], inside[:, None] & (c1 < C)[None, :], c1, C, HAS_BIAS,
                           HAS_RES, WRITE_X)
            ss = tl.sum(x1 * x1, axis=1)
            if C2 > 0:
                x2 = _channels(X, B, R, XO, row + c2[None, :], inside[:, None] & (c2 < C)[None, :], c2, C,
                               HAS_BIAS, HAS_RES, WRITE_X)
                ss += tl.sum(x2 * x2, axis=1)
            inv = (scale / tl.maximum(tl.sqrt(ss), 1e-12))[:, None]
            y1 = _normed(x1, c1, G, inv, C, SILU).to(X.dtype.element_ty)  # the conv's input, as stored unfused
            if C2 > 0:
                y2 = _normed(x2, c2, G, inv, C, SILU).to(X.dtype.element_ty)
            c = zero
            for k in range(P // NCOL):  # a loop, not unrolled: the four chunks' indices would stay live
                n = k * NCOL + j
                z = tl.dot(y1, tl.load(WZ + c1[:, None] * P + n[None, :]), input_precision=PRECISION)
                if C2 > 0:
                    z = tl.dot(y2, tl.load(WZ + c2[:, None] * P + n[None, :]), acc=z, input_precision=PRECISION)
                tap = n // CP
                shift = (tap // 3 % 3 - 1) * COLS + tap % 3 - 1
                near = tl.minimum(tl.maximum(q[:, None] + shift[None, :], 0), NPIX - 1)  # edge pixels own nothing
                g = tl.reshape(tl.gather(z, near, 0), (NPIX, TAPS, CP))
                dt = ((k * TAPS + tl.arange(0, TAPS)) // 9)[None, :, None]  # taps past 27 have zero weights
                a += tl.sum(tl.where(dt == 2, g, 0.0), axis=1)
                b += tl.sum(tl.where(dt == 1, g, 0.0), axis=1)
                c += tl.sum(tl.where(dt == 0, g, 0.0), axis=1)
            tl.store(Y + f * hw * COUT + offs, (a + hb[None, :]).to(Y.dtype.element_ty), mask=out_ok)
            a = b
            b = c
        tl.store(PO + offs, a, mask=out_ok)
        tl.store(PO + hw * COUT + offs, b, mask=out_ok)


def _check(x: torch.Tensor, head: PackedHead, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
           x_out: Optional[torch.Tensor]) -> None:
    if x.dim() != 4 or x.shape[-1] != head.cin or not x.is_contiguous():
        raise ValueError(f"conv_head: x must be a contiguous [T, H, W, {head.cin}] tensor, got {tuple(x.shape)}")
    if residual is not None and (bias is None or residual.shape != x.shape or not residual.is_contiguous()):
        raise ValueError("conv_head: a residual needs a bias and must be contiguous like x")
    if x_out is not None and (residual is None or x_out.shape != x.shape or not x_out.is_contiguous()
                              or x_out.dtype != x.dtype):
        raise ValueError("conv_head: x_out takes the residual sum: contiguous, x's shape and dtype")
    if x.dtype != head.wz.dtype:
        raise ValueError(f"conv_head: x is {x.dtype}, the packed weights {head.wz.dtype}")


def stream_reference(x: torch.Tensor, gamma: torch.Tensor, head: PackedHead, silu: bool = True,
                     bias: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
                     x_out: Optional[torch.Tensor] = None, partial: Optional[torch.Tensor] = None,
                     dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """stream()'s PyTorch path: the per-tap products (products_reference), each input frame's added
    to the output frames it feeds, the chunk's own and the next chunk's first two."""
    z = products_reference(x, gamma, head, silu, bias, residual, x_out)
    _, t, h, w, c = z.shape
    v = torch.nn.functional.pad(z, (0, 0, 1, 1, 1, 1))
    ext = z.new_zeros(t + 2, h, w, c)  # output frames 0 .. T + 1 of the chunk (T, T + 1: the next one's 0, 1)
    for tap in range(27):
        dt, dh, dw = tap // 9, tap // 3 % 3, tap % 3
        ext[2 - dt:2 - dt + t] += v[tap, :, dh:dh + h, dw:dw + w]  # input frame i feeds output i + 2 - dt
    if partial is not None:
        ext[:2] += partial
    out = ext[:t] if head.bias is None else ext[:t] + head.bias
    return out.to(dtype or x.dtype), ext[t:].contiguous()


def stream(x: torch.Tensor, gamma: torch.Tensor, head: PackedHead, silu: bool = True,
           bias: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
           x_out: Optional[torch.Tensor] = None, partial: Optional[torch.Tensor] = None,
           dtype: Optional[torch.dtype] = None, rows: int = STREAM_ROWS, cols: int = STREAM_COLS,
           num_warps: int = STREAM_WARPS, num_stages: int = STREAM_STAGES,
           ncol: int = STREAM_NCOL) -> tuple[torch.Tensor, torch.Tensor]:
    """The head over one chunk of a stream in one kernel, Z never stored: x [T, H, W, C] contiguous
    (with `residual`: x + bias + residual, stored into x_out if given) -> (the conv [T, H, W, Cout] in
    dtype (x's if None), the next chunk's `partial`). partial [2, H, W, Cout] float32: what the
    frames before the chunk add to its first two output frames (None: zeros, the stream's start).
    rows x cols: a program's input tile (its inner pixels are its outputs)."""
    _check(x, head, bias, residual, x_out)
    t, h, w, _ = x.shape
    if partial is not None and (tuple(partial.shape) != (2, h, w, head.cout) or partial.dtype != torch.float32
                                or not partial.is_contiguous()):
        raise ValueError(f"conv_head.stream: partial must be a contiguous {(2, h, w, head.cout)} float32 tensor")
    if not rms_silu._use_kernel(x):
        return stream_reference(x, gamma, head, silu, bias, residual, x_out, partial, dtype)
    if x_out is not None and x_out.data_ptr() in (x.data_ptr(), residual.data_ptr()):
        # the sum stored in place (the decoder's residual blocks do): programs read their
        # neighbours' edge pixels, which would then be sums already. Formed first, in a pass of its own.
        if x_out.data_ptr() == residual.data_ptr():
            add_bias_residual_(x_out, bias, x)
        else:
            add_bias_residual_(x_out, bias, residual)
        x, bias, residual, x_out = x_out, None, None, None
    out = torch.empty(t, h, w, head.cout, dtype=dtype or x.dtype, device=x.device)
    nxt = torch.empty(2, h, w, head.cout, dtype=torch.float32, device=x.device)
    block_c, p = head.wz.shape
    c1 = min(block_c, 64)  # channels in a block of 64 and one of the rest: 96 -> 64 + 32, none padded
    c2 = 0 if head.cin <= c1 else 1 << (head.cin - c1 - 1).bit_length()
    _stream_kernel[(triton.cdiv(h, rows - 2) * triton.cdiv(w, cols - 2),)](
        x, gamma.contiguous(), gamma if bias is None else bias.contiguous(), x if residual is None else residual,
        x if x_out is None else x_out, head.wz, out if head.bias is None else head.bias,
        nxt if partial is None else partial, nxt, out, t, h, w, head.cin, head.cout, float(head.cin) ** 0.5,
        SILU=silu, HAS_BIAS=bias is not None, HAS_RES=residual is not None, WRITE_X=x_out is not None,
        HAS_HB=head.bias is not None, HAS_PI=partial is not None, ROWS=rows, COLS=cols, C1=c1, C2=c2,
        CP=head.cp, P=p, NCOL=min(p, ncol), PRECISION=dot_precision(x), num_warps=num_warps, num_stages=num_stages,
    )
    return out, nxt

