"""SageSLA's sparse attention on Hopper in Gluon, on sla's block map: int8 Q K^T and fp8 P V.

The math of sagesla_kernel's attention launch (rules in sagesla_reference.py), head_dim 128, query
blocks of 128 and key blocks of 64 (sla's map): Q quantized to int8 per 64 rows, integer scores
against the int8 smoothed K of each kept key block (one scale a key block), P = 448 exp2(s - m)
to fp8, V as two fp8 terms V^T (one product each, added in float32), the output scaled by V's
per-channel scales, plus the linear branch, rounded once (or quantized for an fp8 o-projection,
sla_gluon._store_rows). The linear branch is computed in the epilogue from the bf16 queries kept
in shared memory (LIN_MODE 1), read back from the query pass's output (2), or absent (0).

Why this map: the launch is bound by reading the kept K / V tiles from L2. With query blocks of
64 (the reference's Hopper map) each 48 KiB key block (int8 K, two fp8 V terms of 128 keys)
serves 64 query rows; here both consumer warpgroups (64 rows each) share every tile of their
query block's list, so a query row costs half the L2 traffic (docs/benchmarks.md, session 18).

The structure is sla_gluon's: a loader warp streams two kept key blocks a step (K of step t
beside V of step t - 1) into K and V rings, and each consumer warpgroup issues step t's integer
scores with step t-1's P V products, waits for the scores only, releases K_t, runs softmax while
P V runs, then releases V_{t-1} and folds the products into its accumulator. P goes through shared
memory (Triton 3.6 cannot keep an 8-bit register operand alive across an asynchronous wgmma), one
64 x 64 tile a key block. The last step alone is masked (the ragged last key block, or a
duplicate standing in for a missing second block). The quantization pass over K and V
(sagesla_kernel.quantize_kv, key blocks of 64) runs before it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from turbovid.ops import gluon_switch

from . import sla_gluon
from .sla_reference import LINEAR_EPS

log = logging.getLogger("turbovid.attention")

gluon = sla_gluon.gluon
if gluon is not None:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        mbarrier, warpgroup_mma, warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from .sla_gluon import _linear_of, _store_rows, _tma_load

BLKQ, BLKK, QROWS = 128, 64, 64  # the block map, and the rows sharing one int8 scale of Q (a warpgroup's)
LOG2_448 = 8.807354922057604  # P's fp8 scale 448 folded into the exponent
if gluon is not None:
    MAGIC = gl.constexpr(0x4B400000)  # bits of 1.5 * 2^23: int32 x + these, as a float, is 1.5 * 2^23 + x (|x| < 2^22)
    LOG2_FP8_MAX = gl.constexpr(LOG2_448)


@dataclass(frozen=True)
class Config:
    stages: int = 3  # K and V rings of this many steps (two key blocks a step)
    maxnreg: int = 168  # 3 warpgroups (2 consumers, the loader's) x 168 fill the SM; consumers get 240


def smem_bytes(cfg: Config, d: int = 128) -> int:
    """bf16 Q, the K ring (int8, slots for a power-of-two number of stages; once the last scores are
    done it holds the linear branch's bf16 phi(K)^T V) and the V ring (two fp8 terms) of two key
    blocks a step. P stays in registers. (Triton 3.6's offline sm_90 compile: 197088 bytes at 3
    stages, 229856 at 4.)"""
    k_slots = 2 * (1 << (cfg.stages - 1).bit_length())
    return BLKQ * d * 2 + (k_slots + 4 * cfg.stages) * BLKK * d


if gluon is not None:

    @gluon.constexpr_function
    def _mma8_layout(bn):
        """One warpgroup's 64 query rows, 8-bit operands (k = 32 a wgmma step)."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, bn, 32])

    @gluon.constexpr_function
    def _mma16_layout(bn):
        """The same rows, 16-bit operands (the linear branch's bf16 product)."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, bn, 16])

    @gluon.constexpr_function
    def _tile_layout(dtype, d):
        """The shared layout of a [d, d] 16-bit tile (the host's descriptor of phi(K)^T V uses the same)."""
        return gl.NVMMASharedLayout.get_default_for([d, d], dtype)

    if hasattr(gl.shared_memory_descriptor, "reinterpret"):  # Triton >= 3.7's name

        @gluon.jit
        def _as_tiles(bufs, dtype: gl.constexpr, N: gl.constexpr, D: gl.constexpr):
            """The whole buffer seen as N [D, D] tiles of dtype (a reinterpretation keeps the rank)."""
            return bufs.reinterpret(dtype, [N, D, D], _tile_layout(dtype, D))
    else:  # Triton 3.6 (the GPU image)

        @gluon.jit
        def _as_tiles(bufs, dtype: gl.constexpr, N: gl.constexpr, D: gl.constexpr):
            return bufs._reinterpret(dtype, [N, D, D], _tile_layout(dtype, D))

    @gluon.constexpr_function
    def _pow2(n):
        return 1 << (int(n) - 1).bit_length()

    @gluon.jit
    def _load_k(desc, bufs, bars, lut_row, t, KK, row0, STAGES: gl.constexpr):
        """Step t's two kept key blocks of int8 K into ring slots 2s, 2s + 1 (s = t % STAGES), once
        both consumers released them; a missing second block is the list's last one again."""
        s = t % STAGES
        mbarrier.wait(bars[1].index(s), phase=((t // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
        mbarrier.expect(bars[0].index(s), 2 * desc.block_type.nbytes)
        for g in gl.static_range(2):
            blk = gl.load(lut_row + gl.minimum(2 * t + g, KK - 1))
            _tma_load(desc, [row0 + blk * desc.block_type.shape[0], 0], bars[0].index(s), bufs.index(2 * s + g))

    @gluon.jit
    def _load_v(v1_desc, v2_desc, v1_bufs, v2_bufs, bars, lut_row, t, KK, row0, STAGES: gl.constexpr):
        """Step t's two key blocks of both fp8 V^T terms."""
        s = t % STAGES
        mbarrier.wait(bars[1].index(s), phase=((t // STAGES) & 1) ^ 1)
        mbarrier.expect(bars[0].index(s), 4 * v1_desc.block_type.nbytes)
        for g in gl.static_range(2):
            col = gl.load(lut_row + gl.minimum(2 * t + g, KK - 1)) * v1_desc.block_type.shape[1]
            _tma_load(v1_desc, [row0, col], bars[0].index(s), v1_bufs.index(2 * s + g))
            _tma_load(v2_desc, [row0, col], bars[0].index(s), v2_bufs.index(2 * s + g))

    @gluon.jit
    def _load_partition(q_desc, k_desc, v1_desc, v2_desc, w_desc, q_smem, k_bufs, v1_bufs, v2_bufs, w_smem, q_bar,
                        w_bar, kbars, vbars, lut_row, q_row, q_col, k_row0, v_row0, w_row, KK, STAGES: gl.constexpr,
                        LIN_MODE: gl.constexpr):
        """The bf16 query block, then K of step t and V of step t - 1 in turn; with LIN_MODE 1 then
        phi(K)^T V into the K ring once both consumers have released every stage of it."""
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        _tma_load(q_desc, [q_row, q_col], q_bar, q_smem)
        n_steps = gl.cdiv(KK, 2)
        _load_k(k_desc, k_bufs, kbars, lut_row, 0, KK, k_row0, STAGES)
        for t in range(1, n_steps):
            _load_k(k_desc, k_bufs, kbars, lut_row, t, KK, k_row0, STAGES)
            _load_v(v1_desc, v2_desc, v1_bufs, v2_bufs, vbars, lut_row, t - 1, KK, v_row0, STAGES)
        _load_v(v1_desc, v2_desc, v1_bufs, v2_bufs, vbars, lut_row, n_steps - 1, KK, v_row0, STAGES)
        if LIN_MODE == 1:
            for j in gl.static_range(STAGES):
                tn = n_steps + ((j - n_steps) % STAGES + STAGES) % STAGES  # stage j's next use, had there been one
                mbarrier.wait(kbars[1].index(j), phase=((tn // STAGES) & 1) ^ 1)
            mbarrier.expect(w_bar, w_desc.block_type.nbytes)
            _tma_load(w_desc, [w_row, 0], w_bar, w_smem)

    @gluon.jit
    def _block_scales(q_scale, K_SCALE, lut_row, t, KK):
        """Step t's two key blocks (the list's last one standing in past its end) and their scales
        into the log2 domain. Loaded a step ahead: the two dependent loads would otherwise sit
        between the scores and softmax (a round trip to L2 each)."""
        b0 = gl.load(lut_row + gl.minimum(2 * t, KK - 1))
        b1 = gl.load(lut_row + gl.minimum(2 * t + 1, KK - 1))
        return b0, b1, q_scale * gl.load(K_SCALE + b0), q_scale * gl.load(K_SCALE + b1)

    @gluon.jit
    def _block_logits(acc_s, idx, blk, scale, KK, L, layout: gl.constexpr, MASKED: gl.constexpr):
        """Key block `idx` of the list: the integer scores as floats (offset by 1.5 * 2^23, exact) and
        the row max in the log2 domain."""
        s = (acc_s + MAGIC).to(gl.float32, bitcast=True)
        if MASKED:
            BN: gl.constexpr = acc_s.shape[1]
            keys = blk * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
            s = gl.where(((keys < L) & (idx < KK))[None, :], s, float("-inf"))
        return s, (gl.max(s, 1) - 12582912.0) * scale

    @gluon.jit
    def _softmax(a0, a1, m_i, l_i, bs, t, KK, L, layout: gl.constexpr, MASKED: gl.constexpr):
        """sagesla_kernel._sage_tile's softmax over step t's two key blocks together (bs: their
        _block_scales): p = 448 exp2(s - m) per block, the new max, row sums and the accumulator's factor."""
        b0, b1, sc0, sc1 = bs
        s0, mx0 = _block_logits(a0, 2 * t, b0, sc0, KK, L, layout, MASKED)
        s1, mx1 = _block_logits(a1, 2 * t + 1, b1, sc1, KK, L, layout, MASKED)
        m_new = gl.maximum(m_i, gl.maximum(mx0, mx1))
        p0 = gl.exp2(s0 * sc0 - (m_new + 12582912.0 * sc0 - LOG2_FP8_MAX)[:, None])
        p1 = gl.exp2(s1 * sc1 - (m_new + 12582912.0 * sc1 - LOG2_FP8_MAX)[:, None])
        alpha = gl.exp2(m_i - m_new)
        return p0, p1, m_new, l_i * alpha + gl.sum(p0, 1) + gl.sum(p1, 1), alpha

    @gluon.jit
    def _scores(q_op, k_bufs, s, layout: gl.constexpr):
        """Issue both key blocks' integer scores of ring stage s."""
        BN: gl.constexpr = k_bufs.shape[1]
        zero = gl.zeros([64, BN], gl.int32, layout=layout)
        t0 = warpgroup_mma(q_op, k_bufs.index(2 * s).permute((1, 0)), zero, use_acc=False, is_async=True)
        t1 = warpgroup_mma(q_op, k_bufs.index(2 * s + 1).permute((1, 0)), zero, use_acc=False, is_async=True)
        return t0, t1

    @gluon.jit
    def _pv(p0_op, p1_op, v1_bufs, v2_bufs, s, layout: gl.constexpr):
        """Issue P V of ring stage s: two key blocks x two V terms, one float32 sum (the per-step
        partial the accumulator adds)."""
        D: gl.constexpr = v1_bufs.shape[1]
        tok = warpgroup_mma(p0_op, v2_bufs.index(2 * s).permute((1, 0)),
                            gl.zeros([64, D], gl.float32, layout=layout), use_acc=False, is_async=True)
        tok = warpgroup_mma(p0_op, v1_bufs.index(2 * s).permute((1, 0)), tok, is_async=True)
        tok = warpgroup_mma(p1_op, v2_bufs.index(2 * s + 1).permute((1, 0)), tok, is_async=True)
        return warpgroup_mma(p1_op, v1_bufs.index(2 * s + 1).permute((1, 0)), tok, is_async=True)

    @gluon.jit
    def _stage_p(p0, p1, layout: gl.constexpr):
        """P in fp8 as the P V products' register operands."""
        op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=layout, k_width=4)
        return gl.convert_layout(p0.to(gl.float8e4nv), op), gl.convert_layout(p1.to(gl.float8e4nv), op)

    @gluon.jit
    def _step(t, bs, acc, alpha_prev, m_i, l_i, q_op, q_scale, k_bufs, v1_bufs, v2_bufs, p_ops, kbars, vbars, K_SCALE,
              lut_row, KK, L, s_layout: gl.constexpr, o_layout: gl.constexpr,
              STAGES: gl.constexpr, MASKED: gl.constexpr):
        s = t % STAGES
        sp = (t - 1) % STAGES
        bs_next = _block_scales(q_scale, K_SCALE, lut_row, t + 1, KK)
        mbarrier.wait(kbars[0].index(s), phase=(t // STAGES) & 1)
        t0, t1 = _scores(q_op, k_bufs, s, s_layout)
        mbarrier.wait(vbars[0].index(sp), phase=((t - 1) // STAGES) & 1)
        pv_tok = _pv(p_ops[0], p_ops[1], v1_bufs, v2_bufs, sp, o_layout)
        a0, a1 = warpgroup_mma_wait(num_outstanding=4, deps=(t0, t1))
        mbarrier.arrive(kbars[1].index(s), count=1)
        p0, p1, m_i, l_i, alpha = _softmax(a0, a1, m_i, l_i, bs, t, KK, L, s_layout, MASKED)
        pv = warpgroup_mma_wait(num_outstanding=0, deps=(pv_tok, ))
        mbarrier.arrive(vbars[1].index(sp), count=1)
        acc = acc * gl.convert_layout(alpha_prev, gl.SliceLayout(1, o_layout))[:, None] + pv
        return bs_next, _stage_p(p0, p1, o_layout), acc, alpha, m_i, l_i

    @gluon.jit
    def _first(q_op, q_scale, k_bufs, kbars, K_SCALE, lut_row, KK, L, s_layout: gl.constexpr,
               o_layout: gl.constexpr, MASKED: gl.constexpr):
        """Step 0's scores and softmax (its P V is issued by step 1, or by the epilogue)."""
        bs = _block_scales(q_scale, K_SCALE, lut_row, 0, KK)
        bs_next = _block_scales(q_scale, K_SCALE, lut_row, 1, KK)
        mbarrier.wait(kbars[0].index(0), phase=0)
        t0, t1 = _scores(q_op, k_bufs, 0, s_layout)
        a0, a1 = warpgroup_mma_wait(num_outstanding=0, deps=(t0, t1))
        mbarrier.arrive(kbars[1].index(0), count=1)
        m_i = gl.full([64], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([64], gl.float32, layout=gl.SliceLayout(1, s_layout))
        p0, p1, m_i, l_i, alpha = _softmax(a0, a1, m_i, l_i, bs, 0, KK, L, s_layout, MASKED)
        return bs_next, _stage_p(p0, p1, o_layout), alpha, m_i, l_i

    @gluon.jit
    def _quantized_queries(q_smem, rows, L, qk_scale, layout: gl.constexpr):
        """sagesla_kernel's Q rule on these 64 rows: x = q * qk_scale, one scale max|x| / 127 + 1e-7,
        int8 by rounding half away from zero. Rows past L (another batch's, or the descriptor's zero
        fill) don't count toward the scale."""
        qf = q_smem.load(layout).to(gl.float32) * qk_scale
        qf = gl.where((gl.convert_layout(rows, gl.SliceLayout(1, layout)) < L)[:, None], qf, 0.0)
        q_scale = gl.max(gl.max(gl.abs(qf), 1), 0) / 127.0 + 1e-7
        x = qf / q_scale
        return (x + 0.5 * gl.where(x >= 0, 1.0, -1.0)).to(gl.int8), q_scale

    @gluon.jit
    def _consumer_partition(q_all, k_bufs, v1_bufs, v2_bufs, w_smem, q_bar, w_bar, kbars, vbars, O, OQ, OS,
                            K_SCALE,
                            V_FROM, PHISUM, BIAS, lut_row, o_base, scale_base, bh, q_row0, so_l, L, KK, qk_scale,
                            lin_eps, STAGES: gl.constexpr, LIN_MODE: gl.constexpr, HAS_BIAS: gl.constexpr,
                            OUT_FP8: gl.constexpr, WG: gl.constexpr):
        BM: gl.constexpr = 64
        D: gl.constexpr = q_all.shape[1]
        BN: gl.constexpr = k_bufs.shape[1]
        q_smem = q_all.slice(WG * BM, BM)
        q_row0 = q_row0 + WG * BM
        s_layout: gl.constexpr = _mma8_layout(BN)
        o_layout: gl.constexpr = _mma8_layout(D)
        # loaded straight into the int8 scores' operand layout: no layout change (and no scratch for one)
        q_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=4)
        rows_q = q_row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, q_layout))
        mbarrier.wait(q_bar, phase=0)
        q_i8, q_scale = _quantized_queries(q_smem, rows_q, L, qk_scale, q_layout)
        q_op = q_i8
        n_steps = gl.cdiv(KK, 2)
        acc = gl.zeros([BM, D], gl.float32, layout=o_layout)
        if n_steps == 1:
            bs, p_ops, alpha, m_i, l_i = _first(q_op, q_scale, k_bufs, kbars, K_SCALE, lut_row, KK, L, s_layout,
                                                o_layout, True)
        else:
            bs, p_ops, alpha, m_i, l_i = _first(q_op, q_scale, k_bufs, kbars, K_SCALE, lut_row, KK, L, s_layout,
                                                o_layout, False)
            for t in range(1, n_steps - 1):
                bs, p_ops, acc, alpha, m_i, l_i = _step(t, bs, acc, alpha, m_i, l_i, q_op, q_scale, k_bufs, v1_bufs,
                                                        v2_bufs, p_ops, kbars, vbars, K_SCALE, lut_row, KK, L, s_layout,
                                                        o_layout, STAGES, False)
            bs, p_ops, acc, alpha, m_i, l_i = _step(n_steps - 1, bs, acc, alpha, m_i, l_i, q_op, q_scale, k_bufs,
                                                    v1_bufs, v2_bufs, p_ops, kbars, vbars, K_SCALE, lut_row, KK, L,
                                                    s_layout, o_layout, STAGES, True)
        last = (n_steps - 1) % STAGES
        mbarrier.wait(vbars[0].index(last), phase=((n_steps - 1) // STAGES) & 1)
        pv_tok = _pv(p_ops[0], p_ops[1], v1_bufs, v2_bufs, last, o_layout)
        pv = warpgroup_mma_wait(num_outstanding=0, deps=(pv_tok, ))
        mbarrier.arrive(vbars[1].index(last), count=1)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None] + pv

        cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        rows = q_row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, o_layout))
        o = acc * gl.load(V_FROM + bh * D + cols)[None, :] / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
        offs = o_base + rows.to(gl.int64)[:, None] * so_l + cols[None, :]
        inside = rows < L
        if LIN_MODE == 1:  # the linear branch from the bf16 queries still in shared memory
            mbarrier.wait(w_bar, phase=0)
            lin_layout: gl.constexpr = _mma16_layout(D)
            lin = _linear_of(q_smem, w_smem, PHISUM + bh * D, BIAS, lin_eps, lin_layout,
                             gl.DotOperandLayout(operand_index=0, parent=lin_layout, k_width=2), HAS_BIAS)
            o += gl.convert_layout(lin, o_layout)
        if LIN_MODE == 2:  # the query pass wrote the linear branch into the output
            o += gl.load(O + offs, mask=inside[:, None], other=0.0).to(gl.float32)
        _store_rows(o, O, OQ, OS, offs, rows, inside, scale_base, o_layout, OUT_FP8)

    # KK == 1 specialized as a constant fails in Triton 3.6's LLVM lowering (sla_gluon): never specialize it
    @gluon.jit(do_not_specialize=["KK"])
    def _sagesla_attn_kernel(q_desc, k_desc, v1_desc, v2_desc, w_desc, O, OQ, OS, LUT, K_SCALE, V_FROM, PHISUM, BIAS,
                             so_b, so_h, so_l, L, H, NQ, NK, LPAD, KK, qk_scale, lin_eps, ROWS_TOTAL,
                             LIN_MODE: gl.constexpr, HAS_BIAS: gl.constexpr, OUT_FP8: gl.constexpr,
                             STAGES: gl.constexpr, num_warps: gl.constexpr):
        BM: gl.constexpr = q_desc.block_type.shape[0]
        D: gl.constexpr = q_desc.block_type.shape[1]
        BN: gl.constexpr = k_desc.block_type.shape[0]
        pid_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        lut_row = LUT + (bh * NQ + pid_m).to(gl.int64) * KK
        o_base = b.to(gl.int64) * so_b + h.to(gl.int64) * so_h

        q_smem = gl.allocate_shared_memory(q_desc.dtype, [BM, D], q_desc.layout)
        # slots for a power-of-two number of stages (only STAGES are used): the linear branch's tile is
        # seen through a reinterpretation of the whole ring, whose leading dim must be a power of two
        k_bufs = gl.allocate_shared_memory(k_desc.dtype, [2 * _pow2(STAGES), BN, D], k_desc.layout)
        v1_bufs = gl.allocate_shared_memory(v1_desc.dtype, [2 * STAGES, D, BN], v1_desc.layout)
        v2_bufs = gl.allocate_shared_memory(v2_desc.dtype, [2 * STAGES, D, BN], v2_desc.layout)
        # the linear branch's [D, D] phi(K)^T V (16-bit) in the K ring's first 32 KiB (a reinterpretation
        # keeps the rank, so the ring is seen as [n, D, D] 16-bit tiles and the first is taken)
        w_smem = _as_tiles(k_bufs, w_desc.dtype, _pow2(STAGES) * BN // D, D).index(0)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        w_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(w_bar, count=1)
        kbars = (gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout()),
                 gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout()))
        vbars = (gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout()),
                 gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout()))
        mbarrier.init(q_bar, count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(kbars[0].index(i), count=1)
            mbarrier.init(vbars[0].index(i), count=1)
            mbarrier.init(kbars[1].index(i), count=2)  # both consumer warpgroups release a stage
            mbarrier.init(vbars[1].index(i), count=2)
        k_scales = K_SCALE + bh * NK
        scale_base = h * ROWS_TOTAL + b * L
        gl.warp_specialize([
            (_consumer_partition, (q_smem, k_bufs, v1_bufs, v2_bufs, w_smem, q_bar, w_bar, kbars, vbars, O, OQ,
                                   OS, k_scales, V_FROM, PHISUM, BIAS, lut_row, o_base, scale_base, bh, pid_m * BM, so_l, L,
                                   KK, qk_scale, lin_eps, STAGES, LIN_MODE, HAS_BIAS, OUT_FP8, 0)),
            (_consumer_partition, (q_smem, k_bufs, v1_bufs, v2_bufs, w_smem, q_bar, w_bar, kbars, vbars, O, OQ,
                                   OS, k_scales, V_FROM, PHISUM, BIAS, lut_row, o_base, scale_base, bh, pid_m * BM, so_l, L,
                                   KK, qk_scale, lin_eps, STAGES, LIN_MODE, HAS_BIAS, OUT_FP8, 1)),
            (_load_partition, (q_desc, k_desc, v1_desc, v2_desc, w_desc, q_smem, k_bufs, v1_bufs, v2_bufs, w_smem,
                               q_bar, w_bar, kbars, vbars, lut_row, b * L + pid_m * BM, h * D, bh * LPAD, bh * D, bh * D, KK,
                               STAGES, LIN_MODE)),
        ], [4, 1], [240, 24])
        mbarrier.invalidate(q_bar)
        mbarrier.invalidate(w_bar)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(kbars[0].index(i))
            mbarrier.invalidate(kbars[1].index(i))
            mbarrier.invalidate(vbars[0].index(i))
            mbarrier.invalidate(vbars[1].index(i))


def available(q: torch.Tensor, blkq: int, blkk: int, v_terms: int, cfg: Config | None = None,
              linear: bool = True) -> bool:
    """sla_gluon.supported() on q's device, head_dim 128, sla's block map (128 / 64), V in two fp8
    terms, q rows a descriptor can address, and shared memory for cfg's rings (and the linear
    branch's tile, computed in the epilogue)."""
    need = smem_bytes(cfg or Config()) + 1024
    if linear and (cfg or Config()).stages < 2:  # phi(K)^T V takes two stages of the K ring
        return False
    if not sla_gluon.supported(q.device) or gluon_switch.smem_optin(q.device) < need:
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or q.shape[-1] != 128:
        return False
    return blkq == BLKQ and blkk == BLKK and v_terms == 2 and sla_gluon._flat(q) is not None


def try_attention(*args, **kwargs) -> bool:
    """attention(*args, **kwargs), or False where it failed on q's device (gluon_switch.attempt:
    logged once); the caller then runs the Triton launch."""
    return gluon_switch.attempt("sagesla: the Gluon attention kernel", args[0].device, log, attention, *args,
                                **kwargs) is not None


def attention(q: torch.Tensor, kq: torch.Tensor, k_scale: torch.Tensor, vt: torch.Tensor, vt2: torch.Tensor,
              v_from: torch.Tensor, out: torch.Tensor, lut: torch.Tensor, kk: int, lin_mode: int, qk_scale: float,
              cfg: Config | None = None, out_fp8: int = 0, oq: torch.Tensor | None = None,
              os_: torch.Tensor | None = None, kvw: torch.Tensor | None = None, phi_sum: torch.Tensor | None = None,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """The sparse attention of q [B, L, H, D] over sagesla_kernel.quantize_kv's int8 K (B*H, Lpad, D)
    of key blocks of 64 with block scales k_scale (B*H, nk), and fp8 V^T terms vt, vt2 (B*H, D, Lpad)
    scaled back by v_from (B*H, D); lut int32 (B*H, nq, kk) ascending over query blocks of 128; the
    linear branch computed here from kvw (B*H, D, D), phi_sum (B*H, D) and bias [D] or None
    (lin_mode 1), already in `out` (2), or none (0). Written into out, or with out_fp8 quantized into
    oq, os_ (blockmap.output_buffers). The caller checks available()."""
    cfg = cfg or Config()
    B, L, H, D = q.shape
    if lin_mode == 1 and (kvw is None or phi_sum is None or tuple(kvw.shape) != (B * H, D, D)):
        raise ValueError("sagesla_gluon: lin_mode 1 needs kvw (B*H, D, D) and phi_sum (B*H, D)")
    lpad = kq.shape[1]
    nq, nk = -(-L // BLKQ), lpad // BLKK
    i8 = gl.NVMMASharedLayout.get_default_for([BLKK, D], gl.int8)
    f8 = gl.NVMMASharedLayout.get_default_for([D, BLKK], gl.float8e4nv)
    qd = sla_gluon._descriptor(q, [BLKQ, D])
    kd = GluonDescriptor(kq.view(B * H * lpad, D), [B * H * lpad, D], [D, 1], [BLKK, D], i8)
    v1d = GluonDescriptor(vt.view(B * H * D, lpad), [B * H * D, lpad], [lpad, 1], [D, BLKK], f8)
    v2d = GluonDescriptor(vt2.view(B * H * D, lpad), [B * H * D, lpad], [lpad, 1], [D, BLKK], f8)
    if lin_mode == 1:
        w = kvw.to(q.dtype).contiguous().view(B * H * D, D)
        wd = GluonDescriptor(w, [B * H * D, D], [D, 1], [D, D], gl.NVMMASharedLayout.get_default_for(
            [D, D], sla_gluon._GL_DTYPES[q.dtype]))
    else:
        wd = qd  # unused; the same block type
    _sagesla_attn_kernel[(nq, B * H)](
        qd, kd, v1d, v2d, wd, out, out if oq is None else oq, out if os_ is None else os_, lut, k_scale, v_from,
        phi_sum if phi_sum is not None else v_from, bias if bias is not None else v_from,
        out.stride(0), out.stride(2), out.stride(1), L, H, nq, nk, lpad, kk, qk_scale, LINEAR_EPS / L, B * L,
        LIN_MODE=lin_mode, HAS_BIAS=lin_mode == 1 and bias is not None, OUT_FP8=out_fp8, STAGES=cfg.stages,
        num_warps=4, maxnreg=cfg.maxnreg,
    )
    return out
