"""What the first video costs in a fresh process (dev tool, run on the device): Triton compiles its
kernels on first use (cached on disk, TRITON_CACHE_DIR, default ~/.triton/cache), and the first
call also captures the CUDA graph and tunes cuDNN / cuBLAS.

Runs the 1.3B pipeline with random weights (umT5-XXL, sagesla+fp8, 4 rCM steps, VAE decode at
480p) and prints the wall time of the first and second generate() in this process, as JSON. Run it
twice with the same empty TRITON_CACHE_DIR: the first process pays the compiles, the second shows a
warm disk cache (what every later CLI run sees).

    TRITON_CACHE_DIR=/tmp/tc python3 benchmarks/cold_start.py [--quant fp8|int8] [--one-request]
        [--profile FILE] [--prewarm] [--text-encoder-cpu]

--one-request sets the pipeline up as the CLI does (Pipeline.for_one_request: umT5 freed after encoding,
no CUDA graph); each call's peak GPU memory is printed. --profile writes a cProfile of the first call (cumulative order) to FILE. --prewarm starts
turbovid.prewarm before the weights are built, as Pipeline.from_options does before it loads them.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quant", default="fp8", choices=("fp8", "int8"))
    ap.add_argument("--one-request", action="store_true", help="as the CLI: Pipeline.for_one_request()")
    ap.add_argument("--profile", help="write a cProfile of the first generate() here (text, cumulative)")
    ap.add_argument("--prewarm", action="store_true", help="start turbovid.prewarm before building, as loading does")
    ap.add_argument("--text-encoder-cpu", action="store_true", help="umT5 on the CPU (--text-encoder-cpu)")
    args = ap.parse_args()
    from turbovid.bench.cases import build_dit, default_dtype_device, quantize
    from turbovid.configs import T5_PRESETS, VAE_PRESETS
    from turbovid.fast import make_fast
    from turbovid.models.t5 import build_text_encoder
    from turbovid.models.vae import build_vae
    from turbovid.pipeline import GenerationRequest, Pipeline, PipelineOptions
    from turbovid.prewarm import Prewarm

    dev, dtype = torch.device("cuda"), torch.bfloat16
    t0 = time.perf_counter()
    tasks = Pipeline._prewarm_tasks(PipelineOptions(quant=args.quant, text_encoder_cpu=args.text_encoder_cpu), dev, dtype)
    prewarm = Prewarm(dev, tasks).start() if args.prewarm else None
    dit = build_dit("Wan2.1-1.3B", dev, dtype)
    quantize(dit, args.quant)
    dit.set_attention("sagesla", 0.1)
    with default_dtype_device(dtype, dev):  # random weights drawn on the GPU (on the CPU this took ~70 s)
        # built inside the call: only the pipeline holds them, so a released text encoder is freed
        pipe = Pipeline(make_fast(dit), build_text_encoder(T5_PRESETS["umt5-xxl"], None, device=dev, dtype=dtype, seed=0),
                        build_vae(VAE_PRESETS["wan2.1"], device=dev, dtype=dtype, seed=0),
                        device=dev, dtype=dtype, sampler="rcm", model_name="Wan2.1-1.3B",
                        text_encoder_cpu=args.text_encoder_cpu)
    del dit
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    if prewarm:
        prewarm.join()
    waited_s = time.perf_counter() - t0 - build_s
    if args.one_request:
        pipe.for_one_request()
    req = GenerationRequest(prompt="A red fox trotting through fresh snow at dawn", resolution="480p", num_steps=4, seed=0)
    calls = []
    for i in range(1 if args.one_request else 2):  # a released encoder allows one video
        torch.cuda.reset_peak_memory_stats()
        profiler = cProfile.Profile() if args.profile and i == 0 else None
        modules = set(sys.modules)
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        result = pipe.generate(req)
        wall = time.perf_counter() - t0
        if profiler:
            profiler.disable()
            with open(args.profile, "w") as f:
                pstats.Stats(profiler, stream=f).sort_stats("cumulative").print_stats(150)
        calls.append({"wall_s": round(wall, 3),
                      **{f"{k}_s": round(result.timings[k], 3) for k in ("text_encoding", "sampling", "vae_decode", "total")},
                      "steps_s": [round(s, 3) for s in result.timings["steps"]],
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                      "modules_imported": sorted(set(sys.modules) - modules)})
    print(json.dumps({"quant": args.quant, "one_request": args.one_request, "text_encoder_cpu": args.text_encoder_cpu, "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR", "~/.triton/cache"),
                      "cache_files_after": sum(len(f) for _, _, f in os.walk(os.environ.get("TRITON_CACHE_DIR", os.path.expanduser("~/.triton/cache")))),
                      "prewarm": args.prewarm,
                      "build_random_weights_s": round(build_s, 2), "prewarm_wait_s": round(waited_s, 3), "generate": calls}))


if __name__ == "__main__":
    main()
