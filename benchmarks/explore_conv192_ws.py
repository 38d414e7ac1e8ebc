"""The VAE's 192 -> 192 convs: ops/conv_gluon_wide.py's Gluon kernel (ping-pong consumers) against
the Triton kernel (ops/causal_conv.py) it replaces, at the decode's chunk shapes, in one process.

Per shape and epilogue (plain + bias; conv1: the next norm + SiLU, the history written; conv2: +
the residual, the sum stored in its place, then the norm), both kernels into NaN-filled outputs:
- the relative error of each against the float32 conv of the same bf16 input (and the Gluon one's
  against the Triton one's), nothing outside the output written, the history its last two frames;
- an odd shape (rows and columns not multiples of the tile's 4 x 32) with the history below, above
  and missing;
- REPEATS launches of the Gluon kernel, each output compared bitwise with the first;
- do_bench medians, ms, the Triton kernel timed before and after, and the Gluon kernel also on 3
  stages (the ring's depth: the products wait on it).
JSON to --out; exit status 1 if any check fails.

    PYTHONPATH=$PWD python3 benchmarks/explore_conv192_ws.py --out $OUT/explore_conv192_ws.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import replace

import torch
from triton.testing import do_bench

from turbovid.ops import causal_conv, conv_gluon_wide, gluon_switch
from turbovid.ops.rms_silu import rms_silu_reference

SHAPES = ((8, 240, 416), (4, 360, 640))  # the 480p / 720p decode's 192-channel chunks
ODD = (3, 30, 50)
REPEATS = 10
C = conv_gluon_wide.CHANNELS


@contextlib.contextmanager
def variant(kind: str):
    """gluon_s3: the ring on 3 stages; the shipped launch otherwise."""
    saved = conv_gluon_wide.STAGES
    if kind == "gluon_s3":
        conv_gluon_wide.STAGES = 3
    try:
        yield
    finally:
        conv_gluon_wide.STAGES = saved


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def setup(frames: int, h: int, w: int, seed: int = 3) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    buf = torch.randn(frames + 2, h, w, C, device="cuda", generator=g).bfloat16()
    weight = torch.randn(C, C, 3, 3, 3, device="cuda", generator=g) / (27 * C) ** 0.5
    packed = causal_conv.pack(weight, torch.randn(C, device="cuda", generator=g) * 0.1, torch.bfloat16)
    p32 = causal_conv.pack(packed.ref_weight.float(), packed.bias.float(), torch.float32)
    gamma = 1 + 0.2 * torch.randn(C, device="cuda", generator=g)
    res = torch.randn(frames, h, w, C, device="cuda", generator=g).bfloat16()
    return dict(buf=buf, packed=packed, p32=p32, gamma=gamma, res=res)


def references(s: dict) -> dict:
    buf, p32, gamma, res = s["buf"], s["p32"], s["gamma"], s["res"]
    plain = causal_conv.causal_conv_reference(buf.float(), p32)
    summed = res.float().clone()
    conv2 = causal_conv.causal_conv_fused_reference(buf.float(), p32, torch.empty_like(plain), gamma=gamma,
                                                    residual=res.float(), x_out=summed)
    return dict(plain=plain, conv1=rms_silu_reference(plain, gamma), conv2=conv2, summed=summed)


def run(kind: str, s: dict, frames_t, hist, epi: str, out_pool: torch.Tensor, hist_out, x_out):
    """One launch of `kind` ("gluon" / "triton") with epilogue `epi` into out_pool[2:]."""
    packed, gamma = s["packed"], s["gamma"]
    t, h, w, _ = frames_t.shape
    kw = {}
    if epi in ("conv1", "conv2"):
        kw.update(gamma=gamma.contiguous(), history_out=hist_out)
    if epi == "conv2":
        kw.update(residual=x_out, x_out=x_out)
    if kind == "gluon":
        return conv_gluon_wide.launch(frames_t, hist, packed.weight_k, packed.bias, out_pool[2:],
                                      causal_conv._stream_descriptor, kw.get("gamma"), True, kw.get("residual"),
                                      kw.get("x_out"), kw.get("history_out"))
    cfg = causal_conv.default_config(frames_t.device, C, C, h, w)
    triton_only = replace(packed, weight_k=None)  # no Gluon kernel to hand it to
    return causal_conv.launch(frames_t, hist, triton_only, cfg, out_pool[2:], True, kw.get("gamma"), True,
                              kw.get("residual"), kw.get("x_out"), kw.get("history_out"))


def check(s: dict, refs: dict, hist_where: str, epi: str, kind: str) -> dict:
    buf = s["buf"]
    frames, h, w, _ = s["res"].shape
    pool = torch.full((frames + 6, h, w, C), float("nan"), device="cuda", dtype=torch.bfloat16)
    if hist_where == "below":
        hist, frames_t = pool[:2], pool[4:4 + frames]
    elif hist_where == "above":
        hist, frames_t = pool[frames + 4:frames + 6], pool[:frames]
    else:
        hist, frames_t = None, pool[4:4 + frames]
    if hist is not None:
        hist.copy_(buf[:2])
    frames_t.copy_(buf[2:])
    out = torch.full((frames + 2, h, w, C), float("nan"), device="cuda", dtype=torch.bfloat16)
    hist_out = torch.full((2, h, w, C), float("nan"), device="cuda", dtype=torch.bfloat16)
    x_out = s["res"].clone()
    if hist is None and epi != "plain":
        return {}
    run(kind, s, frames_t, hist, epi, out, hist_out, x_out)
    torch.cuda.synchronize()
    if hist is None:
        want = causal_conv.causal_conv_reference(torch.cat([torch.zeros_like(buf[:2]), buf[2:]]).float(), s["p32"])
    else:
        want = refs[epi]
    r = dict(rel=rel(out[2:], want), untouched=bool(out[:2].isnan().all()), finite=bool(out[2:].isfinite().all()))
    if epi != "plain":
        r["history_ok"] = bool(torch.equal(hist_out, out[-2:]))
    if epi == "conv2":
        r["sum_rel"] = rel(x_out, refs["summed"])
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ["TURBOVID_GLUON"] = "1"
    report: dict = dict(device=torch.cuda.get_device_name(), shapes={}, failures=[])
    fails = report["failures"]
    for shape in (ODD,) + SHAPES:
        s = setup(*shape)
        refs = references(s)
        rows: dict = {}
        for epi in ("plain", "conv1", "conv2"):
            row: dict = {}
            for where in ("below", "above", "none") if shape == ODD else ("below",):
                tri = check(s, refs, where, epi, "triton")
                glu = check(s, refs, where, epi, "gluon")
                if not glu:
                    continue
                row[where] = dict(triton=tri, gluon=glu)
                bound = 2 * tri["rel"] + 1e-6
                ok = glu["rel"] <= bound and glu["untouched"] and glu["finite"] and glu.get("history_ok", True)
                if epi == "conv2":
                    ok = ok and glu["sum_rel"] <= 2 * tri["sum_rel"] + 1e-6
                if not ok:
                    fails.append(f"{shape} {epi} {where}: gluon {glu} triton {tri}")
            rows[epi] = row
            print(shape, epi, json.dumps(row), flush=True)
        if shape != ODD:
            frames, h, w = shape
            out = torch.empty(frames + 2, h, w, C, device="cuda", dtype=torch.bfloat16)
            hist_out = torch.empty(2, h, w, C, device="cuda", dtype=torch.bfloat16)
            buf = s["buf"]
            for epi in ("plain", "conv1", "conv2"):
                x_out = s["res"].clone()
                times = {}
                for kind in ("triton", "gluon", "gluon_s3", "triton2"):
                    k = kind.rstrip("2").replace("_s3", "")
                    with variant(kind):
                        times[kind] = float(do_bench(lambda: run(k, s, buf[2:], buf[:2], epi, out, hist_out, x_out),
                                                     warmup=5, rep=60, return_mode="median"))
                first = None
                mism = 0
                for _ in range(REPEATS):
                    run("gluon", s, buf[2:], buf[:2], epi, out, hist_out, x_out if epi != "conv2" else s["res"].clone())
                    o = out[2:].clone()
                    if first is None:
                        first = o
                    elif not torch.equal(o, first):
                        mism += 1
                if mism:
                    fails.append(f"{shape} {epi}: {mism} of {REPEATS - 1} repeats differ")
                flop = 2 * frames * h * w * C * C * 27
                rows[epi]["ms"] = times
                rows[epi]["tflops_gluon"] = flop / times["gluon"] / 1e9
                rows[epi]["repeat_mismatches"] = mism
                print(shape, epi, json.dumps(times), f"{flop / times['gluon'] / 1e9:.0f} TFLOP/s", flush=True)
        report["shapes"][str(shape)] = rows
    report["broken"] = sorted(map(str, gluon_switch._broken))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print("failures:", fails or "none")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
