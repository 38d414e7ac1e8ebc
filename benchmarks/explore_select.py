"""Exploration (dev tool, run on the device): the block map's select kernel (scores + exact top-k)
under launch and layout variants, against a baseline copy of blockmap.py, on the DiT's shapes.

Nsight put the earlier select at 255 registers a thread with spills, one 8-warp program per SM
and each radix step's row count reduced across warps (a row of 256 key blocks spread over 2-8
warps). The kernel now slices the scores' dot over D (~90 registers) and holds a row as chunks of
128 columns inside one warp; optionally the radix select stops once every row has a clean cut.
Every variant's block lists are checked against the baseline's (the same block map, bit for bit).

    python3 benchmarks/explore_select.py [--baseline turbovid.ops.attention._blockmap_before] [--out r.json]
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.ops.attention import blockmap  # noqa: E402

SHAPES = [  # (name, L, heads, blkq, blkk)
    ("1.3B 480p sagesla", 32760, 12, 64, 128),
    ("1.3B 480p sla", 32760, 12, 128, 64),
    ("14B 480p sagesla", 32760, 40, 64, 128),
    ("1.3B 720p sagesla", 75600, 12, 64, 128),
    ("14B 720p sagesla", 75600, 40, 64, 128),
    ("1.3B 720p sla", 75600, 12, 128, 64),  # 1182 key blocks a row: the widest select
    ("14B 480p sla", 32760, 40, 128, 64),
    ("14B 720p sla", 75600, 40, 128, 64),
]


def bench(fn) -> float:
    return round(triton.testing.do_bench(fn, warmup=10, rep=60), 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default=None, help="module path of the blockmap to compare against")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="the shipped config and the baseline only")
    ap.add_argument("--shapes", default=None, help="comma-separated substrings: only shapes whose name has one")
    args = ap.parse_args()
    base = importlib.import_module(args.baseline) if args.baseline else None
    variants = [blockmap.StatsConfig()]
    if not args.quick:
        for w, qt, dc, early in itertools.product((4, 8), (8, 16, 32), (16, 32), (False, True)):
            cfg = blockmap.StatsConfig(select_warps=w, select_rows=qt, select_dslice=dc, select_early=early)
            if cfg not in variants:
                variants.append(cfg)
    rows = []
    for name, L, H, blkq, blkk in SHAPES:
        if args.shapes and not any(part in name for part in args.shapes.split(",")):
            continue
        g = torch.Generator(device="cuda").manual_seed(L + H)
        q, k, v = (torch.randn(1, L, H, 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
        row = {"shape": name, "L": L, "heads": H, "blkq": blkq, "blkk": blkk}
        ref_lut = None
        if base is not None:
            st = base.block_stats(q, k, v, 0.1, blkq, blkk, v_absmax=True)
            ref_lut = st.lut.clone()
            row["baseline_ms"] = bench(lambda: base.block_stats(q, k, v, 0.1, blkq, blkk, v_absmax=True))
        row["variants"] = []
        for cfg in variants:
            st = blockmap.block_stats(q, k, v, 0.1, blkq, blkk, v_absmax=True, cfg=cfg)
            same = None if ref_lut is None else bool(torch.equal(st.lut, ref_lut))
            if ref_lut is None:
                ref_lut = st.lut.clone()
            ms = bench(lambda: blockmap.block_stats(q, k, v, 0.1, blkq, blkk, v_absmax=True, cfg=cfg))
            row["variants"].append({"config": repr(cfg), "ms": ms, "same_lut": same})
            print(f"{name:20s} {ms:8.4f} ms  same={same}  {cfg}", flush=True)
        if base is not None:
            print(f"{name:20s} baseline {row['baseline_ms']:8.4f} ms", flush=True)
        rows.append(row)
    out = {
        "date": __import__("datetime").date.today().isoformat(),
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "command": " ".join(["python3"] + sys.argv),
        "what": "whole block_stats (key pass + query pool + select) per launch variant of the select kernel",
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
