"""A/B of the per-tensor fp8 FFN in one process (run on the device): GELU and the hidden layer's
quantization in the first GEMM's cuBLASLt epilogue (quant.cublaslt, FastOptions.fp8_gelu_gemm) against
their own pass after a bf16 hidden layer (the previous path).

For each model: the graphed sagesla+fp8 forward of both, timed in alternating rounds, the relative
difference of their velocities, and each one's velocity error against the same random-weight model in
bf16 with dense attention (as benchmarks/ab_fp8_scales.py measures it).

    python3 benchmarks/ab_fp8_gelu_gemm.py --models Wan2.1-1.3B,Wan2.1-14B [--forwards 8] [--rounds 3] [--out F]
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab_fp8_scales import ab_setup, dense_output, forward_inputs, record, rel  # noqa: E402
from turbovid.bench.timing import cuda_ms  # noqa: E402

VARIANTS = {"gelu in the GEMM epilogue": True, "gelu + quantization pass": False}


def build(model: str, quant: bool, gelu_gemm: bool = True):
    from turbovid.fast import FastOptions, make_fast
    from turbovid.loading.dit import build_dit
    from turbovid.ops.quant import swap_linears_fp8

    dit = build_dit(model, device=torch.device("cuda"), dtype=torch.bfloat16, seed=0)
    if quant:
        for blk in dit.blocks:
            swap_linears_fp8(blk, skip=("proj_l",), per_tensor=True)
    dit.set_attention("sagesla", 0.1)
    return make_fast(dit, FastOptions(fp8_gelu_gemm=gelu_gemm))


def main() -> None:
    args, report = ab_setup(__doc__)
    for model in args.models.split(","):
        lat, t, ctx = forward_inputs(args.resolution)
        with torch.inference_mode():
            runner = build(model, quant=False)
            want_dense = dense_output(runner, lat, t, ctx)
            del runner
            torch.cuda.empty_cache()
            runners = {name: build(model, True, flag) for name, flag in VARIANTS.items()}
            outs = {}
            for name, r in runners.items():
                r(lat, t, ctx)  # eager call; the next one captures
                outs[name] = r(lat, t, ctx).float()
            row = {"ms": {name: [] for name in runners}}
            for _ in range(args.rounds):
                for name, r in runners.items():
                    row["ms"][name] += [cuda_ms(lambda: r(lat, t, ctx)) for _ in range(args.forwards)]
            row["median_ms"] = {name: round(statistics.median(v), 2) for name, v in row["ms"].items()}
            a, b = outs.values()
            row["rel_diff_between_variants"] = round(rel(a, b), 5)
            row["rel_err_vs_bf16_dense_attention"] = {
                name: round(rel(dense_output(r, lat, t, ctx), want_dense), 5) for name, r in runners.items()}
            del runners, outs
            torch.cuda.empty_cache()
        record(report, model, row, args.out)


if __name__ == "__main__":
    main()
