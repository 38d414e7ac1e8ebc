"""PyTorch references of the memory-bound DiT-block steps (the plain path, and what the fused Triton kernels in turbovid.ops.fused must match): the exact math of a Wan2.1 block.

Shapes: x, y [B, L, C] (residual stream and a branch output); shift, scale, gate [B, C]
(one adaLN vector per sample, broadcast over tokens); q/k [B, L, C] with C = heads x head_dim;
cos, sin [L, head_dim / 2] (one rotation per token and complex pair).
The norms take quant="fp8" (block scales) or "fp8-tensor" (one scale from the modulation's bound,
quant.fp8_tensor) to hand an fp8 linear its input already quantized (an Fp8Activation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


QUANTS = (None, "fp8", "fp8-tensor")


def check_quant(quant: str | None) -> None:
    if quant not in QUANTS:
        raise ValueError(f"unknown activation quantization {quant!r}; the norms take 'fp8' or 'fp8-tensor'")


def quantize_output(h: torch.Tensor, quant: str | None, bound: torch.Tensor | None = None):
    """h itself (quant None), or h quantized for the fp8 linear that reads it next: "fp8" per (row, 128
    channels), "fp8-tensor" at the scale of `bound` (>= max|h|, quant.fp8_tensor.ln_bound_reference)."""
    check_quant(quant)
    if quant is None:
        return h
    from turbovid.ops.quant.fp8 import Fp8Activation

    if quant == "fp8-tensor":
        return Fp8Activation.quantize_per_tensor(h, bound, row_norm=True)
    return Fp8Activation.quantize(h)


def gated_residual_ref(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """x + y * gate in float32, stored in x's dtype (Wan runs this under float32 autocast)."""
    y = y.float()
    if gate is not None:
        y = y * gate.float()[:, None, :]
    return (x.float() + y).to(x.dtype)


def norm_modulate_ref(
    x: torch.Tensor,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    quant: str | None = None,
) -> torch.Tensor:
    """LayerNorm over C in float32 (affine optional), then x * (1 + scale) + shift (then quantize_output)."""
    h = F.layer_norm(
        x.float(), (x.shape[-1],),
        None if weight is None else weight.float(),
        None if bias is None else bias.float(),
        eps,
    )
    if scale is not None:
        h = h * (1 + scale.float()[:, None, :])
    if shift is not None:
        h = h + shift.float()[:, None, :]
    bound = None
    if quant == "fp8-tensor":
        from turbovid.ops.quant.fp8_tensor import ln_bound_reference

        bound = ln_bound_reference(x.shape[-1], weight, bias, shift, scale)[0]
    return quantize_output(h.to(out_dtype or x.dtype), quant, bound)


def add_norm_modulate_ref(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    quant: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + y * gate, norm_modulate of that sum): a residual update followed by the next norm."""
    x = gated_residual_ref(x, y, gate)
    return x, norm_modulate_ref(x, shift, scale, weight, bias, eps, out_dtype, quant)


def rmsnorm_rope_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """RMSNorm over all heads (weight [C]), then RoPE on each head's interleaved (even, odd) pairs.

    The weight is applied in float32 before the one rounding at the end, as TurboDiffusion's
    inference (its fused RMSNorm) and our kernel do; Wan's own module rounds before the weight.
    """
    b, l, c = x.shape
    half = cos.shape[-1]
    xf = x.float()
    h = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    h = h.view(b, l, c // (2 * half), half, 2)  # (B, L, H, D/2, 2)
    re, im = h.unbind(-1)
    cs, sn = cos.float()[None, :, None, :], sin.float()[None, :, None, :]
    out = torch.stack((re * cs - im * sn, re * sn + im * cs), dim=-1)
    return out.reshape(b, l, c).to(out_dtype or x.dtype)


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """RMSNorm over the last dim in float32 (weight included), rounded once to the output dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(out_dtype or x.dtype)


def rope_tables(
    frames: int, height: int, width: int, head_dim: int, theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [F*H*W, head_dim/2] float32 for Wan's 3D RoPE.

    Wan splits a head's head_dim/2 complex pairs into time / height / width parts of
    c - 2*(c//3), c//3, c//3 pairs (c = head_dim/2), each with its own 1/theta^(2i/d) ladder.
    Angles are formed in float64 as Wan does, then rounded once.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    c = head_dim // 2
    parts = (c - 2 * (c // 3), c // 3, c // 3)
    angles = []
    for n_pos, pairs in zip((frames, height, width), parts):
        dim = 2 * pairs
        inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
        angles.append(torch.outer(torch.arange(n_pos, dtype=torch.float64, device=device), inv))
    t, h, w = angles
    grid = torch.cat(
        [
            t[:, None, None, :].expand(frames, height, width, -1),
            h[None, :, None, :].expand(frames, height, width, -1),
            w[None, None, :, :].expand(frames, height, width, -1),
        ],
        dim=-1,
    ).reshape(frames * height * width, c)
    return grid.cos().float(), grid.sin().float()
