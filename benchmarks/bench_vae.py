"""Wan2.1 VAE decode on the GPU: our fast path, tiled 720p, and diffusers' AutoencoderKLWan, one run.

Real Wan2.1 VAE config with random weights (diffusers' init, mapped into ours so both decode
the same network), random normalised latents 21x60x104 (480p) and 21x90x160 (720p).
Accuracy: PSNR (range [-1, 1]) of the fast bf16 decode against our float32 chunked reference
(TF32 off), and of the tiled against the untiled fast decode.
Prints a table last and writes JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/bench_vae.py --out $OUT/bench_vae.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F

from turbovid.configs import VAE_PRESETS
from turbovid.loading.vae import to_ours
from turbovid.models.vae import WanVAE
from turbovid.models import vae_fast
from turbovid.models.vae_fast import fast_decode
from turbovid.models.vae_tiling import GiB, estimate_bytes, plan_decode

SIZES = {"480p": (21, 60, 104), "720p": (21, 90, 160)}
SMOKE_SIZES = {"480p": (2, 4, 6), "720p": (2, 6, 8)}  # --smoke: the script's logic on the CPU
T0 = time.time()
DEV = torch.device("cuda")
CHUNKS = {"480p": (1, 2), "720p": (1,)}  # the chunk sweep's sizes (--chunks)
MODES = ("stacked+conv3d+sdpa", "triton+triton+unfused", "triton+triton+nolow", "triton+triton")  # --modes


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def reset_peak():
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / GiB if DEV.type == "cuda" else float("nan")


def empty_cache():
    if DEV.type == "cuda":
        torch.cuda.empty_cache()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = sum((x.double() - y.double()).pow(2).sum().item() for x, y in zip(a.split(8, 2), b.split(8, 2)))
    return 10 * torch.log10(torch.tensor(4.0 * a.numel() / mse)).item()


def timed(fn, repeats: int):
    """(median seconds, peak GiB allocated during one run, last output); one warm-up call first."""
    fn()
    sync()
    times, out = [], None
    reset_peak()
    for _ in range(repeats):
        out = None
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), peak_gib(), out.cpu(), times


def decode_tflop(cfg, t: int, h: int, w: int, subpixel: bool) -> float:
    """Multiply-adds x2 of the decoder's convolutions (attention and 1x1 convs included)."""
    dims = [cfg.dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
    temporal = cfg.temporal_downsample[::-1]
    flops = 0.0
    pos = t * h * w
    flops += 2 * pos * 27 * cfg.z_dim * dims[0]  # conv_in
    flops += 4 * 2 * pos * 27 * dims[0] ** 2  # middle res blocks
    flops += 2 * pos * dims[0] * dims[0] * 4 + 4 * t * (h * w) ** 2 * dims[0]  # attention
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        cin = cin // 2 if i else cin
        for _ in range(cfg.num_res_blocks + 1):
            flops += 2 * pos * 27 * (cin * cout + cout * cout) + (2 * pos * cin * cout if cin != cout else 0)
            cin = cout
        if i < len(dims) - 2:
            if temporal[i]:
                flops += 2 * pos * 3 * cout * 2 * cout
                t, pos = 2 * t - 1, (2 * t - 1) * h * w
            taps = 16 if subpixel else 36  # per low-res position: 4 phases x 4 taps, or 4 outputs x 9 taps
            flops += 2 * pos * taps * cout * (cout // 2)
            h, w = 2 * h, 2 * w
            pos = t * h * w
    flops += 2 * pos * 27 * dims[-1] * 3
    return flops / 1e12


def conv_microbench(rows: list):
    """cuDNN 3x3x3 causal conv at the decoder's dominant shapes (one 480p chunk of 4 frames)."""
    from triton.testing import do_bench

    for c, t, h, w in ((96, 4, 480, 832), (192, 4, 240, 416), (384, 2, 120, 208)):
        x = torch.randn(1, c, t + 2, h, w, device="cuda", dtype=torch.bfloat16)
        wt = torch.randn(c, c, 3, 3, 3, device="cuda", dtype=torch.bfloat16) * 0.02
        flop = 2 * t * h * w * 27 * c * c
        xl, wl = x.contiguous(memory_format=torch.channels_last_3d), wt.contiguous(memory_format=torch.channels_last_3d)
        variants = {
            "conv3d NCDHW": lambda: F.conv3d(x, wt, padding=(0, 1, 1)),
            "conv3d NDHWC": lambda: F.conv3d(xl, wl, padding=(0, 1, 1)),
        }
        x2 = xl.permute(0, 2, 1, 3, 4)[0]  # (T+2, C, H, W) channels-last frames
        w2 = [wt[:, :, k].contiguous(memory_format=torch.channels_last) for k in range(3)]

        def taps():
            out = F.conv2d(x2[0:t], w2[0], padding=1)
            out += F.conv2d(x2[1:t + 1], w2[1], padding=1)
            out += F.conv2d(x2[2:t + 2], w2[2], padding=1)
            return out

        variants["3x conv2d NHWC"] = taps
        xs = torch.randn(t, h, w, 3 * c, device="cuda", dtype=torch.bfloat16).permute(0, 3, 1, 2)
        ws = wt.permute(0, 2, 1, 3, 4).reshape(c, 3 * c, 3, 3).contiguous(memory_format=torch.channels_last)
        variants["stacked conv2d"] = lambda: F.conv2d(xs, ws, padding=1)
        for bench_mode in (False,):
            torch.backends.cudnn.benchmark = bench_mode
            for name, fn in variants.items():
                ms = do_bench(fn, warmup=50, rep=200, return_mode="median")
                rows.append({"shape": f"C{c} {t}x{h}x{w}", "variant": name, "cudnn_benchmark": bench_mode,
                             "ms": ms, "tflops": flop / ms / 1e9})
        torch.backends.cudnn.benchmark = False
        del x, xl, x2, xs


def kernel_microbench(rows: list):
    from triton.testing import do_bench

    from turbovid.ops.rms_silu import rms_silu, rms_silu_reference

    x = torch.randn(4, 480, 832, 96, device="cuda", dtype=torch.bfloat16)
    g = torch.ones(96, device="cuda")
    gb = 2 * x.numel() * 2 / 1e9
    for name, fn in (("triton rms_silu", lambda: rms_silu(x, g)), ("torch reference", lambda: rms_silu_reference(x, g))):
        ms = do_bench(fn, warmup=20, rep=100, return_mode="median")
        rows.append({"kernel": name, "ms": ms, "GB/s": gb / ms * 1e3})


def guarded(res: dict, name: str, fn) -> None:
    """Run one section; an error is recorded and the run goes on to the next section."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - one broken section must not lose the others' figures
        traceback.print_exc()
        res.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"[:500]
        empty_cache()


def set_modes(mode: str) -> None:
    """"small+wide[+headconv][+sdpa][+unfused][+nolow]" -> vae_fast.SMALL_CONV, WIDE_CONV, HEAD_BY_TAPS,
    ATTENTION, FUSE_NORM, LOW_STAGES."""
    small, wide, *rest = mode.split("+")
    if set(rest) - {"headconv", "sdpa", "unfused", "nolow"} or small not in vae_fast._SMALL_MODES \
            or wide not in vae_fast._WIDE_MODES:
        raise ValueError(f"unknown decode mode {mode!r}")
    vae_fast.SMALL_CONV, vae_fast.WIDE_CONV = small, wide
    vae_fast.HEAD_BY_TAPS, vae_fast.ATTENTION = "headconv" not in rest, "sdpa" if "sdpa" in rest else "auto"
    vae_fast.FUSE_NORM = "unfused" not in rest
    vae_fast.LOW_STAGES = "nolow" not in rest


def fast_section(res, cfg, vae, name, z, ref, repeats):
    r = res["sizes"][name]
    t, h, w = SIZES[name]
    z = z.to(DEV)
    r["tflop_decode"] = decode_tflop(cfg, t, h, w, subpixel=True)
    # each way of running the full-resolution (96-channel) convs; the fastest at 480p is used after
    modes = r["modes"] = {}
    keep = {}
    # small+wide conv modes (vae_fast.SMALL_CONV / WIDE_CONV): cuDNN's convs and PyTorch's attention
    # (the default before 2026-11-27), our kernels with each norm in a pass of its own ("+unfused",
    # the default until session 24), the norms in the convs' epilogues but every up layer chunked
    # ("+nolow", the default until session 25), and the default on Hopper: the first upsampling
    # stage with the middle blocks, over all frames
    for mode in MODES:
        set_modes(mode)
        vae._fast_cache.clear()

        def one():
            sec, peak, out, times = timed(lambda: vae.decode(z), repeats)
            modes[mode] = {"s": sec, "times": times, "peak_gib": peak, "psnr_vs_fp32": psnr(out, ref)}
            keep[mode] = out
            log(name, mode, f"{sec:.3f}s peak {peak:.2f} GiB psnr {modes[mode]['psnr_vs_fp32']:.1f} dB", times)

        guarded(res, f"{name}_{mode}", one)
        empty_cache()
    best = min(modes, key=lambda m: modes[m]["s"])
    if name == "480p":
        res["small_conv"] = best
    use = res.get("small_conv", best)
    set_modes(use)
    vae._fast_cache.clear()
    plan = plan_decode(cfg, t, h, w, 2, "auto", 70 * GiB, small_conv=vae_fast.SMALL_CONV)
    r["plan_auto"] = {k: v for k, v in asdict(plan).items() if k != "tiles"}
    r.update(small_conv=use, fast_s=modes[use]["s"], fast_peak_gib=modes[use]["peak_gib"],
             fast_psnr_vs_fp32=modes[use]["psnr_vs_fp32"], fast_tflops=r["tflop_decode"] / modes[use]["s"])
    untiled = keep[use]
    keep.clear()

    def sweep():
        rows = r["chunk_sweep"] = []
        for k in CHUNKS.get(name, ()):
            p = replace(plan, chunk=k)
            s2, pk2, _, _ = timed(lambda: fast_decode(vae, z, plan=p), 1)
            rows.append({"chunk": k, "s": s2, "peak_gib": pk2,
                         "est_gib": estimate_bytes(cfg, t, h, w, 2, k, plan.mid_chunk, small_conv=vae_fast.SMALL_CONV) / GiB})
            log(name, "chunk", rows[-1])

    def tiled():
        tplan = plan_decode(cfg, t, h, w, 2, "on", 70 * GiB, small_conv=vae_fast.SMALL_CONV)
        r["plan_tiled"] = {k: v for k, v in asdict(tplan).items() if k != "tiles"}
        s4, pk4, o4, times4 = timed(lambda: vae.decode(z, tiling="on"), repeats)
        r.update(tiled_s=s4, tiled_peak_gib=pk4, tiled_psnr_vs_untiled=psnr(o4, untiled),
                 tiled_psnr_vs_fp32=psnr(o4, ref),
                 tiled_est_gib=estimate_bytes(cfg, t, h, w, 2, tplan.chunk, tplan.mid_chunk,
                                              (max(a[1] - a[0] for a in tplan.tiles), max(a[3] - a[2] for a in tplan.tiles)),
                                              small_conv=vae_fast.SMALL_CONV) / GiB)
        log(name, f"tiled {s4:.3f}s peak {pk4:.2f} GiB psnr/untiled {r['tiled_psnr_vs_untiled']:.1f}", times4)
        b8 = plan_decode(cfg, t, h, w, 2, "auto", 8 * GiB, small_conv=vae_fast.SMALL_CONV)
        s5, pk5, _, _ = timed(lambda: vae.decode(z, tiling="auto", memory_budget=8 * GiB), 1)
        r.update(auto8_plan={k: v for k, v in asdict(b8).items() if k != "tiles"}, auto8_s=s5, auto8_peak_gib=pk5)
        log(name, f"auto with 8 GiB budget {s5:.3f}s peak {pk5:.2f} GiB grid {b8.grid}")

    guarded(res, f"{name}_sweep", sweep)
    if name == "720p":
        guarded(res, f"{name}_tiled", tiled)


def parse_chunks(spec: str) -> dict:
    """'480p=1,2,3;720p=1,2' -> {"480p": (1, 2, 3), "720p": (1, 2)}."""
    out = {}
    for part in filter(None, spec.split(";")):
        name, _, ks = part.partition("=")
        if name not in SIZES or not ks:
            raise SystemExit(f"--chunks: expected e.g. 480p=1,2;720p=1, got {part!r}")
        out[name] = tuple(int(k) for k in ks.split(","))
    return out


def main() -> int:
    global DEV, SIZES, CHUNKS, MODES
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_vae.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--skip-micro", action="store_true")
    ap.add_argument("--profile", default="")
    ap.add_argument("--chunks", default="", help="chunk sweep, e.g. 480p=1,2,3,4;720p=1,2 (default: 480p=1,2;720p=1)")
    ap.add_argument("--smoke", action="store_true", help="tiny config and sizes on the CPU")
    ap.add_argument("--modes", default="", help=f"decode modes, comma-separated (default: {','.join(MODES)})")
    ap.add_argument("--sizes", default="", help="480p and / or 720p, comma-separated (default: both)")
    args = ap.parse_args()
    if args.chunks:
        CHUNKS = parse_chunks(args.chunks)
    if args.modes:
        MODES = tuple(args.modes.split(","))
        for mode in MODES:
            set_modes(mode)  # an unknown mode fails here, not after the reference decodes
        set_modes(MODES[-1])
    if args.sizes:
        if set(args.sizes.split(",")) - set(SIZES):
            raise SystemExit(f"--sizes: expected 480p and / or 720p, got {args.sizes!r}")
        SIZES = {k: v for k, v in SIZES.items() if k in args.sizes.split(",")}
    if args.smoke:
        DEV, SIZES, args.skip_micro, args.profile = torch.device("cpu"), SMOKE_SIZES, True, ""
    dev = DEV
    res: dict = {
        "card": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "sizes": {k: {} for k in SIZES}, "micro": {},
    }
    cfg = VAE_PRESETS["tiny-random" if args.smoke else "wan2.1"]

    def save():
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)

    # 1. One random network for everyone: diffusers' init, mapped into ours.
    dmodel = None
    try:
        import diffusers

        torch.manual_seed(0)
        dmodel = diffusers.AutoencoderKLWan(base_dim=cfg.dim).eval().requires_grad_(False)
        sd = to_ours(dmodel.state_dict(), "diffusers")
        res["diffusers"] = diffusers.__version__
    except ImportError as e:
        log("diffusers unavailable:", e)
        from turbovid.models.vae import build_vae

        sd = build_vae(cfg, seed=0).state_dict()
    vae = WanVAE(cfg).eval().requires_grad_(False)
    vae.load_state_dict(sd)
    vae.to(dev)
    latents = {k: torch.randn(1, 16, *s, generator=torch.Generator().manual_seed(i)) for i, (k, s) in enumerate(SIZES.items())}

    # 2. float32 chunked reference, TF32 off (kept on the CPU).
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    refs = {}
    for name, z in latents.items():
        sync()
        t = time.perf_counter()
        refs[name] = vae.decode(z.to(dev), fast=False).cpu()
        sync()
        res["sizes"][name]["ref_fp32_chunked_s"] = time.perf_counter() - t
        log(name, "fp32 reference", f"{time.perf_counter() - t:.2f}s")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    vae.to(dtype=torch.bfloat16)  # the fast path's weights: bf16 module, nothing float32 left on the GPU
    empty_cache()
    save()

    # 3. Our fast decode.
    for name, z in latents.items():
        guarded(res, f"{name}_fast", lambda: fast_section(res, cfg, vae, name, z, refs[name], args.repeats))
        empty_cache()
        save()

    if args.profile:
        def prof():
            from torch.profiler import ProfilerActivity, profile

            z = latents["480p"].to(dev)
            with profile(activities=[ProfilerActivity.CUDA]) as p:
                vae.decode(z)
                sync()
            with open(args.profile, "w") as f:
                f.write(p.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=100))
            log("profile written")

        guarded(res, "profile", prof)

    # 4. diffusers AutoencoderKLWan, bf16, same weights, same latents.
    if dmodel is not None and not args.skip_diffusers:
        vae.cpu()
        empty_cache()
        dmodel.to(dev, torch.bfloat16)
        for name, z in latents.items():
            def run_diffusers():
                r = res["sizes"][name]
                raw = vae.denormalize(z.float()).to(dev, torch.bfloat16)
                reps = 2 if name == "480p" else 1
                sec, peak, out, times = timed(lambda: dmodel.decode(raw).sample, reps)
                r.update(diffusers_s=sec, diffusers_times=times, diffusers_peak_gib=peak,
                         diffusers_psnr_vs_fp32=psnr(out.float(), refs[name]))
                log(name, f"diffusers {sec:.3f}s peak {peak:.2f} GiB", times)

            guarded(res, f"{name}_diffusers", run_diffusers)
            save()
        dmodel.cpu()
        empty_cache()

    if not args.skip_micro:
        res["micro"]["conv"], res["micro"]["rms_silu"] = [], []
        guarded(res, "micro_conv", lambda: conv_microbench(res["micro"]["conv"]))
        guarded(res, "micro_rms_silu", lambda: kernel_microbench(res["micro"]["rms_silu"]))
    save()

    nan = float("nan")
    print("\n=== VAE decode,", res["card"], "torch", res["torch"], "cudnn", res["cudnn"], "===")
    for c in res["micro"].get("conv", []):
        print(f"  conv {c['shape']:<18} {c['variant']:<15} bench={c['cudnn_benchmark']!s:<5} {c['ms']:7.3f} ms {c['tflops']:6.1f} TFLOP/s")
    for c in res["micro"].get("rms_silu", []):
        print(f"  {c['kernel']:<16} {c['ms']:.3f} ms {c['GB/s']:.0f} GB/s")
    print(f"{'size':<5} {'ours fast':>10} {'peak':>9} {'PSNR':>7} {'diffusers':>10} {'peak':>9} {'speedup':>8}"
          f"   small-conv mode: {res.get('small_conv')}")
    for name, r in res["sizes"].items():
        f, d = r.get("fast_s", nan), r.get("diffusers_s", nan)
        print(f"{name:<5} {f:9.3f}s {r.get('fast_peak_gib', nan):7.2f}G {r.get('fast_psnr_vs_fp32', nan):6.1f}dB "
              f"{d:9.3f}s {r.get('diffusers_peak_gib', nan):7.2f}G {d / f:7.2f}x"
              f"   ({r.get('tflop_decode', nan):.0f} TFLOP, {r.get('fast_tflops', nan):.0f} TFLOP/s; "
              f"fp32 ref {r.get('ref_fp32_chunked_s', nan):.2f}s)")
        for m, v in r.get("modes", {}).items():
            print(f"      mode {m:<8} {v['s']:.3f}s peak {v['peak_gib']:.2f}G PSNR {v['psnr_vs_fp32']:.1f} dB")
        for s in r.get("chunk_sweep", []):
            print(f"      chunk {s['chunk']}: {s['s']:.3f}s peak {s['peak_gib']:.2f}G (estimate {s['est_gib']:.2f}G)")
        if "tiled_s" in r:
            print(f"      tiled {r['plan_tiled']['grid']}: {r['tiled_s']:.3f}s peak {r['tiled_peak_gib']:.2f}G "
                  f"PSNR vs untiled {r['tiled_psnr_vs_untiled']:.1f} dB; auto@8GiB {r['auto8_plan']['grid']} "
                  f"{r['auto8_s']:.3f}s peak {r['auto8_peak_gib']:.2f}G")
    for k, v in res.get("errors", {}).items():
        print("  ERROR", k, v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
