"""Per-tensor fp8 (e4m3): one scale per weight and one per activation, for cuBLAS's fast fp8 GEMM.

Why: the H100 runs a forward at its 700 W power cap, and there cuBLAS's per-tensor fp8 GEMM with fast
accumulation sustains 1320-1380 TFLOP/s at the 14B shapes against 1130-1160 for the block-scaled
one (`benchmarks/explore_gemm_power.py`); in a whole graphed forward the GEMM swap alone took the
1.3B 480p forward from 176 to 154 ms and the 14B one from 1089 to 914 ms (`explore_tensorwise.py`).

Rule, weights and activations alike (the scale is the dequantization factor):
    scale = bound / 448,  q = e4m3(clamp(x * (448 / bound), -448, 448))
where bound >= max|x|. Weights use their own amax, as does any activation without a known bound (one
extra read of it). The DiT's activations have bounds known before they are written, so no pass reads
them for their amax: a LayerNorm's output (each normalized value is at most sqrt(C - 1) in magnitude,
so h = n * w (1 + scale) + b (1 + scale) + shift stays within max_c sqrt(C - 1) |w (1 + scale)| +
|b (1 + scale) + shift|, times a small margin for rounding; the norm kernel quantizes as it writes),
the linear after it (output_bound_coefs), and softmax attention's outputs (max|V|; see
attention.blockmap.output_bound). e4m3 is a floating-point format: a bound looser than the amax shifts
every value down by the same factor but keeps its 3 mantissa bits, as long as the values stay above
the smallest normal (2^-6, i.e. 2^-15 of the bound). What per-tensor scales do cost, against block
scales, showed in cross-attention's k / v, which keep block scales (fp8.BLOCK_SCALED).

The GEMM is torch._scaled_mm with scalar scales (use_fast_accum: Hopper's fp8 accumulator without
periodic promotion; FAST_ACCUM = False gives the exactly accumulated kernel). Probed once per device;
on any failure (CPU, older GPU) the PyTorch reference runs, with one log line.
"""
from __future__ import annotations

import logging
import math
import os

import torch

log = logging.getLogger(__name__)

FP8_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn
# Fast accumulation skips the periodic promotion of the tensor cores' fp8 partial sums: 1.3B / 14B
# forwards 4% / 6% faster on an H100, with the same error against bf16 as exact accumulation
# (benchmarks/ab_fp8_scales.py, docs/benchmarks.md). TURBOVID_FP8_FAST_ACCUM=0 turns it off.
FAST_ACCUM = os.environ.get("TURBOVID_FP8_FAST_ACCUM", "1") != "0"
# The LayerNorm bound is exact math; the margin covers the bf16 rounding of h before quantization
# (2^-9 relative) and float32 rounding in the statistics.
LN_BOUND_MARGIN = 1.0 + 2.0**-7
MIN_BOUND = 1e-8  # an all-zero tensor still gets a finite scale

# ---- PyTorch references (the rule above; the kernels produce the same bytes) --------------------

def _div(a: torch.Tensor, b: float) -> torch.Tensor:
    # a tensor / tensor division: CUDA divides by a Python scalar through its reciprocal, one ulp
    # away from the kernels' IEEE division in places
    return a / torch.full_like(a, b)


def scale_of(bound: torch.Tensor) -> torch.Tensor:
    return _div(bound.float().clamp_min(MIN_BOUND), FP8_MAX)


def quantize_with_bound(x: torch.Tensor, bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values shaped like x, float32 scale [1]) for a bound >= max|x| (a 1-element tensor)."""
    b = bound.float().reshape(1).clamp_min(MIN_BOUND)
    mult = torch.full_like(b, FP8_MAX) / b
    q = (x.float() * mult).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, _div(b, FP8_MAX)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh-GELU in float32, rounded to x's dtype (as an unfused GELU stores it)."""
    return torch.nn.functional.gelu(x.float(), approximate="tanh").to(x.dtype)


def quantize_reference(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-tensor quantization of x (or of tanh-GELU(x)) with its own amax."""
    if gelu:
        x = gelu_tanh(x)
    return quantize_with_bound(x, x.detach().abs().amax().float().reshape(1) if x.numel() else x.new_zeros(1))


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 [N, K], float32 scale [1]). The scale is the power of two at or above amax / 448 (so
    amax lands in (224, 448]): e4m3 keeps its 3 mantissa bits either way, and weights on such scales
    move to a common one exactly (fused q/k/v, fp8.share_weight_scale)."""
    w = w.detach()
    amax = w.abs().amax().float().clamp_min(MIN_BOUND) if w.numel() else torch.ones((), device=w.device)
    scale = torch.exp2(torch.ceil(torch.log2(amax / FP8_MAX))).reshape(1)
    q = (w.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def ln_bound_reference(
    c: int, weight: torch.Tensor | None, bias: torch.Tensor | None, shift: torch.Tensor | None,
    scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bound [1], bound / 448 [1]) for LayerNorm(x) (affine w, b optional) * (1 + scale) + shift over c
    channels; shift / scale [B, c] (per sample) or None."""
    dev = next(t.device for t in (weight, bias, shift, scale, torch.empty(0)) if t is not None)
    w1 = weight.float() if weight is not None else torch.ones(c, device=dev)
    b1 = bias.float() if bias is not None else torch.zeros(c, device=dev)
    w1, b1 = w1.reshape(1, c), b1.reshape(1, c)
    if scale is not None:
        m = 1.0 + scale.float().reshape(-1, c)
        w1, b1 = w1 * m, b1 * m
    if shift is not None:
        b1 = b1 + shift.float().reshape(-1, c)
    bound = (math.sqrt(max(c - 1, 1)) * w1.abs() + b1.abs()).amax() * LN_BOUND_MARGIN
    bound = bound.clamp_min(MIN_BOUND).reshape(1)
    return bound, _div(bound, FP8_MAX)


# A linear's output from a per-tensor fp8 input with rows of L2 norm <= R (the norm kernel's
# largest row norm of h before quantization): by Cauchy-Schwarz, |y_j - b_j| <= s_w ||W_j||_2 ||x_hat||_2,
# and quantization moves a row's norm by at most 2^-4 of itself (half an e4m3 ulp) plus 2^-10 s_a per
# element below the normal range. OUTPUT_MARGIN covers the GEMM's fast accumulation and the bf16 output.
OUTPUT_MARGIN = 1.02
GELU_MIN = 0.1701  # |tanh-GELU(x)| <= 0.1701 for x < 0, and GELU(x) <= x above


def output_bound_coefs(w_q: torch.Tensor, w_s: torch.Tensor, bias: torch.Tensor | None) -> tuple[float, float, float]:
    """(coef_rn, coef_sa, const): bound = coef_rn * R + coef_sa * s_a + const for the linear's output
    (one host sync: computed once per weight)."""
    k = w_q.shape[1]
    w2 = float(w_q.float().square().sum(1).sqrt().amax()) * float(w_s) * OUTPUT_MARGIN
    bmax = float(bias.float().abs().amax()) if bias is not None and bias.numel() else 0.0
    return w2 * (1.0 + 2.0**-4), w2 * 2.0**-10 * math.sqrt(k), bmax


def from_norm_bound(rn: torch.Tensor, sa: torch.Tensor, coef_rn: float, coef_sa: float, const: float,
                    gelu: bool = False) -> torch.Tensor:
    b = coef_rn * rn.float().reshape(1) + coef_sa * sa.float().reshape(1) + const
    return b.clamp_min(GELU_MIN) if gelu else b


def linear_reference(
    a_q: torch.Tensor, a_s: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor, bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Dequantize both operands, float32 matmul, + bias."""
    y = (a_q.float() * a_s.float()) @ (w_q.float() * w_s.float()).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


# ---- the GEMM ------------------------------------------------------------------------------------

_probe: dict[str, bool] = {}


def _key(device: torch.device) -> str:
    device = torch.device(device)
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"


def _cublas(a_q, a_s, w_q, w_s, bias, out_dtype) -> torch.Tensor:
    return torch._scaled_mm(a_q, w_q.t(), scale_a=a_s, scale_b=w_s, bias=bias, out_dtype=out_dtype,
                            use_fast_accum=FAST_ACCUM)


def _run_probe(device: torch.device) -> None:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(64, 256, generator=g).to(device, torch.bfloat16)
    w = torch.randn(128, 256, generator=g).to(device, torch.bfloat16)
    b = torch.randn(128, generator=g).to(device, torch.bfloat16)
    a_q, a_s = quantize_reference(x)
    w_q, w_s = quantize_weight(w)
    ref = linear_reference(a_q, a_s, w_q, w_s, b, torch.float32)
    y = _cublas(a_q, a_s, w_q, w_s, b, torch.bfloat16).float()
    rel = ((y - ref).norm() / ref.norm()).item()
    if not rel < 1e-2:
        raise RuntimeError(f"result off the reference (rel L2 {rel:.3g})")


def cublas_available(device: torch.device) -> bool:
    """Whether torch._scaled_mm serves per-tensor fp8 on this device (probed once, never while capturing)."""
    device = torch.device(device)
    if device.type != "cuda" or os.environ.get("TURBOVID_FP8_CUBLAS", "1") == "0":
        return False
    key = _key(device)
    if key not in _probe:
        if torch.cuda.is_current_stream_capturing():
            return False
        try:
            _run_probe(device)
            _probe[key] = True
            log.info("fp8 linears: cuBLAS per-tensor scaled_mm (fast accumulation %s) on %s",
                     "on" if FAST_ACCUM else "off", key)
        except Exception as e:  # noqa: BLE001 - any failure: the reference serves
            _probe[key] = False
            log.warning("fp8 linears: cuBLAS per-tensor scaled_mm unavailable on %s (%s: %s); using the slow "
                        "PyTorch reference (use --quant int8 for speed)", key, type(e).__name__,
                        str(e).splitlines()[0][:160] if str(e) else "")
    return _probe[key]


def linear_quantized(
    a_q: torch.Tensor, a_s: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor, bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """y = dequant(a_q) @ dequant(w_q)^T + b for a_q [M, K] e4m3 and scales [1]."""
    n, k = w_q.shape
    shape = (a_q.shape[0], k, n)
    if (a_q.is_cuda and k % 16 == 0 and n % 16 == 0 and out_dtype in (torch.bfloat16, torch.float16)
            and shape not in _refused and cublas_available(a_q.device)):
        try:
            return _cublas(a_q.contiguous(), a_s, w_q, w_s, bias, out_dtype)
        except RuntimeError as e:  # a shape this cuBLAS has no kernel for: the reference, once logged
            _refused.add(shape)
            log.warning("fp8 linear: cuBLAS refused M, K, N = %s (%s); using the PyTorch reference for it",
                        shape, str(e).splitlines()[0][:160] if str(e) else type(e).__name__)
    return linear_reference(a_q, a_s, w_q, w_s, bias, out_dtype)


_refused: set[tuple[int, int, int]] = set()


# ---- the FFN's first linear with GELU and the hidden layer's quantization in the GEMM ------------

def linear_gelu_reference(
    a_q: torch.Tensor, a_s: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor, bias: torch.Tensor | None,
    bound: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 [M, N], scale [1]): tanh-GELU of the linear's output, quantized at `bound` (>= its max)."""
    y = linear_reference(a_q, a_s, w_q, w_s, bias, torch.float32)
    return quantize_with_bound(torch.nn.functional.gelu(y, approximate="tanh"), bound)


_gelu_gemm: dict[tuple, bool] = {}  # (device, m, n, k) -> cuBLASLt serves it


def _gelu_gemm_probe(device: torch.device) -> None:
    from turbovid.ops.quant import cublaslt

    g = torch.Generator(device="cpu").manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).to(device, torch.bfloat16) for s in ((64, 256), (128, 256), (128,)))
    a_q, a_s = quantize_reference(x)
    w_q, w_s = quantize_weight(w)
    bound = torch.full((1,), 64.0, device=device)
    want_q, want_s = linear_gelu_reference(a_q, a_s, w_q, w_s, b, bound)
    got = cublaslt.fp8_gemm_gelu_fp8(a_q, a_s, w_q, w_s, b, torch.full_like(bound, FP8_MAX) / bound, FAST_ACCUM)
    rel = ((got.float() - want_q.float()).norm() / want_q.float().norm()).item()
    if not rel < 2e-2:
        raise RuntimeError(f"result off the reference (rel L2 {rel:.3g})")


def gelu_gemm_serves(a_q: torch.Tensor, w_q: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether cuBLASLt's fused GEMM (quant.cublaslt) runs this FFN layer: probed once per device and
    planned once per shape, never first while a CUDA graph is captured; a failure logs one line and
    the unfused kernels serve."""
    from turbovid.ops.quant import cublaslt

    if not (a_q.is_cuda and bias is not None and bias.dtype == torch.bfloat16):
        return False
    dev = _key(a_q.device)
    (m, k), n = a_q.shape, w_q.shape[0]
    for key in ((dev,), (dev, m, n, k)):
        if key in _gelu_gemm:
            if not _gelu_gemm[key]:
                return False
            continue
        if torch.cuda.is_current_stream_capturing():
            return False
        try:
            reason = cublaslt.unavailable(a_q.device)
            if reason is not None:
                raise RuntimeError(reason)
            if len(key) == 1:
                _gelu_gemm_probe(a_q.device)
            else:
                cublaslt.plan(a_q.device, m, n, k, FAST_ACCUM, bias)
            _gelu_gemm[key] = True
        except Exception as e:  # noqa: BLE001 - any failure: the unfused kernels serve
            _gelu_gemm[key] = False
            log.warning("fp8 FFN: cuBLASLt's GELU-epilogue GEMM unavailable for %s (%s); GELU and quantization "
                        "run in their own pass", "this GPU" if len(key) == 1 else f"M, N, K = {m}, {n}, {k}",
                        str(e).splitlines()[0][:160] if str(e) else type(e).__name__)
            return False
    return True
