"""What would per-tensor fp8 GEMMs with cuBLAS's fast accumulation save in a whole forward? (dev tool, GPU)

explore_gemm_power.py found them 15-30% faster than the block-scaled GEMMs under the card's power cap.
This times the graphed sagesla+fp8 forward as it is, and with every cuBLAS fp8 GEMM call
(fp8_cublas._call) swapped for torch._scaled_mm with one scale per operand and use_fast_accum: same
operands, same quantization passes, so only the GEMMs' speed differs. The swapped forward's numbers
are NOT a valid output (each operand's first block scale stands for all of them); only its time
counts. Alternates the two, recapturing the CUDA graph each time.

    python3 benchmarks/explore_tensorwise.py --model Wan2.1-14B [--forwards 6] [--rounds 2] [--out F]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_forward import build_forward  # noqa: E402
from turbovid.bench.timing import cuda_ms  # noqa: E402
from turbovid.ops.quant import fp8_cublas  # noqa: E402

_block_call = fp8_cublas._call


def _tensorwise_call(a_q, a_s, w_q, w_s_cublas, bias, out_dtype, with_bias):
    # a_s [K/128, M], w_s_cublas [L4, N/128]: their first entries as 0-dim views (no kernel launch)
    y = torch._scaled_mm(a_q, w_q.t(), scale_a=a_s[0, 0], scale_b=w_s_cublas[0, 0],
                         bias=bias if with_bias else None, out_dtype=out_dtype, use_fast_accum=True)
    if bias is not None and not with_bias:
        y += bias.to(y.dtype)
    return y


def timed(runner, args, forwards: int) -> tuple[list[float], bool]:
    runner._graphs.clear()  # recapture with the GEMM now in place: eager call, capture, replay
    for _ in range(3):
        out = runner(*args)
    torch.cuda.synchronize()
    finite = bool(torch.isfinite(out).all())
    return [cuda_ms(lambda: runner(*args)) for _ in range(forwards)], finite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Wan2.1-1.3B")
    ap.add_argument("--resolution", default="480p")
    ap.add_argument("--forwards", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from turbovid.fast import FastOptions, make_fast

    dit, lat, t, ctx = build_forward(args.model, "sagesla+fp8", args.resolution, 81)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
              "resolution": args.resolution, "block": [], "tensorwise_fast": [], "finite": {}}
    with torch.inference_mode():
        runner = make_fast(dit, FastOptions())
        for r in range(args.rounds):
            for name, fn in (("block", _block_call), ("tensorwise_fast", _tensorwise_call)):
                fp8_cublas._call = fn
                ms, finite = timed(runner, (lat, t, ctx), args.forwards)
                report[name] += ms
                report["finite"][f"{name}{r}"] = finite
                print(args.model, name, r, "median ms", round(statistics.median(ms), 2), "finite", finite, flush=True)
        fp8_cublas._call = _block_call
    for name in ("block", "tensorwise_fast"):
        report[name + "_median_ms"] = round(statistics.median(report[name]), 2)
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, list)}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
