"""Which linears' per-tensor fp8 scales cost the 14B its extra error? (dev tool, run on the device)

ab_fp8_scales.py found per-tensor fp8 12% further from bf16 than block scales at 14B (1% at 1.3B).
This builds a shortened real-width model (bf16, --layers blocks, dense attention, the plain path: every
linear quantizes its own input by its amax), and measures the velocity's relative L2 error against
the same model in bf16 with every block linear block-scaled, every one per-tensor, and per-tensor
except one group kept block-scaled.

    python3 benchmarks/explore_fp8_groups.py --model Wan2.1-14B --layers 10 [--out F]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.bench.cases import latent_shape  # noqa: E402

GROUPS = {
    "self_qkv": ("self_attn.q", "self_attn.k", "self_attn.v"), "self_o": ("self_attn.o",),
    "cross_q": ("cross_attn.q",), "cross_kv": ("cross_attn.k", "cross_attn.v"), "cross_o": ("cross_attn.o",),
    "ffn_up": ("ffn.0",), "ffn_down": ("ffn.2",),
}


def quantize(dit, block_names: set[str]) -> None:
    from turbovid.ops.quant.fp8 import Fp8Linear, Fp8TensorLinear

    for blk in dit.blocks:
        for name, mod in list(blk.named_modules()):
            if isinstance(mod, torch.nn.Linear) and "proj_l" not in name:
                parent = blk.get_submodule(name.rsplit(".", 1)[0]) if "." in name else blk
                cls = Fp8Linear if name in block_names else Fp8TensorLinear
                setattr(parent, name.rsplit(".", 1)[-1], cls.from_linear(mod))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Wan2.1-14B")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from turbovid.configs import DIT_PRESETS
    from turbovid.loading.dit import build_dit

    dev = torch.device("cuda")
    cfg = dataclasses.replace(DIT_PRESETS[args.model], num_layers=args.layers)
    g = torch.Generator(device=dev).manual_seed(0)
    lat = torch.randn(latent_shape("480p", 81), generator=g, device=dev).bfloat16()
    ctx = torch.randn(1, 512, cfg.text_dim, generator=g, device=dev).bfloat16()
    t = torch.tensor([500.0], device=dev)
    all_names = {n for names in GROUPS.values() for n in names}
    variants = {"all block": all_names, "all per-tensor": set()}
    variants |= {f"per-tensor but {k} block": set(v) for k, v in GROUPS.items()}
    report = {"device": torch.cuda.get_device_name(), "model": args.model, "layers": args.layers, "errors": {}}
    with torch.inference_mode():
        dit = build_dit(cfg, device=dev, dtype=torch.bfloat16, seed=0)
        dit.set_attention("dense")
        want = dit(lat, t, ctx).float()
        del dit
        for name, block in variants.items():
            dit = build_dit(cfg, device=dev, dtype=torch.bfloat16, seed=0)
            dit.set_attention("dense")
            quantize(dit, block)
            out = dit(lat, t, ctx).float()
            err = ((out - want).norm() / want.norm()).item()
            report["errors"][name] = round(err, 5)
            print(f"{name:32s} {err:.5f}", flush=True)
            del dit
            torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
