"""Block map and linear-branch statistics shared by the sla and sagesla kernels (Triton).

Three launches, each one pass over its input:
  key pass   over K (and V), 32 rows a step: per key block the mean of K; per chunk of blocks the
             partial sums of K, of phi(K) = softmax_D(K), of phi(K)^T V (the linear branch's
             reduction) and of max|V| per channel (sagesla's V scales); K's sums and phi(K)^T V
             on the tensor cores. Chunk partials are summed afterwards (deterministic; no atomics).
             Optionally writes head-major copies of K and V, so the attention kernel gathers
             contiguous blocks.
  query pool over Q: per query block the mean of Q, and optionally the linear branch for those
             queries (phi(Q) (phi(K)^T V) ..., proj_l), written into the output buffer that the
             attention kernel then adds its sparse part to.
  select     per group of query blocks: scores against the smoothed pooled keys (float32, exact),
             then an exact top-k per row by bisection on the scores' order-preserving int32 keys
             (each row inside one warp; the bisection stops once every row has a clean cut),
             written as an ascending list of block indices (ties keep the lower index).
Layout: q, k, v are [B, L, H, D] with unit stride on D; statistics are per (b, h) row-major.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from turbovid.ops.quant.int8_triton import _e4m3_at_bound, _to_e4m3

try:  # Triton >= 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: pointer loads only
    TensorDescriptor = None

from .sla_reference import LINEAR_EPS, keep_count

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # fixed when Triton decorates the kernels


@triton.jit
def _exp2_ftz(x, INTERPRET: tl.constexpr):
    # tl.exp's ex2.approx.f32 rescales arguments below -126 around the instruction (3 more per
    # element); flushing those to zero changes no sum that matters
    if INTERPRET:
        return tl.exp2(x)
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                     is_pure=True, pack=1)


@triton.jit
def _row_tile(X, bh, H, row0, s_l, L, SUB: tl.constexpr, D: tl.constexpr, USE_TMA: tl.constexpr):
    """Rows row0 .. row0 + SUB of head bh % H of batch bh // H, zero past L. X: a descriptor over
    [B, L, H*D] with blocks (1, SUB, D), which zero-fills rows past L, or that head's first row."""
    if USE_TMA:
        x = tl.reshape(X.load([bh // H, row0, (bh % H) * D]), [SUB, D])
    else:
        rows = row0 + tl.arange(0, SUB)
        x = tl.load(X + rows[:, None] * s_l + tl.arange(0, D)[None, :], mask=(rows < L)[:, None], other=0.0)
    return x


@triton.jit
def _key_pass_kernel(
    K, V, PK, KSUM, PHISUM, KV, VMAX, KC, VC,
    sk_b, sk_l, sk_h, sv_b, sv_l, sv_h,
    L, H, NK, NCH, CHB,
    D: tl.constexpr, BLKK: tl.constexpr, LINEAR: tl.constexpr, VABSMAX: tl.constexpr, COPY: tl.constexpr,
    STAGES: tl.constexpr = 1, SUB: tl.constexpr = 32, RED: tl.constexpr = 16, USE_TMA: tl.constexpr = False,
    INTERPRET: tl.constexpr = False,
):
    """Program (c, bh): key blocks c * CHB .. (c + 1) * CHB of row bh, SUB rows a step. A short chain
    per block (offline sm_90 compile: ~1150 instructions a thread per 128 rows with 4 barriers; the
    earlier kernel, which summed K and phi across warps, ~1900 with 20-35):
    - K's column sums (PK) on the tensor cores, K^T @ e0 with e0 one in column 0: no cross-warp sum;
    - phi^T V as (V^T phi)^T, both operands in shared memory: V stays out of the registers, and
      ptxas does not serialize the wgmmas (it did with phi^T as a register operand);
    - phi's normalisation one reciprocal per row with the row mask in it: no divide or select per element;
    - sum phi and max|V| kept per (RED, D) slice of rows, RED the rows one repetition of the tile's
      layout covers, so each thread folds its own rows; the cross-warp reduction once per program;
    - steps of SUB rows (a slice of a key block when SUB < BLKK): fewer registers, so two
      programs can share an SM, one's softmax beside the other's wgmma;
    - USE_TMA: K and V (descriptors over [B, L, H*D], rows past L zero-filled) through the bulk
      copy engine: no address or mask arithmetic per row."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    if USE_TMA:
        k_src, v_src = K, V
    else:
        k_src = K + (bh // H).to(tl.int64) * sk_b + (bh % H).to(tl.int64) * sk_h
        v_src = V + (bh // H).to(tl.int64) * sv_b + (bh % H).to(tl.int64) * sv_h
    r = tl.arange(0, SUB)
    d = tl.arange(0, D)
    e0 = (r[:, None] * 0 + tl.arange(0, 16)[None, :] == 0).to(KC.dtype.element_ty)  # (SUB, 16)
    SPB: tl.constexpr = BLKK // SUB  # slices per key block
    k_sum = tl.zeros([D], dtype=tl.float32)
    phi_acc = tl.zeros([RED, D], dtype=tl.float32)
    v_acc = tl.zeros([RED, D], dtype=tl.float32)
    kvt = tl.zeros([D, D], dtype=tl.float32)  # (phi^T V)^T
    blk_acc = tl.zeros([D, 16], dtype=tl.float32)
    for t in tl.range(CHB * SPB, num_stages=STAGES):
        blk = c * CHB + t // SPB
        row0 = (c * CHB * SPB + t) * SUB
        rows = row0 + r
        row_ok = rows < L
        k = _row_tile(k_src, bh, H, row0, sk_l, L, SUB, D, USE_TMA)
        if SPB > 1:  # a block's slices add up in one accumulator
            blk_acc = tl.dot(tl.trans(k), e0, tl.where(t % SPB == 0, 0.0, blk_acc))
        else:
            blk_acc = tl.dot(tl.trans(k), e0)
        if LINEAR or VABSMAX or COPY:
            v = _row_tile(v_src, bh, H, row0, sv_l, L, SUB, D, USE_TMA)
        if COPY:  # head-major copies (B*H, NK*BLKK, D), zero rows past L
            copy_at = (bh.to(tl.int64) * NK * BLKK + rows[:, None]) * D + d[None, :]
            tl.store(KC + copy_at, k, mask=rows[:, None] < NK * BLKK)
            tl.store(VC + copy_at, v, mask=rows[:, None] < NK * BLKK)
        if LINEAR:
            kf = k.to(tl.float32)
            m = tl.max(kf, 1) * 1.4426950408889634
            e = _exp2_ftz(kf * 1.4426950408889634 - m[:, None], INTERPRET)  # one FMA and the ex2
            phi = e * tl.where(row_ok, 1.0 / tl.sum(e, 1), 0.0)[:, None]
            phi_acc += tl.sum(tl.reshape(phi, [SUB // RED, RED, D]), 0)
            kvt = tl.dot(tl.trans(v), phi.to(v.dtype), kvt)  # (D, SUB) @ (SUB, D)
        if VABSMAX:
            v_acc = tl.maximum(v_acc, tl.max(tl.reshape(tl.abs(v.to(tl.float32)), [SUB // RED, RED, D]), 0))
        blk_sum = tl.sum(blk_acc, 1)  # column 0 holds the sums, the others are zero
        last = t % SPB == SPB - 1
        count = tl.minimum(L - blk * BLKK, BLKK).to(tl.float32)
        tl.store(PK + (bh * NK + blk).to(tl.int64) * D + d, blk_sum / count, mask=(blk + 0 * d < NK) & last)
        k_sum += tl.where(last, blk_sum, 0.0)
    part = (bh * NCH + c).to(tl.int64)
    tl.store(KSUM + part * D + d, k_sum)
    if LINEAR:
        tl.store(PHISUM + part * D + d, tl.sum(phi_acc, 0))
        tl.store(KV + part * D * D + d[None, :] * D + d[:, None], kvt)
    if VABSMAX:
        tl.store(VMAX + part * D + d, tl.max(v_acc, 0))


@triton.jit
def _linear_params(bh, KVW, PHISUM, BIAS, D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Head bh's (proj-folded kv, phi_sum, bias) for _linear_of: loaded once per program."""
    d = tl.arange(0, D)
    kvw = tl.load(KVW + bh.to(tl.int64) * D * D + d[:, None] * D + d[None, :])
    phi_sum = tl.load(PHISUM + bh * D + d)
    if HAS_BIAS:
        bias = tl.load(BIAS + d)
    else:
        bias = tl.zeros([D], dtype=tl.float32)
    return kvw, phi_sum, bias


@triton.jit
def _linear_of(q, kvw, phi_sum, bias, lin_eps, HAS_BIAS: tl.constexpr):
    """proj_l(phi(q) @ kv / (phi(q) . phi_sum + eps)) = phi(q) @ (kv @ W^T) / (...) + b for a
    (rows, D) block of queries: the denominator is per row, so proj_l's weight is folded into kv
    beforehand (kvw); kv and phi_sum come divided by L."""
    qf = q.to(tl.float32)
    e = tl.exp(qf - tl.max(qf, 1)[:, None])
    phi = e / tl.sum(e, 1)[:, None]
    num = tl.dot(phi.to(kvw.dtype), kvw)
    lin = num / (tl.sum(phi * phi_sum[None, :], 1) + lin_eps)[:, None]
    if HAS_BIAS:
        lin += bias[None, :]
    return lin


@triton.jit
def _linear_branch(q, bh, KVW, PHISUM, BIAS, lin_eps, D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """_linear_of for head bh, its parameters loaded here."""
    kvw, phi_sum, bias = _linear_params(bh, KVW, PHISUM, BIAS, D, HAS_BIAS)
    return _linear_of(q, kvw, phi_sum, bias, lin_eps, HAS_BIAS)


@triton.jit
def _store_output(
    o, O, OQ, OS, offs, rows, L, scale_offs, OUT_FP8: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Store a (rows, D) output tile in O's dtype or, with OUT_FP8 = 1 (D = 128: the tile is one
    128-channel group of each row), rounded to O's dtype and then quantized as an fp8 linear
    quantizes its input: e4m3 at OQ + offs, scale amax / 448 per row at OS + scale_offs + rows;
    OUT_FP8 = 2: e4m3 at one per-tensor scale, from the bound at OS (quant.fp8_tensor's rule).
    The o-projection then skips its own pass over the attention output."""
    ok = rows < L
    o = o.to(O.dtype.element_ty)
    if OUT_FP8 == 2:
        tl.store(OQ + offs, _e4m3_at_bound(o, tl.load(OS), INTERPRET), mask=ok[:, None])
    elif OUT_FP8 == 1:
        of = o.to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(of), 1), 1e-8)
        qmax = tl.full(amax.shape, 448.0, tl.float32)
        v = tl.minimum(tl.maximum(of * tl.math.div_rn(qmax, amax)[:, None], -448.0), 448.0)
        tl.store(OQ + offs, _to_e4m3(v, INTERPRET), mask=ok[:, None])
        tl.store(OS + scale_offs + rows, tl.math.div_rn(amax, qmax), mask=ok)
    else:
        tl.store(O + offs, o, mask=ok[:, None])


def fp8_mode(out_fp8) -> int:
    """The kernels' OUT_FP8: 0 (none: False / None), 1 (block scales: True / "block"), 2 ("tensor");
    an OUT_FP8 value itself passes through."""
    if out_fp8 is None or out_fp8 is False:
        return 0
    if isinstance(out_fp8, int) and out_fp8 in (0, 1, 2):  # True is 1
        return int(out_fp8)
    if out_fp8 == "block":
        return 1
    if out_fp8 == "tensor":
        return 2
    raise ValueError(f"out_fp8 must be False, True / 'block' or 'tensor', got {out_fp8!r}")


OUTPUT_BOUND_MARGIN = 1.07  # the fp8 P (and V terms) of sagesla: row weights may sum above 1 by 2^-4


def output_bound(v_absmax: torch.Tensor, proj_weight: torch.Tensor | None,
                 proj_bias: torch.Tensor | None) -> torch.Tensor:
    """[1]: a bound of |attention output| from max|V| per (b*h, channel) ([BH, D]): the sparse part is
    a convex combination of V's rows, so is the linear branch before proj_l, which then adds at most
    |W| max|V| + |b| per channel."""
    vmax = v_absmax.float()
    bound = vmax
    if proj_weight is not None:
        # |W| max|V| as a broadcast product and sum: cuBLAS's float32 GEMM for these few rows took
        # 55 us a layer on an H100 (profile_forward.py), the sum a few
        bound = bound + (vmax[:, None, :] * proj_weight.float().abs()[None]).sum(-1)
        if proj_bias is not None:
            bound = bound + proj_bias.float().abs()
    return (bound.amax() * OUTPUT_BOUND_MARGIN).reshape(1)


def v_absmax_of(stats: "BlockStats", v: torch.Tensor) -> torch.Tensor:
    """max|V| per (b*h, channel): the key pass's, else one pass over v."""
    if stats.v_absmax is not None:
        return stats.v_absmax
    B, L, H, D = v.shape
    return v.abs().amax(1).reshape(B * H, D)


def output_buffers(q: torch.Tensor, out: torch.Tensor, out_fp8, bound: torch.Tensor | None = None):
    """(e4m3 [B, L, H, D] with out's strides, float32 scales [H, B*L]) for OUT_FP8 = 1 launches, (e4m3,
    the bound [1]) for OUT_FP8 = 2, else (out, out) as placeholders. The block scales are
    quantize_act_fp8's layout for [B*L, H*D]."""
    mode = fp8_mode(out_fp8)
    if not mode:
        return out, out
    B, L, H, D = q.shape
    if D != 128 and mode == 1:
        raise ValueError(f"fp8 attention output needs head_dim 128 (one scale group per head), got {D}")
    oq = torch.empty_strided(out.shape, out.stride(), dtype=torch.float8_e4m3fn, device=q.device)
    if mode == 2:
        return oq, bound
    return oq, torch.empty(H, B * L, dtype=torch.float32, device=q.device)


def fp8_result(oq: torch.Tensor, os_: torch.Tensor, out_fp8) -> tuple[torch.Tensor, torch.Tensor]:
    """What a kernel returns for its OUT_FP8 launch: (e4m3, block scales) or (e4m3, scale = bound / 448)."""
    if fp8_mode(out_fp8) == 2:
        from turbovid.ops.quant.fp8_tensor import scale_of

        return oq, scale_of(os_)
    return oq, os_


def fold_proj(kv: torch.Tensor, proj_weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B*H, D, D) float32 phi(K)^T V / L times proj_l's W^T, in the kernels' dtype."""
    return (kv @ proj_weight.float().t()).to(dtype)


@triton.jit
def _pool_kernel(
    X, P, KVW, PHISUM, BIAS, OUT,
    sx_b, sx_l, sx_h, so_b, so_l, so_h, L, H, NB, lin_eps,
    D: tl.constexpr, BLK: tl.constexpr, LINEAR: tl.constexpr, HAS_BIAS: tl.constexpr, SUB: tl.constexpr = 0,
    STAGES: tl.constexpr = 2,
):
    """Mean of each block of BLK queries (P) and, with LINEAR, the linear branch of every query
    (OUT). SUB rows a step (SUB = 0: the whole block at once): the linear branch holds a few
    (rows, D) float32 tensors, and at 128 rows on 8 warps one program filled an SM's registers, so
    the SM waited on each program's loads in turn."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    d = tl.arange(0, D)
    STEP: tl.constexpr = BLK if SUB == 0 else SUB
    x_src = X + b * sx_b + h * sx_h
    out_dst = OUT + b * so_b + h * so_h
    col_sum = tl.zeros([D], dtype=tl.float32)
    if LINEAR:
        kvw, phi_sum, bias = _linear_params(bh, KVW, PHISUM, BIAS, D, HAS_BIAS)
    for i in tl.range(0, BLK // STEP, num_stages=STAGES):
        rows = blk * BLK + i * STEP + tl.arange(0, STEP)
        x = tl.load(x_src + rows[:, None] * sx_l + d[None, :], mask=rows[:, None] < L, other=0.0)
        col_sum += tl.sum(x.to(tl.float32), 0)
        if LINEAR:  # the linear branch for these queries, written where the attention kernel adds to it
            lin = _linear_of(x, kvw, phi_sum, bias, lin_eps, HAS_BIAS)
            tl.store(out_dst + rows[:, None] * so_l + d[None, :], lin.to(OUT.dtype.element_ty), mask=rows[:, None] < L)
    count = tl.minimum(L - blk * BLK, BLK).to(tl.float32)
    tl.store(P + (bh * NB + blk).to(tl.int64) * D + d, col_sum / count)


@triton.jit
def _select_kernel(
    PQ, PK, KMEAN, S, LUT,
    NQ, NK, KK, S_ROWS, S_STRIDE,
    D: tl.constexpr, QT: tl.constexpr, QD: tl.constexpr, CN: tl.constexpr, DC: tl.constexpr,
    NCH: tl.constexpr, CW: tl.constexpr, RS: tl.constexpr, EARLY: tl.constexpr,
):
    t = tl.program_id(0)
    bh = tl.program_id(1)
    # QD = max(QT, 16) rows go through the dot (its minimum height); only the first QT are this program's
    q_local = tl.arange(0, QD)
    q_rows = t * QT + q_local
    q_ok = (q_rows < NQ) & (q_local < QT)
    pq_rows = PQ + (bh * NQ + q_rows)[:, None].to(tl.int64) * D
    s_base = S + (bh * S_ROWS + t * QT).to(tl.int64) * S_STRIDE
    # 1. scores of QT query blocks against all key blocks, CN at a time, through a scratch row.
    # D in slices of DC keeps the operands of the (FMA) dot in registers; the dot still adds the
    # products in channel order, so the scores are the same bits as with one D-wide dot.
    for c0 in range(0, NK, CN):
        cols = c0 + tl.arange(0, CN)
        pk_rows = PK + (bh * NK + cols)[:, None].to(tl.int64) * D
        s = tl.zeros([QD, CN], dtype=tl.float32)
        for d0 in tl.static_range(0, D, DC):
            d = d0 + tl.arange(0, DC)
            pq = tl.load(pq_rows + d[None, :], mask=q_ok[:, None], other=0.0)
            pk = tl.load(pk_rows + d[None, :], mask=cols[:, None] < NK, other=0.0)
            pk = pk - tl.load(KMEAN + bh * D + d)[None, :]
            s = tl.dot(pq, tl.trans(pk), s, input_precision="ieee")  # (QD, CN)
        tl.store(s_base + q_local[:, None] * S_STRIDE + cols[None, :], s, mask=(q_local < QT)[:, None])
    tl.debug_barrier()
    # 2. exact top-KK per row. A row is held as (NCH, CW) chunks with the chunk axis outermost, so
    # each row sits in one warp and its counts need no shared-memory round trip.
    ch = tl.arange(0, NCH)[:, None, None]
    cols = ch * CW + tl.arange(0, CW)[None, None, :]  # (NCH, 1, CW)
    col_ok = cols < NK
    for r0 in tl.static_range(0, QT, RS):
        rows = r0 + tl.arange(0, RS)
        q_idx = t * QT + rows
        s = tl.load(s_base + rows[None, :, None] * S_STRIDE + cols, mask=col_ok, other=0.0)  # (NCH, RS, CW)
        # int32 keys whose signed order is the float order
        bits = s.to(tl.int32, bitcast=True)
        key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        key = tl.where(col_ok, key, -2147483648)
        # Radix select, most significant bit first, on the unsigned view u = key ^ MIN (same
        # order): the largest t with count(u >= t) >= KK is the KK-th largest. u >= t exactly when
        # key >= t ^ MIN (signed), so everything stays in int32. A row is done early once exactly
        # KK keys lie at or above its prefix (a clean cut); the loop ends when every row is done.
        prefix = tl.zeros([RS], dtype=tl.int32)
        if EARLY:  # costs a cross-warp vote per step
            done = q_idx >= NQ
            bit = tl.where(tl.sum((~done).to(tl.int32), 0) > 0, -2147483648, 0)  # the same for every row
            while bit != 0:
                cand = prefix | bit
                count = tl.sum(tl.sum((key >= (cand ^ -2147483648)[None, :, None]).to(tl.int32), 2), 0)
                prefix = tl.where(count >= KK, cand, prefix)
                done = done | (count == KK)
                bit = tl.where(tl.sum((~done).to(tl.int32), 0) > 0, (bit >> 1) & 0x7FFFFFFF, 0)
        else:
            bit = -2147483648
            for _ in range(32):
                cand = prefix | bit
                count = tl.sum(tl.sum((key >= (cand ^ -2147483648)[None, :, None]).to(tl.int32), 2), 0)
                prefix = tl.where(count >= KK, cand, prefix)
                bit = (bit >> 1) & 0x7FFFFFFF
        cut = (prefix ^ -2147483648)[None, :, None]
        above = key > cut
        tie = ((key == cut) & col_ok).to(tl.int32)
        need = KK - tl.sum(tl.sum(above.to(tl.int32), 2), 0)
        keep = above | ((tie != 0) & (_row_cumsum(tie) <= need[None, :, None]))
        pos = _row_cumsum(keep.to(tl.int32)) - 1
        dst = LUT + (bh * NQ + q_idx)[None, :, None].to(tl.int64) * KK + pos
        tl.store(dst, cols + 0 * rows[None, :, None], mask=keep & (q_idx < NQ)[None, :, None])


@triton.jit
def _row_cumsum(x):
    """Inclusive running sum along rows held as (NCH, rows, CW) chunks, in column order."""
    within = tl.cumsum(x, 2)
    totals = tl.sum(x, 2)
    before = tl.cumsum(totals, 0) - totals
    return within + before[:, :, None]


@dataclass
class BlockStats:
    """Per (b, h) statistics from one pass over Q, K, V; leading dim is B * H."""

    lut: torch.Tensor  # int32 (B*H, nq, kk): kept key blocks per query block, ascending
    kk: int
    k_mean: torch.Tensor  # float32 (B*H, D): token mean of K
    kv: torch.Tensor | None  # float32 (B*H, D, D): phi(K)^T V / L
    phi_sum: torch.Tensor | None  # float32 (B*H, D): sum_t phi(K) / L
    v_absmax: torch.Tensor | None  # float32 (B*H, D): max_t |V| per channel
    k_copy: torch.Tensor | None = None  # (B*H, nk * blkk, D): K head-major, zero rows past L
    v_copy: torch.Tensor | None = None
    linear_out: torch.Tensor | None = None  # [B, L, H, D] holding the linear branch, when asked for


@dataclass(frozen=True)
class StatsConfig:
    # key pass: 4 warps, two programs per SM, steps of 32 rows, K and V through tensor descriptors
    # where their strides allow. H100, benchmarks/explore_keypass.py: run 3
    # (results/2026-11-26-explore-keypass-h100-run3.json, its "tc_lean tma": 8 warps under a
    # 128-register cap) against the earlier kernel (8 warps, one program per SM for key blocks of
    # 128; 4 warps, two per SM for 64): 0.193 -> 0.092 ms at 1.3B sagesla, 0.155 -> 0.086 ms at
    # 1.3B sla, 0.686 -> 0.281 ms at 14B sagesla, the same block lists; steps of a whole key block
    # were never faster. Run 4 (...-run4.json): 4 warps without a cap 0.084 / 0.085 / 0.262 ms
    # against 0.090 / 0.086 / 0.282 ms on 8 warps.
    # None / the defaults: that rule; other values for the tests and benchmarks/explore_keypass.py.
    programs_per_sm: int | None = None
    key_warps: int | None = None
    key_rows: int = 32  # rows per step, at most a key block
    key_tma: bool = True  # False: pointer loads even where a descriptor could read K and V
    key_stages: int = 3  # software pipelining of the key pass's loop (run 3: 4 within 1% of 3)
    # select: 4 warps, 16 query blocks a program, the dot over D in slices of 32, the radix select
    # stopping early (benchmarks/explore_select.py run 2 on an H100: block map 0.52 -> 0.41 ms at
    # 1.3B 480p, 1.39 -> 1.16 ms at 14B 480p, 5.11 -> 3.46 ms at 14B 720p)
    select_warps: int = 4
    # query blocks per select program; None: 32 for rows of more than 1024 key blocks, else 16
    # (benchmarks/explore_select.py on an H100, session 19: block map 0.94 -> 0.88 ms at 1.3B 720p sla
    # and 2.85 -> 2.69 ms at 14B 720p sla, with half the programs; at 14B 480p sla, 512 key blocks,
    # 32 was slower, 0.91 vs 0.76 ms)
    select_rows: int | None = None
    select_cols: int = 128  # key blocks per chunk of a row in the top-k step (one warp's width in float32)
    select_dslice: int = 32  # channels per slice of the scores' dot (keeps its operands in registers)
    select_early: bool = True  # stop the radix select once every row has a clean cut
    # query pool with the linear branch: rows a step (0: the whole block at once, on 8 warps for
    # blocks of 128) and warps. The whole 128-row block on 8 warps held an SM alone (249 registers).
    pool_rows: int = 32
    pool_warps: int = 4


DEFAULT_STATS = StatsConfig()


def select_rows(cfg: StatsConfig, nk: int) -> int:
    """Query blocks per select program (StatsConfig.select_rows, or its rule by the row width)."""
    if cfg.select_rows is not None:
        return cfg.select_rows
    return 32 if nk > 1024 else 16


def key_launch(cfg: StatsConfig) -> tuple[int, int, int | None]:
    """(warps, resident programs per SM, register cap a thread) of the key pass. The cap lets the
    programs share the SM's 64K registers (ptxas takes up to 255 otherwise)."""
    warps, per_sm = cfg.key_warps or 4, cfg.programs_per_sm or 2
    regs = 65536 // (32 * warps * per_sm) // 8 * 8
    return warps, per_sm, regs if regs < 255 else None


@functools.lru_cache(maxsize=256)
def key_chunk_blocks(nk: int, bh: int, slots: int, overhead: int) -> int:
    """Key blocks per key-pass program. Each (b, h) row's nk blocks are cut into chunks, one per
    program; `slots` programs run at once. The time model: waves x (blocks per program + overhead),
    where a partial last wave costs a whole one and `overhead` (in blocks) prices the D x D partial
    each program writes and the sum reads back. It fitted the H100 timings of 1.3B and 14B shapes
    within 5% (benchmarks/explore_keypass.py). Ties go to fewer chunks."""
    best_cost, best_chb = None, nk
    for nch in range(1, nk + 1):
        chb = -(-nk // nch)
        cost = -(-bh * -(-nk // chb) // slots) * (chb + overhead)
        if best_cost is None or cost < best_cost:
            best_cost, best_chb = cost, chb
    return best_chb


def _tma_view(x: torch.Tensor) -> bool:
    """[B, L, H, D] whose rows are [B, L, H*D] with 16-byte aligned strides: a descriptor can read it."""
    return (x.stride(3) == 1 and x.stride(2) == x.shape[3] and x.data_ptr() % 16 == 0
            and all(s * x.element_size() % 16 == 0 for s in x.stride()[:2]))


def key_pass(
    k: torch.Tensor, v: torch.Tensor, blkk: int, linear: bool, v_absmax: bool, kv_copy: bool,
    cfg: StatsConfig, chb: int | None = None,
) -> tuple:
    """One pass over K and V: (pooled K (B*H, nk, D); chunk partials (B*H, nch, ...) of sum K, sum
    phi(K), phi(K)^T V and max|V| per channel; head-major copies of K and V), None where not asked.
    Each program covers a contiguous chunk of chb key blocks (default: sized to whole waves)."""
    B, L, H, D = k.shape
    BH, nk, dev = B * H, triton.cdiv(L, blkk), k.device
    warps, per_sm, maxnreg = key_launch(cfg)
    chb = chb or key_chunk_blocks(nk, BH, per_sm * _num_sms(dev), max(1, 256 // blkk))
    nch = triton.cdiv(nk, chb)
    f32 = dict(dtype=torch.float32, device=dev)
    pk = torch.empty(BH, nk, D, **f32)
    k_sum = torch.empty(BH, nch, D, **f32)
    phi_sum = torch.empty(BH, nch, D, **f32) if linear else None
    kv = torch.empty(BH, nch, D, D, **f32) if linear else None
    v_max = torch.empty(BH, nch, D, **f32) if v_absmax else None
    k_copy = torch.empty(BH, nk * blkk, D, dtype=k.dtype, device=dev) if kv_copy else None
    v_copy = torch.empty(BH, nk * blkk, D, dtype=v.dtype, device=dev) if kv_copy else None
    args = (k_sum, k_sum if phi_sum is None else phi_sum, k_sum if kv is None else kv,  # k_sum: unused slots
            k_sum if v_max is None else v_max, k if k_copy is None else k_copy, v if v_copy is None else v_copy,
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), L, H, nk, nch, chb)
    sub = min(blkk, cfg.key_rows)
    tma = cfg.key_tma and TensorDescriptor is not None and _tma_view(k) and _tma_view(v)
    k_src, v_src = k, v
    if tma:  # over [B, L, H*D]: rows past L come zero-filled, never the next batch's
        k_src, v_src = (TensorDescriptor(x, [B, L, H * D], [x.stride(0), x.stride(1), 1], [1, sub, D])
                        for x in (k, v))
    _key_pass_kernel[(nch, BH)](
        k_src, v_src, pk, *args, D=D, BLKK=blkk, LINEAR=linear, VABSMAX=v_absmax, COPY=kv_copy,
        STAGES=cfg.key_stages, SUB=sub, RED=min(sub, 256 * warps // D), USE_TMA=tma, INTERPRET=INTERPRETED,
        num_warps=warps, maxnreg=maxnreg)
    return pk, k_sum, phi_sum, kv, v_max, k_copy, v_copy


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: few programs keep the CPU tests fast


def block_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: float,
    blkq: int,
    blkk: int,
    linear: bool = True,
    v_absmax: bool = False,
    kv_copy: bool = False,
    cfg: StatsConfig | None = None,
    linear_out: torch.Tensor | None = None,
    proj_weight: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
) -> BlockStats:
    """With linear_out (and proj_weight), the query pass also writes the linear branch there."""
    B, L, H, D = q.shape
    BH = B * H
    nq, nk = triton.cdiv(L, blkq), triton.cdiv(L, blkk)
    kk = keep_count(topk, nk)
    dev = q.device
    f32 = dict(dtype=torch.float32, device=dev)
    cfg = cfg or DEFAULT_STATS

    # 1. key pass: chunk partials, summed here (deterministic)
    pk, k_sum, phi_sum, kv, v_max, k_copy, v_copy = key_pass(k, v, blkk, linear, v_absmax, kv_copy, cfg)
    k_mean = k_sum.sum(1) / L
    kv = kv.sum(1) / L if linear else None
    phi_sum = phi_sum.sum(1) / L if linear else None

    # 2. query pool (+ the linear branch)
    pq = torch.empty(BH, nq, D, **f32)
    lin = linear and linear_out is not None and proj_weight is not None
    kvw = fold_proj(kv, proj_weight, q.dtype) if lin else pq
    bias = proj_bias.float().contiguous() if lin and proj_bias is not None else pq
    out = linear_out if lin else q
    _pool_kernel[(nq, BH)](
        q, pq, kvw, phi_sum if lin else pq, bias, out,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        L, H, nq, LINEAR_EPS / L,
        D=D, BLK=blkq, LINEAR=lin, HAS_BIAS=lin and proj_bias is not None, SUB=min(cfg.pool_rows, blkq) if lin else 0,
        num_warps=cfg.pool_warps if lin and cfg.pool_rows else 4 if blkq <= 64 else 8,
    )

    # 3. scores + top-k
    CN = 64
    nkp = max(16, triton.next_power_of_2(nk))
    QT = select_rows(cfg, nk)
    n_tiles = triton.cdiv(nq, QT)
    s_stride = triton.cdiv(nk, CN) * CN
    cw = min(nkp, cfg.select_cols)
    # rows per selection step: as many as 32 registers a thread allow (all in the interpreter)
    rs = QT if INTERPRETED else min(QT, max(1, 1024 * cfg.select_warps // nkp))
    scratch = torch.empty(BH, n_tiles * QT, s_stride, **f32)
    lut = torch.empty(BH, nq, kk, dtype=torch.int32, device=dev)
    _select_kernel[(n_tiles, BH)](
        pq, pk, k_mean, scratch, lut,
        nq, nk, kk, n_tiles * QT, s_stride,
        D=D, QT=QT, QD=max(QT, 16), CN=CN, DC=min(D, cfg.select_dslice), NCH=nkp // cw, CW=cw, RS=rs,
        EARLY=cfg.select_early,
        num_warps=cfg.select_warps,
    )
    return BlockStats(
        lut=lut,
        kk=kk,
        k_mean=k_mean,
        kv=kv,
        phi_sum=phi_sum,
        v_absmax=v_max.amax(1) if v_absmax else None,
        k_copy=k_copy,
        v_copy=v_copy,
        linear_out=linear_out if lin else None,
    )


def attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: float, blkq: int, blkk: int,
    proj_weight: torch.Tensor | None, proj_bias: torch.Tensor | None, linear_in_pool: bool,
    stats: BlockStats | None = None, **stats_kw,
):
    """What the sla and sagesla kernels share before their launch: the block statistics (unless
    given), where the linear branch is computed (lin_mode 0: none, 1: the attention epilogue,
    2: already written into `out` by the query pass), the output buffer, and the epilogue's
    (proj-folded kv, phi_sum, bias) pointers (q stands in for the unused ones)."""
    linear = proj_weight is not None
    if stats is None:
        lin_out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if linear and linear_in_pool else None
        stats = block_stats(q, k, v, topk, blkq, blkk, linear=linear, linear_out=lin_out,
                            proj_weight=proj_weight, proj_bias=proj_bias, **stats_kw)
    lin_mode = 0 if not linear else 2 if stats.linear_out is not None else 1
    out = stats.linear_out if lin_mode == 2 else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if lin_mode == 1:
        kvw, phi_sum = fold_proj(stats.kv, proj_weight, q.dtype), stats.phi_sum
        bias = proj_bias.float().contiguous() if proj_bias is not None else phi_sum
    else:
        kvw = bias = phi_sum = q
    return stats, lin_mode, out, kvw, phi_sum, bias
