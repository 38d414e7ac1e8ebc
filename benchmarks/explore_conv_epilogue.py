"""Does the next norm in the VAE conv's epilogue (ops/causal_conv.py, vae_fast.FUSE_NORM) beat the
conv + norm-kernel pair it replaces?

At chunks of the 480p decode (the default plan's 8 frames at full resolution), each form of a
residual block's two conv -> norm hand-overs, timed in one process:
- "conv1": conv1, then conv2's RMS norm + SiLU with the stream history (unfused: the conv's bf16
  output, then rms_silu_stream; fused: the history copied in, the conv's epilogue normalising into
  the next conv's time-padded input, the new history cloned out: FastConv.conv_into);
- "conv2": the same with the residual added (+ bias) and the sum stored, the next block's first norm.
The fused forms run with the epilogue's tensors through descriptors (tma_io, the default) and through
pointers. Each fused output is checked against the unfused pair (bf16: the fused norm reads the
float32 sum, the unfused one its bf16 rounding). do_bench medians, ms. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv_epilogue.py --out $OUT/explore_conv_epilogue.json
"""
from __future__ import annotations

from dataclasses import replace

import torch
from triton.testing import do_bench

from turbovid.bench.timing import sweep_shapes
from turbovid.ops import causal_conv
from turbovid.ops.rms_silu import rms_silu_stream

SHAPES = {"480p 96": (8, 480, 832, 96), "240x416 192": (8, 240, 416, 192), "120x208 384": (4, 120, 208, 384)}


def one(t: int, h: int, w: int, c: int) -> dict:
    dev, dt = torch.device("cuda"), torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    buf = torch.randn(1, t + 2, h, w, c, device=dev, dtype=dt, generator=g)
    packed = causal_conv.pack(torch.randn(c, c, 3, 3, 3, device=dev, generator=g) / (27 * c) ** 0.5,
                              torch.randn(c, device=dev, generator=g) * 0.1, dt)
    gamma = torch.rand(c, device=dev, generator=g) + 0.5
    hist = torch.randn(1, 2, h, w, c, device=dev, dtype=dt, generator=g)
    res0 = torch.randn(1, t, h, w, c, device=dev, dtype=dt, generator=g)
    cfg = causal_conv.default_config(dev, c, c, h, w, 2)
    out: dict = {"config": str(cfg)}

    def unfused(residual: bool):
        y = causal_conv.causal_conv(buf[0], packed, bias=False, config=cfg).unsqueeze(0)
        nxt = torch.empty(1, t + 2, h, w, c, device=dev, dtype=dt)
        hn = torch.empty_like(hist)
        x_out = torch.empty_like(res0) if residual else None
        rms_silu_stream(y, gamma, True, nxt, hist, hn, 1, h * w, bias=packed.bias,
                        residual=res0 if residual else None, x_out=x_out)
        return nxt, hn, x_out

    def fused(residual: bool, tma_io: bool):
        nxt = torch.empty(1, t + 2, h, w, c, device=dev, dtype=dt)
        nxt[:, :2].copy_(hist)
        x_out = torch.empty_like(res0) if residual else None
        causal_conv.causal_conv(buf[0], packed, out=nxt[0, 2:], config=replace(cfg, tma_io=tma_io), gamma=gamma,
                                residual=res0[0] if residual else None, x_out=x_out[0] if residual else None)
        return nxt, nxt[:, t:].clone(), x_out

    for residual in (False, True):
        name = "conv2" if residual else "conv1"
        ref = unfused(residual)
        row = out[name] = {"unfused_ms": do_bench(lambda: unfused(residual), warmup=10, rep=60, return_mode="median")}
        for tma_io in (True, False):
            key = "fused_tma_io" if tma_io else "fused_pointers"
            got = fused(residual, tma_io)
            errs = [((a.float() - b.float()).norm() / b.float().norm()).item()
                    for a, b in zip(got, ref) if b is not None]
            row[key + "_ms"] = do_bench(lambda: fused(residual, tma_io), warmup=10, rep=60, return_mode="median")
            row[key + "_rel_err"] = max(errs)
        row["unfused_again_ms"] = do_bench(lambda: unfused(residual), warmup=10, rep=60, return_mode="median")
        print(name, row, flush=True)
    return out


if __name__ == "__main__":
    sweep_shapes(__doc__.splitlines()[0], "explore_conv_epilogue.json", SHAPES, one)
