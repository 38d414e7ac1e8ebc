"""Would 8-bit convolutions keep the VAE decode within issue 8's accuracy bound (PSNR >= 40 dB)?

A CPU simulation, no kernel: the real Wan2.1 VAE config with random weights (build_vae, seed 0), the
float32 chunked reference decode, and the same decode with the normed 3x3x3 convs' inputs and
weights rounded to 8 bits first (then computed in float32). An H100 runs e4m3 and int8 products at
twice its bf16 rate, so these convs (~250 TFLOP of the 480p decode's ~0.39 s of convolutions) are
the only large lever left on the decode's speed; this asks whether the numbers allow it.

Schemes (weights always per output channel, amax / 448 for e4m3, amax / 127 for int8):
- e4m3-static: activations / (sqrt(C) / 448), the bound of a unit-gamma RMS norm's output (a scale
  known before the conv runs, as a fused norm kernel writing e4m3 would use);
- e4m3-tensor: activations / (amax / 448) over the whole input (the best per-tensor scale);
- e4m3-weights: weights only, activations left in float32;
- int8-static, int8-tensor: the same two activation scales as e4m3's, / 127;
- int8-pixel: activations in int8 per pixel (amax over its channels / 127), each tap's product
  rescaled (what an int8 implicit GEMM would have to do);
- bf16: inputs and weights rounded to bf16 (what the shipped fast path stores), for comparison.
Each scheme runs on every normed conv (except the 3-channel head, whose products are few) and on
the convs of one width only.

    PYTHONPATH=$PWD python3 benchmarks/explore_vae_fp8.py --latents 3x8x12 --out results.json
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from turbovid.models.vae import CausalConv3d, build_vae

from bench_vae import psnr  # this folder's decode benchmark: the same PSNR

E4M3 = torch.float8_e4m3fn
WIDTHS = (96, 192, 384)
SCHEMES = ("bf16", "e4m3-static", "e4m3-tensor", "e4m3-weights", "int8-static", "int8-tensor", "int8-pixel")


def round_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).to(E4M3).float() * scale


def round_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).round().clamp(-127, 127) * scale


def quantize_input(scheme: str, x: torch.Tensor) -> torch.Tensor:
    """x [B, C, T, H, W] as the conv would read it under `scheme`."""
    if scheme == "bf16":
        return x.bfloat16().float()
    if scheme == "e4m3-static":
        return round_e4m3(x, torch.tensor(x.shape[1] ** 0.5 / 448))
    if scheme == "e4m3-tensor":
        return round_e4m3(x, x.abs().amax().clamp_min(1e-12) / 448)
    if scheme == "int8-static":
        return round_int8(x, torch.tensor(x.shape[1] ** 0.5 / 127))
    if scheme == "int8-tensor":
        return round_int8(x, x.abs().amax().clamp_min(1e-12) / 127)
    if scheme == "int8-pixel":
        return round_int8(x, x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127)
    if scheme == "e4m3-weights":
        return x
    raise ValueError(f"unknown scheme {scheme!r}")


def quantize_weight(scheme: str, w: torch.Tensor) -> torch.Tensor:
    if scheme == "bf16":
        return w.bfloat16().float()
    amax = w.abs().amax(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-12)
    return round_int8(w, amax / 127) if scheme.startswith("int8") else round_e4m3(w, amax / 448)


def normed_convs(vae, widths: tuple[int, ...]) -> list[CausalConv3d]:
    """The decoder's 3x3x3 convs that read an RMS norm + SiLU output: every one but the first
    (it reads the latents) and the 3-channel head."""
    convs = [m for m in vae.decoder.modules() if isinstance(m, CausalConv3d) and m.kernel_size == (3, 3, 3)]
    return [m for m in convs[1:] if m.out_channels != 3 and m.in_channels in widths]


def simulate(vae, z: torch.Tensor, scheme: str, widths: tuple[int, ...]) -> torch.Tensor:
    model = copy.deepcopy(vae)
    convs = normed_convs(model, widths)
    for conv in convs:
        conv.weight.data = quantize_weight(scheme, conv.weight.data)
        # the quantized frames are also what the stream state keeps for the next chunk, as in a kernel's buffer
        conv.register_forward_pre_hook(lambda _m, args: (quantize_input(scheme, args[0]), *args[1:]))
    with torch.no_grad():
        return model.decode_reference(z)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--latents", default="3x8x12", help="latent frames x height x width")
    p.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated, of " + " ".join(SCHEMES))
    p.add_argument("--out", help="write the results here as JSON")
    args = p.parse_args()
    shape = tuple(int(s) for s in args.latents.split("x"))
    unknown = set(args.schemes.split(",")) - set(SCHEMES)
    if unknown:
        p.error(f"unknown schemes {sorted(unknown)}; choose from {', '.join(SCHEMES)}")
    vae = build_vae("wan2.1", dtype=torch.float32, seed=0)
    z = torch.randn(1, 16, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = vae.decode_reference(z)
    rows = []
    for scheme in args.schemes.split(","):
        for widths in (WIDTHS, *((w,) for w in WIDTHS)):
            t0 = time.perf_counter()
            out = simulate(vae, z, scheme, widths)
            rows.append({"scheme": scheme, "widths": list(widths), "convs": len(normed_convs(vae, widths)),
                         "psnr_db": psnr(out, ref), "rel_l2": ((out - ref).norm() / ref.norm()).item()})
            print(json.dumps(rows[-1]), f"({time.perf_counter() - t0:.1f} s)", flush=True)
    result = {"latents": list(shape), "torch": torch.__version__, "reference_rms": ref.pow(2).mean().sqrt().item(),
              "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
