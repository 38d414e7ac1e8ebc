"""Exploration (dev tool, run on the device): the shipped sagesla launch (Triton, Hopper map) with
more programs per SM. Nsight Compute (results/2026-11-27-ncu-stalls-attention-int8-h100-b3c1b64.txt)
found it latency-bound at 2 programs of 4 warps per SM (255 registers, 98 KiB of shared memory at
2-3 ring stages): tensor pipe 26% busy, L2 67%. One stage takes 48 KiB (4 programs by shared
memory); a 168-register cap allows 3 (offline sm_90 compile: 1.2 KiB of spills). Whole op with the
fp8 output the DiT takes, interleaved medians; every config's bytes against the shipped one's.

    python3 benchmarks/explore_sagesla_occupancy.py [--out r.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from attention_helpers import proj_params, random_qkv  # noqa: E402

from turbovid.bench.timing import interleaved_ms  # noqa: E402
from turbovid.ops.attention import sagesla_kernel  # noqa: E402


def same(a, b) -> bool:
    view = (lambda x: x.view(torch.uint8) if x.dtype == torch.float8_e4m3fn else x)
    return all(torch.equal(view(x), view(y)) for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "explore-sagesla-occupancy.json"))
    args = ap.parse_args()
    configs = {"shipped (3 stages, no cap)": sagesla_kernel.default_config(torch.device("cuda"))}
    for stages, cap in ((2, None), (1, None), (1, 168), (2, 168)):
        configs[f"{stages} stages, cap {cap}"] = sagesla_kernel.Config(num_warps=4, num_stages=stages, tma=True,
                                                                       maxnreg=cap)
    rows = []
    w, b = proj_params(128, "cuda")
    for shape, L, H in (("1.3B 480p", 32760, 12), ("1.3B 720p", 75600, 12)):
        q, k, v = random_qkv(1, L, H, 128, torch.bfloat16, device="cuda", seed=13)
        ref = sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b, out_fp8=True)
        fns = {}
        for name, cfg in configs.items():
            fn = (lambda cfg=cfg: sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b, config=cfg, out_fp8=True))
            try:
                rows.append({"shape": shape, "config": name, "same_bytes": same(fn(), ref)})
                fns[name] = fn
            except Exception as e:  # a config that does not compile or fit
                rows.append({"shape": shape, "config": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            print(json.dumps(rows[-1]), flush=True)
        bench = lambda fn: do_bench(fn, warmup=30, rep=150, return_mode="median")  # noqa: E731
        for name, ts in interleaved_ms(fns, bench, 3).items():
            rows.append({"shape": shape, "config": name, "ms": statistics.median(ts), "all_ms": ts})
            print(json.dumps(rows[-1]), flush=True)
        del q, k, v
    with open(args.out, "w") as f:
        json.dump({"card": torch.cuda.get_device_name(), "command": "python3 benchmarks/explore_sagesla_occupancy.py",
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
