"""Channel RMS normalisation (+ SiLU) over the last, contiguous axis, and a bias + residual add.

rms_silu, per row of C contiguous values (math in float32, one read, one write per destination):
    x = x + bias                                        (optional: the previous conv's bias)
    y = x / max(||x||_2, 1e-12) * sqrt(C) * gamma      (F.normalize semantics)
    y = y * sigmoid(y)                                  (when silu=True)
With taps=3 the row is written three times, as the three time taps of a causal conv laid out
as channels: `out` is [N, 3C] and row r goes to out[r + (2 - tau) * frame_rows, tau*C:(tau+1)*C]
for tau = 0, 1, 2 wherever that row exists (< N). A 3x3x3 conv then runs as one 2D conv with
3C input channels (see models/vae_fast.py).

add_bias_residual_(y, bias, res): y += bias + res in one pass (the conv bias PyTorch would add
in a separate broadcast pass, fused with the residual add).

The Triton kernels run on CUDA tensors; elsewhere the PyTorch reference runs, logged once (on
CPU the kernels run in Triton's interpreter only after allow_interpreter(), for tests).
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


def rms_silu_reference(x: torch.Tensor, gamma: torch.Tensor, silu: bool = True,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    c = x.shape[-1]
    xf = x.float() if bias is None else x.float() + bias.float()
    y = F.normalize(xf, dim=-1) * (c**0.5) * gamma.float()
    return (F.silu(y) if silu else y).to(x.dtype)


if triton is not None:

    @triton.jit
    def _rms_silu_kernel(X, G, B, Y, N, C, y_stride, shift, scale, SILU: tl.constexpr, HAS_BIAS: tl.constexpr,
                         TAPS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        cols = tl.arange(0, BLOCK_C)  # (BLOCK_C,)
        col_ok = cols[None, :] < C
        mask = (rows[:, None] < N) & col_ok
        x = tl.load(X + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(B + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
            x = tl.where(col_ok, x, 0.0)
        norm = tl.sqrt(tl.sum(x * x, axis=1))
        inv = scale / tl.maximum(norm, 1e-12)
        g = tl.load(G + cols, mask=cols < C, other=0.0).to(tl.float32)
        y = x * inv[:, None] * g[None, :]
        if SILU:
            y = y * tl.sigmoid(y)
        y = y.to(Y.dtype.element_ty)
        for tap in tl.static_range(TAPS):
            dst = rows + (TAPS - 1 - tap) * shift  # destination row of this tap
            m = mask & (dst[:, None] < N)
            tl.store(Y + dst[:, None].to(tl.int64) * y_stride + tap * C + cols[None, :], y, mask=m)

    @triton.jit
    def _add_bias_residual_kernel(Y, B, R, total, C, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < total
        y = tl.load(Y + offs, mask=m, other=0.0).to(tl.float32)
        y += tl.load(B + offs % C, mask=m, other=0.0).to(tl.float32)
        if HAS_RES:
            y += tl.load(R + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=m)


_allow_interpreter = False


def allow_interpreter(flag: bool = True) -> None:
    """Let CPU tensors run the kernels in Triton's interpreter (tests only, under TRITON_INTERPRET=1).

    Opt-in rather than implied by the environment variable: other test modules set it, and the
    interpreter is far too slow for the real CPU path."""
    global _allow_interpreter
    _allow_interpreter = flag


def _use_kernel(x: torch.Tensor) -> bool:
    global _logged
    interpret = _allow_interpreter and x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if triton is not None and (x.is_cuda or interpret):
        return True
    if not _logged:
        _logged = True
        why = "triton is not installed" if triton is None else f"tensors on {x.device.type}"
        log.info("rms_silu / add_bias_residual_: PyTorch reference (%s)", why)
    return False


def rms_silu(
    x: torch.Tensor, gamma: torch.Tensor, silu: bool = True, out: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None, taps: int = 1, frame_rows: int = 0,
) -> torch.Tensor:
    """RMS-normalise the rows of x ([..., C], contiguous) with gamma [C] (+ SiLU); into `out` if given.

    taps=3: `out` is [..., 3C] (same rows) and receives the three time-shifted copies described
    in the module docstring; rows of `out` that no source row reaches are left untouched.
    """
    c = x.shape[-1]
    if gamma.numel() != c or (bias is not None and bias.numel() != c):
        raise ValueError(f"gamma / bias must have {c} values (one per channel)")
    if not x.is_contiguous():
        raise ValueError("rms_silu needs a contiguous [..., C] tensor (channels last)")
    if taps not in (1, 3):
        raise ValueError("taps must be 1 or 3")
    want = (*x.shape[:-1], c * taps)
    if out is None:
        out = x.new_empty(want)
    elif tuple(out.shape) != want or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {want} tensor, got {tuple(out.shape)}")
    n = x.numel() // c
    if not _use_kernel(x):
        y = rms_silu_reference(x, gamma, silu, bias).reshape(n, c)
        o = out.view(n, taps * c)
        for tap in range(taps):
            s = (taps - 1 - tap) * frame_rows
            if s < n:
                o[s:, tap * c:(tap + 1) * c] = y[: n - s]
        return out
    block_c = triton.next_power_of_2(c)
    block_n = max(1, min(64, 8192 // block_c))
    _rms_silu_kernel[(triton.cdiv(n, block_n),)](
        x, gamma.contiguous(), gamma if bias is None else bias.contiguous(), out, n, c, taps * c, frame_rows,
        float(c) ** 0.5, SILU=silu, HAS_BIAS=bias is not None, TAPS=taps,
        BLOCK_N=block_n, BLOCK_C=block_c, num_warps=4,
    )
    return out


def add_bias_residual_(y: torch.Tensor, bias: torch.Tensor, res: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y += bias (+ res), in place; y and res contiguous [..., C], bias [C]."""
    c = y.shape[-1]
    if bias.numel() != c or not y.is_contiguous() or (res is not None and (res.shape != y.shape or not res.is_contiguous())):
        raise ValueError("add_bias_residual_ needs contiguous y/res of one shape and a bias of C values")
    if not _use_kernel(y):
        if res is not None:
            y.add_(res)
        return y.add_(bias)
    total, block = y.numel(), 2048
    _add_bias_residual_kernel[(triton.cdiv(total, block),)](
        y, bias.contiguous(), y if res is None else res, total, c, HAS_RES=res is not None, BLOCK=block, num_warps=4,
    )
    return y
