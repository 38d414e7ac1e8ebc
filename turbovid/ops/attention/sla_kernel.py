"""SLA forward as one Triton attention kernel (bf16/fp16), plus the block-map launches of blockmap.py.

One program per (query block of BLOCK_M = blkq tokens, b, h):
  1. online-softmax attention over the kept key blocks (ascending, from the block map), GROUP
     blocks of BLKK keys per softmax step, either gathered row by row into one tile (pointer
     loads) or as GROUP descriptor loads (TMA) with a dot pair each; only the last step can be
     partial or hold the ragged last key block, so only it is masked;
  2. epilogue: the linear branch for the same queries, phi(q) @ (phi(K)^T V W^T) /
     (phi(q) . sum phi(K)) + b (proj_l folded into phi(K)^T V), added to the sparse output; one
     store. Computed here (LIN_MODE 1), or by the query pass into the output buffer and read
     back here (Config.linear_in_pool, LIN_MODE 2: the default for head_dim 128, whose 4-warp
     attention loop has no registers to spare for it).
Consecutive programs share (b, h), so the gathered K/V blocks of a head stay in L2.
On sm_90 the attention launch is sla_gluon's warp-specialized kernel where it can run (Config.gluon).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: pointer loads only
    TensorDescriptor = None

from . import blockmap
from .blockmap import _linear_branch, _store_output
from .sla_reference import LINEAR_EPS

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # fixed when Triton decorates the kernels

LOG2E = 1.4426950408889634


@triton.jit
def _tile(
    acc, l_i, m_i, q, k_src, v_src, lut_row, t, sk_l, sv_l, L, KK, qk_scale,
    D: tl.constexpr, BLKK: tl.constexpr, GROUP: tl.constexpr, MASKED: tl.constexpr,
):
    """GROUP kept key blocks gathered row by row into one (GROUP * BLKK, D) tile."""
    BLOCK_N: tl.constexpr = GROUP * BLKK
    r = tl.arange(0, BLOCK_N)
    d = tl.arange(0, D)
    sub = r // BLKK
    blk = tl.zeros([BLOCK_N], dtype=tl.int32)
    for g in tl.static_range(GROUP):
        if MASKED:
            b_g = tl.load(lut_row + t * GROUP + g, mask=t * GROUP + g < KK, other=0)
        else:
            b_g = tl.load(lut_row + t * GROUP + g)
        blk = tl.where(sub == g, b_g, blk)
    keys = blk * BLKK + r % BLKK
    if MASKED:
        ok = (t * GROUP + sub < KK) & (keys < L)
        k = tl.load(k_src + keys[:, None] * sk_l + d[None, :], mask=ok[:, None], other=0.0)
        v = tl.load(v_src + keys[:, None] * sv_l + d[None, :], mask=ok[:, None], other=0.0)
    else:
        k = tl.load(k_src + keys[:, None] * sk_l + d[None, :])
        v = tl.load(v_src + keys[:, None] * sv_l + d[None, :])
    s = tl.dot(q, tl.trans(k))  # (BLOCK_M, BLOCK_N) float32
    if MASKED:
        s = tl.where(ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def _tile_tma(
    acc, l_i, m_i, q, k_desc, v_desc, lut_row, t, row0, col0, L, KK, qk_scale,
    BLKK: tl.constexpr, GROUP: tl.constexpr, MASKED: tl.constexpr,
):
    """One or two kept key blocks through descriptors over (B*L, H*D), one dot pair each, one
    softmax update. Rows past L are the next batch's or zero-filled: masked scores, p = 0."""
    r = tl.arange(0, BLKK)
    b0 = tl.load(lut_row + t * GROUP)
    k0 = k_desc.load([row0 + b0 * BLKK, col0])
    v0 = v_desc.load([row0 + b0 * BLKK, col0])
    s0 = tl.dot(q, tl.trans(k0))
    if MASKED:
        s0 = tl.where((b0 * BLKK + r < L)[None, :], s0, float("-inf"))
    mx = tl.max(s0, 1)
    if GROUP == 2:
        if MASKED:
            has1 = t * 2 + 1 < KK
            b1 = tl.load(lut_row + t * 2 + 1, mask=has1, other=0)
        else:
            b1 = tl.load(lut_row + t * 2 + 1)
        k1 = k_desc.load([row0 + b1 * BLKK, col0])
        v1 = v_desc.load([row0 + b1 * BLKK, col0])
        s1 = tl.dot(q, tl.trans(k1))
        if MASKED:
            s1 = tl.where(((b1 * BLKK + r < L) & has1)[None, :], s1, float("-inf"))
        mx = tl.maximum(mx, tl.max(s1, 1))
    m_new = tl.maximum(m_i, mx * qk_scale)
    alpha = tl.math.exp2(m_i - m_new)
    p0 = tl.math.exp2(s0 * qk_scale - m_new[:, None])
    row_sum = tl.sum(p0, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p0.to(v0.dtype), v0, acc)
    if GROUP == 2:
        p1 = tl.math.exp2(s1 * qk_scale - m_new[:, None])
        row_sum += tl.sum(p1, 1)
        acc = tl.dot(p1.to(v1.dtype), v1, acc)
    l_i = l_i * alpha + row_sum
    return acc, l_i, m_new


@triton.jit
def _sla_fwd_kernel(
    Q, K, V, O, OQ, OS, LUT, KVW, PHISUM, BIAS,
    sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h, so_b, so_l, so_h,
    L, H, NQ, KK, qk_scale, lin_eps, ROWS_B, ROWS_H, COL_H, ROWS_TOTAL,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLKK: tl.constexpr, GROUP: tl.constexpr,
    LIN_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, USE_TMA: tl.constexpr,
    OUT_FP8: tl.constexpr = 0, INTERPRET: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D)
    q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_l + d[None, :], mask=rows[:, None] < L, other=0.0)
    if USE_TMA:
        k_src = K
        v_src = V
    else:
        k_src = K + b * sk_b + h * sk_h
        v_src = V + b * sv_b + h * sv_h
    row0 = (bh // H) * ROWS_B + (bh % H) * ROWS_H  # TMA: this head's first key row and column
    col0 = (bh % H) * COL_H
    lut_row = LUT + (bh * NQ + pid_m).to(tl.int64) * KK

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    n_tiles = tl.cdiv(KK, GROUP)
    # ascending block lists: only the last tile can be partial or hold the ragged last key block
    for t in range(n_tiles - 1):
        if USE_TMA:
            acc, l_i, m_i = _tile_tma(acc, l_i, m_i, q, k_src, v_src, lut_row, t, row0, col0, L, KK, qk_scale,
                                      BLKK, GROUP, False)
        else:
            acc, l_i, m_i = _tile(acc, l_i, m_i, q, k_src, v_src, lut_row, t, sk_l, sv_l, L, KK, qk_scale,
                                  D, BLKK, GROUP, False)
    if USE_TMA:
        acc, l_i, m_i = _tile_tma(acc, l_i, m_i, q, k_src, v_src, lut_row, n_tiles - 1, row0, col0, L, KK,
                                  qk_scale, BLKK, GROUP, True)
    else:
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, k_src, v_src, lut_row, n_tiles - 1, sk_l, sv_l, L, KK, qk_scale,
                              D, BLKK, GROUP, True)
    o = acc / l_i[:, None]
    offs = b * so_b + h * so_h + rows[:, None] * so_l + d[None, :]
    if LIN_MODE == 1:  # linear branch here, from the queries in registers
        o += _linear_branch(q, bh, KVW, PHISUM, BIAS, lin_eps, D, HAS_BIAS)
    if LIN_MODE == 2:  # the query pass already wrote it into the output
        o += tl.load(O + offs, mask=rows[:, None] < L, other=0.0).to(tl.float32)
    _store_output(o, O, OQ, OS, offs, rows, L, h * ROWS_TOTAL + b * L, OUT_FP8, INTERPRET)


@dataclass(frozen=True)
class Config:
    group: int = 1  # key blocks per tile (BLOCK_N = group * blkk)
    num_warps: int = 8
    num_stages: int = 3
    tma: bool = False  # K/V blocks through tensor descriptors (Hopper's bulk copy engine)
    kv_copy: bool = False  # gather from head-major K/V copies written by the key pass
    linear_in_pool: bool = False  # linear branch in the query pass (not the attention epilogue)
    gluon: bool = False  # head_dim 128 on sm_90: the warp-specialized Gluon launch (sla_gluon.py) where it can run


def default_config(head_dim: int, device: torch.device) -> Config:
    # From benchmarks/bench_attention.py's sweeps on an H100 (docs/benchmarks.md); TMA needs sm90+.
    tma = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)
    if head_dim <= 64:
        return Config(group=2, num_warps=4, num_stages=3, tma=tma)
    # head_dim 128 on sm_90: the Gluon launch, with the linear branch in its epilogue (the query
    # pass then only pools), where it can run (sla_gluon.available); docs/benchmarks.md, "Session 17".
    from . import sla_gluon

    if sla_gluon.supported(device):
        return Config(group=1, num_warps=4, num_stages=2, tma=False, linear_in_pool=False, gluon=True)
    # elsewhere one 64-key block per softmax step on 4 warps, the linear branch in the query pass
    # (its epilogue would crowd the 4-warp accumulator): 2.23 vs 2.31 ms at 480p, 9.48 vs 10.19 ms
    # at 720p (benchmarks/results/2026-11-26-explore-rotate-h100.json, rotate=False rows)
    return Config(group=1, num_warps=4, num_stages=2, tma=False, linear_in_pool=True)


def sla_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: float,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    blkq: int = 128,
    blkk: int = 64,
    config: Config | None = None,
    stats: blockmap.BlockStats | None = None,
    out_fp8: bool | str = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SLA on [B, L, H, D] fp16/bf16 tensors with unit stride on D; returns [B, L, H, D] in q's dtype,
    or with out_fp8 (head_dim 128) that output quantized for an fp8 linear: (e4m3 [B, L, H, D],
    float32 scales [H, B*L]), the bytes quantize_act_fp8 makes of the bf16 output; out_fp8="tensor":
    (e4m3, scale [1]) at the bound max|V| gives (blockmap.output_bound, quant.fp8_tensor's rule)."""
    B, L, H, D = q.shape
    cfg = config or default_config(D, q.device)
    mode = blockmap.fp8_mode(out_fp8)
    stats, lin_mode, out, kvw, phi_sum, bias = blockmap.attention_inputs(
        q, k, v, topk, blkq, blkk, proj_weight, proj_bias, cfg.linear_in_pool, stats, kv_copy=cfg.kv_copy,
        v_absmax=mode == 2)
    nq = triton.cdiv(L, blkq)
    if cfg.kv_copy and stats.k_copy is not None:
        lp = stats.k_copy.shape[1]  # (B*H, lp, D), seen through [B, L, H, D] strides
        k, v = (x.view(B, H, lp, D).transpose(1, 2) for x in (stats.k_copy, stats.v_copy))
        flat = [x.view(B * H * lp, D) for x in (stats.k_copy, stats.v_copy)]
        rows_b, rows_h, col_h = H * lp, lp, 0
    else:
        flat = [x.view(B * L, H * D) if x.is_contiguous() else None for x in (k, v)]
        rows_b, rows_h, col_h = L, 0, D
    k_src, v_src = k, v
    use_tma = cfg.tma and TensorDescriptor is not None and flat[0] is not None and flat[1] is not None
    if use_tma:
        k_src, v_src = (TensorDescriptor.from_tensor(x, [blkk, D]) for x in flat)
    bound = blockmap.output_bound(blockmap.v_absmax_of(stats, v), proj_weight, proj_bias) if mode == 2 else None
    oq, os_ = blockmap.output_buffers(q, out, mode, bound)
    if cfg.gluon and not cfg.kv_copy:
        from . import sla_gluon

        if sla_gluon.available(q, k, v, blkq, blkk) and sla_gluon.try_attention(
                q, k, v, out, stats.lut, stats.kk, lin_mode, blkq, blkk, out_fp8=mode, oq=oq, os_=os_, kvw=kvw,
                phi_sum=phi_sum, bias=bias if proj_bias is not None else None):
            return blockmap.fp8_result(oq, os_, mode) if mode else out
    _sla_fwd_kernel[(nq, B * H)](
        q, k_src, v_src, out, oq, os_, stats.lut, kvw, phi_sum, bias,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        L, H, nq, stats.kk, D**-0.5 * LOG2E, LINEAR_EPS / L, rows_b, rows_h, col_h, B * L,
        D=D, BLOCK_M=blkq, BLKK=blkk, GROUP=cfg.group, LIN_MODE=lin_mode, HAS_BIAS=proj_bias is not None,
        USE_TMA=use_tma, OUT_FP8=mode, INTERPRET=INTERPRETED, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return blockmap.fp8_result(oq, os_, mode) if mode else out
