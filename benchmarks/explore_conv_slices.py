"""Is the VAE's full-resolution 96 -> 96 conv (ops/causal_conv.py) bound by its loop's step count?

Its K loop takes 81 steps of 32 channels (27 taps x 96 channels), each step a 32-wide descriptor load
and two small dots (64 + 32 outputs); the 192 / 384-channel convs take 64-channel steps and run at
760-790 TFLOP/s against 535 here. Two ways to take wider steps, timed against the shipped kernel:
- padded: the input written with 128 channels (32 zeros a pixel), the shipped kernel at 64- or
  128-channel steps (54 or 27 steps; a third more products and input bytes);
- overlap: the input written with a zero pixel on each side of every row, read through a descriptor
  whose pixel rows overlap: row w spans pixels w - 1 .. w + 1 (3 x 96 = 288 channels, the three
  horizontal taps), padded to 320 with the next pixel's channels against zero weights. 9 (dt, dh)
  taps x 5 steps of 64 = 45 steps (a tenth more products), or x 9 steps of 32 (no extra products).
Each output is checked against F.conv3d of the same bf16 input. do_bench medians, ms. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv_slices.py --out $OUT/explore_conv_slices.json
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl
from triton.testing import do_bench
from triton.tools.tensor_descriptor import TensorDescriptor

from turbovid.bench.timing import sweep_shapes
from turbovid.ops import causal_conv
from turbovid.ops.causal_conv import frame_tile, store_channels

SHAPES = {"480p": (4, 480, 832), "720p": (4, 720, 1280)}
C = 96
SPAN = 3 * C  # the three horizontal taps of one pixel row, contiguous in the overlapping view


@triton.jit
def _overlap_kernel(XD, WD1, WD2, Y, H, W, COUT, KP: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr):
    f, h0, w0, mh, mw = frame_tile(H, W, BLOCK_M, ROWS)
    acc1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
    NS: tl.constexpr = KP // BLOCK_K
    for it in range(9 * NS):
        tap = it // NS  # (dt, dh); dw lies inside the overlapping row
        k0 = (it - tap * NS) * BLOCK_K
        a = XD.load([f + tap // 3, h0 + tap % 3 - 1, w0, k0]).reshape(BLOCK_M, BLOCK_K)
        acc1 = tl.dot(a, WD1.load([tap * KP + k0, 0]), acc1)
        acc2 = tl.dot(a, WD2.load([tap * KP + k0, N1]), acc2)
    out = ((f * H + mh).to(tl.int64) * W + mw)[:, None] * COUT
    inside = ((mh < H) & (mw < W))[:, None]
    store_channels(Y, Y, acc1, acc2, out, inside, COUT, N1, N2, True, False)


def overlap_weights(weight: torch.Tensor, kp: int) -> torch.Tensor:
    """[Cout, C, 3, 3, 3] -> [9 kp, Cout]: rows (dt, dh, dw * C + c), zero rows from 3C to kp."""
    cout = weight.shape[0]
    w = weight.permute(2, 3, 4, 1, 0).reshape(9, SPAN, cout)
    return torch.cat([w, w.new_zeros(9, kp - SPAN, cout)], 1).reshape(9 * kp, cout).contiguous()


def overlap_input(x: torch.Tensor, kp: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """x [P + T, H, W, C] -> (storage, view shape, view strides): rows padded by a zero pixel on each
    side, a view row w covering kp channels from pixel w - 1 on (slack at the end for the last row)."""
    pt, h, w, c = x.shape
    flat = x.new_zeros(pt * h * (w + 2) * c + kp)
    flat[:pt * h * (w + 2) * c].view(pt, h, w + 2, c)[:, :, 1:w + 1] = x
    return flat, [pt, h, w, kp], [h * (w + 2) * c, (w + 2) * c, c, 1]


def recorder(res: dict, ref: torch.Tensor, flop: int, out: torch.Tensor | None = None):
    """record(name, cfg, fn): fn's output error against ref and its do_bench median into res["rows"].
    A config that does not compile, fit or encode is recorded with its error, not fatal. `out`, if
    given, is zeroed first, so a position a variant fails to write shows in its error."""
    def record(name: str, cfg: str, fn) -> None:
        row = {"variant": name, "config": cfg}
        try:
            if out is not None:
                out.zero_()
            y = fn()
            row["rel_err"] = ((y.float() - ref).norm() / ref.norm()).item()
            row["ms"] = float(do_bench(fn, warmup=5, rep=40, return_mode="median"))
            row["tflops"] = flop / row["ms"] / 1e9
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
    return record


@dataclass
class ConvCase:
    """One conv chunk of the decode, bf16, with its F.conv3d reference and the shipped kernel's launch."""
    x: torch.Tensor  # [t + 2, h, w, c], the time-padded input
    weight: torch.Tensor
    packed: causal_conv.PackedConv
    out: torch.Tensor  # [t, h, w, c]
    cfg: causal_conv.Config  # the shipped default
    res: dict  # {"tflop", "rows"}: what record() fills
    record: Callable

    def shipped(self) -> torch.Tensor:
        return causal_conv.causal_conv(self.x, self.packed, out=self.out)


def conv_case(t: int, h: int, w: int, c: int, bias: bool = False, zero_out: bool = True) -> ConvCase:
    """Random silu-shaped input and weights (seed 1) for a c -> c conv of t frames of h x w; record()
    compares with F.conv3d of the same bf16 tensors (zeroing `out` first unless zero_out=False)."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.nn.functional.silu(torch.randn(t + 2, h, w, c, device=dev, generator=g)).bfloat16()
    weight = (torch.randn(c, c, 3, 3, 3, device=dev, generator=g) / (27 * c) ** 0.5).bfloat16()
    b = torch.randn(c, device=dev, generator=g).bfloat16() if bias else None
    packed = causal_conv.pack(weight, b, torch.bfloat16)
    ref = causal_conv.causal_conv_reference(x, packed).float()
    flop = 2 * t * h * w * c * 27 * c
    res: dict = {"tflop": flop / 1e12, "rows": []}
    out = torch.empty(t, h, w, c, device=dev, dtype=torch.bfloat16)
    cfg = causal_conv.default_config(dev, c, c, h, w)
    return ConvCase(x, weight, packed, out, cfg, res, recorder(res, ref, flop, out if zero_out else None))


def one(t: int, h: int, w: int) -> dict:
    case = conv_case(t, h, w, C, zero_out=False)
    x, weight, out, record = case.x, case.weight, case.out, case.record
    record("shipped", str(case.cfg), case.shipped)

    x128 = torch.cat([x, x.new_zeros(t + 2, h, w, 128 - C)], -1).contiguous()
    w128 = torch.cat([weight, weight.new_zeros(C, 128 - C, 3, 3, 3)], 1)
    padded = causal_conv.pack(w128, None, torch.bfloat16)
    for bk, stages in ((64, 3), (64, 4), (128, 2)):
        pcfg = causal_conv.Config(block_m=256, block_k=bk, num_warps=4, num_stages=stages,
                                  rows=causal_conv.tile_rows(h, w, 256), tma=True)
        record("padded 128", str(pcfg), lambda pcfg=pcfg: causal_conv.causal_conv(x128, padded, out=out, config=pcfg))

    for kp, bk, stages, block_m in ((SPAN, 32, 4, 256), (320, 64, 3, 256), (320, 64, 4, 256), (320, 64, 4, 128)):
        flat, shape, strides = overlap_input(x, kp)
        wt = overlap_weights(weight, kp)
        rows = causal_conv.tile_rows(h, w, block_m)

        def run(flat=flat, shape=shape, strides=strides, wt=wt, bk=bk, stages=stages, block_m=block_m, rows=rows):
            xd = TensorDescriptor(flat, shape, strides, [1, rows, block_m // rows, bk])
            wd1 = TensorDescriptor.from_tensor(wt, [bk, 64])
            wd2 = TensorDescriptor.from_tensor(wt, [bk, 32])
            _overlap_kernel[causal_conv.tile_grid(t, h, w, block_m, rows)](
                xd, wd1, wd2, out, h, w, C, KP=kp, N1=64, N2=32, BLOCK_M=block_m, BLOCK_K=bk, ROWS=rows,
                num_warps=4, num_stages=stages)
            return out

        record("overlap", f"kp={kp} block_k={bk} stages={stages} block_m={block_m} rows={rows}", run)
    return case.res


def main() -> None:
    sweep_shapes(__doc__.split("\n")[0], "explore_conv_slices.json", SHAPES, one)


if __name__ == "__main__":
    main()
