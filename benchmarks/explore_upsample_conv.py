"""The VAE upsamplers' 2x2 phase convs on our conv kernel (ops/upsample_conv.py) against the path before it.

"before": cuDNN's conv2d of the four phases as 4 Cout channels, the interleave pass (+ bias), then
the norm kernel's pass that writes the next residual block's normalised input and history (what
vae_fast ran per chunk). "kernel": the four phase launches with that norm in their epilogue; also
a sweep of the kernel's configs and the plain launch (no norm). Shapes: one chunk of each chunked
upsampler in the 480p decode (2 latent frames a chunk) and the 720p one (1). do_bench medians, ms;
errors of the output against the float32 path, of the norm against the norm of the stored output.

    PYTHONPATH=$PWD python3 benchmarks/explore_upsample_conv.py --out $OUT/explore_upsample_conv.json
"""
from __future__ import annotations

from dataclasses import replace

import torch
from triton.testing import do_bench

from turbovid.bench.timing import sweep_shapes
from turbovid.ops import causal_conv, upsample_conv
from turbovid.ops.rms_silu import rms_silu_reference, rms_silu_stream

# name: (frames, H, W, C, Cout) of the upsampler's input
SHAPES = {"480p 384->192": (8, 120, 208, 384, 192), "480p 192->96": (8, 240, 416, 192, 96),
          "720p 384->192": (4, 180, 320, 384, 192), "720p 192->96": (4, 360, 640, 192, 96)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def one(t: int, h: int, w: int, c: int, cout: int) -> dict:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.nn.functional.silu(torch.randn(t, h, w, c, device=dev, generator=g)).bfloat16()
    weight = torch.randn(cout, c, 3, 3, device=dev, generator=g) / (9 * c) ** 0.5
    bias = torch.randn(cout, device=dev, generator=g) * 0.1
    gamma = 1 + 0.2 * torch.randn(cout, device=dev, generator=g)
    packed = upsample_conv.pack(weight, bias, torch.bfloat16)
    p32 = upsample_conv.pack(weight.bfloat16().float(), packed.bias.float(), torch.float32)
    shape = (t, 2 * h, 2 * w, cout)
    ref = upsample_conv.upsample_conv_reference(x.float(), p32, torch.empty(shape, device=dev))
    y, normed, hist = (x.new_empty(s) for s in (shape, shape, (2, *shape[1:])))
    flop = 2 * t * h * w * 4 * 4 * c * cout
    res: dict = {"tflop": flop / 1e12, "rows": []}

    def record(name: str, cfg: str, fn, fused: bool) -> None:
        y.fill_(float("nan"))
        fn()
        row = {"name": name, "config": cfg, "err": rel(y, ref)}
        if fused:
            row["norm_err"] = rel(normed, rms_silu_reference(y.float(), gamma))
        row["ms"] = do_bench(fn, warmup=10, rep=100)
        row["tflops"] = flop / row["ms"] / 1e9
        res["rows"].append(row)
        print(row, flush=True)

    def before():
        upsample_conv.upsample_conv_reference(x, packed, y)
        rms_silu_stream(y, gamma, True, normed, None, hist, 1, 4 * h * w, with_history=False)

    record("before: cuDNN + interleave + norm pass", "", before, True)
    cfg = upsample_conv.default_config(dev, c, cout, h, w, 2)
    record("kernel, plain", str(cfg), lambda: upsample_conv.upsample_conv(x, packed, y), False)

    def fused(cfg):
        return lambda: upsample_conv.upsample_conv(x, packed, y, gamma=gamma, normed=normed, history_out=hist,
                                                   config=cfg)

    record("kernel + norm (default)", str(cfg), fused(cfg), True)
    for block_m, warps, stages in ((128, 4, 3), (128, 4, 4), (128, 8, 3), (128, 8, 4), (256, 8, 3)):
        alt = replace(cfg, block_m=block_m, num_warps=warps, num_stages=stages,
                      rows=causal_conv.tile_rows(h, w, block_m))
        if alt == cfg or causal_conv.smem_bytes(alt, cout, 2) > causal_conv.SMEM_BUDGET:
            continue
        if block_m * sum(causal_conv.split_channels(cout)) > 256 * 96 and warps == 4:
            continue  # the accumulators would take over 200 registers a thread
        record("kernel + norm", str(alt), fused(alt), True)
    return res


def main() -> None:
    sweep_shapes(__doc__.split("\n")[0], "explore_upsample_conv.json", SHAPES, one)


if __name__ == "__main__":
    main()
