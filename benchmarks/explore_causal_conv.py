"""The VAE's full-resolution causal 3x3x3 convs: our Triton kernel (ops/causal_conv.py) against the
cuDNN ways the fast decode has run them, one process, at a 4-frame chunk of the 480p / 720p decode.

Per shape (96 -> 96 and the 96 -> 3 head; with --wide also the 192- and 384-channel stages, which
the decode leaves to cuDNN's conv3d):
- cuDNN: the stacked-taps conv2d (288 -> Cout, the shipped "stacked" mode) and conv3d NDHWC;
- ours: every config of a small grid (program rows, warps, stages, descriptors or pointers);
- the norm pass in front of each: rms_silu_stream writing the three stacked taps vs the
  time-padded input once (what "triton" needs);
- the best config's error against the float32 conv of the same bf16 inputs, next to cuDNN's.
Times: triton.testing.do_bench medians, ms. JSON to --out.

    PYTHONPATH=$PWD python3 benchmarks/explore_causal_conv.py --out $OUT/explore_causal_conv.json
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from turbovid.ops import causal_conv, conv_head
from turbovid.ops.rms_silu import rms_silu_stream

SHAPES = {"480p": (4, 480, 832), "720p": (4, 720, 1280)}
C = 96
# the 480p decode's wider stages at its 2-latent-frame chunks (the middle: all 21 frames at once):
# (frames, H, W, C, Cout)
WIDE = {"240x416 192": (8, 240, 416, 192, 192), "120x208 384": (4, 120, 208, 384, 384),
        "120x208 192->384": (4, 120, 208, 192, 384), "60x104 384": (2, 60, 104, 384, 384),
        "60x104 384 middle": (21, 60, 104, 384, 384)}


def bench(fn) -> float:
    return float(do_bench(fn, warmup=5, rep=40, return_mode="median"))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b).norm() / b.norm()).item()


def one_shape(name: str, t: int, h: int, w: int, quick: bool) -> dict:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    buf = torch.randn(t + 2, h, w, C, device=dev, generator=g).bfloat16()
    stacked = torch.cat([buf[k:k + t] for k in range(3)], dim=-1).contiguous()  # [t, h, w, 3C]
    res: dict = {"frames": t, "h": h, "w": w, "channels": C}
    # the norm pass: three stacked taps vs the padded input once
    x = torch.randn(t * h * w, C, device=dev, generator=g).bfloat16()
    gamma = torch.ones(C, device=dev)
    hist, hist_out = buf[:2].clone(), torch.empty_like(buf[:2])
    res["norm_stacked_ms"] = bench(lambda: rms_silu_stream(x, gamma, True, stacked, hist, hist_out, 3, h * w))
    res["norm_once_ms"] = bench(lambda: rms_silu_stream(x, gamma, True, buf, hist, hist_out, 1, h * w))
    for cout in (C, 3):
        row = res[f"cout{cout}"] = {}
        weight = torch.randn(cout, C, 3, 3, 3, device=dev, generator=g) / (27 * C) ** 0.5
        packed = causal_conv.pack(weight, None, torch.bfloat16)
        flops = 2 * t * h * w * cout * 27 * C
        w2 = packed.ref_weight.permute(0, 2, 1, 3, 4).reshape(cout, 3 * C, 3, 3).contiguous(
            memory_format=torch.channels_last)
        x2 = stacked.permute(0, 3, 1, 2)
        row["cudnn_stacked_ms"] = bench(lambda: F.conv2d(x2, w2, None, padding=1))
        row["cudnn_conv3d_ms"] = bench(lambda: causal_conv.causal_conv_reference(buf, packed, bias=False))
        out = torch.empty(t, h, w, cout, device=dev, dtype=torch.bfloat16)
        configs = []
        # the first sweep (2026-11-27: 64-256 pixels, 4 / 8 warps, 2-4 stages, descriptors or not) found
        # 4 warps best everywhere, descriptors best for 96 outputs and worst for 3: tile shapes now
        grid = itertools.product((128, 256), (1, 2, 4), (3, 4), (cout > 16,))
        if quick:
            grid = itertools.product((256,), (1, 4), (4,), (cout > 16,))
        for bm, rows, stages, tma in grid:
            cfg = causal_conv.Config(block_m=bm, block_k=32, num_warps=4, num_stages=stages, tma=tma, rows=rows)
            try:
                ms = bench(lambda: causal_conv.causal_conv(buf, packed, bias=False, out=out, config=cfg))
            except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: that config is out
                configs.append({"config": cfg.__dict__, "error": f"{type(e).__name__}: {e}"[:200]})
                continue
            configs.append({"config": cfg.__dict__, "ms": ms, "tflops": flops / ms / 1e9})
            print(name, cout, cfg, f"{ms:.3f} ms", flush=True)
        row["configs"] = configs
        ok = [c for c in configs if "ms" in c]
        best = min(ok, key=lambda c: c["ms"])
        row["best"] = best
        row["default_config"] = causal_conv.default_config(dev, C, cout, h, w).__dict__
        row["default_ms"] = bench(lambda: causal_conv.causal_conv(buf, packed, bias=False, out=out))
        row["tflops"] = {"cudnn_stacked": flops / row["cudnn_stacked_ms"] / 1e9,
                         "cudnn_conv3d": flops / row["cudnn_conv3d_ms"] / 1e9, "ours_best": best["tflops"]}
        ref = causal_conv.causal_conv_reference(buf.float(), causal_conv.pack(packed.ref_weight.float(), None,
                                                                              torch.float32), bias=False)
        cfg = causal_conv.Config(**best["config"])
        row["rel_err_ours"] = rel(causal_conv.causal_conv(buf, packed, bias=False, config=cfg), ref)
        row["rel_err_cudnn"] = rel(F.conv2d(x2, w2, None, padding=1).permute(0, 2, 3, 1), ref)
        print(name, cout, {k: v for k, v in row.items() if k != "configs"}, flush=True)
        del ref
    # the RGB head as the decode runs it (its input the residual sum of the last block): the norm into
    # the padded input + our conv, against conv_head's projection + sum over the taps
    head_w = torch.randn(3, C, 3, 3, 3, device=dev, generator=g) / (27 * C) ** 0.5
    packed, head = causal_conv.pack(head_w, None, torch.bfloat16), conv_head.pack(head_w, None, torch.bfloat16)
    y, r = (torch.randn(t, h, w, C, device=dev, generator=g).bfloat16() for _ in range(2))
    b = torch.randn(C, device=dev).bfloat16()

    def as_conv():
        rms_silu_stream(y, gamma, True, buf, hist, hist_out, 1, h * w, bias=b, residual=r)
        return causal_conv.causal_conv(buf, packed)

    def by_taps():
        z = conv_head.project(y, gamma, head, bias=b, residual=r)
        return conv_head.gather(z, None, head, torch.bfloat16), conv_head.next_history(z, None)

    res["head_as_conv_ms"], res["head_by_taps_ms"] = bench(as_conv), bench(by_taps)
    print(name, "head", res["head_as_conv_ms"], res["head_by_taps_ms"], flush=True)
    return res


def wide_shape(name: str, t: int, h: int, w: int, c: int, cout: int) -> dict:
    """Our kernel against cuDNN's conv3d NDHWC (what the decode runs there) at a wide stage."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    buf = torch.randn(t + 2, h, w, c, device=dev, generator=g).bfloat16()
    weight = torch.randn(cout, c, 3, 3, 3, device=dev, generator=g) / (27 * c) ** 0.5
    packed = causal_conv.pack(weight, None, torch.bfloat16)
    flops = 2 * t * h * w * cout * 27 * c
    row: dict = {"frames": t, "h": h, "w": w, "channels": c, "cout": cout}
    row["cudnn_conv3d_ms"] = bench(lambda: causal_conv.causal_conv_reference(buf, packed, bias=False))
    out = torch.empty(t, h, w, cout, device=dev, dtype=torch.bfloat16)
    configs = []
    # the first wide sweep (2026-11-27: 2 / 3 stages, 1 / 2 rows) found 3 stages best everywhere
    row["default_config"] = causal_conv.default_config(dev, c, cout, h, w).__dict__
    try:
        row["default_ms"] = bench(lambda: causal_conv.causal_conv(buf, packed, bias=False, out=out))
    except Exception as e:  # noqa: BLE001
        row["default_error"] = f"{type(e).__name__}: {e}"[:200]
    for bm, warps, rows in itertools.product((64, 128), (4, 8), (1, 2, 4, 8)):
        if bm // rows < 16:
            continue
        cfg = causal_conv.Config(block_m=bm, block_k=64, num_warps=warps, num_stages=3, tma=True, rows=rows)
        try:
            ms = bench(lambda: causal_conv.causal_conv(buf, packed, bias=False, out=out, config=cfg))
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory or registers
            configs.append({"config": cfg.__dict__, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        configs.append({"config": cfg.__dict__, "ms": ms, "tflops": flops / ms / 1e9})
        print(name, cfg, f"{ms:.3f} ms", flush=True)
    row["configs"] = configs
    ok = [c for c in configs if "ms" in c]
    if ok:
        row["best"] = min(ok, key=lambda c: c["ms"])
        ref = causal_conv.causal_conv_reference(
            buf.float(), causal_conv.pack(packed.ref_weight.float(), None, torch.float32), bias=False)
        cfg = causal_conv.Config(**row["best"]["config"])
        row["rel_err_ours"] = rel(causal_conv.causal_conv(buf, packed, bias=False, config=cfg), ref)
        row["rel_err_cudnn"] = rel(causal_conv.causal_conv_reference(buf, packed, bias=False), ref)
    row["tflops_cudnn"] = flops / row["cudnn_conv3d_ms"] / 1e9
    print(name, {k: v for k, v in row.items() if k != "configs"}, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="explore_causal_conv.json")
    ap.add_argument("--quick", action="store_true", help="a few configs only")
    ap.add_argument("--wide", action="store_true", help="also the 192- and 384-channel stages")
    ap.add_argument("--only-wide", action="store_true", help="the wide stages alone")
    args = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "shapes": {}}
    for name, shape in ({} if args.only_wide else SHAPES).items():
        res["shapes"][name] = one_shape(name, *shape, args.quick)
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    for name, shape in (WIDE if args.wide or args.only_wide else {}).items():
        res["shapes"][name] = wide_shape(name, *shape)
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
