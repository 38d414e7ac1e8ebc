"""Exploration (dev tool, run on the device): the fast VAE decode with each residual block's sum
formed by the next norm kernel (vae_fast.FUSE_RESIDUAL, the default) against the separate
bias + residual add pass, in one process, at 480p and 720p (the real Wan2.1 VAE config, random
weights and latents), decoding as the pipeline does (frames handed over, no float32 video).
Checks that both write the same bytes, then alternates them, --repeats times each, and records
each one's peak GPU memory (weights included).

Result (H100, results/2026-11-26-explore-vae-residual-h100.json): the same video bytes; 480p
0.682 s fused against 0.688 s with the separate add (every fused run below every separate one),
720p 1.599 against 1.613 s.

    python3 benchmarks/explore_vae_residual.py [--repeats 5] [--out r.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.configs import VAE_PRESETS  # noqa: E402
from turbovid.models import vae_fast  # noqa: E402
from turbovid.models.vae import build_vae  # noqa: E402

LATENTS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    vae = build_vae(VAE_PRESETS["wan2.1"], device=dev, dtype=torch.bfloat16, seed=0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for res, (t, h, w) in LATENTS.items():
        zn = torch.randn(1, 16, t, h, w, device=dev, generator=torch.Generator(device=dev).manual_seed(0))

        peaks = {}

        def decode(fuse: bool) -> float:
            vae_fast.FUSE_RESIDUAL = fuse
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            vae.decode(zn, return_video=False, on_frames=lambda *chunk: None)
            end.record()
            torch.cuda.synchronize()
            peaks[fuse] = max(peaks.get(fuse, 0), torch.cuda.max_memory_allocated())
            return start.elapsed_time(end) / 1e3

        same = {}
        for fuse in (True, False):
            vae_fast.FUSE_RESIDUAL = fuse
            same[fuse] = vae.decode(zn)
        row = {"same_video": bool(torch.equal(same[True], same[False]))}
        del same
        decode(True), decode(False)  # warm-up
        times = {True: [], False: []}
        for _ in range(args.repeats):
            for fuse in (True, False):
                times[fuse].append(decode(fuse))
        row |= {"fused_s": round(statistics.median(times[True]), 4), "separate_add_s": round(statistics.median(times[False]), 4),
                "fused_all": [round(x, 4) for x in times[True]], "separate_all": [round(x, 4) for x in times[False]],
                "fused_peak_gib": round(peaks[True] / 2**30, 3), "separate_add_peak_gib": round(peaks[False] / 2**30, 3)}
        results[res] = row
        print(res, row, flush=True)
    vae_fast.FUSE_RESIDUAL = True
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
