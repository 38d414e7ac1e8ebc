"""Sparse-linear attention (SLA) in plain PyTorch: the math the Triton kernels must reproduce.

Layout: q, k, v and outputs are [B, L, H, D]. Every function computes in `dtype` (float32 for
the reference; bfloat16/float16 for "the same reference run in low precision" in tests).

SLA output = sparse(q, k, v) + proj_l(linear(q, k, v)):
  block map  mean-pool q per query block of `blkq` tokens and k - mean_t(k) per key block of `blkk`
             tokens; score every (query block, key block) pair by the dot product of the pooled
             vectors; each query block keeps the `keep_count(topk, n)` highest-scoring key blocks.
  sparse     softmax attention of each query block over the keys of its kept blocks only.
  linear     phi(Q) (phi(K)^T V) / (phi(Q) . sum_t phi(K) + 1e-5) over all keys, phi = softmax
             over the head dim, followed by the per-layer `proj_l` Linear(D, D).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LINEAR_EPS = 1e-5


def keep_count(topk: float, n_blocks: int) -> int:
    """Key blocks kept per query block: min(n, int(topk * n)) as the reference rounds, but at least 1
    (the reference returns NaN rows when the rounding gives 0, e.g. topk 0.1 with fewer than 10 blocks)."""
    return max(1, min(n_blocks, int(topk * n_blocks)))


def check_topk(topk: float) -> None:
    if not 0.0 < topk <= 1.0:
        raise ValueError(f"sla topk must be in (0, 1], got {topk}; pass e.g. --sla_topk 0.1")


def _heads_first(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.transpose(1, 2).to(dtype)  # (B, L, H, D) -> (B, H, L, D)


def mean_pool(x: torch.Tensor, blk: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, ceil(L / blk), D): the mean of each block of tokens; a ragged last
    block is averaged over the tokens it has."""
    B, H, L, D = x.shape
    n = -(-L // blk)
    padded = F.pad(x, (0, 0, 0, n * blk - L))
    sums = padded.view(B, H, n, blk, D).sum(dim=3)
    counts = torch.full((n,), blk, dtype=x.dtype, device=x.device)
    counts[-1] = L - (n - 1) * blk
    return sums / counts[:, None]


def block_scores(q: torch.Tensor, k: torch.Tensor, blkq: int, blkk: int) -> torch.Tensor:
    """(B, H, nq, nk) float32 scores of pooled query blocks against pooled smoothed key blocks."""
    qf = _heads_first(q, torch.float32)
    kf = _heads_first(k, torch.float32)
    kf = kf - kf.mean(dim=2, keepdim=True)  # smooth K (a per-row constant for the scores, kept for fidelity)
    return mean_pool(qf, blkq) @ mean_pool(kf, blkk).transpose(-1, -2)


def block_map(q: torch.Tensor, k: torch.Tensor, topk: float, blkq: int, blkk: int) -> torch.Tensor:
    """Kept key blocks per query block: int32 (B, H, nq, kk), ascending block indices.

    Ties in score keep the lower block index (the kernel does the same), so the map is deterministic.
    """
    check_topk(topk)
    scores = block_scores(q, k, blkq, blkk)
    kk = keep_count(topk, scores.shape[-1])
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :kk]
    return order.sort(dim=-1).values.to(torch.int32)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lut: torch.Tensor,
    blkq: int,
    blkk: int,
    dtype: torch.dtype = torch.float32,
    chunk: int = 16,
) -> torch.Tensor:
    """Block-sparse softmax attention: query block i attends to the keys of blocks lut[..., i, :].

    Returns (B, L, H, D) in `dtype`. Works `chunk` query blocks at a time, gathering only the kept
    key blocks, so it runs at video sizes on a GPU.
    """
    B, L, H, D = q.shape
    nq, nk = -(-L // blkq), -(-L // blkk)
    kk = lut.shape[-1]
    qh = F.pad(_heads_first(q, dtype), (0, 0, 0, nq * blkq - L)).view(B, H, nq, blkq, D)
    kh = F.pad(_heads_first(k, dtype), (0, 0, 0, nk * blkk - L)).view(B, H, nk, blkk, D)
    vh = F.pad(_heads_first(v, dtype), (0, 0, 0, nk * blkk - L)).view(B, H, nk, blkk, D)
    key_valid = (torch.arange(nk * blkk, device=q.device) < L).view(nk, blkk)
    scale = D**-0.5
    out = torch.empty(B, H, nq, blkq, D, dtype=dtype, device=q.device)
    for c0 in range(0, nq, chunk):
        idx = lut[:, :, c0 : c0 + chunk].long()  # (B, H, c, kk)
        c = idx.shape[2]
        flat = idx.reshape(B, H, c * kk)
        ks = torch.gather(kh, 2, flat[..., None, None].expand(-1, -1, -1, blkk, D)).view(B, H, c, kk * blkk, D)
        vs = torch.gather(vh, 2, flat[..., None, None].expand(-1, -1, -1, blkk, D)).view(B, H, c, kk * blkk, D)
        valid = key_valid[idx].view(B, H, c, 1, kk * blkk)
        s = (qh[:, :, c0 : c0 + c] @ ks.transpose(-1, -2)) * scale  # (B, H, c, blkq, kk*blkk)
        s = s.masked_fill(~valid, float("-inf"))
        out[:, :, c0 : c0 + c] = torch.softmax(s, dim=-1) @ vs
    return out.view(B, H, nq * blkq, D)[:, :, :L].transpose(1, 2)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """proj_l(phi(Q) (phi(K)^T V) / (phi(Q) . sum phi(K) + eps)) over all keys; (B, L, H, D) in `dtype`."""
    phi_q = torch.softmax(_heads_first(q, dtype), dim=-1)
    phi_k = torch.softmax(_heads_first(k, dtype), dim=-1)
    vh = _heads_first(v, dtype)
    kv = phi_k.transpose(-1, -2) @ vh  # (B, H, D, D)
    k_sum = phi_k.sum(dim=-2, keepdim=True)  # (B, H, 1, D)
    out = (phi_q @ kv) / (LINEAR_EPS + (phi_q * k_sum).sum(dim=-1, keepdim=True))
    bias = None if proj_bias is None else proj_bias.to(dtype)
    out = F.linear(out, proj_weight.to(dtype), bias)
    return out.transpose(1, 2)


def sla_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: float,
    proj_weight: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
    blkq: int = 128,
    blkk: int = 64,
    dtype: torch.dtype = torch.float32,
    lut: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full SLA output (B, L, H, D) in `dtype`; proj_weight None skips the linear branch."""
    if lut is None:
        lut = block_map(q, k, topk, blkq, blkk)
    out = sparse_attention(q, k, v, lut, blkq, blkk, dtype)
    if proj_weight is not None:
        out = out + linear_attention(q, k, v, proj_weight, proj_bias, dtype)
    return out
