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
blocks through a ring of STAGES; the MMA warps compute and store each tile in turn); ping-pong
(pingpong=True, experimental: two consumer warpgroups take turns at tiles so one's epilogue runs under
the other's products); or one tile a program without warp specialization (ws=False).

scaled_mm_quant writes the product as the next int8 linear's input (the FFN's up-projection: bias,
tanh-GELU, int8 quantization of each 128 x 128 tile in the epilogue), either in the MMA warps'
epilogue or (epilogue_warps > 0) in a partition of its own that works on the tile the MMA warps left
in shared memory while they compute the next; quant_config_for says where either pays.

A program computes BLOCK_M x BLOCK_N tiles (BLOCK_M and BLOCK_N dividing 128, so each K step has
one activation and one weight scale: two scalar loads). The kernel is compiled for sm_90 only
(wgmma); Triton's interpreter does not run Gluon, so CPU tests compile it offline for sm_90
(tests/test_offline_compile.py) and the GPU tests compare it with the PyTorch rule
(tests/test_quant_gpu.py).
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import torch

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
    unroll: int = 4  # K blocks a run (>= 2): one promotion a run is not overlapped
    ws: bool = True  # persistent, with a loader warp issuing the TMA loads (warp specialization)
    maxnreg: int | None = 168  # with ws: 12 warps x 168 fill the SM's registers; setmaxnreg gives the MMA warps 240
    pingpong: bool = False  # (ws) two consumers of num_warps (block_m rows each) take turns at tiles
    consumer_regs: int = 232  # pingpong: the second consumer's registers (the first gets what is left)
    # scaled_mm_quant: > 0 moves the epilogue (GELU, quantization, store) to a partition of this many
    # warps, so it runs under the next tile's products; the num_warps MMA warps then get mma_regs
    epilogue_warps: int = 0
    mma_regs: int = 208
    magic: bool = False  # promote the int32 products by an add and a subtraction instead of a conversion (_retire)


def config_for(n: int, k: int) -> Config:
    """The launch for a weight of [n, k]: runs of 6 blocks where K is 12 blocks (the 1.3B model's
    1536: 0.933 vs 0.968 ms at 1536 -> 8960), of 4 elsewhere (runs of 6 lost at K = 5120 and 13824)."""
    nk = -(-k // BLOCK)
    return Config(unroll=6) if nk == 12 else Config()


def quant_config_for(n: int, k: int) -> Config | None:
    """The launch of scaled_mm_quant for the FFN's up-projection (a weight of [n, k]), or None where
    the GEMM then the quantizing launch is faster. The epilogue's GELU and quantization cost about as
    much as the products of a 12-block K: with the MMA warps doing it (serial) the 1.3B up-projection
    took 1.54 ms against 1.34 unfused, and a 4-warp epilogue partition did no better (1.54), while at
    the 14B model's 40 blocks that partition hides it: 4.59 against 5.15 ms (H100, M = 32760,
    benchmarks/explore_int8_gluon.py, 2026-11-27)."""
    if -(-k // BLOCK) < 40:
        return None
    return Config(unroll=config_for(n, k).unroll, epilogue_warps=4, mma_regs=216)


def smem_bytes(cfg: Config, out_bytes: int = 2) -> int:
    """The pipeline's buffers plus the output tile, as the launch allocates them (barriers aside)."""
    return cfg.stages * BLOCK * (cfg.block_m + cfg.block_n) + cfg.block_m * cfg.block_n * out_bytes


if gluon is not None:
    _MAGIC_BITS = gl.constexpr(0x4B400000)  # float32 1.5 * 2**23 (Config.magic)

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
                STAGES: gl.constexpr, WS: gl.constexpr, MAGIC: gl.constexpr):
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
        if MAGIC:  # float(v) = bits(v + bits of 1.5 * 2**23) - 1.5 * 2**23, exact for |v| <= 2**21 (one 128-deep block):
            # an integer add and a float subtraction at full rate instead of a quarter-rate conversion
            return acc + ((done + _MAGIC_BITS).to(gl.float32, bitcast=True) - 12582912.0) * scale, done
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
                  BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr, UNROLL: gl.constexpr, WS: gl.constexpr,
                  MAGIC: gl.constexpr = False):
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
            acc, done_a = _retire(tok_a, 1, acc, descs, bufs, bars, sa_row, sb_row, k0, g0 + k0, nk, off_m, off_n, STAGES, WS, MAGIC)
            for j in gl.static_range(2, UNROLL):
                if j % 2 == 0:  # block j goes into a's registers while b's product completes
                    tok_a = _issue(bufs, bars, done_a, g0 + k0 + j, STAGES)
                    acc, done_b = _retire(tok_b, 1, acc, descs, bufs, bars, sa_row, sb_row, k0 + j - 1, g0 + k0 + j - 1, nk,
                                          off_m, off_n, STAGES, WS, MAGIC)
                else:
                    tok_b = _issue(bufs, bars, done_b, g0 + k0 + j, STAGES)
                    acc, done_a = _retire(tok_a, 1, acc, descs, bufs, bars, sa_row, sb_row, k0 + j - 1, g0 + k0 + j - 1, nk,
                                          off_m, off_n, STAGES, WS, MAGIC)
            if UNROLL % 2 == 0:
                acc, done_b = _retire(tok_b, 0, acc, descs, bufs, bars, sa_row, sb_row, k0 + UNROLL - 1, g0 + k0 + UNROLL - 1, nk,
                                      off_m, off_n, STAGES, WS, MAGIC)
            else:
                acc, done_a = _retire(tok_a, 0, acc, descs, bufs, bars, sa_row, sb_row, k0 + UNROLL - 1, g0 + k0 + UNROLL - 1, nk,
                                      off_m, off_n, STAGES, WS, MAGIC)
        for kb in range(nk // UNROLL * UNROLL, nk):  # the blocks past the last whole run, one at a time
            tok_a = _issue(bufs, bars, done_a, g0 + kb, STAGES)
            acc, done_a = _retire(tok_a, 0, acc, descs, bufs, bars, sa_row, sb_row, kb, g0 + kb, nk, off_m, off_n, STAGES, WS, MAGIC)
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
    def _int8_multiplier(amax, tbl_ptr, USE_TABLE: gl.constexpr):
        """128 / amax as the reference quantizer computes it (int8.RCP128_TABLE; int8_triton's rule)."""
        quotient = gl.div_rn(gl.to_tensor(128.0), amax)
        if USE_TABLE:
            bits = amax.to(gl.int32, bitcast=True)
            exp = (bits >> 23) & 0xFF
            use = ((bits & 0xFFFF) == 0) & (exp >= 100) & (exp < 191)  # int8.TABLE_EXPONENTS
            pow2 = ((254 - gl.minimum(gl.maximum(exp, 1), 253)) << 23).to(gl.float32, bitcast=True)
            approx = gl.load(tbl_ptr + ((bits >> 16) & 0x7F)) * pow2
            quotient = gl.where(use, approx, quotient)
            quotient = gl.where(bits == 0x322BCC77, gl.load(tbl_ptr + 128), quotient)  # the 1e-8 floor's
        return quotient

    @gluon.jit
    def _store_quant_tile(acc, q_desc, q_smem, bias_ptr, qargs, off_m, off_n, M, N, layout: gl.constexpr,
                          HAS_BIAS: gl.constexpr, GELU: gl.constexpr, USE_TABLE: gl.constexpr):
        """The tile as the next int8 linear reads it: acc (+ bias) rounded to the activation dtype (as
        the unfused GEMM stores it), tanh-GELU (GELU; rounded again, as an unfused GELU stores it), then
        quantized as one 128 x 128 block (int8.quantize_blockwise's rule; rows past M and columns past
        N count as zeros): int8 values by TMA, the block's scale into qargs' scale matrix."""
        s_ptr, tbl_ptr, h_ptr, stride_s = qargs
        BM: gl.constexpr = q_desc.block_type.shape[0]
        BN: gl.constexpr = q_desc.block_type.shape[1]
        rows = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))
        cols = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
        if HAS_BIAS:
            acc += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)[None, :]
        h = acc.to(h_ptr.dtype.element_ty).to(gl.float32)
        if GELU:  # int8_triton's PRE_GELU expression: 1 + tanh(u) = 2 sigmoid(2u)
            u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
            h = (0.5 * h * (2.0 * (1.0 / (1.0 + gl.exp(-(2.0 * u)))))).to(h_ptr.dtype.element_ty).to(gl.float32)
        h = gl.where((rows < M)[:, None] & (cols < N)[None, :], h, 0.0)
        amax = gl.maximum(gl.max(gl.max(gl.abs(h), axis=1), axis=0), 1e-8)
        v = h * _int8_multiplier(amax, tbl_ptr, USE_TABLE)
        q = gl.minimum(gl.maximum(gl.extra.libdevice.rint(v), -128.0), 127.0).to(gl.int8)
        gl.store(s_ptr + (off_m // 128) * stride_s + off_n // 128, gl.div_rn(amax, gl.to_tensor(128.0)))
        tma.store_wait(pendings=0)
        q_smem.store(q)
        fence_async_shared()
        _tma_store(q_desc, [off_m, off_n], q_smem)

    @gluon.jit
    def _mma_partition(descs, bufs, bars, c_desc, c_smem, sa_ptr, sb_ptr, bias_ptr, qargs, M, N, nk, stride_sam,
                       stride_sbn, NW: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
                       UNROLL: gl.constexpr, GROUP_M: gl.constexpr, HAS_BIAS: gl.constexpr,
                       QUANT_OUT: gl.constexpr, GELU: gl.constexpr, USE_TABLE: gl.constexpr, MAGIC: gl.constexpr,
                       FIRST: gl.constexpr = 0, STEP: gl.constexpr = 1):
        """Warp-specialized products and epilogues of this (persistent) program's tiles FIRST,
        FIRST + STEP, ... (STEP = 2: ping-pong, two consumers taking turns, so one's epilogue runs
        while the other's products do). The loader fills the ring with the program's tiles in order."""
        layout: gl.constexpr = _mma_layout(NW, BN)
        num_tiles = gl.cdiv(M, BM) * gl.cdiv(N, BN)
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        mine = gl.cdiv(num_tiles - pid, nprog)  # tiles of this program
        for j in range(FIRST, mine, STEP):
            off_m, off_n = _tile(pid + j * nprog, M, N, BM, BN, GROUP_M)
            if STEP == 2:  # mainloops take turns (bars[2]): the ring's parity waits cannot tell laps apart,
                # so a consumer must not wait on blocks a lap or more ahead of the one being consumed
                mbarrier.wait(bars[2].index(FIRST), phase=((j // 2) & 1) ^ (1 - FIRST))  # a fresh barrier passes parity 1
            acc = _mma_tile(descs, bufs, bars, sa_ptr + (off_m // 128) * stride_sam, sb_ptr + (off_n // 128) * stride_sbn,
                            nk, j * nk, off_m, off_n, layout, BM, BN, STAGES, UNROLL, True, MAGIC)
            if STEP == 2:
                mbarrier.arrive(bars[2].index(1 - FIRST), count=1)
            if QUANT_OUT:
                _store_quant_tile(acc, c_desc, c_smem, bias_ptr, qargs, off_m, off_n, M, N, layout, HAS_BIAS, GELU,
                                  USE_TABLE)
            else:
                _store_tile(acc, c_desc, c_smem, bias_ptr, off_m, off_n, N, layout, HAS_BIAS)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _quant_partition(q_desc, h_smem, q_smem, hbar, qargs, M, N, GROUP_M: gl.constexpr, GELU: gl.constexpr,
                         USE_TABLE: gl.constexpr, num_warps: gl.constexpr):
        """The split epilogue (scaled_mm_quant with epilogue_warps): for each tile the MMA warps leave in
        h_smem (acc + bias, rounded), tanh-GELU in place, then the 128 x 128 block's amax, its int8
        values by TMA and its scale; _store_quant_tile's math, in row slices small enough for few registers."""
        s_ptr, tbl_ptr, h_ptr, stride_s = qargs
        BM: gl.constexpr = q_desc.block_type.shape[0]
        BN: gl.constexpr = q_desc.block_type.shape[1]
        RS: gl.constexpr = 16  # rows a slice
        blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        num_tiles = gl.cdiv(M, BM) * gl.cdiv(N, BN)
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        for j in range(gl.cdiv(num_tiles - pid, nprog)):
            off_m, off_n = _tile(pid + j * nprog, M, N, BM, BN, GROUP_M)
            cols = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, blk))
            mbarrier.wait(hbar.index(0), phase=j & 1)  # the tile's h has landed
            amax_rows = gl.zeros([RS], gl.float32, layout=gl.SliceLayout(1, blk))
            for r in gl.static_range(BM // RS):
                part = h_smem.slice(r * RS, RS, dim=0)
                h = part.load(blk).to(gl.float32)
                if GELU:  # as _store_quant_tile
                    u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
                    g = (0.5 * h * (2.0 * (1.0 / (1.0 + gl.exp(-(2.0 * u)))))).to(h_ptr.dtype.element_ty)
                    part.store(g)
                    h = g.to(gl.float32)
                rows = off_m + r * RS + gl.arange(0, RS, layout=gl.SliceLayout(1, blk))
                h = gl.where((rows < M)[:, None] & (cols < N)[None, :], h, 0.0)
                amax_rows = gl.maximum(amax_rows, gl.max(gl.abs(h), axis=1))
            amax = gl.maximum(gl.max(amax_rows, axis=0), 1e-8)
            mult = _int8_multiplier(amax, tbl_ptr, USE_TABLE)
            tma.store_wait(pendings=0)  # the previous tile's values have left q_smem
            for r in gl.static_range(BM // RS):
                v = h_smem.slice(r * RS, RS, dim=0).load(blk).to(gl.float32) * mult
                q = gl.minimum(gl.maximum(gl.extra.libdevice.rint(v), -128.0), 127.0).to(gl.int8)
                q_smem.slice(r * RS, RS, dim=0).store(q)  # rows past M / columns past N: clipped by the store
            mbarrier.arrive(hbar.index(1), count=1)  # h_smem is free for the next tile
            gl.store(s_ptr + (off_m // 128) * stride_s + off_n // 128, gl.div_rn(amax, gl.to_tensor(128.0)))
            fence_async_shared()
            _tma_store(q_desc, [off_m, off_n], q_smem)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _staged_mma(descs, bufs, bars, q_desc, h_smem, hbar, sa_ptr, sb_ptr, bias_ptr, M, N, nk, stride_sam,
                    stride_sbn, meta):
        """The split epilogue's MMA warps (a worker partition: constants from types, see below): each
        tile's acc + bias, rounded to h_smem's dtype, left in h_smem for _quant_partition."""
        BM: gl.constexpr = h_smem.type.shape[0]
        BN: gl.constexpr = h_smem.type.shape[1]
        STAGES: gl.constexpr = bufs[0].type.shape[0]
        UNROLL: gl.constexpr = meta.type.shape[0]
        GROUP_M: gl.constexpr = meta.type.shape[1]
        HAS_BIAS: gl.constexpr = meta.type.shape[2] == 2
        MAGIC: gl.constexpr = meta.type.shape[3] == 2
        layout: gl.constexpr = _mma_layout(gl.num_warps(), BN)
        num_tiles = gl.cdiv(M, BM) * gl.cdiv(N, BN)
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        for j in range(gl.cdiv(num_tiles - pid, nprog)):
            off_m, off_n = _tile(pid + j * nprog, M, N, BM, BN, GROUP_M)
            acc = _mma_tile(descs, bufs, bars, sa_ptr + (off_m // 128) * stride_sam, sb_ptr + (off_n // 128) * stride_sbn,
                            nk, j * nk, off_m, off_n, layout, BM, BN, STAGES, UNROLL, True, MAGIC)
            if HAS_BIAS:
                cols = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
                acc += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)[None, :]
            h = acc.to(h_smem.dtype)
            mbarrier.wait(hbar.index(1), phase=(j & 1) ^ 1)  # the epilogue is done with the last tile (fresh: passes)
            h_smem.store(h)
            mbarrier.arrive(hbar.index(0), count=1)

    @gluon.jit
    def _staged_loader(descs, bufs, bars, q_desc, h_smem, hbar, sa_ptr, sb_ptr, bias_ptr, M, N, nk, stride_sam,
                       stride_sbn, meta):
        _load_partition(descs, bufs, bars, M, N, nk, bufs[0].type.shape[0], h_smem.type.shape[0],
                        h_smem.type.shape[1], meta.type.shape[1])

    # Worker partitions receive no constexpr arguments in Triton 3.6 (they arrive as tensors), so the
    # ping-pong workers read their constants from types: tile shapes from the descriptors, stages
    # from the ring, warps from the partition, and UNROLL, GROUP_M, HAS_BIAS from the shape of
    # `meta`, a few bytes of shared memory allocated for nothing else.

    @gluon.jit
    def _pp_second(descs, bufs, bars, c_desc, c_smems, sa_ptr, sb_ptr, bias_ptr, M, N, nk, stride_sam, stride_sbn, meta):
        """Ping-pong's second consumer (a worker partition): the program's odd tiles."""
        _mma_partition(descs, bufs, bars, c_desc, c_smems[1], sa_ptr, sb_ptr, bias_ptr, None, M, N, nk, stride_sam,
                       stride_sbn, gl.num_warps(), c_desc.block_type.shape[0], c_desc.block_type.shape[1],
                       bufs[0].type.shape[0], meta.type.shape[0], meta.type.shape[1], meta.type.shape[2] == 2,
                       False, False, False, meta.type.shape[3] == 2, 1, 2)

    @gluon.jit
    def _pp_loader(descs, bufs, bars, c_desc, c_smems, sa_ptr, sb_ptr, bias_ptr, M, N, nk, stride_sam, stride_sbn, meta):
        """Ping-pong's loader (worker partitions share one signature)."""
        _load_partition(descs, bufs, bars, M, N, nk, bufs[0].type.shape[0], c_desc.block_type.shape[0],
                        c_desc.block_type.shape[1], meta.type.shape[1])

    @gluon.jit
    def _int8_block_gemm_kernel(a_desc, b_desc, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                                stride_sam, stride_sbn, s_out_ptr, tbl_ptr, h_ptr, stride_som,
                                HAS_BIAS: gl.constexpr, QUANT_OUT: gl.constexpr, GELU: gl.constexpr,
                                USE_TABLE: gl.constexpr, MAGIC: gl.constexpr, EPI_SPLIT: gl.constexpr,
                                MMA_WARPS: gl.constexpr,
                                MMA_REGS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                                UNROLL: gl.constexpr, WS: gl.constexpr, PINGPONG: gl.constexpr,
                                CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr):
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
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())  # ping-pong's order
        for i in gl.static_range(2):
            mbarrier.init(turn.index(i), count=1)
        descs = (a_desc, b_desc)
        bufs = (a_bufs, b_bufs)
        bars = (ready, empty, turn)
        qargs = (s_out_ptr, tbl_ptr, h_ptr, stride_som)  # QUANT_OUT: c_desc is int8; see _store_quant_tile
        layout: gl.constexpr = _mma_layout(num_warps, BN)
        if EPI_SPLIT:  # persistent: a loader warp, MMA_WARPS for the products, the kernel's warps for the epilogue
            h_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, BN], h_ptr.dtype.element_ty)
            h_smem = gl.allocate_shared_memory(h_ptr.dtype.element_ty, [BM, BN], h_layout)
            q_smem = gl.allocate_shared_memory(c_desc.dtype, [BM, BN], c_desc.layout)
            hbar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())  # h ready, h free
            for i in gl.static_range(2):
                mbarrier.init(hbar.index(i), count=1)
            meta = gl.allocate_shared_memory(gl.int8, [UNROLL, GROUP_M, 2 if HAS_BIAS else 1, 2 if MAGIC else 1],
                                             gl.SwizzledSharedLayout(1, 1, 1, [3, 2, 1, 0]))
            wargs = (descs, bufs, bars, c_desc, h_smem, hbar, sa_ptr, sb_ptr, bias_ptr, M, N, nk, stride_sam,
                     stride_sbn, meta)
            gl.warp_specialize([
                (_quant_partition, (c_desc, h_smem, q_smem, hbar, qargs, M, N, GROUP_M, GELU, USE_TABLE, num_warps)),
                (_staged_mma, wargs),
                (_staged_loader, wargs),
            ], [MMA_WARPS, 1], [MMA_REGS, 24])
            for i in gl.static_range(2):
                mbarrier.invalidate(hbar.index(i))
        elif PINGPONG:  # persistent: one loader warp, two consumers of num_warps each taking turns at tiles
            c_smem0 = gl.allocate_shared_memory(c_desc.dtype, [BM, BN], c_desc.layout)
            c_smem1 = gl.allocate_shared_memory(c_desc.dtype, [BM, BN], c_desc.layout)
            meta = gl.allocate_shared_memory(gl.int8, [UNROLL, GROUP_M, 2 if HAS_BIAS else 1, 2 if MAGIC else 1],
                                             gl.SwizzledSharedLayout(1, 1, 1, [3, 2, 1, 0]))
            wargs = (descs, bufs, bars, c_desc, (c_smem0, c_smem1), sa_ptr, sb_ptr, bias_ptr, M, N, nk, stride_sam,
                     stride_sbn, meta)
            gl.warp_specialize([
                (_mma_partition, (descs, bufs, bars, c_desc, c_smem0, sa_ptr, sb_ptr, bias_ptr, None, M, N, nk,
                                  stride_sam, stride_sbn, num_warps, BM, BN, STAGES, UNROLL, GROUP_M, HAS_BIAS,
                                  False, False, False, MAGIC, 0, 2)),
                (_pp_second, wargs),
                (_pp_loader, wargs),
            ], [num_warps, 1], [CONSUMER_REGS, 24])
        elif WS:  # persistent: one loader warp; the kernel's warps do the products and the epilogues
            c_smem = gl.allocate_shared_memory(c_desc.dtype, [BM, BN], c_desc.layout)
            gl.warp_specialize([
                (_mma_partition, (descs, bufs, bars, c_desc, c_smem, sa_ptr, sb_ptr, bias_ptr, qargs, M, N, nk,
                                  stride_sam, stride_sbn, num_warps, BM, BN, STAGES, UNROLL, GROUP_M, HAS_BIAS,
                                  QUANT_OUT, GELU, USE_TABLE, MAGIC)),
                (_load_partition, (descs, bufs, bars, M, N, nk, STAGES, BM, BN, GROUP_M)),
            ], [1], [24])
        else:  # one tile a program
            off_m, off_n = _tile(gl.program_id(0), M, N, BM, BN, GROUP_M)
            for i in gl.static_range(STAGES):  # the first STAGES blocks in flight
                _load_block(descs, bufs, ready, i, i, nk, off_m, off_n)
            acc = _mma_tile(descs, bufs, bars, sa_ptr + (off_m // 128) * stride_sam,
                            sb_ptr + (off_n // 128) * stride_sbn, nk, 0, off_m, off_n, layout, BM, BN, STAGES,
                            UNROLL, False, MAGIC)
            c_smem = gl.allocate_shared_memory(c_desc.dtype, [BM, BN], c_desc.layout)
            if QUANT_OUT:
                _store_quant_tile(acc, c_desc, c_smem, bias_ptr, qargs, off_m, off_n, M, N, layout, HAS_BIAS, GELU,
                                  USE_TABLE)
            else:
                _store_tile(acc, c_desc, c_smem, bias_ptr, off_m, off_n, N, layout, HAS_BIAS)
            tma.store_wait(pendings=0)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))
            mbarrier.invalidate(empty.index(i))
        for i in gl.static_range(2):
            mbarrier.invalidate(turn.index(i))


_GL_DTYPES = {}
if gluon is not None:
    _GL_DTYPES = {torch.int8: gl.int8, torch.bfloat16: gl.bfloat16, torch.float16: gl.float16,
                  torch.float32: gl.float32}

_disabled_logged = False


def available(a_q: torch.Tensor, b_q: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """Whether this kernel can run the product: Gluon, an sm_90 GPU (wgmma), int8 operands whose rows
    are 16-byte aligned (TMA), an output dtype it stores. TURBOVID_GLUON=0 turns it off."""
    global _disabled_logged
    if gluon is None or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    if os.environ.get("TURBOVID_GLUON", "1") == "0":
        if not _disabled_logged:
            log.info("int8 GEMM: the Gluon kernel is off (TURBOVID_GLUON=0); the Triton kernel runs")
            _disabled_logged = True
        return False
    if not (a_q.is_cuda and torch.cuda.get_device_capability(a_q.device) == (9, 0)):
        return False
    if a_q.dtype != torch.int8 or b_q.dtype != torch.int8 or out_dtype not in _GL_DTYPES:
        return False
    elem = torch.empty((), dtype=out_dtype).element_size()
    if _smem_optin(a_q.device) < smem_bytes(Config(), elem) + 1024:
        return False  # every sm_90 part has 227 KiB a block; this guards the assumption
    return (all(t.stride(1) == 1 and t.stride(0) % 16 == 0 and t.data_ptr() % 16 == 0 for t in (a_q, b_q))
            and (b_q.shape[0] * elem) % 16 == 0)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=None)
def _smem_optin(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def _descriptor(t: torch.Tensor, block: list[int]):
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[t.dtype])
    return GluonDescriptor.from_tensor(t, block, layout)


def scaled_mm(a_q: torch.Tensor, a_s: torch.Tensor, b_q: torch.Tensor, b_s: torch.Tensor,
              bias: torch.Tensor | None, c: torch.Tensor, cfg: Config | None = None) -> torch.Tensor:
    """c[M, N] = the block-scaled product (int8_triton.scaled_mm's int8 contract: a_s [ceil(M/128),
    ceil(K/128)], b_s [ceil(N/128), ceil(K/128)], both float32 contiguous) + bias, written into c
    (contiguous). The caller checks available() and the shapes."""
    _launch(a_q, a_s, b_q, b_s, bias, c, cfg or Config())
    return c


def scaled_mm_quant(a_q: torch.Tensor, a_s: torch.Tensor, b_q: torch.Tensor, b_s: torch.Tensor,
                    bias: torch.Tensor | None, dtype: torch.dtype, gelu: bool = False,
                    cfg: Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The product quantized for the next int8 linear, in the GEMM's epilogue: (q [M, N] int8, scales
    [ceil(M/128), ceil(N/128)] float32), the bytes int8_triton.quantize_act(y, gelu=gelu) makes of
    y = scaled_mm(...) in `dtype`, without y in memory. Needs 128 x 128 tiles (one quantization block
    each) and a launch without ping-pong; N must keep q's rows 16-byte aligned (TMA)."""
    from turbovid.ops.quant import int8

    cfg = cfg or Config()
    if cfg.block_m != BLOCK or cfg.block_n != BLOCK or cfg.pingpong:
        raise ValueError("int8_gluon.scaled_mm_quant: the epilogue quantizes 128 x 128 tiles; use block_m = "
                         "block_n = 128 without ping-pong")
    m, n = a_q.shape[0], b_q.shape[0]
    q = torch.empty(m, n, dtype=torch.int8, device=a_q.device)
    s = torch.empty(-(-m // BLOCK), -(-n // BLOCK), dtype=torch.float32, device=a_q.device)
    h = torch.empty(1, dtype=dtype, device=a_q.device)  # names the dtype the product is rounded to
    _launch(a_q, a_s, b_q, b_s, bias, q, cfg, (s, int8.rcp_table(a_q.device), h, gelu))
    return q, s


def _launch(a_q, a_s, b_q, b_s, bias, c, cfg: Config, quant: tuple | None = None) -> None:
    if BLOCK % cfg.block_m or BLOCK % cfg.block_n or cfg.block_m % 64 or cfg.unroll < 2:
        raise ValueError(f"int8_gluon: block_m {cfg.block_m} / block_n {cfg.block_n} must divide 128 "
                         f"(block_m a multiple of 64), unroll {cfg.unroll} must be >= 2")
    m, k = a_q.shape
    n = b_q.shape[0]
    a_desc = _descriptor(a_q, [cfg.block_m, BLOCK])
    b_desc = _descriptor(b_q, [cfg.block_n, BLOCK])
    c_desc = _descriptor(c, [cfg.block_m, cfg.block_n])
    tiles = ((m + cfg.block_m - 1) // cfg.block_m) * ((n + cfg.block_n - 1) // cfg.block_n)
    grid = (min(tiles, _sm_count(a_q.device)) if cfg.ws or cfg.pingpong else tiles,)  # persistent: one program an SM
    s_out, table, h, gelu = quant or (a_s, None, a_s, False)
    split = quant is not None and cfg.epilogue_warps > 0
    _int8_block_gemm_kernel[grid](
        a_desc, b_desc, c_desc, a_s, b_s, bias if bias is not None else a_s, m, n, k,
        a_s.stride(0), b_s.stride(0), s_out, table if table is not None else a_s, h, s_out.stride(0),
        HAS_BIAS=bias is not None, QUANT_OUT=quant is not None, GELU=gelu, USE_TABLE=table is not None,
        MAGIC=cfg.magic, EPI_SPLIT=split, MMA_WARPS=cfg.num_warps, MMA_REGS=cfg.mma_regs,
        STAGES=cfg.stages, GROUP_M=cfg.group_m, UNROLL=cfg.unroll, WS=cfg.ws,
        PINGPONG=cfg.pingpong, CONSUMER_REGS=cfg.consumer_regs,
        # split: the kernel's own warps are the epilogue's; 16 warps (the loader's padded to 4) share the registers
        num_warps=cfg.epilogue_warps if split else cfg.num_warps, maxnreg=128 if split else cfg.maxnreg,
    )
