"""Triton kernels for block-scaled W8A8 linears (int8, and fp8 e4m3 on Hopper/Ada).

Two launches per linear:

1. `quantize_act`: one program per (128 rows x 128 channels) tile of the activation. int8 follows
   TurboDiffusion's rule (one scale per 128x128 tile: amax floored at 1e-8, q = rne(x * 128/amax)
   saturated to [-128, 127], scale = amax/128). fp8 keeps one scale per (1 row x 128 channels)
   group (amax/448), stored transposed [K/128, M] so the GEMM reads it coalesced.
2. `scaled_mm`: C[M, N] = sum over 128-wide K blocks kb of
       dot(A_q[:, kb], B_q[:, kb]^T)  (exact int32, or fp32 for fp8)
       * scale_a[m, kb] * scale_b[n // 128, kb]
   accumulated in fp32, + bias, stored in the output dtype. BLOCK_K is pinned to 128 so every
   K step is exactly one scale block. A tile of BLOCK_N columns is split into SPLIT_N sub-tiles
   of <= 128 columns so each sub-tile sees a single weight scale per K step (a scalar multiply
   instead of an outer product), and the int32 temporary stays small.

int32 -> fp32 promotion: either a plain conversion, or (MAGIC) the accumulator starts at the bit
pattern of 1.5 * 2**23 so the int32 result read as fp32 is 12582912 + v exactly (|v| <= 2**21 for
one 128-deep block), and one subtraction recovers v: full-rate FADD instead of a conversion.
Both are exact; autotuning picks.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from turbovid.ops import gluon_switch
from turbovid.ops.quant import int8, int8_gluon
from turbovid.ops.tuning import autotune

try:  # present on Triton >= 3.1; the device loop falls back to pointer loads without it
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

try:
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover
    libdevice = None

BLOCK = 128
FP8_MAX = 448.0
_MAGIC_F = 12582912.0  # 1.5 * 2**23
_MAGIC_I = 0x4B400000  # its bit pattern


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------- activation quant


@triton.jit
def _rne(v, INTERPRET: tl.constexpr):
    # Round half to even. The interpreter has no libdevice; adding and removing 1.5*2**23 rounds
    # exactly for |v| < 2**22 (kept off the device where fp contraction could fuse it).
    if INTERPRET:
        return (v + 12582912.0) - 12582912.0
    else:
        return libdevice.rint(v)


@triton.jit
def _to_e4m3(v, INTERPRET: tl.constexpr):
    # v already clamped to +-448. The device converts with round-to-nearest-even; the interpreter's
    # conversion is not exact, so there we round to the e4m3 grid first (3 mantissa bits,
    # fixed 2**-9 step below the smallest normal 2**-6) and convert an exact value.
    if INTERPRET:
        bits = v.to(tl.int32, bitcast=True)
        e = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)
        step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
        r = tl.abs(((v / step + 12582912.0) - 12582912.0) * step)
        v = tl.where(bits < 0, -r, r)  # keep the sign (of zero too), as the device does
    return v.to(tl.float8e4nv)


@triton.jit
def _e4m3_at_bound(x, bound, INTERPRET: tl.constexpr):
    # quant.fp8_tensor's per-tensor rule: e4m3(clamp(x * 448 / bound)), the bound floored at 1e-8
    mult = tl.math.div_rn(tl.full([], 448.0, tl.float32), tl.maximum(bound, 1e-8))
    return _to_e4m3(tl.minimum(tl.maximum(x.to(tl.float32) * mult, -448.0), 448.0), INTERPRET)


@triton.jit
def _int8_multiplier(amax, tbl_ptr, USE_TABLE: tl.constexpr, EXP_LO: tl.constexpr, EXP_HI: tl.constexpr):
    # 128 / amax as the reference computes it (int8.RCP128_TABLE): table[mantissa] * 2**-exponent
    # for a bf16 amax in the checked range, the floor's own value, else IEEE division
    quotient = tl.math.div_rn(tl.full([], 128.0, tl.float32), amax)
    if USE_TABLE:
        bits = amax.to(tl.int32, bitcast=True)
        exp = (bits >> 23) & 0xFF
        use = ((bits & 0xFFFF) == 0) & (exp >= EXP_LO) & (exp < EXP_HI)
        pow2 = ((254 - tl.minimum(tl.maximum(exp, 1), 253)) << 23).to(tl.float32, bitcast=True)
        approx = tl.load(tbl_ptr + ((bits >> 16) & 0x7F)) * pow2
        quotient = tl.where(use, approx, quotient)
        quotient = tl.where(bits == 0x322BCC77, tl.load(tbl_ptr + 128), quotient)
    return quotient


@triton.jit
def _quant_act_kernel(
    x_ptr, q_ptr, s_ptr, tbl_ptr, M, K,
    stride_xm, stride_qm, stride_sr, stride_sk,
    ROW_SCALES: tl.constexpr,  # False: one scale per 128x128 tile (int8); True: per row of it (fp8)
    IS_FP8: tl.constexpr, INTERPRET: tl.constexpr,
    USE_TABLE: tl.constexpr, EXP_LO: tl.constexpr, EXP_HI: tl.constexpr,
    PRE_GELU: tl.constexpr = False,  # quantize tanh-GELU(x) (rounded to x's dtype), as an unfused GELU would
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = pid_m * 128 + tl.arange(0, 128)
    rk = pid_k * 128 + tl.arange(0, 128)
    row_ok = rm < M
    mask = row_ok[:, None] & (rk[None, :] < K)
    x = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :], mask=mask, other=0.0)
    if PRE_GELU:  # FFN: the GELU between the two linears, fused here (saves a pass over [M, ffn_dim])
        xf = x.to(tl.float32)
        u = 0.7978845608028654 * (xf + 0.044715 * xf * xf * xf)
        x = (0.5 * xf * (2.0 * tl.sigmoid(2.0 * u))).to(x.dtype)  # 1 + tanh(u) = 2 sigmoid(2u)
    x = x.to(tl.float32)  # (128, 128)
    qmax = 448.0 if IS_FP8 else 128.0
    if ROW_SCALES:
        amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-8)  # (128,)
        mult = tl.math.div_rn(tl.full((128,), qmax, tl.float32), amax)[:, None]
        scale = tl.math.div_rn(amax, tl.full((128,), qmax, tl.float32))
        tl.store(s_ptr + rm * stride_sr + pid_k * stride_sk, scale, mask=row_ok)
    else:
        amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-8)  # scalar
        if IS_FP8:
            mult = tl.math.div_rn(tl.full([], qmax, tl.float32), amax)
        else:
            mult = _int8_multiplier(amax, tbl_ptr, USE_TABLE, EXP_LO, EXP_HI)
        scale = tl.math.div_rn(amax, tl.full([], qmax, tl.float32))
        tl.store(s_ptr + pid_m * stride_sr + pid_k * stride_sk, scale)
    v = x * mult
    if IS_FP8:
        q = _to_e4m3(tl.minimum(tl.maximum(v, -448.0), 448.0), INTERPRET)
    else:
        q = tl.minimum(tl.maximum(_rne(v, INTERPRET), -128.0), 127.0).to(tl.int8)
    tl.store(q_ptr + rm[:, None].to(tl.int64) * stride_qm + rk[None, :], q, mask=mask)


# Warps per 128 x 128 tile, without / with the GELU (benchmarks/explore_act_quant.py, H100, fp8,
# M = 32760): the quantization alone is bandwidth-bound at 8 warps (0.323 ms at K = 8960); the GELU
# needs more threads for its arithmetic: 0.425 ms on 8 warps, 0.362 on 16 (0.650 -> 0.554 at 13824).
QUANT_WARPS = {False: 8, True: 16}


def quantize_act(x: torch.Tensor, fmt: str = "int8", gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D activation [M, K]. int8: (q [M, K], scales [ceil(M/128), ceil(K/128)]);
    fp8: (q [M, K] e4m3, scales [ceil(K/128), M], one per row and 128 channels, transposed).
    gelu=True quantizes tanh-GELU(x) instead (x's dtype in between)."""
    if x.ndim != 2:
        raise ValueError(f"quantize_act expects a 2-D tensor, got shape {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    m, k = x.shape
    mb, kb = triton.cdiv(m, BLOCK), triton.cdiv(k, BLOCK)
    if fmt == "int8":
        q = torch.empty(m, k, dtype=torch.int8, device=x.device)
        s = torch.empty(mb, kb, dtype=torch.float32, device=x.device)
        stride_sr, stride_sk = kb, 1
    elif fmt == "fp8":
        q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
        s = torch.empty(kb, m, dtype=torch.float32, device=x.device)
        stride_sr, stride_sk = 1, m
    else:
        raise ValueError(f"unknown quant format {fmt!r}: use 'int8' or 'fp8'")
    if m == 0 or k == 0:
        return q, s
    table = int8.rcp_table(x.device) if fmt == "int8" else None
    _quant_act_kernel[(mb, kb)](
        x, q, s, s if table is None else table, m, k, x.stride(0), q.stride(0), stride_sr, stride_sk,
        ROW_SCALES=fmt == "fp8", IS_FP8=fmt == "fp8", INTERPRET=interpreting(),
        USE_TABLE=table is not None, EXP_LO=int8.TABLE_EXPONENTS[0], EXP_HI=int8.TABLE_EXPONENTS[1],
        PRE_GELU=gelu, num_warps=QUANT_WARPS[gelu],
    )
    return q, s


# ----------------------------------------------------------------------------- block-scaled GEMM


@triton.jit
def _load_sa(sa_ptrs, kb, stride_sak, rm, M, num_k, SCALAR: tl.constexpr):
    # activation scales of K block kb (zeros past the last block)
    if SCALAR:
        return tl.load(sa_ptrs + kb * stride_sak, mask=kb < num_k, other=0.0)
    else:
        return tl.load(sa_ptrs + kb * stride_sak, mask=(rm < M) & (rm * 0 + kb < num_k), other=0.0)


@triton.jit
def _block_dot(acc, a, b, s, IS_INT8: tl.constexpr, MAGIC: tl.constexpr, SCALAR: tl.constexpr):
    # acc (BM, BN) fp32 += (a (BM, 128) . b (BN, 128)^T) * s (a scalar, or one per row (BM,))
    if IS_INT8:
        if MAGIC:
            blk = tl.dot(a, tl.trans(b), tl.full(acc.shape, 0x4B400000, tl.int32), out_dtype=tl.int32)
            part = blk.to(tl.float32, bitcast=True) - 12582912.0
        else:
            part = tl.dot(a, tl.trans(b), out_dtype=tl.int32).to(tl.float32)
    else:
        part = tl.dot(a, tl.trans(b), out_dtype=tl.float32)
    if SCALAR:
        return acc + part * s
    else:
        return acc + part * s[:, None]


@triton.jit
def _store_tile(c_ptr, acc, bias_ptr, rm, rn, M, N, stride_cm, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scaled_mm_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr,
    M, N, K, M_BUCKET,  # M_BUCKET only keys the autotuner
    stride_am, stride_bn, stride_cm, stride_sam, stride_sak, stride_sbn, stride_sbk,
    ACT_ROWS: tl.constexpr,  # rows sharing one activation scale: 128 (int8) or 1 (fp8)
    IS_INT8: tl.constexpr, HAS_BIAS: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_N: tl.constexpr, GROUP_M: tl.constexpr,
    MAGIC: tl.constexpr,
):
    BLOCK_K: tl.constexpr = 128
    BN: tl.constexpr = BLOCK_N // SPLIT_N  # columns per sub-tile; divides 128
    tl.static_assert(SPLIT_N == 1 or SPLIT_N == 2)
    tl.static_assert(128 % BN == 0)

    # grouped launch order: GROUP_M row tiles share each weight tile while it is in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_size
    pid_n = (pid % in_group) // group_size
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N

    rm = off_m + tl.arange(0, BLOCK_M)
    rn0 = off_n + tl.arange(0, BN)
    rn1 = rn0 + BN
    rk = tl.arange(0, BLOCK_K)
    # one activation scale for the whole tile (int8, BLOCK_M <= 128) or one per row
    SCALAR_SA: tl.constexpr = ACT_ROWS >= BLOCK_M
    if SCALAR_SA:
        sa_ptrs = sa_ptr + (off_m // ACT_ROWS) * stride_sam
    else:
        sa_ptrs = sa_ptr + (rm // ACT_ROWS) * stride_sam
    sb0_ptr = sb_ptr + (off_n // 128) * stride_sbn
    sb1_ptr = sb_ptr + ((off_n + BN) // 128) * stride_sbn
    has1 = off_n + BN < N
    num_k = tl.cdiv(K, BLOCK_K)

    acc0 = tl.zeros((BLOCK_M, BN), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BN), dtype=tl.float32)
    zero = 0 if IS_INT8 else 0.0  # masked-load filler in the operand dtype
    # scales of K block kb are loaded one step ahead, so their latency hides behind a block product
    sa = _load_sa(sa_ptrs, 0, stride_sak, rm, M, num_k, SCALAR_SA)
    sb0 = tl.load(sb0_ptr)
    sb1 = tl.load(sb1_ptr, mask=has1, other=0.0)
    for kb in range(0, num_k):
        k0 = kb * BLOCK_K
        more = kb + 1 < num_k
        sa_next = _load_sa(sa_ptrs, kb + 1, stride_sak, rm, M, num_k, SCALAR_SA)
        sb0_next = tl.load(sb0_ptr + (kb + 1) * stride_sbk, mask=more, other=0.0)
        if USE_TMA:
            a = a_ptr.load([off_m, k0])
            b0 = b_ptr.load([off_n, k0])
        else:
            kmask = (k0 + rk)[None, :] < K
            a = tl.load(a_ptr + rm[:, None].to(tl.int64) * stride_am + (k0 + rk)[None, :],
                        mask=(rm[:, None] < M) & kmask, other=zero)
            b0 = tl.load(b_ptr + rn0[:, None] * stride_bn + (k0 + rk)[None, :],
                         mask=(rn0[:, None] < N) & kmask, other=zero)
        acc0 = _block_dot(acc0, a, b0, sa * sb0, IS_INT8, MAGIC, SCALAR_SA)
        if SPLIT_N == 2:
            sb1_next = tl.load(sb1_ptr + (kb + 1) * stride_sbk, mask=more & has1, other=0.0)
            if USE_TMA:
                b1 = b_ptr.load([off_n + BN, k0])
            else:
                b1 = tl.load(b_ptr + rn1[:, None] * stride_bn + (k0 + rk)[None, :],
                             mask=(rn1[:, None] < N) & kmask, other=zero)
            acc1 = _block_dot(acc1, a, b1, sa * sb1, IS_INT8, MAGIC, SCALAR_SA)
            sb1 = sb1_next
        sa = sa_next
        sb0 = sb0_next

    _store_tile(c_ptr, acc0, bias_ptr, rm, rn0, M, N, stride_cm, HAS_BIAS)
    if SPLIT_N == 2:
        _store_tile(c_ptr, acc1, bias_ptr, rm, rn1, M, N, stride_cm, HAS_BIAS)


def _cfg(bm, bn, split, warps, stages, magic=False, group=8, maxnreg=None):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "SPLIT_N": split, "GROUP_M": group, "MAGIC": magic},
        num_warps=warps, num_stages=stages, maxnreg=maxnreg, pre_hook=_set_block_shapes,
    )


def _set_block_shapes(nargs):
    if not nargs.get("USE_TMA"):
        return
    nargs["a_ptr"].block_shape = [nargs["BLOCK_M"], BLOCK]
    nargs["b_ptr"].block_shape = [nargs["BLOCK_N"] // nargs["SPLIT_N"], BLOCK]


# Hopper candidates (Ampere/Ada run the smaller ones). BLOCK_K is fixed at 128 (one scale block).
# 128x128 / 8 warps needs ~160 registers (one CTA per SM, block product and promotion in turn);
# 64x128 and 128x64 on 4 warps, or a 128-register cap, let two or three CTAs share an SM so one's
# promotion overlaps another's wgmma. 256-wide tiles spill.
CONFIGS = [
    _cfg(128, 128, 1, 8, 3), _cfg(128, 128, 1, 8, 4), _cfg(128, 128, 1, 8, 5), _cfg(128, 128, 1, 8, 4, magic=True),
    _cfg(128, 128, 1, 8, 3, maxnreg=128), _cfg(256, 128, 1, 8, 3), _cfg(128, 256, 2, 8, 3),
    _cfg(64, 128, 1, 4, 3), _cfg(64, 128, 1, 4, 4), _cfg(128, 64, 1, 4, 4),
]
# Used under TRITON_INTERPRET and when autotuning is off: small, any shape.
DEFAULT_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "SPLIT_N": 1, "GROUP_M": 8, "MAGIC": False}


def _prune(configs, named_args, **kwargs):
    # MAGIC only changes the int8 promotion: fp8 keeps one of each pair
    if kwargs.get("IS_INT8", named_args.get("IS_INT8")):
        return configs
    return [c for c in configs if not c.kwargs["MAGIC"]]


_scaled_mm_tuned = autotune(  # results kept on disk (ops/tuning.py): tuned once, not every run
    CONFIGS, ["N", "K", "M_BUCKET", "IS_INT8", "USE_TMA", "HAS_BIAS"],
    prune_configs_by={"early_config_prune": _prune},
)(_scaled_mm_kernel)


def _can_tma(a: torch.Tensor, b: torch.Tensor) -> bool:
    if TensorDescriptor is None or os.environ.get("TURBOVID_NO_TMA") == "1":
        return False
    if not interpreting() and (not a.is_cuda or torch.cuda.get_device_capability(a.device)[0] < 9):
        return False
    # TMA: 16-byte aligned base and row strides
    return all(t.stride(1) == 1 and t.stride(0) % 16 == 0 and t.data_ptr() % 16 == 0 for t in (a, b))


def scaled_mm(
    a_q: torch.Tensor, a_s: torch.Tensor, b_q: torch.Tensor, b_s: torch.Tensor,
    bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
    config: dict | None = None, use_tma: bool | None = None,
) -> torch.Tensor:
    """C = blockwise-dequant(a_q) @ blockwise-dequant(b_q)^T (+ bias), fp32 accumulation.

    a_q [M, K] int8 with a_s [ceil(M/128), ceil(K/128)], or e4m3 with a_s [ceil(K/128), M];
    b_q [N, K] of the same dtype with b_s [ceil(N/128), ceil(K/128)]. `config` pins a kernel config
    (else autotuned; fixed under TRITON_INTERPRET)."""
    is_int8 = a_q.dtype == torch.int8
    if b_q.dtype != a_q.dtype or a_q.dtype not in (torch.int8, torch.float8_e4m3fn):
        raise ValueError(f"scaled_mm needs int8 or float8_e4m3fn operands of one dtype, got {a_q.dtype} and {b_q.dtype}")
    m, k = a_q.shape
    n, k2 = b_q.shape
    kb = triton.cdiv(k, BLOCK)
    a_s_shape = (triton.cdiv(m, BLOCK), kb) if is_int8 else (kb, m)
    if k2 != k or tuple(b_s.shape) != (triton.cdiv(n, BLOCK), kb) or tuple(a_s.shape) != a_s_shape:
        raise ValueError(
            f"scaled_mm shape mismatch: a {tuple(a_q.shape)} / scales {tuple(a_s.shape)} (want {a_s_shape}), "
            f"b {tuple(b_q.shape)} / scales {tuple(b_s.shape)} (want {(triton.cdiv(n, BLOCK), kb)})"
        )
    a_q, b_q = a_q.contiguous(), b_q.contiguous()
    a_s, b_s = a_s.float().contiguous(), b_s.float().contiguous()
    c = torch.empty(m, n, dtype=out_dtype, device=a_q.device)
    if m == 0 or n == 0:
        return c
    if k == 0:
        return c.zero_() if bias is None else c.copy_(bias.expand(m, n))
    if is_int8 and config is None and use_tma is None and int8_gluon.available(a_q, b_q, out_dtype):
        done = _gluon_mm(a_q, a_s, b_q, b_s, bias, c)
        if done is not None:
            return done
    tma = _can_tma(a_q, b_q) if use_tma is None else use_tma
    a_arg = TensorDescriptor.from_tensor(a_q, [1, BLOCK]) if tma else a_q  # block shape set per config
    b_arg = TensorDescriptor.from_tensor(b_q, [1, BLOCK]) if tma else b_q
    has_bias = bias is not None
    args = (
        a_arg, b_arg, c, a_s, b_s, bias if has_bias else c,
        m, n, k, min(triton.next_power_of_2(m), 1 << 16),
        a_q.stride(0), b_q.stride(0), c.stride(0), a_s.stride(1 if not is_int8 else 0),
        a_s.stride(0 if not is_int8 else 1), b_s.stride(0), b_s.stride(1),
    )
    consts = dict(ACT_ROWS=BLOCK if is_int8 else 1, IS_INT8=is_int8, HAS_BIAS=has_bias, USE_TMA=tma)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    if config is None and not interpreting() and os.environ.get("TURBOVID_NO_AUTOTUNE") != "1":
        _scaled_mm_tuned[grid](*args, **consts)
    else:
        cfg = dict(DEFAULT_CONFIG)
        cfg.update(config or {})
        warps, stages = cfg.pop("num_warps", 8), cfg.pop("num_stages", 3)
        if tma:
            a_arg.block_shape = [cfg["BLOCK_M"], BLOCK]
            b_arg.block_shape = [cfg["BLOCK_N"] // cfg["SPLIT_N"], BLOCK]
        _scaled_mm_kernel[grid](*args, **consts, **cfg, num_warps=warps, num_stages=stages)
    return c


def _gluon_mm(a_q, a_s, b_q, b_s, bias, c) -> torch.Tensor | None:
    """The Gluon kernel (int8_gluon) into c, or None where it failed on this device
    (gluon_switch.attempt: logged once)."""
    return gluon_switch.attempt("int8 GEMM: the Gluon kernel", a_q.device, int8_gluon.log, int8_gluon.scaled_mm,
                                a_q, a_s, b_q, b_s, bias, c, int8_gluon.config_for(c.shape[1], a_q.shape[1]))


def best_config(n: int, k: int, m: int, is_int8: bool = True) -> str:
    """The autotuner's pick for a shape (after a call), for benchmark reports."""
    for key, cfg in _scaled_mm_tuned.cache.items():
        if key[0] == n and key[1] == k and key[2] == min(triton.next_power_of_2(m), 1 << 16) and key[3] == is_int8:
            return str(cfg)
    return "?"


def linear(
    x: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor, bias: torch.Tensor | None = None,
    config: dict | None = None, gelu_input: bool = False,
) -> torch.Tensor:
    """y = x @ W^T + b with W given block-quantized (int8 or e4m3); x is quantized on the fly
    (gelu_input: y = tanh-GELU(x) @ W^T + b, the GELU fused into the quantization)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    fmt = "int8" if w_q.dtype == torch.int8 else "fp8"
    x_q, x_s = quantize_act(x2, fmt, gelu=gelu_input)
    y = scaled_mm(x_q, x_s, w_q, w_s, bias, out_dtype=x.dtype, config=config)
    return y.reshape(*shape[:-1], w_q.shape[0])
