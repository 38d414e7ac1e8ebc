"""Exploration (dev tool, run on the device): what a fresh page-locked block for the video costs the
pipeline, allocated inline at the start of the VAE stage (as before) or ahead on a helper thread
once the first forward is queued (io.host_buffer_ahead, the default), against a block the host allocator has
cached (every later video of the same size in one process). 1.3B sagesla+fp8, random weights, the
pipeline's own stage timings; every finished video is kept in the fresh settings, so each run needs
a new block, as the first video of a CLI run does.

Result (H100, results/2026-11-26-explore-host-buffer-h100-480p-3a44c7a.json): total 1.478 s with the
block allocated at the start of the VAE stage, 1.437 s ahead, 1.433 s with a cached block (VAE stage
0.726 / 0.691 / 0.694 s). Asked for at the start of generate() instead (52f405c) the VAE stage fell
alike but the total did not: pinning stalls the main thread's CUDA calls (text encoding's launches).

    python3 benchmarks/explore_host_buffer.py [--resolution 480p] [--repeats 3] [--out r.json]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from explore_stream_threads import pipeline_from_args  # noqa: E402
from turbovid import pipeline  # noqa: E402


def main() -> None:
    args, pipe, req = pipeline_from_args(__doc__.splitlines()[0])
    ahead = pipeline.host_buffer_ahead
    kept = [pipe.generate(req)]  # warm-up, kept: no block is free in the host allocator's cache
    fresh = {"fresh block, inline": lambda *a: None, "fresh block, ahead (default)": ahead}
    runs = {name: [] for name in (*fresh, "cached block")}
    for _ in range(args.repeats):
        for name, allocate in fresh.items():
            pipeline.host_buffer_ahead = allocate
            kept.append(pipe.generate(req))  # its block stays taken: the next run needs a new one
            runs[name].append(kept[-1].timings)
    pipeline.host_buffer_ahead = ahead
    pipe.generate(req)  # its block goes back to the cache, where the runs below find it
    runs["cached block"] = [pipe.generate(req).timings for _ in range(args.repeats)]
    out = {"device": torch.cuda.get_device_name(), "resolution": args.resolution, "runs": {}}
    for name, timings in runs.items():
        out["runs"][name] = {k: round(statistics.median(t[k] for t in timings), 4)
                             for k in ("text_encoding", "sampling", "vae_decode", "total")}
        out["runs"][name] |= {f"{k}_all": [round(t[k], 4) for t in timings] for k in ("text_encoding", "vae_decode", "total")}
        print(name, out["runs"][name], flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
