"""The VAE's causal conv over a zero-bordered input, each tap's operand one flat 2-D TMA box.

The shipped kernel (ops/causal_conv.py) reads each tap's input tile through a 4-D descriptor (its
out-of-bounds zero fill is the conv's spatial padding) and reshapes the [1, rows, cols, K] box to
[pixels, K] in registers. Compiled for sm_90 by Triton 3.6, that reshape puts the A operand through
registers: each K step loads it from shared memory with ldmatrix, the products take it from
registers, and a CTA-wide memory fence orders those reads before the next TMA write into the stage.

Here the input carries its zero border in memory: [P + T, H + 2, W + 2, C], read as a
[pixels, C] matrix. A program computes BLOCK_M consecutive positions of an output frame's
row-major grid of H rows x (W + 2) columns (the last two columns of each row are junk and not
stored); tap (dt, dh, dw) of those positions is then one contiguous block of input rows, shifted by
dt frames, dh padded rows and dw pixels: a 2-D box that the products read from shared memory as it
is. 2 / (W + 2) of the work is spent on the junk columns (0.24% at 480p).

Each output is checked against F.conv3d of the same bf16 input; do_bench medians in ms, the shipped
kernel timed before and after in the same process. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv_flat.py --out $OUT/explore_conv_flat.json
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from explore_conv_slices import conv_case
from turbovid.bench.timing import sweep_shapes
from turbovid.ops import causal_conv

# (frames, H, W, channels): one chunk of each conv shape of the 480p / 720p decode
SHAPES = {"480p-96": (4, 480, 832, 96), "720p-96": (4, 720, 1280, 96), "480p-192": (8, 240, 416, 192),
          "480p-384": (4, 120, 208, 384)}


@triton.jit
def _flat_conv_kernel(XD, WD1, WD2, Y, H, W, COUT, C: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    wp = W + 2
    plane = (H + 2) * wp
    n_m = tl.cdiv(H * wp, BLOCK_M)
    pid = tl.program_id(0)
    f = pid // n_m
    p0 = (pid % n_m) * BLOCK_M  # the first position, row-major over H rows of W + 2
    acc1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
    NC: tl.constexpr = C // BLOCK_K
    for it in range(27 * NC):
        tap = it // NC
        c0 = (it - tap * NC) * BLOCK_K
        dt = tap // 9
        dh = (tap // 3) % 3
        dw = tap % 3
        row = tap * C + c0
        # output (h, w) reads bordered input (h + dh, w + dw): position p -> p + dh (W + 2) + dw
        a = XD.load([(f + dt) * plane + p0 + dh * wp + dw, c0])
        acc1 = tl.dot(a, WD1.load([row, 0]), acc1)
        acc2 = tl.dot(a, WD2.load([row, N1]), acc2)
    m = p0 + tl.arange(0, BLOCK_M)
    mh = m // wp
    mw = m % wp
    out = ((f * H + mh).to(tl.int64) * W + mw)[:, None] * COUT
    inside = ((mh < H) & (mw < W))[:, None]
    n = tl.arange(0, N1)
    tl.store(Y + out + n[None, :], acc1.to(Y.dtype.element_ty), mask=inside & (n < COUT)[None, :])
    n = N1 + tl.arange(0, N2)
    tl.store(Y + out + n[None, :], acc2.to(Y.dtype.element_ty), mask=inside & (n < COUT)[None, :])


def bordered(x: torch.Tensor) -> torch.Tensor:
    """[P + T, H, W, C] -> the same with a zero border of one pixel: [P + T, H + 2, W + 2, C]."""
    p_t, h, w, c = x.shape
    out = x.new_zeros(p_t, h + 2, w + 2, c)
    out[:, 1:-1, 1:-1] = x
    return out


def flat_conv(xb: torch.Tensor, packed: causal_conv.PackedConv, out: torch.Tensor, block_m: int, block_k: int,
              warps: int, stages: int) -> torch.Tensor:
    p_t, hp, wp, c = xb.shape
    h, w, t = hp - 2, wp - 2, p_t - 2
    xd = TensorDescriptor(xb, [p_t * hp * wp, c], [c, 1], [block_m, block_k])
    wd1 = TensorDescriptor.from_tensor(packed.weight, [block_k, packed.n1])
    wd2 = TensorDescriptor.from_tensor(packed.weight, [block_k, packed.n2])
    grid = (t * triton.cdiv(h * wp, block_m),)
    _flat_conv_kernel[grid](xd, wd1, wd2, out, h, w, packed.cout, C=c, N1=packed.n1, N2=packed.n2,
                            BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


def configs(c: int) -> list[tuple[int, int, int, int]]:
    """(block_m, block_k, warps, stages) to try at c channels."""
    if c <= 96:
        return [(256, 32, 4, 3), (256, 32, 4, 4), (256, 32, 8, 4), (128, 32, 4, 4), (128, 32, 4, 6)]
    if c <= 192:
        return [(128, 64, 4, 3), (128, 64, 4, 4), (256, 64, 8, 3)]
    return [(128, 64, 8, 3), (128, 64, 8, 2)]


def one(t: int, h: int, w: int, c: int) -> dict:
    case = conv_case(t, h, w, c)
    case.record("shipped", str(case.cfg), case.shipped)
    xb = bordered(case.x)
    for block_m, block_k, warps, stages in configs(c):
        case.record("flat", f"block_m={block_m} block_k={block_k} warps={warps} stages={stages}",
                    lambda a=(block_m, block_k, warps, stages): flat_conv(xb, case.packed, case.out, *a))
    case.record("shipped", str(case.cfg), case.shipped)
    return case.res


def main() -> None:
    sweep_shapes(__doc__.split("\n")[0], "explore_conv_flat.json", SHAPES, one)


if __name__ == "__main__":
    main()
