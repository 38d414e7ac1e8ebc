"""Where the fast VAE decode's GPU time goes, by launch (dev tool, run on the device).

Each entry point the decode calls (the conv kernels, the upsamplers' phase convs, the RGB head,
the middle attention, the norm / residual passes) is wrapped in a profiler range labelled with its
shapes and epilogue; the kernels' device time is summed per label over one decode (after a warm-up
decode: compilation, descriptors). Real Wan2.1 config, random weights, bf16, the default chunking.
Ranges nest: causal_conv.launch includes the Gluon launch it dispatches to, upsample_conv its
four phase launches. Prints a table per size and writes JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/profile_vae_launches.py --out $OUT/vae_launches.json
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from turbovid.configs import VAE_PRESETS
from turbovid.models.vae import build_vae
from turbovid.ops import causal_conv, conv_gluon, conv_head, interleave, rms_silu, upsample_conv, wide_attention

SIZES = {"480p": (21, 60, 104), "720p": (21, 90, 160)}
PREFIX = "launch| "
# the decode's entry points into turbovid/ops (decode_divergence.py wraps the same)
ENTRY_POINTS = ((causal_conv, "launch"), (conv_gluon, "launch"), (upsample_conv, "upsample_conv"),
                (conv_head, "stream"), (wide_attention, "attention"), (rms_silu, "rms_silu"),
                (rms_silu, "rms_silu_stream"), (rms_silu, "add_bias_residual_"),
                (interleave, "subpixel_"), (interleave, "frames_"))


def _wrap_host_steps() -> None:
    """Profiler ranges around the decode's host-side steps, so the profile names what runs before
    the first kernel (device_timeline's host_before_first_kernel)."""
    from turbovid.models import vae_fast

    for owner, attr in ((vae_fast, "prepared"), (vae_fast, "plan_decode"), (vae_fast, "default_budget"),
                        (vae_fast.FastDecoder, "latent_stage"), (vae_fast.FastDecoder, "up_stage")):
        _wrap(owner, attr, fixed=f"host| {attr}")


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) if isinstance(t, torch.Tensor) else "-"


def _label(name: str, a: dict) -> str:
    """The launch's label: the entry point, its input's shape, output channels and epilogue
    (a: the call's arguments by name)."""
    x = next(iter(a.values()))
    if name != "causal_conv.launch":
        return f"{name} {_shape(x)}"
    conv, cfg = a["conv"], a["cfg"]
    opts = "+".join(k for k in ("gamma", "residual", "x_out", "history_out") if a.get(k) is not None) or "plain"
    strided = "" if a["out"].is_contiguous() else " strided"
    return (f"{name} {_shape(x)}->{conv.cout} taps={a.get('taps', (3, 3))} {opts}{strided} "
            f"[m{cfg.block_m} k{cfg.block_k} r{cfg.rows} w{cfg.num_warps} s{cfg.num_stages}"
            f"{' tma' if cfg.tma else ''}]")


def _wrap(owner, attr: str, fixed: str = "") -> None:
    """owner.attr (a module's function or a class's method) in a profiler range: `fixed`, or the
    launch's label (PREFIX + _label) from the call's arguments."""
    fn = getattr(owner, attr)
    name = f"{owner.__name__.rsplit('.', 1)[-1]}.{attr}"
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with record_function(fixed or PREFIX + _label(name, sig.bind(*args, **kwargs).arguments)):
            return fn(*args, **kwargs)

    setattr(owner, attr, wrapped)


def device_us(event) -> float:
    for key in ("device_time_total", "cuda_time_total"):
        if hasattr(event, key):
            return float(getattr(event, key))
    raise AttributeError("no device time in this torch's profiler events")


def profile_size(vae, size: str) -> dict:
    t, h, w = SIZES[size]
    z = torch.randn(1, 16, t, h, w, device="cuda")
    with torch.no_grad():
        vae.decode(z)
        torch.cuda.synchronize()
        start = time.perf_counter()
        vae.decode(z)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            vae.decode(z)
            torch.cuda.synchronize()
    rows = {}
    for e in p.key_averages():
        if e.key.startswith(PREFIX):
            rows[e.key[len(PREFIX):]] = {"calls": e.count, "ms": device_us(e) / 1e3}
    return {"decode_s_unprofiled": wall, **device_timeline(p),
            "launches": dict(sorted(rows.items(), key=lambda kv: -kv[1]["ms"]))}


def device_timeline(p, top: int = 12) -> dict:
    """The profiled decode's device side: every kernel and copy's time by name, the span from the
    first to the last, the time the GPU was busy in it (the union of their intervals) and the
    longest idle gaps between them, each with the names either side: what the decode loses to
    launches, syncs and host work (the labelled launches cover only our entry points)."""
    spans, by_name, host = [], {}, []
    for e in p.events():
        if e.time_range.end <= e.time_range.start:
            continue
        if e.device_type != torch.autograd.DeviceType.CUDA:
            host.append((e.time_range.start, e.time_range.end, e.name))
        elif not e.name.startswith(PREFIX):  # kernels and copies; not our ranges' device projections
            spans.append((e.time_range.start, e.time_range.end, e.name))
            by_name[e.name] = by_name.get(e.name, 0.0) + (e.time_range.end - e.time_range.start)
    if not spans:
        return {}
    spans.sort()
    # the host's work before the device's first kernel, and the longest host events then
    first = min((h[0] for h in host), default=spans[0][0])
    early = sorted((h for h in host if h[0] < spans[0][0]), key=lambda h: h[0] - h[1])[:top]
    busy, gaps, end, last = 0.0, [], spans[0][0], spans[0][2]
    for start, stop, name in spans:
        if start > end:
            gaps.append((start - end, last, name))
        busy += max(0.0, stop - max(start, end))
        if stop > end:
            end, last = stop, name
    gaps.sort(reverse=True)
    return {"host_lead_ms": (spans[0][0] - first) / 1e3,
            "host_before_first_kernel": [{"us": b - a, "name": n[:90]} for a, b, n in early],
            "device_span_ms": (end - spans[0][0]) / 1e3, "device_busy_ms": busy / 1e3,
            "device_idle_ms": (end - spans[0][0] - busy) / 1e3,
            "longest_gaps": [{"us": g, "after": a[:90], "before": b[:90]} for g, a, b in gaps[:top]],
            "kernels_by_name_ms": {k[:120]: v / 1e3 for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:3 * top]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="vae_launches.json")
    ap.add_argument("--sizes", default="480p,720p")
    args = ap.parse_args()
    for module, attr in ENTRY_POINTS:
        _wrap(module, attr)
    _wrap_host_steps()
    vae = build_vae(VAE_PRESETS["wan2.1"], seed=0).eval().requires_grad_(False).to("cuda", torch.bfloat16)
    res = {"card": torch.cuda.get_device_name(), "sizes": {}}
    for size in args.sizes.split(","):
        r = res["sizes"][size] = profile_size(vae, size)
        print(f"\n{size}: decode {r['decode_s_unprofiled']:.3f} s unprofiled; profiled: device span "
              f"{r.get('device_span_ms', 0):.1f} ms, busy {r.get('device_busy_ms', 0):.1f}, idle {r.get('device_idle_ms', 0):.1f}")
        print(f"   host lead (first host event to first kernel) {r.get('host_lead_ms', 0):.1f} ms; longest host events then:")
        for h in r.get("host_before_first_kernel", []):
            print(f"   host {h['us']:8.1f} us  {h['name']}")
        for g in r.get("longest_gaps", []):
            print(f"   gap {g['us']:8.1f} us  after {g['after']}  before {g['before']}")
        for name, ms in r.get("kernels_by_name_ms", {}).items():
            print(f"{ms:9.2f} ms  kernel {name}")
        for label, row in r["launches"].items():
            print(f"{row['ms']:9.2f} ms {row['calls']:4d}x  {label}")
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
