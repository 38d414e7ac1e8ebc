"""Where one DiT forward's GPU time goes, by kernel and by category (dev tool, run on the device).

    python3 benchmarks/profile_forward.py --model Wan2.1-1.3B --variant sagesla+fp8 [--compile]

Builds the model with random weights at its real size, runs the fast path eagerly (fused kernels,
no CUDA graph, so the profiler sees each launch), profiles one forward after a warm-up and writes
the kernel table plus per-category totals as JSON (--out). The graphed forward is timed in the same
process for reference; --compile also times torch.compile of the forward (with the graph).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.bench.cases import PROMPT_ROWS, latent_shape, variant_dit  # noqa: E402
from turbovid.bench.timing import time_fn  # noqa: E402

# first matching pattern wins; kernel names as the profiler reports them
CATEGORIES = [
    ("attention: sparse main kernel", r"_sla_fwd_kernel|_sagesla_fwd_kernel"),
    ("attention: block map + K/V quant", r"_key_pass_kernel|_pool_kernel|_select_kernel|_quant_kv_kernel"),
    ("activation quantization", r"_quant_act_kernel"),
    ("fused norm / residual / rope", r"_add_norm_modulate_kernel|_rmsnorm_rope_kernel"),
    ("GEMM", r"_scaled_mm_kernel|gemm|nvjet|cutlass|xmma|cublas"),
    ("attention: dense (cross-attention)", r"fmha|flash|cudnn|sdpa|attention"),
]


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return "other"


def kernel_table(runner, *inputs) -> list[dict]:
    """Per-kernel GPU time of one runner(*inputs) call after a warm-up call, largest first."""
    from torch.profiler import ProfilerActivity, profile

    runner(*inputs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        runner(*inputs)
        torch.cuda.synchronize()
    rows = []
    for evt in p.key_averages():
        us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
        if us > 0:
            rows.append({"ms": us / 1e3, "count": evt.count, "kernel": evt.key[:160], "category": category(evt.key)})
    return sorted(rows, key=lambda r: -r["ms"])


def build_forward(model: str, variant: str, resolution: str, frames: int):
    """(dit, latents, t, context): a real-size model with random weights, quantized and with the attention
    `variant` names, and random inputs for one forward, on the GPU."""
    dev = torch.device("cuda")
    dit = variant_dit(model, variant, dev, torch.bfloat16, 0.1)
    g = torch.Generator(device=dev).manual_seed(0)
    lat = torch.randn(latent_shape(resolution, frames), generator=g, device=dev).bfloat16()
    ctx = torch.randn(1, PROMPT_ROWS, dit.cfg.text_dim, generator=g, device=dev).bfloat16()  # a prompt, unpadded
    return dit, lat, torch.tensor([500.0], device=dev), ctx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Wan2.1-1.3B")
    ap.add_argument("--variant", default="sagesla+fp8")
    ap.add_argument("--resolution", default="480p")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (+ CUDA graph)")
    ap.add_argument("--ablate", default="", help="comma-separated FastOptions flags: time the graphed forward "
                    "with each one off, in the same process (e.g. act_quant,fused_qkv)")
    ap.add_argument("--one-part-rows", action="store_true", help="also time the graphed forward with the norm "
                    "kernel holding each row as one power-of-two part (layernorm_kernel.SPLIT_ROWS = False)")
    ap.add_argument("--baseline-blockmap", default=None, help="module with another block_stats (e.g. a copy "
                    "of blockmap.py from an earlier commit): also time the graphed forward with it")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args()

    from turbovid.fast import FastOptions, make_fast, make_plain

    dev = torch.device("cuda")
    dit, lat, t, ctx = build_forward(args.model, args.variant, args.resolution, args.frames)
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "args": vars(args) | {"out": str(args.out)}}

    with torch.inference_mode():
        runner = make_fast(dit, FastOptions(graph=False))
        rows = kernel_table(runner, lat, t, ctx)
        make_plain(runner)
        totals: dict[str, float] = {}
        for r in rows:
            totals[r["category"]] = totals.get(r["category"], 0.0) + r["ms"]
        result["kernel_ms_total"] = sum(r["ms"] for r in rows)
        result["categories_ms"] = dict(sorted(totals.items(), key=lambda kv: -kv[1]))
        result["kernels"] = rows[:60]

        def graphed_ms(options: FastOptions | None = None) -> float:
            """One graphed forward's time, on a runner built (graph captured) for this call."""
            runner = make_fast(dit, options or FastOptions())
            try:
                return time_fn(lambda: runner(lat, t, ctx), dev, 2, 5).ms
            finally:
                make_plain(runner)

        result["graphed_forward_ms"] = graphed_ms()
        if args.one_part_rows:
            from turbovid.ops.fused import layernorm_kernel

            layernorm_kernel.SPLIT_ROWS = False
            result["graphed_forward_ms_one_part_rows"] = graphed_ms()
            layernorm_kernel.SPLIT_ROWS = True
            result["graphed_forward_ms_again"] = graphed_ms()
        if args.baseline_blockmap:
            import importlib

            from turbovid.ops.attention import blockmap

            shipped = blockmap.block_stats
            blockmap.block_stats = importlib.import_module(args.baseline_blockmap).block_stats
            result["graphed_forward_ms_baseline_blockmap"] = graphed_ms()
            blockmap.block_stats = shipped
            result["graphed_forward_ms_again"] = graphed_ms()
        for flag in filter(None, args.ablate.split(",")):
            result[f"graphed_forward_ms_without_{flag}"] = graphed_ms(FastOptions(**{flag: False}))
        if args.compile:
            compiled = make_fast(dit, FastOptions(compile=True))
            t0 = time.monotonic()
            compiled(lat, t, ctx)
            torch.cuda.synchronize()
            result["compile_first_call_s"] = time.monotonic() - t0
            result["compiled_graphed_forward_ms"] = time_fn(lambda: compiled(lat, t, ctx), dev, 2, 5).ms
            make_plain(compiled)

    print(f"{args.model} {args.resolution} {args.variant}: kernel time {result['kernel_ms_total']:.1f} ms, "
          f"graphed forward {result['graphed_forward_ms']:.1f} ms"
          + (f", compiled {result['compiled_graphed_forward_ms']:.1f} ms (first call {result['compile_first_call_s']:.0f} s)"
             if "compiled_graphed_forward_ms" in result else ""))
    for key, ms in result.items():
        if key.startswith("graphed_forward_ms_"):
            print(f"  graphed forward, {key[len('graphed_forward_ms_'):].replace('_', ' ')}: {ms:.1f} ms")
    for label, ms in result["categories_ms"].items():
        print(f"  {ms:8.2f} ms  {label}")
    for r in rows[:25]:
        print(f"    {r['ms']:8.2f} ms {r['count']:5d}x  {r['kernel'][:110]}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
