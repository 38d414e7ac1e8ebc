"""A residual block's first conv followed by the norm pass in front of the second (what the decode
ran until 2026-11-27) against the conv with that norm as its epilogue (causal_conv_stream), at the
chunk shapes of the 480p / 720p decodes, one process.

Per shape: the conv (bias left to the norm) + rms_silu_stream(taps=1) writing the next conv's
time-padded input; causal_conv_stream with the default config and with one pipeline stage fewer
(the epilogue holds more registers); the largest difference between the two outputs in units of
bf16 rounding. Times: triton.testing.do_bench medians, ms. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv_stream.py --out $OUT/explore_conv_stream.json
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch
from triton.testing import do_bench

from turbovid.ops import causal_conv
from turbovid.ops.rms_silu import rms_silu_stream

# (frames, H, W, C, Cout): the decode's chunks (480p: 4 output frames at full resolution, 8 at
# 240 x 416, 4 at 120 x 208; the middle blocks: 21 latent frames)
SHAPES = {"480p 96": (4, 480, 832, 96, 96), "720p 96": (4, 720, 1280, 96, 96),
          "240x416 192": (8, 240, 416, 192, 192), "120x208 384": (4, 120, 208, 384, 384),
          "60x104 384 middle": (21, 60, 104, 384, 384)}


def bench(fn) -> float:
    return float(do_bench(fn, warmup=5, rep=40, return_mode="median"))


def one(t: int, h: int, w: int, c: int, cout: int) -> dict:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    buf = torch.randn(t + 2, h, w, c, device=dev, generator=g).bfloat16()
    weight = torch.randn(cout, c, 3, 3, 3, device=dev, generator=g) / (27 * c) ** 0.5
    packed = causal_conv.pack(weight, torch.randn(cout, device=dev, generator=g) * 0.1, torch.bfloat16)
    gamma = torch.rand(cout, device=dev, generator=g) + 0.5
    history = torch.randn(2, h, w, cout, device=dev, generator=g).bfloat16()
    y = buf.new_empty(t, h, w, cout)
    out_a, hist_a = buf.new_empty(t + 2, h, w, cout), buf.new_empty(2, h, w, cout)
    out_b, hist_b = torch.empty_like(out_a), torch.empty_like(hist_a)

    def unfused():
        causal_conv.causal_conv(buf, packed, bias=False, out=y)
        rms_silu_stream(y, gamma, True, out_a, history, hist_a, 1, h * w, bias=packed.bias)

    cfg = causal_conv.default_config(dev, c, cout, h, w)
    res = {"frames": t, "h": h, "w": w, "c": c, "cout": cout, "config": cfg.__dict__,
           "conv_ms": bench(lambda: causal_conv.causal_conv(buf, packed, bias=False, out=y)),
           "conv_then_norm_ms": bench(unfused)}
    for name, c_ in (("stream_ms", cfg), ("stream_fewer_stages_ms", replace(cfg, num_stages=max(2, cfg.num_stages - 1)))):
        res[name] = bench(lambda: causal_conv.causal_conv_stream(buf, packed, gamma, True, out_b, history, hist_b,
                                                                 config=c_))
    unfused()
    causal_conv.causal_conv_stream(buf, packed, gamma, True, out_b, history, hist_b)
    torch.cuda.synchronize()
    ulp = out_a.float().abs().clamp_min(2.0 ** -14) * 2.0 ** -8  # a bf16 rounding step at each value
    res["max_diff_in_bf16_steps"] = ((out_b.float() - out_a.float()).abs() / ulp).max().item()
    res["history_equal"] = bool(torch.equal(hist_b, out_b[t:]) and torch.equal(hist_a, out_a[t:]))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="explore_conv_stream.json")
    args = ap.parse_args()
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    for name, shape in SHAPES.items():
        r = res["shapes"][name] = one(*shape)
        print(f"{name:20s} conv {r['conv_ms']:.3f}  conv+norm {r['conv_then_norm_ms']:.3f}  "
              f"stream {r['stream_ms']:.3f} (stages-1 {r['stream_fewer_stages_ms']:.3f})  "
              f"max diff {r['max_diff_in_bf16_steps']:.2f} steps  history ok {r['history_equal']}", flush=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
