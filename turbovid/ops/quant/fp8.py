"""FP8 (e4m3) block-scaled linear layer for bf16 checkpoints on Hopper / Ada (`--quant fp8`).

Weights: e4m3 [N, K] + one float32 scale per 128x128 block, scale = amax / 448, values
rne(w * 448 / amax) (saturating at +-448). Activations: one scale per (1 token x 128 channels)
group, same rule: finer than int8's 128x128 tiles because e4m3 spends its bits on range, and a
per-token group keeps outlier tokens from flattening their neighbours.
GEMM: cuBLASLt's blockwise fp8 scaled_mm where the probe in fp8_cublas.py passes (bf16 activations,
K and N multiples of 128), else the int8 Triton GEMM (int8_triton.scaled_mm) with fp32 block products.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from turbovid.ops.dispatch import call
from turbovid.ops.quant import fp8_tensor
from turbovid.ops.quant.int8 import (
    BLOCK, QuantLinearBase, _cdiv, dequantize_blockwise, kernels, quantize_blockwise, swap_linears, use_kernel,
)

FP8_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn


def fp8_available(device: torch.device | str | None = None) -> bool:
    """fp8 matrix instructions need compute capability >= 8.9 (Ada, Hopper)."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_weight_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 [N, K], float32 scales [ceil(N/128), ceil(K/128)])."""
    return quantize_blockwise(w, qmax=FP8_MAX, dtype=FP8_DTYPE)


def quantize_act_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, 128 channels) group: (e4m3 [M, K], float32 scales [ceil(K/128), M])."""
    m, k = x.shape
    kb = _cdiv(k, BLOCK)
    xp = torch.zeros(m, kb * BLOCK, dtype=torch.float32, device=x.device)
    xp[:, :k] = x.float()
    groups = xp.view(m, kb, BLOCK)
    amax = groups.abs().amax(dim=2).clamp_min(1e-8)  # [m, kb]
    qmax = torch.full_like(amax, FP8_MAX)  # IEEE divisions, as the kernel (div_rn)
    q = (groups * (qmax / amax)[:, :, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(m, kb * BLOCK)[:, :k], (amax / qmax).t().contiguous()


def fp8_linear_reference(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """PyTorch reference: dequantize both operands, float32 matmul, + bias."""
    shape = x.shape
    x_q, x_s = quantize_act_fp8(x.reshape(-1, shape[-1]))
    y = fp8_linear_quantized_reference(x_q, x_s, w_q, w_scale, bias, x.dtype)
    return y.reshape(*shape[:-1], w_q.shape[0])


def fp8_linear_quantized_reference(
    a_q: torch.Tensor, a_s: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
    bias: torch.Tensor | None, out_dtype: torch.dtype,
) -> torch.Tensor:
    """The reference on an activation already quantized: a_q [M, K] e4m3, a_s [ceil(K/128), M]."""
    x_d = a_q.float() * a_s.t().repeat_interleave(BLOCK, 1)[:, : a_q.shape[1]]
    y = x_d @ dequantize_blockwise(w_q, w_scale).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


@dataclass(frozen=True)
class Fp8Activation:
    """An activation already quantized for an Fp8Linear: e4m3 values [..., K] plus one float32
    scale per (token, 128 channels) group, stored [ceil(K/128), tokens] (quantize_act_fp8's layout).
    The fused norm kernels write it directly, so the linear after them skips its quantization pass.
    Only Fp8Linear layers take it."""

    q: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype  # of the activation before quantization: the linear's output dtype
    per_tensor: bool = False  # one scale [1] for the whole tensor (fp8_tensor's rule; Fp8TensorLinear reads it)
    # per-tensor activations from a norm: the largest L2 norm of a row of the activation before
    # quantization ([1]), which bounds the next linear's output (fp8_tensor.output_bound_coefs)
    row_norm: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @classmethod
    def quantize(cls, x: torch.Tensor) -> "Fp8Activation":
        """The PyTorch rule (the kernels produce the same bytes)."""
        q, s = quantize_act_fp8(x.reshape(-1, x.shape[-1]))
        return cls(q.reshape(x.shape), s, x.dtype)

    @classmethod
    def quantize_per_tensor(cls, x: torch.Tensor, bound: torch.Tensor | None = None,
                            row_norm: bool = False) -> "Fp8Activation":
        """The per-tensor PyTorch rule (fp8_tensor): bound None = x's own amax; row_norm: keep the largest
        row norm of x (as the norm kernels do)."""
        q, s = fp8_tensor.quantize_reference(x) if bound is None else fp8_tensor.quantize_with_bound(x, bound)
        rn = x.float().reshape(-1, x.shape[-1]).norm(dim=1).amax().reshape(1) if row_norm and x.numel() else None
        return cls(q, s, x.dtype, per_tensor=True, row_norm=rn)


def fp8_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ W^T + b, W given as e4m3 + 128x128 block scales; x quantized per (1 x 128) group."""
    return call(_fp8_linear_op, _fp8_linear, x, w_q, w_scale, bias)


def _fp8_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    kernel = fp8_kernel_linear(x, w_q)
    if kernel is not None:
        return kernel(x, w_q, w_scale, bias)
    return fp8_linear_reference(x, w_q, w_scale, bias)


def _kernels_serve(t: torch.Tensor) -> bool:
    """A kernel path (cuBLAS or Triton) runs for tensors like t: Triton present, and fp8 on its GPU."""
    return use_kernel(t) and not (t.is_cuda and not fp8_available(t.device))


def fp8_kernel_linear(x: torch.Tensor, w_q: torch.Tensor):
    """The kernel path serving this call: fp8_cublas.linear, int8_triton.linear, or None (reference).
    Both take (x, w_q, w_scale, bias, gelu_input=False)."""
    if not _kernels_serve(x):
        return None
    from turbovid.ops.quant import fp8_cublas

    if fp8_cublas.serves(x, w_q):
        return fp8_cublas.linear
    return kernels().linear


_fp8_linear_op = torch.library.custom_op("turbovid::fp8_linear", _fp8_linear, mutates_args=())


@_fp8_linear_op.register_fake
def _(x, w_q, w_scale, bias=None):
    return x.new_empty(*x.shape[:-1], w_q.shape[0])


def _fp8_linear_quantized(
    a_q: torch.Tensor, a_s: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
    bias: Optional[torch.Tensor], out_dtype: torch.dtype,
) -> torch.Tensor:
    if _kernels_serve(a_q):
        from turbovid.ops.quant import fp8_cublas

        if fp8_cublas.serves_quantized(a_q, w_q, out_dtype):
            return fp8_cublas.linear_quantized(a_q, a_s, w_q, w_scale, bias, out_dtype)
        return kernels().scaled_mm(a_q, a_s, w_q, w_scale, bias, out_dtype=out_dtype)
    return fp8_linear_quantized_reference(a_q, a_s, w_q, w_scale, bias, out_dtype)


_fp8_linear_quantized_op = torch.library.custom_op("turbovid::fp8_linear_quantized", _fp8_linear_quantized,
                                                   mutates_args=())


@_fp8_linear_quantized_op.register_fake
def _(a_q, a_s, w_q, w_scale, bias, out_dtype):
    return a_q.new_empty(a_q.shape[0], w_q.shape[0], dtype=out_dtype)


def fp8_linear_quantized(act: Fp8Activation, w_q: torch.Tensor, w_scale: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp8_linear for an activation the previous kernel already quantized; output in act.dtype."""
    shape = act.q.shape
    y = call(_fp8_linear_quantized_op, _fp8_linear_quantized, act.q.reshape(-1, shape[-1]), act.scale, w_q, w_scale,
             bias, act.dtype)
    return y.reshape(*shape[:-1], w_q.shape[0])


class Fp8Linear(QuantLinearBase):
    """nn.Linear replacement holding e4m3 weights + 128x128 block scales."""

    weight_name = "fp8_weight"
    weight_dtype = FP8_DTYPE
    quantize_weight = staticmethod(quantize_weight_fp8)
    linear_op = staticmethod(fp8_linear)

    def forward(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor:
        if isinstance(x, Fp8Activation):
            self._check(x)
            if x.per_tensor:
                raise ValueError("Fp8Linear (block scales) got a per-tensor fp8 activation; an Fp8TensorLinear reads those")
            return fp8_linear_quantized(x, self.fp8_weight, self.scale, self.bias)
        return super().forward(x)


# With per-tensor scales, these linears keep block scales: the text context's k / v projections (512
# tokens, a negligible share of the FLOPs), whose per-tensor error every query then reads. On a 10-block
# 14B-width DiT they made most of per-tensor fp8's extra error against bf16 (all per tensor 4.64%, all
# block 4.33%, per tensor but these 4.38%; benchmarks/explore_fp8_groups.py, docs/benchmarks.md).
BLOCK_SCALED = ("cross_attn.k", "cross_attn.v")


def swap_linears_fp8(module: nn.Module, skip: tuple[str, ...] = ("proj_l",), per_tensor: bool | None = None) -> nn.Module:
    """Replace every nn.Linear under `module` (except `skip` names) by an fp8 layer, quantizing on the fly:
    Fp8TensorLinear (per-tensor scales; per_tensor None: per_tensor_default()) except the BLOCK_SCALED
    ones, or Fp8Linear (block scales) everywhere."""
    if per_tensor is None:
        per_tensor = per_tensor_default()
    if not per_tensor:
        return swap_linears(module, skip, layer_cls=Fp8Linear)

    def layer_for(name: str) -> type:
        block = any(name == s or name.endswith("." + s) for s in BLOCK_SCALED)
        return Fp8Linear if block else Fp8TensorLinear

    return swap_linears(module, skip, layer_cls=layer_for)


# ---- per-tensor scales (fp8_tensor.py): cuBLAS's fast fp8 GEMM ---------------------------------

def per_tensor_default() -> bool:
    """--quant fp8's scales: per tensor (the default) unless TURBOVID_FP8_SCALES=block."""
    mode = os.environ.get("TURBOVID_FP8_SCALES", "tensor")
    if mode not in ("tensor", "block"):
        raise ValueError(f"TURBOVID_FP8_SCALES={mode!r}: use 'tensor' or 'block'")
    return mode == "tensor"


def quantize_per_tensor(
    x: torch.Tensor, gelu: bool = False, bound: torch.Tensor | None = None,
    from_norm: tuple[torch.Tensor, torch.Tensor, float, float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (or tanh-GELU(x)) -> (e4m3 [M, K], scale [1]). The bound: `bound`, else from_norm
    (row norm, input scale, coefs: fp8_tensor.from_norm_bound), else x's own amax."""
    if _kernels_serve(x):
        from turbovid.ops.quant import fp8_tensor_triton

        return fp8_tensor_triton.quantize(x, gelu, bound, from_norm)
    if from_norm is not None:
        bound = fp8_tensor.from_norm_bound(*from_norm, gelu=gelu)
    if gelu:
        x = fp8_tensor.gelu_tanh(x)
    return fp8_tensor.quantize_reference(x) if bound is None else fp8_tensor.quantize_with_bound(x, bound)


def _fp8_tensor_linear(
    x: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor, bias: Optional[torch.Tensor], gelu: bool,
    bound: Optional[torch.Tensor], rn: Optional[torch.Tensor], sa: Optional[torch.Tensor], coefs: list[float],
) -> torch.Tensor:
    from_norm = (rn, sa, *coefs) if rn is not None else None
    a_q, a_s = quantize_per_tensor(x.reshape(-1, x.shape[-1]), gelu, bound, from_norm)
    return fp8_tensor.linear_quantized(a_q, a_s, w_q, w_s, bias, x.dtype).reshape(*x.shape[:-1], w_q.shape[0])


_fp8_tensor_linear_op = torch.library.custom_op("turbovid::fp8_tensor_linear", _fp8_tensor_linear, mutates_args=())


@_fp8_tensor_linear_op.register_fake
def _(x, w_q, w_s, bias, gelu, bound, rn, sa, coefs):
    return x.new_empty(*x.shape[:-1], w_q.shape[0])


def fp8_tensor_linear(
    x: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor, bias: Optional[torch.Tensor] = None,
    gelu_input: bool = False, bound: torch.Tensor | None = None,
    from_norm: tuple[torch.Tensor, torch.Tensor, float, float, float] | None = None,
) -> torch.Tensor:
    """y = x @ W^T + b (gelu_input: tanh-GELU(x) @ W^T + b) with x quantized per tensor: at `bound`
    (>= max|x|), at the bound from_norm gives (the output bound of the linear before, fp8_tensor),
    or by x's own amax (one more read of x)."""
    rn, sa, *coefs = from_norm if from_norm is not None else (None, None)
    return call(_fp8_tensor_linear_op, _fp8_tensor_linear, x, w_q, w_s, bias, gelu_input, bound, rn, sa,
                [float(c) for c in coefs])


def _fp8_tensor_linear_quantized(
    a_q: torch.Tensor, a_s: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor, bias: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    return fp8_tensor.linear_quantized(a_q, a_s, w_q, w_s, bias, out_dtype)


_fp8_tensor_linear_quantized_op = torch.library.custom_op(
    "turbovid::fp8_tensor_linear_quantized", _fp8_tensor_linear_quantized, mutates_args=())


@_fp8_tensor_linear_quantized_op.register_fake
def _(a_q, a_s, w_q, w_s, bias, out_dtype):
    return a_q.new_empty(a_q.shape[0], w_q.shape[0], dtype=out_dtype)


def _fp8_tensor_linear_gelu(
    a_q: torch.Tensor, a_s: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor, bias: torch.Tensor,
    rn: torch.Tensor, coefs: list[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    if fp8_tensor.gelu_gemm_serves(a_q, w_q, bias):
        from turbovid.ops.quant import cublaslt, fp8_tensor_triton

        scale, mult = fp8_tensor_triton.norm_bound_scales(rn, a_s, *coefs, gelu=True)
        return cublaslt.fp8_gemm_gelu_fp8(a_q, a_s, w_q, w_s, bias, mult, fp8_tensor.FAST_ACCUM), scale
    bound = fp8_tensor.from_norm_bound(rn, a_s, *coefs, gelu=True)
    return fp8_tensor.linear_gelu_reference(a_q, a_s, w_q, w_s, bias, bound)


_fp8_tensor_linear_gelu_op = torch.library.custom_op("turbovid::fp8_tensor_linear_gelu", _fp8_tensor_linear_gelu,
                                                     mutates_args=())


@_fp8_tensor_linear_gelu_op.register_fake
def _(a_q, a_s, w_q, w_s, bias, rn, coefs):
    return a_q.new_empty(a_q.shape[0], w_q.shape[0]), a_s.new_empty(1)


class Fp8TensorLinear(Fp8Linear):
    """Fp8Linear with one scale for the whole weight and per-tensor activations (fp8_tensor.py): the
    GEMM is cuBLAS's per-tensor fp8 kernel with fast accumulation. Reads a bf16 activation (quantized
    by its own amax) or a per-tensor Fp8Activation (e.g. written by a norm kernel with a known bound)."""

    quantize_weight = staticmethod(fp8_tensor.quantize_weight)
    linear_op = staticmethod(fp8_tensor_linear)
    _coefs: tuple | None = None  # (weight version key, output_bound_coefs)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=torch.bfloat16):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.register_buffer("scale", torch.empty(1, dtype=torch.float32, device=device))

    def forward(self, x: torch.Tensor | Fp8Activation, bound: torch.Tensor | None = None) -> torch.Tensor:
        """bound: a known upper bound of |x| ([1], e.g. max|v| for an attention output), which spares
        the pass that finds x's amax."""
        self._check(x)
        if not isinstance(x, Fp8Activation):
            return fp8_tensor_linear(x, self.fp8_weight, self.scale, self.bias, bound=bound)
        if not x.per_tensor:
            raise ValueError("Fp8TensorLinear got a block-scaled fp8 activation; an Fp8Linear reads those")
        shape = x.q.shape
        y = call(_fp8_tensor_linear_quantized_op, _fp8_tensor_linear_quantized, x.q.reshape(-1, shape[-1]), x.scale,
                 self.fp8_weight, self.scale, self.bias, x.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def output_bound_coefs(self) -> tuple[float, float, float] | None:
        """fp8_tensor.output_bound_coefs of this weight, computed once per weight version (a host sync);
        None while a CUDA graph is being captured and they are not known yet."""
        key = tuple(None if t is None else (t.data_ptr(), _version(t)) for t in (self.fp8_weight, self.scale, self.bias))
        if self._coefs is None or self._coefs[0] != key:
            if self.fp8_weight.is_cuda and torch.cuda.is_current_stream_capturing():
                return None
            self._coefs = (key, fp8_tensor.output_bound_coefs(self.fp8_weight, self.scale, self.bias))
        return self._coefs[1]

    def forward_gelu(self, act: Fp8Activation) -> Fp8Activation | None:
        """tanh-GELU(this layer(act)) as the per-tensor fp8 activation of the next layer, at the bound act's
        row norm gives, with GELU and quantization in cuBLASLt's GEMM epilogue (quant.cublaslt): the
        hidden layer is written once, as e4m3. None where that GEMM does not serve (then run this layer
        and the next one's forward_after)."""
        self._check(act)
        if not (act.per_tensor and act.row_norm is not None and self.bias is not None):
            return None
        shape = act.q.shape
        a_q = act.q.reshape(-1, shape[-1])
        coefs = self.output_bound_coefs()
        if coefs is None or not fp8_tensor.gelu_gemm_serves(a_q, self.fp8_weight, self.bias):
            return None
        h_q, h_s = call(_fp8_tensor_linear_gelu_op, _fp8_tensor_linear_gelu, a_q, act.scale, self.fp8_weight,
                        self.scale, self.bias, act.row_norm, [float(c) for c in coefs])
        return Fp8Activation(h_q.reshape(*shape[:-1], self.out_features), h_s, act.dtype, per_tensor=True)

    def forward_after(self, h: torch.Tensor, previous: "Fp8TensorLinear", act: Fp8Activation,
                      gelu_input: bool = False) -> torch.Tensor:
        """This layer on `h = previous(act)` (or tanh-GELU of it), quantized at the bound act's row norm
        gives for previous's output, without a pass over h for its amax; falls back to that pass."""
        self._check(h)
        coefs = previous.output_bound_coefs() if act.per_tensor and act.row_norm is not None else None
        from_norm = (act.row_norm, act.scale, *coefs) if coefs is not None else None
        return fp8_tensor_linear(h, self.fp8_weight, self.scale, self.bias, gelu_input, from_norm=from_norm)


def _version(t: torch.Tensor) -> int | None:
    # inference-mode tensors keep no version counter: their storage alone keys the cache
    return None if t.is_inference() else t._version


def share_weight_scale(layers: list[Fp8TensorLinear]) -> None:
    """Put per-tensor fp8 layers on one weight scale (the largest), in place, so they can run as one
    GEMM (fused q/k/v). The scales are powers of two, so rescaling a weight is exact except for values
    that fall below e4m3's normal range."""
    s = max(float(m.scale) for m in layers)
    common = torch.full((1,), s, dtype=torch.float32, device=layers[0].scale.device)
    for m in layers:
        if float(m.scale) != s:
            w = m.fp8_weight.float() * (float(m.scale) / s)
            m.fp8_weight.copy_(w.clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE))
        m._buffers["scale"] = common

