"""A Gluon 96 -> 96 causal conv that reads each input row once for the three vertical taps.

explore_conv_reuse.py bounded the shipped Triton conv (ops/causal_conv.py): with a third of its input
loads (the sums wrong, the work the same) it ran 20% faster at 480p, so its operand traffic from L2
holds it back. Triton cannot slice shared memory; Gluon can. Here a program (4 image rows x 64
columns of one output frame, every output channel) loads, for each (dt, dw, 32-channel slice), the
6 input rows its 4 output rows need (two TMA boxes: 4 rows + 2 rows; the out-of-bounds rows and
columns read as zeros: the padding) and takes the three dh taps' operands as 4-row slices of that
buffer: half the shipped kernel's input traffic. The weights come K-major in two boxes (64 + 32
output channels; TMA boxes are powers of two), 3 dh taps x 2 a stage. A ring of STAGES buffers,
refilled as soon as the products that read a stage have completed; no warp specialization.

Each output is checked against F.conv3d of the same bf16 input; do_bench medians, ms, the shipped
kernel timed before and after in the same process. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv_halo.py --out $OUT/explore_conv_halo.json
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

from explore_conv_slices import conv_case
from turbovid.bench.timing import sweep_shapes
from turbovid.ops import causal_conv

_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

SHAPES = {"480p": (4, 480, 832), "720p": (4, 720, 1280)}
C = 96
ROWS, BW, BK = 4, 64, 32  # output rows x columns a program; input channels a K step


@gluon.constexpr_function
def _acc_layout(num_warps, n):
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, n, 16])


@gluon.jit
def _load_stage(xa_desc, xb_desc, w1_desc, w2_desc, a_buf, b1_bufs, b2_bufs, bar, i, s, f, h0, w0,
                C: gl.constexpr, NC: gl.constexpr, R: gl.constexpr, BK: gl.constexpr):
    """Step i's tiles into stage s: (dt, dw, channel slice) = i // (3 NC), i // NC % 3, i % NC; the
    R + 2 input rows h0 - 1 .. h0 + R into a_buf, the three dh taps' weights into slots 4 s + dh of
    b1_bufs / b2_bufs."""
    dt = i // (3 * NC)
    dw = (i // NC) % 3
    c0 = (i % NC) * BK
    NBYTES: gl.constexpr = (xa_desc.block_type.nbytes + xb_desc.block_type.nbytes
                            + 3 * (w1_desc.block_type.nbytes + w2_desc.block_type.nbytes))
    mbarrier.expect(bar, NBYTES)
    rows = a_buf.reshape([1, 2 * R, xa_desc.block_type.shape[2], BK])
    _tma_load(xa_desc, [f + dt, h0 - 1, w0 + dw - 1, c0], bar, rows.slice(0, R, dim=1))
    _tma_load(xb_desc, [f + dt, h0 - 1 + R, w0 + dw - 1, c0], bar, rows.slice(R, 2, dim=1))
    for dh in gl.static_range(3):
        k = (dt * 9 + dh * 3 + dw) * C + c0
        _tma_load(w1_desc, [0, k], bar, b1_bufs.index(4 * s + dh))
        _tma_load(w2_desc, [0, k], bar, b2_bufs.index(4 * s + dh))


@gluon.jit
def _row_products(a_buf, b1_bufs, b2_bufs, s, acc1, acc2, r: gl.constexpr, BWC: gl.constexpr):
    """Output image row r of the tile: its three dh taps read the stage's input rows r + dh (64-row
    slices of a_buf, on whole multiples of their size as Gluon's subslices must be)."""
    for dh in gl.static_range(3):
        a = a_buf.slice((r + dh) * BWC, BWC, dim=0)
        acc1 = warpgroup_mma(a, b1_bufs.index(4 * s + dh).permute((1, 0)), acc1, is_async=True)
        acc2 = warpgroup_mma(a, b2_bufs.index(4 * s + dh).permute((1, 0)), acc2, is_async=True)
    return acc1, acc2


@gluon.jit
def _halo_conv_kernel(xa_desc, xb_desc, w1_desc, w2_desc, Y, B, H, W, C: gl.constexpr, N1: gl.constexpr,
                      N2: gl.constexpr, R: gl.constexpr, BWC: gl.constexpr, BK: gl.constexpr,
                      STAGES: gl.constexpr, HAS_BIAS: gl.constexpr, A_LAYOUT: gl.constexpr,
                      num_warps: gl.constexpr):
    gl.static_assert(R == 4, "four output rows a program (one accumulator pair each)")
    NC: gl.constexpr = C // BK
    NK: gl.constexpr = 9 * NC
    pid = gl.program_id(0)
    n_w = gl.cdiv(W, BWC)
    n_h = gl.cdiv(H, R)
    f = pid // (n_h * n_w)
    h0 = (pid // n_w) % n_h * R
    w0 = (pid % n_w) * BWC

    # 2R image rows a stage, as pixel rows (shapes are powers of two): R + 2 are loaded, the rest
    # unused. The products read 2-D slices of it, the loads 4-D views.
    a_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, 2 * R * BWC, BK], A_LAYOUT)
    # the three dh taps' weights a stage: slots 4 s .. 4 s + 2 (shapes are powers of two)
    b1_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 4, N1, BK], w1_desc.layout)
    b2_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 4, N2, BK], w2_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for st in gl.static_range(STAGES):
        mbarrier.init(ready.index(st), count=1)
    for st in gl.static_range(STAGES - 1):
        _load_stage(xa_desc, xb_desc, w1_desc, w2_desc, a_bufs.index(st), b1_bufs, b2_bufs, ready.index(st), st, st,
                    f, h0, w0, C, NC, R, BK)

    l1: gl.constexpr = _acc_layout(num_warps, N1)
    l2: gl.constexpr = _acc_layout(num_warps, N2)
    # one pair of accumulators (N1 + N2 output channels) per output image row
    a10 = gl.zeros([BWC, N1], gl.float32, layout=l1)
    a11 = gl.zeros([BWC, N1], gl.float32, layout=l1)
    a12 = gl.zeros([BWC, N1], gl.float32, layout=l1)
    a13 = gl.zeros([BWC, N1], gl.float32, layout=l1)
    a20 = gl.zeros([BWC, N2], gl.float32, layout=l2)
    a21 = gl.zeros([BWC, N2], gl.float32, layout=l2)
    a22 = gl.zeros([BWC, N2], gl.float32, layout=l2)
    a23 = gl.zeros([BWC, N2], gl.float32, layout=l2)
    for i in range(NK):
        s = i % STAGES
        mbarrier.wait(ready.index(s), phase=(i // STAGES) & 1)
        a_buf = a_bufs.index(s)
        a10, a20 = _row_products(a_buf, b1_bufs, b2_bufs, s, a10, a20, 0, BWC)
        a11, a21 = _row_products(a_buf, b1_bufs, b2_bufs, s, a11, a21, 1, BWC)
        a12, a22 = _row_products(a_buf, b1_bufs, b2_bufs, s, a12, a22, 2, BWC)
        a13, a23 = _row_products(a_buf, b1_bufs, b2_bufs, s, a13, a23, 3, BWC)
        # step i - 1's products are done: its stage takes step i + STAGES - 1
        a10, a11, a12, a13, a20, a21, a22, a23 = warpgroup_mma_wait(
            num_outstanding=24, deps=(a10, a11, a12, a13, a20, a21, a22, a23))
        j = i + STAGES - 1
        if j < NK:
            sj = j % STAGES
            _load_stage(xa_desc, xb_desc, w1_desc, w2_desc, a_bufs.index(sj), b1_bufs, b2_bufs, ready.index(sj), j, sj,
                        f, h0, w0, C, NC, R, BK)
    a10, a11, a12, a13, a20, a21, a22, a23 = warpgroup_mma_wait(
        num_outstanding=0, deps=(a10, a11, a12, a13, a20, a21, a22, a23))
    for st in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(st))
    _store(a10, Y, B, f, h0 + 0, w0, H, W, 0, N1 + N2, BWC, N1, l1, HAS_BIAS)
    _store(a11, Y, B, f, h0 + 1, w0, H, W, 0, N1 + N2, BWC, N1, l1, HAS_BIAS)
    _store(a12, Y, B, f, h0 + 2, w0, H, W, 0, N1 + N2, BWC, N1, l1, HAS_BIAS)
    _store(a13, Y, B, f, h0 + 3, w0, H, W, 0, N1 + N2, BWC, N1, l1, HAS_BIAS)
    _store(a20, Y, B, f, h0 + 0, w0, H, W, N1, N1 + N2, BWC, N2, l2, HAS_BIAS)
    _store(a21, Y, B, f, h0 + 1, w0, H, W, N1, N1 + N2, BWC, N2, l2, HAS_BIAS)
    _store(a22, Y, B, f, h0 + 2, w0, H, W, N1, N1 + N2, BWC, N2, l2, HAS_BIAS)
    _store(a23, Y, B, f, h0 + 3, w0, H, W, N1, N1 + N2, BWC, N2, l2, HAS_BIAS)


@gluon.jit
def _store(acc, Y, B, f, hh, w0, H, W, n0: gl.constexpr, COUT: gl.constexpr, BWC: gl.constexpr, N: gl.constexpr,
           layout: gl.constexpr, HAS_BIAS: gl.constexpr):
    """One output image row hh, columns w0 .. w0 + BWC, channels n0 .. n0 + N (+ bias)."""
    m = gl.arange(0, BWC, layout=gl.SliceLayout(1, layout))
    n = n0 + gl.arange(0, N, layout=gl.SliceLayout(0, layout))
    if HAS_BIAS:
        acc += gl.load(B + n).to(gl.float32)[None, :]
    ww = w0 + m
    row = ((f * H + hh).to(gl.int64) * W + ww) * COUT
    ok = ((ww < W) & (hh < H))[:, None]
    gl.store(Y + row[:, None] + n[None, :], acc.to(Y.dtype.element_ty), mask=ok)


def _layout(rank: int):
    return gl.NVMMASharedLayout(swizzle_byte_width=BK * 2, element_bitwidth=16, rank=rank)


def _desc(t: torch.Tensor, block: list[int]):
    return GluonDescriptor(t, list(t.shape), list(t.stride()), block, _layout(len(block)))


def halo_conv(x: torch.Tensor, wk: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, stages: int,
              num_warps: int) -> torch.Tensor:
    """x [2 + T, H, W, 96] bf16, wk [96, 27 * 96] (row o, column (dt, dh, dw, c)) -> out [T, H, W, 96]."""
    p_t, h, w, c = x.shape
    xa = _desc(x, [1, ROWS, BW, BK])
    xb = _desc(x, [1, 2, BW, BK])
    w1 = _desc(wk[:64], [64, BK])
    w2 = _desc(wk[64:], [32, BK])
    grid = ((p_t - 2) * -(-h // ROWS) * -(-w // BW),)
    _halo_conv_kernel[grid](xa, xb, w1, w2, out, bias if bias is not None else out, h, w, C=c, N1=64, N2=32,
                            R=ROWS, BWC=BW, BK=BK, STAGES=stages, HAS_BIAS=bias is not None, A_LAYOUT=_layout(2),
                            num_warps=num_warps)
    return out


def one(t: int, h: int, w: int) -> dict:
    case = conv_case(t, h, w, C, bias=True)
    case.record("shipped", str(case.cfg), case.shipped)
    wk = case.packed.weight[:, :C].t().contiguous()  # [96, 27 * 96], K-major
    for stages in (2, 3, 4):
        case.record("halo", f"stages={stages} warps=4",
                    lambda stages=stages: halo_conv(case.x, wk, case.packed.bias, case.out, stages, 4))
    case.record("shipped", str(case.cfg), case.shipped)
    return case.res


def main() -> None:
    sweep_shapes(__doc__.split("\n")[0], "explore_conv_halo.json", SHAPES, one)


if __name__ == "__main__":
    main()
