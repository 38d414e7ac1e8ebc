"""The causal 3x3x3 conv of ops/causal_conv.py with int8 inputs and weights (an experiment for the
VAE decode: an H100 multiplies int8 at twice its bf16 rate).

    q: [P + T, H, W, C] int8, s: [P + T, H, W] float32: the input x ~= q * s, one scale per pixel
       (amax over its C channels / 127: quantize_pixels), P = 2 frames of causal history first;
    weight: int8 per output channel (amax / 127), packed [groups * (N1 + N2), 27 C], K contiguous.
    out[t, h, w, o] = bias[o] + ws[o] * sum_taps s[pixel + tap] * sum_c q[pixel + tap, c] * wq[o, c, tap]

Per-pixel scales differ between the taps (each tap reads a shifted pixel), so a program sums each
tap's C channels in int32 and adds that partial, scaled by its rows' scales, into a float32
accumulator: 27 promotions a tile. PIXEL=False drops them (one scale for the whole input, int32
accumulation over all taps): the speed such a kernel could reach, for the benchmark only, since a
whole-tensor scale loses ~4 dB of the decode's PSNR (benchmarks/explore_vae_fp8.py).

A program computes BLOCK_M pixels of one frame and one group of N1 + N2 output channels (two
power-of-two dots; the 384-channel convs take two groups of 128 + 64, so the float32 and int32
accumulators fit the registers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from turbovid.ops import rms_silu
from turbovid.ops.causal_conv import TAPS, split_channels

try:
    import triton
    import triton.language as tl

    from turbovid.ops.causal_conv import frame_tile
except ImportError:  # pragma: no cover - depends on the install
    triton = None

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton
    TensorDescriptor = None


@dataclass(frozen=True)
class PackedConvInt8:
    weight: torch.Tensor  # [groups * (N1 + N2), 27 C] int8, row o, column (dt * 9 + dh * 3 + dw) * C + c
    scale: torch.Tensor  # [groups * (N1 + N2)] float32, per output channel (0 on padding rows)
    bias: Optional[torch.Tensor]  # [Cout] float32
    cin: int
    cout: int
    n1: int
    n2: int
    groups: int


def channel_groups(cout: int) -> tuple[int, int, int]:
    """(N1, N2, groups): output channels a program takes, as two power-of-two dots, and how many
    programs share a tile. Up to 192 channels one group; wider, groups of at most 192."""
    groups = -(-cout // 192)
    n1, n2 = split_channels(-(-cout // groups))
    return n1, n2, groups


def pack_int8(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> PackedConvInt8:
    """A [Cout, C, 3, 3, 3] conv weight (+ bias) rounded to int8 per output channel."""
    cout, cin, *k = weight.shape
    if tuple(k) != (3, 3, 3):
        raise ValueError(f"causal_conv_int8 packs 3x3x3 kernels, got {tuple(k)}")
    n1, n2, groups = channel_groups(cout)
    w = weight.detach().float().permute(0, 2, 3, 4, 1).reshape(cout, TAPS * cin)  # [o, (dt, dh, dw, c)]
    amax = w.abs().amax(dim=1).clamp_min(1e-30)
    rows = groups * (n1 + n2)
    q = torch.zeros(rows, TAPS * cin, dtype=torch.int8, device=w.device)
    q[:cout] = (w * (127 / amax)[:, None]).round().clamp(-127, 127).to(torch.int8)
    scale = torch.zeros(rows, device=w.device)
    scale[:cout] = amax / 127
    b = None if bias is None else bias.detach().float().contiguous()
    return PackedConvInt8(q.contiguous(), scale, b, cin, cout, n1, n2, groups)


def quantize_pixels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., C] -> (q int8 [..., C], s float32 [...]): round(x / s), s = amax over C / 127."""
    xf = x.float()
    s = xf.abs().amax(dim=-1) / 127
    q = (xf / s.clamp_min(1e-30)[..., None]).round().clamp(-127, 127).to(torch.int8)
    return q, s


def causal_conv_int8_reference(q: torch.Tensor, s: torch.Tensor, conv: PackedConvInt8) -> torch.Tensor:
    """The kernel's math in float32: dequantized input and weights through F.conv3d -> [T, H, W, Cout]."""
    x = (q.float() * s[..., None]).permute(3, 0, 1, 2).unsqueeze(0)
    w = conv.weight[:conv.cout].float() * conv.scale[:conv.cout, None]
    w = w.reshape(conv.cout, 3, 3, 3, conv.cin).permute(0, 4, 1, 2, 3)
    y = F.conv3d(x, w, conv.bias, padding=(0, 1, 1))
    return y[0].permute(1, 2, 3, 0).contiguous()


if triton is not None:

    @triton.jit
    def _causal_conv_int8_kernel(X, XD, S, Wt, WD1, WD2, WS, B, Y, H, W, COUT, S_ALL,
                                 C: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, HAS_N2: tl.constexpr,
                                 HAS_BIAS: tl.constexpr, USE_TMA: tl.constexpr, PIXEL: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr):
        f, h0, w0, mh, mw = frame_tile(H, W, BLOCK_M, ROWS)
        n0 = tl.program_id(1) * (N1 + N2)
        k = tl.arange(0, BLOCK_K)
        K_ALL: tl.constexpr = 27 * C
        acc1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
        part1 = tl.zeros((BLOCK_M, N1), dtype=tl.int32)
        part2 = tl.zeros((BLOCK_M, N2), dtype=tl.int32)
        NC: tl.constexpr = C // BLOCK_K
        for it in range(27 * NC):
            tap = it // NC
            c0 = (it - tap * NC) * BLOCK_K
            dt = tap // 9
            dh = (tap // 3) % 3 - 1
            dw = tap % 3 - 1
            hh = mh + dh
            ww = mw + dw
            ok = (ww >= 0) & (ww < W) & (hh >= 0) & (hh < H)
            pix = ((f + dt) * H + hh).to(tl.int64) * W + ww
            row = tap * C + c0
            if USE_TMA:  # out-of-bounds rows / columns of the box read as zeros: the padding
                a = XD.load([f + dt, h0 + dh, w0 + dw, c0]).reshape(BLOCK_M, BLOCK_K)
                b1 = WD1.load([n0, row])
            else:
                a = tl.load(X + pix[:, None] * C + c0 + k[None, :], mask=ok[:, None], other=0)
                b1 = tl.load(Wt + (n0 + tl.arange(0, N1))[:, None] * K_ALL + row + k[None, :])
            part1 = tl.dot(a, tl.trans(b1), part1, out_dtype=tl.int32)
            if HAS_N2:
                if USE_TMA:
                    b2 = WD2.load([n0 + N1, row])
                else:
                    b2 = tl.load(Wt + (n0 + N1 + tl.arange(0, N2))[:, None] * K_ALL + row + k[None, :])
                part2 = tl.dot(a, tl.trans(b2), part2, out_dtype=tl.int32)
            if PIXEL:
                if c0 == C - BLOCK_K:  # the tap's last slice: its rows have their own scales
                    s = tl.load(S + pix, mask=ok, other=0.0)
                    acc1 += part1.to(tl.float32) * s[:, None]
                    part1 = tl.zeros((BLOCK_M, N1), dtype=tl.int32)
                    if HAS_N2:
                        acc2 += part2.to(tl.float32) * s[:, None]
                        part2 = tl.zeros((BLOCK_M, N2), dtype=tl.int32)
        if not PIXEL:
            s_all = tl.load(S_ALL)
            acc1 = part1.to(tl.float32) * s_all
            acc2 = part2.to(tl.float32) * s_all
        out = ((f * H + mh).to(tl.int64) * W + mw)[:, None] * COUT
        inside = ((mh < H) & (mw < W))[:, None]
        n = n0 + tl.arange(0, N1)
        acc1 *= tl.load(WS + n)[None, :]
        if HAS_BIAS:
            acc1 += tl.load(B + n, mask=n < COUT, other=0.0)[None, :]
        tl.store(Y + out + n[None, :], acc1.to(Y.dtype.element_ty), mask=inside & (n < COUT)[None, :])
        if HAS_N2:
            n = n0 + N1 + tl.arange(0, N2)
            acc2 *= tl.load(WS + n)[None, :]
            if HAS_BIAS:
                acc2 += tl.load(B + n, mask=n < COUT, other=0.0)[None, :]
            tl.store(Y + out + n[None, :], acc2.to(Y.dtype.element_ty), mask=inside & (n < COUT)[None, :])


@dataclass(frozen=True)
class Config:
    block_m: int = 128
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3
    rows: int = 1
    tma: bool = False


def causal_conv_int8(q: torch.Tensor, s: torch.Tensor, conv: PackedConvInt8, out: torch.Tensor,
                     config: Config = Config(), pixel: bool = True,
                     s_all: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out [T, H, W, Cout] (bf16 / float) = the conv of the module docstring over q, s.

    pixel=False: the benchmark's bound, every scale taken as the one float in s_all."""
    if q.dim() != 4 or q.dtype != torch.int8 or q.shape[-1] != conv.cin or q.shape[0] < 3 or not q.is_contiguous():
        raise ValueError(f"causal_conv_int8: q must be a contiguous int8 [2 + T, H, W, {conv.cin}] tensor")
    if s.shape != q.shape[:3] or s.dtype != torch.float32 or not s.is_contiguous():
        raise ValueError("causal_conv_int8: s must be contiguous float32, one scale per pixel of q")
    p_t, h, w, c = q.shape
    if tuple(out.shape) != (p_t - 2, h, w, conv.cout) or not out.is_contiguous():
        raise ValueError(f"causal_conv_int8: out must be a contiguous {(p_t - 2, h, w, conv.cout)} tensor")
    cfg = config
    if c % cfg.block_k or cfg.block_m % cfg.rows:
        raise ValueError(f"causal_conv_int8: {c} channels / block_k={cfg.block_k} do not divide")
    if not rms_silu._use_kernel(q):
        return out.copy_(causal_conv_int8_reference(q, s, conv))
    use_tma = cfg.tma and q.is_cuda and TensorDescriptor is not None
    xd = wd1 = wd2 = None
    if use_tma:
        xd = TensorDescriptor(q, list(q.shape), list(q.stride()), [1, cfg.rows, cfg.block_m // cfg.rows, cfg.block_k])
        wd1 = TensorDescriptor.from_tensor(conv.weight, [conv.n1, cfg.block_k])
        wd2 = TensorDescriptor.from_tensor(conv.weight, [conv.n2, cfg.block_k]) if conv.n2 else wd1
    t = p_t - 2
    grid = (t * triton.cdiv(h, cfg.rows) * triton.cdiv(w, cfg.block_m // cfg.rows), conv.groups)
    has_bias = conv.bias is not None
    _causal_conv_int8_kernel[grid](
        q, xd if use_tma else q, s, conv.weight, wd1 if use_tma else conv.weight, wd2 if use_tma else conv.weight,
        conv.scale, conv.bias if has_bias else conv.scale, out, h, w, conv.cout, s if s_all is None else s_all,
        C=c, N1=conv.n1, N2=max(conv.n2, 16), HAS_N2=conv.n2 > 0, HAS_BIAS=has_bias, USE_TMA=use_tma,
        PIXEL=pixel, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, ROWS=cfg.rows,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
