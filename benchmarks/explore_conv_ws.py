"""A warp-specialized Gluon 96 -> 96 causal conv: a loader warp, two consumer warpgroups, persistent.

The shipped Triton conv (ops/causal_conv.py) runs the VAE's full-resolution 96-channel convs at
~540 TFLOP/s against 760-790 for the 192 / 384-channel ones. explore_conv_reuse.py bounded it: with
a third of its input loads and the weights loaded once (the sums wrong, the work the same) it ran
30% faster. explore_conv_halo.py cut the input traffic in half exactly (one load of the 6 input rows
that 4 output rows need, the three dh taps reading 64-row slices of it) but issued its 24 products
a step from one warpgroup, and tied. Here the same halo tiles feed two consumer warpgroups (2 output
rows each, one accumulator pair a row: 64 + 32 channels), while one loader warp streams the
(dt, dw, 32-channel slice) steps of this program's tiles through a ring of STAGES. A stage is
refilled once both consumers' products that read it have completed. Programs are persistent (one
an SM), so the next tile's loads run during a tile's epilogue. rs=True: each consumer loads its
input rows into registers once a step and multiplies each by up to three taps' weights (shared-memory
operands re-read the input for every product), 4 rows a tile (2 a warpgroup). ops/conv_gluon.py
ships that form with 6 rows a tile (3 a warpgroup; 8 input rows in one box) and TMA epilogues; the
last rows here time it, plain and with the decode's fused epilogues, against the Triton kernel
(EXPLORE_WS_VARIANTS=0 times those rows only).

Each output is checked against F.conv3d of the same bf16 input; do_bench medians, ms, the Triton
kernel timed before and after in the same process. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv_ws.py --out $OUT/explore_conv_ws.json
"""
from __future__ import annotations

import os

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

from turbovid.ops.conv_gluon import _acc_layout, _load_taps, _mac, _tile

_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

SHAPES = {"480p": (4, 480, 832), "720p": (4, 720, 1280)}
C = 96
BW, BK = 64, 32  # output columns a tile (one m64 product a row); input channels a step
N1, N2 = gl.constexpr(64), gl.constexpr(32)  # the 96 outputs as two power-of-two accumulators


@gluon.jit
def _loader(xa_desc, xb_desc, w1_desc, w2_desc, a_bufs, e_bufs, b1_bufs, b2_bufs, ready, empty, H, W, n_tiles,
            C: gl.constexpr, R: gl.constexpr, BW: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr):
    """For each step (dt, dw, slice) of each of this program's tiles: the R + 2 input rows
    h0 - 1 .. h0 + R (boxes of R and 2 rows; rows and columns outside the image read as zeros: the
    padding) and the three dh taps' weights, into the next free stage."""
    NC: gl.constexpr = C // BK
    NBYTES: gl.constexpr = (xa_desc.block_type.nbytes + xb_desc.block_type.nbytes
                            + 3 * (w1_desc.block_type.nbytes + w2_desc.block_type.nbytes))
    g = 0
    for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
        f, h0, w0 = _tile(t, H, W, R, BW)
        for i in range(9 * NC):
            dt = i // (3 * NC)
            dw = (i // NC) % 3
            c0 = (i % NC) * BK
            s = g % STAGES
            mbarrier.wait(empty.index(s), phase=((g // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
            bar = ready.index(s)
            mbarrier.expect(bar, NBYTES)
            _tma_load(xa_desc, [f + dt, h0 - 1, w0 + dw - 1, c0], bar,
                      a_bufs.index(s).reshape(xa_desc.block_type.shape))
            _tma_load(xb_desc, [f + dt, h0 - 1 + R, w0 + dw - 1, c0], bar,
                      e_bufs.index(s).reshape(xb_desc.block_type.shape))
            _load_taps(w1_desc, w2_desc, b1_bufs, b2_bufs, bar, s, dt, dw, c0, C)
            g += 1


@gluon.jit
def _input_row(a_buf, e_buf, q: gl.constexpr, R: gl.constexpr, BW: gl.constexpr):
    """Input row q (0 .. R + 1: image row h0 - 1 + q) of a stage, as a [BW, BK] operand."""
    if q < R:
        return a_buf.slice(q * BW, BW, dim=0)
    else:
        return e_buf.slice((q - R) * BW, BW, dim=0)


@gluon.jit
def _row(a_buf, e_buf, b1_bufs, b2_bufs, s, x, y, q: gl.constexpr, R: gl.constexpr, BW: gl.constexpr):
    """Output row q of the tile, one step: its three dh taps read input rows q + dh."""
    for dh in gl.static_range(3):
        a = _input_row(a_buf, e_buf, q + dh, R, BW)
        x = warpgroup_mma(a, b1_bufs.index(3 * s + dh).permute((1, 0)), x, is_async=True)
        y = warpgroup_mma(a, b2_bufs.index(3 * s + dh).permute((1, 0)), y, is_async=True)
    return x, y


@gluon.jit
def _store(acc, Y, B, f, hh, w0, H, W, n0: gl.constexpr, COUT: gl.constexpr, BW: gl.constexpr,
           N: gl.constexpr, layout: gl.constexpr):
    """acc + bias into output row hh, columns w0 .. w0 + BW, channels n0 .. n0 + N."""
    m = gl.arange(0, BW, layout=gl.SliceLayout(1, layout))
    n = n0 + gl.arange(0, N, layout=gl.SliceLayout(0, layout))
    acc += gl.load(B + n).to(gl.float32)[None, :]
    ww = w0 + m
    row = ((f * H + hh).to(gl.int64) * W + ww) * COUT
    ok = ((ww < W) & (hh < H))[:, None]
    gl.store(Y + row[:, None] + n[None, :], acc.to(Y.dtype.element_ty), mask=ok)


@gluon.jit
def _step(ready, empty, a_bufs, e_bufs, b1_bufs, b2_bufs, g, i, x0, y0, x1, y1, q0: gl.constexpr,
          R: gl.constexpr, BW: gl.constexpr, STAGES: gl.constexpr):
    """The program's g-th step (the tile's i-th) for output rows q0, q0 + 1; frees step g - 1's stage."""
    s = g % STAGES
    mbarrier.wait(ready.index(s), phase=(g // STAGES) & 1)
    a_buf = a_bufs.index(s)
    e_buf = e_bufs.index(s)
    x0, y0 = _row(a_buf, e_buf, b1_bufs, b2_bufs, s, x0, y0, q0, R, BW)
    x1, y1 = _row(a_buf, e_buf, b1_bufs, b2_bufs, s, x1, y1, q0 + 1, R, BW)
    return x0, y0, x1, y1


@gluon.jit
def _consumer(a_bufs, e_bufs, b1_bufs, b2_bufs, ready, empty, Y, B, H, W, n_tiles, WG: gl.constexpr,
              C: gl.constexpr, R: gl.constexpr, BW: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr):
    """Output rows WG R / 2 .. (WG + 1) R / 2 - 1 of each of this program's tiles (2 or 4)."""
    NS: gl.constexpr = 9 * (C // BK)
    l1: gl.constexpr = _acc_layout(N1)
    l2: gl.constexpr = _acc_layout(N2)
    RW: gl.constexpr = R // 2
    q0: gl.constexpr = RW * WG
    g = 0
    for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
        f, h0, w0 = _tile(t, H, W, R, BW)
        x0 = gl.zeros([BW, N1], gl.float32, layout=l1)
        x1 = gl.zeros([BW, N1], gl.float32, layout=l1)
        y0 = gl.zeros([BW, N2], gl.float32, layout=l2)
        y1 = gl.zeros([BW, N2], gl.float32, layout=l2)
        if RW == 2:
            for i in range(NS):
                x0, y0, x1, y1 = _step(ready, empty, a_bufs, e_bufs, b1_bufs, b2_bufs, g, i, x0, y0, x1, y1, q0, R,
                                       BW, STAGES)
                # the previous step's 12 products are done: free its stage
                x0, x1, y0, y1 = warpgroup_mma_wait(num_outstanding=12, deps=(x0, x1, y0, y1))
                if i > 0:
                    mbarrier.arrive(empty.index((g + STAGES - 1) % STAGES), count=1)
                g += 1
            x0, x1, y0, y1 = warpgroup_mma_wait(num_outstanding=0, deps=(x0, x1, y0, y1))
        else:
            x2 = gl.zeros([BW, N1], gl.float32, layout=l1)
            x3 = gl.zeros([BW, N1], gl.float32, layout=l1)
            y2 = gl.zeros([BW, N2], gl.float32, layout=l2)
            y3 = gl.zeros([BW, N2], gl.float32, layout=l2)
            for i in range(NS):
                x0, y0, x1, y1 = _step(ready, empty, a_bufs, e_bufs, b1_bufs, b2_bufs, g, i, x0, y0, x1, y1, q0, R,
                                       BW, STAGES)
                x2, y2, x3, y3 = _step(ready, empty, a_bufs, e_bufs, b1_bufs, b2_bufs, g, i, x2, y2, x3, y3, q0 + 2,
                                       R, BW, STAGES)
                x0, x1, x2, x3, y0, y1, y2, y3 = warpgroup_mma_wait(
                    num_outstanding=24, deps=(x0, x1, x2, x3, y0, y1, y2, y3))
                if i > 0:
                    mbarrier.arrive(empty.index((g + STAGES - 1) % STAGES), count=1)
                g += 1
            x0, x1, x2, x3, y0, y1, y2, y3 = warpgroup_mma_wait(
                num_outstanding=0, deps=(x0, x1, x2, x3, y0, y1, y2, y3))
            _store(x2, Y, B, f, h0 + q0 + 2, w0, H, W, 0, C, BW, N1, l1)
            _store(y2, Y, B, f, h0 + q0 + 2, w0, H, W, N1, C, BW, N2, l2)
            _store(x3, Y, B, f, h0 + q0 + 3, w0, H, W, 0, C, BW, N1, l1)
            _store(y3, Y, B, f, h0 + q0 + 3, w0, H, W, N1, C, BW, N2, l2)
        mbarrier.arrive(empty.index((g + STAGES - 1) % STAGES), count=1)
        _store(x0, Y, B, f, h0 + q0, w0, H, W, 0, C, BW, N1, l1)
        _store(y0, Y, B, f, h0 + q0, w0, H, W, N1, C, BW, N2, l2)
        _store(x1, Y, B, f, h0 + q0 + 1, w0, H, W, 0, C, BW, N1, l1)
        _store(y1, Y, B, f, h0 + q0 + 1, w0, H, W, N1, C, BW, N2, l2)


@gluon.jit
def _operand(a_buf, e_buf, q: gl.constexpr, R: gl.constexpr, BW: gl.constexpr, d1: gl.constexpr, d2: gl.constexpr):
    """Input row q of a stage in registers, in the operand layouts of both accumulators."""
    a = _input_row(a_buf, e_buf, q, R, BW).load(d1)
    return a, gl.convert_layout(a, d2)


@gluon.jit
def _rs_step2(a_buf, e_buf, b1_bufs, b2_bufs, s, x0, y0, x1, y1, q0: gl.constexpr, R: gl.constexpr,
              BW: gl.constexpr, d1: gl.constexpr, d2: gl.constexpr):
    """One step of output rows q0, q0 + 1 from input rows q0 .. q0 + 3 in registers; waits for its
    products, with the operands kept alive until then (the registers of an in-flight product's
    operand must not be reused)."""
    a0, c0 = _operand(a_buf, e_buf, q0, R, BW, d1, d2)
    x0, y0 = _mac(a0, c0, b1_bufs, b2_bufs, s, 0, x0, y0)
    a1, c1 = _operand(a_buf, e_buf, q0 + 1, R, BW, d1, d2)
    x0, y0 = _mac(a1, c1, b1_bufs, b2_bufs, s, 1, x0, y0)
    x1, y1 = _mac(a1, c1, b1_bufs, b2_bufs, s, 0, x1, y1)
    a2, c2 = _operand(a_buf, e_buf, q0 + 2, R, BW, d1, d2)
    x0, y0 = _mac(a2, c2, b1_bufs, b2_bufs, s, 2, x0, y0)
    x1, y1 = _mac(a2, c2, b1_bufs, b2_bufs, s, 1, x1, y1)
    a3, c3 = _operand(a_buf, e_buf, q0 + 3, R, BW, d1, d2)
    x1, y1 = _mac(a3, c3, b1_bufs, b2_bufs, s, 2, x1, y1)
    x0, y0, x1, y1, a0, a1, a2, a3, c0, c1, c2, c3 = warpgroup_mma_wait(
        num_outstanding=0, deps=(x0, y0, x1, y1, a0, a1, a2, a3, c0, c1, c2, c3))
    return x0, y0, x1, y1


@gluon.jit
def _consumer_rs(a_bufs, e_bufs, b1_bufs, b2_bufs, ready, empty, Y, B, H, W, n_tiles, WG: gl.constexpr,
                 C: gl.constexpr, R: gl.constexpr, BW: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr):
    """_consumer with the input rows in registers: each of the RW + 2 input rows the warpgroup's RW
    output rows (2) need is read from shared memory once a step and multiplies up to three
    taps' weights, where shared-memory operands are re-read for every product (4 of the 7 bytes a
    64 + 32-wide product reads per 16 x 16 block of input). Each step waits for its own products:
    the other warpgroup's keep the tensor cores busy meanwhile."""
    NS: gl.constexpr = 9 * (C // BK)
    l1: gl.constexpr = _acc_layout(N1)
    l2: gl.constexpr = _acc_layout(N2)
    d1: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=l1, k_width=2)
    d2: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=l2, k_width=2)
    RW: gl.constexpr = R // 2
    q0: gl.constexpr = RW * WG
    g = 0
    for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
        f, h0, w0 = _tile(t, H, W, R, BW)
        x0 = gl.zeros([BW, N1], gl.float32, layout=l1)
        x1 = gl.zeros([BW, N1], gl.float32, layout=l1)
        y0 = gl.zeros([BW, N2], gl.float32, layout=l2)
        y1 = gl.zeros([BW, N2], gl.float32, layout=l2)
        for i in range(NS):
            s = g % STAGES
            mbarrier.wait(ready.index(s), phase=(g // STAGES) & 1)
            x0, y0, x1, y1 = _rs_step2(a_bufs.index(s), e_bufs.index(s), b1_bufs, b2_bufs, s, x0, y0, x1, y1, q0, R,
                                       BW, d1, d2)
            mbarrier.arrive(empty.index(s), count=1)
            g += 1
        _store(x0, Y, B, f, h0 + q0, w0, H, W, 0, C, BW, N1, l1)
        _store(y0, Y, B, f, h0 + q0, w0, H, W, N1, C, BW, N2, l2)
        _store(x1, Y, B, f, h0 + q0 + 1, w0, H, W, 0, C, BW, N1, l1)
        _store(y1, Y, B, f, h0 + q0 + 1, w0, H, W, N1, C, BW, N2, l2)


@gluon.jit
def _ws_conv_kernel(xa_desc, xb_desc, w1_desc, w2_desc, Y, B, H, W, n_tiles, C: gl.constexpr,
                    R: gl.constexpr, BW: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
                    A_LAYOUT: gl.constexpr, CONSUMER_REGS: gl.constexpr, RS: gl.constexpr, num_warps: gl.constexpr):
    gl.static_assert((R == 4) or ((R == 8) and not RS), "2 (or without RS 4) output rows a consumer warpgroup")
    a_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, R * BW, BK], A_LAYOUT)
    e_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, 2 * BW, BK], A_LAYOUT)
    b1_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 3, N1, BK], w1_desc.layout)
    b2_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 3, N2, BK], w2_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for st in gl.static_range(STAGES):
        mbarrier.init(ready.index(st), count=1)
        mbarrier.init(empty.index(st), count=2)  # one arrival from each consumer
    if RS:
        gl.warp_specialize([
            (_consumer_rs, (a_bufs, e_bufs, b1_bufs, b2_bufs, ready, empty, Y, B, H, W, n_tiles, 0, C, R, BW, BK, STAGES)),
            (_consumer_rs, (a_bufs, e_bufs, b1_bufs, b2_bufs, ready, empty, Y, B, H, W, n_tiles, 1, C, R, BW, BK, STAGES)),
            (_loader, (xa_desc, xb_desc, w1_desc, w2_desc, a_bufs, e_bufs, b1_bufs, b2_bufs, ready, empty, H, W, n_tiles,
                       C, R, BW, BK, STAGES)),
        ], [4, 1], [CONSUMER_REGS, 24])

    else:
        gl.warp_specialize([
            (_consumer, (a_bufs, e_bufs, b1_bufs, b2_bufs, ready, empty, Y, B, H, W, n_tiles, 0, C, R, BW, BK, STAGES)),
            (_consumer, (a_bufs, e_bufs, b1_bufs, b2_bufs, ready, empty, Y, B, H, W, n_tiles, 1, C, R, BW, BK, STAGES)),
            (_loader, (xa_desc, xb_desc, w1_desc, w2_desc, a_bufs, e_bufs, b1_bufs, b2_bufs, ready, empty, H, W, n_tiles,
                       C, R, BW, BK, STAGES)),
        ], [4, 1], [CONSUMER_REGS, 24])
    for st in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(st))
        mbarrier.invalidate(empty.index(st))


def _layout(rank: int):
    return gl.NVMMASharedLayout(swizzle_byte_width=BK * 2, element_bitwidth=16, rank=rank)


def _desc(t: torch.Tensor, block: list[int]):
    return GluonDescriptor(t, list(t.shape), list(t.stride()), block, _layout(len(block)))


def ws_conv(x: torch.Tensor, wk: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, stages: int,
            programs: int, rows: int = 4, consumer_regs: int = 168, rs: bool = False,
            maxnreg: int | None = 168) -> torch.Tensor:
    """x [2 + T, H, W, 96] bf16, wk [96, 27 * 96] (row o, column (dt, dh, dw, c)) -> out [T, H, W, 96]."""
    p_t, h, w, c = x.shape
    n_tiles = (p_t - 2) * -(-h // rows) * -(-w // BW)
    _ws_conv_kernel[(min(programs, n_tiles),)](
        _desc(x, [1, rows, BW, BK]), _desc(x, [1, 2, BW, BK]), _desc(wk[:64], [64, BK]), _desc(wk[64:], [32, BK]),
        out, bias, h, w, n_tiles, C=c, R=rows, BW=BW, BK=BK, STAGES=stages, A_LAYOUT=_layout(2),
        CONSUMER_REGS=consumer_regs, RS=rs, num_warps=4, maxnreg=maxnreg)
    return out


# (rows, stages, consumer registers, input rows in registers): 4 rows fit 5 stages (42 KiB
# each), 8 rows 3 (58 KiB); 12 warps at 168 registers fill the register file, so one program an SM.
# Register operands for 8 rows: ptxas serializes the products (too few registers).
VARIANTS = ((4, 5, 168, False), (8, 3, 232, False), (4, 5, 168, True))


def one(t: int, h: int, w: int) -> dict:
    from explore_conv_slices import conv_case

    os.environ["TURBOVID_GLUON"] = "0"  # "shipped": the Triton kernel (ops/conv_gluon.py's is timed after)
    case = conv_case(t, h, w, C, bias=True)
    case.record("shipped", str(case.cfg), case.shipped)
    wk = case.packed.weight[:, :C].t().contiguous()  # [96, 27 * 96], K-major
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for rows, stages, regs, rs in VARIANTS if os.environ.get("EXPLORE_WS_VARIANTS", "1") == "1" else ():
        case.record("ws", f"rows={rows} stages={stages} consumer_regs={regs} rs={rs}",
                    lambda rows=rows, stages=stages, regs=regs, rs=rs: ws_conv(
                        case.x, wk, case.packed.bias, case.out, stages, sms, rows, regs, rs))
    case.record("shipped", str(case.cfg), case.shipped)
    _fused_rows(case)
    return case.res


def _fused_rows(case) -> None:
    """The shipped op plain (+ bias), with conv1's epilogue (the next norm + SiLU, the history) and
    with conv2's (+ residual, the sum stored, then the norm, the history): ops/conv_gluon.py's kernel
    (launched directly: causal_conv routes a residual to the Triton kernel) against the Triton one
    (TURBOVID_GLUON=0); errors against the Triton kernel's output."""
    from explore_conv_slices import recorder
    from turbovid.ops import causal_conv, conv_gluon

    g = torch.Generator(device="cuda").manual_seed(2)
    gamma = 1 + 0.2 * torch.randn(C, device="cuda", generator=g)
    res = torch.randn(case.out.shape, device="cuda", generator=g).bfloat16()
    hist = torch.empty(2, *case.out.shape[1:], device="cuda", dtype=torch.bfloat16)
    x_out = torch.empty_like(res)
    epilogues = {"plain": {}, "normed": dict(gamma=gamma, history_out=hist),
                 "fused": dict(gamma=gamma, residual=res, x_out=x_out, history_out=hist)}
    os.environ["TURBOVID_GLUON"] = "0"

    def triton_op(kw):
        return causal_conv.causal_conv_stream(case.x[2:], case.x[:2], case.packed, out=case.out, **kw)

    def gluon_op(kw):
        return conv_gluon.launch(case.x[2:], case.x[:2], case.packed.weight_k, case.packed.bias, case.out,
                                 causal_conv._stream_descriptor, **kw)
    flop = case.res["tflop"] * 1e12
    for name, kw in epilogues.items():
        record = recorder(case.res, triton_op(kw).clone().float(), flop)
        for kernel, op in (("Triton", triton_op), ("Gluon", gluon_op), ("Triton", triton_op)):
            record(f"{name}, {kernel}", name, lambda op=op, kw=kw: op(kw))
    os.environ.pop("TURBOVID_GLUON")


def main() -> None:
    from turbovid.bench.timing import sweep_shapes

    sweep_shapes(__doc__.split("\n")[0], "explore_conv_ws.json", SHAPES, one)


if __name__ == "__main__":
    main()
