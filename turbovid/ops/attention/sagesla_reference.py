"""SageSLA quantization in plain PyTorch: the rules the Triton kernel follows, and an exact emulation.

Rules (SageAttention style, as SpargeAttn's sm90 SageSLA applies them):
  Q   times softmax scale * log2(e), then int8 per query block: s = max|x| / 127 + 1e-7,
      x_q = trunc(x / s + 0.5 sign(x)) (round half away from zero).
  K   smoothed (minus its token mean; the scores change by a per-row constant, which softmax
      ignores), then int8 per key block by the same rule.
  V   fp8 e4m3 per channel: x_q = fp8(x * 448 / max_t |x|); the scale multiplies the output.
      (SpargeAttn maps the max to 2.25 to keep fp16 accumulators finite on Ada; with float32
      accumulation the full e4m3 range keeps more of the small values.)
      With v_terms=2, V is the sum of two fp8 tensors, x_q and fp8(x * scale - x_q): the rounding
      error of one e4m3 V alone is ~2.6% of the output on zero-mean random V (3 mantissa bits),
      and with fp8 P's own ~2.6% the total (~3.7%) misses a 3% relative-L2 budget; the second
      term costs one more fp8 dot per tile and removes the V part of the error.
  P   448 exp2(s - running max) in [0, 448] (the scale folded into the exponent), to fp8; row
      sums l from the unquantized values.
  P.V accumulates one key tile per dot, then adds in float32 (the two-level accumulation of
      SageAttention2: fp8 tensor-core accumulators keep fewer than 32 bits).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FP8_MAX = 448.0
INT8_EPS = 1e-7
LOG2E = 1.4426950408889634
LOG2_FP8_MAX = math.log2(FP8_MAX)
MAGIC = 12582912.0  # 1.5 * 2^23: int32 x + bits(MAGIC) has the float bits of MAGIC + x, |x| < 2^22


def quantize_blocks_int8(x: torch.Tensor, blk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, L, D) float32 -> int8 (B, H, n, blk, D) zero-padded, scales float32 (B, H, n)."""
    B, H, L, D = x.shape
    n = -(-L // blk)
    xb = F.pad(x, (0, 0, 0, n * blk - L)).view(B, H, n, blk, D)
    scale = xb.abs().amax(dim=(-1, -2)) / 127.0 + INT8_EPS
    scaled = xb / scale[..., None, None]
    return torch.trunc(scaled + 0.5 * torch.sign(scaled)).to(torch.int8), scale


def v_scales(v_absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel fp8 scales from max|V|: (multiplier into fp8, multiplier back out)."""
    v_absmax = v_absmax.float().clamp_min(1e-12)
    return FP8_MAX / v_absmax, v_absmax / FP8_MAX


def quantize_v_fp8(v: torch.Tensor, to_fp8: torch.Tensor, terms: int) -> torch.Tensor:
    """V (float32, channels last) times its per-channel multiplier, as fp8 terms summed back in float32."""
    scaled = v * to_fp8
    hi = scaled.to(torch.float8_e4m3fn).float()
    if terms == 1:
        return hi
    return hi + (scaled - hi).to(torch.float8_e4m3fn).float()


def sagesla_sparse_emulated(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lut: torch.Tensor, blkq: int, blkk: int, v_terms: int = 2
) -> torch.Tensor:
    """The sparse part exactly as the kernel computes it (same tiles, same order), on any device.

    q, k, v: (B, L, H, D); lut: int (B, H, nq, kk) ascending. Returns float32 (B, L, H, D).
    """
    B, L, H, D = q.shape
    nq, nk = -(-L // blkq), -(-L // blkk)
    qf = q.transpose(1, 2).float() * (D**-0.5 * LOG2E)
    kf = k.transpose(1, 2).float()
    vf = v.transpose(1, 2).float()
    q_i8, q_scale = quantize_blocks_int8(qf, blkq)  # (B, H, nq, blkq, D), (B, H, nq)
    k_i8, k_scale = quantize_blocks_int8(kf - kf.mean(dim=2, keepdim=True), blkk)
    to_fp8, from_fp8 = v_scales(vf.abs().amax(dim=2))  # (B, H, D)
    v_q = quantize_v_fp8(vf, to_fp8[:, :, None, :], v_terms)
    v_q = F.pad(v_q, (0, 0, 0, nk * blkk - L)).view(B, H, nk, blkk, D)
    key_ok = (torch.arange(nk * blkk, device=q.device) < L).view(nk, blkk)

    qi = q_i8.float()
    m = torch.full((B, H, nq, blkq), float("-inf"), device=q.device)
    l = torch.zeros(B, H, nq, blkq, device=q.device)
    acc = torch.zeros(B, H, nq, blkq, D, device=q.device)
    for t in range(lut.shape[-1]):
        idx = lut[..., t].long()  # (B, H, nq)
        gather = idx[..., None, None].expand(-1, -1, -1, blkk, D)
        kt = torch.gather(k_i8.float(), 2, gather)
        scale = (q_scale * torch.gather(k_scale, 2, idx))[..., None, None]
        # integer scores offset by 1.5 * 2^23, as the kernel converts them (exact in float32)
        s = (qi @ kt.transpose(-1, -2) + MAGIC).masked_fill(~key_ok[idx][..., None, :], float("-inf"))
        m_new = torch.maximum(m, (s.amax(dim=-1) - MAGIC) * scale[..., 0])
        shift = m_new + MAGIC * scale[..., 0] - LOG2_FP8_MAX
        p = torch.exp2(s * scale - shift[..., None])  # 448 * exp2(s - m)
        alpha = torch.exp2(m - m_new)
        l = l * alpha + p.sum(dim=-1)
        p_q = p.to(torch.float8_e4m3fn).float()
        acc = acc * alpha[..., None] + p_q @ torch.gather(v_q, 2, gather)
        m = m_new
    out = acc * from_fp8[:, :, None, None, :] / l[..., None]
    return out.reshape(B, H, nq * blkq, D)[:, :, :L].transpose(1, 2)
