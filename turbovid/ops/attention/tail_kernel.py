"""Triton kernel: softmax attention over keys whose rows repeat one row from some row on.

A zero-padded prompt gives such keys: past the prompt's n tokens, every row of cross-attention's
K and V is computed from a zero row, so all Lk - n of them are row n. For every query,
    softmax over rows 0..Lk-1   ==   softmax over rows 0..n, row n's logit raised by log(Lk - n)
(m equal terms e^s sum to e^(s + log m)). The kernel visits n + 1 key rows instead of Lk: a
prompt of 20-100 umT5 tokens against the 512 rows Wan attends over.

n is read per batch item on the device, so a launch needs no host-device sync and replays in a CUDA
graph. Online softmax in float32; the probabilities are rounded to the values' dtype for the second
product, as flash attention does. Grid: (cdiv(Lq, BLOCK_M), B * H).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # fixed when Triton decorates the kernel
LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Config:
    # H100, benchmarks/ab_tail_attention.py (2026-11-27, ms at 1.3B 480p with 77 prompt rows): 64 x 32 on
    # 4 warps, 3 stages 0.114; 2 stages 0.127; 64 x 16 0.121; 128 x 32 on 4 warps 0.129; 64 x 64 0.141;
    # 128 x 32 / 128 x 64 on 8 warps 0.178-0.185; SDPA over all 512 rows 0.180. The fastest of these
    # at every shape (1.3B / 14B, 480p / 720p) and prompt length up to 200 rows.
    block_m: int = 64  # query rows a program
    block_n: int = 32  # key rows a step
    num_warps: int = 4
    num_stages: int = 3


@triton.jit
def _tail_attn_kernel(
    Q, K, V, O, N,
    Lq, Lk, H,
    sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h, so_b, so_l, so_h,
    qk_scale,  # head_dim ** -0.5 * log2(e): the logits in base 2
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    n = tl.minimum(tl.maximum(tl.load(N + b), 0), Lk)  # rows before the repeats start
    keys = tl.minimum(n + 1, Lk)  # rows visited: 0..n, or all Lk when nothing repeats
    tail_log2 = tl.log2(tl.maximum((Lk - n).to(tl.float32), 1.0))  # row n stands for Lk - n rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D)
    q_ptrs = Q + b.to(tl.int64) * sq_b + rows.to(tl.int64)[:, None] * sq_l + h * sq_h + d[None, :]
    q = tl.load(q_ptrs, mask=(rows < Lq)[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * sk_b + h * sk_h
    v_base = V + b.to(tl.int64) * sv_b + h * sv_h

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start in range(0, keys, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        inside = cols < keys
        k = tl.load(k_base + cols[:, None] * sk_l + d[None, :], mask=inside[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * sv_l + d[None, :], mask=inside[:, None], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * qk_scale + tl.where(cols == n, tail_log2, 0.0)[None, :]
        s = tl.where(inside[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    out = acc / l_i[:, None]
    o_ptrs = O + b.to(tl.int64) * so_b + rows.to(tl.int64)[:, None] * so_l + h * so_h + d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(rows < Lq)[:, None])


def tail_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: torch.Tensor,
                   cfg: Config | None = None) -> torch.Tensor:
    """Attention of q [B, Lq, H, D] over k, v [B, Lk, H, D] whose rows n[b].. of item b all equal row
    n[b] (n int32 [B] on q's device; n[b] >= Lk: nothing repeats); returns [B, Lq, H, D]. The caller
    checks shapes, dtypes and the device (tail.py)."""
    cfg = cfg or Config()
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    out = torch.empty_like(q)
    block_m = min(cfg.block_m, max(16, triton.next_power_of_2(Lq)))
    grid = (triton.cdiv(Lq, block_m), B * H)
    _tail_attn_kernel[grid](
        q, k, v, out, n, Lq, Lk, H,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        D**-0.5 * LOG2E, D=D, BLOCK_M=block_m, BLOCK_N=cfg.block_n, IEEE=q.dtype == torch.float32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
