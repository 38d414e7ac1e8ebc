"""Triton kernel: RMSNorm over all heads of q (or k), then 3D RoPE per head, in one pass
(or the RMSNorm alone, for cross-attention's q).

Per token row x [C] (C = heads x head_dim), float32 math:
    r      = 1 / sqrt(mean(x^2) + eps)
    n      = x * r * w
    (e, o) = n[2j], n[2j + 1]                      one complex pair per j < C/2
    out    = (e cos - o sin, e sin + o cos)        angle of (token, j mod head_dim/2)
Pairs are interleaved (Wan views the last dim as complex). Two load patterns, picked by a
two-config autotune on first use: SPLIT=1 loads the row contiguously (16-byte vectors) and
splits the pairs in registers (tl.reshape + tl.split / tl.join); SPLIT=0 reads even and odd
elements with two stride-2 loads over the same cache lines.
cos/sin [L, head_dim/2] float32 are shared by all heads and batch items.
Grid: (cdiv(L, BLOCK_L), B).
"""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from turbovid.ops.tuning import autotune

log = logging.getLogger("turbovid.fused")


@triton.jit
def _rmsnorm_rope_kernel(
    X, OUT, W, COS, SIN,
    L, C, eps, stride_x,  # stride_x: x's row stride (C, or 3C for a slice of a fused q/k/v output)
    HALF_D: tl.constexpr, HAS_ROPE: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_l = tl.program_id(0)
    b = tl.program_id(1)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    rmask = rows < L
    pairs = tl.arange(0, BLOCK_P)  # (BLOCK_P,) pair index over all heads
    pmask = pairs < C // 2
    pair_mask = rmask[:, None] & pmask[None, :]
    if SPLIT:
        # contiguous (vectorised) row loads; the pairs are split apart in registers
        cols = tl.arange(0, 2 * BLOCK_P)
        cmask = cols < C
        mask = rmask[:, None] & cmask[None, :]
        offs = (b * L + rows)[:, None].to(tl.int64) * C + cols[None, :]
        x_offs = (b * L + rows)[:, None].to(tl.int64) * stride_x + cols[None, :]
        x = tl.load(X + x_offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.rsqrt(tl.sum(x * x, axis=1) / C + eps)  # (BLOCK_L,)
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        n = x * r[:, None] * w[None, :]
        if HAS_ROPE:
            ne, no = tl.split(tl.reshape(n, (BLOCK_L, BLOCK_P, 2)))
            toff = rows[:, None] * HALF_D + (pairs % HALF_D)[None, :]
            cs = tl.load(COS + toff, mask=pair_mask, other=1.0)
            sn = tl.load(SIN + toff, mask=pair_mask, other=0.0)
            n = tl.reshape(tl.join(ne * cs - no * sn, ne * sn + no * cs), (BLOCK_L, 2 * BLOCK_P))
        tl.store(OUT + offs, n.to(OUT.dtype.element_ty), mask=mask)
    else:
        # two stride-2 loads (even / odd elements) over the same cache lines
        base = (b * L + rows)[:, None].to(tl.int64) * C + 2 * pairs[None, :]
        x_base = (b * L + rows)[:, None].to(tl.int64) * stride_x + 2 * pairs[None, :]
        xe = tl.load(X + x_base, mask=pair_mask, other=0.0).to(tl.float32)
        xo = tl.load(X + x_base + 1, mask=pair_mask, other=0.0).to(tl.float32)
        r = tl.rsqrt((tl.sum(xe * xe, axis=1) + tl.sum(xo * xo, axis=1)) / C + eps)  # (BLOCK_L,)
        we = tl.load(W + 2 * pairs, mask=pmask, other=0.0).to(tl.float32)
        wo = tl.load(W + 2 * pairs + 1, mask=pmask, other=0.0).to(tl.float32)
        ne = xe * r[:, None] * we[None, :]
        no = xo * r[:, None] * wo[None, :]
        if HAS_ROPE:
            toff = rows[:, None] * HALF_D + (pairs % HALF_D)[None, :]
            cs = tl.load(COS + toff, mask=pair_mask, other=1.0)
            sn = tl.load(SIN + toff, mask=pair_mask, other=0.0)
            oe = ne * cs - no * sn
            oo = ne * sn + no * cs
        else:
            oe, oo = ne, no
        tl.store(OUT + base, oe.to(OUT.dtype.element_ty), mask=pair_mask)
        tl.store(OUT + base + 1, oo.to(OUT.dtype.element_ty), mask=pair_mask)


# Which load pattern is faster depends on the compiler: time both on first use (2 patterns x 2 warp
# counts; the pick is kept on disk, see ops/tuning.py).
# The configs carry num_warps, so the tuned launch must not pass it (Triton would see it twice).
TUNE_CONFIGS = [triton.Config({"SPLIT": s}, num_warps=w) for s in (1, 0) for w in (4, 8)]
_rmsnorm_rope_tuned = autotune(TUNE_CONFIGS, ["C", "L", "HAS_ROPE", "BLOCK_L", "BLOCK_P"])(
    _rmsnorm_rope_kernel
)
SPLIT_FOR_INTERPRETER = 1  # tests set 0 / 1 to cover both paths
_split_failed = False


# (rows per program, warps) per pair-block width; overridable for tuning on a GPU.
LAUNCH: dict[int, tuple[int, int]] = {}


def launch_config(block_p: int) -> tuple[int, int]:
    if block_p in LAUNCH:
        return LAUNCH[block_p]
    # measured on an H100 (benchmarks/gpu_fast_debug.py): one row per program, 4 warps, at C=1536 and 5120
    block_l = max(1, min(8, 1024 // block_p))
    return block_l, 4


def rmsnorm_rope_triton(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, eps: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Launch on [B, L, C] x with unit channel stride and one row stride (contiguous, or a column
    slice of a fused q/k/v output), [C] weight, contiguous float32 [L, head_dim/2] cos/sin
    (cos = sin = None: RMSNorm alone)."""
    bsz, l, c = x.shape
    if x.stride(2) != 1 or x.stride(0) != l * x.stride(1):
        x = x.contiguous()
    if c % 2:
        raise ValueError(f"the fused RMSNorm needs an even channel count, got {c}")
    has_rope = cos is not None
    half = cos.shape[-1] if has_rope else 1
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    block_p = triton.next_power_of_2(c // 2)
    block_l, num_warps = launch_config(block_p)
    grid = (triton.cdiv(l, block_l), bsz)
    args = (x, out, weight, cos if has_rope else x, sin if has_rope else x, l, c, eps, x.stride(1))
    consts = dict(HALF_D=half, HAS_ROPE=has_rope, BLOCK_L=block_l, BLOCK_P=block_p)
    global _split_failed
    if INTERPRETED:
        _rmsnorm_rope_kernel[grid](*args, SPLIT=SPLIT_FOR_INTERPRETER, num_warps=num_warps, **consts)
    elif _split_failed:
        _rmsnorm_rope_kernel[grid](*args, SPLIT=0, num_warps=num_warps, **consts)
    else:
        try:
            _rmsnorm_rope_tuned[grid](*args, **consts)
        except Exception as e:  # noqa: BLE001 - e.g. a compiler without tl.split/join: keep the strided path
            _split_failed = True
            log.warning("fused RMSNorm: split-pairs autotune failed (%s: %s); using strided loads",
                        type(e).__name__, str(e).splitlines()[0][:160] if str(e) else "")
            _rmsnorm_rope_kernel[grid](*args, SPLIT=0, num_warps=num_warps, **consts)
    return out


# Triton picks interpreter or compiler when the kernel is decorated (at import): remember which.
INTERPRETED = type(_rmsnorm_rope_kernel).__name__ == "InterpretedFunction"
