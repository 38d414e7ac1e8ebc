"""Is the fast VAE decode held back by the host? (480p: ~0.54 s of kernels in a 0.565 s decode)

- issue vs total: how long fast_decode takes to return (the host has queued every kernel) against
  the time until the GPU is done; with the host well ahead the first is far below the second;
- synchronising calls: one decode under torch.cuda.set_sync_debug_mode("warn"), warnings counted;
- the GPU's idle time between the decode's first and last kernel, and its largest gaps
  (profile_pipeline.py's reading of a kernels-only profile);
- the host's cost of one launch of each kernel the decode runs most (tiny shapes, so the GPU is
  never the limit): the conv plain and with its fused epilogue, the streaming norm.
JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_vae_launch.py --out $OUT/explore_vae_launch.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

from turbovid.models.vae import build_vae
from turbovid.ops import causal_conv
from turbovid.ops.rms_silu import rms_silu_stream


def host_us(fn, n: int = 200) -> float:
    """Host microseconds a call, the GPU idle enough that the launch queue never fills."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return dt / n * 1e6


def launches() -> dict:
    dev, dt = torch.device("cuda"), torch.bfloat16
    c, t, h, w = 96, 1, 8, 64
    buf = torch.randn(t + 2, h, w, c, device=dev, dtype=dt)
    packed = causal_conv.pack(torch.randn(c, c, 3, 3, 3, device=dev), torch.randn(c, device=dev), dt)
    gamma = torch.ones(c, device=dev)
    res = torch.randn(t, h, w, c, device=dev, dtype=dt)
    nxt = torch.empty(t + 2, h, w, c, device=dev, dtype=dt)
    hist, hn = torch.randn(1, 2, h, w, c, device=dev, dtype=dt), torch.empty(1, 2, h, w, c, device=dev, dtype=dt)
    y = torch.randn(1, t, h, w, c, device=dev, dtype=dt)
    return {
        "conv_plain_us": host_us(lambda: causal_conv.causal_conv(buf, packed, bias=False)),
        "conv_fused_norm_us": host_us(lambda: causal_conv.causal_conv(buf, packed, out=nxt[2:], gamma=gamma)),
        "conv_fused_residual_norm_us": host_us(lambda: causal_conv.causal_conv(buf, packed, out=nxt[2:], gamma=gamma,
                                                                               residual=res, x_out=res)),
        "default_config_us": host_us(lambda: causal_conv.default_config(dev, c, c, h, w, 2)),
        "rms_silu_stream_us": host_us(lambda: rms_silu_stream(y, gamma, True, nxt.unsqueeze(0), hist, hn, 1, h * w,
                                                              bias=packed.bias)),
        "empty_copy_us": host_us(lambda: nxt[:2].copy_(hist[0])),
    }


def host_start(vae, z) -> dict:
    """One decode profiled with host activity: when (ms after the call) the first and last GPU work
    were issued and ran, and the host ops before the first launch."""
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=acts) as prof:
        with torch.profiler.record_function("decode_call"):
            vae.decode(z)
        torch.cuda.synchronize()
    ev = list(prof.events())
    call = next(e for e in ev if e.name == "decode_call")
    t0 = call.time_range.start
    gpu = [e for e in ev if str(getattr(e, "device_type", "")) == "DeviceType.CUDA"]
    launch = [e for e in ev if e.name.startswith(("cudaLaunch", "cuLaunch", "cudaMemcpy", "cudaMemset"))]
    first = min(e.time_range.start for e in launch)
    before = sorted((e for e in ev if e.time_range.start < first and e.time_range.start >= t0
                     and str(getattr(e, "device_type", "")) != "DeviceType.CUDA"),
                    key=lambda e: -(e.time_range.end - e.time_range.start))
    return {
        "call_ms": (call.time_range.end - t0) / 1e3,
        "first_launch_ms": (first - t0) / 1e3,
        "first_gpu_ms": (min(e.time_range.start for e in gpu) - t0) / 1e3,
        "last_gpu_end_ms": (max(e.time_range.end for e in gpu) - t0) / 1e3,
        "host_ops_before_first_launch": [(e.name[:80], round((e.time_range.end - e.time_range.start) / 1e3, 3))
                                         for e in before[:25]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="explore_vae_launch.json")
    args = ap.parse_args()
    res: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
    vae = build_vae("wan2.1", device="cuda", dtype=torch.bfloat16, seed=0)
    z = torch.randn(1, 16, 21, 60, 104, device="cuda")
    vae.decode(z)
    torch.cuda.synchronize()
    issue, total = [], []
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = vae.decode(z)
        issue.append(time.perf_counter() - t)
        torch.cuda.synchronize()
        total.append(time.perf_counter() - t)
        del out
    res.update(issue_s=statistics.median(issue), total_s=statistics.median(total), issue_runs=issue, total_runs=total)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        vae.decode(z)
        torch.cuda.set_sync_debug_mode(0)
    res["syncs"] = [str(w.message)[:200] for w in caught][:20]
    res["sync_count"] = len(caught)
    from profile_pipeline import gaps, kernels

    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        vae.decode(z)
        torch.cuda.synchronize()
    res["profiled_s"] = time.perf_counter() - t
    ks = kernels(prof)
    busy, idle = gaps(ks)
    res.update(kernels=len(ks), first_to_last_kernel_ms=(ks[-1][1] - ks[0][0]) / 1e3, busy_ms=busy / 1e3,
               idle_ms=sum(g["idle_ms"] for g in idle), gaps_over_50us=sum(g["idle_ms"] > 0.05 for g in idle),
               largest_gaps=sorted(idle, key=lambda g: -g["idle_ms"])[:15])
    res["start"] = host_start(vae, z)
    res["launch_host_us"] = launches()
    print(json.dumps(res, indent=1), flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
