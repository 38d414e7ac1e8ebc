"""A/B of the int8 GEMM inside the graphed sagesla+int8 forward, one process (run on the device): the
Triton kernel, the Gluon kernel with int8_gluon.config_for's launches (the default), and the Gluon
kernel with runs of 4 blocks everywhere. Each variant is a separate fast runner whose CUDA graph is
captured with that GEMM; the forwards are timed in alternating rounds. The velocities should agree
bit for bit (the same block sums in the same order), which the report checks.

    python3 benchmarks/ab_int8_gemm.py --models Wan2.1-1.3B [--forwards 8] [--rounds 3] [--out F]
    AB_VARIANTS="gluon (config_for)|gluon, runs of 4" python3 benchmarks/ab_int8_gemm.py ...
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab_fp8_scales import ab_setup, forward_inputs, record, rel  # noqa: E402
from turbovid.bench.cases import variant_dit  # noqa: E402
from turbovid.bench.timing import cuda_ms  # noqa: E402
from turbovid.ops.quant import int8_gluon  # noqa: E402

# name: the GEMM's launch per weight shape (None: the Triton kernel)
VARIANTS = {"triton": None, "gluon (config_for)": int8_gluon.config_for,
            "gluon, runs of 4": lambda n, k: int8_gluon.Config(unroll=4)}


def main() -> None:
    args, report = ab_setup(__doc__)
    real_config_for = int8_gluon.config_for
    only = os.environ.get("AB_VARIANTS")  # a subset, names separated by "|"
    variants = {k: v for k, v in VARIANTS.items() if not only or k in only.split("|")}
    for model in args.models.split(","):
        lat, t, ctx = forward_inputs(args.resolution)
        with torch.inference_mode():
            from turbovid.fast import make_fast

            dit = variant_dit(model, "sagesla+int8", torch.device("cuda"), torch.bfloat16, 0.1)
            runners, outs = {}, {}
            for name, pick in variants.items():  # the GEMM is chosen when the graph is captured
                os.environ["TURBOVID_GLUON"] = "0" if pick is None else "1"
                int8_gluon.config_for = pick or real_config_for
                runners[name] = make_fast(dit)
                runners[name](lat, t, ctx)  # eager call; the next one captures
                outs[name] = runners[name](lat, t, ctx).float()
            os.environ["TURBOVID_GLUON"] = "1"
            int8_gluon.config_for = real_config_for
            row = {"ms": {name: [] for name in runners}}
            for _ in range(args.rounds):
                for name, r in runners.items():
                    row["ms"][name] += [cuda_ms(lambda: r(lat, t, ctx)) for _ in range(args.forwards)]
            row["median_ms"] = {name: round(statistics.median(v), 2) for name, v in row["ms"].items()}
            first = next(iter(outs))
            row[f"rel_diff_vs_{first}"] = {name: rel(o, outs[first]) for name, o in outs.items()}
            del runners, outs, dit
            torch.cuda.empty_cache()
        record(report, model, row, args.out)


if __name__ == "__main__":
    main()
