"""The VAE's normed causal 3x3x3 convs in int8 (ops/causal_conv_int8.py) against the shipped bf16
kernel (ops/causal_conv.py), one process, at chunks of the 480p / 720p decode.

Per shape: the bf16 kernel at its default config; the int8 kernel with per-pixel scales (27 float32
promotions a tile: the numerics benchmarks/explore_vae_fp8.py found within issue 8's bound) and with
one scale for the whole input (no promotion: the rate int8 could reach here, not a usable path),
over a small config grid; and each path's error against the float32 conv of the unquantized input.
The input's quantization (a pass the norm kernel would fuse) is not timed.
Times: triton.testing.do_bench medians, ms. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv_int8.py --out $OUT/explore_conv_int8.json
"""
from __future__ import annotations

import argparse
import json

import torch
from triton.testing import do_bench

from turbovid.ops import causal_conv, causal_conv_int8 as ci

# (frames, H, W, C, Cout) of a decode chunk (explore_causal_conv.py's shapes)
SHAPES = {"480p 96": (4, 480, 832, 96, 96), "720p 96": (4, 720, 1280, 96, 96),
          "240x416 192": (8, 240, 416, 192, 192), "120x208 384": (4, 120, 208, 384, 384)}
# (block_m, num_warps, num_stages): 96 outputs (one group of 64 + 32), wider (groups of 128 + 64)
GRID = {96: ((128, 4, 3), (128, 4, 4), (128, 8, 3), (128, 8, 5), (256, 8, 3), (256, 8, 5)),
        192: ((128, 8, 3), (128, 8, 4), (64, 4, 3), (64, 4, 4))}


def bench(fn) -> float:
    return float(do_bench(fn, warmup=5, rep=40, return_mode="median"))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b).norm() / b.norm()).item()


def one(t: int, h: int, w: int, c: int, cout: int) -> dict:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.nn.functional.silu(torch.randn(t + 2, h, w, c, device=dev, generator=g))
    weight = torch.randn(cout, c, 3, 3, 3, device=dev, generator=g) / (27 * c) ** 0.5
    bias = torch.randn(cout, device=dev, generator=g)
    ref = causal_conv.causal_conv_reference(x, causal_conv.pack(weight, bias, torch.float32))
    flop = 2 * t * h * w * cout * 27 * c
    bf = causal_conv.pack(weight, bias, torch.bfloat16)
    xb = x.bfloat16()
    out_b = causal_conv.causal_conv(xb, bf)
    bf_ms = bench(lambda: causal_conv.causal_conv(xb, bf, out=out_b))
    res = {"tflop": flop / 1e12, "bf16": {"ms": bf_ms, "tflops": flop / bf_ms / 1e9, "rel_err": rel(out_b, ref),
                                          "config": str(causal_conv.default_config(dev, c, cout, h, w))},
           "int8": []}
    del out_b
    p8 = ci.pack_int8(weight, bias)
    q, s = ci.quantize_pixels(x)
    s_all = x.abs().amax().reshape(1) / 127
    q_all = (x / s_all).round().clamp(-127, 127).to(torch.int8)
    out = torch.empty(t, h, w, cout, device=dev, dtype=torch.bfloat16)
    for block_m, warps, stages in GRID[min(cout, 192)]:
        for pixel in (True, False):
            cfg = ci.Config(block_m=block_m, block_k=32 if c % 64 else 64, num_warps=warps, num_stages=stages,
                            rows=causal_conv.tile_rows(h, w, block_m), tma=True)
            row = {"config": str(cfg), "pixel": pixel}
            try:
                args = (q, s, p8, out, cfg, True) if pixel else (q_all, s, p8, out, cfg, False, s_all)
                ci.causal_conv_int8(*args)
                row["rel_err"] = rel(out, ref)
                row["ms"] = bench(lambda: ci.causal_conv_int8(*args))
                row["tflops"] = flop / row["ms"] / 1e9
                row["x_bf16"] = bf_ms / row["ms"]
            except Exception as e:  # a config that does not compile or fit: recorded, not fatal
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            res["int8"].append(row)
            print(json.dumps(row), flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", default=",".join(SHAPES))
    args = p.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    import triton

    res["triton"] = triton.__version__
    for name in args.shapes.split(","):
        print(name, flush=True)
        res["shapes"][name] = one(*SHAPES[name])
        print(json.dumps({k: v for k, v in res["shapes"][name].items() if k != "int8"}), flush=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
