"""GPU checks of the fast VAE decode at the real Wan2.1 channel widths.

Run with `pytest -m gpu tests/test_vae_gpu.py`, or `python3 tests/test_vae_gpu.py` where pytest is missing.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Optional

import torch

from turbovid.models import vae_fast
from turbovid.models.vae import build_vae
from turbovid.models.vae_fast import fast_decode
from turbovid.ops import causal_conv, conv_head
from turbovid.ops.rms_silu import rms_silu, rms_silu_reference

try:
    import pytest

    pytestmark = pytest.mark.gpu
except ImportError:  # the GPU machine may lack pytest: see __main__ below
    pytest = None


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(4.0 / (a.double() - b.double()).pow(2).mean())).item()


@functools.cache
def vae32():
    return build_vae("wan2.1", device="cuda", dtype=torch.float32, seed=0)


@functools.cache
def case():
    z = torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(1)).cuda()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = vae32().decode(z, fast=False)
        fast32 = vae32().decode(z, fast=True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return z, ref, fast32


def test_fast_float32_matches_reference():
    z, ref, fast32 = case()
    assert ((fast32 - ref).norm() / ref.norm()).item() < 1e-4
    default = vae_fast.SMALL_CONV, vae_fast.WIDE_CONV
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for modes in (("stacked", "conv3d"), ("taps", "conv3d"), ("conv3d", "conv3d"), ("triton", "triton")):
            vae_fast.SMALL_CONV, vae_fast.WIDE_CONV = modes
            out = vae32().decode(z)
            assert ((out - ref).norm() / ref.norm()).item() < 1e-4, modes
    finally:
        vae_fast.SMALL_CONV, vae_fast.WIDE_CONV = default
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def test_fast_bf16_psnr():
    z, ref, _ = case()
    default = vae_fast.SMALL_CONV, vae_fast.WIDE_CONV, vae_fast.FUSE_NORM
    try:
        for *modes, fuse in (("stacked", "conv3d", True), ("triton", "triton", False), ("triton", "triton", True)):
            vae_fast.SMALL_CONV, vae_fast.WIDE_CONV = modes
            vae_fast.FUSE_NORM = fuse
            out = vae32().decode(z, fast=True, dtype=torch.bfloat16)
            assert out.dtype == torch.float32 and out.shape == ref.shape
            assert psnr(out, ref) >= 40, modes
    finally:
        vae_fast.SMALL_CONV, vae_fast.WIDE_CONV, vae_fast.FUSE_NORM = default


def test_fused_conv_epilogue_at_the_decoder_shapes(monkeypatch):
    """The Triton conv (TURBOVID_GLUON=0: on an H100 the 96-channel one is Gluon's, tested below) with
    bias + residual (the sum stored in the residual's place) + the next RMS norm + SiLU in its
    epilogue, into a view of the next conv's input, bf16, its tensors through descriptors (Hopper)
    and through pointers: against the float32 fused reference of the same bf16 inputs, within
    twice the error of the unfused pair (cuDNN's bf16 conv, its output rounded, then the norm)."""
    from dataclasses import replace

    monkeypatch.setenv("TURBOVID_GLUON", "0")
    for frames, h, w, c in ((4, 480, 832, 96), (8, 240, 416, 192), (2, 120, 208, 384)):
        g = torch.Generator(device="cuda").manual_seed(0)
        buf = torch.randn(frames + 2, h, w, c, device="cuda", generator=g).bfloat16()
        weight = torch.randn(c, c, 3, 3, 3, device="cuda", generator=g) / (27 * c) ** 0.5
        packed = causal_conv.pack(weight, torch.randn(c, device="cuda", generator=g) * 0.1, torch.bfloat16)
        gamma = 1 + 0.2 * torch.randn(c, device="cuda", generator=g)
        res = torch.randn(frames, h, w, c, device="cuda", generator=g).bfloat16()
        p32 = causal_conv.pack(packed.ref_weight.float(), packed.bias.float(), torch.float32)
        want = causal_conv.causal_conv_fused_reference(buf.float(), p32, torch.empty(frames, h, w, c, device="cuda"),
                                                      gamma=gamma, residual=res.float(), x_out=(s := res.float().clone()))
        y = causal_conv.causal_conv_reference(buf, packed, bias=False)  # the unfused pair, as vae_fast ran it
        summed = (y.float() + packed.bias.float() + res.float()).bfloat16()
        pair = rms_silu(summed, gamma)
        pair_err = ((pair.float() - want).norm() / want.norm()).item()
        cfg = causal_conv.default_config(buf.device, c, c, h, w, 2)
        for tma_io in (True, False):
            nxt = torch.full((frames + 2, h, w, c), float("nan"), device="cuda", dtype=torch.bfloat16)
            x_out = res.clone()
            causal_conv.causal_conv(buf, packed, out=nxt[2:], config=replace(cfg, tma_io=tma_io), gamma=gamma,
                                    residual=x_out, x_out=x_out)
            err = ((nxt[2:].float() - want).norm() / want.norm()).item()
            sum_err = ((x_out.float() - s).norm() / s.norm()).item()
            assert nxt[:2].isnan().all(), (c, tma_io)
            assert err <= 2 * pair_err + 1e-6 and sum_err < 4e-3, (c, tma_io, err, pair_err, sum_err)


def test_head_by_taps_at_the_decoder_shape():
    """The RGB head (norm + SiLU + 96 -> 3 conv) by taps at a 480p chunk, bf16, the residual sum
    formed in the norm: against the float32 conv of the same bf16 normalised input, within twice
    cuDNN's own bf16 error, and the stored sum exact; in two chunks (the partial sums carried) as
    in one, and bitwise the same when run again."""
    g = torch.Generator(device="cuda").manual_seed(1)
    x, res = (torch.randn(4, 480, 832, 96, device="cuda", generator=g).bfloat16() for _ in range(2))
    gamma, in_bias = 1 + 0.2 * torch.randn(96, device="cuda", generator=g), torch.randn(96, device="cuda").bfloat16()
    weight = torch.randn(3, 96, 3, 3, 3, device="cuda", generator=g) / (27 * 96) ** 0.5
    bias = torch.randn(3, device="cuda", generator=g)
    head = conv_head.pack(weight, bias, torch.bfloat16)
    x_out = torch.empty_like(x)
    out, _ = conv_head.stream(x, gamma, head, bias=in_bias, residual=res, x_out=x_out)
    assert torch.equal(conv_head.stream(x, gamma, head, bias=in_bias, residual=res)[0], out)
    first, partial = conv_head.stream(x[:3].contiguous(), gamma, head, bias=in_bias, residual=res[:3].contiguous())
    last, _ = conv_head.stream(x[3:].contiguous(), gamma, head, bias=in_bias, residual=res[3:].contiguous(),
                               partial=partial)
    assert (torch.cat([first, last]).float() - out.float()).abs().max().item() <= 2 ** -6 * out.abs().max().item()
    summed = (x.float() + in_bias.float() + res.float()).bfloat16()
    assert torch.equal(x_out, summed)
    y = rms_silu_reference(summed, gamma)
    buf = torch.cat([y.new_zeros(2, 480, 832, 96), y])
    ref = causal_conv.causal_conv_reference(buf.float(), causal_conv.pack(head.weight, bias, torch.float32))
    cudnn = causal_conv.causal_conv_reference(buf, causal_conv.pack(head.weight, bias, torch.bfloat16))
    err = ((out.float() - ref).norm() / ref.norm()).item()
    cudnn_err = ((cudnn.float() - ref).norm() / ref.norm()).item()
    assert out.shape == (4, 480, 832, 3) and err <= 2 * cudnn_err + 1e-6, (err, cudnn_err)


def test_auto_modes_take_the_kernel_on_hopper():
    modes = vae_fast.conv_modes(torch.device("cuda"))
    hopper = torch.cuda.get_device_capability() >= (9, 0)
    assert modes == (vae_fast.ConvModes("triton", "triton", "triton") if hopper
                     else vae_fast.ConvModes("stacked", "conv3d", "sdpa"))


def test_causal_conv_kernel_at_the_decoder_shapes(monkeypatch):
    monkeypatch.setenv("TURBOVID_GLUON", "0")  # the Triton kernel at every width
    for frames, h, w, c, cout in ((4, 480, 832, 96, 96), (4, 480, 832, 96, 3), (8, 240, 416, 192, 192),
                                  (4, 120, 208, 192, 384), (2, 60, 104, 384, 384)):
        _check_causal_conv(frames, h, w, c, cout)


def _check_causal_conv(frames, h, w, c, cout):
    """The Triton conv (TMA path on Hopper) at the 480p decode's shapes, bf16, against the float32
    conv of the same bf16 inputs: within twice cuDNN's own bf16 error."""
    g = torch.Generator(device="cuda").manual_seed(0)
    buf = torch.randn(frames + 2, h, w, c, device="cuda", generator=g).bfloat16()
    weight = torch.randn(cout, c, 3, 3, 3, device="cuda", generator=g) / (27 * c) ** 0.5
    bias = torch.randn(cout, device="cuda", generator=g)
    packed = causal_conv.pack(weight, bias, torch.bfloat16)
    ref = causal_conv.causal_conv_reference(buf.float(), causal_conv.pack(packed.ref_weight.float(), bias, torch.float32))
    out = causal_conv.causal_conv(buf, packed)
    cudnn = causal_conv.causal_conv_reference(buf, packed)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    cudnn_err = ((cudnn.float() - ref).norm() / ref.norm()).item()
    assert out.shape == (frames, h, w, cout) and err <= 2 * cudnn_err + 1e-6, (c, cout, err, cudnn_err)
    # the stream form, as the fast decode calls it: the history in a tensor of its own, below or
    # above the frames in memory (the 5-D descriptor's two slot orders): the same bytes
    pool = torch.full((frames + 6, h, w, c), float("nan"), device="cuda", dtype=torch.bfloat16)  # NaN: nothing else read
    for where, hist, frames_t in (("below", pool[:2], pool[4:4 + frames]),
                                  ("above", pool[frames + 4:frames + 6], pool[:frames])):
        hist.copy_(buf[:2])
        frames_t.copy_(buf[2:])
        y = causal_conv.causal_conv_stream(frames_t, hist, packed)
        assert torch.equal(y, out), (c, cout, where, (y.float() - out.float()).abs().max().item())
    # no history (the stream's start): zeros
    zero = torch.cat([torch.zeros_like(buf[:2]), buf[2:]])
    assert torch.equal(causal_conv.causal_conv_stream(frames_t, None, packed), causal_conv.causal_conv(zero, packed))


def test_conv_repeats_bitwise(monkeypatch):
    """Without causal_conv.fence_a, multi-row tiles' A operand was overwritten in registers while
    wgmma could still read it: on an H100 up to 30 of 30 repeats of one launch differed (384 -> 384
    normed at 4 x 120 x 208; 192 -> 192 at 8 x 240 x 416). Each launch, plain and normed, repeated
    40 times (its output refilled with NaN first) gives the same bytes."""
    monkeypatch.setenv("TURBOVID_GLUON", "0")
    for frames, h, w, c, cout in ((4, 120, 208, 384, 384), (8, 240, 416, 192, 192)):
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(frames, h, w, c, device="cuda", generator=g).bfloat16()
        hist = torch.randn(2, h, w, c, device="cuda", generator=g).bfloat16()
        weight = torch.randn(cout, c, 3, 3, 3, device="cuda", generator=g) / (27 * c) ** 0.5
        packed = causal_conv.pack(weight, torch.randn(cout, device="cuda", generator=g), torch.bfloat16)
        gamma = 1 + 0.2 * torch.randn(cout, device="cuda", generator=g)
        out = torch.empty(frames, h, w, cout, device="cuda", dtype=torch.bfloat16)
        for kw in ({}, {"gamma": gamma}):
            first = None
            for i in range(41):
                out.fill_(float("nan"))
                causal_conv.causal_conv_stream(x, hist, packed, out=out, **kw)
                if first is None:
                    first = out.clone()
                    assert not first.isnan().any()
                assert torch.equal(out, first), (c, cout, bool(kw), i, (out.float() - first.float()).abs().max().item())


def test_fast_decode_repeats_bitwise():
    """The fast bf16 decode of a 480p latent, repeated, gives the same video (before fence_a, 2 of 4
    repeats differed by up to 0.014)."""
    vae = build_vae("wan2.1", seed=0).to("cuda", torch.bfloat16).eval()
    z = torch.randn(1, 16, 21, 60, 104, generator=torch.Generator().manual_seed(7)).cuda()
    with torch.no_grad():
        first = vae.decode(z)
        for _ in range(3):
            assert torch.equal(vae.decode(z), first)


def test_stream_history_order_compiles_no_second_kernel(monkeypatch):
    """Whether the history lies below or above the frames (the allocator's choice) only changes
    runtime slot values: one compiled kernel, not a fresh compile mid-decode when the order flips.
    (The Triton kernel: the Gluon one, which takes the 96-channel conv on an H100, is checked in
    test_gluon_96_channel_conv_and_its_epilogues.)"""
    monkeypatch.setenv("TURBOVID_GLUON", "0")
    packed = causal_conv.pack(torch.randn(96, 96, 3, 3, 3, device="cuda") / 50, None, torch.bfloat16)
    pool = torch.randn(10, 16, 64, 96, device="cuda").bfloat16()
    causal_conv.causal_conv_stream(pool[4:8], pool[:2], packed)  # history below
    cache = causal_conv._causal_conv_kernel.device_caches[torch.cuda.current_device()][0]
    n = len(cache)
    causal_conv.causal_conv_stream(pool[:4], pool[6:8], packed)  # history above
    assert len(cache) == n


def conv_case(frames: int, h: int, w: int, c: int, seed: int, device: str = "cuda",
              cout: Optional[int] = None) -> SimpleNamespace:
    """A c -> cout (c if None) conv's random bf16 input, weights (+ bias), gamma and residual, the float32 references
    of its three epilogues (plain; conv1: the next norm; conv2: + the residual, its sum) and the
    bounds a kernel is held to: twice the error of the unfused cuDNN path against float32."""
    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    cout = cout or c
    g = torch.Generator(device=device).manual_seed(seed)
    buf = torch.randn(frames + 2, h, w, c, device=device, generator=g).bfloat16()
    weight = torch.randn(cout, c, 3, 3, 3, device=device, generator=g) / (27 * c) ** 0.5
    packed = causal_conv.pack(weight, torch.randn(cout, device=device, generator=g) * 0.1, torch.bfloat16)
    p32 = causal_conv.pack(packed.ref_weight.float(), packed.bias.float(), torch.float32)
    gamma = 1 + 0.2 * torch.randn(cout, device=device, generator=g)
    res = torch.randn(frames, h, w, cout, device=device, generator=g).bfloat16()
    plain_ref = causal_conv.causal_conv_reference(buf.float(), p32)
    cudnn = causal_conv.causal_conv_reference(buf, packed, bias=False)
    conv1_ref = rms_silu_reference(plain_ref, gamma)
    summed = res.float().clone()
    conv2_ref = causal_conv.causal_conv_fused_reference(buf.float(), p32, torch.empty_like(plain_ref), gamma=gamma,
                                                        residual=res.float(), x_out=summed)
    return SimpleNamespace(
        buf=buf, packed=packed, p32=p32, gamma=gamma, res=res, plain_ref=plain_ref, conv1_ref=conv1_ref,
        conv2_ref=conv2_ref, summed=summed,
        plain_bound=2 * rel(cudnn.float() + packed.bias.float(), plain_ref) + 1e-6,
        conv1_bound=2 * rel(rms_silu(cudnn + packed.bias, gamma), conv1_ref) + 1e-6,
        conv2_bound=2 * rel(rms_silu((cudnn.float() + packed.bias.float() + res.float()).bfloat16(), gamma),
                            conv2_ref) + 1e-6)


def test_gluon_96_channel_conv_and_its_epilogues(monkeypatch):
    """ops/conv_gluon.py, which causal_conv dispatches the 96 -> 96 conv to on an H100: at a 480p chunk
    and an odd shape (rows not a multiple of the tile's 6, columns not of 64), the history below or
    above the frames or none, into NaN-filled views of a larger buffer (nothing outside written):
    the plain conv, and the fused epilogues (conv1: the next norm + the history; conv2: + the residual
    sum stored in its place, launched directly: the decode runs it on the Triton kernel, faster
    there). Each within twice the error of the unfused cuDNN path against float32, as the Triton
    kernel is held to, the history the output's last two frames, and no fallback to the Triton
    kernel (no kernel compiled for a slot order)."""
    from turbovid.ops import conv_gluon, gluon_switch

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Gluon conv is compiled for sm_90")
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    cache = conv_gluon._conv96_kernel.device_caches[torch.cuda.current_device()][0]
    compiled = len(cache)

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    for frames, h, w in ((4, 480, 832), (3, 28, 100)):
        k = conv_case(frames, h, w, 96, 3)
        buf, packed, p32, gamma, res, summed = k.buf, k.packed, k.p32, k.gamma, k.res, k.summed
        plain_ref, conv1_ref, conv2_ref = k.plain_ref, k.conv1_ref, k.conv2_ref
        plain_bound, conv1_bound, conv2_bound = k.plain_bound, k.conv1_bound, k.conv2_bound
        pool = torch.full((frames + 6, h, w, 96), float("nan"), device="cuda", dtype=torch.bfloat16)
        for where, hist, frames_t in (("below", pool[:2], pool[4:4 + frames]),
                                      ("above", pool[frames + 4:frames + 6], pool[:frames]), ("none", None, None)):
            if hist is None:
                frames_t = pool[4:4 + frames]
                frames_t.copy_(buf[2:])
                want_plain = causal_conv.causal_conv_reference(
                    torch.cat([torch.zeros_like(buf[:2]), buf[2:]]).float(), p32)
            else:
                hist.copy_(buf[:2])
                frames_t.copy_(buf[2:])
                want_plain = plain_ref
            nxt = torch.full((frames + 2, h, w, 96), float("nan"), device="cuda", dtype=torch.bfloat16)
            y = causal_conv.causal_conv_stream(frames_t, hist, packed, out=nxt[2:])
            assert nxt[:2].isnan().all() and rel(y, want_plain) <= plain_bound, (h, where, rel(y, want_plain))
            if hist is None:
                continue
            nxt.fill_(float("nan"))
            hist_out = torch.full((2, h, w, 96), float("nan"), device="cuda", dtype=torch.bfloat16)
            causal_conv.causal_conv_stream(frames_t, hist, packed, out=nxt[2:], gamma=gamma, history_out=hist_out)
            assert nxt[:2].isnan().all() and torch.equal(hist_out, nxt[-2:]), (h, where)
            assert rel(nxt[2:], conv1_ref) <= conv1_bound, (h, where, rel(nxt[2:], conv1_ref), conv1_bound)
            x_out = res.clone()  # conv2's epilogue: causal_conv routes a residual to the Triton kernel, so direct
            conv_gluon.launch(frames_t, hist, packed.weight_k, packed.bias, nxt[2:], causal_conv._stream_descriptor,
                              gamma, True, x_out, x_out, hist_out)
            assert torch.equal(hist_out, nxt[-2:]) and rel(x_out, summed) < 4e-3, (h, where, rel(x_out, summed))
            assert rel(nxt[2:], conv2_ref) <= conv2_bound, (h, where, rel(nxt[2:], conv2_ref), conv2_bound)
    assert not gluon_switch._broken, gluon_switch._broken
    # two shapes x three epilogues: the slot orders and a missing history compiled nothing more
    assert 0 < len(cache) - compiled <= 6, len(cache) - compiled


@pytest.mark.parametrize("module, kernel, c, cout, shapes", [
    # 480p chunks (consumers on alternate tiles) and odd shapes (rows not a multiple of the tile's 4,
    # columns not of 32; fewer tiles than SMs)
    ("conv_gluon_wide", "_conv192_kernel", 192, 192, ((8, 240, 416), (3, 30, 50))),
    # 480p's and 720p's tiles (8 x 16, 4 x 32) and odd shapes, one cutting 16 x 8 tiles
    ("conv_gluon_coop", "_conv384_kernel", 384, 384, ((4, 120, 208), (3, 30, 50))),
    ("conv_gluon_coop", "_conv384_kernel", 192, 384, ((2, 180, 320), (3, 22, 40))),
])
def test_gluon_wide_convs_and_their_epilogues(monkeypatch, module, kernel, c, cout, shapes):
    """ops/conv_gluon_wide.py and conv_gluon_coop.py, which causal_conv dispatches the 192 -> 192 and
    the convs to 384 channels to on an H100: at decode chunks and odd shapes, the history below or
    above the frames or none, into NaN-filled views of a larger buffer: the plain conv, conv1 (the
    next norm + the history) and conv2 (+ the residual sum stored in its place). Each within twice
    the error of the unfused cuDNN path against float32, the history the output's last two frames,
    repeats bitwise the same, and no fallback to the Triton kernel."""
    import importlib

    from turbovid.ops import gluon_switch

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Gluon conv is compiled for sm_90")
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    cache = getattr(importlib.import_module(f"turbovid.ops.{module}"), kernel).device_caches[
        torch.cuda.current_device()][0]
    compiled = len(cache)

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    for frames, h, w in shapes:
        k = conv_case(frames, h, w, c, 5, cout=cout)
        buf, packed, p32, gamma, res, summed = k.buf, k.packed, k.p32, k.gamma, k.res, k.summed
        plain_ref, conv1_ref, conv2_ref = k.plain_ref, k.conv1_ref, k.conv2_ref
        plain_bound, conv1_bound, conv2_bound = k.plain_bound, k.conv1_bound, k.conv2_bound
        assert packed.weight_k is not None
        pool = torch.full((frames + 6, h, w, c), float("nan"), device="cuda", dtype=torch.bfloat16)
        for where, hist, frames_t in (("below", pool[:2], pool[4:4 + frames]),
                                      ("above", pool[frames + 4:frames + 6], pool[:frames]), ("none", None, None)):
            if hist is None:
                frames_t = pool[4:4 + frames]
                frames_t.copy_(buf[2:])
                want_plain = causal_conv.causal_conv_reference(
                    torch.cat([torch.zeros_like(buf[:2]), buf[2:]]).float(), p32)
            else:
                hist.copy_(buf[:2])
                frames_t.copy_(buf[2:])
                want_plain = plain_ref
            nxt = torch.full((frames + 2, h, w, cout), float("nan"), device="cuda", dtype=torch.bfloat16)
            y = causal_conv.causal_conv_stream(frames_t, hist, packed, out=nxt[2:])
            assert nxt[:2].isnan().all() and rel(y, want_plain) <= plain_bound, (h, where, rel(y, want_plain))
            if hist is None:
                continue
            nxt.fill_(float("nan"))
            hist_out = torch.full((2, h, w, cout), float("nan"), device="cuda", dtype=torch.bfloat16)
            causal_conv.causal_conv_stream(frames_t, hist, packed, out=nxt[2:], gamma=gamma, history_out=hist_out)
            assert nxt[:2].isnan().all() and torch.equal(hist_out, nxt[-2:]), (h, where)
            assert rel(nxt[2:], conv1_ref) <= conv1_bound, (h, where, rel(nxt[2:], conv1_ref), conv1_bound)
            first = None
            for _ in range(3):  # conv2, repeated: the same bits each time
                x_out = res.clone()
                causal_conv.causal_conv_stream(frames_t, hist, packed, out=nxt[2:], gamma=gamma, residual=x_out,
                                               x_out=x_out, history_out=hist_out)
                assert torch.equal(hist_out, nxt[-2:]) and rel(x_out, summed) < 4e-3, (h, where, rel(x_out, summed))
                assert rel(nxt[2:], conv2_ref) <= conv2_bound, (h, where, rel(nxt[2:], conv2_ref), conv2_bound)
                first = nxt[2:].clone() if first is None else first
                assert torch.equal(nxt[2:], first), (h, where)
    assert not gluon_switch._broken, gluon_switch._broken
    # two shapes x three epilogues: the slot orders and a missing history compiled nothing more
    assert 0 < len(cache) - compiled <= 6, len(cache) - compiled


def test_upsample_conv_at_the_decoder_shapes():
    """The upsamplers' 2x2 phase convs (ops/upsample_conv.py) on our conv kernel at the 480p decode's
    chunk shapes, bf16, into NaN-filled outputs: the plain output within twice the error of the cuDNN
    path (conv2d + interleave) against float32; with the norm in the epilogue (descriptor and
    pointer stores), the same output, its norm within twice the error of a norm pass over it, and
    the history the norm's last two frames. The four phases share one compiled kernel."""
    from dataclasses import replace

    from turbovid.ops import upsample_conv
    for frames, h, w, c, cout in ((8, 120, 208, 384, 192), (8, 240, 416, 192, 96)):
        g = torch.Generator(device="cuda").manual_seed(2)
        x = torch.randn(frames, h, w, c, device="cuda", generator=g).bfloat16()
        weight = torch.randn(cout, c, 3, 3, device="cuda", generator=g) / (9 * c) ** 0.5
        bias = torch.randn(cout, device="cuda", generator=g) * 0.1
        packed = upsample_conv.pack(weight, bias, torch.bfloat16)
        p32 = upsample_conv.pack(weight.bfloat16().float(), packed.bias.float(), torch.float32)
        ref = upsample_conv.upsample_conv_reference(x.float(), p32,
                                                    torch.empty(frames, 2 * h, 2 * w, cout, device="cuda"))
        cudnn = upsample_conv.upsample_conv_reference(x, packed, x.new_empty(ref.shape))

        def nan(*shape):
            return torch.full(shape, float("nan"), device="cuda", dtype=torch.bfloat16)

        def rel(a, b):
            return ((a.float() - b.float()).norm() / b.float().norm()).item()
        out = upsample_conv.upsample_conv(x, packed, nan(*ref.shape))
        cache = causal_conv._causal_conv_kernel.device_caches[torch.cuda.current_device()][0]
        n = len(cache)
        upsample_conv.upsample_conv(x, packed, nan(*ref.shape))
        assert len(cache) == n, "a phase compiled a kernel of its own"
        assert rel(out, ref) <= 2 * rel(cudnn, ref) + 1e-6, (c, rel(out, ref), rel(cudnn, ref))
        gamma = 1 + 0.2 * torch.randn(cout, device="cuda", generator=g)
        want = rms_silu_reference(out.float(), gamma)
        pass_err = rel(rms_silu(out, gamma), want)  # the norm kernel's pass over the stored output
        cfg = upsample_conv.default_config(x.device, c, cout, h, w, 2)
        for tma_io in (True, False):
            y, normed, hist = nan(*ref.shape), nan(*ref.shape), nan(2, *ref.shape[1:])
            upsample_conv.upsample_conv(x, packed, y, gamma=gamma, normed=normed, history_out=hist,
                                        config=replace(cfg, tma_io=tma_io))
            assert torch.equal(y, out), (c, tma_io)
            assert rel(normed, want) <= 2 * pass_err + 1e-6, (c, tma_io, rel(normed, want), pass_err)
            assert torch.equal(hist, normed[-2:]), (c, tma_io)


def test_wide_attention_at_the_decoder_shape():
    """The middle attention's kernel (one head of 384) on 4 latent frames of 60 x 104 tokens, bf16,
    q / k / v slices of one projection: against float32 attention of the same inputs, within twice
    the error of PyTorch's bf16 attention."""
    from turbovid.ops import wide_attention
    g = torch.Generator(device="cuda").manual_seed(3)
    qkv = torch.randn(4, 6240, 3 * 384, device="cuda", generator=g).bfloat16()
    q, k, v = qkv.split(384, dim=-1)
    out = wide_attention.attention(q, k, v)
    ref = wide_attention.attention_reference(q.float(), k.float(), v.float())
    sdpa = wide_attention.attention_reference(q, k, v)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    sdpa_err = ((sdpa.float() - ref).norm() / ref.norm()).item()
    assert torch.isfinite(out).all() and err <= 2 * sdpa_err + 1e-6, (err, sdpa_err)


def test_tiled_bf16_close_to_untiled():
    z = torch.randn(1, 16, 2, 20, 40, generator=torch.Generator().manual_seed(2)).cuda()
    whole = vae32().decode(z, tiling="off", dtype=torch.bfloat16)
    tiled = vae32().decode(z, tiling="on", dtype=torch.bfloat16)
    assert 35 <= psnr(tiled, whole) < 200


def test_rms_silu_kernel_bf16_error_bound():
    x = torch.randn(3, 4, 33, 17, 96, device="cuda")
    g = 1 + 0.3 * torch.randn(96, device="cuda")
    ref = rms_silu_reference(x, g)  # float32
    out = rms_silu(x.bfloat16(), g)
    torch_bf16 = rms_silu_reference(x.bfloat16(), g)
    err = (out.float() - ref).norm() / ref.norm()
    torch_err = (torch_bf16.float() - ref).norm() / ref.norm()
    assert err <= 2 * torch_err + 1e-6


def test_fast_decode_plan_uses_free_memory():
    z = torch.randn(1, 16, 2, 4, 4, device="cuda")
    out = fast_decode(vae32(), z)  # auto: small input, untiled, one chunk
    assert out.shape == (1, 3, 5, 32, 32) and torch.isfinite(out).all()


if __name__ == "__main__":
    failed = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            try:
                fn()
                print("PASS", name)
            except Exception as e:  # noqa: BLE001
                failed += 1
                print("FAIL", name, type(e).__name__, e)
    raise SystemExit(1 if failed else 0)
