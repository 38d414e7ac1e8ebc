"""Dense single-head softmax attention for head dims no flash kernel takes, as one Triton kernel.

The VAE's middle attention attends within each latent frame with one head of 384 channels:
PyTorch's flash and cuDNN kernels stop at 256, so scaled_dot_product_attention falls back to its
memory-efficient sm80 kernel, ~120 TFLOP/s on an H100 (10.4 ms of the 480p decode, 52.6 ms of the
720p one; benchmarks/explore_vae_attention.py).

    out[b, i] = sum_j softmax_j(q[b, i] . k[b, j] / sqrt(D)) v[b, j]      q, k, v, out: [B, L, D]

Online softmax over key blocks (the flash-attention recurrence), float32 statistics and
accumulators, probabilities rounded to the input dtype for the second product as flash kernels do.
D is split into two power-of-two parts (384 = 256 + 128), each product computed as two dots, since
Triton's tiles are powers of two. q, k, v may be strided views (e.g. the slices of one qkv
projection): rows contiguous, any row and batch stride.

The PyTorch reference (scaled_dot_product_attention) runs where the kernel cannot: no Triton, CPU
tensors outside tests (on CPU the kernel runs in Triton's interpreter after
rms_silu.allow_interpreter()).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from turbovid.ops import rms_silu
from turbovid.ops.causal_conv import split_channels

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, L, D] each -> [B, L, D]."""
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)


if triton is not None:

    @triton.jit
    def _wide_attn_kernel(Q, K, V, O, L, sq_b, sq_l, sk_b, sk_l, sv_b, sv_l, so_b, so_l, scale_log2,
                          D1: tl.constexpr, D2: tl.constexpr, HAS_D2: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        c1 = tl.arange(0, D1)
        c2 = D1 + tl.arange(0, D2)
        row_ok = (rm < L)[:, None]
        q1 = tl.load(Q + b * sq_b + rm[:, None] * sq_l + c1[None, :], mask=row_ok, other=0.0)
        if HAS_D2:
            q2 = tl.load(Q + b * sq_b + rm[:, None] * sq_l + c2[None, :], mask=row_ok, other=0.0)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc1 = tl.zeros((BLOCK_M, D1), tl.float32)
        acc2 = tl.zeros((BLOCK_M, D2), tl.float32)
        for n0 in range(0, L, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            key_ok = rn < L
            kp = K + b * sk_b + rn[:, None] * sk_l
            s = tl.dot(q1, tl.trans(tl.load(kp + c1[None, :], mask=key_ok[:, None], other=0.0)),
                       input_precision=PRECISION)
            if HAS_D2:
                s = tl.dot(q2, tl.trans(tl.load(kp + c2[None, :], mask=key_ok[:, None], other=0.0)), s,
                           input_precision=PRECISION)
            s = tl.where(key_ok[None, :], s * scale_log2, float("-inf"))  # log2 units: exp2 below
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            p = p.to(Q.dtype.element_ty)
            vp = V + b * sv_b + rn[:, None] * sv_l
            acc1 = tl.dot(p, tl.load(vp + c1[None, :], mask=key_ok[:, None], other=0.0), acc1 * alpha[:, None],
                          input_precision=PRECISION)
            if HAS_D2:
                acc2 = tl.dot(p, tl.load(vp + c2[None, :], mask=key_ok[:, None], other=0.0),
                              acc2 * alpha[:, None], input_precision=PRECISION)
            m_i = m_new
        op = O + b * so_b + rm[:, None] * so_l
        tl.store(op + c1[None, :], (acc1 / l_i[:, None]).to(O.dtype.element_ty), mask=row_ok)
        if HAS_D2:
            tl.store(op + c2[None, :], (acc2 / l_i[:, None]).to(O.dtype.element_ty), mask=row_ok)


@dataclass(frozen=True)
class Config:
    block_m: int = 128
    block_n: int = 32
    num_warps: int = 8
    num_stages: int = 2


def default_config(d: int, elem: int = 2) -> Config:
    """The launch for head dim d. 16-bit inputs: what benchmarks/explore_vae_attention.py measured
    best at d = 384 on an H100 (2026-11-27): 128 queries x 32 keys a step, 8 warps, 2 stages, 3.32 ms
    at 480p (379 TFLOP/s) where 64 x 32 took 7.03 and 64 x 16 on 4 warps 4.91. float32 (tests): 64
    queries x 16 keys, to fit the shared memory with twice the bytes."""
    return Config() if elem <= 2 else Config(block_m=64, block_n=16)


def supported(d: int) -> bool:
    """Whether the kernel takes head dim d: two power-of-two parts of at least 16 that add up to it."""
    d1, d2 = split_channels(d)
    return d >= 16 and d1 + d2 == d


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: Optional[torch.Tensor] = None,
              config: Optional[Config] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q, k, v [B, L, D] (rows contiguous; views of a wider tensor are
    fine), into `out` [B, L, D] (rows contiguous) if given."""
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape or q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"wide_attention: q, k, v must be [B, L, D] of one shape and dtype, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    bsz, n, d = q.shape
    if not supported(d):
        raise ValueError(f"wide_attention: head dim {d} is not a sum of two powers of two >= 16")
    if out is None:
        out = q.new_empty(bsz, n, d)
    elif tuple(out.shape) != (bsz, n, d) or out.dtype != q.dtype:
        raise ValueError(f"wide_attention: out must be a {(bsz, n, d)} {q.dtype} tensor")
    if any(t.stride(-1) != 1 for t in (q, k, v, out)):
        raise ValueError("wide_attention: the rows of q, k, v and out must be contiguous")
    if not rms_silu._use_kernel(q):
        return out.copy_(attention_reference(q, k, v))
    cfg = config or default_config(d, q.element_size())
    d1, d2 = split_channels(d)
    precision = "tf32" if q.dtype == torch.float32 and q.is_cuda and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    _wide_attn_kernel[(triton.cdiv(n, cfg.block_m), bsz)](
        q, k, v, out, n, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), math.log2(math.e) / math.sqrt(d),
        D1=d1, D2=max(d2, 16), HAS_D2=d2 > 0, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PRECISION=precision,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
