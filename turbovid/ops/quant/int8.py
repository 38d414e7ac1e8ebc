"""W8A8 int8 linear layer in the layout of TurboDiffusion's -quant checkpoints.

Weights: int8 [N, K] plus one float32 scale per 128x128 block ([ceil(N/128), ceil(K/128)]).
Activations: quantized on the fly per 128x128 block (tokens x channels), scale = absmax / 128,
round to nearest, saturate to [-128, 127]. Output = sum over K blocks of the int32 block
product times (activation block scale x weight block scale), plus bias.
"""
from __future__ import annotations

import torch
import torch.nn as nn

BLOCK = 128
INT8_MAX = 128.0  # the reference divides by 128 (not 127) and saturates the rounded value
AMAX_FLOOR = 1e-8


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def quantize_blockwise(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D tensor per (block x block) tile. Returns (int8 [R, C], float32 scales [R/b, C/b])."""
    if x.ndim != 2:
        raise ValueError(f"quantize_blockwise expects a 2-D tensor, got shape {tuple(x.shape)}")
    r, c = x.shape
    rb, cb = _cdiv(r, block), _cdiv(c, block)
    xp = torch.zeros(rb * block, cb * block, dtype=torch.float32, device=x.device)
    xp[:r, :c] = x.float()
    tiles = xp.view(rb, block, cb, block)
    amax = tiles.abs().amax(dim=(1, 3)).clamp_min(AMAX_FLOOR)  # [rb, cb]
    q = torch.round(tiles * (INT8_MAX / amax)[:, None, :, None]).clamp_(-128, 127)
    q = q.view(rb * block, cb * block)[:r, :c].to(torch.int8)
    return q, (amax / INT8_MAX).float()


def dequantize_blockwise(q: torch.Tensor, scale: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Float32 tensor from int8 values and their per-tile scales."""
    s = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[: q.shape[0], : q.shape[1]]
    return q.float() * s


def int8_linear_reference(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """PyTorch reference of the W8A8 block-scaled linear (float32 math, exact int products)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    x_q, x_scale = quantize_blockwise(x2)
    y = dequantize_blockwise(x_q, x_scale) @ dequantize_blockwise(w_q, w_scale).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*shape[:-1], w_q.shape[0])


class Int8Linear(nn.Module):
    """nn.Linear replacement holding int8 weights + 128x128 block scales (buffers, as in -quant files)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=torch.bfloat16):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("int8_weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer(
            "scale",
            torch.empty(_cdiv(out_features, BLOCK), _cdiv(in_features, BLOCK), dtype=torch.float32, device=device),
        )
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        q, s = quantize_blockwise(linear.weight.detach())
        layer.int8_weight.copy_(q)
        layer.scale.copy_(s)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear_reference(x, self.int8_weight, self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def swap_linears(module: nn.Module, skip: tuple[str, ...] = ("proj_l",)) -> nn.Module:
    """Replace every nn.Linear under `module` (except names containing a `skip` part) by Int8Linear."""
    for name, child in list(module.named_children()):
        if any(s in name for s in skip):
            continue
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear.from_linear(child))
        else:
            swap_linears(child, skip)
    return module
