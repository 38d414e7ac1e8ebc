"""SLA's sparse attention on Hopper in Gluon: a loader warp, and the next scores overlapping softmax.

Same math as sla_kernel's attention launch (head_dim 128, query blocks of 128, key blocks of 64,
bf16/fp16): for each query block, online softmax over its kept key blocks (ascending lists from
the block map), plus the linear branch, rounded once to the output dtype (or quantized for an
fp8 o-projection, blockmap._store_output's rules). The linear branch is computed in the epilogue
from the queries still in shared memory (LIN_MODE 1, the default: the query pass then only pools),
read back from the query pass's output (LIN_MODE 2), or absent (LIN_MODE 0).

Why a second kernel: the Triton launch waits for each tile's scores before its softmax and for
softmax before the next scores, so the tensor cores idle while the CUDA cores compute the
exponentials (~420 TFLOP/s on the sparse part against cuDNN's dense ~580). Here a program is
three partitions (warp specialization):
  - a loader warp streams GROUP kept key blocks a step (K and V by TMA, at the block map's
    indices) into K and V rings of STAGES steps, K of step t beside V of step t - 1;
  - two consumer warpgroups, 64 query rows each, partitions of their own so that neither waits at
    the other's barriers: each issues step t's scores Q K_t^T and step t-1's P V together, waits
    for the scores only, releases K_t, runs softmax while P V still runs, then releases V_{t-1}
    and rescales its accumulator.
No product is in flight across the loop's back edge (ptxas serializes every wgmma of a kernel when
one is; int8_gluon.py has the story). In the SASS (Triton 3.6's ptxas; benchmarks/sass_steps.py)
the wait for step t-1's P V sits before step t's exponentials, not after them, although the PTX
has it after. Packing P at the next step's start instead (no register of the in-flight P V
written before the wait), or releasing K and V together, left that wait where it was and ran
slower; two steps an iteration with P in two register sets moved most exponentials before it but
spilled, and ran slower too (docs/benchmarks.md, sessions 19 and 20). The last step alone is
masked: only it can hold the ragged last key block or a duplicate standing in for a missing second
block (scores -inf, p = 0).

Triton's interpreter does not run Gluon: CPU tests compile the kernel offline for sm_90
(benchmarks/offline_compile.py) and GPU tests compare it with the reference and the Triton launch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from turbovid.ops import gluon_switch

from .sla_reference import LINEAR_EPS

log = logging.getLogger("turbovid.attention")

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared  # 3.6 names it async_copy_*
except ImportError:  # pragma: no cover - Triton without Gluon (< 3.5)
    gluon = None

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Config:
    group: int = 2  # key blocks of 64 a softmax step (the scores tile is 128 x 64 * group)
    stages: int = 2  # K and V rings of this many steps in shared memory (3 timed the same without the linear branch)
    maxnreg: int = 168  # 3 warpgroups (2 consumers, the loader's) x 168 fill the SM; setmaxnreg gives consumers 240


def smem_bytes(cfg: Config, linear: bool = True, blkq: int = 128, blkk: int = 64, d: int = 128, elem: int = 2) -> int:
    """Q, the K and V rings, and (linear) the head's proj-folded phi(K)^T V."""
    return (blkq + 2 * cfg.stages * cfg.group * blkk + (d if linear else 0)) * d * elem


if gluon is not None:

    @gluon.constexpr_function
    def _mma_layout(bn):
        """One warpgroup's 64 query rows; one wgmma spans the bn columns."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, bn, 16])

    @gluon.jit
    def _load_blocks(desc, bufs, bars, lut_row, t, KK, row0, col0, BLKK: gl.constexpr, GROUP: gl.constexpr,
                     STAGES: gl.constexpr):
        """Step t's GROUP kept key blocks of K or V into their ring's stage t % STAGES, once the
        consumers have released it; a missing second block of the last step is a duplicate of the
        list's last one (finite values, masked by the consumers)."""
        ready, empty = bars
        s = t % STAGES
        mbarrier.wait(empty.index(s), phase=((t // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
        mbarrier.expect(ready.index(s), GROUP * desc.block_type.nbytes)
        for g in gl.static_range(GROUP):
            blk = gl.load(lut_row + gl.minimum(t * GROUP + g, KK - 1))
            _tma_load(desc, [row0 + blk * BLKK, col0], ready.index(s), bufs.index(s).slice(g * BLKK, BLKK))

    @gluon.jit
    def _load_partition(q_desc, k_desc, v_desc, w_desc, q_smem, k_bufs, v_bufs, w_smem, q_bar, kbars, vbars, lut_row,
                        row0, col0, q_row, w_row, KK, BLKK: gl.constexpr, GROUP: gl.constexpr, STAGES: gl.constexpr,
                        LIN_MODE: gl.constexpr):
        """The query block, then K of step t and V of step t - 1 in turn: the consumers need those two
        together (step t's scores beside step t-1's P V), and release K's stage a step before V's."""
        if LIN_MODE == 1:  # the query block and the head's proj-folded phi(K)^T V behind one barrier
            mbarrier.expect(q_bar, q_desc.block_type.nbytes + w_desc.block_type.nbytes)
            _tma_load(w_desc, [w_row, 0], q_bar, w_smem)
        else:
            mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        _tma_load(q_desc, [q_row, col0], q_bar, q_smem)
        n_steps = gl.cdiv(KK, GROUP)
        _load_blocks(k_desc, k_bufs, kbars, lut_row, 0, KK, row0, col0, BLKK, GROUP, STAGES)
        for t in range(1, n_steps):
            _load_blocks(k_desc, k_bufs, kbars, lut_row, t, KK, row0, col0, BLKK, GROUP, STAGES)
            _load_blocks(v_desc, v_bufs, vbars, lut_row, t - 1, KK, row0, col0, BLKK, GROUP, STAGES)
        _load_blocks(v_desc, v_bufs, vbars, lut_row, n_steps - 1, KK, row0, col0, BLKK, GROUP, STAGES)

    @gluon.jit
    def _softmax(s, m_i, l_i, qk_scale, lut_row, t, KK, L, layout: gl.constexpr, BLKK: gl.constexpr,
                 GROUP: gl.constexpr, MASKED: gl.constexpr):
        """Step t's probabilities (float32) against the running max, the new max and row sums, and
        the factor the accumulator is rescaled by."""
        if MASKED:
            cols = gl.arange(0, GROUP * BLKK, layout=gl.SliceLayout(0, layout))
            idx = t * GROUP + cols // BLKK
            keys = gl.load(lut_row + gl.minimum(idx, KK - 1)) * BLKK + cols % BLKK
            s = gl.where(((idx < KK) & (keys < L))[None, :], s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        p = gl.exp2(s * qk_scale - m_new[:, None])
        alpha = gl.exp2(m_i - m_new)
        return p, m_new, l_i * alpha + gl.sum(p, 1), alpha

    @gluon.jit
    def _step(t, acc, p_op, m_i, l_i, q_smem, k_bufs, v_bufs, kbars, vbars, lut_row, KK, L, qk_scale,
              s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr, BLKK: gl.constexpr,
              GROUP: gl.constexpr, STAGES: gl.constexpr, MASKED: gl.constexpr):
        """Step t's scores issued with step t-1's P V; softmax of the scores while P V runs."""
        BM: gl.constexpr = q_smem.shape[0]
        s = t % STAGES
        sp = (t - 1) % STAGES
        mbarrier.wait(kbars[0].index(s), phase=(t // STAGES) & 1)
        zero = gl.zeros([BM, GROUP * BLKK], gl.float32, layout=s_layout)
        s_tok = warpgroup_mma(q_smem, k_bufs.index(s).permute((1, 0)), zero, use_acc=False, is_async=True)
        mbarrier.wait(vbars[0].index(sp), phase=((t - 1) // STAGES) & 1)
        o_tok = warpgroup_mma(p_op, v_bufs.index(sp), acc, is_async=True)
        scores = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok, ))
        mbarrier.arrive(kbars[1].index(s), count=1)
        p, m_i, l_i, alpha = _softmax(scores, m_i, l_i, qk_scale, lut_row, t, KK, L, s_layout, BLKK, GROUP, MASKED)
        acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(o_tok, p_op))
        mbarrier.arrive(vbars[1].index(sp), count=1)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        p_op = gl.convert_layout(p.to(q_smem.dtype), p_layout)
        return acc, p_op, m_i, l_i

    @gluon.jit
    def _first(q_smem, k_bufs, kbars, lut_row, KK, L, qk_scale, s_layout: gl.constexpr, p_layout: gl.constexpr,
               BLKK: gl.constexpr, GROUP: gl.constexpr, MASKED: gl.constexpr):
        """Step 0's scores and softmax (its P V is issued by step 1, or by the epilogue)."""
        BM: gl.constexpr = q_smem.shape[0]
        mbarrier.wait(kbars[0].index(0), phase=0)
        zero = gl.zeros([BM, GROUP * BLKK], gl.float32, layout=s_layout)
        s_tok = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
        scores = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok, ))
        mbarrier.arrive(kbars[1].index(0), count=1)
        m_i = gl.full([BM], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([BM], gl.float32, layout=gl.SliceLayout(1, s_layout))
        p, m_i, l_i, alpha = _softmax(scores, m_i, l_i, qk_scale, lut_row, 0, KK, L, s_layout, BLKK, GROUP, MASKED)
        return gl.convert_layout(p.to(q_smem.dtype), p_layout), m_i, l_i

    @gluon.jit
    def _store_rows(o, O, OQ, OS, offs, rows, inside, scale_base, layout: gl.constexpr, OUT_FP8: gl.constexpr):
        """A (rows, 128) float32 output tile rounded to O's dtype and stored, or quantized as
        blockmap._store_output does: the bytes an fp8 o-projection makes of the rounded output."""
        o = o.to(O.dtype.element_ty)
        if OUT_FP8 == 0:
            gl.store(O + offs, o, mask=inside[:, None])
        else:
            of = o.to(gl.float32)
            if OUT_FP8 == 1:  # one scale per (token, head): amax / 448
                amax = gl.maximum(gl.max(gl.abs(of), 1), 1e-8)
                qmax = gl.full(amax.shape, 448.0, gl.float32, layout=amax.type.layout)
                mult = gl.div_rn(qmax, amax)[:, None]
                gl.store(OS + scale_base + rows, gl.div_rn(amax, qmax), mask=inside)
            else:  # one per-tensor scale from the bound at OS
                qmax = gl.full(rows.shape, 448.0, gl.float32, layout=gl.SliceLayout(1, layout))
                mult = gl.div_rn(qmax, gl.maximum(gl.load(OS + rows * 0), 1e-8))[:, None]
            v = gl.minimum(gl.maximum(of * mult, -448.0), 448.0)
            gl.store(OQ + offs, v.to(gl.float8e4nv), mask=inside[:, None])

    @gluon.jit
    def _linear_of(q_smem, w_smem, phi_sum_ptr, BIAS, lin_eps, layout: gl.constexpr, p_layout: gl.constexpr,
                   HAS_BIAS: gl.constexpr):
        """blockmap._linear_of for this warpgroup's queries: phi(q) @ kvw / (phi(q) . phi_sum + eps) + b,
        phi the softmax over the head dim, kvw = phi(K)^T V / L with proj_l's weight folded in."""
        BM: gl.constexpr = q_smem.shape[0]
        D: gl.constexpr = q_smem.shape[1]
        qf = q_smem.load(layout).to(gl.float32)
        e = gl.exp(qf - gl.max(qf, 1)[:, None])
        phi = e / gl.sum(e, 1)[:, None]
        zero = gl.zeros([BM, D], gl.float32, layout=layout)
        num = warpgroup_mma(gl.convert_layout(phi.to(w_smem.dtype), p_layout), w_smem, zero, use_acc=False)
        cols = gl.arange(0, D, layout=gl.SliceLayout(0, layout))
        lin = num / (gl.sum(phi * gl.load(phi_sum_ptr + cols)[None, :], 1) + lin_eps)[:, None]
        if HAS_BIAS:
            lin += gl.load(BIAS + cols)[None, :]
        return lin

    @gluon.jit
    def _consumer_partition(q_all, k_bufs, v_bufs, w_smem, q_bar, kbars, vbars, O, OQ, OS, PHISUM, BIAS, lut_row,
                            o_base, scale_base, phi_row, q_row0, so_l, L, KK, qk_scale, lin_eps, BLKK: gl.constexpr,
                            GROUP: gl.constexpr, STAGES: gl.constexpr, LIN_MODE: gl.constexpr,
                            HAS_BIAS: gl.constexpr, OUT_FP8: gl.constexpr, WG: gl.constexpr):
        """Warpgroup WG's 64 query rows of the block: a partition of its own, so the two warpgroups'
        barriers don't hold each other and one's softmax can run beside the other's products."""
        BM: gl.constexpr = q_all.shape[0] // 2
        D: gl.constexpr = q_all.shape[1]
        q_smem = q_all.slice(WG * BM, BM)
        q_row0 = q_row0 + WG * BM
        s_layout: gl.constexpr = _mma_layout(GROUP * BLKK)
        o_layout: gl.constexpr = _mma_layout(D)
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        n_steps = gl.cdiv(KK, GROUP)
        mbarrier.wait(q_bar, phase=0)
        acc = gl.zeros([BM, D], gl.float32, layout=o_layout)
        if n_steps == 1:
            p_op, m_i, l_i = _first(q_smem, k_bufs, kbars, lut_row, KK, L, qk_scale, s_layout, p_layout, BLKK, GROUP, True)
        else:
            p_op, m_i, l_i = _first(q_smem, k_bufs, kbars, lut_row, KK, L, qk_scale, s_layout, p_layout, BLKK, GROUP, False)
            for t in range(1, n_steps - 1):
                acc, p_op, m_i, l_i = _step(t, acc, p_op, m_i, l_i, q_smem, k_bufs, v_bufs, kbars, vbars, lut_row, KK, L,
                                            qk_scale, s_layout, o_layout, p_layout, BLKK, GROUP, STAGES, False)
            acc, p_op, m_i, l_i = _step(n_steps - 1, acc, p_op, m_i, l_i, q_smem, k_bufs, v_bufs, kbars, vbars, lut_row,
                                        KK, L, qk_scale, s_layout, o_layout, p_layout, BLKK, GROUP, STAGES, True)
        last = (n_steps - 1) % STAGES
        mbarrier.wait(vbars[0].index(last), phase=((n_steps - 1) // STAGES) & 1)
        o_tok = warpgroup_mma(p_op, v_bufs.index(last), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(o_tok, p_op))
        mbarrier.arrive(vbars[1].index(last), count=1)

        o = acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
        rows = q_row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, o_layout))
        cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        offs = o_base + rows.to(gl.int64)[:, None] * so_l + cols[None, :]
        inside = rows < L
        if LIN_MODE == 1:  # the linear branch from the queries still in shared memory
            o += _linear_of(q_smem, w_smem, PHISUM + phi_row, BIAS, lin_eps, o_layout, p_layout, HAS_BIAS)
        if LIN_MODE == 2:  # the query pass wrote the linear branch into the output
            o += gl.load(O + offs, mask=inside[:, None], other=0.0).to(gl.float32)
        _store_rows(o, O, OQ, OS, offs, rows, inside, scale_base, o_layout, OUT_FP8)

    # KK == 1 specialized as a constant fails in Triton 3.6's LLVM lowering (an assertion): never specialize it
    @gluon.jit(do_not_specialize=["KK"])
    def _sla_attn_kernel(q_desc, k_desc, v_desc, w_desc, O, OQ, OS, LUT, PHISUM, BIAS, so_b, so_h, so_l, L, H, NQ, KK,
                         qk_scale, lin_eps, ROWS_TOTAL, LIN_MODE: gl.constexpr, HAS_BIAS: gl.constexpr,
                         OUT_FP8: gl.constexpr, GROUP: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
        BM: gl.constexpr = q_desc.block_type.shape[0]
        D: gl.constexpr = q_desc.block_type.shape[1]
        BLKK: gl.constexpr = k_desc.block_type.shape[0]
        pid_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        row0 = b * L  # this batch's first row in the (B*L, H*D) views
        col0 = h * D
        lut_row = LUT + (bh * NQ + pid_m).to(gl.int64) * KK
        o_base = b.to(gl.int64) * so_b + h.to(gl.int64) * so_h

        q_smem = gl.allocate_shared_memory(q_desc.dtype, [BM, D], q_desc.layout)
        k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES, GROUP * BLKK, D], k_desc.layout)
        v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES, GROUP * BLKK, D], v_desc.layout)
        if LIN_MODE == 1:
            w_smem = gl.allocate_shared_memory(w_desc.dtype, [D, D], w_desc.layout)
        else:
            w_smem = q_smem  # unused
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        # K and V rings with barriers of their own: a step's K is released once its scores are done
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
        scale_base = h * ROWS_TOTAL + b * L
        gl.warp_specialize([
            (_consumer_partition, (q_smem, k_bufs, v_bufs, w_smem, q_bar, kbars, vbars, O, OQ, OS, PHISUM, BIAS, lut_row,
                                   o_base, scale_base, bh * D, pid_m * BM, so_l, L, KK, qk_scale, lin_eps, BLKK, GROUP,
                                   STAGES, LIN_MODE, HAS_BIAS, OUT_FP8, 0)),
            (_consumer_partition, (q_smem, k_bufs, v_bufs, w_smem, q_bar, kbars, vbars, O, OQ, OS, PHISUM, BIAS, lut_row,
                                   o_base, scale_base, bh * D, pid_m * BM, so_l, L, KK, qk_scale, lin_eps, BLKK, GROUP,
                                   STAGES, LIN_MODE, HAS_BIAS, OUT_FP8, 1)),
            (_load_partition, (q_desc, k_desc, v_desc, w_desc, q_smem, k_bufs, v_bufs, w_smem, q_bar, kbars, vbars,
                               lut_row, row0, col0, row0 + pid_m * BM, bh * D, KK, BLKK, GROUP, STAGES, LIN_MODE)),
        ], [4, 1], [240, 24])
        mbarrier.invalidate(q_bar)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(kbars[0].index(i))
            mbarrier.invalidate(kbars[1].index(i))
            mbarrier.invalidate(vbars[0].index(i))
            mbarrier.invalidate(vbars[1].index(i))


_GL_DTYPES = {}
if gluon is not None:
    _GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}


def _flat(x: torch.Tensor):
    """x [B, L, H, D] as (B*L, H*D) strides for a descriptor, or None where rows don't flatten."""
    B, L, H, D = x.shape
    if x.stride(3) != 1 or x.stride(2) != D or (B > 1 and x.stride(0) != L * x.stride(1)):
        return None
    if (x.stride(1) * x.element_size()) % 16 or x.data_ptr() % 16:
        return None
    return [B * L, H * D], [x.stride(1), 1]


def supported(device: torch.device) -> bool:
    """Gluon, an sm_90 GPU (wgmma, TMA), not the interpreter, not TURBOVID_GLUON=0 (gluon_switch)."""
    if gluon is None or device.type != "cuda" or not gluon_switch.enabled("sla attention", log):
        return False
    return torch.cuda.get_device_capability(device) == (9, 0) and gluon_switch.smem_optin(device) >= smem_bytes(Config()) + 1024


def available(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blkq: int, blkk: int) -> bool:
    """Whether this kernel can run these inputs: supported() on q's device, head_dim 128, the block
    map of 128 / 64, fp16/bf16 rows a descriptor can address."""
    if not supported(q.device):
        return False
    if q.dtype not in _GL_DTYPES or q.shape[-1] != 128 or blkq != 128 or blkk != 64:
        return False
    return all(_flat(x) is not None for x in (q, k, v))


def try_attention(*args, **kwargs) -> bool:
    """attention(*args, **kwargs), or False where it failed on q's device (gluon_switch.attempt:
    logged once); the caller then runs the Triton launch."""
    return gluon_switch.attempt("sla: the Gluon attention kernel", args[0].device, log, attention, *args,
                                **kwargs) is not None


def _descriptor(x: torch.Tensor, block: list[int]):
    shape, strides = _flat(x)
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[x.dtype])
    return GluonDescriptor(x, shape, strides, block, layout)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lut: torch.Tensor, kk: int,
              lin_mode: int, blkq: int, blkk: int, cfg: Config | None = None, out_fp8: int = 0,
              oq: torch.Tensor | None = None, os_: torch.Tensor | None = None, kvw: torch.Tensor | None = None,
              phi_sum: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The sparse attention of q over the kept blocks of k, v (lut int32 (B*H, nq, kk), ascending),
    plus the linear branch: computed here from kvw (B*H, D, D) in q's dtype, phi_sum (B*H, D) and
    bias [D] float32 or None (lin_mode 1, blockmap.attention_inputs' arguments), already in `out`
    (lin_mode 2), or none (0). Written into out [B, L, H, D], or with out_fp8 (blockmap.fp8_mode's
    1 / 2) quantized into oq, os_ (blockmap.output_buffers). The caller checks available()."""
    cfg = cfg or Config()
    B, L, H, D = q.shape
    if lin_mode == 1 and (kvw is None or phi_sum is None or tuple(kvw.shape) != (B * H, D, D)):
        raise ValueError("sla_gluon: lin_mode 1 needs kvw (B*H, D, D) and phi_sum (B*H, D)")
    nq = -(-L // blkq)
    qd = _descriptor(q, [blkq, D])
    kd = _descriptor(k, [blkk, D])
    vd = _descriptor(v, [blkk, D])
    if lin_mode == 1:
        w = kvw.to(q.dtype).contiguous().view(B * H * D, D)
        wd = GluonDescriptor(w, [B * H * D, D], [D, 1], [D, D],
                             gl.NVMMASharedLayout.get_default_for([D, D], _GL_DTYPES[q.dtype]))
    else:
        wd = qd  # unused; the same block type
    _sla_attn_kernel[(nq, B * H)](
        qd, kd, vd, wd, out, out if oq is None else oq, out if os_ is None else os_, lut,
        phi_sum if phi_sum is not None else out, bias if bias is not None else out,
        out.stride(0), out.stride(2), out.stride(1), L, H, nq, kk, D**-0.5 * LOG2E, LINEAR_EPS / L, B * L,
        LIN_MODE=lin_mode, HAS_BIAS=lin_mode == 1 and bias is not None, OUT_FP8=out_fp8, GROUP=cfg.group,
        STAGES=cfg.stages, num_warps=4, maxnreg=cfg.maxnreg,
    )
    return out
