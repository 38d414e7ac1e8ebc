"""Triton kernel: optional gated residual add, then LayerNorm, then adaLN modulation, in one pass.

Per token row (C channels, all in registers, float32 math):
    x   <- x + y * gate                  (when y is given; gate optional; stored in x's dtype)
    h   <- (x - mean) / sqrt(var + eps)  (when a normed output is wanted)
    h   <- h * w + b                     (LayerNorm affine, optional)
    h   <- h * (1 + scale) + shift       (adaLN, one vector per sample, optional)
    h   -> e4m3 + one scale per (row, 128 channels) group  (QUANT_FP8: what an fp8 linear reads next),
           or e4m3 at one per-tensor scale from a bound computed beforehand (QUANT_TENSOR, fp8_tensor.py)
One read of each input and one write of each output: the unfused PyTorch chain makes 5-8
round trips of the [B, L, C] stream through memory.
Grid: (cdiv(L, BLOCK_L), B); each program owns BLOCK_L rows of one sample, so the
per-sample vectors (gate, shift, scale) are loaded once per program.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from turbovid.ops.quant.int8_triton import _e4m3_at_bound, _to_e4m3


@triton.jit
def _residual_part(
    X, Y, GATE, XO, row_offs, rmask, b, stride_gate, C,
    C0: tl.constexpr, WIDTH: tl.constexpr, HAS_Y: tl.constexpr, HAS_GATE: tl.constexpr, WRITE_X: tl.constexpr,
):
    """Columns [C0, C0 + WIDTH) of the rows: x (+ y * gate, stored when WRITE_X), as float32."""
    cols = C0 + tl.arange(0, WIDTH)
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]
    offs = row_offs[:, None] + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Y:
        y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_GATE:
            g = tl.load(GATE + b * stride_gate + cols, mask=cmask, other=0.0).to(tl.float32)
            y = y * g[None, :]
        x = x + y
        # The norm sees the residual as stored, so fused == unfused bit for bit up to the norm's sums.
        x = x.to(XO.dtype.element_ty)
        if WRITE_X:
            tl.store(XO + offs, x, mask=mask)
        x = x.to(tl.float32)
    return x


@triton.jit
def _normed_part(
    xc, rstd, H, W, BIAS, SHIFT, SCALE, HQ, HS, row_offs, rows_g, rmask, b, stride_shift, stride_scale,
    rows_total, C,
    C0: tl.constexpr, WIDTH: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_SCALE: tl.constexpr, QUANT_FP8: tl.constexpr, QUANT_TENSOR: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Normalize, modulate and store columns [C0, C0 + WIDTH) (xc: the centred rows). Returns the
    rows' sums of squares of the stored h over these columns (QUANT_TENSOR; else zeros)."""
    cols = C0 + tl.arange(0, WIDTH)
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]
    offs = row_offs[:, None] + cols[None, :]
    h = xc * rstd[:, None]
    if HAS_AFFINE:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        bb = tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)
        h = h * w[None, :] + bb[None, :]
    if HAS_SCALE:
        s = tl.load(SCALE + b * stride_scale + cols, mask=cmask, other=0.0).to(tl.float32)
        h = h * (1.0 + s[None, :])
    if HAS_SHIFT:
        sh = tl.load(SHIFT + b * stride_shift + cols, mask=cmask, other=0.0).to(tl.float32)
        h = h + sh[None, :]
    h = h.to(H.dtype.element_ty)  # rounded as the unfused path stores it (H only names the dtype when quantizing)
    ss = tl.zeros([BLOCK_L], tl.float32)
    if QUANT_TENSOR:
        # per-tensor rule of quant.fp8_tensor: HS holds the bound (>= max|h|, from the modulation)
        hf = tl.where(mask, h.to(tl.float32), 0.0)
        tl.store(HQ + offs, _e4m3_at_bound(hf, tl.load(HS), INTERPRET), mask=mask)
        ss = tl.sum(hf * hf, axis=1)
    elif QUANT_FP8:
        # the fp8 activation rule of quant.int8_triton.quantize_act, on the rounded values:
        # amax per 128 channels of a row, scale amax / 448, e4m3(clamp(h * 448 / amax))
        hg = tl.reshape(h.to(tl.float32), (BLOCK_L, WIDTH // 128, 128))
        amax = tl.maximum(tl.max(tl.abs(hg), axis=2), 1e-8)  # (BLOCK_L, groups)
        qmax = tl.full(amax.shape, 448.0, tl.float32)
        mult = tl.math.div_rn(qmax, amax)
        v = tl.minimum(tl.maximum(hg * mult[:, :, None], -448.0), 448.0)
        q = tl.reshape(_to_e4m3(v, INTERPRET), (BLOCK_L, WIDTH))
        tl.store(HQ + offs, q, mask=mask)
        grp = C0 // 128 + tl.arange(0, WIDTH // 128)
        s_offs = grp[None, :].to(tl.int64) * rows_total + rows_g[:, None]
        s_mask = rmask[:, None] & (grp[None, :] * 128 < C)
        tl.store(HS + s_offs, tl.math.div_rn(amax, qmax), mask=s_mask)
    else:
        tl.store(H + offs, h, mask=mask)
    return ss


@triton.jit
def _add_norm_modulate_kernel(
    X, Y, GATE, XO, H, W, BIAS, SHIFT, SCALE, HQ, HS, RN,
    L, C, eps, stride_gate, stride_shift, stride_scale, rows_total,
    HAS_Y: tl.constexpr, HAS_GATE: tl.constexpr, WRITE_X: tl.constexpr,
    WRITE_H: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_SCALE: tl.constexpr,
    QUANT_FP8: tl.constexpr, QUANT_TENSOR: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_C2: tl.constexpr,
):
    # A row is held as one power-of-two part of BLOCK_C columns (masked past C), or, when
    # BLOCK_C2 > 0, as two: [0, BLOCK_C) all inside C, then [BLOCK_C, BLOCK_C + BLOCK_C2) masked.
    # C = 5120 as 4096 + 1024 wastes no lanes; one 8192-wide part masks 37.5% of them.
    pid_l = tl.program_id(0)
    b = tl.program_id(1)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    rmask = rows < L
    rows_g = b * L + rows
    row_offs = rows_g.to(tl.int64) * C
    xa = _residual_part(X, Y, GATE, XO, row_offs, rmask, b, stride_gate, C, 0, BLOCK_C, HAS_Y, HAS_GATE, WRITE_X)
    if BLOCK_C2 > 0:
        xb = _residual_part(X, Y, GATE, XO, row_offs, rmask, b, stride_gate, C, BLOCK_C, BLOCK_C2,
                            HAS_Y, HAS_GATE, WRITE_X)
    if WRITE_H:
        total = tl.sum(xa, axis=1)
        if BLOCK_C2 > 0:
            total += tl.sum(xb, axis=1)
        mean = total / C  # (BLOCK_L,)
        ca = tl.arange(0, BLOCK_C)
        xa = tl.where(rmask[:, None] & (ca < C)[None, :], xa - mean[:, None], 0.0)
        sq = tl.sum(xa * xa, axis=1)
        if BLOCK_C2 > 0:
            cb = BLOCK_C + tl.arange(0, BLOCK_C2)
            xb = tl.where(rmask[:, None] & (cb < C)[None, :], xb - mean[:, None], 0.0)
            sq += tl.sum(xb * xb, axis=1)
        rstd = tl.rsqrt(sq / C + eps)
        ss = _normed_part(xa, rstd, H, W, BIAS, SHIFT, SCALE, HQ, HS, row_offs, rows_g, rmask, b, stride_shift,
                          stride_scale, rows_total, C, 0, BLOCK_C, HAS_AFFINE, HAS_SHIFT, HAS_SCALE, QUANT_FP8,
                          QUANT_TENSOR, INTERPRET, BLOCK_L)
        if BLOCK_C2 > 0:
            ss += _normed_part(xb, rstd, H, W, BIAS, SHIFT, SCALE, HQ, HS, row_offs, rows_g, rmask, b, stride_shift,
                               stride_scale, rows_total, C, BLOCK_C, BLOCK_C2, HAS_AFFINE, HAS_SHIFT, HAS_SCALE,
                               QUANT_FP8, QUANT_TENSOR, INTERPRET, BLOCK_L)
        if QUANT_TENSOR:  # the largest row norm of h: what bounds the next linear's output (fp8_tensor)
            tl.atomic_max(RN, tl.sqrt(tl.max(ss, axis=0)))


# (rows per program, warps) per row layout (the widths of its one or two parts), measured on an H100
# at L = 32760 with benchmarks/explore_norm_quant.py; overridable for tuning. LAUNCH: bf16 output;
# QUANT_LAUNCH: fp8 output. Each width runs both at one shape, so both sum a row in the same order
# (the fp8 bytes are then exactly the linear's quantization of the bf16 output). Run 3
# (2026-11-26-explore-norm-quant-h100-run3.json), add + norm: C=1536 as 1024 + 512 on 1 row / 4
# warps 0.145 ms bf16 / 0.145 ms fp8 (one 2048-wide part, the earlier default: 0.165 / 0.177);
# C=5120 as 4096 + 1024 on 1 row / 8 warps 0.480 / 0.596 (one 8192-wide part: 0.526 / 0.694).
# The one-part entries are run 2's, for SPLIT_ROWS = False.
LAUNCH: dict[tuple[int, int], tuple[int, int]] = {
    (2048, 0): (2, 8), (8192, 0): (4, 32), (1024, 512): (1, 4), (4096, 1024): (1, 8),
}
QUANT_LAUNCH: dict[tuple[int, int], tuple[int, int]] = {
    (2048, 0): (2, 16), (8192, 0): (4, 16), (1024, 512): (1, 4), (4096, 1024): (1, 8),
}
SPLIT_ROWS = True  # hold a row as two power-of-two parts where that masks fewer lanes (False: one part)


def row_parts(c: int, quant: bool = False) -> tuple[int, int]:
    """(first part, second part or 0): the power-of-two widths a row of c channels is held as.
    Quantizing launches keep whole 128-channel groups in each part."""
    least = 128 if quant else 1
    full = max(triton.next_power_of_2(c), least)
    main = full // 2
    if not SPLIT_ROWS or full == c or main < least:
        return full, 0
    rest = max(triton.next_power_of_2(c - main), least)
    return (main, rest) if main + rest < full else (full, 0)


def _launch_shape(c: int, quant: bool = False) -> tuple[int, int, int, int]:
    """(rows per program, first part, second part, warps)."""
    parts = row_parts(c, quant)
    table = QUANT_LAUNCH if quant and parts in QUANT_LAUNCH else LAUNCH
    if parts in table:
        return table[parts][0], *parts, table[parts][1]
    width = triton.next_power_of_2(sum(parts))
    if width >= 2048:  # unmeasured widths: one row per program
        return 1, *parts, 8
    return max(1, 4096 // width), *parts, 4


def add_norm_modulate_triton(
    x: torch.Tensor,
    y: torch.Tensor | None,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype,
    write_x: bool,
    write_h: bool,
    quant_fp8: bool = False,
    bound: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None]:
    """Launch on contiguous [B, L, C] x (and y), [B, C] gate/shift/scale (unit channel stride), [C] weight/bias.

    Returns (new x or None, h or None); with quant_fp8, h is (e4m3 [B, L, C], float32 scales
    [ceil(C/128), B*L]): out_dtype's values quantized per (row, 128 channels), as quantize_act(h, "fp8");
    with quant_fp8 and bound = (bound, scale, row-norm slot) (fp8_tensor_triton.ln_bound), (e4m3 [B, L, C],
    that scale [1], the largest row norm of h [1], written into the slot).
    """
    bsz, l, c = x.shape
    x_out = torch.empty_like(x) if write_x else None
    h = hq = hs = None
    per_tensor = bool(write_h and quant_fp8 and bound is not None)
    if write_h and quant_fp8:
        hq = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
        hs = (bound[0] if per_tensor
              else torch.empty(triton.cdiv(c, 128), bsz * l, dtype=torch.float32, device=x.device))
        h = torch.empty(1, dtype=out_dtype, device=x.device)  # carries the dtype h is rounded to
    elif write_h:
        h = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    # the per-tensor launch keeps the block launch's shape: the same row sums, so the same h before rounding
    block_l, block_c, block_c2, num_warps = _launch_shape(c, quant_fp8 and write_h)
    dummy = x  # stands in for absent pointers; never read (the constexpr flags prune the loads)
    grid = (triton.cdiv(l, block_l), bsz)
    _add_norm_modulate_kernel[grid](
        x, y if y is not None else dummy, gate if gate is not None else dummy,
        x_out if x_out is not None else x, h if h is not None else dummy,
        weight if weight is not None else dummy, bias if bias is not None else dummy,
        shift if shift is not None else dummy, scale if scale is not None else dummy,
        hq if hq is not None else dummy, hs if hs is not None else dummy, bound[2] if per_tensor else dummy,
        l, c, eps,
        *(v.stride(0) if v is not None else 0 for v in (gate, shift, scale)), bsz * l,
        HAS_Y=y is not None, HAS_GATE=gate is not None, WRITE_X=write_x, WRITE_H=write_h,
        HAS_AFFINE=weight is not None, HAS_SHIFT=shift is not None, HAS_SCALE=scale is not None,
        QUANT_FP8=bool(write_h and quant_fp8), QUANT_TENSOR=per_tensor, INTERPRET=INTERPRETED,
        BLOCK_L=block_l, BLOCK_C=block_c, BLOCK_C2=block_c2, num_warps=num_warps,
    )
    if per_tensor:
        return x_out, (hq, bound[1], bound[2])
    return x_out, ((hq, hs) if hq is not None else h)


# Triton picks interpreter or compiler when the kernel is decorated (at import): remember which.
INTERPRETED = type(_add_norm_modulate_kernel).__name__ == "InterpretedFunction"
