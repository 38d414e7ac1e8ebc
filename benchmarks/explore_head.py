"""The VAE's RGB head by taps (ops/conv_head.py): conv_head.stream's launches at a 4-frame chunk
of the 480p / 720p decodes, one process.

Per shape and launch (input tile rows x columns, warps, pipeline stages, Z's columns a step): the
head (norm + SiLU of the residual sum, the 27 taps' products, their sums; the next chunk's partial
sums) timed, and its error against the float32 conv of the same bf16 normalised input, next to
cuDNN's bf16 conv of it. The project + gather form it replaced (Z stored, commit e5c17f9) took
1.25 / 2.84 ms in the run that chose the launch (2026-11-27-explore-head-h100-stream-*.json).
Times: triton.testing.do_bench medians, ms. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_head.py --out $OUT/explore_head.json
"""
from __future__ import annotations

import torch
from triton.testing import do_bench

from turbovid.bench.timing import sweep_shapes
from turbovid.ops import causal_conv, conv_head
from turbovid.ops.rms_silu import rms_silu_reference

SHAPES = {"480p": (4, 480, 832), "720p": (4, 720, 1280)}
C = 96
# (rows, cols, num_warps, num_stages, Z's columns a step) of conv_head.stream's input tiles
# (the first is the shipped one)
STREAM = ((8, 8, 4, 3, 32), (8, 8, 4, 1, 32), (8, 8, 4, 2, 16), (4, 16, 4, 2, 32), (16, 4, 4, 2, 32),
          (8, 8, 2, 2, 32), (8, 16, 4, 3, 32))


def bench(fn) -> float:
    return float(do_bench(fn, warmup=5, rep=40, return_mode="median"))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b).norm() / b.norm()).item()


def one(t: int, h: int, w: int) -> dict:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    x, res = (torch.randn(t, h, w, C, device=dev, generator=g).bfloat16() for _ in range(2))
    gamma = 1 + 0.2 * torch.randn(C, device=dev, generator=g)
    in_bias = torch.randn(C, device=dev, generator=g).bfloat16()
    weight = torch.randn(3, C, 3, 3, 3, device=dev, generator=g) / (27 * C) ** 0.5
    bias = torch.randn(3, device=dev, generator=g)
    head = conv_head.pack(weight, bias, torch.bfloat16)
    x_out = torch.empty_like(x)
    summed = (x.float() + in_bias.float() + res.float()).bfloat16()
    y = rms_silu_reference(summed, gamma)
    buf = torch.cat([y.new_zeros(2, h, w, C), y])
    ref = causal_conv.causal_conv_reference(buf.float(), causal_conv.pack(head.weight, bias, torch.float32))
    cudnn = causal_conv.causal_conv_reference(buf, causal_conv.pack(head.weight, bias, torch.bfloat16))
    out = {"rel_err_cudnn_bf16": rel(cudnn, ref), "variants": []}
    del buf, y, cudnn
    partial = torch.zeros(2, h, w, 3, device=dev)
    for rows, cols, warps, stages, ncol in STREAM:
        def run():
            return conv_head.stream(x, gamma, head, bias=in_bias, residual=res, x_out=x_out, partial=partial,
                                    rows=rows, cols=cols, num_warps=warps, num_stages=stages, ncol=ncol)
        got, nxt = run()
        row = {"stream": f"{rows}x{cols}", "num_warps": warps, "num_stages": stages, "ncol": ncol,
               "total_ms": bench(run), "rel_err": rel(got, ref), "sum_exact": bool(torch.equal(x_out, summed))}
        out["variants"].append(row)
        print(f"  stream {rows}x{cols} warps {warps} stages {stages} ncol {ncol}: {row['total_ms']:.3f} ms, "
              f"rel err {row['rel_err']:.2e}", flush=True)
        del got, nxt
    return out


def main() -> None:
    sweep_shapes(__doc__.splitlines()[0], "explore_head.json", SHAPES, one)


if __name__ == "__main__":
    main()
