"""The int8 block-scaled GEMM: the Gluon kernel (ops/quant/int8_gluon.py, launch configs) against the
Triton kernel (autotuned), bf16 cuBLAS and cuBLAS's per-tensor fp8, one process, at the DiT's
shapes (M = 32760 tokens, 480p). Each Gluon config is first checked against the Triton kernel:
both compute exact int32 block products and scale them in float32, so their bf16 outputs agree up
to the order of the float32 additions (max abs difference reported). Then every candidate is timed
in ROUNDS interleaved rounds (default 3; the median is reported and each round's figure kept): timed
one after another, the 14B shapes' candidates moved by up to 20% between two sweeps as the card heated.

    PYTHONPATH=$PWD python3 benchmarks/explore_int8_gluon.py --out $OUT/explore_int8_gluon.json
"""
from __future__ import annotations

import os
import statistics

import torch
from triton.testing import do_bench

from turbovid.bench.timing import interleaved_ms, sweep_shapes
from turbovid.ops.quant import int8, int8_gluon, int8_triton

M = 32760
SHAPES = {  # (K, N)
    "1.3B qkv 1536x4608": (1536, 4608), "1.3B o 1536x1536": (1536, 1536), "1.3B ffn1 1536x8960": (1536, 8960),
    "1.3B ffn2 8960x1536": (8960, 1536), "14B o 5120x5120": (5120, 5120), "14B ffn1 5120x13824": (5120, 13824),
    "14B ffn2 13824x5120": (13824, 5120),
}
if os.environ.get("SHAPES"):  # a subset, by name prefix: SHAPES="1.3B,14B o"
    SHAPES = {k: v for k, v in SHAPES.items() if any(k.startswith(p) for p in os.environ["SHAPES"].split(","))}
ROUNDS = int(os.environ.get("ROUNDS", "3"))  # interleaved timing rounds
CONFIGS = [  # block_m, block_n, warps, stages, unroll, warp-specialized (persistent), maxnreg
    (128, 128, 8, 5, 6, True, 168), (128, 128, 8, 4, 6, True, 168), (128, 128, 8, 3, 6, True, 168),
    (128, 128, 8, 6, 6, True, 168), (128, 128, 8, 4, 4, True, 168), (128, 128, 8, 5, 4, True, 168),
]


def bench(fn) -> float:
    return float(do_bench(fn, warmup=10, rep=60, return_mode="median"))


def one(k: int, n: int) -> dict:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(M, k, device=dev, generator=g).bfloat16()
    w = (torch.randn(n, k, device=dev, generator=g) / k**0.5).bfloat16()
    bias = torch.randn(n, device=dev, generator=g).bfloat16()
    w_q, w_s = int8.quantize_blockwise(w)
    a_q, a_s = int8_triton.quantize_act(x, "int8")
    flops = 2 * M * n * k
    triton_out = int8_triton.scaled_mm(a_q, a_s, w_q, w_s, bias, use_tma=True)  # autotuned Triton kernel
    ref = int8.dequantize_blockwise(a_q, a_s) @ int8.dequantize_blockwise(w_q, w_s).t() + bias.float()
    out = {
        "triton_config": int8_triton.best_config(n, k, M),
        "triton_rel_err": ((triton_out.float() - ref).norm() / ref.norm()).item(),
        "gluon": [],
    }
    # every candidate is checked first, then all are timed in interleaved rounds (bench.timing.interleaved_ms)
    fns = {
        "bf16_cublas": lambda: torch.nn.functional.linear(x, w, bias),
        "triton": lambda: int8_triton.scaled_mm(a_q, a_s, w_q, w_s, bias, use_tma=True),
        "act_quant": lambda: int8_triton.quantize_act(x, "int8"),
    }
    try:
        wf, xf = w.to(torch.float8_e4m3fn), x.to(torch.float8_e4m3fn)
        one_s = torch.ones((), device=dev)
        fns["fp8_tensorwise"] = lambda: torch._scaled_mm(xf, wf.t(), one_s, one_s, bias=bias, out_dtype=torch.bfloat16,
                                                         use_fast_accum=True)
        fns["fp8_tensorwise"]()
    except Exception as err:  # noqa: BLE001 - report, keep going
        fns.pop("fp8_tensorwise", None)
        out["fp8_tensorwise_error"] = str(err).splitlines()[0]
    c = torch.empty(M, n, device=dev, dtype=torch.bfloat16)
    for i, (bm, bn, warps, stages, unroll, ws, maxnreg) in enumerate(CONFIGS):
        cfg = int8_gluon.Config(block_m=bm, block_n=bn, num_warps=warps, stages=stages, unroll=unroll, ws=ws,
                                maxnreg=maxnreg)
        row = {"config": [bm, bn, warps, stages, unroll, ws, maxnreg]}
        try:
            c.fill_(float("nan"))
            int8_gluon.scaled_mm(a_q, a_s, w_q, w_s, bias, c, cfg)
            row["max_abs_vs_triton"] = (c.float() - triton_out.float()).abs().max().item()
            row["rel_err"] = ((c.float() - ref).norm() / ref.norm()).item()
            fns[f"gluon{i}"] = lambda cfg=cfg: int8_gluon.scaled_mm(a_q, a_s, w_q, w_s, bias, c, cfg)
        except Exception as err:  # noqa: BLE001 - a config that does not compile: report it
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        out["gluon"].append(row)
    times = interleaved_ms(fns, bench, ROUNDS)
    for name, ts in times.items():
        ms = statistics.median(ts)
        if name.startswith("gluon"):
            row = out["gluon"][int(name[5:])]
            row.update(ms=ms, ms_rounds=ts, tops=flops / ms / 1e9)
        else:
            out[f"{name}_ms"], out[f"{name}_ms_rounds"] = ms, ts
            if name != "act_quant":
                out[f"{name}_tops"] = flops / ms / 1e9
    for row in out["gluon"]:
        print(n, k, row, flush=True)
    return out


if __name__ == "__main__":
    sweep_shapes(__doc__.splitlines()[0], "explore_int8_gluon.json", SHAPES, one)
