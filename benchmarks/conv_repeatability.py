"""Bitwise repeatability of the Triton causal conv (ops/causal_conv.py) at the decode's wide shapes,
per config: the same launch repeated, each output compared with the first, and its time.

Found 2026-11-27 (H100, Triton 3.6): 192 -> 384 channels at 4 x 120 x 208 with the default config
(128-pixel programs, 8 warps, K slices of 64, 3 stages, descriptors) and the plain epilogue gave a
different output on repeats (tests/test_vae_gpu.py's stream check failed once in two runs); 2
stages or pointer loads did not, nor did the fused norm epilogue (the decode's launches of that
conv). causal_conv_stream now runs plain 8-warp launches with 2 stages
(benchmarks/results/2026-11-27-conv-repeatability-h100-*.json).

    PYTHONPATH=$PWD python3 benchmarks/conv_repeatability.py --out $OUT/conv_repeatability.json
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace

import torch
from triton.testing import do_bench

from turbovid.ops import causal_conv

SHAPES = ((4, 120, 208, 192, 384), (8, 120, 208, 192, 384), (4, 120, 208, 384, 384), (8, 240, 416, 192, 192))
REPEATS = 30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="conv_repeatability.json")
    args = ap.parse_args()
    os.environ["TURBOVID_GLUON"] = "0"  # the Triton kernel at every width
    res = {"card": torch.cuda.get_device_name(), "repeats": REPEATS, "cases": {}}
    for frames, h, w, c, cout in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(frames, h, w, c, device="cuda", generator=g).bfloat16()
        hist = torch.randn(2, h, w, c, device="cuda", generator=g).bfloat16()
        weight = torch.randn(cout, c, 3, 3, 3, device="cuda", generator=g) / (27 * c) ** 0.5
        bias = torch.randn(cout, device="cuda", generator=g)
        gamma = 1 + 0.2 * torch.randn(cout, device="cuda", generator=g)
        packed = causal_conv.pack(weight, bias, torch.bfloat16)
        base = causal_conv.default_config(x.device, c, cout, h, w)
        # "default": no config passed (causal_conv_stream's choice, 2 stages for a plain 8-warp launch
        # since this script found the race); "3 stages": the default config as it was
        for name, cfg in (("default", None), ("3 stages", base), ("2 stages", replace(base, num_stages=2)),
                          ("pointer loads", replace(base, tma=False))):
            for epilogue, kw in (("plain", {}), ("normed", dict(gamma=gamma))):
                def run():
                    return causal_conv.causal_conv_stream(x, hist, packed, config=cfg, **kw)
                first = run().clone()
                diffs = [(run().float() - first.float()).abs().max().item() for _ in range(REPEATS)]
                row = dict(config=str(cfg), mismatches=sum(d > 0 for d in diffs), worst=max(diffs),
                           ms=float(do_bench(run, warmup=5, rep=40, return_mode="median")))
                key = f"{c}->{cout} {frames}x{h}x{w} {name} {epilogue}"
                res["cases"][key] = row
                print(key, row, flush=True)
                with open(args.out, "w") as f:
                    json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
