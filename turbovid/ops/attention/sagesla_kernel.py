"""SageSLA forward in Triton: int8 Q.K^T and fp8 e4m3 P.V with float32 accumulation.

Launches (rules in sagesla_reference.py):
  1. blockmap.block_stats: block map, linear-branch sums, K token mean and max|V| per channel
     (one pass over K and V, one over Q);
  2. quant pass over K and V: smoothed K to int8 per key block, V to fp8 per channel, written
     transposed (B*H, D, L padded) because Hopper's fp8 tensor-core op wants P.V's reduction
     dimension contiguous in both operands;
  3. attention, one program per (query block, b, h): Q is quantized in registers (each query
     block is read by one program only), then online softmax over the kept key blocks with
     integer scores, fp8 P and one fp8 dot per tile added in float32; epilogue as in sla: the
     linear branch and proj_l from the bf16 queries, added before the one store.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import blockmap
from .sagesla_reference import LOG2E, v_scales
from .blockmap import _linear_branch, _store_output
from .sla_kernel import TensorDescriptor
from .sla_reference import LINEAR_EPS

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # fixed when Triton decorates the kernels


@triton.jit
def _to_int8(x):
    return (x + 0.5 * tl.where(x >= 0, 1.0, -1.0)).to(tl.int8)  # round half away from zero


@triton.jit
def _to_fp8(x, EXACT_GRID: tl.constexpr):
    if EXACT_GRID:
        # The CPU interpreter's float32 -> fp8 cast mis-rounds (round-ups across a power of two,
        # subnormals); round to the e4m3 grid first (nearest, ties to even), then the cast is exact.
        bits = x.to(tl.int32, bitcast=True)
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
        xs = x * 512.0
        fl = tl.floor(xs)
        up = (xs - fl > 0.5) | ((xs - fl == 0.5) & ((fl.to(tl.int32) & 1) == 1))
        x = tl.where(tl.abs(x) < 0.015625, tl.where(up, fl + 1.0, fl) / 512.0, normal)
    return x.to(tl.float8e4nv)


@triton.jit
def _quant_kv_kernel(
    K, V, K_MEAN, V_TO_FP8, KQ, K_SCALE, VT, VT2,
    sk_b, sk_l, sk_h, sv_b, sv_l, sv_h,
    L, H, NK, LPAD,
    D: tl.constexpr, BLKK: tl.constexpr, V_TERMS: tl.constexpr, EXACT_GRID: tl.constexpr,
):
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = blk * BLKK + tl.arange(0, BLKK)
    row_ok = rows < L
    d = tl.arange(0, D)
    k = tl.load(K + b * sk_b + h * sk_h + rows[:, None] * sk_l + d[None, :], mask=row_ok[:, None], other=0.0)
    k = tl.where(row_ok[:, None], k.to(tl.float32) - tl.load(K_MEAN + bh * D + d)[None, :], 0.0)
    k_scale = tl.max(tl.max(tl.abs(k), 1), 0) / 127.0 + 1e-7
    tl.store(KQ + (bh.to(tl.int64) * LPAD + rows[:, None]) * D + d[None, :], _to_int8(k / k_scale))
    tl.store(K_SCALE + bh * NK + blk, k_scale)
    v = tl.load(V + b * sv_b + h * sv_h + rows[:, None] * sv_l + d[None, :], mask=row_ok[:, None], other=0.0)
    v = v.to(tl.float32) * tl.load(V_TO_FP8 + bh * D + d)[None, :]
    vt_offs = (bh.to(tl.int64) * D + d[None, :]) * LPAD + rows[:, None]
    v_hi = _to_fp8(v, EXACT_GRID)
    tl.store(VT + vt_offs, v_hi)
    if V_TERMS == 2:
        tl.store(VT2 + vt_offs, _to_fp8(v - v_hi.to(tl.float32), EXACT_GRID))


@triton.jit
def _sage_tile(
    acc, l_i, m_i, q_i8, q_scale, kq_src, vt_src, vt2_src, K_SCALE, lut_row, t, L, LPAD, bh,
    D: tl.constexpr, BLKK: tl.constexpr, MASKED: tl.constexpr, V_TERMS: tl.constexpr,
    TWO_LEVEL: tl.constexpr, EXACT_GRID: tl.constexpr, USE_TMA: tl.constexpr,
):
    r = tl.arange(0, BLKK)
    d = tl.arange(0, D)
    blk = tl.load(lut_row + t)
    keys = blk * BLKK + r
    if USE_TMA:  # descriptors over K (B*H*Lpad, D) and V^T (B*H*D, Lpad)
        k = kq_src.load([bh * LPAD + blk * BLKK, 0])
    else:
        k = tl.load(kq_src + keys[:, None] * D + d[None, :])  # int8, zero-padded past L
    scale = q_scale * tl.load(K_SCALE + blk)  # int scores -> log2 domain (> 0)
    # int32 -> float32 without the slow conversion unit: for |x| < 2^22 the float with bits
    # x + bits(1.5 * 2^23) is exactly 1.5 * 2^23 + x; the offset folds into the FMA below
    s = (tl.dot(q_i8, tl.trans(k), out_dtype=tl.int32) + 0x4B400000).to(tl.float32, bitcast=True)
    if MASKED:
        s = tl.where((keys < L)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, (tl.max(s, 1) - 12582912.0) * scale)
    # p = 448 * exp2(s - m): the fp8 scale rides in the exponent, one FMA + ex2 per score
    shift = m_new + 12582912.0 * scale - 8.807354922057604
    p = tl.math.exp2(s * scale - shift[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if USE_TMA:
        vt = vt_src.load([bh * D, blk * BLKK])  # (D, BLKK) fp8
        if V_TERMS == 2:
            vt2 = vt2_src.load([bh * D, blk * BLKK])
    else:
        vt_offs = d[:, None] * LPAD + keys[None, :]
        vt = tl.load(vt_src + vt_offs)
        if V_TERMS == 2:
            vt2 = tl.load(vt2_src + vt_offs)
    p8 = _to_fp8(p, EXACT_GRID)
    if TWO_LEVEL:
        if V_TERMS == 2:
            pv = tl.dot(p8, tl.trans(vt2))
            pv = tl.dot(p8, tl.trans(vt), pv)
        else:
            pv = tl.dot(p8, tl.trans(vt))
        acc = acc * alpha[:, None] + pv
    else:
        acc = acc * alpha[:, None]
        if V_TERMS == 2:
            acc = tl.dot(p8, tl.trans(vt2), acc)
        acc = tl.dot(p8, tl.trans(vt), acc)
    return acc, l_i, m_new


@triton.jit
def _sagesla_fwd_kernel(
    Q, KQ, K_SCALE, VT, VT2, V_FROM_FP8, O, OQ, OS, LUT, KVW, PHISUM, BIAS,
    sq_b, sq_l, sq_h, so_b, so_l, so_h,
    L, H, NQ, NK, LPAD, KK, qk_scale, lin_eps, ROWS_TOTAL,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLKK: tl.constexpr,
    LIN_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, V_TERMS: tl.constexpr, TWO_LEVEL: tl.constexpr,
    EXACT_GRID: tl.constexpr, USE_TMA: tl.constexpr, OUT_FP8: tl.constexpr = 0,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D)
    q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_l + d[None, :], mask=rows[:, None] < L, other=0.0)
    qf = q.to(tl.float32) * qk_scale
    q_scale = tl.max(tl.max(tl.abs(qf), 1), 0) / 127.0 + 1e-7
    q_i8 = _to_int8(qf / q_scale)

    if USE_TMA:
        kq_src = KQ
        vt_src = VT
        vt2_src = VT2
    else:
        kq_src = KQ + bh.to(tl.int64) * LPAD * D
        vt_src = VT + bh.to(tl.int64) * D * LPAD
        vt2_src = VT2 + bh.to(tl.int64) * D * LPAD
    k_scales = K_SCALE + bh * NK
    lut_row = LUT + (bh * NQ + pid_m).to(tl.int64) * KK
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for t in range(KK - 1):
        acc, l_i, m_i = _sage_tile(acc, l_i, m_i, q_i8, q_scale, kq_src, vt_src, vt2_src, k_scales, lut_row, t,
                                   L, LPAD, bh, D, BLKK, False, V_TERMS, TWO_LEVEL, EXACT_GRID, USE_TMA)
    acc, l_i, m_i = _sage_tile(acc, l_i, m_i, q_i8, q_scale, kq_src, vt_src, vt2_src, k_scales, lut_row, KK - 1,
                               L, LPAD, bh, D, BLKK, True, V_TERMS, TWO_LEVEL, EXACT_GRID, USE_TMA)
    v_from = tl.load(V_FROM_FP8 + bh * D + d)
    o = acc * v_from[None, :] / l_i[:, None]  # l_i carries P's 448
    offs = b * so_b + h * so_h + rows[:, None] * so_l + d[None, :]
    if LIN_MODE == 1:  # linear branch here, from the queries in registers
        o += _linear_branch(q, bh, KVW, PHISUM, BIAS, lin_eps, D, HAS_BIAS)
    if LIN_MODE == 2:  # the query pass already wrote it into the output
        o += tl.load(O + offs, mask=rows[:, None] < L, other=0.0).to(tl.float32)
    _store_output(o, O, OQ, OS, offs, rows, L, h * ROWS_TOTAL + b * L, OUT_FP8, EXACT_GRID)


@dataclass(frozen=True)
class Config:
    num_warps: int = 4
    num_stages: int = 3
    v_terms: int = 2  # fp8 terms of V (see sagesla_reference.py)
    two_level: bool = True  # one dot per tile, added in float32 (see sagesla_reference.py)
    tma: bool = False  # K/V tiles through tensor descriptors (Hopper's bulk copy engine)
    linear_in_pool: bool = False  # linear branch in the query pass (not the attention epilogue)


def default_config(device: torch.device, blkq: int = 64) -> Config:
    # From benchmarks/bench_attention.py's sweeps on an H100 (docs/benchmarks.md); TMA needs sm90+.
    tma = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)
    if blkq >= 128:  # two 64-row warpgroups share each K/V tile (explore_sagesla_map.py's best)
        return Config(num_warps=8, num_stages=2, tma=tma)
    return Config(num_warps=4, num_stages=3, tma=tma)


def quantize_kv(k: torch.Tensor, v: torch.Tensor, stats: blockmap.BlockStats, blkk: int, v_terms: int = 2):
    """int8 smoothed K (B*H, Lpad, D), its block scales (B*H, nk), fp8 V^T (B*H, D, Lpad) and its second
    term (or None), V's per-channel scales."""
    B, L, H, D = k.shape
    nk = triton.cdiv(L, blkk)
    lpad = nk * blkk
    to_fp8, from_fp8 = v_scales(stats.v_absmax)
    kq = torch.empty(B * H, lpad, D, dtype=torch.int8, device=k.device)
    k_scale = torch.empty(B * H, nk, dtype=torch.float32, device=k.device)
    vt = torch.empty(B * H, D, lpad, dtype=torch.float8_e4m3fn, device=k.device)
    vt2 = torch.empty_like(vt) if v_terms == 2 else None
    _quant_kv_kernel[(nk, B * H)](
        k, v, stats.k_mean, to_fp8, kq, k_scale, vt, vt if vt2 is None else vt2,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        L, H, nk, lpad,
        D=D, BLKK=blkk, V_TERMS=v_terms, EXACT_GRID=INTERPRETED, num_warps=4,
    )
    return kq, k_scale, vt, vt2, from_fp8


def sagesla_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: float,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    blkq: int = 64,
    blkk: int = 128,
    config: Config | None = None,
    stats: blockmap.BlockStats | None = None,
    out_fp8: bool | str = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageSLA on [B, L, H, D] fp16/bf16 tensors with unit stride on D; returns [B, L, H, D] in q's
    dtype, or with out_fp8 (head_dim 128) that output quantized for an fp8 linear (as sla_forward)."""
    B, L, H, D = q.shape
    cfg = config or default_config(q.device, blkq)
    stats, lin_mode, out, kvw, phi_sum, bias = blockmap.attention_inputs(
        q, k, v, topk, blkq, blkk, proj_weight, proj_bias, cfg.linear_in_pool, stats, v_absmax=True)
    kq, k_scale, vt, vt2, v_from = quantize_kv(k, v, stats, blkk, cfg.v_terms)
    nq, nk = triton.cdiv(L, blkq), triton.cdiv(L, blkk)
    vt2 = vt if vt2 is None else vt2
    use_tma = cfg.tma and TensorDescriptor is not None
    if use_tma:
        lpad = nk * blkk
        kq = TensorDescriptor.from_tensor(kq.view(B * H * lpad, D), [blkk, D])
        vt, vt2 = (TensorDescriptor.from_tensor(x.view(B * H * D, lpad), [D, blkk]) for x in (vt, vt2))
    mode = blockmap.fp8_mode(out_fp8)
    bound = blockmap.output_bound(blockmap.v_absmax_of(stats, v), proj_weight, proj_bias) if mode == 2 else None
    oq, os_ = blockmap.output_buffers(q, out, mode, bound)
    _sagesla_fwd_kernel[(nq, B * H)](
        q, kq, k_scale, vt, vt2, v_from, out, oq, os_, stats.lut, kvw, phi_sum, bias,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        L, H, nq, nk, nk * blkk, stats.kk, D**-0.5 * LOG2E, LINEAR_EPS / L, B * L,
        D=D, BLOCK_M=blkq, BLKK=blkk, LIN_MODE=lin_mode, HAS_BIAS=proj_bias is not None,
        V_TERMS=cfg.v_terms, TWO_LEVEL=cfg.two_level, EXACT_GRID=INTERPRETED, USE_TMA=use_tma,
        OUT_FP8=mode, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return blockmap.fp8_result(oq, os_, mode) if mode else out
