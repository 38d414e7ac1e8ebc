"""Exploration (dev tool, run on the device): prompt to .mp4 file with the video encoded during the
VAE decode (Pipeline.generate(on_frames=...) into io.VideoWriter, as the CLI does), for several
encoder thread counts, against the pipeline alone.

Run 13 of the end-to-end benchmark measured 1.58 s to the file at 1.3B 480p, but the VAE stage took
0.76 s while the encoder ran beside it against 0.70 s without it (16-core host). The decode's Python
thread launches its kernels only just ahead of the GPU (~0.57 s of CPU for a 0.7 s decode), so the
encoder's threads (x264 runs about one per core) may be crowding it out. This times, in one process:
the pipeline without a writer, then with writers of 0 (the encoder's choice), cores - 2, cores - 4
cores / 2 and cores / 4 threads; each the median of --repeats runs.

Result (H100 host, 16 cores, results/2026-11-26-explore-stream-threads-h100.json): the hypothesis
did not hold. The VAE stage took 0.711 s with the encoder at its own thread count and 0.709-0.712 s
at 14, 12, 8 or 4 threads, against 0.708-0.711 s without a writer; prompt to file 1.56-1.59 s (own
choice), 1.55-1.57 s (8-14 threads), 1.74 s (4), against 1.45-1.47 s for the pipeline alone. So
the encoder keeps its own thread count; what the file costs beyond the pipeline is the encode of
the last frames after the decode (~0.1 s).

    python3 benchmarks/explore_stream_threads.py [--resolution 480p] [--repeats 3] [--out r.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.bench.cases import build_dit, default_dtype_device, quantize  # noqa: E402
from turbovid.configs import T5_PRESETS, VAE_PRESETS  # noqa: E402
from turbovid.fast import make_fast  # noqa: E402
from turbovid.io import VideoWriter  # noqa: E402
from turbovid.models.t5 import build_text_encoder  # noqa: E402
from turbovid.models.vae import build_vae  # noqa: E402
from turbovid.pipeline import GenerationRequest, Pipeline  # noqa: E402


def fp8_pipeline(resolution: str) -> tuple[Pipeline, GenerationRequest]:
    """The benchmark's 1.3B pipeline (random weights, sagesla+fp8, fast path) and an 81-frame request."""
    dev, dtype = torch.device("cuda"), torch.bfloat16
    dit = build_dit("Wan2.1-1.3B", dev, dtype)
    quantize(dit, "fp8")
    dit.set_attention("sagesla", 0.1)
    with default_dtype_device(dtype, dev):  # random weights drawn on the GPU, as the benchmark does
        text_encoder = build_text_encoder(T5_PRESETS["umt5-xxl"], None, device=dev, dtype=dtype, seed=0)
        vae = build_vae(VAE_PRESETS["wan2.1"], device=dev, dtype=dtype, seed=0)
    pipe = Pipeline(make_fast(dit), text_encoder, vae, device=dev, dtype=dtype, sampler="rcm", model_name="Wan2.1-1.3B")
    req = pipe.resolve(GenerationRequest(prompt="A red fox trotting through fresh snow at dawn", resolution=resolution,
                                         num_frames=81, num_steps=4, seed=0))
    return pipe, req


def pipeline_from_args(description: str) -> tuple[argparse.Namespace, Pipeline, GenerationRequest]:
    """--resolution, --repeats, --out, and fp8_pipeline at that resolution."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--resolution", default="480p")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    return args, *fp8_pipeline(args.resolution)


def main() -> None:
    args, pipe, req = pipeline_from_args(__doc__.splitlines()[0])
    width, height = pipe.frame_size(req)
    pipe.generate(req)  # warm-up
    cores = os.cpu_count() or 1
    results = {"device": torch.cuda.get_device_name(), "cpu_count": cores, "resolution": args.resolution, "runs": {}}

    def runs(threads: int | None) -> dict:
        walls, vae = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                if threads is None:
                    res = pipe.generate(req)
                else:
                    writer = VideoWriter(Path(tmp) / "v.mp4", width, height, threads=threads)
                    res = pipe.generate(req, on_frames=lambda i, frames, wait: writer.write(frames, wait))
                    writer.close()
                walls.append(time.perf_counter() - t0)
                vae.append(res.timings["vae_decode"])
        return {"wall_s": round(statistics.median(walls), 4), "vae_stage_s": round(statistics.median(vae), 4),
                "walls": [round(w, 4) for w in walls]}

    settings = [("pipeline alone", None), ("encoder's choice (0)", 0), (f"{cores - 2}", cores - 2),
                (f"{cores - 4}", cores - 4), (f"{cores // 2}", cores // 2), (f"{cores // 4}", cores // 4),
                ("pipeline alone again", None), ("encoder's choice (0) again", 0)]
    for label, threads in settings:
        if threads is not None and threads < 0:  # 0 is the encoder's own choice
            continue
        results["runs"][label] = runs(threads)
        print(label, results["runs"][label], flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
