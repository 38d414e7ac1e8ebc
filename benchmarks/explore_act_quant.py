"""Exploration (dev tool, run on the device): the activation quantization pass (fp8, 1 x 128
groups) with and without the FFN's tanh-GELU fused in, per launch width, at the FFN hidden sizes.

After the norms and the attention epilogue took over the other inputs, this pass is what is left
of "activation quantization" in a forward's profile (1.3B 14.8 ms, 14B 36.6 ms at 480p). The
question: is the GELU (an exp and a division per element) what makes it slower than its bytes?

Run 1 (2026-11-26-explore-act-quant-h100-run1.json, fp8): the shipped 8 warps ran GELU + quant at
0.425 / 0.650 ms (K = 8960 / 13824) against 0.323 / 0.497 ms for the quantization alone; 16 warps
0.362 / 0.554 ms; 2-4 warps far slower (a 128 x 128 tile on few threads). Run 2 adds 32 warps and
the int8 rule.

    python3 benchmarks/explore_act_quant.py [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.ops.quant import int8, int8_triton  # noqa: E402


def launch(x, gelu: bool, warps: int, fmt: str = "fp8"):
    m, k = x.shape
    fp8 = fmt == "fp8"
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn if fp8 else torch.int8, device=x.device)
    mb, kb = triton.cdiv(m, 128), triton.cdiv(k, 128)
    s = torch.empty((kb, m) if fp8 else (mb, kb), dtype=torch.float32, device=x.device)
    table = None if fp8 else int8.rcp_table(x.device)
    grid = (mb, kb)

    def run():
        int8_triton._quant_act_kernel[grid](
            x, q, s, s if table is None else table, m, k, x.stride(0), q.stride(0),
            *((1, m) if fp8 else (kb, 1)),
            ROW_SCALES=fp8, IS_FP8=fp8, INTERPRET=False, USE_TABLE=table is not None,
            EXP_LO=int8.TABLE_EXPONENTS[0], EXP_HI=int8.TABLE_EXPONENTS[1], PRE_GELU=gelu, num_warps=warps)
    return run, q, s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    for k in (8960, 13824):
        x = torch.randn(32760, k, device="cuda", dtype=torch.bfloat16)
        gb = x.numel() * 3 / 1e9  # bf16 in, e4m3 out (scales are 1/64 of that)
        copy_ms = triton.testing.do_bench(lambda: torch.empty_like(x).copy_(x))
        rows = {"copy (4 B / element)": copy_ms}
        for fmt in ("fp8", "int8"):
            want = int8_triton.quantize_act(x, fmt, gelu=True)  # the shipped launch
            for gelu in (False, True):
                for warps in ((4, 8, 16, 32) if fmt == "fp8" else (8, 16, 32)):
                    run, q, s = launch(x, gelu, warps, fmt)
                    run()
                    if gelu:  # every launch width writes the same bytes
                        assert torch.equal(q.view(torch.uint8), want[0].view(torch.uint8)) and torch.equal(s, want[1])
                    ms = triton.testing.do_bench(run)
                    name = f"{fmt} {'gelu + quant' if gelu else 'quant'} {warps} warps"
                    rows[name] = ms
                    rows[f"{name} GB/s"] = gb / ms * 1e3
        results[f"M=32760 K={k}"] = rows
        print(f"K={k}")
        for name, v in rows.items():
            print(f"  {name:32s} {v:.4f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
