"""fp8 linears through cuBLASLt blockwise scaled_mm (1x128 activations x 128x128 weights) vs bf16
cuBLAS and our Triton fp8 GEMM, plus q/k/v as one GEMM (N = 3 * dim) vs three, at M = 32760
(Wan2.1-1.3B, 480p). Checks the cuBLAS result against the PyTorch rule before timing.

    PYTHONPATH=$PWD python3 benchmarks/bench_fp8_cublas.py --out results.json
Triton GEMM configs are pinned to the autotuner's picks recorded in
benchmarks/results/2026-11-26-linear-h100.json (no autotune: keeps the run short).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from turbovid.ops.quant import fp8_cublas, int8_triton
from turbovid.ops.quant.fp8 import fp8_linear_reference, quantize_weight_fp8
from turbovid.ops.quant.int8 import quantize_blockwise

M = 32760
SHAPES = [(1536, 1536), (1536, 8960), (8960, 1536)]
PINNED = {  # (K, N) -> Triton config (from the recorded autotune run)
    (1536, 1536): dict(BLOCK_M=64, BLOCK_N=128, SPLIT_N=1, num_warps=4, num_stages=3),
    (1536, 8960): dict(BLOCK_M=128, BLOCK_N=256, SPLIT_N=2, num_warps=8, num_stages=3),
    (8960, 1536): dict(BLOCK_M=64, BLOCK_N=128, SPLIT_N=1, num_warps=4, num_stages=3),
    (1536, 4608): dict(BLOCK_M=64, BLOCK_N=128, SPLIT_N=1, num_warps=4, num_stages=3),
}


def pinned_configs() -> None:
    path = os.path.join(os.path.dirname(__file__), "results", "2026-11-26-linear-h100.json")
    try:
        rows = json.load(open(path))["rows"]
    except (OSError, KeyError, ValueError):
        return
    for r in rows:
        cfg = {}
        for part in r.get("config_fp8", "").split(", "):
            k, _, v = part.partition(": ")
            if k in ("BLOCK_M", "BLOCK_N", "SPLIT_N", "num_warps", "num_stages"):
                cfg[k] = int(v)
        if len(cfg) == 5:
            PINNED[(r["K"], r["N"])] = cfg


def ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_fp8_cublas.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # the probe's one line
    pinned_configs()
    dev = torch.device("cuda")
    ok = fp8_cublas.available(dev)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "card": torch.cuda.get_device_name(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "command": "PYTHONPATH=$PWD python3 benchmarks/bench_fp8_cublas.py", "M": M,
           "cublas_blockwise_available": ok, "cublas_probe": fp8_cublas._probe.get(fp8_cublas._key(dev)), "rows": []}
    try:
        res["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    torch.manual_seed(0)
    for k, n in SHAPES + [(1536, 4608)]:
        row = {"K": k, "N": n, "ms": {}}
        x = torch.randn(M, k, device=dev).to(torch.bfloat16)
        w = (torch.randn(n, k, device=dev) / k**0.5).to(torch.bfloat16)
        b = torch.randn(n, device=dev).to(torch.bfloat16)
        wq, ws = quantize_weight_fp8(w)
        iq, is_ = quantize_blockwise(w)
        cfg = PINNED[(k, n)]
        row["ms"]["bf16_cublas"] = ms(lambda: F.linear(x, w, b))
        row["ms"]["fp8_triton"] = ms(lambda: int8_triton.linear(x, wq, ws, b, config=cfg))
        row["ms"]["int8_triton"] = ms(lambda: int8_triton.linear(x, iq, is_, b, config=cfg))
        aq, as_ = int8_triton.quantize_act(x, "fp8")
        row["ms"]["fp8_act_quant"] = ms(lambda: int8_triton.quantize_act(x, "fp8"))
        if ok:
            try:
                y = fp8_cublas.linear(x[:4096], wq, ws, b)
                row["rel_l2_vs_reference"] = rel(y.float(), fp8_linear_reference(x[:4096].float(), wq, ws, b.float()))
                sb = fp8_cublas.weight_scales(ws)
                row["ms"]["fp8_cublas"] = ms(lambda: fp8_cublas.linear(x, wq, ws, b))
                row["ms"]["fp8_cublas_gemm"] = ms(lambda: fp8_cublas._call(aq, as_, wq, sb, b, torch.bfloat16,
                                                                         fp8_cublas._probe[fp8_cublas._key(dev)]["bias"]))
            except Exception as e:  # noqa: BLE001 - record and go on
                row["cublas_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        if n == 4608:  # fused q/k/v vs three separate 1536-wide linears
            w3, b3 = w[:1536], b[:1536]
            wq3, ws3 = quantize_weight_fp8(w3)
            iq3, is3 = quantize_blockwise(w3)
            c3 = PINNED[(1536, 1536)]
            row["ms"]["bf16_3x_separate"] = 3 * ms(lambda: F.linear(x, w3, b3))
            row["ms"]["int8_3x_separate"] = 3 * ms(lambda: int8_triton.linear(x, iq3, is3, b3, config=c3))
            if ok:
                row["ms"]["fp8_cublas_3x_separate"] = 3 * ms(lambda: fp8_cublas.linear(x, wq3, ws3, b3))
        flops = 2 * M * n * k
        row["tflops"] = {name: flops / (t * 1e-3) / 1e12 for name, t in row["ms"].items() if "quant" not in name
                         and "3x" not in name}
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
    out = os.path.join(os.environ.get("OUT", "."), args.out)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\ncuBLAS blockwise fp8 available: {ok} {res['cublas_probe']}; card {res['card']}, torch {res['torch']}")
    cols = ["bf16_cublas", "int8_triton", "fp8_triton", "fp8_cublas", "fp8_cublas_gemm", "fp8_act_quant"]
    print("(K, N)        " + " ".join(f"{c:>16}" for c in cols) + "  rel_l2")
    for r in res["rows"]:
        cells = [f"{r['ms'][c]:.3f}ms/{r['tflops'].get(c, 0):5.0f}T" if c in r["ms"] else "-" for c in cols]
        print(f"({r['K']}, {r['N']}) " + " ".join(f"{c:>16}" for c in cells) + f"  {r.get('rel_l2_vs_reference', '-')}")
        extra = {k: round(v, 3) for k, v in r["ms"].items() if "3x" in k}
        if extra:
            print("   q/k/v as 3 separate linears:", extra)


if __name__ == "__main__":
    main()
