"""SageSLA's sparse attention on Hopper in Gluon: int8 Q K^T and fp8 P V, softmax beside the products.

Same math as sagesla_kernel's attention launch (head_dim 128, query blocks of 64, key blocks of
128; rules in sagesla_reference.py): Q quantized to int8 per query block in registers, integer
scores against the int8 smoothed K of each kept key block, P = 448 exp2(s - m) to fp8, one fp8
product per V term added in float32 (two-level accumulation), the output scaled by V's
per-channel scales, plus the linear branch, rounded once (or quantized for an fp8 o-projection,
sla_gluon._store_rows). The linear branch is computed in the epilogue (LIN_MODE 1, the default),
its phi(K)^T V loaded into the warpgroup's K slots once the last scores are done and the queries
read again; or read back from the query pass's output (LIN_MODE 2), or absent (0).

A program is two query blocks, one per consumer warpgroup (each with its own key list, so each
has its own K and V rings), and a loader warp that streams both warpgroups' blocks by TMA: K of
step t beside V of step t - 1, as the consumers use them. A consumer issues step t's integer
scores and step t-1's two P V products together, waits for the scores only, releases K_t, runs
softmax while P V runs, then releases V_{t-1} and folds the products into its accumulator (the
structure of sla_gluon.py, which has the reasons). The quantization pass over K and V
(sagesla_kernel.quantize_kv) runs before it, unchanged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import sla_gluon
from .sla_reference import LINEAR_EPS

log = logging.getLogger("turbovid.attention")

gluon = sla_gluon.gluon
if gluon is not None:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared, mbarrier, warpgroup_mma, warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from .sla_gluon import _store_rows, _tma_load

MAGIC_BITS = 0x4B400000  # bits of 1.5 * 2^23: int32 x + these, seen as a float, is 1.5 * 2^23 + x exactly (|x| < 2^22)
LOG2_448 = 8.807354922057604  # P's fp8 scale 448 folded into the exponent
if gluon is not None:
    MAGIC = gl.constexpr(MAGIC_BITS)
    LOG2_FP8_MAX = gl.constexpr(LOG2_448)


@dataclass(frozen=True)
class Config:
    stages: int = 2  # K and V rings of this many key blocks, per consumer warpgroup
    maxnreg: int = 168  # 3 warpgroups (2 consumers, the loader's) x 168 fill the SM; consumers get 240


def smem_bytes(cfg: Config, blkk: int = 128, d: int = 128) -> int:
    """Two warpgroups' rings (int8 K and two fp8 V^T terms a key block), fp8 P tiles and the int8
    queries' layout change (compiler scratch)."""
    return 2 * (cfg.stages * 3 * blkk * d + 64 * blkk + 64 * d)


if gluon is not None:

    @gluon.constexpr_function
    def _mma_layout(bn):
        """One warpgroup's 64 query rows; 8-bit operands (k = 32 a wgmma step)."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, bn, 32])

    @gluon.jit
    def _load_step(desc, bufs, bars, i, t, blk, row, col, STAGES: gl.constexpr):
        """One key block's tile into ring slot i (its t-th use), once the consumer has released it."""
        mbarrier.wait(bars[1].index(i), phase=((t // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
        mbarrier.expect(bars[0].index(i), desc.block_type.nbytes)
        _tma_load(desc, [row, col], bars[0].index(i), bufs.index(i))

    @gluon.jit
    def _load_v_step(v1_desc, v2_desc, v1_bufs, v2_bufs, bars, i, t, row, col, STAGES: gl.constexpr):
        mbarrier.wait(bars[1].index(i), phase=((t // STAGES) & 1) ^ 1)
        mbarrier.expect(bars[0].index(i), 2 * v1_desc.block_type.nbytes)
        _tma_load(v1_desc, [row, col], bars[0].index(i), v1_bufs.index(i))
        _tma_load(v2_desc, [row, col], bars[0].index(i), v2_bufs.index(i))

    @gluon.constexpr_function
    def _w_layout():
        """The shared layout of the bf16 [128, 128] phi(K)^T V tile (the host's descriptor uses the same)."""
        return gl.NVMMASharedLayout.get_default_for([128, 128], gl.bfloat16)

    @gluon.jit
    def _w_slots(k_bufs, WG: gl.constexpr, w_layout: gl.constexpr):
        """Warpgroup WG's two K slots (32 KiB, free once its last scores are done) seen as the bf16
        [128, 128] proj-folded phi(K)^T V of its head, for the linear branch in the epilogue."""
        # the whole ring (2 x 2 slots of int8 [128, 128]) as 2 bf16 [128, 128] tiles, warpgroup WG's
        # slots the WG-th (a reinterpretation must keep the rank, and a sub-slice can't be one)
        NW: gl.constexpr = k_bufs.shape[0] // 2
        return k_bufs._reinterpret(gl.bfloat16, [NW, 128, 128], w_layout).index(WG)

    @gluon.jit
    def _load_partition(k_desc, v1_desc, v2_desc, w_desc, k_bufs, v1_bufs, v2_bufs, kbars, vbars, w_bars, LUT, bh, q0,
                        NQ, KK, LPAD, D: gl.constexpr, BLKK: gl.constexpr, STAGES: gl.constexpr,
                        LIN_MODE: gl.constexpr):
        """Both warpgroups' key blocks in turn: K of step t and V of step t - 1 (rings w * STAGES ..);
        with LIN_MODE 1 then each warpgroup's phi(K)^T V into its K slots once it has released them."""
        for t in range(KK + 1):
            for w in gl.static_range(2):
                if q0 + w < NQ:
                    lut_row = LUT + (bh * NQ + q0 + w).to(gl.int64) * KK
                    if t < KK:
                        blk = gl.load(lut_row + t)
                        _load_step(k_desc, k_bufs, kbars, w * STAGES + t % STAGES, t, blk, bh * LPAD + blk * BLKK, 0,
                                   STAGES)
                    if t > 0:
                        blk = gl.load(lut_row + t - 1)
                        _load_v_step(v1_desc, v2_desc, v1_bufs, v2_bufs, vbars, w * STAGES + (t - 1) % STAGES, t - 1,
                                     bh * D, blk * BLKK, STAGES)
        if LIN_MODE == 1:
            for w in gl.static_range(2):
                if q0 + w < NQ:
                    for j in gl.static_range(2):  # slots 0 and 1 released after their last use
                        tn = KK + (j - KK % STAGES + STAGES) % STAGES  # the slot's next use, had there been one
                        mbarrier.wait(kbars[1].index(w * STAGES + j), phase=((tn // STAGES) & 1) ^ 1)
                    mbarrier.expect(w_bars.index(w), w_desc.block_type.nbytes)
                    _tma_load(w_desc, [bh * D, 0], w_bars.index(w), _w_slots(k_bufs, w, _w_layout()))

    @gluon.jit
    def _softmax(acc_s, m_i, l_i, q_scale, K_SCALE, lut_row, t, L, layout: gl.constexpr, BLKK: gl.constexpr,
                 MASKED: gl.constexpr):
        """sagesla_kernel._sage_tile's softmax: p = 448 exp2(s - m) from the integer scores (float
        by the exact magic-number add), the new max, row sums and the accumulator's factor."""
        blk = gl.load(lut_row + t)
        scale = q_scale * gl.load(K_SCALE + blk)  # integer scores -> log2 domain
        s = (acc_s + MAGIC).to(gl.float32, bitcast=True)
        if MASKED:
            keys = blk * BLKK + gl.arange(0, BLKK, layout=gl.SliceLayout(0, layout))
            s = gl.where((keys < L)[None, :], s, float("-inf"))
        m_new = gl.maximum(m_i, (gl.max(s, 1) - 12582912.0) * scale)
        shift = m_new + 12582912.0 * scale - LOG2_FP8_MAX
        p = gl.exp2(s * scale - shift[:, None])
        alpha = gl.exp2(m_i - m_new)
        return p, m_new, l_i * alpha + gl.sum(p, 1), alpha

    @gluon.jit
    def _step(t, acc, p_smem, alpha_prev, m_i, l_i, q_op, q_scale, k_bufs, v1_bufs, v2_bufs, kbars, vbars, K_SCALE,
              lut_row, L, ring0, s_layout: gl.constexpr, BLKK: gl.constexpr, STAGES: gl.constexpr,
              MASKED: gl.constexpr):
        """Step t's scores issued with step t-1's P V terms (P_{t-1} in shared memory); softmax while
        P V runs; then acc = acc * alpha_{t-1} + P_{t-1} V_{t-1}, and P_t stored for the next step."""
        i = ring0 + t % STAGES
        ip = ring0 + (t - 1) % STAGES
        BM: gl.constexpr = acc.shape[0]
        D: gl.constexpr = acc.shape[1]
        mbarrier.wait(kbars[0].index(i), phase=(t // STAGES) & 1)
        s_tok = warpgroup_mma(q_op, k_bufs.index(i).permute((1, 0)), gl.zeros([BM, BLKK], gl.int32, layout=s_layout),
                              use_acc=False, is_async=True)
        mbarrier.wait(vbars[0].index(ip), phase=((t - 1) // STAGES) & 1)
        pv_tok = warpgroup_mma(p_smem, v2_bufs.index(ip).permute((1, 0)), gl.zeros([BM, D], gl.float32, layout=s_layout),
                               use_acc=False, is_async=True)
        pv_tok = warpgroup_mma(p_smem, v1_bufs.index(ip).permute((1, 0)), pv_tok, is_async=True)
        scores = warpgroup_mma_wait(num_outstanding=2, deps=(s_tok, ))
        mbarrier.arrive(kbars[1].index(i), count=1)
        p, m_i, l_i, alpha = _softmax(scores, m_i, l_i, q_scale, K_SCALE, lut_row, t, L, s_layout, BLKK, MASKED)
        pv = warpgroup_mma_wait(num_outstanding=0, deps=(pv_tok, ))
        mbarrier.arrive(vbars[1].index(ip), count=1)
        acc = acc * alpha_prev[:, None] + pv
        _stage_p(p, p_smem)
        return acc, alpha, m_i, l_i

    @gluon.jit
    def _stage_p(p, p_smem):
        """P in fp8 into shared memory for the next P V products (the wgmma reads it from there:
        Triton 3.6 cannot keep 8-bit register operands alive across an asynchronous wgmma)."""
        p_smem.store(p.to(gl.float8e4nv))
        fence_async_shared()

    @gluon.jit
    def _first(q_op, q_scale, k_bufs, kbars, K_SCALE, lut_row, L, ring0, p_smem, s_layout: gl.constexpr,
               BLKK: gl.constexpr, MASKED: gl.constexpr):
        BM: gl.constexpr = 64
        mbarrier.wait(kbars[0].index(ring0), phase=0)
        s_tok = warpgroup_mma(q_op, k_bufs.index(ring0).permute((1, 0)), gl.zeros([BM, BLKK], gl.int32, layout=s_layout),
                              use_acc=False, is_async=True)
        scores = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok, ))
        mbarrier.arrive(kbars[1].index(ring0), count=1)
        m_i = gl.full([BM], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([BM], gl.float32, layout=gl.SliceLayout(1, s_layout))
        p, m_i, l_i, alpha = _softmax(scores, m_i, l_i, q_scale, K_SCALE, lut_row, 0, L, s_layout, BLKK, MASKED)
        _stage_p(p, p_smem)
        return alpha, m_i, l_i

    @gluon.jit
    def _quantized_queries(Q, q_base, rows, sq_l, L, qk_scale, D: gl.constexpr, layout: gl.constexpr):
        """sagesla_kernel's Q rule: x = q * qk_scale, one scale max|x| / 127 + 1e-7 for the block,
        int8 by rounding half away from zero. Returns (int8 block in `layout`, scale)."""
        d = gl.arange(0, D, layout=gl.SliceLayout(0, layout))
        q = gl.load(Q + q_base + rows.to(gl.int64)[:, None] * sq_l + d[None, :], mask=(rows < L)[:, None], other=0.0)
        qf = q.to(gl.float32) * qk_scale
        q_scale = gl.max(gl.max(gl.abs(qf), 1), 0) / 127.0 + 1e-7
        x = qf / q_scale
        return (x + 0.5 * gl.where(x >= 0, 1.0, -1.0)).to(gl.int8), q_scale

    @gluon.jit
    def _linear_branch(Q, q_base, rows, sq_l, L, w_smem, PHISUM, BIAS, lin_eps, HAS_BIAS: gl.constexpr):
        """blockmap._linear_of for these 64 queries, read again from global memory (their bf16 tile
        is not kept through the loop): phi(q) @ kvw / (phi(q) . phi_sum + eps) + b."""
        D: gl.constexpr = 128
        layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
        r = gl.convert_layout(rows, gl.SliceLayout(1, layout))
        cols = gl.arange(0, D, layout=gl.SliceLayout(0, layout))
        q = gl.load(Q + q_base + r.to(gl.int64)[:, None] * sq_l + cols[None, :], mask=(r < L)[:, None], other=0.0)
        qf = q.to(gl.float32)
        e = gl.exp(qf - gl.max(qf, 1)[:, None])
        phi = e / gl.sum(e, 1)[:, None]
        phi_op = gl.convert_layout(phi.to(gl.bfloat16), gl.DotOperandLayout(operand_index=0, parent=layout, k_width=2))
        num = warpgroup_mma(phi_op, w_smem, gl.zeros([64, D], gl.float32, layout=layout), use_acc=False)
        lin = num / (gl.sum(phi * gl.load(PHISUM + cols)[None, :], 1) + lin_eps)[:, None]
        if HAS_BIAS:
            lin += gl.load(BIAS + cols)[None, :]
        return lin

    @gluon.jit
    def _consumer_partition(k_bufs, v1_bufs, v2_bufs, p_bufs, kbars, vbars, w_bars, Q, O, OQ, OS, LUT, K_SCALE,
                            V_FROM_FP8, PHISUM, BIAS, bh, b, h, q0, sq_b, sq_h, sq_l, so_b, so_h, so_l, L, NQ, NK, KK,
                            qk_scale, lin_eps, ROWS_TOTAL, BLKK: gl.constexpr, STAGES: gl.constexpr,
                            LIN_MODE: gl.constexpr, HAS_BIAS: gl.constexpr, OUT_FP8: gl.constexpr,
                            WG: gl.constexpr):
        BM: gl.constexpr = 64
        D: gl.constexpr = k_bufs.shape[2]
        s_layout: gl.constexpr = _mma_layout(BLKK)  # BLKK == D: scores and accumulator share it
        q_op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=4)
        q_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        qb = q0 + WG
        if qb < NQ:
            ring0 = WG * STAGES
            p_smem = p_bufs.index(WG)
            lut_row = LUT + (bh * NQ + qb).to(gl.int64) * KK
            k_scales = K_SCALE + bh * NK
            q_rows = qb * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, q_layout))
            q_i8, q_scale = _quantized_queries(Q, b.to(gl.int64) * sq_b + h.to(gl.int64) * sq_h, q_rows, sq_l, L,
                                               qk_scale, D, q_layout)
            q_op = gl.convert_layout(q_i8, q_op_layout)
            acc = gl.zeros([BM, D], gl.float32, layout=s_layout)
            if KK == 1:
                alpha, m_i, l_i = _first(q_op, q_scale, k_bufs, kbars, k_scales, lut_row, L, ring0, p_smem, s_layout,
                                         BLKK, True)
            else:
                alpha, m_i, l_i = _first(q_op, q_scale, k_bufs, kbars, k_scales, lut_row, L, ring0, p_smem, s_layout,
                                         BLKK, False)
                for t in range(1, KK - 1):
                    acc, alpha, m_i, l_i = _step(t, acc, p_smem, alpha, m_i, l_i, q_op, q_scale, k_bufs, v1_bufs,
                                                 v2_bufs, kbars, vbars, k_scales, lut_row, L, ring0, s_layout, BLKK,
                                                 STAGES, False)
                acc, alpha, m_i, l_i = _step(KK - 1, acc, p_smem, alpha, m_i, l_i, q_op, q_scale, k_bufs, v1_bufs,
                                             v2_bufs, kbars, vbars, k_scales, lut_row, L, ring0, s_layout, BLKK,
                                             STAGES, True)
            il = ring0 + (KK - 1) % STAGES
            mbarrier.wait(vbars[0].index(il), phase=((KK - 1) // STAGES) & 1)
            pv_tok = warpgroup_mma(p_smem, v2_bufs.index(il).permute((1, 0)),
                                   gl.zeros([BM, D], gl.float32, layout=s_layout), use_acc=False, is_async=True)
            pv_tok = warpgroup_mma(p_smem, v1_bufs.index(il).permute((1, 0)), pv_tok, is_async=True)
            pv = warpgroup_mma_wait(num_outstanding=0, deps=(pv_tok, ))
            mbarrier.arrive(vbars[1].index(il), count=1)
            acc = acc * alpha[:, None] + pv

            cols = gl.arange(0, D, layout=gl.SliceLayout(0, s_layout))
            rows = qb * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, s_layout))
            v_from = gl.load(V_FROM_FP8 + bh * D + cols)
            o = acc * v_from[None, :] / l_i[:, None]  # l_i carries P's 448
            offs = b.to(gl.int64) * so_b + h.to(gl.int64) * so_h + rows.to(gl.int64)[:, None] * so_l + cols[None, :]
            inside = rows < L
            if LIN_MODE == 1:  # the linear branch here, its phi(K)^T V in this warpgroup's K slots
                mbarrier.wait(w_bars.index(WG), phase=0)
                lin = _linear_branch(Q, b.to(gl.int64) * sq_b + h.to(gl.int64) * sq_h, rows, sq_l, L,
                                     _w_slots(k_bufs, WG, _w_layout()), PHISUM + bh * D, BIAS, lin_eps, HAS_BIAS)
                o += gl.convert_layout(lin, s_layout)
            if LIN_MODE == 2:  # the query pass wrote the linear branch into the output
                o += gl.load(O + offs, mask=inside[:, None], other=0.0).to(gl.float32)
            _store_rows(o, O, OQ, OS, offs, rows, inside, h * ROWS_TOTAL + b * L, s_layout, OUT_FP8)

    @gluon.jit(do_not_specialize=["KK"])  # as sla_gluon: KK == 1 as a constant fails Triton 3.6's lowering
    def _sagesla_attn_kernel(k_desc, v1_desc, v2_desc, w_desc, Q, O, OQ, OS, LUT, K_SCALE, V_FROM_FP8, PHISUM, BIAS,
                             sq_b, sq_h, sq_l, so_b, so_h, so_l, L, H, NQ, NK, LPAD, KK, qk_scale, lin_eps, ROWS_TOTAL,
                             LIN_MODE: gl.constexpr, HAS_BIAS: gl.constexpr, OUT_FP8: gl.constexpr,
                             STAGES: gl.constexpr, num_warps: gl.constexpr):
        BLKK: gl.constexpr = k_desc.block_type.shape[0]
        D: gl.constexpr = k_desc.block_type.shape[1]
        q0 = gl.program_id(0) * 2
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        k_bufs = gl.allocate_shared_memory(k_desc.dtype, [2 * STAGES, BLKK, D], k_desc.layout)
        v1_bufs = gl.allocate_shared_memory(v1_desc.dtype, [2 * STAGES, D, BLKK], v1_desc.layout)
        v2_bufs = gl.allocate_shared_memory(v2_desc.dtype, [2 * STAGES, D, BLKK], v2_desc.layout)
        p_bufs = gl.allocate_shared_memory(v1_desc.dtype, [2, 64, BLKK], gl.NVMMASharedLayout.get_default_for(
            [64, BLKK], gl.float8e4nv))
        kbars = (gl.allocate_shared_memory(gl.int64, [2 * STAGES, 1], mbarrier.MBarrierLayout()),
                 gl.allocate_shared_memory(gl.int64, [2 * STAGES, 1], mbarrier.MBarrierLayout()))
        vbars = (gl.allocate_shared_memory(gl.int64, [2 * STAGES, 1], mbarrier.MBarrierLayout()),
                 gl.allocate_shared_memory(gl.int64, [2 * STAGES, 1], mbarrier.MBarrierLayout()))
        w_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        mbarrier.init(w_bars.index(0), count=1)
        mbarrier.init(w_bars.index(1), count=1)
        for i in gl.static_range(2 * STAGES):
            mbarrier.init(kbars[0].index(i), count=1)
            mbarrier.init(vbars[0].index(i), count=1)
            mbarrier.init(kbars[1].index(i), count=1)  # one consumer warpgroup per ring
            mbarrier.init(vbars[1].index(i), count=1)
        gl.warp_specialize([
            (_consumer_partition, (k_bufs, v1_bufs, v2_bufs, p_bufs, kbars, vbars, w_bars, Q, O, OQ, OS, LUT, K_SCALE,
                                   V_FROM_FP8, PHISUM, BIAS, bh, b, h, q0, sq_b, sq_h, sq_l, so_b, so_h, so_l, L, NQ, NK,
                                   KK, qk_scale, lin_eps, ROWS_TOTAL, BLKK, STAGES, LIN_MODE, HAS_BIAS, OUT_FP8, 0)),
            (_consumer_partition, (k_bufs, v1_bufs, v2_bufs, p_bufs, kbars, vbars, w_bars, Q, O, OQ, OS, LUT, K_SCALE,
                                   V_FROM_FP8, PHISUM, BIAS, bh, b, h, q0, sq_b, sq_h, sq_l, so_b, so_h, so_l, L, NQ, NK,
                                   KK, qk_scale, lin_eps, ROWS_TOTAL, BLKK, STAGES, LIN_MODE, HAS_BIAS, OUT_FP8, 1)),
            (_load_partition, (k_desc, v1_desc, v2_desc, w_desc, k_bufs, v1_bufs, v2_bufs, kbars, vbars, w_bars, LUT, bh,
                               q0, NQ, KK, LPAD, D, BLKK, STAGES, LIN_MODE)),
        ], [4, 1], [240, 24])
        mbarrier.invalidate(w_bars.index(0))
        mbarrier.invalidate(w_bars.index(1))
        for i in gl.static_range(2 * STAGES):
            mbarrier.invalidate(kbars[0].index(i))
            mbarrier.invalidate(kbars[1].index(i))
            mbarrier.invalidate(vbars[0].index(i))
            mbarrier.invalidate(vbars[1].index(i))


def available(q: torch.Tensor, blkq: int, blkk: int, v_terms: int = 2) -> bool:
    """sla_gluon.supported() on q's device, head_dim 128, the block map of 64 / 128, fp16/bf16 q, V
    in two fp8 terms."""
    return (sla_gluon.supported(q.device) and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] == 128
            and blkq == 64 and blkk == 128 and q.stride(-1) == 1 and v_terms == 2
            and sla_gluon._smem_optin(q.device) >= smem_bytes(Config()) + 1024)


def attention(q: torch.Tensor, kq: torch.Tensor, k_scale: torch.Tensor, vt: torch.Tensor, vt2: torch.Tensor,
              v_from: torch.Tensor, out: torch.Tensor, lut: torch.Tensor, kk: int, lin_mode: int, qk_scale: float,
              cfg: Config | None = None, out_fp8: int = 0, oq: torch.Tensor | None = None,
              os_: torch.Tensor | None = None, kvw: torch.Tensor | None = None, phi_sum: torch.Tensor | None = None,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """The sparse attention of q [B, L, H, D] over sagesla_kernel.quantize_kv's int8 K (B*H, Lpad, D)
    with block scales k_scale (B*H, nk) and fp8 V^T terms vt, vt2 (B*H, D, Lpad) scaled back by v_from
    (B*H, D); lut int32 (B*H, nq, kk) ascending; the linear branch computed here from kvw (B*H, D, D),
    phi_sum (B*H, D) and bias [D] or None (lin_mode 1, as sla_gluon.attention), already in `out`
    (lin_mode 2), or none (0). Written into out, or with out_fp8 quantized into oq, os_
    (blockmap.output_buffers). The caller checks available()."""
    cfg = cfg or Config()
    B, L, H, D = q.shape
    if lin_mode == 1 and (kvw is None or phi_sum is None or tuple(kvw.shape) != (B * H, D, D) or cfg.stages != 2):
        raise ValueError("sagesla_gluon: lin_mode 1 needs kvw (B*H, D, D), phi_sum (B*H, D) and 2 stages "
                         "(a warpgroup's two K slots hold phi(K)^T V)")
    blkk = 128
    lpad = kq.shape[1]
    nq, nk = -(-L // 64), lpad // blkk
    i8 = gl.NVMMASharedLayout.get_default_for([blkk, D], gl.int8)
    f8 = gl.NVMMASharedLayout.get_default_for([D, blkk], gl.float8e4nv)
    kd = GluonDescriptor(kq.view(B * H * lpad, D), [B * H * lpad, D], [D, 1], [blkk, D], i8)
    v1d = GluonDescriptor(vt.view(B * H * D, lpad), [B * H * D, lpad], [lpad, 1], [D, blkk], f8)
    v2d = GluonDescriptor(vt2.view(B * H * D, lpad), [B * H * D, lpad], [lpad, 1], [D, blkk], f8)
    bf16 = gl.NVMMASharedLayout.get_default_for([D, D], gl.bfloat16)
    # kvw in bf16 (its slots hold 32 KiB); with no linear branch a stand-in of the same type
    w = (kvw.to(torch.bfloat16).contiguous() if lin_mode == 1 else torch.empty(1, D, D, dtype=torch.bfloat16,
                                                                                device=q.device)).view(-1, D)
    wd = GluonDescriptor(w, [w.shape[0], D], [D, 1], [D, D], bf16)
    _sagesla_attn_kernel[(-(-nq // 2), B * H)](
        kd, v1d, v2d, wd, q, out, out if oq is None else oq, out if os_ is None else os_, lut, k_scale, v_from,
        phi_sum if phi_sum is not None else v_from, bias if bias is not None else v_from,
        q.stride(0), q.stride(2), q.stride(1), out.stride(0), out.stride(2), out.stride(1),
        L, H, nq, nk, lpad, kk, qk_scale, LINEAR_EPS / L, B * L,
        LIN_MODE=lin_mode, HAS_BIAS=lin_mode == 1 and bias is not None, OUT_FP8=out_fp8, STAGES=cfg.stages,
        num_warps=4, maxnreg=cfg.maxnreg,
    )
    return out
