"""Exploration (dev tool, run on the device): the norm kernel with its fp8 output (quant="fp8")
against the norm plus a separate quantization pass, per launch shape, at the DiT's widths.

The first profile of the fused path (2026-11-26) showed a gain at C = 1536 (1.3B: 189.5 -> 185.3 ms
per 480p forward) but a loss at C = 5120 (14B: the norm launches went from 70 to 89 ms per forward,
eating the saved quantization passes). This times, for C in (1536, 5120) and L = 32760:
  unfused      add_norm_modulate -> h (bf16), then quantize_act(h, "fp8")
  fused r/w    add_norm_modulate(quant="fp8") with r rows per program on w warps
and checks every fused launch writes the same bytes as the unfused pair. "bytes differ" marks a
launch whose LayerNorm sums run in another order than the bf16-output launch's (so h itself
rounds differently in a few places), not a different quantization rule. Run 1 timed the fused
launches; run 2 adds the bf16-output launch (LAUNCH) at the same shapes.

    python3 benchmarks/explore_norm_quant.py [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.ops import fused  # noqa: E402
from turbovid.ops.fused import layernorm_kernel as ln  # noqa: E402
from turbovid.ops.quant import int8_triton  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    shapes = [(1, 4), (1, 8), (1, 16), (2, 8), (2, 16), (4, 16), (4, 32)]
    for c in (1536, 5120):
        x, y = (torch.randn(1, 32760, c, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        shift, scale, gate = (torch.randn(1, c, device="cuda") * 0.3 for _ in range(3))
        w, b = torch.randn(c, device="cuda"), torch.randn(c, device="cuda")
        block_c = triton.next_power_of_2(c)
        for residual in (False, True):
            def norm(quant=None):
                if residual:
                    return fused.add_norm_modulate(x, y, gate, shift, scale, weight=w, bias=b, quant=quant)[1]
                return fused.norm_modulate(x, shift, scale, quant=quant)

            def unfused():
                return int8_triton.quantize_act(norm().reshape(-1, c), "fp8")

            q0, s0 = unfused()
            rows = {"norm alone (bf16 out)": triton.testing.do_bench(norm),
                    "unfused (norm + quantize_act)": triton.testing.do_bench(unfused)}
            for r, wps in shapes:  # the bf16-output launch (LAUNCH) at the same shapes
                ln.LAUNCH[block_c] = (r, wps)
                try:
                    rows[f"norm alone {r} rows / {wps} warps"] = triton.testing.do_bench(norm)
                except Exception as e:  # noqa: BLE001
                    rows[f"norm alone {r} rows / {wps} warps"] = f"{type(e).__name__}: {str(e)[:160]}"
                finally:
                    ln.LAUNCH.pop(block_c, None)
            shipped = ln.QUANT_LAUNCH.pop(block_c, None)
            for r, wps in shapes:
                ln.QUANT_LAUNCH[block_c] = (r, wps)
                try:
                    act = norm("fp8")
                    same = torch.equal(act.scale, s0) and torch.equal(
                        act.q.reshape(-1, c).view(torch.uint8), q0.view(torch.uint8))
                    rows[f"fused {r} rows / {wps} warps"] = triton.testing.do_bench(lambda: norm("fp8"))
                    if not same:
                        rows[f"fused {r} rows / {wps} warps"] = f"bytes differ ({rows[f'fused {r} rows / {wps} warps']:.4f} ms)"
                except Exception as e:  # noqa: BLE001 - e.g. out of registers
                    rows[f"fused {r} rows / {wps} warps"] = f"{type(e).__name__}: {str(e)[:160]}"
                finally:
                    ln.QUANT_LAUNCH.pop(block_c, None)
            if shipped is not None:
                ln.QUANT_LAUNCH[block_c] = shipped
            key = f"C={c} {'add_norm_modulate' if residual else 'norm_modulate'}"
            results[key] = rows
            print(key)
            for name, v in rows.items():
                print(f"  {name:32s} {v:.4f} ms" if isinstance(v, float) else f"  {name:32s} {v}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
