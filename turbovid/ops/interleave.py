"""Interleaves of the VAE's upsamplers, with the conv bias added, as one Triton pass each.

PyTorch ran them as a bias add over a permuted 6-D view: its generic, unvectorised elementwise
kernel, ~25 ms of a 480p decode on an H100 (docs/benchmarks.md).

subpixel_(o, bias, y): the 2x2 conv that computes a 2x nearest upsample + 3x3 conv writes the four
    output phases as channel groups; y[n, i, py, j, px, :] = o[n, i + py, j + px, g C : (g + 1) C]
    + bias with g = 2 py + px. o: (N, H + 1, W + 1, 4C), y: (N, H, 2, W, 2, C), both contiguous.
frames_(src, bias, out): the time conv's channel halves are consecutive output frames;
    out[b, t, k, h, w, :] = src[b, t, h, w, k C : (k + 1) C] + bias[k C : (k + 1) C] for k = 0, 1.
    src: (B, T, H, W, 2C), out: (B, T, 2, H, W, C), both contiguous.

The kernels run on CUDA tensors; elsewhere the PyTorch ops run (on CPU the kernels run in
Triton's interpreter after rms_silu.allow_interpreter(), for tests).
"""
from __future__ import annotations

import torch

from turbovid.ops import rms_silu

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


if triton is not None:

    @triton.jit
    def _subpixel_kernel(O, B, Y, H, W, C, BJ: tl.constexpr, BC: tl.constexpr):
        row = tl.program_id(0)  # n * H + i
        py = tl.program_id(1)
        n = row // H
        i = row % H
        j = tl.program_id(2) * BJ + tl.arange(0, BJ)
        c = tl.arange(0, BC)
        m = (j < W)[:, None] & (c < C)[None, :]
        bias = tl.load(B + c, mask=c < C, other=0.0).to(tl.float32)[None, :]
        for px in tl.static_range(2):
            src = ((n * (H + 1) + i + py) * (W + 1) + j + px).to(tl.int64) * (4 * C) + (2 * py + px) * C
            v = tl.load(O + src[:, None] + c[None, :], mask=m, other=0.0).to(tl.float32) + bias
            dst = (((row * 2 + py) * W + j) * 2 + px).to(tl.int64) * C
            tl.store(Y + dst[:, None] + c[None, :], v.to(Y.dtype.element_ty), mask=m)

    @triton.jit
    def _frames_kernel(S, B, X, R, HW, C, BR: tl.constexpr, BC: tl.constexpr):
        r = tl.program_id(0) * BR + tl.arange(0, BR)  # (b, t, h, w) rows of src
        k = tl.program_id(1)
        c = tl.arange(0, BC)
        m = (r < R)[:, None] & (c < C)[None, :]
        v = tl.load(S + r.to(tl.int64)[:, None] * (2 * C) + k * C + c[None, :], mask=m, other=0.0).to(tl.float32)
        v += tl.load(B + k * C + c, mask=c < C, other=0.0).to(tl.float32)[None, :]
        dst = ((r // HW) * 2 + k).to(tl.int64) * HW + r % HW
        tl.store(X + dst[:, None] * C + c[None, :], v.to(X.dtype.element_ty), mask=m)


def _check(name: str, a: torch.Tensor, shape: tuple, b: torch.Tensor, bias: torch.Tensor, channels: int) -> None:
    if tuple(a.shape) != shape or not a.is_contiguous() or not b.is_contiguous() or bias.numel() != channels:
        raise ValueError(f"{name}: expected contiguous tensors of shapes {tuple(b.shape)} -> {shape} "
                         f"and a bias of {channels} values")


def subpixel_(o: torch.Tensor, bias: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y = the four phases of o interleaved 2x2 in space, plus bias (see the module docstring)."""
    n, h, _, w, _, c = y.shape
    _check("subpixel_", o, (n, h + 1, w + 1, 4 * c), y, bias, c)
    if not rms_silu._use_kernel(o):
        s = o.stride()
        phases = o.as_strided((n, h, 2, w, 2, c), (s[0], s[1], s[1] + 2 * c, s[2], s[2] + c, 1))
        return torch.add(phases, bias, out=y)
    bc = triton.next_power_of_2(c)
    bj = max(1, 4096 // bc)
    _subpixel_kernel[(n * h, 2, triton.cdiv(w, bj))](o, bias.contiguous(), y, h, w, c, BJ=bj, BC=bc, num_warps=4)
    return y


def frames_(src: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = the two channel halves of src as consecutive frames, plus bias (see the module docstring)."""
    b, t, _, h, w, c = out.shape
    _check("frames_", src, (b, t, h, w, 2 * c), out, bias, 2 * c)
    if not rms_silu._use_kernel(src):
        halves = src.view(b, t, h, w, 2, c).permute(0, 1, 4, 2, 3, 5)
        return torch.add(halves, bias.view(2, 1, 1, c), out=out)
    bc = triton.next_power_of_2(c)
    br = max(1, 4096 // bc)
    rows = b * t * h * w
    _frames_kernel[(triton.cdiv(rows, br), 2)](src, bias.contiguous(), out, rows, h * w, c, BR=br, BC=bc, num_warps=4)
    return out
