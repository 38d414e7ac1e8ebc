"""The sla attention launch in Gluon (sla_gluon.py) against the Triton launch, one process (device).

1. Correctness: the Gluon launch against the float32 reference (the GPU test's bound: 2x the bf16
   reference's error + 1e-3) and against the Triton launch, at 480p and on edge cases (batch 2 with
   ragged lengths, one kept block, an odd count, no linear branch, fp16, q/k/v slices of one qkv
   tensor).
   The shipped sagesla against the float32 reference too.
2. Timings in interleaved rounds (bench.timing.interleaved_ms), B = 1, 12 heads, head_dim 128,
   bf16: the attention launch alone (block statistics computed once) and the whole op, for the
   Triton launch, Gluon configs (linear branch in the query pass or the epilogue), the shipped
   default, the shipped sagesla, TurboDiffusion's SLA module (from .ref/, when carried) and
   dense cuDNN SDPA, at 480p (topk 0.1, 0.15) and 720p (0.1), with the sparse part's TFLOP/s;
   block statistics for query-pool launches; a per-kernel profile of the shipped sla at 480p.

    PYTHONPATH=$PWD python3 benchmarks/ab_sla_gluon.py [--out F] [--rounds 3] [--configs 2x2,1x4]
        [--pools 32x4,0x8] [--skip-correctness]
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
from attention_helpers import cosine, max_err, outlier_qkv, proj_params, random_qkv, rel_l2  # noqa: E402
from bench_attention import kernel_times, load_reference_module, sparse_flops  # noqa: E402

from turbovid.bench.timing import interleaved_ms  # noqa: E402
from turbovid.ops.attention import blockmap, sagesla_kernel, sla_gluon, sla_kernel  # noqa: E402
from turbovid.ops.attention import sla_reference as ref  # noqa: E402

H, D = 12, 128
TRITON = sla_kernel.Config(group=1, num_warps=4, num_stages=2, tma=False, linear_in_pool=True)


GLUON_POOL = sla_kernel.Config(group=1, num_warps=4, num_stages=2, tma=False, linear_in_pool=True, gluon=True)
GLUON = sla_kernel.Config(group=1, num_warps=4, num_stages=2, tma=False, linear_in_pool=False, gluon=True)


def correctness(results: dict) -> None:
    rows = []

    def case(name, q, k, v, topk, w, b):
        if not sla_gluon.available(q, k, v, 128, 64):
            rows.append({"case": name, "error": "sla_gluon.available() is False"})
            return
        stats = blockmap.block_stats(q, k, v, topk, 128, 64)
        lut = stats.lut.view(q.shape[0], q.shape[2], -1, stats.kk)
        out = sla_kernel.sla_forward(q, k, v, topk, w, b, config=GLUON)
        pooled = sla_kernel.sla_forward(q, k, v, topk, w, b, config=GLUON_POOL)
        tri = sla_kernel.sla_forward(q, k, v, topk, w, b, config=TRITON)
        expected = ref.sla_reference(q, k, v, topk, w, b, 128, 64, lut=lut)
        low = ref.sla_reference(q, k, v, topk, w, b, 128, 64, dtype=torch.bfloat16, lut=lut)
        err, bound = max_err(out, expected), 2 * max_err(low, expected) + 1e-3
        row = {"case": name, "kk": stats.kk, "gluon_max_err": err, "bound": bound, "ok": bool(err <= bound),
               "triton_max_err": max_err(tri, expected), "rel_l2_vs_triton": rel_l2(out, tri),
               "gluon_pool_linear_max_err": max_err(pooled, expected),
               "finite": bool(torch.isfinite(out).all())}
        rows.append(row)
        print(json.dumps(row), flush=True)

    w, b = proj_params(D, "cuda")
    q, k, v = random_qkv(1, 32760, H, D, torch.bfloat16, device="cuda", seed=21)
    case("480p topk 0.1", q, k, v, 0.1, w, b)
    case("480p topk 0.15", q, k, v, 0.15, w, b)
    case("480p no linear branch", q, k, v, 0.1, None, None)
    del q, k, v
    q, k, v = random_qkv(2, 5000, 4, D, torch.bfloat16, device="cuda", seed=22)
    case("B=2 L=5000 topk 0.15", q, k, v, 0.15, w, b)
    case("B=2 L=5000 topk 0.3 (odd kk?)", q, k, v, 0.3, w, b)
    q, k, v = random_qkv(1, 300, 2, D, torch.bfloat16, device="cuda", seed=23)
    case("L=300 one kept block", q, k, v, 0.1, w, b)
    case("L=300 all blocks", q, k, v, 1.0, w, b)
    q, k, v = random_qkv(2, 1000, 3, D, torch.float16, device="cuda", seed=24)
    case("fp16 B=2 L=1000", q, k, v, 0.2, w, b)
    qkv = torch.randn(2, 3000, 3, 6, D, device="cuda", dtype=torch.bfloat16)
    case("slices of qkv B=2 L=3000", qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], 0.1, w, b)
    results["correctness"] = rows
    sage_correctness(results)


def sage_correctness(results: dict) -> None:
    """The shipped sagesla launch against the float32 reference (same block map): whole output and
    the quantized sparse part alone."""
    rows = []
    w, b = proj_params(D, "cuda")
    for name, maker, B, L, Hh, topk in (("480p random", random_qkv, 1, 32760, H, 0.1),
                                        ("480p outliers", outlier_qkv, 1, 32760, H, 0.1),
                                        ("B=2 L=5000 outliers", outlier_qkv, 2, 5000, 4, 0.15),
                                        ("L=300 one block", outlier_qkv, 1, 300, 2, 0.1)):
        q, k, v = maker(B, L, Hh, D, torch.bfloat16, device="cuda", seed=31)
        stats = blockmap.block_stats(q, k, v, topk, 64, 128, v_absmax=True)
        lut = stats.lut.view(B, Hh, -1, stats.kk)
        expected = ref.sla_reference(q, k, v, topk, w, b, 64, 128, lut=lut)
        sparse = ref.sparse_attention(q, k, v, lut, 64, 128)
        out = sagesla_kernel.sagesla_forward(q, k, v, topk, w, b)
        alone = sagesla_kernel.sagesla_forward(q, k, v, topk, None, None)
        row = {"case": name, "kk": stats.kk, "cos": cosine(out, expected), "rel_l2": rel_l2(out, expected),
               "sparse_cos": cosine(alone, sparse), "sparse_rel_l2": rel_l2(alone, sparse)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    results["sagesla_correctness"] = rows


def timings(results: dict, specs: list[str], pools: list[str], rounds: int) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    Ref = load_reference_module()
    rows = []
    w, b = proj_params(D, "cuda")
    bench = lambda fn: do_bench(fn, warmup=30, rep=120, return_mode="median")  # noqa: E731
    for shape, L, topks in (("480p", 32760, (0.1, 0.15)), ("720p", 75600, (0.1,))):
        q, k, v = random_qkv(1, L, H, D, torch.bfloat16, device="cuda", seed=13)
        qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            dense = do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh), warmup=30, rep=300,
                             return_mode="median")
        rows.append({"shape": shape, "L": L, "impl": "dense SDPA cuDNN", "ms": dense,
                     "tflops": 4.0 * D * L * L * H / dense / 1e9})
        print(json.dumps(rows[-1]), flush=True)
        for topk in topks:
            lin = torch.empty_like(q)
            st = blockmap.block_stats(q, k, v, topk, 128, 64, linear_out=lin, proj_weight=w, proj_bias=b)
            flops = sparse_flops(st.lut, L, 128, 64)
            fns = {"triton attention": lambda: sla_kernel.sla_forward(q, k, v, topk, w, b, config=TRITON, stats=st),
                   "triton whole op": lambda: sla_kernel.sla_forward(q, k, v, topk, w, b, config=TRITON),
                   "gluon whole op, linear branch in the query pass": lambda: sla_kernel.sla_forward(
                       q, k, v, topk, w, b, config=GLUON_POOL),
                   "gluon whole op, linear branch in the epilogue": lambda: sla_kernel.sla_forward(
                       q, k, v, topk, w, b, config=GLUON),
                   "shipped default": lambda: sla_kernel.sla_forward(q, k, v, topk, w, b)}
            fns["sagesla (shipped)"] = lambda: sagesla_kernel.sagesla_forward(q, k, v, topk, w, b)
            if Ref is not None:
                mod = Ref(head_dim=D, topk=topk, BLKQ=128, BLKK=64).cuda()
                fns["reference SLA (TurboDiffusion Triton)"] = lambda mod=mod: mod(q, k, v)
            for pool in pools:  # the block statistics (key pass, query pool + linear branch, select)
                rows_, warps_ = (int(x) for x in pool.split("x"))
                sc = blockmap.StatsConfig(pool_rows=rows_, pool_warps=warps_)
                fns[f"block stats, pool {pool}"] = (lambda sc=sc: blockmap.block_stats(
                    q, k, v, topk, 128, 64, linear_out=lin, proj_weight=w, proj_bias=b, cfg=sc))
            kvw = blockmap.fold_proj(st.kv, w, q.dtype)
            out1 = torch.empty_like(q)
            base = None
            for spec in specs:  # the attention launch alone (lin_mode 2 adds into lin in place: timing only)
                group, stages = spec.split("x")
                gc = sla_gluon.Config(group=int(group), stages=int(stages))
                if gc.stages == 2:  # same bytes as the first spec (lin_mode 1 into a buffer of its own)?
                    got = sla_gluon.attention(q, k, v, torch.empty_like(q), st.lut, st.kk, 1, 128, 64, gc, kvw=kvw,
                                              phi_sum=st.phi_sum, bias=b.float())
                    base = got if base is None else base
                    rows.append({"shape": shape, "topk": topk, "impl": f"gluon {spec}",
                                 "same_bytes_as_first_spec": bool(torch.equal(got, base))})
                    print(json.dumps(rows[-1]), flush=True)
                    del got
                fns[f"gluon {spec} attention"] = (
                    lambda gc=gc: sla_gluon.attention(q, k, v, lin, st.lut, st.kk, 2, 128, 64, gc))
                if gc.stages == 2:  # room for phi(K)^T V beside the rings
                    fns[f"gluon {spec} attention, linear branch in the epilogue"] = (
                        lambda gc=gc: sla_gluon.attention(q, k, v, out1, st.lut, st.kk, 1, 128, 64, gc, kvw=kvw,
                                                          phi_sum=st.phi_sum, bias=b.float()))
            ok = {}
            for name, fn in fns.items():  # compile, and drop configs that fail
                try:
                    fn()
                    torch.cuda.synchronize()
                    ok[name] = fn
                except Exception as e:
                    rows.append({"shape": shape, "topk": topk, "impl": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                    print(rows[-1], flush=True)
            times = interleaved_ms(ok, bench, rounds)
            for name, ts in times.items():
                ms = statistics.median(ts)
                row = {"shape": shape, "L": L, "topk": topk, "impl": name, "ms": ms, "all_ms": ts,
                       "sparse_tflops": flops / ms / 1e9}
                rows.append(row)
                print(json.dumps(row), flush=True)
            del st, lin, kvw, out1
        del q, k, v, qh, kh, vh
        torch.cuda.empty_cache()
    results["timings"] = rows


def breakdown(results: dict) -> None:
    """Per-kernel GPU time of one whole op (the shipped launches) at 480p, topk 0.1, us per call."""
    q, k, v = random_qkv(1, 32760, H, D, torch.bfloat16, device="cuda", seed=14)
    w, b = proj_params(D, "cuda")
    results["breakdown_us_480p"] = kernel_times(lambda: sla_kernel.sla_forward(q, k, v, 0.1, w, b), top=14)
    print(json.dumps(results["breakdown_us_480p"], indent=1), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "ab-sla-gluon.json"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default="2x2,2x3", help="Gluon configs: group x stages, comma-separated")
    ap.add_argument("--pools", default="0x8,32x4,16x4,64x8", help="query pool launches: rows a step x warps")
    ap.add_argument("--skip-correctness", action="store_true")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    results = {"date": datetime.date.today().isoformat(), "card": props.name, "torch": torch.__version__,
               "triton": triton.__version__, "commit": os.environ.get("TURBOVID_COMMIT", "unknown"),
               "command": "PYTHONPATH=$PWD python3 benchmarks/ab_sla_gluon.py " + " ".join(sys.argv[1:])}
    steps = [] if args.skip_correctness else [("correctness", lambda: correctness(results))]
    steps.append(("timings", lambda: timings(results, args.configs.split(","), args.pools.split(","), args.rounds)))
    steps.append(("breakdown", lambda: breakdown(results)))
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
