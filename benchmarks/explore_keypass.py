"""Exploration (dev tool, run on the device): variants of the block map's key pass, timed against
the shipped kernel (turbovid/ops/attention/blockmap.py) on the DiT's real shapes.

The key pass reads K and V once (at 480p, 1.3B: 2 x 100 MB) and should run near copy bandwidth,
but measured 0.2 ms (1.3B) and 0.85 ms (14B) per layer. Run 1 (2026-11-26-explore-keypass-h100-run1.json)
timed kernel variants: one reciprocal per row for phi's normalisation and 64-row halves of each
key block did not help; the launch did (4 warps for key blocks of 64; the chunking: the kernel
holds one program per SM, so programs beyond a whole wave cost a wave). Run 2 timed the shipped
launch rule (blockmap.key_launch / key_chunk_blocks) against the earlier one and other chunkings:
0.203 ms (1.3B sagesla), 0.162 ms (1.3B sla), 0.678 ms (14B sagesla).

Run 3 (this script) times blockmap._key_pass_tc_kernel (StatsConfig.key_variant "tc" and
"tc_lean", with and without tensor descriptors, key_tma) against the shipped kernel. The shipped
kernel's loop is ~1900 instructions a thread per 128-row block with ~20-35 barriers and its wgmmas
serialized by ptxas (phi^T a register operand; offline sm_90 compile, Triton 3.6); the tc kernel's
is ~1150 with 4 (K's column sums on the tensor cores, both dot operands in shared memory, phi
normalised by one reciprocal a row, sum phi and max|V| folded per thread until the end, ex2 without
the denormal fix-up). "tc_lean" steps over 32 rows at 8 warps under 128 registers, so two programs
share an SM. Each launch's statistics are compared with the shipped kernel's (largest relative
difference of pooled K, sum K, sum phi, phi^T V, max|V|), and the whole block map's lists too
(rows that differ; summation order alone can flip a near-tie).

    python benchmarks/explore_keypass.py [--out results.json] [--cases 1.3B-sagesla,...] [--list]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.ops.attention import blockmap  # noqa: E402

L = 32760  # 480p tokens
CASES = {  # name: (heads, key block, query block, V absmax as sagesla asks)
    "1.3B-sagesla": (12, 128, 64, True),
    "1.3B-sla": (12, 64, 128, False),
    "14B-sagesla": (40, 128, 64, True),
}
# launch label: StatsConfig fields (key_warps / programs_per_sm unset: blockmap.key_launch's rule)
LAUNCHES = {
    "shipped": {},
    "tc": dict(key_variant="tc"),
    "tc tma": dict(key_variant="tc", key_tma=True),
    "tc_lean": dict(key_variant="tc_lean"),
    "tc_lean tma": dict(key_variant="tc_lean", key_tma=True),
    "tc_lean tma stages 4": dict(key_variant="tc_lean", key_tma=True, key_stages=4),
    "tc_lean 1/SM": dict(key_variant="tc_lean", programs_per_sm=1),  # no register cap: does the 2nd program pay?
}
LAUNCHES_64 = {  # key blocks of 64 only (tc's rule there: 4 warps, two programs an SM). With blocks of 128, tc
    # takes 168 KB of shared memory at 3 stages: one program an SM whatever its registers
    "tc 8 warps 1/SM": dict(key_variant="tc", key_warps=8, programs_per_sm=1),
    "tc 8 warps 2/SM": dict(key_variant="tc", key_warps=8, programs_per_sm=2),
}


def stats(out: tuple, vabsmax: bool) -> list[torch.Tensor | None]:
    """The key pass's outputs as block_stats uses them: pooled K, then the chunk partials reduced."""
    pk, k_sum, phi_sum, kv, v_max, _, _ = out
    return [pk, k_sum.sum(1), phi_sum.sum(1), kv.sum(1), v_max.amax(1) if vabsmax else None]


STATS = ("pk", "k_sum", "phi_sum", "kv", "v_max")


def max_rel(a: list, b: list) -> dict[str, float]:
    """max|x - y| / max|y| of each output."""
    return {n: ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item()
            for n, x, y in zip(STATS, a, b) if x is not None}


def launch_row(cfg: blockmap.StatsConfig, q, k, v, blkq: int, blkk: int, vabsmax: bool) -> tuple[dict, list, torch.Tensor]:
    """(timings and launch, the statistics, the block map's lists) of one key-pass launch."""
    _, seq, H, _ = k.shape
    nk = triton.cdiv(seq, blkk)
    warps, per_sm = blockmap.key_launch(blkk, cfg)
    chb = blockmap.key_chunk_blocks(nk, H, per_sm * blockmap._num_sms(k.device), max(1, 256 // blkk))

    def run():
        return blockmap.key_pass(k, v, blkk, True, vabsmax, False, cfg)

    def with_sums():
        return stats(run(), vabsmax)

    got = stats(run(), vabsmax)
    lut = blockmap.block_stats(q, k, v, 0.1, blkq, blkk, v_absmax=vabsmax, cfg=cfg).lut
    ms = do_bench_cudagraph(run, rep=30)  # 10 replays of ~30 ms of calls
    row = {"cfg": {f: getattr(cfg, f) for f in ("key_variant", "key_tma", "key_stages", "key_warps", "programs_per_sm")},
           "warps": warps, "programs_per_sm": per_sm, "chb": chb, "programs": H * triton.cdiv(nk, chb),
           "ms": round(ms, 4), "ms_eager": round(do_bench(run, warmup=25, rep=100), 4),
           "ms_with_sums": round(do_bench_cudagraph(with_sums, rep=30), 4),
           "gb_per_s": round(2 * k.numel() * k.element_size() / ms / 1e6)}
    return row, got, lut


def run_case(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    """Every launch of one case, each checked against the shipped kernel's statistics and lists."""
    _, blkk, blkq, vabsmax = CASES[name]
    rows, base = {}, None
    print(name)
    for label, fields in (LAUNCHES | (LAUNCHES_64 if blkk == 64 else {})).items():
        try:
            row, got, lut = launch_row(blockmap.StatsConfig(**fields), q, k, v, blkq, blkk, vabsmax)
        except Exception as e:  # noqa: BLE001 - e.g. out of resources; the other launches still run
            rows[label] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"  {label:24s} {rows[label]['error']}")
            continue
        if label == "shipped":
            base = got, lut
        elif base is not None:
            row |= {"max_rel_vs_shipped": max_rel(got, base[0]), "lut_rows": lut.shape[0] * lut.shape[1],
                    "lut_rows_differing": int((lut != base[1]).any(-1).sum())}
        rows[label] = row
        check = ("  rel " + " ".join(f"{n} {r:.0e}" for n, r in row["max_rel_vs_shipped"].items())
                 + f", lut rows differing {row['lut_rows_differing']}/{row['lut_rows']}" if "max_rel_vs_shipped" in row else "")
        print(f"  {label:24s} w{row['warps']} {row['programs_per_sm']}/SM chb {row['chb']:3d} "
              f"{row['ms']:.4f} ms (eager {row['ms_eager']:.4f}, with sums {row['ms_with_sums']:.4f}) "
              f"{row['gb_per_s']:5d} GB/s{check}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="Time the key pass's variants against the shipped kernel (see the docstring).")
    ap.add_argument("--out", type=Path, default=None, help="JSON results")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--list", action="store_true", help="print the cases and launches, run nothing")
    args = ap.parse_args()
    cases = args.cases.split(",")
    if unknown := [c for c in cases if c not in CASES]:
        ap.error(f"unknown case(s) {unknown}")
    if args.list or not torch.cuda.is_available():
        for name in cases:
            launches = LAUNCHES | (LAUNCHES_64 if CASES[name][1] == 64 else {})
            print(f"{name}: {', '.join(launches)}")
        if not args.list:
            print("no GPU: nothing timed")
        return
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "L": L}
    for name in cases:
        heads = CASES[name][0]
        q, k, v = (torch.randn(1, L, heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        k += torch.randn(heads, 128, device="cuda", dtype=torch.bfloat16)  # channel offsets, as DiT keys have
        results[name] = run_case(name, q, k, v)
        del q, k, v
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
