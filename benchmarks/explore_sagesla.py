"""Exploration (dev tool, run on the device): the sagesla op of this tree against another version of
its kernel module (--baseline), in one process: B = 1, head_dim 128, topk 0.1, random inputs and
proj_l, the fp8 output the DiT's o-projection takes, at the 1.3B 480p / 720p and 14B 480p shapes.
Checks that both write the same bytes, then alternates them (do_bench medians).

Result (H100, results/2026-11-26-explore-sagesla-h100-epilogue-reload.json): the epilogue reading the
queries again for the linear branch (instead of holding them through the key loop) was slower, 1.78
vs 1.74 ms at 1.3B 480p and 5.91 vs 5.67 ms at 14B 480p, and its linear-branch sums ran in another
order (not the same bytes); reverted.

    git show HEAD~1:turbovid/ops/attention/sagesla_kernel.py > turbovid/ops/attention/_sagesla_kernel_before.py
    python3 benchmarks/explore_sagesla.py --baseline turbovid.ops.attention._sagesla_kernel_before [--out r.json]
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from attention_helpers import proj_params, random_qkv  # noqa: E402
from turbovid.ops.attention import sagesla, sagesla_kernel  # noqa: E402

SHAPES = {"1.3B 480p": (32760, 12), "1.3B 720p": (75600, 12), "14B 480p": (32760, 40)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="module path of the sagesla kernel module to compare against")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    base = importlib.import_module(args.baseline)
    dev = torch.device("cuda")
    w, b = proj_params(128, device=dev)
    w, b = w.to(torch.bfloat16), b.to(torch.bfloat16)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "baseline": args.baseline}
    for name, (L, H) in SHAPES.items():
        qkv = random_qkv(1, L, H, 128, dtype=torch.bfloat16, device=dev)

        def run(mod, qkv=qkv):
            return mod.sagesla_forward(*qkv, 0.1, w, b, sagesla.BLKQ, sagesla.BLKK, out_fp8=True)

        (oq, os_), (bq, bs) = run(sagesla_kernel), run(base)
        row = {"same_bytes": bool(torch.equal(oq.view(torch.uint8), bq.view(torch.uint8)) and torch.equal(os_, bs))}
        times = {"now": [], "baseline": []}
        for _ in range(args.repeats):
            times["now"].append(do_bench(lambda: run(sagesla_kernel), warmup=25, rep=200))
            times["baseline"].append(do_bench(lambda: run(base), warmup=25, rep=200))
        row |= {f"{k}_ms": round(statistics.median(t), 4) for k, t in times.items()}
        row |= {f"{k}_all": [round(x, 4) for x in t] for k, t in times.items()}
        results[name] = row
        print(name, row, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
