"""fp8 GEMM formats under the card's power cap (dev tool, run on the device).

The 14B forward's GEMMs run at the H100's 700 W cap (explore_clocks.py), so what counts is the rate a
format sustains, not its burst rate. For each model shape (M = 32760) this runs, back to back for
--seconds each while nvidia-smi samples the clock and power: bf16 cuBLAS, the block-scaled fp8 GEMM
`--quant fp8` runs (1x128 activation x 128x128 weight scales), and cuBLAS's fp8 with per-token x
per-channel scales and per-tensor scales, each with and without its fast accumulation. It also
prints each format's error against a float32 GEMM of the same bf16 operands, on inputs with a few
large activation channels (as DiT activations have).

    python3 benchmarks/explore_gemm_power.py [--seconds 3] [--shapes 14B|1.3B|all] [--out F]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from explore_clocks import Sampler  # noqa: E402

M = 32760
SHAPES = {"14B": [(5120, 5120), (5120, 13824), (13824, 5120)],
          "1.3B": [(1536, 1536), (1536, 8960), (8960, 1536)]}
E4M3 = torch.float8_e4m3fn


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = x.float().abs().amax(1, keepdim=True).clamp_min(1e-8) / 448.0
    return (x.float() / s).to(E4M3), s


def _tensorwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = (x.float().abs().amax().clamp_min(1e-8) / 448.0).reshape(())
    return (x.float() / s).to(E4M3), s


def variants(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> dict:
    """name -> zero-argument GEMM on pre-quantized operands."""
    import torch.nn.functional as F

    from turbovid.ops.quant import fp8, fp8_cublas
    from turbovid.ops.quant import int8_triton as kq

    wq, ws = fp8.quantize_weight_fp8(w)
    aq, as_ = kq.quantize_act(x, "fp8")
    wsc = fp8_cublas.weight_scales(ws)
    xr, sxr = _rowwise(x)
    wr, swr = _rowwise(w)
    xt, sxt = _tensorwise(x)
    wt, swt = _tensorwise(w)
    out = {"bf16": lambda: F.linear(x, w, bias),
           "fp8_block": lambda: fp8_cublas._call(aq, as_, wq, wsc, bias, torch.bfloat16, True)}
    for fast in (False, True):
        tag = "_fast" if fast else ""
        out["fp8_row" + tag] = (lambda fast=fast: torch._scaled_mm(
            xr, wr.t(), scale_a=sxr, scale_b=swr.t(), bias=bias, out_dtype=torch.bfloat16, use_fast_accum=fast))
        out["fp8_tensor" + tag] = (lambda fast=fast: torch._scaled_mm(
            xt, wt.t(), scale_a=sxt, scale_b=swt, bias=bias, out_dtype=torch.bfloat16, use_fast_accum=fast))
    return out


def inputs(K: int, N: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, K, device="cuda", generator=g)
    x[:, torch.randperm(K, device="cuda", generator=g)[:8]] *= 30.0  # a few outlier channels
    w = torch.randn(N, K, device="cuda", generator=g) * K**-0.5
    bias = torch.randn(N, device="cuda", generator=g) * 0.1
    return x.bfloat16(), w.bfloat16(), bias.bfloat16()


def burst_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    time.sleep(0.3)  # let the clock come back up between formats
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def sustained(fn, seconds: float, sampler: Sampler, group: int = 10) -> dict:
    """fn back to back for `seconds`: per-call ms (CUDA events around groups) and the card's state."""
    times = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(group):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / group)
    t1 = time.monotonic()
    state = sampler.window(t0 + 0.7, t1)  # the first 0.7 s: the clock ramps down
    tail = times[len(times) // 3:]  # after the ramp
    state.update({"ms_median": round(statistics.median(tail), 4), "ms_first": round(times[0], 4), "groups": len(times)})
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--shapes", default="14B", choices=["14B", "1.3B", "all"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    shapes = SHAPES["14B"] + SHAPES["1.3B"] if args.shapes == "all" else SHAPES[args.shapes]
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "M": M, "seconds": args.seconds,
              "rows": []}
    sampler = Sampler()
    try:
        for K, N in shapes:
            x, w, bias = inputs(K, N)
            ref = torch.nn.functional.linear(x.float(), w.float(), bias.float())
            flops = 2.0 * M * K * N
            row = {"K": K, "N": N}
            for name, fn in variants(x, w, bias).items():
                try:
                    y = fn().float()
                except Exception as e:  # noqa: BLE001 - a format this cuBLAS lacks
                    row[name] = {"error": f"{type(e).__name__}: {str(e)[:160]}"}
                    print(K, N, name, row[name], flush=True)
                    continue
                err = ((y - ref).norm() / ref.norm()).item()
                b_ms = burst_ms(fn)
                s = sustained(fn, args.seconds, sampler)
                s.update({"rel_l2": round(err, 5), "burst_ms": round(b_ms, 4),
                          "burst_tflops": round(flops / b_ms / 1e9, 1),
                          "sustained_tflops": round(flops / s["ms_median"] / 1e9, 1)})
                row[name] = s
                print(K, N, name, json.dumps(s), flush=True)
                time.sleep(1.0)
            report["rows"].append(row)
            del x, w, bias, ref
            torch.cuda.empty_cache()
    finally:
        sampler.stop()
    print("\n(K, N) format: rel L2 | burst ms (TFLOP/s) | sustained ms (TFLOP/s) at SM MHz, W")
    for row in report["rows"]:
        for name, s in row.items():
            if isinstance(s, dict) and "ms_median" in s:
                print(f"({row['K']}, {row['N']}) {name:16s} {s['rel_l2']:.2e} | {s['burst_ms']:.3f} ({s['burst_tflops']:.0f})"
                      f" | {s['ms_median']:.3f} ({s['sustained_tflops']:.0f}) at {s.get('sm_mhz_median')} MHz,"
                      f" {s.get('power_w_median')} W")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
