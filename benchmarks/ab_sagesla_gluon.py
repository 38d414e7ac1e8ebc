"""SageSLA's attention launch in Gluon (sagesla_gluon.py) against the Triton launch, one process (device).

Interleaved rounds (bench.timing.interleaved_ms), B = 1, 12 heads, head_dim 128, bf16, topk 0.1:
the attention launch alone (block statistics and the K / V quantization done once, the linear
branch from the query pass for both) and the whole op, at 480p and 720p; then the torch
profiler's per-kernel split of both whole ops at 480p.

    PYTHONPATH=$PWD python3 benchmarks/ab_sagesla_gluon.py [--out F] [--rounds 3]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from attention_helpers import proj_params, random_qkv  # noqa: E402

from turbovid.bench.timing import interleaved_ms  # noqa: E402
from turbovid.ops.attention import blockmap, sagesla_gluon, sagesla_kernel  # noqa: E402
from turbovid.ops.attention.sagesla_reference import LOG2E  # noqa: E402

H, D = 12, 128
TRITON = sagesla_kernel.Config(num_warps=4, num_stages=3, tma=True)  # linear branch in its epilogue
TRITON_POOL = sagesla_kernel.Config(num_warps=4, num_stages=3, tma=True, linear_in_pool=True)
GLUON_POOL = sagesla_kernel.Config(num_warps=4, num_stages=3, tma=True, linear_in_pool=True, gluon=True)
GLUON = sagesla_kernel.Config(num_warps=4, num_stages=3, tma=True, gluon=True)  # linear branch in its epilogue


def profile(fn) -> dict:
    from torch.profiler import ProfilerActivity, profile as prof_ctx

    fn()
    torch.cuda.synchronize()
    with prof_ctx(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            rows[e.key[:60]] = round(t / 10, 1)
    return dict(sorted(rows.items(), key=lambda kv: -kv[1])[:10])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "ab-sagesla-gluon.json"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    res = {"date": datetime.date.today().isoformat(), "card": props.name, "torch": torch.__version__,
           "triton": triton.__version__, "commit": os.environ.get("TURBOVID_COMMIT", "unknown"),
           "command": "PYTHONPATH=$PWD python3 benchmarks/ab_sagesla_gluon.py " + " ".join(sys.argv[1:]), "rows": []}
    w, b = proj_params(D, "cuda")
    bench = lambda fn: do_bench(fn, warmup=30, rep=120, return_mode="median")  # noqa: E731
    for shape, L in (("480p", 32760), ("720p", 75600)):
        q, k, v = random_qkv(1, L, H, D, torch.bfloat16, device="cuda", seed=13)
        lin = torch.empty_like(q)
        st = blockmap.block_stats(q, k, v, 0.1, 64, 128, v_absmax=True, linear_out=lin, proj_weight=w, proj_bias=b)
        kq, k_scale, vt, vt2, v_from = sagesla_kernel.quantize_kv(k, v, st, 128, 2)
        out = torch.empty_like(q)
        fns = {
            "triton attention (stats given, linear from the pool)": lambda: sagesla_kernel.sagesla_forward(
                q, k, v, 0.1, w, b, config=TRITON_POOL, stats=st),
            "gluon attention kernel alone": lambda: sagesla_gluon.attention(
                q, kq, k_scale, vt, vt2, v_from, out, st.lut, st.kk, 0, D**-0.5 * LOG2E),
            "gluon attention (stats given, linear from the pool)": lambda: sagesla_kernel.sagesla_forward(
                q, k, v, 0.1, w, b, config=GLUON_POOL, stats=st),
            "triton whole op (linear in epilogue)": lambda: sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b,
                                                                                           config=TRITON),
            "triton whole op (linear from the pool)": lambda: sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b,
                                                                                             config=TRITON_POOL),
            "gluon whole op (linear from the pool)": lambda: sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b,
                                                                                            config=GLUON_POOL),
            "gluon whole op (linear in epilogue)": lambda: sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b,
                                                                                          config=GLUON),
            "shipped default": lambda: sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b),
        }
        for fn in fns.values():
            fn()
        torch.cuda.synchronize()
        for name, ts in interleaved_ms(fns, bench, args.rounds).items():
            row = {"shape": shape, "impl": name, "ms": statistics.median(ts), "all_ms": ts}
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
        if shape == "480p":
            res["profile_480p"] = {name: profile(fns[name]) for name in
                                   ("triton whole op (linear in epilogue)", "gluon whole op (linear in epilogue)")}
            print(json.dumps(res["profile_480p"], indent=1), flush=True)
        del q, k, v, lin, st, kq, vt, vt2, out
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
