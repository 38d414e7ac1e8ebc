"""Where the GPU idles during one prompt-to-video generation (dev tool, run on the device).

    python3 benchmarks/profile_pipeline.py [--model Wan2.1-1.3B] [--variant sagesla+fp8] [--resolution 480p]

Builds the pipeline as `turbovid bench` does (random weights at the real sizes: umT5-XXL, the DiT
variant through the fast path, the Wan2.1 VAE), runs two warm-up generations, then records the
GPU kernels of one more with the profiler (kernels only: no CPU-side tracing to slow the launches).
Reports the generation's stage timings, the GPU's busy and idle time between its first and last
kernel, idle time per stage (kernel start times mapped onto the stage boundaries), and the largest
gaps with the kernels on either side. JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.bench.cases import variant_dit  # noqa: E402


def build(model: str, variant: str, device: torch.device, dtype: torch.dtype):
    from turbovid.configs import T5_PRESETS, VAE_PRESETS
    from turbovid.fast import make_fast
    from turbovid.models.t5 import build_text_encoder
    from turbovid.models.vae import build_vae
    from turbovid.pipeline import Pipeline

    dit = variant_dit(model, variant, device, dtype, 0.1)
    text_encoder = build_text_encoder(T5_PRESETS["umt5-xxl"], None, device=device, dtype=dtype, seed=0)
    vae = build_vae(VAE_PRESETS["wan2.1"], device=device, dtype=dtype, seed=0)
    return Pipeline(make_fast(dit), text_encoder, vae, device=device, dtype=dtype, sampler="rcm", model_name=model)


def kernels(prof) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of every GPU kernel / memcpy / memset, by start."""
    out = []
    for e in prof.events():
        if getattr(e, "device_type", None) is None or str(e.device_type) != "DeviceType.CUDA":
            continue
        start = e.time_range.start
        out.append((float(start), float(e.time_range.end), e.name))
    return sorted(out)


def gaps(ks: list[tuple[float, float, str]]) -> tuple[float, list[dict]]:
    """Busy time (union of intervals) and every idle gap between kernels."""
    busy, out = 0.0, []
    cur_s, cur_e, last_name = ks[0][0], ks[0][1], ks[0][2]
    for s, e, name in ks[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            out.append({"at_ms": (cur_e - ks[0][0]) / 1e3, "idle_ms": (s - cur_e) / 1e3, "after": last_name[:90],
                        "before": name[:90]})
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
        if e >= cur_e:
            last_name = name
    busy += cur_e - cur_s
    return busy, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Wan2.1-1.3B")
    ap.add_argument("--variant", default="sagesla+fp8")
    ap.add_argument("--resolution", default="480p")
    ap.add_argument("--out", default="profile_pipeline.json")
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from turbovid.pipeline import GenerationRequest

    device, dtype = torch.device("cuda"), torch.bfloat16
    pipe = build(args.model, args.variant, device, dtype)
    req = GenerationRequest(prompt="A red fox trotting through fresh snow at dawn, cinematic lighting",
                            resolution=args.resolution, num_frames=81, num_steps=4, seed=0)
    warm = [pipe.generate(req).timings for _ in range(2)]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        wall0 = time.perf_counter()
        timings = pipe.generate(req).timings
        torch.cuda.synchronize()
        wall = time.perf_counter() - wall0
    ks = kernels(prof)
    busy, idle = gaps(ks)
    span = (ks[-1][1] - ks[0][0]) / 1e3
    # stage boundaries on the GPU clock: cumulative wall times from the first kernel (the text
    # encoder's launches begin within microseconds of the generation's start)
    bounds = {"text_encoding": timings["text_encoding"], "sampling": timings["text_encoding"] + timings["sampling"],
              "vae_decode": timings["total"]}
    per_stage = {k: 0.0 for k in bounds}
    for g in idle:
        for k, end in bounds.items():
            if g["at_ms"] / 1e3 <= end:
                per_stage[k] += g["idle_ms"]
                break
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
           "variant": args.variant, "resolution": args.resolution, "warmup_timings": warm, "timings": timings,
           "wall_s": wall, "kernels": len(ks), "gpu_span_ms": span, "gpu_busy_ms": busy / 1e3,
           "gpu_idle_ms": span - busy / 1e3, "idle_ms_by_stage": per_stage,
           "gaps_over_50us": sum(1 for g in idle if g["idle_ms"] > 0.05),
           "largest_gaps": sorted(idle, key=lambda g: -g["idle_ms"])[:30]}
    print(json.dumps({k: v for k, v in res.items() if k != "largest_gaps"}, indent=1, default=str))
    for g in res["largest_gaps"]:
        print(f"{g['at_ms']:9.2f} ms  idle {g['idle_ms']:7.3f} ms  after {g['after'][:50]:50s} before {g['before'][:50]}")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
