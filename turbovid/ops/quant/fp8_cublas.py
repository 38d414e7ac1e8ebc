"""fp8 block-scaled GEMM through cuBLASLt (`torch.nn.functional.scaled_mm`, torch >= 2.10, sm90,
CUDA >= 12.9): the same math as fp8.py (activations e4m3 per 1 x 128 group, weights per 128 x 128
block, fp32 accumulation), with cuBLAS's kernel instead of our Triton GEMM.

cuBLAS's argument layout (DeepSeek recipe, BlockWise1x128 x BlockWise128x128):
    mat_a   [M, K] e4m3 row-major (the quantized activation)
    mat_b   [K, N] e4m3 column-major, i.e. w_q [N, K].t()
    scale_a [M, K/128] float32 with strides (1, M): our quantize_act's [K/128, M] buffer, transposed
    scale_b [L4, N/128] float32 with strides (1, L4), L4 = K/128 rounded up to 4: the weight's
            [N/128, K/128] scales, columns zero-padded to L4, transposed
Scales are dequantization factors (amax / 448). K and N must be multiples of 128, and M of 8:
cuBLAS found no kernel for M = 1950 on an H100 (CUBLAS_STATUS_NOT_SUPPORTED; the scale_a columns
are M floats apart), while 32760 runs; other M take the Triton GEMM.

Probed once per device with a tiny call checked against the PyTorch reference; any failure (old
torch, no cuBLAS support, CPU) logs one line and the Triton path serves instead.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BLOCK = 128
_probe: dict[str, dict] = {}  # device -> {"ok": bool, "bias": bool}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def weight_scales(w_s: torch.Tensor) -> torch.Tensor:
    """Our [N/128, K/128] weight scales in cuBLAS's layout: [L4, N/128], strides (1, L4)."""
    nb, kb = w_s.shape
    l4 = _cdiv(kb, 4) * 4
    s = w_s.float()
    if l4 != kb:
        s = F.pad(s, (0, l4 - kb))
    return s.contiguous().t()


def scaled_mm_emulated(
    a_q: torch.Tensor, scale_a: torch.Tensor, b_q: torch.Tensor, scale_b: torch.Tensor,
    bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """PyTorch reading of F.scaled_mm's (BlockWise1x128, BlockWise128x128) arguments (the layout above):
    float32 dequantize, matmul, + bias. Tests check our argument preparation with it on the CPU."""
    m, k = a_q.shape
    k2, n = b_q.shape
    kb, nb = _cdiv(k, BLOCK), _cdiv(n, BLOCK)
    if k2 != k or tuple(scale_a.shape) != (m, kb) or scale_b.shape[1] != nb or scale_b.shape[0] < kb:
        raise ValueError(f"scaled_mm_emulated: bad shapes a {tuple(a_q.shape)} sa {tuple(scale_a.shape)} "
                         f"b {tuple(b_q.shape)} sb {tuple(scale_b.shape)}")
    a = a_q.float() * scale_a.float().repeat_interleave(BLOCK, 1)[:, :k]
    sb = scale_b[:kb].float().repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:k, :n]
    y = a @ (b_q.float() * sb)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def _call(a_q, a_s, w_q, w_s_cublas, bias, out_dtype, with_bias: bool) -> torch.Tensor:
    from torch.nn.functional import ScalingType

    y = F.scaled_mm(
        a_q, w_q.t(), a_s.t(), ScalingType.BlockWise1x128, w_s_cublas, ScalingType.BlockWise128x128,
        bias=bias if with_bias else None, output_dtype=out_dtype,
    )
    if bias is not None and not with_bias:
        y += bias.to(y.dtype)
    return y


def _run_probe(device: torch.device) -> dict:
    from turbovid.ops.quant.fp8 import fp8_linear_reference, quantize_weight_fp8
    from turbovid.ops.quant.int8 import kernels

    if not hasattr(F, "scaled_mm"):
        raise RuntimeError(f"torch {torch.__version__} has no torch.nn.functional.scaled_mm")
    if kernels() is None:
        raise RuntimeError("Triton (activation quantization) is not installed")
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(64, 384, generator=g).to(device, torch.bfloat16)
    w = torch.randn(256, 384, generator=g).to(device, torch.bfloat16)
    b = torch.randn(256, generator=g).to(device, torch.bfloat16)
    w_q, w_s = quantize_weight_fp8(w)
    ref = fp8_linear_reference(x.float(), w_q, w_s, b.float())
    a_q, a_s = kernels().quantize_act(x, "fp8")
    err = None
    for with_bias in (True, False):
        try:
            y = _call(a_q, a_s, w_q, weight_scales(w_s), b, torch.bfloat16, with_bias)
            rel = ((y.float() - ref).norm() / ref.norm()).item()
            if rel < 1e-2:
                return {"ok": True, "bias": with_bias}
            err = RuntimeError(f"result off the reference (rel L2 {rel:.3g})")
        except Exception as e:  # noqa: BLE001 - any failure: this path is unusable here
            err = e
    raise err


def _key(device: torch.device) -> str:
    # "cuda" and "cuda:0" are one device: one probe entry
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index}"


def available(device: torch.device) -> bool:
    """Whether cuBLAS blockwise fp8 serves this device (probed once; never during a graph capture)."""
    if torch.device(device).type != "cuda" or os.environ.get("TURBOVID_FP8_CUBLAS", "1") == "0":
        return False
    key = _key(device)
    state = _probe.get(key)
    if state is None:
        if torch.cuda.is_current_stream_capturing():
            return False  # probing syncs; the warm-up before a capture probes instead
        try:
            state = _run_probe(device)
            log.info("fp8 linears: cuBLAS blockwise scaled_mm on %s", key)
        except Exception as e:  # noqa: BLE001
            state = {"ok": False, "bias": False}
            log.info("fp8 linears: cuBLAS blockwise scaled_mm unavailable on %s (%s: %s); using the Triton GEMM",
                     key, type(e).__name__, str(e).splitlines()[0][:160] if str(e) else "")
        _probe[key] = state
    return state["ok"]


M_MULTIPLE = 8


def serves(x: torch.Tensor, w_q: torch.Tensor) -> bool:
    """cuBLAS path for this call: bf16 activations, K and N multiples of 128, M of 8, probe passed."""
    n, k = w_q.shape
    return (x.is_cuda and x.dtype == torch.bfloat16 and k % BLOCK == 0 and n % BLOCK == 0
            and (x.numel() // max(k, 1)) % M_MULTIPLE == 0 and available(x.device))


def serves_quantized(a_q: torch.Tensor, w_q: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """cuBLAS path for an activation already quantized (e4m3 [M, K]) with a bf16 output."""
    n, k = w_q.shape
    return (a_q.is_cuda and out_dtype == torch.bfloat16 and k % BLOCK == 0 and n % BLOCK == 0
            and a_q.shape[0] % M_MULTIPLE == 0 and available(a_q.device))


def linear_quantized(
    a_q: torch.Tensor, a_s: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor,
    bias: torch.Tensor | None, out_dtype: torch.dtype,
) -> torch.Tensor:
    """y = dequant(a_q) @ W^T + b for a_q [M, K] e4m3 with scales [K/128, M] (quantize_act's layout)."""
    state = _probe[_key(a_q.device)]
    return _call(a_q.contiguous(), a_s, w_q, weight_scales(w_s), bias, out_dtype, state["bias"])


def linear(
    x: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor, bias: torch.Tensor | None = None,
    gelu_input: bool = False,
) -> torch.Tensor:
    """y = x @ W^T + b (gelu_input: tanh-GELU(x) @ W^T + b), x quantized by our Triton kernel, GEMM in cuBLAS."""
    from turbovid.ops.quant.int8 import kernels

    shape = x.shape
    a_q, a_s = kernels().quantize_act(x.reshape(-1, shape[-1]), "fp8", gelu=gelu_input)
    y = linear_quantized(a_q, a_s, w_q, w_s, bias, x.dtype)
    return y.reshape(*shape[:-1], w_q.shape[0])
