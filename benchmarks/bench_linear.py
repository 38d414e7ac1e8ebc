"""Quantized linear layers on the GPU: correctness first, then timings at Wan2.1-1.3B shapes.

M = 32760 tokens (480p, 81 frames), (K, N) in (1536, 1536), (1536, 8960), (8960, 1536):
bf16 cuBLAS (F.linear with bias), our int8 W8A8 including the activation quantization (and
its two parts; the GEMM is the Gluon kernel on Hopper, the Triton one timed beside it), our fp8
e4m3 (same), and torch._scaled_mm fp8 with per-tensor scales (cuBLAS's
fp8 rate, not the same math). Median of do_bench after warm-up; fresh random (never zero) data.

Run on the device (FMQ: the reference-rule probe, for the byte-for-byte check of the int8 rule):
  nvcc -O3 --use_fast_math -arch=sm_90 -o /tmp/fmq benchmarks/fastmath_quant_check.cu
  FMQ=/tmp/fmq PYTHONPATH=$PWD python3 benchmarks/bench_linear.py --out $OUT/bench_linear.json
Results: benchmarks/results/2026-11-26-linear-h100.json, docs/benchmarks.md "Linear layers".
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys

import numpy as np

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from turbovid.ops.quant import int8, int8_gluon
from turbovid.ops.quant import int8_triton as K
from turbovid.ops.quant.fp8 import fp8_linear_reference, quantize_act_fp8, quantize_weight_fp8
from turbovid.ops.quant.int8 import dequantize_blockwise, int8_linear_reference, quantize_blockwise

SHAPES = [(1536, 1536), (1536, 8960), (8960, 1536)]  # (K, N)
M = 32760
TARGET_MS = {(1536, 1536): 0.16, (1536, 8960): 0.80, (8960, 1536): 0.80}
FIXED = [  # checks run these two (both int32 -> fp32 promotions) instead of autotuning
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=256, SPLIT_N=2, MAGIC=True, num_warps=8, num_stages=3),
]


def tune_record(fn) -> dict:
    """Run fn once (autotunes on a new shape) and return the autotuner's per-config timings."""
    K._scaled_mm_tuned.configs_timings = {}
    fn()
    torch.cuda.synchronize()
    timings = getattr(K._scaled_mm_tuned, "configs_timings", {}) or {}
    return {f"{c.kwargs} w{c.num_warps} s{c.num_stages}": (t[0] if isinstance(t, list) else t) for c, t in timings.items()}


def kernel_stats() -> list[dict]:
    """Registers, spills, shared memory and whether wgmma was used, per compiled GEMM variant."""
    out = []
    for device_cache in getattr(K._scaled_mm_kernel, "device_caches", {}).values():
        for key, kern in device_cache[0].items():
            try:
                md = kern.metadata
                out.append({
                    "key": str(key)[-300:], "num_warps": md.num_warps, "num_stages": md.num_stages,
                    "shared": md.shared, "n_regs": kern.n_regs, "n_spills": kern.n_spills,
                    "wgmma": "wgmma" in kern.asm.get("ptx", ""),
                })
            except Exception as e:  # noqa: BLE001 - diagnostics only
                out.append({"key": str(key)[-300:], "error": repr(e)})
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def activations(m: int, k: int, outliers: int = 8, gain: float = 8.0) -> torch.Tensor:
    """Gaussian tokens with a few outlier channels, as after a norm + modulation."""
    x = torch.randn(m, k, device="cuda")
    x[:, torch.randperm(k, device="cuda")[:outliers]] *= gain
    return x.to(torch.bfloat16)


def reference_quantizer_check(results: dict, probe: str) -> bool:
    """Our int8 rule vs the reference rule compiled as the reference compiles it (fast math),
    byte for byte, with the measured reciprocal table and without it (plain IEEE division)."""
    out = subprocess.run([probe], capture_output=True, text=True, check=True).stdout
    print(out.splitlines()[0], flush=True)
    table = tuple(int(h, 16) for h in re.search(r"table:((?: [0-9a-f]{8}){128})", out).group(1).split())
    floor = int(re.search(r"floor: ([0-9a-f]{8})", out).group(1), 16)
    rec = {"sweep": out.splitlines()[0], "table": [f"{t:08x}" for t in table], "floor": f"{floor:08x}"}
    if int8.RCP128_TABLE is not None:
        rec["table_matches_hardcoded"] = int8.RCP128_TABLE == table and int8.RCP128_FLOOR == floor
    torch.manual_seed(2)
    w = torch.randn(8960, 1536, device="cuda") * torch.rand(70, 1, 12, 1, device="cuda").pow(4).repeat_interleave(
        128, 0).repeat_interleave(128, 2).view(8960, 1536) * 0.05
    tensors = {"weight 8960x1536": w.to(torch.bfloat16), "activations 4096x1536": activations(4096, 1536),
               "ragged 300x200": activations(300, 200), "tiny 256x256": (torch.randn(256, 256, device="cuda") * 1e-9).to(torch.bfloat16)}
    saved = (int8.RCP128_TABLE, int8.RCP128_FLOOR)
    ok = True
    for name, t in tensors.items():
        path = f"/tmp/q_{t.shape[0]}_{t.shape[1]}"
        t.contiguous().view(torch.int16).cpu().numpy().tofile(path + ".in")
        subprocess.run([probe, path + ".in", str(t.shape[0]), str(t.shape[1]), path + ".out"], check=True)
        raw = torch.from_numpy(np.fromfile(path + ".out", dtype=np.uint8))
        n = t.numel()
        ref_q = raw[:n].view(torch.int8).view(t.shape).cuda()
        ref_s = raw[n:].view(torch.float32).view(math.ceil(t.shape[0] / 128), math.ceil(t.shape[1] / 128)).cuda()
        row = {"what": f"reference-rule bytes {name}"}
        for label, tbl in (("ieee", (None, None)), ("table", (table, floor))):
            int8.RCP128_TABLE, int8.RCP128_FLOOR = tbl
            q, sc = quantize_blockwise(t)
            kq, ks = K.quantize_act(t, "int8")
            row[f"torch_{label}_differing"] = int((q != ref_q).sum())
            row[f"triton_{label}_differing"] = int((kq != ref_q).sum())
            row[f"scales_{label}_equal"] = torch.equal(sc, ref_s) and torch.equal(ks, ref_s)
        ok &= row["torch_table_differing"] == 0 and row["triton_table_differing"] == 0 and row["scales_table_equal"]
        rec.setdefault("tensors", []).append(row)
        print(json.dumps(row), flush=True)
    int8.RCP128_TABLE, int8.RCP128_FLOOR = saved if saved[0] is not None else (table, floor)
    results["reference_quantizer"] = rec
    return ok


def check(results: dict) -> bool:
    ok = True
    torch.manual_seed(1)
    if os.environ.get("FMQ"):
        ok &= reference_quantizer_check(results, os.environ["FMQ"])
    # 1. activation quantization: the kernel's bytes == the PyTorch rule's bytes
    for m, k in [(M, 1536), (1000, 8960), (77, 200)]:
        x = activations(m, k)
        q, s = K.quantize_act(x, "int8")
        rq, rs = quantize_blockwise(x)
        same8 = torch.equal(q, rq) and torch.equal(s, rs)
        q, s = K.quantize_act(x, "fp8")
        rq, rs = quantize_act_fp8(x)
        same_f8 = torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs)
        results.setdefault("checks", []).append({"what": f"quantize_act bytes m={m} k={k}", "int8": same8, "fp8": same_f8})
        ok &= same8 and same_f8
    # 2. GEMM: exact int32 block sums with unit scales; fp32 rounding with real scales
    for m, n, k in [(1000, 640, 1536), (333, 200, 300)]:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
        b = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
        ones_a = torch.ones(triton.cdiv(m, 128), triton.cdiv(k, 128), device="cuda")
        ones_b = torch.ones(triton.cdiv(n, 128), triton.cdiv(k, 128), device="cuda")
        exact = a.double() @ b.double().t()
        exact_ok = all(
            torch.equal(K.scaled_mm(a, ones_a, b, ones_b, out_dtype=torch.float32, config=cfg).double(), exact)
            for cfg in FIXED
        ) and torch.equal(K.scaled_mm(a, ones_a, b, ones_b, out_dtype=torch.float32).double(), exact)  # auto: Gluon on H100
        sa, sb = torch.rand_like(ones_a) + 0.5, torch.rand_like(ones_b) + 0.5
        ref = dequantize_blockwise(a, sa).double() @ dequantize_blockwise(b, sb).double().t()
        err = rel(K.scaled_mm(a, sa, b, sb, out_dtype=torch.float32, config=FIXED[0]), ref)
        results["checks"].append({"what": f"scaled_mm int8 m={m} n={n} k={k}", "int32_exact": exact_ok, "rel_err_fp32": err})
        ok &= exact_ok and err < 1e-6
    # 3. whole layers at a real shape: kernel vs the dequantize-then-matmul reference, and the
    #    quantization error against the unquantized layer (same data for int8 and fp8)
    k, n = 1536, 8960
    x = activations(8192, k)
    w = (torch.randn(n, k, device="cuda") / math.sqrt(k)).to(torch.bfloat16)
    bias = (torch.randn(n, device="cuda") * 0.1).to(torch.bfloat16)
    exact = F.linear(x.float(), w.float(), bias.float())
    for fmt in ("int8", "fp8"):
        wq, ws = quantize_blockwise(w) if fmt == "int8" else quantize_weight_fp8(w)
        y = K.linear(x, wq, ws, bias)
        ref = (int8_linear_reference if fmt == "int8" else fp8_linear_reference)(x.float(), wq, ws, bias)
        e_kernel, e_quant = rel(y.float(), ref), rel(y.float(), exact)
        results["checks"].append({"what": f"{fmt} layer 8192x{k}->{n}", "vs_dequant_ref": e_kernel, "vs_unquantized": e_quant})
        ok &= e_kernel < 1e-2
    results["checks"].append({"what": "bf16 F.linear vs fp32", "vs_unquantized": rel(F.linear(x, w, bias).float(), exact)})
    return ok


def bench(results: dict) -> None:
    torch.manual_seed(0)
    ms = lambda fn: do_bench(fn, warmup=50, rep=300, return_mode="median")  # noqa: E731
    rows = []
    for k, n in SHAPES:
        x = activations(M, k)
        w = (torch.randn(n, k, device="cuda") / math.sqrt(k)).to(torch.bfloat16)
        bias = (torch.randn(n, device="cuda") * 0.1).to(torch.bfloat16)
        w8, s8 = quantize_blockwise(w)
        wf8, sf8 = quantize_weight_fp8(w)
        xq8, xs8 = K.quantize_act(x, "int8")
        xqf8, xsf8 = K.quantize_act(x, "fp8")
        # per-tensor fp8 for torch._scaled_mm (cuBLAS): not our math, only its rate
        one = torch.ones((), device="cuda")
        x_pt, w_pt = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
        tuning = {"int8": tune_record(lambda: K.scaled_mm(xq8, xs8, w8, s8, bias)),
                  "fp8": tune_record(lambda: K.scaled_mm(xqf8, xsf8, wf8, sf8, bias))}
        t = {
            "bf16_cublas": ms(lambda: F.linear(x, w, bias)),
            "int8": ms(lambda: K.linear(x, w8, s8, bias)),
            "int8_gemm": ms(lambda: K.scaled_mm(xq8, xs8, w8, s8, bias)),  # the Gluon kernel where it runs
            "int8_gemm_triton": ms(lambda: K.scaled_mm(xq8, xs8, w8, s8, bias, use_tma=True)),
            "int8_act_quant": ms(lambda: K.quantize_act(x, "int8")),
            "fp8": ms(lambda: K.linear(x, wf8, sf8, bias)),
            "fp8_gemm": ms(lambda: K.scaled_mm(xqf8, xsf8, wf8, sf8, bias)),
            "fp8_act_quant": ms(lambda: K.quantize_act(x, "fp8")),
            "torch_scaled_mm_fp8": ms(lambda: torch._scaled_mm(x_pt, w_pt.t(), one, one, bias=bias, out_dtype=torch.bfloat16)),
        }
        ops = 2.0 * M * n * k
        row = {
            "M": M, "K": k, "N": n, "ms": t,
            "tops": {name: ops / (v * 1e-3) / 1e12 for name, v in t.items()},
            "speedup_vs_bf16": {name: t["bf16_cublas"] / v for name, v in t.items()},
            "target_int8_ms": TARGET_MS[(k, n)],
            "config_int8": (str(int8_gluon.config_for(n, k)) if int8_gluon.available(xq8, w8, torch.bfloat16)
                            else K.best_config(n, k, M, True)),
            "config_int8_triton": K.best_config(n, k, M, True), "config_fp8": K.best_config(n, k, M, False),
            "autotune_ms": tuning,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    results["rows"] = rows
    results["kernels"] = kernel_stats()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench_linear.json"))
    p.add_argument("--skip-check", action="store_true")
    args = p.parse_args()
    results = {
        "date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
        "command": "PYTHONPATH=$PWD python3 benchmarks/bench_linear.py " + " ".join(sys.argv[1:]),
    }
    ok = True if args.skip_check else check(results)
    for c in results.get("checks", []):
        print(json.dumps(c), flush=True)
    results["correct"] = ok
    bench(results)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n{results['device']}  torch {results['torch']}  triton {results['triton']}  checks {'PASS' if ok else 'FAIL'}")
    print(f"{'(K, N)':>13} | {'bf16':>14} | {'int8 (quant+gemm)':>24} | {'int8 gemm':>9} | {'act q':>6} | "
          f"{'fp8 (quant+gemm)':>24} | {'fp8 gemm':>8} | {'_scaled_mm':>10} | target")
    for r in results["rows"]:
        t, tops, sp = r["ms"], r["tops"], r["speedup_vs_bf16"]
        print(f"{str((r['K'], r['N'])):>13} | {t['bf16_cublas']:.3f} {tops['bf16_cublas']:4.0f}T | "
              f"{t['int8']:.3f} {tops['int8']:5.0f}T x{sp['int8']:.2f} | {t['int8_gemm']:9.3f} | "
              f"{t['int8_act_quant']:6.3f} | {t['fp8']:.3f} {tops['fp8']:5.0f}T x{sp['fp8']:.2f} | "
              f"{t['fp8_gemm']:8.3f} | {t['torch_scaled_mm_fp8']:10.3f} | {r['target_int8_ms']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
