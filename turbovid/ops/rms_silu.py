"""Channel RMS normalisation (+ SiLU) over the last, contiguous axis, and a bias + residual add.

rms_silu, per row of C contiguous values (math in float32, one read, one write per destination):
    x = x + bias                                        (optional: the previous conv's bias)
    y = x / max(||x||_2, 1e-12) * sqrt(C) * gamma      (F.normalize semantics)
    y = y * sigmoid(y)                                  (when silu=True)
rms_silu_stream: the same rows, as the input of a causal conv over a stream of frames. The
normalised rows are preceded by the stream's history (the last normalised frames of the previous
chunk; zeros at the start), V = [history; rms_silu(x)], and one launch writes
    taps=1: out = V                                   (the conv's time-padded input buffer)
    taps=3: out[r, tau*C:(tau+1)*C] = V[r + tau*F]    (F rows per frame: the three time taps laid
                                                       side by side, for a 3x3x3 conv run as one
                                                       2D conv over 3C channels, models/vae_fast.py)
and the new history, the last rows of V, into `history_out`: no copies of the history in and out
of the buffers in separate passes.

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
    def _normalize(X, G, B, rows, cols, N, C, scale, SILU: tl.constexpr, HAS_BIAS: tl.constexpr,
                   R=None, XO=None, HAS_RES: tl.constexpr = False, WRITE_X: tl.constexpr = False):
        col_ok = cols[None, :] < C
        mask = (rows[:, None] >= 0) & (rows[:, None] < N) & col_ok
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(B + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
            x = tl.where(col_ok, x, 0.0)
        if HAS_RES:  # x + bias + residual, rounded as add_bias_residual_ stores it, then normalised
            x = (x + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)).to(X.dtype.element_ty)
            if WRITE_X:
                tl.store(XO + offs, x, mask=mask)
            x = x.to(tl.float32)
        norm = tl.sqrt(tl.sum(x * x, axis=1))
        inv = scale / tl.maximum(norm, 1e-12)
        g = tl.load(G + cols, mask=cols < C, other=0.0).to(tl.float32)
        y = x * inv[:, None] * g[None, :]
        if SILU:
            y = y * tl.sigmoid(y)
        return y

    @triton.jit
    def _rms_silu_kernel(X, G, B, Y, N, C, y_stride, scale, SILU: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        cols = tl.arange(0, BLOCK_C)  # (BLOCK_C,)
        y = _normalize(X, G, B, rows, cols, N, C, scale, SILU, HAS_BIAS)
        mask = (rows[:, None] < N) & (cols[None, :] < C)
        tl.store(Y + rows[:, None].to(tl.int64) * y_stride + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _rms_silu_stream_kernel(X, H, G, B, Y, HN, R, XO, N, C, HR, N_OUT, y_stride, frame_rows, scale,
                                SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_HIST: tl.constexpr,
                                TAPS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                                HAS_RES: tl.constexpr = False, WRITE_X: tl.constexpr = False, SKIP=0, V0=0):
        # rows of V = [history (HR rows, already normalised); rms_silu(x) (N rows)]; out's row r takes
        # V's row r + SKIP (+ the tap's offset); the launch covers V's rows from V0 on
        v = V0 + tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        col_ok = cols[None, :] < C
        in_v = (v[:, None] < HR + N) & col_ok
        y = _normalize(X, G, B, v - HR, cols, N, C, scale, SILU, HAS_BIAS, R, XO, HAS_RES, WRITE_X)
        y = y.to(Y.dtype.element_ty)
        is_hist = (v < HR)[:, None]
        if HAS_HIST:
            h = tl.load(H + v[:, None].to(tl.int64) * C + cols[None, :], mask=is_hist & col_ok, other=0.0)
            y = tl.where(is_hist, h.to(Y.dtype.element_ty), y)
        else:  # the start of the stream: zero frames
            y = tl.where(is_hist, 0.0, y).to(Y.dtype.element_ty)
        for tap in tl.static_range(TAPS):
            dst = v - tap * frame_rows - SKIP  # out[r, tap] = V[r + tap * frame_rows + SKIP]
            m = in_v & (dst[:, None] >= 0) & (dst[:, None] < N_OUT)
            tl.store(Y + dst[:, None].to(tl.int64) * y_stride + tap * C + cols[None, :], y, mask=m)
        new = v - N  # the last HR rows of V are the next chunk's history
        tl.store(HN + new[:, None].to(tl.int64) * C + cols[None, :], y, mask=in_v & (new[:, None] >= 0))

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


def _check_rows(x: torch.Tensor, gamma: torch.Tensor, bias: Optional[torch.Tensor]) -> int:
    c = x.shape[-1]
    if gamma.numel() != c or (bias is not None and bias.numel() != c):
        raise ValueError(f"gamma / bias must have {c} values (one per channel)")
    if not x.is_contiguous():
        raise ValueError("rms_silu needs a contiguous [..., C] tensor (channels last)")
    return c


def _blocks(c: int) -> tuple[int, int]:
    """(rows, padded channels) a program: 4096 elements up to 256 channels, 8192 past them. On an
    H100 at the 480p decode's shapes (benchmarks/explore_vae_passes.py) the stream kernel ran 0.625
    vs 0.643 ms at 96 channels (32 vs 64 rows), 0.203 vs 0.212 ms at 192 (16 vs 32 rows), where a
    copy of its bytes takes 0.51 / 0.18 ms; at 384 channels 16 rows stayed the best of 16-64."""
    block_c = triton.next_power_of_2(c)
    return max(1, min(64, (4096 if block_c <= 256 else 8192) // block_c)), block_c


def rms_silu(
    x: torch.Tensor, gamma: torch.Tensor, silu: bool = True, out: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """RMS-normalise the rows of x ([..., C], contiguous) with gamma [C] (+ SiLU); into `out` if given."""
    c = _check_rows(x, gamma, bias)
    if out is None:
        out = x.new_empty(x.shape)
    elif out.shape != x.shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {tuple(x.shape)} tensor, got {tuple(out.shape)}")
    n = x.numel() // c
    if not _use_kernel(x):
        out.copy_(rms_silu_reference(x, gamma, silu, bias))
        return out
    block_n, block_c = _blocks(c)
    _rms_silu_kernel[(triton.cdiv(n, block_n),)](
        x, gamma.contiguous(), gamma if bias is None else bias.contiguous(), out, n, c, c, float(c) ** 0.5,
        SILU=silu, HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=4,
    )
    return out


def rms_silu_stream(
    x: torch.Tensor, gamma: torch.Tensor, silu: bool, out: torch.Tensor, history: Optional[torch.Tensor],
    history_out: torch.Tensor, taps: int, frame_rows: int, bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None, x_out: Optional[torch.Tensor] = None, with_history: bool = True,
) -> torch.Tensor:
    """rms_silu of x ([..., C] contiguous) as a causal conv's input, after `history` (see the module
    docstring). history / history_out: [..., C] with the same number of rows (None: zeros, the
    start of the stream); taps=3: history holds 2 * frame_rows rows and out is [rows of x, 3C];
    taps=1: out is [history rows + rows of x, C], or with with_history=False the rows of x alone (a
    conv that reads the history where it is). With `residual` (like x) the rows normalised are
    add_bias_residual_(x, bias, residual)'s, computed in the same pass and stored into `x_out` if
    given (x itself is left as it is). Returns out."""
    c = _check_rows(x, gamma, bias)
    if residual is not None and (bias is None or residual.shape != x.shape or not residual.is_contiguous()):
        raise ValueError("rms_silu_stream: a residual needs a bias and must be contiguous like x")
    if x_out is not None and (residual is None or x_out.shape != x.shape or not x_out.is_contiguous()
                              or x_out.dtype != x.dtype):
        raise ValueError("rms_silu_stream: x_out takes the residual sum: contiguous, x's shape and dtype")
    n, hr = x.numel() // c, history_out.numel() // c
    if taps not in (1, 3) or (taps == 3 and hr != 2 * frame_rows):
        raise ValueError("taps must be 1, or 3 with a history of 2 * frame_rows rows")
    if not with_history and taps != 1:
        raise ValueError("rms_silu_stream: with_history=False is for taps=1")
    n_out = n if taps == 3 or not with_history else hr + n
    skip = 0 if with_history else hr  # rows of V before out's first
    for name, t, rows in (("out", out, n_out * taps), ("history_out", history_out, hr), ("history", history, hr)):
        if t is not None and (t.numel() != rows * c or not t.is_contiguous() or t.dtype != x.dtype):
            raise ValueError(f"rms_silu_stream: {name} must be contiguous {x.dtype} with {rows} rows of {c}")
    if history is not None and history.data_ptr() == history_out.data_ptr():
        raise ValueError("rms_silu_stream: history_out must not alias history")
    if not _use_kernel(x):
        if residual is not None:  # the unfused pair, as the kernel reproduces it
            x = add_bias_residual_(x.clone(), bias, residual)
            if x_out is not None:
                x_out.copy_(x)
            bias = None
        y = rms_silu_reference(x, gamma, silu, bias).reshape(n, c)
        hist = history.reshape(hr, c) if history is not None else y.new_zeros(hr, c)
        v = torch.cat([hist, y])
        o = out.view(n_out, taps * c)
        for tap in range(taps):
            o[:, tap * c:(tap + 1) * c] = v[skip + tap * frame_rows: skip + tap * frame_rows + n_out]
        history_out.view(hr, c).copy_(v[n:])
        return out
    block_n, block_c = _blocks(c)
    v0 = skip if n >= hr else 0  # the history rows are read only for out or the next history
    _rms_silu_stream_kernel[(triton.cdiv(hr + n - v0, block_n),)](
        x, x if history is None else history, gamma.contiguous(), gamma if bias is None else bias.contiguous(),
        out, history_out, x if residual is None else residual, x if x_out is None else x_out,
        n, c, hr, n_out, taps * c, frame_rows, float(c) ** 0.5,
        SILU=silu, HAS_BIAS=bias is not None, HAS_HIST=history is not None, TAPS=taps,
        BLOCK_N=block_n, BLOCK_C=block_c, HAS_RES=residual is not None, WRITE_X=x_out is not None, SKIP=skip, V0=v0,
        num_warps=4,
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
