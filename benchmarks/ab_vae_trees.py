"""A/B of the fast VAE decode between source trees (e.g. the last commit, exported, and the working
tree) on one GPU, in one call: each tree's decode runs in its own process (its kernels differ),
the trees in turns (A B A B ...); the same random Wan2.1 VAE (seed 0, bf16) and latents in each.
Reports each tree's median decode time and peak memory per size, and the largest difference of
its video from the first tree's (0.0: the same bytes).

    PYTHONPATH=$PWD python3 benchmarks/ab_vae_trees.py --trees .base,. --rounds 2 --out $OUT/ab_vae.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_vae import SIZES  # the latent shapes bench_vae decodes (480p, 720p)

CHILD = """
import sys, time, json, torch
from turbovid.models.vae import build_vae
sizes, repeats, save = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
vae = build_vae("wan2.1", seed=0).to("cuda", torch.bfloat16).eval()
res = {}
for name, (t, h, w) in sizes.items():
    z = torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(7)).cuda()
    vae.decode(z)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = vae.decode(z)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    res[name] = {"times": times, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    torch.save(out[:, :, ::8].cpu(), f"{save}-{name}.pt")  # every 8th frame, for the comparison
    del out
print("RESULT " + json.dumps(res))
"""


def run_tree(tree: Path, sizes: dict, repeats: int, save: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(sizes), str(repeats), save], env=env,
                         capture_output=True, text=True, cwd=tree)
    if out.returncode:
        raise RuntimeError(f"{tree}: {out.stderr[-2000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", default=".base,.", help="comma-separated source trees, the first the baseline")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed decodes per size a round")
    ap.add_argument("--sizes", default="480p,720p")
    ap.add_argument("--out", default="ab_vae.json")
    args = ap.parse_args()
    trees = [Path(t) for t in args.trees.split(",")]
    sizes = {k: SIZES[k] for k in args.sizes.split(",")}
    tmp = tempfile.mkdtemp()
    res = {"card": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
           "trees": {str(t): {k: {"times": []} for k in sizes} for t in trees}}
    for r in range(args.rounds):
        for i, tree in enumerate(trees):
            got = run_tree(tree, sizes, args.repeats, f"{tmp}/{i}")
            for k, v in got.items():
                row = res["trees"][str(tree)][k]
                row["times"] += v["times"]
                row["peak_gib"] = v["peak_gib"]
            print(f"round {r} {tree}: " + json.dumps(got), flush=True)
    for i, tree in enumerate(trees):
        for k in sizes:
            row = res["trees"][str(tree)][k]
            row["median_s"] = statistics.median(row["times"])
            a, b = torch.load(f"{tmp}/0-{k}.pt"), torch.load(f"{tmp}/{i}-{k}.pt")
            row["max_abs_diff_vs_first"] = (a - b).abs().max().item()
    print(json.dumps({t: {k: (v["median_s"], v["peak_gib"], v["max_abs_diff_vs_first"]) for k, v in s.items()}
                      for t, s in res["trees"].items()}, indent=1))
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
