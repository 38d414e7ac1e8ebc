"""Exploration (dev tool, run on the device): the block map's key pass (blockmap._key_pass_kernel)
under launch settings, optionally against a baseline copy of blockmap.py, on the DiT's real shapes.
The record of how the key pass was tuned.

The key pass reads K and V once (at 480p, 1.3B: 2 x 100 MB) and should run near copy bandwidth,
but measured 0.2 ms (1.3B) and 0.85 ms (14B) per layer. Runs 1-2 timed the earlier kernel (K and
phi summed across warps, phi^T V with phi^T a register operand). Run 1
(results/2026-11-26-explore-keypass-h100-run1.json): one reciprocal per row for phi's
normalisation and 64-row halves of each key block did not help; the launch did (4 warps for key
blocks of 64; the chunking: the kernel held one program per SM, so programs beyond a whole wave
cost a wave). Run 2 timed that launch rule (blockmap.key_launch / key_chunk_blocks) against the
earlier one and other chunkings: 0.203 ms (1.3B sagesla), 0.162 ms (1.3B sla), 0.678 ms (14B sagesla).

Run 3 (results/2026-11-26-explore-keypass-h100-run3.json, commit 9e681ef) timed variants of a
kernel with the sums on the tensor cores against the earlier kernel: "tc" (a key block a step),
"tc_lean" (32 rows a step at 8 warps under 128 registers, two programs an SM), each with pointer
loads or tensor descriptors ("tma"). The earlier kernel's loop was ~1900 instructions a thread per
128-row block with ~20-35 barriers and its wgmmas serialized by ptxas (offline sm_90 compile,
Triton 3.6); the new one's ~1150 with 4. "tc_lean tma" was the fastest at every shape: 0.193 ->
0.092 ms (1.3B sagesla), 0.155 -> 0.086 ms (1.3B sla), 0.686 -> 0.281 ms (14B sagesla), the same
block lists; "tc" was never faster, 4 stages within 1% of 3. That kernel is now the only key pass.
Run 4 (results/2026-11-26-explore-keypass-h100-run4.json, commit 4881e8d, against 9e681ef's
blockmap.py as the baseline) found 4 warps, two programs an SM without a register cap faster than
run 3's 8 warps under 128 registers: 0.084 / 0.085 / 0.262 ms against 0.090 / 0.086 / 0.282 ms
(the model's forward with the new key pass, profile_forward.py in the same call: 1.3B 173.2 vs
178.2 ms, 14B 1079.8 vs 1090.0 ms against the baseline). That is StatsConfig's default now, the
"shipped" row below; "8 warps 2/SM" is run 3's "tc_lean tma" and "rows of a block 1/SM" its "tc
tma" at key blocks of 128.

Each launch's statistics (pooled K, sum K, sum phi, phi^T V, max|V|: largest relative difference)
and block lists (rows that differ; summation order alone can flip a near-tie) are checked against
the baseline's, or without one against the shipped launch's. A baseline is a module with its own
key_pass / block_stats / StatsConfig, e.g. the earlier kernel:

    git show 9e681ef:turbovid/ops/attention/blockmap.py > turbovid/ops/attention/_blockmap_before.py
    python benchmarks/explore_keypass.py [--baseline turbovid.ops.attention._blockmap_before]
        [--out results.json] [--cases 1.3B-sagesla,...] [--list]
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

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
LAUNCHES = {  # label: StatsConfig fields; "shipped" first (the defaults: blockmap.key_launch's rule)
    "shipped": {},
    "pointer loads": dict(key_tma=False),
    "stages 4": dict(key_stages=4),
    "1/SM": dict(programs_per_sm=1),  # no register cap: does the second program pay?
    "8 warps 2/SM": dict(key_warps=8),  # under a 128-register cap
    "4 warps 3/SM": dict(programs_per_sm=3),  # under 168
    "rows of a block 1/SM": dict(key_rows=128, key_warps=8, programs_per_sm=1),
}
STATS = ("pk", "k_sum", "phi_sum", "kv", "v_max")


def stats(out: tuple, vabsmax: bool) -> list[torch.Tensor | None]:
    """The key pass's outputs as block_stats uses them: pooled K, then the chunk partials reduced."""
    pk, k_sum, phi_sum, kv, v_max, _, _ = out
    return [pk, k_sum.sum(1), phi_sum.sum(1), kv.sum(1), v_max.amax(1) if vabsmax else None]


def max_rel(a: list, b: list) -> dict[str, float]:
    """max|x - y| / max|y| of each output."""
    return {n: ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item()
            for n, x, y in zip(STATS, a, b) if x is not None and y is not None}


def measure(mod: ModuleType, cfg, q, k, v, blkq: int, blkk: int, vabsmax: bool) -> tuple[dict, list, torch.Tensor]:
    """(timings, the statistics, the block map's lists) of mod's key pass under cfg (mod.StatsConfig)."""

    def run():
        return mod.key_pass(k, v, blkk, True, vabsmax, False, cfg)

    def with_sums():
        return stats(run(), vabsmax)

    got = stats(run(), vabsmax)
    lut = mod.block_stats(q, k, v, 0.1, blkq, blkk, v_absmax=vabsmax, cfg=cfg).lut
    ms = do_bench_cudagraph(run, rep=30)  # 10 replays of ~30 ms of calls
    row = {"ms": round(ms, 4), "ms_eager": round(do_bench(run, warmup=25, rep=100), 4),
           "ms_with_sums": round(do_bench_cudagraph(with_sums, rep=30), 4),
           "gb_per_s": round(2 * k.numel() * k.element_size() / ms / 1e6)}
    return row, got, lut


def launch(cfg: blockmap.StatsConfig, k: torch.Tensor, blkk: int) -> dict:
    """How blockmap.key_pass launches under cfg."""
    _, seq, H, _ = k.shape
    nk = triton.cdiv(seq, blkk)
    warps, per_sm, maxnreg = blockmap.key_launch(cfg)
    chb = blockmap.key_chunk_blocks(nk, H, per_sm * blockmap._num_sms(k.device), max(1, 256 // blkk))
    return {"cfg": {f: getattr(cfg, f) for f in ("key_tma", "key_rows", "key_stages", "key_warps", "programs_per_sm")},
            "warps": warps, "programs_per_sm": per_sm, "maxnreg": maxnreg, "rows": min(blkk, cfg.key_rows),
            "tma": cfg.key_tma and blockmap.TensorDescriptor is not None and blockmap._tma_view(k),
            "chb": chb, "programs": H * triton.cdiv(nk, chb)}


def run_case(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, base: ModuleType | None) -> dict:
    """The baseline (if any) and every launch, each checked against the first one's statistics and lists."""
    _, blkk, blkq, vabsmax = CASES[name]
    todo = [("baseline", base, base.StatsConfig())] if base is not None else []
    todo += [(label, blockmap, blockmap.StatsConfig(**fields)) for label, fields in LAUNCHES.items()]
    rows, first = {}, None
    print(name)
    for label, mod, cfg in todo:
        try:
            row, got, lut = measure(mod, cfg, q, k, v, blkq, blkk, vabsmax)
        except Exception as e:  # noqa: BLE001 - e.g. out of resources; the other launches still run
            rows[label] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"  {label:22s} {rows[label]['error']}")
            continue
        desc = ""
        if mod is blockmap:
            row = launch(cfg, k, blkk) | row
            desc = (f"w{row['warps']} {row['programs_per_sm']}/SM regs {row['maxnreg'] or '-':3} rows {row['rows']:3d} "
                    f"{'tma' if row['tma'] else 'ptr'} s{cfg.key_stages} chb {row['chb']:3d} ")
        check = ""
        if first is None:
            first = got, lut
        else:
            row |= {"max_rel_vs_first": max_rel(got, first[0]), "lut_rows": lut.shape[0] * lut.shape[1],
                    "lut_rows_differing": int((lut != first[1]).any(-1).sum())}
            check = ("  rel " + " ".join(f"{n} {r:.0e}" for n, r in row["max_rel_vs_first"].items())
                     + f", lut rows differing {row['lut_rows_differing']}/{row['lut_rows']}")
        rows[label] = row
        print(f"  {label:22s} {desc}{row['ms']:.4f} ms (eager {row['ms_eager']:.4f}, with sums "
              f"{row['ms_with_sums']:.4f}) {row['gb_per_s']:5d} GB/s{check}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="Time the key pass under launch settings (see the docstring).")
    ap.add_argument("--baseline", default=None, help="module path of a blockmap to compare against")
    ap.add_argument("--out", type=Path, default=None, help="JSON results")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--list", action="store_true", help="print the cases and launches, run nothing")
    args = ap.parse_args()
    cases = args.cases.split(",")
    if unknown := [c for c in cases if c not in CASES]:
        ap.error(f"unknown case(s) {unknown}")
    if args.list or not torch.cuda.is_available():
        labels = (["baseline"] if args.baseline else []) + list(LAUNCHES)
        for name in cases:
            print(f"{name}: {', '.join(labels)}")
        if not args.list:
            print("no GPU: nothing timed")
        return
    base = importlib.import_module(args.baseline) if args.baseline else None
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "L": L, "command": " ".join(["python"] + sys.argv)}
    for name in cases:
        heads = CASES[name][0]
        q, k, v = (torch.randn(1, L, heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        k += torch.randn(heads, 128, device="cuda", dtype=torch.bfloat16)  # channel offsets, as DiT keys have
        results[name] = run_case(name, q, k, v, base)
        del q, k, v
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
