"""Bitwise repeatability of the Triton causal conv (ops/causal_conv.py) at the decode's wide shapes,
per config: the same launch repeated, each output compared with the first, and its time.

Found 2026-11-27 (H100, Triton 3.6): 192 -> 384 channels at 4 x 120 x 208 with the default config
(128-pixel programs, 8 warps, K slices of 64, 3 stages, descriptors) and the plain epilogue gave a
different output on repeats (tests/test_vae_gpu.py's stream check failed once in two runs), and
causal_conv_stream gave such launches 2 stages. Session 30's runs (each output refilled with NaN
first, compared with the float32 conv, and where it differs located) found the same at 4 warps
and with the fused epilogue, always a 16-pixel run of one tile row in the second dot's channels,
and the fast decode itself not repeating. The cause, from the SASS: a multi-row tile reaches wgmma
from registers (ldmatrix), and the next K step's ldmatrix overwrites them while up to 7 products
that read them may be pending. Single-row tiles keep A in shared memory ("single row").

    PYTHONPATH=$PWD python3 benchmarks/conv_repeatability.py --out $OUT/conv_repeatability.json
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace

import torch
from triton.testing import do_bench

from turbovid.ops import causal_conv

# (frames, H, W, C, Cout); 96 -> 96 runs ops/conv_gluon.py's kernel where the launch has no residual
SHAPES = ((4, 120, 208, 192, 384), (8, 120, 208, 192, 384), (4, 120, 208, 384, 384), (8, 240, 416, 192, 192),
          (8, 480, 832, 96, 96))
REPEATS = 30


def where(diff: torch.Tensor, cfg: causal_conv.Config) -> dict:
    """Where an output differs ([T, H, W, C] mask): how many elements, which frames, channels, and
    rows / columns within the Triton program's tile (a pattern there points at the warps that went
    wrong; session 30's: tile rows 80-95, the second dot's channels)."""
    t, h, w, c = diff.nonzero().unbind(1)
    rows, cols = cfg.rows, cfg.block_m // cfg.rows
    return dict(elements=int(diff.sum()), frames=sorted(set(t.tolist()))[:16],
                channels=[int(c.min()), int(c.max())], tile_rows=sorted(set((h % rows).tolist())),
                tile_cols=sorted(set((w % cols).tolist()))[:64], pixels=len(set(zip(t.tolist(), h.tolist(),
                                                                                       w.tolist()))))


def decode_repeats(res: dict, out: str, repeats: int = 4) -> None:
    """The fast 480p decode (random Wan2.1 VAE) repeated on the same latents: bitwise equal?"""
    from turbovid.models.vae import build_vae

    os.environ.pop("TURBOVID_GLUON", None)
    vae = build_vae("wan2.1", seed=0).to("cuda", torch.bfloat16).eval()
    z = torch.randn(1, 16, 21, 60, 104, generator=torch.Generator().manual_seed(7)).cuda()
    with torch.no_grad():
        first = vae.decode(z).cpu()
        rows = []
        for _ in range(repeats):
            d = (vae.decode(z).cpu().float() - first.float()).abs()
            rows.append(dict(worst=d.max().item(), elements=int((d > 0).sum()),
                             frames=sorted(set(d.amax((0, 1, 3, 4)).nonzero().flatten().tolist()))))
    res["decode_480p"] = rows
    print("decode", rows, flush=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="conv_repeatability.json")
    ap.add_argument("--configs", default="", help="only these config names, comma-separated")
    ap.add_argument("--decode", action="store_true", help="then repeat the fast 480p decode")
    args = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = False  # the float32 reference
    res = {"card": torch.cuda.get_device_name(), "repeats": REPEATS, "cases": {}}
    for frames, h, w, c, cout in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(frames, h, w, c, device="cuda", generator=g).bfloat16()
        hist = torch.randn(2, h, w, c, device="cuda", generator=g).bfloat16()
        res_in = torch.randn(frames, h, w, cout, device="cuda", generator=g).bfloat16()
        weight = torch.randn(cout, c, 3, 3, 3, device="cuda", generator=g) / (27 * c) ** 0.5
        bias = torch.randn(cout, device="cuda", generator=g)
        gamma = 1 + 0.2 * torch.randn(cout, device="cuda", generator=g)
        packed = causal_conv.pack(weight, bias, torch.bfloat16)
        buf32 = torch.cat([hist, x]).float()
        packed32 = replace(packed, ref_weight=packed.ref_weight.float(), bias=packed.bias.float())
        base = causal_conv.default_config(x.device, c, cout, h, w)
        # "default": no config passed (causal_conv_stream's choice: multi-row tiles fenced, fence_a;
        # at 96 -> 96 the Gluon kernel where the launch has no residual); "no fence": as before
        configs = (("default", None), ("no fence", replace(base, fence=False)),
                   ("2 stages", replace(base, num_stages=2)), ("single row", replace(base, rows=1)),
                   ("pointer loads", replace(base, tma=False)))
        if c == cout == 96:
            configs = (("default", None), ("triton", base), ("triton no fence", replace(base, fence=False)))
        epilogues = {"plain": {}, "normed": dict(gamma=gamma), "residual": dict(gamma=gamma, residual=res_in)}
        wants = {e: causal_conv.causal_conv_fused_reference(buf32, packed32, buf32.new_empty(frames, h, w, cout), **kw)
                 for e, kw in epilogues.items()}  # the float32 conv, once a shape
        for name, cfg in configs:
            if args.configs and name not in args.configs.split(","):
                continue
            os.environ["TURBOVID_GLUON"] = "1" if cfg is None else "0"  # a config: the Triton kernel
            for epilogue, kw in epilogues.items():
                want = wants[epilogue]
                out = torch.empty(frames, h, w, cout, device="cuda", dtype=torch.bfloat16)

                def run():
                    out.fill_(float("nan"))  # an element the launch does not write stays NaN
                    return causal_conv.causal_conv_stream(x, hist, packed, out=out, config=cfg, **kw)
                first = run().clone()
                diffs, unwritten, at = [], 0, None
                for _ in range(REPEATS):
                    y = run()
                    unwritten += int(y.isnan().any())
                    d = y != first
                    diffs.append((y.float() - first.float()).abs().max().item())
                    if at is None and d.any():
                        at = where(d, cfg or base)  # (the Gluon kernel's tiles differ: 6 x 64)
                row = dict(config=str(cfg), mismatches=sum(d > 0 for d in diffs), worst=max(diffs),
                           unwritten_runs=unwritten + int(first.isnan().any()),
                           first_vs_fp32=(first.float() - want.float()).abs().max().item(), where=at,
                           ms=float(do_bench(run, warmup=5, rep=40, return_mode="median")))
                key = f"{c}->{cout} {frames}x{h}x{w} {name} {epilogue}"
                res["cases"][key] = row
                print(key, {k: v for k, v in row.items() if k != "config"}, flush=True)
                with open(args.out, "w") as f:
                    json.dump(res, f, indent=1)
    if args.decode:
        decode_repeats(res, args.out)


if __name__ == "__main__":
    main()
