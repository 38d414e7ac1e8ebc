"""Is the VAE's 96 -> 96 conv (ops/causal_conv.py, 535-550 TFLOP/s against 760-790 at 192 / 384
channels) held back by how its dots take their operands?

The shipped kernel splits the 96 outputs into two dots (64 + 32: Triton's shapes are powers of two),
and its 4-D input box is reshaped in registers, so wgmma takes the input as a register operand (250
registers a thread in the offline sm_90 compile). Timed against it in one process:
- n128: one dot over 128 output columns, the last 32 weights zero (a third more products), only 96
  columns stored;
- rs: the input tile moved to registers once by an opaque register move, both dots reading it there;
- rs + n128;
- padded 2-D: the input padded in H and W, read as 2-D boxes of consecutive padded pixels (a
  program's run of positions includes padding columns, not stored), so wgmma reads it from shared
  memory; also at 192 and 384 channels, and with n128 at 96.
Each output is checked against F.conv3d of the same bf16 input. do_bench medians, ms. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv_n128.py --out $OUT/explore_conv_n128.json
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

SHAPES = {"480p 96": (4, 480, 832, 96), "720p 96": (4, 720, 1280, 96),
          "240x416 192": (8, 240, 416, 192), "120x208 384": (4, 120, 208, 384)}
# the padded kernel's sweep: (output columns a dot pair covers, pixels a program, warps, stages, K step)
PADDED = {96: [(96, 128, 4, 4, 32), (96, 128, 4, 5, 32), (96, 256, 4, 4, 32), (96, 256, 8, 4, 32),
               (96, 256, 8, 3, 32), (128, 128, 4, 4, 32), (128, 256, 8, 4, 32), (128, 256, 8, 3, 32)],
          192: [(192, 128, 4, 3, 64), (192, 128, 4, 4, 32), (192, 128, 8, 3, 64), (192, 256, 8, 3, 64),
                (192, 256, 8, 2, 64), (192, 64, 4, 4, 64)],
          384: [(384, 128, 8, 3, 64), (384, 128, 8, 2, 64), (384, 64, 4, 3, 64), (384, 64, 4, 4, 64),
                (384, 128, 8, 4, 32)]}


@triton.jit
def _conv_kernel(XD, WD1, WD2, Y, H, W, COUT, N1: tl.constexpr, N2: tl.constexpr, HAS_N2: tl.constexpr,
                 RS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr):
    f, h0, w0, mh, mw = frame_tile(H, W, BLOCK_M, ROWS)
    acc1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
    NC: tl.constexpr = 96 // BLOCK_K
    for it in range(27 * NC):
        tap = it // NC
        c0 = (it - tap * NC) * BLOCK_K
        a = XD.load([f + tap // 9, h0 + (tap // 3) % 3 - 1, w0 + tap % 3 - 1, c0]).reshape(BLOCK_M, BLOCK_K)
        if RS:  # an identity the compiler cannot see through: the dots take `a` from registers
            a = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [a], dtype=tl.bfloat16, is_pure=True, pack=2)
        acc1 = tl.dot(a, WD1.load([tap * 96 + c0, 0]), acc1)
        if HAS_N2:
            acc2 = tl.dot(a, WD2.load([tap * 96 + c0, N1]), acc2)
    out = ((f * H + mh).to(tl.int64) * W + mw)[:, None] * COUT
    inside = ((mh < H) & (mw < W))[:, None]
    store_channels(Y, Y, acc1, acc2, out, inside, COUT, N1, N2, HAS_N2, False)


@triton.jit
def _padded_kernel(XD, WD1, WD2, Y, H, W, COUT, C: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
                   HAS_N2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # The input fully padded, [P + T, H + 2, W + 2, C] as 2-D rows of C. A program takes BLOCK_M
    # consecutive positions of the padded frame's rows 1..H (padding columns included, not stored):
    # every tap's tile is then one box at a fixed offset, fed to wgmma from shared memory.
    WP = W + 2
    pid = tl.program_id(0)
    per_frame = tl.cdiv(H * WP, BLOCK_M)
    f = pid // per_frame
    q0 = WP + (pid % per_frame) * BLOCK_M  # the first position, counted from the padded frame's start
    acc1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
    NC: tl.constexpr = C // BLOCK_K
    for it in range(27 * NC):
        tap = it // NC
        c0 = (it - tap * NC) * BLOCK_K
        row = (f + tap // 9) * (H + 2) * WP + q0 + ((tap // 3) % 3 - 1) * WP + tap % 3 - 1
        a = XD.load([row, c0])
        acc1 = tl.dot(a, WD1.load([tap * C + c0, 0]), acc1)
        if HAS_N2:
            acc2 = tl.dot(a, WD2.load([tap * C + c0, N1]), acc2)
    q = q0 + tl.arange(0, BLOCK_M)
    hp = q // WP
    wp = q - hp * WP
    inside = ((hp <= H) & (wp >= 1) & (wp <= W))[:, None]
    out = ((f * H + hp - 1) * W + wp - 1).to(tl.int64)[:, None] * COUT
    store_channels(Y, Y, acc1, acc2, out, inside, COUT, N1, N2, HAS_N2, False)


def widen(weight: torch.Tensor, cols: int) -> torch.Tensor:
    """A packed [27 C, N] weight with zero columns up to `cols`."""
    return torch.cat([weight, weight.new_zeros(weight.shape[0], cols - weight.shape[1])], 1)


def one(t: int, h: int, w: int, C: int) -> dict:
    case = conv_case(t, h, w, C)
    x, shipped, out, cfg, record = case.x, case.packed, case.out, case.cfg, case.record
    record("shipped", str(cfg), case.shipped)
    if C == 96:
        w128 = widen(shipped.weight, 128)
        variants = [("n128", False, 128)] * 6 + [("rs", True, 96)] * 4 + [("rs n128", True, 128)] * 3
        configs = [(128, 4, 3), (128, 4, 4), (128, 4, 5), (256, 8, 3), (256, 8, 4), (128, 8, 4),
                   (256, 4, 4), (256, 8, 3), (256, 8, 4), (128, 4, 4),
                   (128, 4, 4), (256, 8, 3), (256, 8, 4)]
        for (name, rs, n), (block_m, warps, stages) in zip(variants, configs):
            wt = w128 if n == 128 else shipped.weight
            n1, n2 = (128, 0) if n == 128 else (64, 32)
            rows = causal_conv.tile_rows(h, w, block_m)

            def run(wt=wt, n1=n1, n2=n2, rs=rs, block_m=block_m, warps=warps, stages=stages, rows=rows):
                xd = TensorDescriptor(x, list(x.shape), list(x.stride()), [1, rows, block_m // rows, 32])
                wd1 = TensorDescriptor.from_tensor(wt, [32, n1])
                wd2 = TensorDescriptor.from_tensor(wt, [32, max(n2, 16)])
                _conv_kernel[causal_conv.tile_grid(t, h, w, block_m, rows)](
                    xd, wd1, wd2, out, h, w, C, N1=n1, N2=max(n2, 16), HAS_N2=n2 > 0, RS=rs,
                    BLOCK_M=block_m, BLOCK_K=32, ROWS=rows, num_warps=warps, num_stages=stages)
                return out

            record(name, f"block_m={block_m} warps={warps} stages={stages} rows={rows}", run)
    xp = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1)).reshape(-1, C)
    xp = torch.cat([xp, xp.new_zeros(512, C)])  # slack: the last program's boxes run past the end
    for n, block_m, warps, stages, block_k in PADDED[C]:
        n1, n2 = (128, 0) if (C, n) == (96, 128) else causal_conv.split_channels(C)
        wt = widen(shipped.weight, n1 + n2)

        def run(wt=wt, n1=n1, n2=n2, block_m=block_m, warps=warps, stages=stages, block_k=block_k):
            xd = TensorDescriptor.from_tensor(xp, [block_m, block_k])
            wd1 = TensorDescriptor.from_tensor(wt, [block_k, n1])
            wd2 = TensorDescriptor.from_tensor(wt, [block_k, max(n2, 16)])
            _padded_kernel[(t * triton.cdiv(h * (w + 2), block_m),)](
                xd, wd1, wd2, out, h, w, C, C=C, N1=n1, N2=max(n2, 16), HAS_N2=n2 > 0,
                BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
            return out

        record("padded 2-D" + (" n128" if n1 == 128 and C == 96 else ""),
               f"n={n1}+{n2} block_m={block_m} warps={warps} stages={stages} block_k={block_k}", run)
    record("shipped again", str(cfg), case.shipped)
    return case.res


def main() -> None:
    sweep_shapes(__doc__.split("\n")[0], "explore_conv_n128.json", SHAPES, one)


if __name__ == "__main__":
    main()
