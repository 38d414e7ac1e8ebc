"""Winograd F(2, 3) along the rows (ops/winograd_conv.py) against the shipped direct conv
(ops/causal_conv.py) at the VAE decode's conv chunks: same input, same process.

The Winograd conv spends 2/3 of the direct conv's products; it forms the transformed input in
registers (four loads a tap instead of three, the sums, a register-operand wgmma), or reads it
already transformed ("transformed input": [.., W / 2, 4C], twice the input's bytes, which the norm
kernel before each conv would have to write; timed here against clones of both). Each config
sweeps programs of 64 or 128 tiles (128 / 256 pixels), output channel groups, K steps, stages and
warps. Errors are against float32 F.conv3d of the same bf16 input with the float32 weights, so they
include each path's rounding of the weights (bf16 g, or bf16 u_k). do_bench medians, ms.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv_winograd.py --out $OUT/explore_conv_winograd.json
"""
from __future__ import annotations

import argparse
import json

import torch
import triton
from triton.testing import do_bench

from turbovid.ops import causal_conv, winograd_conv

# (frames, H, W, channels): the 4-frame 96-channel chunks at 480p / 720p, then the 192 / 384 stages
SHAPES = {"480p 96": (4, 480, 832, 96), "720p 96": (4, 720, 1280, 96),
          "240x416 192": (8, 240, 416, 192), "120x208 384": (4, 120, 208, 384)}
# (output channels a program, tiles a program, K step, stages, warps)
CONFIGS = {
    96: [(96, 64, 32, 3, 8), (96, 64, 32, 4, 8), (96, 64, 32, 3, 4), (96, 128, 32, 2, 8), (96, 128, 32, 3, 8),
         (96, 64, 64, 2, 8)],
    192: [(96, 64, 32, 3, 8), (96, 64, 32, 4, 8), (96, 64, 64, 2, 8), (192, 64, 32, 3, 8), (192, 64, 32, 2, 8),
          (64, 64, 32, 3, 4), (64, 64, 64, 3, 4), (64, 64, 64, 3, 8)],
    384: [(128, 64, 32, 3, 8), (128, 64, 32, 4, 8), (128, 64, 64, 2, 8), (96, 64, 32, 3, 8), (96, 64, 64, 2, 8),
          (192, 64, 32, 2, 8), (64, 64, 64, 3, 4), (64, 64, 64, 3, 8)],
}
# the same, reading the transformed input (transform_input, as a norm kernel could write it)
PRE_CONFIGS = {
    96: [(96, 64, 32, 3, 4), (96, 64, 32, 4, 4), (96, 64, 32, 3, 8), (96, 128, 32, 2, 8), (96, 128, 32, 3, 8),
         (96, 128, 32, 4, 8)],
    192: [(192, 64, 32, 3, 8), (192, 64, 64, 2, 8), (96, 64, 32, 3, 4), (96, 64, 64, 3, 4), (96, 128, 32, 3, 8),
          (96, 128, 64, 2, 8), (64, 64, 64, 3, 4), (64, 128, 64, 2, 8)],
    384: [(128, 64, 64, 2, 8), (128, 64, 32, 3, 8), (128, 64, 64, 3, 8), (96, 64, 64, 3, 4), (96, 128, 64, 2, 8),
          (192, 64, 32, 2, 8), (64, 128, 64, 2, 8), (64, 64, 64, 3, 4)],
}


def rows_for(h: int, tiles: int, block_m: int) -> int:
    """The tile shape with the least padding: rows of block_m / rows tiles (at least 8 wide)."""
    cands = [r for r in (1, 2, 4, 8) if block_m // r >= 8]
    return min(cands, key=lambda r: (-(-h // r) * r * -(-tiles // (block_m // r)) * (block_m // r), r))


def one(t: int, h: int, w: int, c: int) -> dict:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.nn.functional.silu(torch.randn(t + 2, h, w, c, device=dev, generator=g)).bfloat16()
    weight = torch.randn(c, c, 3, 3, 3, device=dev, generator=g) / (27 * c) ** 0.5
    ref = causal_conv.causal_conv_reference(x.float(), causal_conv.pack(weight, None, torch.float32))
    flop = 2 * t * h * w * c * 27 * c
    res: dict = {"tflop": flop / 1e12, "rows": []}

    def record(name: str, cfg: str, fn) -> None:
        row = {"variant": name, "config": cfg}
        try:
            out = fn()
            row["rel_err"] = ((out.float() - ref).norm() / ref.norm()).item()
            row["ms"] = float(do_bench(fn, warmup=5, rep=40, return_mode="median"))
            row["tflops_direct_equiv"] = flop / row["ms"] / 1e9
        except Exception as e:  # a config that does not compile or fit: recorded, not fatal
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        res["rows"].append(row)
        print(json.dumps(row), flush=True)

    out = torch.empty(t, h, w, c, device=dev, dtype=torch.bfloat16)
    shipped = causal_conv.pack(weight, None, torch.bfloat16)
    cfg = causal_conv.default_config(dev, c, c, h, w)
    record("shipped", str(cfg), lambda: causal_conv.causal_conv(x, shipped, out=out))
    for group, block_m, block_k, stages, warps in CONFIGS[c]:
        packed = winograd_conv.pack(weight, None, torch.bfloat16, group)
        wcfg = winograd_conv.Config(block_m=block_m, block_k=block_k, num_warps=warps, num_stages=stages, tma=True,
                                    rows=rows_for(h, w // 2, block_m))
        record("winograd", f"group={group} {wcfg}",
               lambda packed=packed, wcfg=wcfg: winograd_conv.winograd_conv(x, packed, out=out, config=wcfg))
    pre = winograd_conv.transform_input(x)
    for group, block_m, block_k, stages, warps in PRE_CONFIGS[c]:
        packed = winograd_conv.pack(weight, None, torch.bfloat16, group)
        wcfg = winograd_conv.Config(block_m=block_m, block_k=block_k, num_warps=warps, num_stages=stages, tma=True,
                                    rows=rows_for(h, w // 2, block_m))
        record("winograd, transformed input", f"group={group} {wcfg}",
               lambda packed=packed, wcfg=wcfg: winograd_conv.winograd_conv(x, packed, out=out, config=wcfg, pre=pre))
    record("shipped again", str(cfg), lambda: causal_conv.causal_conv(x, shipped, out=out))
    # what writing the transformed input costs a norm kernel: it doubles the bytes written (pre is 2x x)
    res["copy_input_ms"] = float(do_bench(lambda: x.clone(), warmup=5, rep=40, return_mode="median"))
    res["copy_pre_ms"] = float(do_bench(lambda: pre.clone(), warmup=5, rep=40, return_mode="median"))
    print(json.dumps({"copy_input_ms": res["copy_input_ms"], "copy_pre_ms": res["copy_pre_ms"]}), flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "shapes": {}}
    for name, shape in SHAPES.items():
        print(name, flush=True)
        res["shapes"][name] = one(*shape)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
