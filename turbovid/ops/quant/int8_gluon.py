"""The int8 block-scaled GEMM on Hopper, in Gluon: block products overlap their promotion.

Same math as int8_triton.scaled_mm for int8 (TurboDiffusion's -quant layout):
    C[M, N] = sum over 128-deep K blocks kb of int32(A_q[:, kb] . B_q[:, kb]^T) * sa[m // 128, kb] * sb[n // 128, kb]
in float32, + bias, stored in C's dtype.

Why a second kernel: with block scales every 128-deep int32 product must be scaled into the float32
accumulator before the next one starts accumulating, and Triton's tl.dot waits for each product
before that multiply, so the tensor cores idle while the CUDA cores promote (docs/benchmarks.md,
"Linear layers": 780-860 TOPS against cuBLAS fp8's 1100-1500). Gluon (Triton's lower-level
language, shipped with Triton >= 3.5) exposes wgmma's asynchrony: here block kb + 1's product is
issued before block kb's result is waited for, converted and scaled, so each warpgroup promotes
one block while the tensor cores compute the next. TMA loads run STAGES blocks ahead; a stage is
refilled as soon as the product that read it has completed.

Launches (Config): persistent and warp-specialized (the default: a loader warp streams the tiles'
blocks through a ring of STAGES; the MMA warps compute and store each tile in turn), or one tile a
program without warp specialization (ws=False). A ping-pong launch (two 64-row consumer warpgroups
taking turns at tiles), the FFN's GELU and int8 quantization in the epilogue, and promotion by a
magic-number add were each slower on an H100 and were removed (docs/benchmarks.md, "Session 16").

A program computes BLOCK_M x BLOCK_N tiles (BLOCK_M and BLOCK_N dividing 128, so each K step has
one activation and one weight scale: two scalar loads). The kernel is compiled for sm_90 only
(wgmma); Triton's interpreter does not run Gluon, so CPU tests compile it offline for sm_90
(tests/test_offline_compile.py) and the GPU tests compare it with the PyTorch rule
(tests/test_quant_gpu.py).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from turbovid.ops import gluon_switch

log = logging.getLogger(__name__)

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    # Triton 3.6 (the GPU image) names the TMA copies async_copy_*; later releases async_load / async_store
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
except ImportError:  # pragma: no cover - Triton without Gluon (< 3.5)
    gluon = None

BLOCK = 128  # the scale blocks, and every K step


@dataclass(frozen=True)
class Config:
    """A launch. The defaults are what benchmarks/explore_int8_gluon.py measured best on an H100
    (2026-11-27) at the 1.3B and 14B shapes, M = 32760."""
    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8  # 4 per 64 rows: one warpgroup each
    stages: int = 5
    group_m: int = 8  # row tiles sharing each weight tile while it is in L2
    unroll: int = 6  # K blocks a run (>= 2): one promotion a run is not overlapped
    ws: bool = True  # persistent, with a loader warp issuing the TMA loads (warp specialization)
    maxnreg: int | None = 168  # with ws: 12 warps x 168 fill the SM's registers; setmaxnreg gives the MMA warps 240


def config_for(n: int, k: int) -> Config:
    """The launch for a weight of [n, k]: the default at every DiT shape. Timed in interleaved rounds
    (benchmarks/explore_int8_gluon.py, H100, 2026-11-27), runs of 6 blocks beat runs of 4 at all five
    shapes swept: 1.3B qkv 0.463 vs 0.487 ms, ffn2 0.836 vs 0.923, 14B o 1.615 vs 1.687, ffn1 4.300
    vs 4.556, ffn2 4.231 vs 4.501. A second sweep put runs of 4 ahead at 6 of 7 shapes: the two are
    within ~5%. In the graphed 1.3B forward runs of 6 won twice (183.9 vs 185.1 ms), at 14B neither."""
    return Config()


def smem_bytes(cfg: Config, out_bytes: int = 2) -> int:
    """The pipeline's buffers plus the output tile, as the launch allocates them (barriers aside)."""
    return cfg.stages * BLOCK * (cfg.block_m + cfg.block_n) + cfg.block_m * cfg.block_n * out_bytes


if gluon is not None:

    @gluon.constexpr_function
    def _mma_layout(num_warps, bn):
        """Warpgroups stacked along M (64 rows each), one wgmma instruction spanning the bn columns."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, bn, 32])

    @gluon.jit
    def _issue(bufs, bars, into, g, STAGES: gl.constexpr):
        """The int32 product of the g-th block this program loads (its stage g % STAGES),
        asynchronously, once its tiles have landed, in the registers of `into` (values ignored)."""
        a_bufs, b_bufs = bufs
        ready = bars[0]
        s = g % STAGES
        mbarrier.wait(ready.index(s), phase=(g // STAGES) & 1)
        return warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), into, use_acc=False, is_async=True)

    @gluon.jit
    def _retire(tok, OUTSTANDING: gl.constexpr, acc, descs, bufs, bars, sa_row, sb_row, kb, g, nk, off_m, off_n,
                STAGES: gl.constexpr, WS: gl.constexpr):
        """Wait for the product of the tile's K block kb (the program's g-th block), leaving OUTSTANDING
        later ones running; free its stage (WS: signal the load partition; else refill it with block
        kb + STAGES here); add the product at its two scales to acc: (acc, the product)."""
        scale = gl.load(sa_row + kb) * gl.load(sb_row + kb)
        # acc rides through the wait so the previous promotion is done before it (else the compiler
        # sinks every promotion to the end of the run, where nothing overlaps them)
        done, acc = warpgroup_mma_wait(num_outstanding=OUTSTANDING, deps=(tok, acc))
        s = g % STAGES
        if WS:
            mbarrier.arrive(bars[1].index(s), count=1)
        else:
            _load_block(descs, bufs, bars[0], kb + STAGES, s, nk, off_m, off_n)
        return acc + done.to(gl.float32) * scale, done

    @gluon.jit
    def _load_block(descs, bufs, ready, kb, s, nk, off_m, off_n):
        """TMA loads of block kb's A and B tiles into stage s (none past the last block)."""
        a_desc, b_desc = descs
        a_bufs, b_bufs = bufs
        go = kb < nk
        mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=go)
        _tma_load(a_desc, [off_m, kb * a_desc.block_type.shape[1]], ready.index(s), a_bufs.index(s), pred=go)
        _tma_load(b_desc, [off_n, kb * b_desc.block_type.shape[1]], ready.index(s), b_bufs.index(s), pred=go)

    @gluon.jit
    def _tile(t, M, N, BM: gl.constexpr, BN: gl.constexpr, GROUP_M: gl.constexpr):
        """(row, column) offsets of output tile t, in grouped order: GROUP_M row tiles visit each
        column tile in turn, so a weight tile is reused while it is in L2."""
        num_m = gl.cdiv(M, BM)
        num_n = gl.cdiv(N, BN)
        in_group = GROUP_M * num_n
        first_m = (t // in_group) * GROUP_M
        group_size = gl.minimum(num_m - first_m, GROUP_M)
        return (first_m + (t % in_group) % group_size) * BM, ((t % in_group) // group_size) * BN

    @gluon.jit
    def _load_partition(descs, bufs, bars, M, N, nk, STAGES: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                        GROUP_M: gl.constexpr):
        """Warp-specialized loads for every tile of this (persistent) program: each stage is refilled
        as soon as the MMA partition frees it, so the next tile's blocks arrive during an epilogue."""
        num_tiles = gl.cdiv(M, BM) * gl.cdiv(N, BN)
        g = 0
        for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
            off_m, off_n = _tile(t, M, N, BM, BN, GROUP_M)
            for kb in range(nk):
                s = g % STAGES
                mbarrier.wait(bars[1].index(s), phase=((g // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
                _load_block(descs, bufs, bars[0], kb, s, nk, off_m, off_n)
                g += 1

    @gluon.jit
    def _mma_tile(descs, bufs, bars, sa_row, sb_row, nk, g0, off_m, off_n, layout: gl.constexpr,
                  BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr, UNROLL: gl.constexpr, WS: gl.constexpr):
        """One tile's sum_kb product(kb) * scale(kb) in float32 [BM, BN]; its first block is the
        program's g0-th. Two products in flight, in alternating
        registers, over runs of UNROLL blocks. No product is in flight across the loop's back edge:
        there the compiler copies loop-carried registers, and ptxas serializes every wgmma of a kernel
        where any other instruction reads an accumulator while its product runs. So each run ends
        with its last promotion alone."""
        acc = gl.zeros([BM, BN], gl.float32, layout=layout)
        # the registers of the two products, carried between runs only once retired
        done_a = gl.zeros([BM, BN], gl.int32, layout=layout)
        done_b = gl.zeros([BM, BN], gl.int32, layout=layout)
        for run in range(0, nk // UNROLL):
            k0 = run * UNROLL
            tok_a = _issue(bufs, bars, done_a, g0 + k0, STAGES)
            tok_b = _issue(bufs, bars, done_b, g0 + k0 + 1, STAGES)
            acc, done_a = _retire(tok_a, 1, acc, descs, bufs, bars, sa_row, sb_row, k0, g0 + k0, nk, off_m, off_n, STAGES, WS)
            for j in gl.static_range(2, UNROLL):
                if j % 2 == 0:  # block j goes into a's registers while b's product completes
                    tok_a = _issue(bufs, bars, done_a, g0 + k0 + j, STAGES)
                    acc, done_b = _retire(tok_b, 1, acc, descs, bufs, bars, sa_row, sb_row, k0 + j - 1, g0 + k0 + j - 1, nk,
                                          off_m, off_n, STAGES, WS)
                else:
                    tok_b = _issue(bufs, bars, done_b, g0 + k0 + j, STAGES)
                    acc, done_a = _retire(tok_a, 1, acc, descs, bufs, bars, sa_row, sb_row, k0 + j - 1, g0 + k0 + j - 1, nk,
                                          off_m, off_n, STAGES, WS)
            if UNROLL % 2 == 0:
                acc, done_b = _retire(tok_b, 0, acc, descs, bufs, bars, sa_row, sb_row, k0 + UNROLL - 1, g0 + k0 + UNROLL - 1, nk,
                                      off_m, off_n, STAGES, WS)
            else:
                acc, done_a = _retire(tok_a, 0, acc, descs, bufs, bars, sa_row, sb_row, k0 + UNROLL - 1, g0 + k0 + UNROLL - 1, nk,
                                      off_m, off_n, STAGES, WS)
        for kb in range(nk // UNROLL * UNROLL, nk):  # the blocks past the last whole run, one at a time
            tok_a = _issue(bufs, bars, done_a, g0 + kb, STAGES)
            acc, done_a = _retire(tok_a, 0, acc, descs, bufs, bars, sa_row, sb_row, kb, g0 + kb, nk, off_m, off_n, STAGES, WS)
        return acc

    @gluon.jit
    def _store_tile(acc, c_desc, c_smem, bias_ptr, off_m, off_n, N, layout: gl.constexpr, HAS_BIAS: gl.constexpr):
        """acc (+ bias) in C's dtype, through shared memory and a TMA store (clipped at M, N). The store
        is left in flight: the next call waits for it before reusing c_smem."""
        BN: gl.constexpr = c_desc.block_type.shape[1]
        if HAS_BIAS:
            cols = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
            acc += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)[None, :]
        tma.store_wait(pendings=0)
        c_smem.store(acc.to(c_desc.dtype))
        fence_async_shared()
        _tma_store(c_desc, [off_m, off_n], c_smem)

    @gluon.jit
    def _mma_partition(descs, bufs, bars, c_desc, c_smem, sa_ptr, sb_ptr, bias_ptr, M, N, nk, stride_sam, stride_sbn,
                       NW: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
                       UNROLL: gl.constexpr, GROUP_M: gl.constexpr, HAS_BIAS: gl.constexpr):
        """Warp-specialized products and epilogues of this (persistent) program's tiles, in the order
        the loader fills the ring with them."""
        layout: gl.constexpr = _mma_layout(NW, BN)
        num_tiles = gl.cdiv(M, BM) * gl.cdiv(N, BN)
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        mine = gl.cdiv(num_tiles - pid, nprog)  # tiles of this program
        for j in range(mine):
            off_m, off_n = _tile(pid + j * nprog, M, N, BM, BN, GROUP_M)
            acc = _mma_tile(descs, bufs, bars, sa_ptr + (off_m // 128) * stride_sam, sb_ptr + (off_n // 128) * stride_sbn,
                            nk, j * nk, off_m, off_n, layout, BM, BN, STAGES, UNROLL, True)
            _store_tile(acc, c_desc, c_smem, bias_ptr, off_m, off_n, N, layout, HAS_BIAS)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _int8_block_gemm_kernel(a_desc, b_desc, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                                stride_sam, stride_sbn,
                                HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                                UNROLL: gl.constexpr, WS: gl.constexpr, num_warps: gl.constexpr):
        BM: gl.constexpr = c_desc.block_type.shape[0]
        BN: gl.constexpr = c_desc.block_type.shape[1]
        BK: gl.constexpr = a_desc.block_type.shape[1]

        nk = gl.cdiv(K, BK)
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BM, BK], a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BN, BK], b_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        descs = (a_desc, b_desc)
        bufs = (a_bufs, b_bufs)
        bars = (ready, empty)
        layout: gl.constexpr = _mma_layout(num_warps, BN)
        if WS:  # persistent: one loader warp; the kernel's warps do the products and the epilogues
            c_smem = gl.allocate_shared_memory(c_desc.dtype, [BM, BN], c_desc.layout)
            gl.warp_specialize([
                (_mma_partition, (descs, bufs, bars, c_desc, c_smem, sa_ptr, sb_ptr, bias_ptr, M, N, nk, stride_sam,
                                  stride_sbn, num_warps, BM, BN, STAGES, UNROLL, GROUP_M, HAS_BIAS)),
                (_load_partition, (descs, bufs, bars, M, N, nk, STAGES, BM, BN, GROUP_M)),
            ], [1], [24])
        else:  # one tile a program
            off_m, off_n = _tile(gl.program_id(0), M, N, BM, BN, GROUP_M)
            for i in gl.static_range(STAGES):  # the first STAGES blocks in flight
                _load_block(descs, bufs, ready, i, i, nk, off_m, off_n)
            acc = _mma_tile(descs, bufs, bars, sa_ptr + (off_m // 128) * stride_sam,
                            sb_ptr + (off_n // 128) * stride_sbn, nk, 0, off_m, off_n, layout, BM, BN, STAGES,
                            UNROLL, False)
            c_smem = gl.allocate_shared_memory(c_desc.dtype, [BM, BN], c_desc.layout)
            _store_tile(acc, c_desc, c_smem, bias_ptr, off_m, off_n, N, layout, HAS_BIAS)
            tma.store_wait(pendings=0)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))
            mbarrier.invalidate(empty.index(i))


_GL_DTYPES = {}
if gluon is not None:
    _GL_DTYPES = {torch.int8: gl.int8, torch.bfloat16: gl.bfloat16, torch.float16: gl.float16,
                  torch.float32: gl.float32}


def available(a_q: torch.Tensor, b_q: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """Whether this kernel can run the product: Gluon, an sm_90 GPU (wgmma), int8 operands whose rows
    are 16-byte aligned (TMA), an output dtype it stores. TURBOVID_GLUON=0 turns it off."""
    if gluon is None or not gluon_switch.enabled("int8 GEMM", log):
        return False
    if not (a_q.is_cuda and torch.cuda.get_device_capability(a_q.device) == (9, 0)):
        return False
    if a_q.dtype != torch.int8 or b_q.dtype != torch.int8 or out_dtype not in _GL_DTYPES:
        return False
    elem = torch.empty((), dtype=out_dtype).element_size()
    if gluon_switch.smem_optin(a_q.device) < smem_bytes(Config(), elem) + 1024:
        return False  # every sm_90 part has 227 KiB a block; this guards the assumption
    return (all(t.stride(1) == 1 and t.stride(0) % 16 == 0 and t.data_ptr() % 16 == 0 for t in (a_q, b_q))
            and (b_q.shape[0] * elem) % 16 == 0)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _descriptor(t: torch.Tensor, block: list[int]):
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[t.dtype])
    return GluonDescriptor.from_tensor(t, block, layout)


def scaled_mm(a_q: torch.Tensor, a_s: torch.Tensor, b_q: torch.Tensor, b_s: torch.Tensor,
              bias: torch.Tensor | None, c: torch.Tensor, cfg: Config | None = None) -> torch.Tensor:
    """c[M, N] = the block-scaled product (int8_triton.scaled_mm's int8 contract: a_s [ceil(M/128),
    ceil(K/128)], b_s [ceil(N/128), ceil(K/128)], both float32 contiguous) + bias, written into c
    (contiguous). The caller checks available() and the shapes."""
    cfg = cfg or Config()
    if BLOCK % cfg.block_m or BLOCK % cfg.block_n or cfg.block_m % 64 or cfg.unroll < 2:
        raise ValueError(f"int8_gluon: block_m {cfg.block_m} / block_n {cfg.block_n} must divide 128 "
                         f"(block_m a multiple of 64), unroll {cfg.unroll} must be >= 2")
    m, k = a_q.shape
    n = b_q.shape[0]
    a_desc = _descriptor(a_q, [cfg.block_m, BLOCK])
    b_desc = _descriptor(b_q, [cfg.block_n, BLOCK])
    c_desc = _descriptor(c, [cfg.block_m, cfg.block_n])
    tiles = ((m + cfg.block_m - 1) // cfg.block_m) * ((n + cfg.block_n - 1) // cfg.block_n)
    grid = (min(tiles, _sm_count(a_q.device)) if cfg.ws else tiles,)  # persistent: one program an SM
    _int8_block_gemm_kernel[grid](
        a_desc, b_desc, c_desc, a_s, b_s, bias if bias is not None else a_s, m, n, k,
        a_s.stride(0), b_s.stride(0),
        HAS_BIAS=bias is not None, STAGES=cfg.stages, GROUP_M=cfg.group_m, UNROLL=cfg.unroll, WS=cfg.ws,
        num_warps=cfg.num_warps, maxnreg=cfg.maxnreg,
    )
    return c
