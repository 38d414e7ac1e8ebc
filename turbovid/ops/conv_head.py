"""The VAE decoder's head, RMS norm + SiLU + a causal 3x3x3 conv to a few channels (96 -> 3 RGB),
computed by taps so that each input pixel is read once.

With 3 output channels the conv is all input traffic: cuDNN and our implicit-GEMM kernel
(causal_conv.py) both took ~1.1 ms a 4-frame 480p chunk on an H100 (~22 TFLOP/s), reading every
pixel once per tap, after the norm kernel had written the normalised input. Here:

    project: Z[tap, r, :] = rms_silu(x)[r] @ W[:, :, tap]^T for all 27 taps in one dot per row
             block (the norm and the dot in one kernel; the normalised input is never stored)
    gather:  out[f, h, w, :] = bias + sum over taps of Z[tap, f + dt, h + dh - 1, w + dw - 1, :]
             (zero outside the frame; frames f + dt < 2 are the previous chunk's last two, the
             stream history, zeros at the start)

Z is float32, tap-major [27, T, H, W, Cout]: the sum is the conv's, in another order. The PyTorch
reference of both steps runs where the kernels cannot (no Triton, CPU tensors outside tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from turbovid.ops import rms_silu
from turbovid.ops.causal_conv import dot_precision, tile_grid
from turbovid.ops.rms_silu import add_bias_residual_, rms_silu_reference

try:
    import triton
    import triton.language as tl

    from turbovid.ops.causal_conv import frame_tile
    from turbovid.ops.rms_silu import _normalize
except ImportError:  # pragma: no cover - depends on the install
    triton = None

MAX_COUT = 16  # heads up to this many output channels go by taps
# The projection's launch, and Z's dtype: float32, 64 pixels a program on 4 warps measured fastest
# on an H100 (float16 Z: 1.30 vs 1.26 ms a 4-frame 480p chunk; 128 / 256 pixels: 1.65-2.05 ms;
# benchmarks/explore_head.py)
BLOCK_N = 64
NUM_WARPS = 4


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


def project_reference(x: torch.Tensor, gamma: torch.Tensor, head: PackedHead, silu: bool = True,
                      bias: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
                      x_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    if residual is not None:  # the residual sum rounded as add_bias_residual_ stores it
        x, bias = add_bias_residual_(x.clone(), bias, residual), None
        if x_out is not None:
            x_out.copy_(x)
    y = rms_silu_reference(x, gamma, silu, bias).float()  # normalised, rounded to x's dtype
    t, h, w, c = y.shape
    z = y.reshape(-1, c) @ head.weight.reshape(head.cout, c, 27).permute(1, 2, 0).reshape(c, 27 * head.cout)
    return z.reshape(t, h, w, 27, head.cout).permute(3, 0, 1, 2, 4).contiguous()


def gather_reference(z: torch.Tensor, history: Optional[torch.Tensor], head: PackedHead) -> torch.Tensor:
    _, t, h, w, c = z.shape
    hist = history if history is not None else z.new_zeros(27, 2, h, w, c)
    v = torch.nn.functional.pad(torch.cat([hist, z], 1), (0, 0, 1, 1, 1, 1))  # zeros around H and W
    out = z.new_zeros(t, h, w, c) if head.bias is None else head.bias.expand(t, h, w, c).clone()
    for tap in range(27):
        dt, dh, dw = tap // 9, tap // 3 % 3, tap % 3
        out += v[tap, dt:dt + t, dh:dh + h, dw:dw + w]
    return out


if triton is not None:

    @triton.jit
    def _project_kernel(X, G, B, R, XO, WZ, Z, N, C, COUT, plane, scale, SILU: tl.constexpr,
                        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, WRITE_X: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_C: tl.constexpr, CP: tl.constexpr, P: tl.constexpr, PRECISION: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        y = _normalize(X, G, B, rows, cols, N, C, scale, SILU, HAS_BIAS, R, XO, HAS_RES, WRITE_X)
        y = y.to(X.dtype.element_ty)  # the conv's input, as the unfused path stores it
        j = tl.arange(0, P)
        z = tl.dot(y, tl.load(WZ + cols[:, None] * P + j[None, :]), input_precision=PRECISION)
        tap = j // CP
        o = j % CP
        ok = (rows < N)[:, None] & ((tap < 27) & (o < COUT))[None, :]
        dst = tap[None, :].to(tl.int64) * plane + rows[:, None].to(tl.int64) * COUT + o[None, :]
        tl.store(Z + dst, z.to(Z.dtype.element_ty), mask=ok)

    @triton.jit
    def _gather_kernel(ZH, ZC, B, Y, T, H, W, COUT, HAS_HIST: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, ROWS: tl.constexpr, CP: tl.constexpr):
        f, h0, w0, mh, mw = frame_tile(H, W, BLOCK_M, ROWS)
        o = tl.arange(0, CP)
        o_ok = (o < COUT)[None, :]
        acc = tl.zeros((BLOCK_M, CP), dtype=tl.float32)
        hw = H * W
        for tap in tl.static_range(27):
            g = f + tap // 9 + 0 * mh  # frame of [history (2); this chunk (T)], as a vector for the masks
            hh = mh + (tap // 3) % 3 - 1
            ww = mw + tap % 3 - 1
            ok = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            pix = (hh * W + ww).to(tl.int64)
            cur = ((tap * T + g - 2) * hw + pix) * COUT
            acc += tl.load(ZC + cur[:, None] + o[None, :], mask=(ok & (g >= 2))[:, None] & o_ok,
                           other=0.0).to(tl.float32)
            if HAS_HIST:
                hist = ((tap * 2 + g) * hw + pix) * COUT
                acc += tl.load(ZH + hist[:, None] + o[None, :], mask=(ok & (g < 2))[:, None] & o_ok,
                               other=0.0).to(tl.float32)
        if HAS_BIAS:
            acc += tl.load(B + o, mask=o < COUT, other=0.0)[None, :]
        dst = ((f * H + mh).to(tl.int64) * W + mw) * COUT
        tl.store(Y + dst[:, None] + o[None, :], acc.to(Y.dtype.element_ty), mask=((mh < H) & (mw < W))[:, None] & o_ok)


def project(x: torch.Tensor, gamma: torch.Tensor, head: PackedHead, silu: bool = True,
            bias: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
            x_out: Optional[torch.Tensor] = None, z_dtype: torch.dtype = torch.float32,
            block_n: Optional[int] = None, num_warps: Optional[int] = None) -> torch.Tensor:
    """x [T, H, W, C] contiguous (with `residual`: the rows are x + bias + residual, stored into x_out
    if given) -> Z [27, T, H, W, Cout] in z_dtype (the products summed in float32, then rounded),
    the per-tap products of rms_silu(x). block_n / num_warps: the launch (BLOCK_N / NUM_WARPS)."""
    if x.dim() != 4 or x.shape[-1] != head.cin or not x.is_contiguous():
        raise ValueError(f"conv_head.project: x must be a contiguous [T, H, W, {head.cin}] tensor, got {tuple(x.shape)}")
    if residual is not None and (bias is None or residual.shape != x.shape or not residual.is_contiguous()):
        raise ValueError("conv_head.project: a residual needs a bias and must be contiguous like x")
    if x_out is not None and (residual is None or x_out.shape != x.shape or not x_out.is_contiguous()
                              or x_out.dtype != x.dtype):
        raise ValueError("conv_head.project: x_out takes the residual sum: contiguous, x's shape and dtype")
    if x.dtype != head.wz.dtype:
        raise ValueError(f"conv_head.project: x is {x.dtype}, the packed weights {head.wz.dtype}")
    t, h, w, c = x.shape
    if not z_dtype.is_floating_point:
        raise ValueError(f"conv_head.project: z_dtype must be a float type, got {z_dtype}")
    if not rms_silu._use_kernel(x):
        return project_reference(x, gamma, head, silu, bias, residual, x_out).to(z_dtype)
    n = t * h * w
    z = torch.empty(27, t, h, w, head.cout, dtype=z_dtype, device=x.device)
    block_c, p = head.wz.shape
    block_n = block_n or BLOCK_N
    _project_kernel[(triton.cdiv(n, block_n),)](
        x, gamma.contiguous(), gamma if bias is None else bias.contiguous(), x if residual is None else residual,
        x if x_out is None else x_out, head.wz, z, n, c, head.cout, n * head.cout, float(c) ** 0.5, SILU=silu,
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, WRITE_X=x_out is not None, BLOCK_N=block_n,
        BLOCK_C=block_c, CP=head.cp, P=p, PRECISION=dot_precision(x), num_warps=num_warps or NUM_WARPS,
    )
    return z


def gather(z: torch.Tensor, history: Optional[torch.Tensor], head: PackedHead, dtype: torch.dtype) -> torch.Tensor:
    """Z [27, T, H, W, Cout] (+ the previous chunk's last two frames of it) -> the conv [T, H, W, Cout] in
    dtype, summed in float32."""
    _, t, h, w, c = z.shape
    if history is not None and (tuple(history.shape) != (27, 2, h, w, c) or not history.is_contiguous()
                                or history.dtype != z.dtype):
        raise ValueError(f"conv_head.gather: history must be a contiguous {(27, 2, h, w, c)} {z.dtype} tensor")
    if not rms_silu._use_kernel(z):
        return gather_reference(z.float(), None if history is None else history.float(), head).to(dtype)
    out = torch.empty(t, h, w, c, dtype=dtype, device=z.device)
    block_m, rows = 256, 4
    _gather_kernel[tile_grid(t, h, w, block_m, rows)](
        z if history is None else history, z, z if head.bias is None else head.bias, out, t, h, w, c,
        HAS_HIST=history is not None, HAS_BIAS=head.bias is not None, BLOCK_M=block_m, ROWS=rows, CP=head.cp,
        num_warps=4,
    )
    return out


def next_history(z: torch.Tensor, history: Optional[torch.Tensor]) -> torch.Tensor:
    """The last two frames of [history; z] (zeros before the stream's start), for the next chunk."""
    if z.shape[1] >= 2:
        return z[:, -2:].clone()
    prev = history if history is not None else z.new_zeros(27, 2, *z.shape[2:])
    return torch.cat([prev[:, 1:], z], 1)
