"""Triton kernels of the per-tensor fp8 rule (fp8_tensor.py): the activation's amax, its quantization
with a given bound (optionally of tanh-GELU(x), fused), and a LayerNorm output's bound.
Imported on first use only (importing turbovid.ops.quant does not import Triton)."""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from turbovid.ops.quant.fp8_tensor import FP8_DTYPE, LN_BOUND_MARGIN, from_norm_bound, scale_of
from turbovid.ops.quant.int8_triton import _e4m3_at_bound


@triton.jit
def _gelu_rounded(x):
    xf = x.to(tl.float32)
    u = 0.7978845608028654 * (xf + 0.044715 * xf * xf * xf)
    return (0.5 * xf * (2.0 * tl.sigmoid(2.0 * u))).to(x.dtype)  # 1 + tanh(u) = 2 sigmoid(2u)


@triton.jit
def _amax_kernel(X, OUT, M, K, stride_xm, GELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rm[:, None] < M) & (rk[None, :] < K)
    x = tl.load(X + rm[:, None].to(tl.int64) * stride_xm + rk[None, :], mask=mask, other=0.0)
    if GELU:
        x = _gelu_rounded(x)
    tl.atomic_max(OUT, tl.max(tl.max(tl.abs(x.to(tl.float32)), axis=1), axis=0))  # exact: order-free


@triton.jit
def _quant_kernel(
    X, BOUND, Q, SCALE, M, K, stride_xm, stride_qm, RN, SA, coef_rn, coef_sa, const,
    GELU: tl.constexpr, FROM_NORM: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m, pid_k = tl.program_id(0), tl.program_id(1)
    if FROM_NORM:  # the bound of a linear's output from its input's largest row norm (fp8_tensor.gelu_bound)
        b = coef_rn * tl.load(RN) + coef_sa * tl.load(SA) + const
        if GELU:
            b = tl.maximum(b, 0.1701)  # tanh-GELU: <= x above 0, >= -0.1700 below
        bound = tl.maximum(b, 1e-8)
    else:
        bound = tl.maximum(tl.load(BOUND), 1e-8)
    if (pid_m == 0) & (pid_k == 0):
        tl.store(SCALE, tl.math.div_rn(bound, tl.full([], 448.0, tl.float32)))
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rm[:, None] < M) & (rk[None, :] < K)
    x = tl.load(X + rm[:, None].to(tl.int64) * stride_xm + rk[None, :], mask=mask, other=0.0)
    if GELU:
        x = _gelu_rounded(x)
    tl.store(Q + rm[:, None].to(tl.int64) * stride_qm + rk[None, :], _e4m3_at_bound(x, bound, INTERPRET), mask=mask)


@triton.jit
def _norm_bound_scales_kernel(RN, SA, S, MULT, coef_rn, coef_sa, const, GELU: tl.constexpr):
    # _quant_kernel's FROM_NORM bound, as (scale, 448 / bound) for a GEMM that quantizes its own output
    b = coef_rn * tl.load(RN) + coef_sa * tl.load(SA) + const
    if GELU:
        b = tl.maximum(b, 0.1701)
    bound = tl.maximum(b, 1e-8)
    tl.store(S, tl.math.div_rn(bound, tl.full([], 448.0, tl.float32)))
    tl.store(MULT, tl.math.div_rn(tl.full([], 448.0, tl.float32), bound))


@triton.jit
def _ln_bound_kernel(
    W, BIAS, SHIFT, SCALE, OUT_B, OUT_S, OUT_RN, C, NB, stride_shift, stride_scale, root, margin,
    HAS_AFFINE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_C: tl.constexpr,
):
    best = tl.zeros([BLOCK_C], tl.float32)
    for b in range(NB):
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            cm = cols < C
            w1 = tl.full([BLOCK_C], 1.0, tl.float32)
            b1 = tl.zeros([BLOCK_C], tl.float32)
            if HAS_AFFINE:
                w1 = tl.load(W + cols, mask=cm, other=0.0).to(tl.float32)
                b1 = tl.load(BIAS + cols, mask=cm, other=0.0).to(tl.float32)
            if HAS_SCALE:
                m = 1.0 + tl.load(SCALE + b * stride_scale + cols, mask=cm, other=0.0).to(tl.float32)
                w1 = w1 * m
                b1 = b1 * m
            if HAS_SHIFT:
                b1 = b1 + tl.load(SHIFT + b * stride_shift + cols, mask=cm, other=0.0).to(tl.float32)
            best = tl.maximum(best, tl.where(cm, root * tl.abs(w1) + tl.abs(b1), 0.0))
    bound = tl.maximum(tl.max(best, axis=0) * margin, 1e-8)
    tl.store(OUT_B, bound)
    tl.store(OUT_S, tl.math.div_rn(bound, tl.full([], 448.0, tl.float32)))
    tl.store(OUT_RN, 0.0)  # the norm kernel's atomic max of its row norms starts here


TILE = 128
QUANT_WARPS = {False: 8, True: 16}  # the GELU's arithmetic wants more threads (as quantize_act)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def quantize(
    x: torch.Tensor, gelu: bool = False, bound: torch.Tensor | None = None,
    from_norm: tuple[torch.Tensor, torch.Tensor, float, float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (or tanh-GELU(x)) -> (e4m3 [M, K], scale [1]). The bound: `bound`, else from_norm =
    (row norm, input scale, coef_rn, coef_sa, const) -> coef_rn * rn + coef_sa * sa + const
    (fp8_tensor.output_bound_coefs; with gelu at least tanh-GELU's 0.1701), else x's own amax (one
    more read of x)."""
    if x.ndim != 2:
        raise ValueError(f"fp8 per-tensor quantize expects a 2-D tensor, got shape {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    m, k = x.shape
    grid = (triton.cdiv(m, TILE), triton.cdiv(k, TILE))
    q = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
    s = torch.empty(1, dtype=torch.float32, device=x.device)
    rn = sa = s
    coefs = (0.0, 0.0, 0.0)
    if from_norm is not None:
        rn, sa, *coefs = from_norm
        bound = s  # unused
    elif bound is None:
        bound = torch.zeros(1, dtype=torch.float32, device=x.device)
        if x.numel():
            _amax_kernel[grid](x, bound, m, k, x.stride(0), GELU=gelu, BLOCK_M=TILE, BLOCK_K=TILE,
                               num_warps=QUANT_WARPS[gelu])
    if x.numel():
        _quant_kernel[grid](x, bound, q, s, m, k, x.stride(0), q.stride(0), rn, sa, *coefs, GELU=gelu,
                            FROM_NORM=from_norm is not None, INTERPRET=_interpreting(),
                            BLOCK_M=TILE, BLOCK_K=TILE, num_warps=QUANT_WARPS[gelu])
    elif from_norm is None:
        s.copy_(scale_of(bound.reshape(1)))
    else:
        s.copy_(scale_of(from_norm_bound(*from_norm, gelu)))
    return q, s


def norm_bound_scales(
    rn: torch.Tensor, sa: torch.Tensor, coef_rn: float, coef_sa: float, const: float, gelu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [1], 448 / bound [1]) for the from_norm bound (fp8_tensor.from_norm_bound), one program."""
    s, mult = (torch.empty(1, dtype=torch.float32, device=rn.device) for _ in range(2))
    _norm_bound_scales_kernel[(1,)](rn, sa, s, mult, coef_rn, coef_sa, const, GELU=gelu, num_warps=1)
    return s, mult


def ln_bound(
    c: int, weight: torch.Tensor | None, bias: torch.Tensor | None, shift: torch.Tensor | None,
    scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bound [1], scale [1], zeroed row-norm slot [1]) as fp8_tensor.ln_bound_reference, one small program."""
    dev = next(t.device for t in (weight, bias, shift, scale) if t is not None)
    nb = next((t.shape[0] for t in (shift, scale) if t is not None), 1)
    bound, out_scale, rn = (torch.empty(1, dtype=torch.float32, device=dev) for _ in range(3))
    _ln_bound_kernel[(1,)](
        weight if weight is not None else bound, bias if bias is not None else bound,
        shift if shift is not None else bound, scale if scale is not None else bound, bound, out_scale, rn, c, nb,
        shift.stride(0) if shift is not None else 0, scale.stride(0) if scale is not None else 0,
        math.sqrt(max(c - 1, 1)), LN_BOUND_MARGIN,
        HAS_AFFINE=weight is not None, HAS_SHIFT=shift is not None, HAS_SCALE=scale is not None,
        BLOCK_C=1024, num_warps=4,
    )
    return bound, out_scale, rn
