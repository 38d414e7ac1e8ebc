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
JSON to --out; exit status 1 if any check fails. explore_conv384.py runs the same checks on
ops/conv_gluon_coop.py (a Spec of its own).

    PYTHONPATH=$PWD python3 benchmarks/explore_conv192_ws.py --out $OUT/explore_conv192_ws.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field, replace
from types import ModuleType

import torch
from triton.testing import do_bench

from turbovid.ops import causal_conv, conv_gluon_wide, gluon_switch
from turbovid.ops.rms_silu import rms_silu_reference

REPEATS = 10


@dataclass(frozen=True)
class Spec:
    """A Gluon conv to explore against the Triton kernel: its module, channels, and the shapes."""
    kernel: ModuleType
    cin: int
    cout: int
    shapes: tuple  # (frames, rows, columns): the decode's chunks, timed
    odd: tuple = (3, 30, 50)  # rows and columns no tile divides; checked with each history placement
    variants: dict = field(default_factory=dict)  # extra timed kind -> {module attribute: value}


WIDE = Spec(conv_gluon_wide, 192, 192, ((8, 240, 416), (4, 360, 640)),  # the 480p / 720p decode's chunks
            variants={"gluon_s3": {"STAGES": 3}})


@contextlib.contextmanager
def variant(spec: Spec, kind: str):
    """The kernel module's attributes as `kind` sets them (spec.variants); the shipped launch otherwise."""
    changes = spec.variants.get(kind, {})
    saved = {k: getattr(spec.kernel, k) for k in changes}
    for k, v in changes.items():
        setattr(spec.kernel, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(spec.kernel, k, v)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def setup(spec: Spec, frames: int, h: int, w: int, seed: int = 3) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    ci, co = spec.cin, spec.cout
    buf = torch.randn(frames + 2, h, w, ci, device="cuda", generator=g).bfloat16()
    weight = torch.randn(co, ci, 3, 3, 3, device="cuda", generator=g) / (27 * ci) ** 0.5
    packed = causal_conv.pack(weight, torch.randn(co, device="cuda", generator=g) * 0.1, torch.bfloat16)
    p32 = causal_conv.pack(packed.ref_weight.float(), packed.bias.float(), torch.float32)
    gamma = 1 + 0.2 * torch.randn(co, device="cuda", generator=g)
    res = torch.randn(frames, h, w, co, device="cuda", generator=g).bfloat16()
    return dict(spec=spec, buf=buf, packed=packed, p32=p32, gamma=gamma, res=res)


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
    spec = s["spec"]
    if kind == "gluon":
        return spec.kernel.launch(frames_t, hist, packed.weight_k, packed.bias, out_pool[2:],
                                  causal_conv._stream_descriptor, kw.get("gamma"), True, kw.get("residual"),
                                  kw.get("x_out"), kw.get("history_out"))
    cfg = causal_conv.default_config(frames_t.device, spec.cin, spec.cout, h, w)
    triton_only = replace(packed, weight_k=None)  # no Gluon kernel to hand it to
    return causal_conv.launch(frames_t, hist, triton_only, cfg, out_pool[2:], True, kw.get("gamma"), True,
                              kw.get("residual"), kw.get("x_out"), kw.get("history_out"))


def check(s: dict, refs: dict, hist_where: str, epi: str, kind: str) -> dict:
    buf = s["buf"]
    frames, h, w, co = s["res"].shape
    pool = torch.full((frames + 6, h, w, buf.shape[-1]), float("nan"), device="cuda", dtype=torch.bfloat16)
    if hist_where == "below":
        hist, frames_t = pool[:2], pool[4:4 + frames]
    elif hist_where == "above":
        hist, frames_t = pool[frames + 4:frames + 6], pool[:frames]
    else:
        hist, frames_t = None, pool[4:4 + frames]
    if hist is not None:
        hist.copy_(buf[:2])
    frames_t.copy_(buf[2:])
    out = torch.full((frames + 2, h, w, co), float("nan"), device="cuda", dtype=torch.bfloat16)
    hist_out = torch.full((2, h, w, co), float("nan"), device="cuda", dtype=torch.bfloat16)
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


def main(specs: tuple[Spec, ...] = (WIDE,), doc: str = __doc__) -> None:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ["TURBOVID_GLUON"] = "1"
    report: dict = dict(device=torch.cuda.get_device_name(), shapes={}, failures=[])
    fails = report["failures"]
    for spec, shape in [(sp, sh) for sp in specs for sh in (sp.odd,) + sp.shapes]:
        s = setup(spec, *shape)
        refs = references(s)
        rows: dict = {}
        for epi in ("plain", "conv1", "conv2"):
            row: dict = {}
            for where in ("below", "above", "none") if shape == spec.odd else ("below",):
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
        if shape != spec.odd:
            frames, h, w = shape
            out = torch.empty(frames + 2, h, w, spec.cout, device="cuda", dtype=torch.bfloat16)
            hist_out = torch.empty(2, h, w, spec.cout, device="cuda", dtype=torch.bfloat16)
            buf = s["buf"]
            for epi in ("plain", "conv1", "conv2"):
                x_out = s["res"].clone()
                times = {}
                for kind in ("triton", "gluon", *spec.variants, "triton2"):
                    k = "triton" if kind.startswith("triton") else "gluon"
                    with variant(spec, kind):
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
                flop = 2 * frames * h * w * spec.cin * spec.cout * 27
                rows[epi]["ms"] = times
                rows[epi]["tflops_gluon"] = flop / times["gluon"] / 1e9
                rows[epi]["repeat_mismatches"] = mism
                print(shape, epi, json.dumps(times), f"{flop / times['gluon'] / 1e9:.0f} TFLOP/s", flush=True)
        report["shapes"][f"{spec.cin}->{spec.cout} {shape}" if specs != (WIDE,) else str(shape)] = rows
    report["broken"] = sorted(map(str, gluon_switch._broken))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print("failures:", fails or "none")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
