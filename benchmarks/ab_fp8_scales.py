"""A/B of --quant fp8's scale layouts in one process (run on the device): block scales (1x128
activations x 128x128 weights, cuBLAS's blockwise GEMM) against per-tensor scales (quant.fp8_tensor:
the norms' modulation bound, cuBLAS's per-tensor GEMM) with fast accumulation ("tensor") and without
("tensor-exact").

For each model: the graphed sagesla forward of both, timed in alternating rounds, and each one's
velocity error against the same random-weight model in bf16 (same inputs, same attention), with
sagesla and with dense attention (sparse attention's block choice flips under small changes, which
makes the sagesla error noisy between close variants; dense has no such step).

    python3 benchmarks/ab_fp8_scales.py --models Wan2.1-1.3B,Wan2.1-14B [--forwards 8] [--rounds 3] [--out F]
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

from turbovid.bench.cases import PROMPT_ROWS, latent_shape  # noqa: E402
from turbovid.bench.timing import cuda_ms, environment  # noqa: E402


VARIANTS = ("block", "tensor", "tensor-exact")


def use(variant: str) -> None:
    """The GEMM's accumulation mode, read at call time (a captured graph keeps the one it saw)."""
    from turbovid.ops.quant import fp8_tensor

    fp8_tensor.FAST_ACCUM = variant != "tensor-exact"


def build(model: str, scales: str | None):
    from turbovid.fast import FastOptions, make_fast
    from turbovid.loading.dit import build_dit
    from turbovid.ops.quant import swap_linears_fp8

    dit = build_dit(model, device=torch.device("cuda"), dtype=torch.bfloat16, seed=0)
    if scales is not None:
        for blk in dit.blocks:
            swap_linears_fp8(blk, skip=("proj_l",), per_tensor=scales != "block")
    dit.set_attention("sagesla", 0.1)
    return make_fast(dit, FastOptions())


def dense_output(runner, lat, t, ctx) -> torch.Tensor:
    """The runner's velocity with dense attention (eager, its graphs dropped), then sagesla again."""
    runner.dit.set_attention("dense")
    runner.reset()
    out = runner(lat, t, ctx).float()
    runner.dit.set_attention("sagesla", 0.1)
    runner.reset()
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def ab_setup(doc: str, add_args=None) -> tuple[argparse.Namespace, dict]:
    """The A/B scripts' command line (models, resolution, forwards a round, rounds, commit, out, and what
    add_args(parser) adds) and the report they fill in per model."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    if add_args is not None:
        add_args(ap)
    ap.add_argument("--models", default="Wan2.1-1.3B,Wan2.1-14B")
    ap.add_argument("--resolution", default="480p")
    ap.add_argument("--forwards", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--commit", default="")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    report = {"env": environment(torch.device("cuda"), args.commit or None, " ".join(sys.argv)),
              "date": time.strftime("%Y-%m-%d"), "models": {}}
    return args, report


def forward_inputs(resolution: str, rows: int = PROMPT_ROWS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, timestep, text context of `rows` prompt rows, unpadded) of one 81-frame forward,
    seeded, bf16 on the GPU."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    lat = torch.randn(latent_shape(resolution, 81), generator=g, device=dev).bfloat16()
    ctx = torch.randn(1, rows, 4096, generator=g, device=dev).bfloat16()
    return lat, torch.tensor([500.0], device=dev), ctx


def record(report: dict, model: str, row: dict, out: Path | None) -> None:
    """File one model's row, with the peak GPU memory so far, print it without the raw times and write
    the report so far to `out` (a later model running out of memory keeps the earlier ones)."""
    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report["models"][model] = row
    print(model, json.dumps({k: v for k, v in row.items() if k != "ms"}), flush=True)
    if out:
        out.write_text(json.dumps(report, indent=1))


def main() -> None:
    args, report = ab_setup(__doc__)
    for model in args.models.split(","):
        lat, t, ctx = forward_inputs(args.resolution)
        with torch.inference_mode():
            runner = build(model, None)
            want = runner(lat, t, ctx).float()
            want_dense = dense_output(runner, lat, t, ctx)
            del runner
            torch.cuda.empty_cache()
            runners = {s: build(model, s) for s in VARIANTS}
            row = {"ms": {s: [] for s in runners}, "rel_err_vs_bf16": {}}
            for s, r in runners.items():
                use(s)
                r(lat, t, ctx)  # eager call; the next one captures
                row["rel_err_vs_bf16"][s] = round(rel(r(lat, t, ctx).float(), want), 5)
            for _ in range(args.rounds):
                for s, r in runners.items():
                    use(s)
                    row["ms"][s] += [cuda_ms(lambda: r(lat, t, ctx)) for _ in range(args.forwards)]
            row["median_ms"] = {s: round(statistics.median(v), 2) for s, v in row["ms"].items()}
            row["rel_err_vs_bf16_dense_attention"] = {}
            for s, r in runners.items():
                use(s)
                row["rel_err_vs_bf16_dense_attention"][s] = round(rel(dense_output(r, lat, t, ctx), want_dense), 5)
            del runners
            torch.cuda.empty_cache()
        record(report, model, row, args.out)


if __name__ == "__main__":
    main()
