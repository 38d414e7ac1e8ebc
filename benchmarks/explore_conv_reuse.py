"""Is the VAE's 96 -> 96 conv (ops/causal_conv.py) bound by its operand traffic from L2?

Each program of the shipped kernel (256 pixels, every output channel) loads a 256 x 32 input tile
for each of the 27 taps x 3 channel slices and a 32 x 96 weight tile with it: per output FLOP,
1/96 byte of input and 1/256 byte of weights cross from L2 to shared memory. A kernel that keeps an
input tile for several taps (rows of a taller box reused for the vertical taps, as a Gluon kernel
could by slicing shared memory) would move less. Before writing one, bounds with the same loop:
- "a/3": one input load per (dt, dw, slice), used for the three dh taps' dots (a third of the
  input traffic; the sum is wrong, the work is the same);
- "b/27": the weight tiles of tap 0 loaded once before the loop (no weight traffic; also wrong);
- "a/3 b/27": both.
If the bounds are not much faster than the shipped kernel, the traffic is not what limits it.
--frames: an exact conv whose programs take 2 output frames of a 128-pixel tile: the 4 input frames
they need are loaded once per (dh, dw, slice) and each feeds up to three dots (the dt taps of the
two outputs): 2/3 of the shipped kernel's input traffic, the same weight traffic per output pixel.
--wide: the shipped kernel with twice the pixels a program and twice the warps (the same
accumulator registers a thread), which halves the weight traffic, at every conv width of the decode.
do_bench medians, ms; errors against F.conv3d are recorded for the exact variants only.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv_reuse.py --out $OUT/explore_conv_reuse.json
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from explore_conv_slices import conv_case
from turbovid.bench.timing import sweep_shapes
from turbovid.ops import causal_conv
from turbovid.ops.causal_conv import frame_tile, store_channels

SHAPES = {"480p": (4, 480, 832), "720p": (4, 720, 1280)}
C = 96


@triton.jit
def _bound_kernel(XD, WD1, WD2, Y, H, W, COUT, C: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_K: tl.constexpr, ROWS: tl.constexpr, REUSE_A: tl.constexpr, FIXED_B: tl.constexpr):
    f, h0, w0, mh, mw = frame_tile(H, W, BLOCK_M, ROWS)
    acc1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
    NC: tl.constexpr = C // BLOCK_K
    if FIXED_B:
        b1f = WD1.load([0, 0])
        b2f = WD2.load([0, N1])
    LOADS: tl.constexpr = 9 if REUSE_A else 27
    DOTS: tl.constexpr = 3 if REUSE_A else 1
    for it in range(LOADS * NC):
        tap = it // NC
        c0 = (it - tap * NC) * BLOCK_K
        if REUSE_A:  # tap = (dt, dw); the three dh taps share the load
            dt = tap // 3
            dh = 0
            dw = tap % 3 - 1
        else:
            dt = tap // 9
            dh = (tap // 3) % 3 - 1
            dw = tap % 3 - 1
        a = XD.load([f + dt, h0 + dh, w0 + dw, c0]).reshape(BLOCK_M, BLOCK_K)
        for j in tl.static_range(DOTS):
            if FIXED_B:
                acc1 = tl.dot(a, b1f, acc1)
                acc2 = tl.dot(a, b2f, acc2)
            else:
                row = (tap * DOTS + j) * C + c0
                acc1 = tl.dot(a, WD1.load([row, 0]), acc1)
                acc2 = tl.dot(a, WD2.load([row, N1]), acc2)
    out = ((f * H + mh).to(tl.int64) * W + mw)[:, None] * COUT
    inside = ((mh < H) & (mw < W))[:, None]
    store_channels(Y, Y, acc1, acc2, out, inside, COUT, N1, N2, True, False)


@triton.jit
def _pair(a, WD1, WD2, row, acc1, acc2, N1: tl.constexpr):
    return (tl.dot(a, WD1.load([row, 0]), acc1), tl.dot(a, WD2.load([row, N1]), acc2))


@triton.jit
def _two_frames_kernel(XD, WD1, WD2, Y, T, H, W, COUT, C: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr):
    g, h0, w0, mh, mw = frame_tile(H, W, BLOCK_M, ROWS)  # g: a pair of output frames 2g, 2g + 1
    f = 2 * g
    p1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
    p2 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
    q1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
    q2 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
    NC: tl.constexpr = C // BLOCK_K
    for it in range(9 * NC):
        tap = it // NC  # (dh, dw); dt is the input frame's offset from the output frame
        c0 = (it - tap * NC) * BLOCK_K
        dh = tap // 3 - 1
        dw = tap % 3 - 1
        x0 = XD.load([f, h0 + dh, w0 + dw, c0]).reshape(BLOCK_M, BLOCK_K)
        x1 = XD.load([f + 1, h0 + dh, w0 + dw, c0]).reshape(BLOCK_M, BLOCK_K)
        x2 = XD.load([f + 2, h0 + dh, w0 + dw, c0]).reshape(BLOCK_M, BLOCK_K)
        x3 = XD.load([f + 3, h0 + dh, w0 + dw, c0]).reshape(BLOCK_M, BLOCK_K)
        r0 = tap * C + c0  # weight rows of (dt, dh, dw) = (0, dh, dw); dt adds 9 C
        p1, p2 = _pair(x0, WD1, WD2, r0, p1, p2, N1)
        p1, p2 = _pair(x1, WD1, WD2, r0 + 9 * C, p1, p2, N1)
        p1, p2 = _pair(x2, WD1, WD2, r0 + 18 * C, p1, p2, N1)
        q1, q2 = _pair(x1, WD1, WD2, r0, q1, q2, N1)
        q1, q2 = _pair(x2, WD1, WD2, r0 + 9 * C, q1, q2, N1)
        q1, q2 = _pair(x3, WD1, WD2, r0 + 18 * C, q1, q2, N1)
    inside = ((mh < H) & (mw < W))[:, None]
    out = ((f * H + mh).to(tl.int64) * W + mw)[:, None] * COUT
    store_channels(Y, Y, p1, p2, out, inside, COUT, N1, N2, True, False)
    out += H * W * COUT
    second = ((mh < H) & (mw < W) & (f + 1 + 0 * mh < T))[:, None]  # T odd: the last pair has one frame
    store_channels(Y, Y, q1, q2, out, second, COUT, N1, N2, True, False)


def frames(t: int, h: int, w: int) -> dict:
    case = conv_case(t, h, w, C)
    x, packed, out = case.x, case.packed, case.out
    case.record("shipped", str(case.cfg), case.shipped)
    for rows in (1, 2, 4):
        for stages, warps in ((2, 4), (3, 4), (2, 8)):
            def run(rows=rows, stages=stages, warps=warps):
                xd = TensorDescriptor.from_tensor(x, [1, rows, 128 // rows, 32])
                wd1 = TensorDescriptor.from_tensor(packed.weight, [32, 64])
                wd2 = TensorDescriptor.from_tensor(packed.weight, [32, 32])
                _two_frames_kernel[causal_conv.tile_grid((t + 1) // 2, h, w, 128, rows)](
                    xd, wd1, wd2, out, t, h, w, C, C=C, N1=64, N2=32, BLOCK_M=128, BLOCK_K=32, ROWS=rows,
                    num_warps=warps, num_stages=stages)
                return out

            case.record("two frames", f"rows={rows} stages={stages} warps={warps}", run)
    case.record("shipped", str(case.cfg), case.shipped)
    return case.res


def one(t: int, h: int, w: int) -> dict:
    case = conv_case(t, h, w, C, zero_out=False)
    x, packed, out, cfg = case.x, case.packed, case.out, case.cfg
    case.record("shipped", str(cfg), case.shipped)
    for rows, stages in ((cfg.rows, cfg.num_stages), (4, 4), (4, 3), (8, 4)):
        for reuse_a, fixed_b in ((False, False), (True, False), (False, True), (True, True)):
            name = {(False, False): "same loop", (True, False): "a/3", (False, True): "b/27",
                    (True, True): "a/3 b/27"}[(reuse_a, fixed_b)]

            def run(rows=rows, stages=stages, reuse_a=reuse_a, fixed_b=fixed_b):
                xd = TensorDescriptor.from_tensor(x, [1, rows, 256 // rows, cfg.block_k])
                wd1 = TensorDescriptor.from_tensor(packed.weight, [cfg.block_k, 64])
                wd2 = TensorDescriptor.from_tensor(packed.weight, [cfg.block_k, 32])
                _bound_kernel[causal_conv.tile_grid(t, h, w, 256, rows)](
                    xd, wd1, wd2, out, h, w, C, C=C, N1=64, N2=32, BLOCK_M=256, BLOCK_K=cfg.block_k, ROWS=rows,
                    REUSE_A=reuse_a, FIXED_B=fixed_b, num_warps=4, num_stages=stages)
                return out

            case.record(name, f"rows={rows} stages={stages}", run)
    case.record("shipped", str(cfg), case.shipped)
    return case.res


WIDE_SHAPES = {"480p 96": (4, 480, 832, 96), "720p 96": (4, 720, 1280, 96), "240x416 192": (8, 240, 416, 192),
               "120x208 384": (4, 120, 208, 384)}


def wide(t: int, h: int, w: int, c: int) -> dict:
    case = conv_case(t, h, w, c, zero_out=False)
    x, packed, out, cfg = case.x, case.packed, case.out, case.cfg
    case.record("shipped", str(cfg), case.shipped)
    bm = 2 * cfg.block_m
    rows_ok = {r for r in (1, 2, 4, 8) if 32 <= bm // r <= 256 and w % (bm // r) == 0}
    for rows in sorted(rows_ok | {causal_conv.tile_rows(h, w, bm)}):
        for stages in (2, 3, 4):
            wc = causal_conv.Config(block_m=bm, block_k=cfg.block_k, num_warps=2 * cfg.num_warps, num_stages=stages,
                                    tma=True, rows=rows)
            if causal_conv.smem_bytes(wc, c, 2) > 220 << 10:
                continue
            case.record("wide", str(wc), lambda wc=wc: causal_conv.causal_conv(x, packed, out=out, config=wc))
    case.record("shipped", str(cfg), case.shipped)
    return case.res


def main() -> None:
    import sys
    if "--frames" in sys.argv:
        sys.argv.remove("--frames")
        sweep_shapes(__doc__.split("\n")[0], "explore_conv_frames.json", SHAPES, frames)
    elif "--wide" in sys.argv:
        sys.argv.remove("--wide")
        sweep_shapes(__doc__.split("\n")[0], "explore_conv_wide.json", WIDE_SHAPES, wide)
    else:
        sweep_shapes(__doc__.split("\n")[0], "explore_conv_reuse.json", SHAPES, one)


if __name__ == "__main__":
    main()
