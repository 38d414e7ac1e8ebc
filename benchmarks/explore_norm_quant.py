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
launches; run 2 adds the bf16-output launch (LAUNCH) at the same shapes; run 3 sweeps both with
the row held as one power-of-two part or as two (layernorm_kernel.row_parts: 5120 = 4096 + 1024),
the bf16 and fp8 launches at the same shape (so their bytes must match).

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
    shapes = [(1, 4), (1, 8), (1, 16), (2, 4), (2, 8), (2, 16), (4, 8), (4, 16), (4, 32)]
    for c in (1536, 5120):
        x, y = (torch.randn(1, 32760, c, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        shift, scale, gate = (torch.randn(1, c, device="cuda") * 0.3 for _ in range(3))
        w, b = torch.randn(c, device="cuda"), torch.randn(c, device="cuda")
        for residual in (True,):  # the DiT runs add_norm_modulate (norm_modulate once per forward)
            def norm(quant=None):
                if residual:
                    return fused.add_norm_modulate(x, y, gate, shift, scale, weight=w, bias=b, quant=quant)[1]
                return fused.norm_modulate(x, shift, scale, quant=quant)

            def unfused():
                return int8_triton.quantize_act(norm().reshape(-1, c), "fp8")

            rows = {"norm alone (bf16 out), shipped launch": triton.testing.do_bench(norm),
                    "unfused (norm + quantize_act), shipped": triton.testing.do_bench(unfused)}
            for split in (False, True):  # the row as one power-of-two part, or two (ln.row_parts)
                ln.SPLIT_ROWS = split
                parts = ln.row_parts(c)
                qparts = ln.row_parts(c, quant=True)
                tag = "+".join(str(p) for p in parts if p)
                saved, qsaved = dict(ln.LAUNCH), dict(ln.QUANT_LAUNCH)
                for r, wps in shapes:
                    ln.LAUNCH[parts] = (r, wps)
                    name = f"[{tag}] norm alone {r} rows / {wps} warps"
                    try:
                        rows[name] = triton.testing.do_bench(norm)
                    except Exception as e:  # noqa: BLE001 - e.g. out of registers
                        rows[name] = f"{type(e).__name__}: {str(e)[:160]}"
                    ln.QUANT_LAUNCH[qparts] = (r, wps)
                    name = f"[{tag}] fused fp8 {r} rows / {wps} warps"
                    try:  # the same shape for both launches: h must be the same bytes
                        q0, s0 = unfused()
                        act = norm("fp8")
                        same = torch.equal(act.scale, s0) and torch.equal(
                            act.q.reshape(-1, c).view(torch.uint8), q0.view(torch.uint8))
                        t = triton.testing.do_bench(lambda: norm("fp8"))
                        rows[name] = t if same else f"bytes differ ({t:.4f} ms)"
                    except Exception as e:  # noqa: BLE001
                        rows[name] = f"{type(e).__name__}: {str(e)[:160]}"
                ln.LAUNCH.clear()
                ln.LAUNCH.update(saved)
                ln.QUANT_LAUNCH.clear()
                ln.QUANT_LAUNCH.update(qsaved)
            ln.SPLIT_ROWS = True
            key = f"C={c} {'add_norm_modulate' if residual else 'norm_modulate'}"
            results[key] = rows
            print(key)
            for name, v in rows.items():
                print(f"  {name:44s} {v:.4f} ms" if isinstance(v, float) else f"  {name:44s} {v}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
