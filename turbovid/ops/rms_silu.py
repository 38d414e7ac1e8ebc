"""Channel RMS normalisation (+ optional SiLU) over the last, contiguous axis, in one pass.

    y = x / max(||x||_2, 1e-12) * sqrt(C) * gamma      (F.normalize semantics, math in float32)
    y = y * sigmoid(y)                                  (when silu=True)

Rows of C contiguous values ([..., C] channels-last activations). The Triton kernel reads each
row once and writes it once, into `out` if given (e.g. a slice of a larger buffer, which saves
the copy that a torch.cat would make). The PyTorch reference runs where Triton cannot (CPU,
no Triton), logged once; on CPU the kernel runs in Triton's interpreter when TRITON_INTERPRET=1.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.nn.functional as F

log = logging.getLogger("turbovid.ops")

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

_logged = False


def rms_silu_reference(x: torch.Tensor, gamma: torch.Tensor, silu: bool = True) -> torch.Tensor:
    c = x.shape[-1]
    y = F.normalize(x.float(), dim=-1) * (c**0.5) * gamma.float()
    return (F.silu(y) if silu else y).to(x.dtype)


if triton is not None:

    @triton.jit
    def _rms_silu_kernel(X, G, Y, N, C, scale, SILU: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        cols = tl.arange(0, BLOCK_C)  # (BLOCK_C,)
        mask = (rows[:, None] < N) & (cols[None, :] < C)
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_C)
        norm = tl.sqrt(tl.sum(x * x, axis=1))
        inv = scale / tl.maximum(norm, 1e-12)
        g = tl.load(G + cols, mask=cols < C, other=0.0).to(tl.float32)
        y = x * inv[:, None] * g[None, :]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


def _use_kernel(x: torch.Tensor) -> bool:
    global _logged
    if triton is not None and (x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")):
        return True
    if not _logged:
        _logged = True
        why = "triton is not installed" if triton is None else f"tensors on {x.device.type}"
        log.info("rms_silu: PyTorch reference (%s)", why)
    return False


def rms_silu(
    x: torch.Tensor, gamma: torch.Tensor, silu: bool = True, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """RMS-normalise the rows of x ([..., C], contiguous) with gamma [C], then SiLU; into `out` if given."""
    c = x.shape[-1]
    if gamma.numel() != c:
        raise ValueError(f"gamma has {gamma.numel()} values for {c} channels")
    if not x.is_contiguous():
        raise ValueError("rms_silu needs a contiguous [..., C] tensor (channels last)")
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {tuple(x.shape)} tensor, got {tuple(out.shape)}")
    if not _use_kernel(x):
        out.copy_(rms_silu_reference(x, gamma, silu))
        return out
    n = x.numel() // c
    block_c = triton.next_power_of_2(c)
    block_n = max(1, min(64, 8192 // block_c))
    _rms_silu_kernel[(triton.cdiv(n, block_n),)](
        x, gamma.contiguous(), out, n, c, float(c) ** 0.5,
        SILU=silu, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=4,
    )
    return out
