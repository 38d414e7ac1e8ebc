"""Exploration (dev tool, run on the device): the 480p VAE decode's passes outside the big convs,
at their real shapes: launch shapes of the RMS norm + SiLU stream kernel and of the bias + residual
add (against a plain device copy of the same bytes), and the head conv (96 -> 3 channels) padded
to more output channels.

The norm kernel took 131 ms of a 0.72 s 480p decode on an H100 (profile of commit f55bba7) while
the bytes it moves (the 96-channel full-resolution norms write every frame three times, for the
stacked conv) come to ~210 GB, ~70 ms at copy bandwidth. This times, per shape, the shipped launch
(rms_silu._blocks: 8192 elements a program, 4 warps) and other rows-per-program / warp counts,
checking that each launch writes the same bytes as the shipped one. The head conv ran on an sm80
cuDNN kernel at ~21 TFLOP/s (1.16 ms a chunk, 24 ms a decode): with its 3 output channels padded
with zero filters to 8, 16 or 32, cuDNN may pick a tensor-core kernel that is faster despite the
extra work.

    python3 benchmarks/explore_vae_passes.py [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovid.ops import rms_silu as rs  # noqa: E402

# (name, channels, frames in the chunk, height, width, taps): one chunk of the 480p decode
# (one latent frame: four output frames past the first chunk)
SHAPES = [
    ("96 ch 480x832, stacked taps", 96, 4, 480, 832, 3),
    ("192 ch 240x416", 192, 4, 240, 416, 1),
    ("384 ch 120x208", 384, 2, 120, 208, 1),
]
LAUNCHES = [(rows, warps) for rows in (16, 32, 64, 128) for warps in (2, 4, 8)]


def ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def stream_case(c: int, t: int, h: int, w: int, taps: int) -> dict:
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(t, h, w, c, device=dev, generator=gen, dtype=torch.float32).to(torch.bfloat16)
    gamma = torch.rand(c, device=dev, generator=gen) + 0.5
    bias = torch.randn(c, device=dev, generator=gen).to(torch.bfloat16)
    frame_rows = h * w
    hr = 2 * frame_rows
    history = torch.randn(hr, c, device=dev, generator=gen).to(torch.bfloat16)
    n = x.numel() // c
    n_out = n if taps == 3 else hr + n
    hist_out = torch.empty_like(history)
    outs = {}

    def launch(block_n: int, warps: int, out: torch.Tensor):
        block_c = triton.next_power_of_2(c)
        rs._rms_silu_stream_kernel[(triton.cdiv(hr + n, block_n),)](
            x, history, gamma, bias, out, hist_out, n, c, hr, n_out, taps * c, frame_rows, float(c) ** 0.5,
            SILU=True, HAS_BIAS=True, HAS_HIST=True, TAPS=taps, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps)

    moved = (x.numel() + history.numel() + n_out * taps * c + hist_out.numel()) * 2  # bytes read + written
    res = {"GB_moved": round(moved / 1e9, 3)}
    ref = torch.empty(n_out * taps * c, dtype=torch.bfloat16, device=dev)
    shipped = rs._blocks(c)[0]
    launch(shipped, 4, ref)
    src = torch.empty(moved // 4, dtype=torch.bfloat16, device=dev)  # a copy that moves the same bytes
    dst = torch.empty_like(src)
    t_copy = ms(lambda: dst.copy_(src))
    res["copy of the same bytes"] = {"ms": round(t_copy, 4), "GBps": round(moved / t_copy / 1e6, 1)}
    for block_n, warps in [(shipped, 4)] + [lw for lw in LAUNCHES if lw != (shipped, 4)]:
        if block_n * triton.next_power_of_2(c) > 32768:
            continue
        out = outs.setdefault("out", torch.empty_like(ref))
        out.zero_()
        launch(block_n, warps, out)
        same = bool(torch.equal(out, ref))
        t_ms = ms(lambda: launch(block_n, warps, out))
        key = f"{block_n} rows / {warps} warps" + (" (shipped)" if (block_n, warps) == (shipped, 4) else "")
        res[key] = {"ms": round(t_ms, 4), "GBps": round(moved / t_ms / 1e6, 1), "same_bytes": same}
    return res


def residual_case(c: int, t: int, h: int, w: int) -> dict:
    dev = torch.device("cuda")
    y = torch.randn(t * h * w * c, device=dev).to(torch.bfloat16)
    r = torch.randn_like(y)
    bias = torch.randn(c, device=dev).to(torch.bfloat16)
    moved = 3 * y.numel() * 2
    res = {"GB_moved": round(moved / 1e9, 3)}
    for block, warps in [(2048, 4), (1024, 4), (4096, 4), (4096, 8), (8192, 8), (2048, 8)]:
        yy = y.clone()
        t_ms = ms(lambda: rs._add_bias_residual_kernel[(triton.cdiv(yy.numel(), block),)](
            yy, bias, r, yy.numel(), c, HAS_RES=True, BLOCK=block, num_warps=warps))
        key = f"{block} elements / {warps} warps" + (" (shipped)" if (block, warps) == (2048, 4) else "")
        res[key] = {"ms": round(t_ms, 4), "GBps": round(moved / t_ms / 1e6, 1)}
    return res


def head_conv_case() -> dict:
    """The decoder's last conv as the fast path runs it: one 2D conv over the three time taps
    stacked as 288 channels (channels-last), one 480p chunk of four frames, 3 output channels, and
    the same with zero filters appended (the first 3 output channels must be the same)."""
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(4, 288, 480, 832, device=dev, generator=gen).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(3, 288, 3, 3, device=dev, generator=gen) * 0.02).to(torch.bfloat16)
    flop = 2 * 4 * 480 * 832 * 288 * 9 * 3
    res = {}
    ref = None
    for cout in (3, 4, 8, 16, 32):
        wp = torch.zeros(cout, 288, 3, 3, device=dev, dtype=torch.bfloat16)
        wp[:3] = w
        wp = wp.contiguous(memory_format=torch.channels_last)
        y = torch.nn.functional.conv2d(x, wp, padding=1)
        if ref is None:
            ref = y
        t_ms = ms(lambda: torch.nn.functional.conv2d(x, wp, padding=1))
        res[f"{cout} output channels"] = {"ms": round(t_ms, 4), "useful TFLOP/s": round(flop / t_ms / 1e9, 1),
                                          "max_diff_first_3": float((y[:, :3] - ref).abs().max())}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    cases = [(f"rms_silu_stream {name}", lambda c=c, t=t, h=h, w=w, taps=taps: stream_case(c, t, h, w, taps))
             for name, c, t, h, w, taps in SHAPES]
    cases += [(f"add_bias_residual {name.split(',')[0]}", lambda c=c, t=t, h=h, w=w: residual_case(c, t, h, w))
              for name, c, t, h, w, _ in SHAPES]
    cases += [("head conv 288 -> 3 (stacked taps), 4 frames 480x832", head_conv_case)]
    for key, case in cases:
        results[key] = case()
        print(key, json.dumps(results[key]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
