"""sagesla's Gluon launch on sla's block map against the Triton launch on the Hopper map, one process (device).

1. Accuracy at 480p (B = 1, 12 heads, head_dim 128, topk 0.1, random and outlier inputs) against
   the float32 reference with the same block map: the whole op and the quantized sparse part alone
   (cosine, relative L2; the issue's bar is >= 0.999 and <= 3e-2), for both launches.
2. Timings in interleaved rounds (bench.timing.interleaved_ms), random inputs and proj_l, bf16
   output and the fp8 output the DiT's o-projection takes: sla (shipped), sagesla on the Hopper
   map (Triton, the default before), sagesla on sla's map (Gluon, the default on sm_90 now; its
   Triton fallback on the same map), at 1.3B 480p / 720p and 14B 480p; dense cuDNN SDPA at 480p.
3. A per-kernel profile of each sagesla launch's whole op at 480p.

    PYTHONPATH=$PWD python3 benchmarks/ab_sagesla_gluon.py [--out F] [--rounds 3] [--skip-correctness]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import traceback

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from attention_helpers import cosine, outlier_qkv, proj_params, random_qkv, rel_l2  # noqa: E402
from bench_attention import kernel_times, sparse_flops  # noqa: E402

from turbovid.bench.timing import interleaved_ms  # noqa: E402
from turbovid.ops.attention import blockmap, sagesla_gluon, sagesla_kernel, sla_kernel  # noqa: E402
from turbovid.ops.attention import sagesla_reference as sref  # noqa: E402
from turbovid.ops.attention import sla_reference as ref  # noqa: E402

D = 128
FALLBACK = sagesla_kernel.Config(num_warps=8, num_stages=2, tma=True)  # the Triton launch on sla's map
VARIANTS = {  # name -> (blkq, blkk, config)
    "sagesla Hopper map, Triton (before)": (64, 128, None),
    "sagesla sla map, Gluon (now)": (128, 64, None),
    "sagesla sla map, Triton (fallback)": (128, 64, FALLBACK),
    "sagesla sla map, Gluon, 4 stages": (128, 64, sagesla_kernel.Config(gluon=True, gluon_stages=4)),
}


def correctness(results: dict) -> None:
    rows = []
    w, b = proj_params(D, "cuda")
    for name, maker in (("480p random", random_qkv), ("480p outliers", outlier_qkv)):
        q, k, v = maker(1, 32760, 12, D, torch.bfloat16, device="cuda", seed=31)
        for variant, (bq, bk, cfg) in VARIANTS.items():
            stats = blockmap.block_stats(q, k, v, 0.1, bq, bk, v_absmax=True)
            if cfg is not None and cfg.linear_in_pool:  # its own statistics: the query pass adds the branch
                lin = torch.empty_like(q)
                stats = blockmap.block_stats(q, k, v, 0.1, bq, bk, v_absmax=True, linear_out=lin, proj_weight=w,
                                             proj_bias=b)
            lut = stats.lut.view(1, 12, -1, stats.kk)
            expected = ref.sla_reference(q, k, v, 0.1, w, b, bq, bk, lut=lut)
            sparse = ref.sparse_attention(q, k, v, lut, bq, bk)
            out = sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b, bq, bk, config=cfg, stats=stats)
            alone = sagesla_kernel.sagesla_forward(q, k, v, 0.1, None, None, bq, bk, config=cfg,
                                                   stats=blockmap.block_stats(q, k, v, 0.1, bq, bk, linear=False,
                                                                              v_absmax=True))
            group = 2 if bq == 128 and (cfg is None or cfg.gluon) else 1  # the Gluon launch's softmax steps
            emulated = sref.sagesla_sparse_emulated(q, k, v, lut, bq, bk, group=group)
            row = {"case": name, "variant": variant, "kk": stats.kk, "cos": cosine(out, expected),
                   "rel_l2": rel_l2(out, expected), "sparse_cos": cosine(alone, sparse),
                   "sparse_rel_l2": rel_l2(alone, sparse), "sparse_rel_l2_vs_emulation": rel_l2(alone, emulated)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    results["correctness"] = rows


def timings(results: dict, rounds: int) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    w, b = proj_params(D, "cuda")
    bench = lambda fn: do_bench(fn, warmup=30, rep=150, return_mode="median")  # noqa: E731
    for shape, L, H in (("1.3B 480p", 32760, 12), ("1.3B 720p", 75600, 12), ("14B 480p", 32760, 40)):
        q, k, v = random_qkv(1, L, H, D, torch.bfloat16, device="cuda", seed=13)
        if shape == "1.3B 480p":
            qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                dense = bench(lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh))
            rows.append({"shape": shape, "impl": "dense SDPA cuDNN", "ms": dense})
            print(json.dumps(rows[-1]), flush=True)
        fns = {"sla (shipped)": lambda: sla_kernel.sla_forward(q, k, v, 0.1, w, b)}
        flops = {}
        for variant, (bq, bk, cfg) in VARIANTS.items():
            fns[variant] = lambda bq=bq, bk=bk, cfg=cfg: sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b, bq, bk,
                                                                                         config=cfg)
            fns[variant + ", fp8 output"] = (lambda bq=bq, bk=bk, cfg=cfg: sagesla_kernel.sagesla_forward(
                q, k, v, 0.1, w, b, bq, bk, config=cfg, out_fp8=True))
            st = blockmap.block_stats(q, k, v, 0.1, bq, bk, v_absmax=True)
            flops[variant] = sparse_flops(st.lut, L, bq, bk)
            fns[variant + ", block statistics"] = (lambda bq=bq, bk=bk: blockmap.block_stats(
                q, k, v, 0.1, bq, bk, v_absmax=True))
            if cfg is not None and cfg.linear_in_pool:
                continue  # the statistics hold the linear branch: "after them" is not this launch alone
            fns[variant + ", after the block statistics"] = (lambda bq=bq, bk=bk, cfg=cfg, st=st:
                                                             sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b, bq, bk,
                                                                                            config=cfg, stats=st))
        ok = {}
        for name, fn in fns.items():
            try:
                fn()
                torch.cuda.synchronize()
                ok[name] = fn
            except Exception as e:
                rows.append({"shape": shape, "impl": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                print(rows[-1], flush=True)
        for name, ts in interleaved_ms(ok, bench, rounds).items():
            ms = statistics.median(ts)
            row = {"shape": shape, "L": L, "H": H, "impl": name, "ms": ms, "all_ms": ts}
            base = next((v for v in VARIANTS if name.startswith(v)), None)
            if base is not None and name.endswith("after the block statistics"):
                row["sparse_tops"] = flops[base] / ms / 1e9
            rows.append(row)
            print(json.dumps(row), flush=True)
        del q, k, v, fns, ok
        torch.cuda.empty_cache()
    results["timings"] = rows


def breakdown(results: dict) -> None:
    """Per-kernel GPU time of each sagesla launch's whole op at 1.3B 480p, topk 0.1, us per call."""
    q, k, v = random_qkv(1, 32760, 12, D, torch.bfloat16, device="cuda", seed=14)
    w, b = proj_params(D, "cuda")
    results["breakdown_us_480p"] = {
        variant: kernel_times(lambda bq=bq, bk=bk, cfg=cfg: sagesla_kernel.sagesla_forward(
            q, k, v, 0.1, w, b, bq, bk, config=cfg), top=12)
        for variant, (bq, bk, cfg) in VARIANTS.items()}
    print(json.dumps(results["breakdown_us_480p"], indent=1), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "ab-sagesla-gluon.json"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-correctness", action="store_true")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    q = torch.empty(1, 128, 1, D, dtype=torch.bfloat16, device="cuda")
    results = {"date": datetime.date.today().isoformat(), "card": props.name, "torch": torch.__version__,
               "triton": triton.__version__, "commit": os.environ.get("TURBOVID_COMMIT", "unknown"),
               "gluon_available": sagesla_gluon.available(q, 128, 64, 2),
               "command": "PYTHONPATH=$PWD python3 benchmarks/ab_sagesla_gluon.py " + " ".join(sys.argv[1:])}
    steps = [] if args.skip_correctness else [("correctness", lambda: correctness(results))]
    steps += [("timings", lambda: timings(results, args.rounds)), ("breakdown", lambda: breakdown(results))]
    for name, step in steps:
        try:
            step()
        except Exception:
            results[f"{name}_error"] = traceback.format_exc()[-3000:]
            print(results[f"{name}_error"], flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
