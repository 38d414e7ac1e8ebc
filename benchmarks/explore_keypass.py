"""Exploration (dev tool, run on the device): variants of the block map's key pass, timed against
the shipped kernel (turbovid/ops/attention/blockmap.py) on the DiT's real shapes.

The key pass reads K and V once (at 480p, 1.3B: 2 x 100 MB) and should run near copy bandwidth,
but measured 0.2 ms (1.3B) and 0.85 ms (14B) per layer. Run 1 (2026-11-26-explore-keypass-h100-run1.json)
timed kernel variants: one reciprocal per row for phi's normalisation and 64-row halves of each
key block did not help; the launch did (4 warps for key blocks of 64; the chunking: the kernel
holds one program per SM, so programs beyond a whole wave cost a wave). This script times the
shipped kernel under the shipped launch rule (blockmap.key_launch / key_chunk_blocks) against the
earlier rule (8 warps, chunks for two programs per SM) and other chunkings, checking every
launch's statistics against the first.

    python3 benchmarks/explore_keypass.py [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.ops.attention import blockmap  # noqa: E402


def run(k, v, blkk, vabsmax, chb=None, warps=None, stages=3, ppsm=None):
    """Time the shipped key pass; chb None = the shipped chunking rule, else that many blocks a program."""
    _, L, H, D = k.shape
    nk = triton.cdiv(L, blkk)
    sms = torch.cuda.get_device_properties(k.device).multi_processor_count
    cfg = blockmap.StatsConfig(key_warps=warps, programs_per_sm=ppsm)
    warps, per_sm = blockmap.key_launch(blkk, cfg)
    if chb is None:
        chb = blockmap.key_chunk_blocks(nk, H, per_sm * sms, max(1, 256 // blkk))
    nch = triton.cdiv(nk, chb)
    f32 = dict(dtype=torch.float32, device=k.device)
    pk, ks, ps, vm = (torch.empty(H, n, D, **f32) for n in (nk, nch, nch, nch))
    kv = torch.empty(H, nch, D, D, **f32)

    def launch():
        blockmap._key_pass_kernel[(nch, H)](
            k, v, pk, ks, ps, kv, vm, k, v,
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
            L, H, nk, nch, chb, D=D, BLKK=blkk, LINEAR=True, VABSMAX=vabsmax, COPY=False,
            STAGES=stages, num_warps=warps)

    def whole():  # with the partial sums the caller does
        launch()
        return ks.sum(1), ps.sum(1), kv.sum(1)

    launch()
    torch.cuda.synchronize()
    stats = (pk, ks.sum(1), ps.sum(1), kv.sum(1), vm.amax(1) if vabsmax else None)
    ms = triton.testing.do_bench(launch, warmup=25, rep=100)
    ms_whole = triton.testing.do_bench(whole, warmup=25, rep=100)
    return {"chb": chb, "programs": H * nch, "warps": warps, "ms": round(ms, 4), "ms_with_sums": round(ms_whole, 4)}, stats


def close(a, b) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        if x is None:
            continue
        worst = max(worst, ((x - y).norm() / y.norm().clamp_min(1e-30)).item())
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cases = {  # name: (heads, key block, V absmax as sagesla asks)
        "1.3B sagesla (H12, blkk128)": (12, 128, True),
        "1.3B sla (H12, blkk64)": (12, 64, False),
        "14B sagesla (H40, blkk128)": (40, 128, True),
        "14B sla (H40, blkk64)": (40, 64, False),
    }
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    for name, (heads, blkk, vabsmax) in cases.items():
        k = torch.randn(1, 32760, heads, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        nk = triton.cdiv(32760, blkk)
        old_chb = triton.cdiv(nk, max(1, min(nk, triton.cdiv(2 * sms, heads))))
        launches = {"shipped rule": {}, "earlier rule (8 warps, 2 per SM)": dict(chb=old_chb, warps=8)}
        for n in (1, 2, 4, 8):
            launches[f"chb for {n} wave(s)"] = dict(chb=triton.cdiv(nk, max(1, n * sms // heads)))
        rows, base = {}, None
        for lname, kw in launches.items():
            try:
                row, stats = run(k, v, blkk, vabsmax, **kw)
                base = stats if base is None else base
                row["max_rel_vs_first"] = close(stats, base)
                rows[lname] = row
            except Exception as e:  # noqa: BLE001 - e.g. out of resources
                rows[lname] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        results[name] = rows
        print(name)
        for lname, row in rows.items():
            if "ms" in row:
                gbs = 2 * k.numel() * 2 / row["ms"] / 1e6
                print(f"  {lname:34s} chb {row['chb']:4d} programs {row['programs']:5d} w{row['warps']}  "
                      f"{row['ms']:.4f} ms ({row['ms_with_sums']:.4f} with sums) {gbs:5.0f} GB/s  rel {row['max_rel_vs_first']:.1e}")
            else:
                print(f"  {lname:34s} {row['error']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
