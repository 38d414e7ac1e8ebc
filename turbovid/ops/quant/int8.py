"""W8A8 int8 linear layer in the layout of TurboDiffusion's -quant checkpoints.

Weights: int8 [N, K] plus one float32 scale per 128x128 block ([ceil(N/128), ceil(K/128)]).
Activations: quantized on the fly per 128x128 block (tokens x channels) with the same rule.
The rule (TurboDiffusion ops/quant): amax = max(|x| over the block, 1e-8); q = round-half-even
(x * (128 / amax)) saturated to [-128, 127] (the divisor is 128, not 127: amax itself saturates
to 127); scale = amax / 128; blocks cut by the tensor edge are zero-padded. Output = sum over K
blocks of the exact int32 block product times (activation scale x weight scale), plus bias.

The Triton path (int8_triton.py) runs on CUDA; elsewhere the PyTorch reference below runs.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import torch
import torch.nn as nn

from turbovid.ops.dispatch import call

log = logging.getLogger(__name__)

BLOCK = 128
INT8_MAX = 128.0  # the reference divides by 128 (not 127) and saturates the rounded value
AMAX_FLOOR = 1e-8

# TurboDiffusion builds its quantizer with --use_fast_math, so `128.f / amax` is div.approx.ftz.f32
# (128 x an approximate reciprocal): for some amax it is one ulp off the IEEE quotient, which moves
# exact ties (x * 128/amax = k + 0.5) to the other integer. For a bf16 amax (bf16 weights and
# activations: the real case) the quotient depends only on amax's 7 mantissa bits, so a table of
# 128 float32 bit patterns (128 / (1 + m/128), read off an H100 by benchmarks/fastmath_quant_check.cu;
# 20 of them are one ulp off IEEE) reproduces it; other amax values use IEEE division. None: IEEE.
RCP128_TABLE: tuple[int, ...] | None = (
    0x43000000, 0x42fe03f8, 0x42fc0fc1, 0x42fa232d, 0x42f83e0f, 0x42f6603e, 0x42f4898e, 0x42f2b9d6,
    0x42f0f0f1, 0x42ef2eb7, 0x42ed7304, 0x42ebbdb2, 0x42ea0ea1, 0x42e865ad, 0x42e6c2b4, 0x42e52598,
    0x42e38e39, 0x42e1fc78, 0x42e07038, 0x42dee95c, 0x42dd67c8, 0x42dbeb62, 0x42da740d, 0x42d901b2,
    0x42d79436, 0x42d62b81, 0x42d4c77b, 0x42d3680d, 0x42d20d21, 0x42d0b6a0, 0x42cf6475, 0x42ce168a,
    0x42cccccd, 0x42cb8728, 0x42ca4588, 0x42c907da, 0x42c7ce0c, 0x42c6980d, 0x42c565c9, 0x42c43730,
    0x42c30c31, 0x42c1e4bc, 0x42c0c0c1, 0x42bfa030, 0x42be82fa, 0x42bd6910, 0x42bc5264, 0x42bb3ee7,
    0x42ba2e8c, 0x42b92144, 0x42b81703, 0x42b70fbc, 0x42b60b61, 0x42b509e7, 0x42b40b41, 0x42b30f63,
    0x42b21643, 0x42b11fd4, 0x42b02c0b, 0x42af3ade, 0x42ae4c41, 0x42ad602c, 0x42ac7692, 0x42ab8f6a,
    0x42aaaaab, 0x42a9c84b, 0x42a8e840, 0x42a80a81, 0x42a72f05, 0x42a655c4, 0x42a57eb5, 0x42a4a9cf,
    0x42a3d70a, 0x42a3065e, 0x42a237c3, 0x42a16b31, 0x42a0a0a1, 0x429fd80a, 0x429f1166, 0x429e4cad,
    0x429d89d9, 0x429cc8e2, 0x429c09c1, 0x429b4c70, 0x429a90e8, 0x4299d723, 0x42991f1a, 0x429868c8,
    0x4297b426, 0x4297012e, 0x42964fda, 0x4295a026, 0x4294f209, 0x42944581, 0x42939a86, 0x4292f114,
    0x42924925, 0x4291a2b4, 0x4290fdbc, 0x42905a38, 0x428fb824, 0x428f177a, 0x428e7835, 0x428dda52,
    0x428d3dcb, 0x428ca29c, 0x428c08c1, 0x428b7034, 0x428ad8f3, 0x428a42f9, 0x4289ae41, 0x42891ac7,
    0x42888889, 0x4287f781, 0x428767ab, 0x4286d906, 0x42864b8b, 0x4285bf37, 0x42853409, 0x4284a9fa,
    0x42842108, 0x42839931, 0x4283126f, 0x42828cc0, 0x42820821, 0x4281848e, 0x42810204, 0x42808080,
)
RCP128_FLOOR: int | None = 0x503ebc20  # the quotient for the 1e-8 amax floor
TABLE_EXPONENTS = (127 - 27, 127 + 64)  # biased exponents of amax the device check covers
FLOOR_BITS = 0x322BCC77  # float32(1e-8)
_table_cache: dict = {}

_kernel_module = None  # int8_triton, imported on first use: importing Triton fixes its interpreter mode
_allow_interpreter = False
_logged: set[str] = set()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kernels():
    """The Triton kernel module (int8_triton), or None when Triton is missing."""
    global _kernel_module
    if _kernel_module is None:
        try:
            from turbovid.ops.quant import int8_triton

            _kernel_module = int8_triton
        except ImportError:
            _kernel_module = False
    return _kernel_module or None


def allow_interpreter(flag: bool = True) -> None:
    """Let CPU tensors run the kernels in Triton's interpreter (tests, under TRITON_INTERPRET=1)."""
    global _allow_interpreter
    _allow_interpreter = flag


def use_kernel(x: torch.Tensor) -> bool:
    """Whether the Triton path serves this tensor; logs the fallback once per reason."""
    interpret = _allow_interpreter and os.environ.get("TRITON_INTERPRET", "0") == "1"
    if x.is_cuda or interpret:
        if kernels() is not None:
            return True
        reason = "Triton is not installed"
    else:
        reason = f"tensors are on {x.device.type}"
    if reason not in _logged:
        _logged.add(reason)
        log.info("quantized linears use the PyTorch reference: %s", reason)
    return False


def rcp_table(device: torch.device) -> torch.Tensor | None:
    """RCP128_TABLE + [RCP128_FLOOR] as a float32 tensor on `device` (cached), or None."""
    if RCP128_TABLE is None:
        return None
    key = (str(device), RCP128_TABLE, RCP128_FLOOR)
    if key not in _table_cache:
        bits = torch.tensor(list(RCP128_TABLE) + [RCP128_FLOOR], dtype=torch.int64).to(torch.int32)
        _table_cache[key] = bits.view(torch.float32).to(device)
    return _table_cache[key]


def int8_multiplier(amax: torch.Tensor) -> torch.Tensor:
    """128 / amax (float32) the way the reference quantizer computes it; see RCP128_TABLE."""
    quotient = torch.full_like(amax, INT8_MAX) / amax
    table = rcp_table(amax.device)
    if table is None:
        return quotient
    bits = amax.view(torch.int32)
    exp = (bits >> 23) & 0xFF
    use = ((bits & 0xFFFF) == 0) & (exp >= TABLE_EXPONENTS[0]) & (exp < TABLE_EXPONENTS[1])
    pow2 = ((254 - exp).clamp(1, 254) << 23).view(torch.float32)  # 2 ** -(exp - 127), exact
    approx = table[((bits >> 16) & 0x7F).long()] * pow2
    quotient = torch.where(use, approx, quotient)
    return torch.where(bits == FLOOR_BITS, table[128], quotient)


def quantize_blockwise(
    x: torch.Tensor, block: int = BLOCK, qmax: float = INT8_MAX, dtype: torch.dtype = torch.int8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D tensor per (block x block) tile. Returns (q [R, C], float32 scales [R/b, C/b]).

    int8 (default) is TurboDiffusion's rule; qmax=448 with dtype=float8_e4m3fn gives the fp8 variant.
    """
    if x.ndim != 2:
        raise ValueError(f"quantize_blockwise expects a 2-D tensor, got shape {tuple(x.shape)}")
    r, c = x.shape
    rb, cb = _cdiv(r, block), _cdiv(c, block)
    xp = torch.zeros(rb * block, cb * block, dtype=torch.float32, device=x.device)
    xp[:r, :c] = x.float()
    tiles = xp.view(rb, block, cb, block)
    amax = tiles.abs().amax(dim=(1, 3)).clamp_min(AMAX_FLOOR)  # [rb, cb]
    # qmax / amax in float32 (the reference's quotient for int8; for fp8 one IEEE division: a python
    # scalar over a tensor would go through reciprocal-then-multiply), then a float32 multiply
    mult = int8_multiplier(amax) if dtype == torch.int8 else torch.full_like(amax, qmax) / amax
    v = tiles * mult[:, None, :, None]
    if dtype == torch.int8:
        q = torch.round(v).clamp_(-128, 127)  # torch.round is round-half-even
    else:
        q = v.clamp_(-qmax, qmax)  # the cast below rounds to nearest even
    q = q.view(rb * block, cb * block)[:r, :c].to(dtype)
    return q, amax / torch.full_like(amax, qmax)


def dequantize_blockwise(q: torch.Tensor, scale: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Float32 tensor from quantized values and their per-tile scales."""
    s = scale.float().repeat_interleave(block, 0).repeat_interleave(block, 1)[: q.shape[0], : q.shape[1]]
    return q.float() * s


def int8_linear_reference(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """PyTorch reference of the W8A8 block-scaled linear: dequantize both operands, float32 matmul."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    x_q, x_scale = quantize_blockwise(x2)
    y = dequantize_blockwise(x_q, x_scale) @ dequantize_blockwise(w_q, w_scale).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*shape[:-1], w_q.shape[0])


def int8_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ W^T + b, W given as int8 + 128x128 block scales; x quantized per 128x128 block."""
    return call(_int8_linear_op, _int8_linear, x, w_q, w_scale, bias)


def _int8_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    if use_kernel(x):
        return kernels().linear(x, w_q, w_scale, bias)
    return int8_linear_reference(x, w_q, w_scale, bias)


_int8_linear_op = torch.library.custom_op("turbovid::int8_linear", _int8_linear, mutates_args=())


@_int8_linear_op.register_fake
def _(x, w_q, w_scale, bias=None):
    return x.new_empty(*x.shape[:-1], w_q.shape[0])


class QuantLinearBase(nn.Module):
    """A block-quantized nn.Linear: quantized weight [N, K] + float32 128x128 block scales + bias,
    all buffers (the checkpoint layout). Subclasses name the weight buffer and its dtype, the weight
    quantizer and the linear op."""

    weight_name: str
    weight_dtype: torch.dtype
    quantize_weight: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    linear_op: Callable[..., torch.Tensor]

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=torch.bfloat16):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer(self.weight_name, torch.empty(out_features, in_features, dtype=self.weight_dtype, device=device))
        self.register_buffer(
            "scale",
            torch.empty(_cdiv(out_features, BLOCK), _cdiv(in_features, BLOCK), dtype=torch.float32, device=device),
        )
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "QuantLinearBase":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        q, s = cls.quantize_weight(linear.weight.detach())
        getattr(layer, cls.weight_name).copy_(q)
        layer.scale.copy_(s)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.linear_op(x, getattr(self, self.weight_name), self.scale, self.bias)

    def _apply(self, fn, recurse=True):
        # Module.to(bfloat16) casts every floating buffer: fp8 weights and float32 scales must keep
        # their dtype (only move device), or the layer no longer matches its checkpoint.
        order = list(self._buffers)
        keep = {n: self._buffers.pop(n) for n in (self.weight_name, "scale")}
        try:
            super()._apply(fn, recurse)
        finally:
            device = fn(torch.empty(0, dtype=torch.int8, device=keep["scale"].device)).device
            for n, t in keep.items():
                keep[n] = torch.empty_like(t, device=device) if t.is_meta else t.to(device)
            buffers = {n: keep[n] if n in keep else self._buffers[n] for n in order}
            self._buffers.clear()
            self._buffers.update(buffers)
        return self

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[-1]} features, layer expects {self.in_features}")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantLinearBase):
    """nn.Linear replacement holding int8 weights + 128x128 block scales (buffers, as in -quant files)."""

    weight_name = "int8_weight"
    weight_dtype = torch.int8
    quantize_weight = staticmethod(quantize_blockwise)
    linear_op = staticmethod(int8_linear)


def swap_linears(
    module: nn.Module, skip: tuple[str, ...] = ("proj_l",), layer_cls: type | Callable[[str], type] = Int8Linear,
    _prefix: str = "",
) -> nn.Module:
    """Replace every nn.Linear under `module` (except names containing a `skip` part) by a quantized
    layer, quantizing its weight on the fly. layer_cls: the layer class, or a function of the linear's
    dotted name under `module` returning it. TurboDiffusion quantizes `model.blocks` only."""
    for name, child in list(module.named_children()):
        if any(s in name for s in skip):
            continue
        if isinstance(child, nn.Linear):
            cls = layer_cls if isinstance(layer_cls, type) else layer_cls(_prefix + name)
            setattr(module, name, cls.from_linear(child))
        else:
            swap_linears(child, skip, layer_cls, f"{_prefix}{name}.")
    return module
