"""Fast VAE decode (issue 8) on the CPU: same result as the chunked reference, tiling bounds, plans,
and the fused RMS-norm + SiLU kernel in Triton's interpreter."""
from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest
import torch

from turbovid.configs import VAE_PRESETS, VAEConfig
from turbovid.models import vae_fast
from turbovid.models.vae import Resample, build_vae
from turbovid.models.vae_fast import FastUpsample, fast_decode
from turbovid.models.vae_tiling import (
    DEFAULT_SOFT_CAP,
    GiB,
    MAX_ELEMENTS,
    _tiles,
    estimate_bytes,
    latent_output_elements,
    latent_stage_elements,
    plan_decode,
    tile_weights,
    up_stage_elements,
)
from interpreter_helpers import assert_runs_interpreted


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(4.0 / (a.double() - b.double()).pow(2).mean())).item()  # video range [-1, 1]


@pytest.fixture(scope="module")
def vae():
    return build_vae("tiny-random", seed=3)


@pytest.fixture(scope="module")
def latents_and_reference(vae):
    zn = torch.randn(1, 16, 3, 3, 5)
    return zn, vae.decode(zn, fast=False)


@pytest.mark.parametrize("mode", ["stacked", "taps", "conv3d"])
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_fast_equals_chunked_reference(vae, latents_and_reference, chunk, mode, monkeypatch):
    monkeypatch.setattr(vae_fast, "SMALL_CONV", mode)  # the tiny config's convs are all "small"
    zn, ref = latents_and_reference
    plan = replace(plan_decode(vae.cfg, 3, 3, 5, 4, "off"), chunk=chunk, mid_chunk=chunk)
    out = fast_decode(vae, zn, plan=plan)
    assert {c.mode for c in _convs(vae_fast.prepared(vae, zn.device, torch.float32))} == {mode, "conv3d"}
    assert out.shape == ref.shape == (1, 3, 9, 24, 40)
    assert rel(out, ref) < 1e-5  # float32 rounding: the sub-pixel conv sums taps in another order


def test_triton_small_conv_equals_chunked_reference(monkeypatch):
    """SMALL_CONV="triton" where channels allow it (multiples of 16: a dim-16 VAE); on the CPU the
    conv's PyTorch path runs (the kernel itself: test_causal_conv.py, and the interpreted decode below)."""
    monkeypatch.setattr(vae_fast, "SMALL_CONV", "triton")
    vae16 = build_vae(VAEConfig(dim=16), seed=5)
    zn = torch.randn(1, 16, 3, 2, 3)
    ref = vae16.decode(zn, fast=False)
    out = fast_decode(vae16, zn, plan=replace(plan_decode(vae16.cfg, 3, 2, 3, 4, "off"), chunk=2, mid_chunk=2))
    assert {c.mode for c in _convs(vae_fast.prepared(vae16, zn.device, torch.float32))} == {"triton", "conv3d"}
    assert rel(out, ref) < 1e-5
    from turbovid.models.vae import CausalConv3d
    triton = vae_fast.ConvModes("triton", "triton")
    modes = {cin: vae_fast.FastConv(CausalConv3d(cin, 4, 3, padding=1), torch.float32, normed=True, modes=triton).mode
             for cin in (8, 16, 48, 192)}
    assert modes == {8: "conv3d", 16: "triton", 48: "triton", 192: "triton"}  # 8: below the kernel's smallest slice


def test_wide_triton_convs_equal_chunked_reference(vae, latents_and_reference, monkeypatch):
    """WIDE_CONV="triton": convs over more than SMALL_CHANNELS inputs take the kernel too (here all
    but the 8-channel ones, SMALL_CHANNELS lowered to 8; on the CPU the conv's PyTorch path runs)."""
    monkeypatch.setattr(vae_fast, "SMALL_CHANNELS", 8)
    monkeypatch.setattr(vae_fast, "SMALL_CONV", "stacked")
    monkeypatch.setattr(vae_fast, "WIDE_CONV", "triton")
    zn, ref = latents_and_reference
    out = fast_decode(vae, zn, plan=replace(plan_decode(vae.cfg, 3, 3, 5, 4, "off"), chunk=2, mid_chunk=2))
    assert {c.mode for c in _convs(vae_fast.prepared(vae, zn.device, torch.float32))} == {"stacked", "triton", "conv3d"}
    assert rel(out, ref) < 1e-5


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_norm_in_conv_epilogue_equals_unfused(chunk, monkeypatch):
    """FUSE_NORM: in the "triton" modes each residual block's convs end with the next norm (conv2:
    + bias + residual, then the next block's first norm) and write the next conv's input; any
    temporal chunking carries the stream history across. On the CPU the conv's PyTorch path runs
    (the kernel's epilogue: test_causal_conv.py, and the interpreted decode above)."""
    monkeypatch.setattr(vae_fast, "SMALL_CONV", "triton")
    monkeypatch.setattr(vae_fast, "WIDE_CONV", "triton")
    vae16 = build_vae(VAEConfig(dim=16), seed=5)
    zn = torch.randn(1, 16, 3, 2, 3)
    ref = vae16.decode(zn, fast=False)
    plan = replace(plan_decode(vae16.cfg, 3, 2, 3, 4, "off"), chunk=chunk, mid_chunk=chunk)
    calls = []
    real = vae_fast.FastConv.conv_into

    def conv_into(self, buf, state, key, gamma, residual=None, x_out=None):
        calls.append((key, residual is not None, x_out is not None and x_out.data_ptr() == residual.data_ptr()))
        return real(self, buf, state, key, gamma, residual, x_out)

    monkeypatch.setattr(vae_fast.FastConv, "conv_into", conv_into)
    ups = []  # upsampler calls: whether each wrote the next block's conv1 input
    real_up = vae_fast.upsample_conv.upsample_conv

    def upsample(x, conv, out=None, gamma=None, **kw):
        ups.append(gamma is not None)
        return real_up(x, conv, out, gamma, **kw)

    monkeypatch.setattr(vae_fast.upsample_conv, "upsample_conv", upsample)
    fused = fast_decode(vae16, zn, plan=plan)
    passes = -(-3 // chunk)
    # the latent stage's upsampler runs plain (its output is kept for the chunks); per chunk, the
    # first chunked one feeds a fusable block, the last one heads by taps
    assert ups == [False] * passes + [True, False] * passes
    # per pass: conv1 of every fusable block (the 16-channel ones at full resolution are heads by
    # taps here, so not fusable), conv2 of those followed by a fusable block
    dec = vae_fast.prepared(vae16, zn.device, torch.float32)
    fusable = [[isinstance(l, vae_fast.FastRes) and l.fusable() for l in layers] for layers in (dec.mid, dec.up)]
    firsts = sum(sum(f) for f in fusable)
    chained = sum(a and b for f in fusable for a, b in zip(f, f[1:]))
    assert (firsts, chained) == (11, 6)  # mid: 2 blocks, an attention between; up: 3 stages of 3 (+ heads)
    with_res = [c for c in calls if c[1]]
    assert len(calls) - len(with_res) == passes * firsts and len(with_res) == passes * chained
    # the sum goes into h's place, but not over the caller's tensor: the latent stage's output, of
    # which the chunked up stage reads slices. With LOW_STAGES its first block (up4) has a shortcut,
    # so h is its own; without, up0's h is that slice (the key is the next block's).
    assert dec.low == 4 and all(in_place for _, _, in_place in with_res)
    calls.clear()
    monkeypatch.setattr(vae_fast, "LOW_STAGES", False)
    whole = fast_decode(vae16, zn, plan=plan)
    assert vae_fast.prepared(vae16, zn.device, torch.float32).low == 0
    assert all(in_place == (key != "up1.1") for key, res, in_place in calls if res)
    assert rel(whole, fused) < 1e-5
    monkeypatch.setattr(vae_fast, "LOW_STAGES", True)
    monkeypatch.setattr(vae_fast, "FUSE_NORM", False)
    ups.clear()
    unfused = fast_decode(vae16, zn, plan=plan)
    assert ups and not any(ups)
    assert rel(fused, unfused) < 1e-5 and rel(fused, ref) < 1e-5


def test_residual_left_to_the_next_norm_equals_fused(monkeypatch):
    """Where causal_conv.residual_in_epilogue says no (the Gluon 96-channel conv on an H100), conv2
    runs plain and returns a Pending: the next block's conv1 norm forms the sum (into conv2's output,
    the next residual) in its pass. Same video as the fused epilogue."""
    monkeypatch.setattr(vae_fast, "SMALL_CONV", "triton")
    monkeypatch.setattr(vae_fast, "WIDE_CONV", "triton")
    vae16 = build_vae(VAEConfig(dim=16), seed=5)
    zn = torch.randn(1, 16, 3, 2, 3)
    plan = replace(plan_decode(vae16.cfg, 3, 2, 3, 4, "off"), chunk=2, mid_chunk=2)
    fused = fast_decode(vae16, zn, plan=plan)
    calls = []
    real = vae_fast.FastConv.conv_into

    def conv_into(self, buf, state, key, gamma, residual=None, x_out=None):
        calls.append(residual is not None)
        return real(self, buf, state, key, gamma, residual, x_out)

    sums = []
    real_norm = vae_fast.rms_silu_stream

    def norm(x, *args, residual=None, x_out=None, **kw):
        sums.append(residual is not None and x_out is not None and x_out.data_ptr() == x.data_ptr())
        return real_norm(x, *args, residual=residual, x_out=x_out, **kw)

    monkeypatch.setattr(vae_fast.FastConv, "conv_into", conv_into)
    monkeypatch.setattr(vae_fast, "rms_silu_stream", norm)
    monkeypatch.setattr(vae_fast.causal_conv, "residual_in_epilogue", lambda frames, conv: False)
    split = fast_decode(vae16, zn, plan=plan)
    assert calls and not any(calls)  # no conv took a residual
    assert sum(sums) == 6 * 2  # the norm formed every chained block's sum (6 a pass, 2 passes), in y's place
    assert rel(split, fused) < 1e-5


def test_conv_modes_resolve(monkeypatch):
    assert vae_fast.conv_modes(torch.device("cpu")) == vae_fast.ConvModes("stacked", "conv3d", "sdpa")  # no Hopper path
    monkeypatch.setattr(vae_fast, "ATTENTION", "flash")
    with pytest.raises(ValueError, match="ATTENTION"):
        vae_fast.conv_modes(torch.device("cpu"))
    monkeypatch.setattr(vae_fast, "ATTENTION", "auto")
    monkeypatch.setattr(vae_fast, "WIDE_CONV", "stacked")
    with pytest.raises(ValueError, match="WIDE_CONV"):
        vae_fast.conv_modes(torch.device("cpu"))


def test_attention_modes_equal_chunked_reference(vae, latents_and_reference, monkeypatch):
    """ATTENTION="triton": the middle attention through ops/wide_attention.py (its PyTorch path on
    the CPU; the kernel: test_wide_attention.py and the interpreted decode below)."""
    zn, ref = latents_and_reference
    monkeypatch.setattr(vae_fast, "ATTENTION", "triton")
    out = fast_decode(vae, zn, plan=replace(plan_decode(vae.cfg, 3, 3, 5, 4, "off"), chunk=2, mid_chunk=2))
    attn = [l for l in vae_fast.prepared(vae, zn.device, torch.float32).mid if isinstance(l, vae_fast.FastAttention)]
    assert attn and all(a.mode == "triton" for a in attn)
    assert rel(out, ref) < 1e-5


INTERPRETED_DECODE = textwrap.dedent(
    """
    import torch
    from dataclasses import replace
    from turbovid.configs import VAEConfig
    from turbovid.models import vae_fast
    from turbovid.models.vae import build_vae
    from turbovid.models.vae_fast import fast_decode
    from turbovid.models.vae_tiling import plan_decode
    from turbovid.ops import rms_silu
    vae_fast.SMALL_CONV = vae_fast.WIDE_CONV = vae_fast.ATTENTION = "triton"
    vae16 = build_vae(VAEConfig(dim=16), seed=5)
    zn = torch.randn(1, 16, 2, 2, 2)
    ref = vae16.decode(zn, fast=False)
    rms_silu.allow_interpreter(True)  # every kernel of the decode, interpreted
    out = fast_decode(vae16, zn, plan=replace(plan_decode(vae16.cfg, 2, 2, 2, 4, "off"), chunk=1, mid_chunk=2))
    dec = vae_fast.prepared(vae16, zn.device, torch.float32)
    assert [l.mode for l in dec.mid if isinstance(l, vae_fast.FastAttention)] == ["triton"]
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < 1e-5, err
    print("kernel ok")
    """
)


def test_interpreted_triton_decode_equals_reference():
    """The whole fast decode with our kernels (conv, head by taps, middle attention, norms,
    interleaves) in Triton's interpreter against the chunked float32 reference."""
    assert_runs_interpreted(INTERPRETED_DECODE, timeout=600)


def _convs(dec):
    for layer in (*dec.mid, *dec.up):
        yield from (getattr(layer, n) for n in ("conv1", "conv2") if hasattr(layer, n))
    yield dec.conv_in


def test_default_decode_is_fast_and_batched(vae):
    zn = torch.randn(2, 16, 2, 3, 4)
    out = vae.decode(zn)  # fast=True, tiling="auto"
    ref = torch.cat([vae.decode(zn[i:i + 1], fast=False) for i in range(2)])
    assert rel(out, ref) < 1e-5


def test_fast_other_temporal_layout():
    cfg = VAEConfig(dim=4, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, False))
    vae = build_vae(cfg, seed=4)
    zn = torch.randn(1, 16, 3, 3, 5)
    ref = vae.decode(zn, fast=False)
    out = fast_decode(vae, zn, plan=replace(plan_decode(cfg, 3, 3, 5, 4, "off"), chunk=2, mid_chunk=1))
    assert out.shape == (1, 3, 5, 12, 20) and rel(out, ref) < 1e-5


def test_subpixel_upsample_matches_nearest_then_conv():
    torch.manual_seed(0)
    block = Resample(6, "up2d").eval()
    x = torch.randn(1, 6, 2, 5, 7)
    with torch.no_grad():
        ref = block(x)  # (1, 3, 2, 10, 14)
        out = FastUpsample(block, torch.float32)(x.permute(0, 2, 3, 4, 1).contiguous(), {}, "u")
    assert rel(out.permute(0, 4, 1, 2, 3), ref) < 1e-6


def test_fast_weights_follow_module_changes(vae):
    zn = torch.randn(1, 16, 1, 2, 2)
    before = vae.decode(zn)
    src = build_vae("tiny-random", seed=9)
    vae2 = build_vae("tiny-random", seed=3)
    vae2.decode(zn)  # fills its prepared-weights cache
    vae2.load_state_dict(src.state_dict())
    after = vae2.decode(zn)
    assert torch.allclose(after, src.decode(zn, fast=False), atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-3)


def test_tiled_decode_bound_and_exact_far_from_seams(vae):
    zn = torch.randn(1, 16, 1, 3, 40)
    ref = vae.decode(zn)  # untiled fast decode (equal to the reference, tested above)
    grid, halo = (1, 2), 4
    plan = replace(plan_decode(vae.cfg, 1, 3, 40, 4, "on"), grid=grid, halo=halo, tiles=_tiles(3, 40, grid, halo))
    assert plan.tiles == ((0, 3, 0, 24), (0, 3, 16, 40))
    out = fast_decode(vae, zn, plan=plan)
    assert psnr(out, ref) > 45
    # The upsampling stage sees ~13 latent pixels around each output pixel, and the middle blocks
    # run untiled: columns more than that from the tile edges (latent 16 and 24) are exact.
    assert rel(out[..., : 8 * 8], ref[..., : 8 * 8]) < 1e-5
    assert rel(out[..., -8 * 8:], ref[..., -8 * 8:]) < 1e-5
    # ...while a tile decoded alone differs near its edge (the test would notice missing blending).
    single = replace(plan, grid=(1, 1), tiles=((0, 3, 0, 24),), halo=0)
    alone = fast_decode(vae, zn[..., :24], plan=single)
    assert (alone[..., 180:192] - ref[..., 180:192]).abs().max() > 1e-3


@pytest.mark.parametrize("tiled", [False, True])
def test_frames_are_handed_over_once_final(vae, tiled):
    # on_frames sees every frame once, in order, with its final value: chunk by chunk untiled,
    # during the last tile when tiled (earlier tiles still add to every frame)
    zn = torch.randn(2, 16, 3, 3, 40)
    plan = plan_decode(vae.cfg, 3, 3, 40, 4, "off")
    if tiled:
        plan = replace(plan, grid=(1, 2), halo=4, tiles=_tiles(3, 40, (1, 2), 4))
    plan = replace(plan, chunk=1)
    got = []
    out = fast_decode(vae, zn, plan=plan, on_frames=lambda b, f0, x: got.append((b, f0, x.clone())))
    assert [(b, f0, x.shape[1]) for b, f0, x in got] == [(b, f0, n) for b in (0, 1) for f0, n in ((0, 1), (1, 4), (5, 4))]
    for b in (0, 1):
        assert torch.equal(torch.cat([x for i, _, x in got if i == b], dim=1), out[b])
    # without the returned video: the same frames, passed through only (untiled: no float32 video)
    streamed = []
    assert fast_decode(vae, zn, plan=plan, return_video=False, on_frames=lambda b, f0, x: streamed.append(x.float())) is None
    assert len(streamed) == len(got) and all(torch.equal(a, b) for a, (_, _, b) in zip(streamed, got))
    with pytest.raises(ValueError, match="needs on_frames"):
        fast_decode(vae, zn, plan=plan, return_video=False)
    # the reference decode hands over each whole video
    seen = []
    ref = vae.decode(zn, fast=False, on_frames=lambda b, f0, x: seen.append((b, f0, x.shape)))
    assert seen == [(0, 0, ref.shape[1:]), (1, 0, ref.shape[1:])]


def test_streaming_plans_leave_the_video_out_unless_tiled(vae):
    cfg = VAE_PRESETS["wan2.1"]
    video = 3 * 81 * 480 * 832 * 4
    assert estimate_bytes(cfg, 21, 60, 104, 2, 1, 21) - estimate_bytes(cfg, 21, 60, 104, 2, 1, 21, keep_video=False) == video
    untiled = plan_decode(cfg, 21, 60, 104, 2, "off", budget=70 * GiB, keep_video=False)
    assert untiled.est_bytes == plan_decode(cfg, 21, 60, 104, 2, "off", budget=70 * GiB).est_bytes - video
    # a budget the whole video does not fit beside the decode, but the streamed frames do: no tiles
    budget = untiled.est_bytes + video // 2
    assert plan_decode(cfg, 21, 60, 104, 2, "auto", budget=budget, soft_cap=None, keep_video=False).grid == (1, 1)
    tiled = plan_decode(cfg, 21, 60, 104, 2, "auto", budget=budget, soft_cap=None)
    assert tiled.grid != (1, 1)
    # tiles add into one video buffer, so a tiled plan counts it either way
    assert plan_decode(cfg, 21, 60, 104, 2, "on", budget=70 * GiB, keep_video=False) == plan_decode(
        cfg, 21, 60, 104, 2, "on", budget=70 * GiB)


def test_tiling_auto_follows_budget(vae):
    zn = torch.randn(1, 16, 1, 8, 12)
    ref = vae.decode(zn)
    whole = estimate_bytes(vae.cfg, 1, 8, 12, 4, 1, 1)
    plan = plan_decode(vae.cfg, 1, 8, 12, 4, "auto", budget=whole - 1, soft_cap=None)
    assert plan.grid[0] * plan.grid[1] >= 2 and plan.est_bytes <= whole - 1
    out = vae.decode(zn, tiling="auto", memory_budget=whole - 1)
    assert 35 < psnr(out, ref) < 200  # tiled: close to, but not bit-equal to, the untiled decode
    assert plan_decode(vae.cfg, 1, 8, 12, 4, "auto", budget=None).grid == (1, 1)
    assert plan_decode(vae.cfg, 1, 8, 12, 4, "off", budget=whole - 1).grid == (1, 1)
    assert plan_decode(vae.cfg, 1, 8, 12, 4, "on", budget=None).grid != (1, 1)


def test_tile_weights_partition_of_unity():
    for grid, halo in (((2, 3), 4), ((3, 1), 2)):
        h, w = 24, 30
        plan = plan_decode(VAE_PRESETS["tiny-random"], 1, h, w, 4, "on")
        plan = replace(plan, grid=grid, halo=halo, tiles=_tiles(h, w, grid, halo))
        total = torch.zeros(8 * h, 8 * w)
        for r0, r1, c0, c1 in plan.tiles:
            total[8 * r0:8 * r1, 8 * c0:8 * c1] += tile_weights(plan, (r0, r1, c0, c1), h, w, 8, torch.device("cpu"))
        assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


def test_real_config_plans():
    cfg = VAE_PRESETS["wan2.1"]
    k1 = estimate_bytes(cfg, 21, 60, 104, 2, 1, 21)
    assert k1 < estimate_bytes(cfg, 21, 60, 104, 2, 2, 21) < estimate_bytes(cfg, 21, 60, 104, 2, 4, 21)
    # 480p on a big card: untiled, chunks sized under the soft cap
    p480 = plan_decode(cfg, 21, 60, 104, 2, "auto", budget=70 * GiB)
    assert p480.grid == (1, 1) and p480.est_bytes <= DEFAULT_SOFT_CAP and p480.chunk >= 1
    # 720p with 8 GiB: tiled, under the budget
    p720 = plan_decode(cfg, 21, 90, 160, 2, "auto", budget=8 * GiB)
    assert p720.grid != (1, 1) and p720.est_bytes <= 8 * GiB
    # one pass over 81 frames at 720p would index past 2^31 elements: chunks stay under it
    big = plan_decode(cfg, 21, 90, 160, 2, "off", budget=1 << 50, soft_cap=None)
    assert up_stage_elements(cfg, big.chunk, 90, 160)[1] <= MAX_ELEMENTS < up_stage_elements(cfg, 21, 90, 160)[1]


def test_memory_plan_counts_the_first_up_stage_in_the_latent_stage():
    """low (vae_fast.LOW_STAGES): the latent stage also runs the first upsampling stage (384 -> 192
    channels after its upsampler, 2x in time and space) and keeps its output for all frames; the
    chunked stage starts at the second."""
    cfg = VAE_PRESETS["wan2.1"]
    assert latent_output_elements(cfg, 21, 60, 104) == 41 * 120 * 208 * 192
    assert latent_output_elements(cfg, 21, 60, 104, low=False) == 21 * 60 * 104 * 384
    first = up_stage_elements(cfg, 21, 60, 104, "triton", stop=1)
    rest, whole = up_stage_elements(cfg, 2, 60, 104, "triton", first=1), up_stage_elements(cfg, 2, 60, 104, "triton")
    assert rest[0] < whole[0] and rest[1] <= whole[1]  # the first stage's state and buffers left out
    assert latent_stage_elements(cfg, 21, 60, 104, small_conv="triton")[0] >= first[0]
    assert latent_stage_elements(cfg, 21, 60, 104, low=False)[0] < first[0]
    diff = 2 * (latent_output_elements(cfg, 21, 60, 104) - latent_output_elements(cfg, 21, 60, 104, low=False))
    low, full = (estimate_bytes(cfg, 21, 60, 104, 2, 2, 1, small_conv="triton", low=x) for x in (True, False))
    assert abs(low - full - (diff + 1.1 * 2 * (rest[0] - whole[0]))) <= 2  # kept output + working set, 2 bytes each
    p = plan_decode(cfg, 21, 60, 104, 2, "auto", 70 * GiB, small_conv="triton")
    assert p.mid_chunk == 21 and p.chunk == 2 and p.est_bytes <= DEFAULT_SOFT_CAP


KERNEL_CHECK = textwrap.dedent(
    """
    import torch
    from turbovid.ops import rms_silu as ops
    assert not ops._use_kernel(torch.zeros(1))  # TRITON_INTERPRET alone does not route CPU work to the interpreter
    ops.allow_interpreter(True)
    torch.manual_seed(0)
    nan = float("nan")
    for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 2e-3)):
        x = torch.randn(2, 3, 5, 7, 96).to(dtype)   # 210 rows of 96 channels (not powers of 2)
        g = 1 + 0.3 * torch.randn(96)
        b = 0.5 * torch.randn(96)
        assert ops._use_kernel(x)
        for silu in (True, False):
            for bias in (None, b):
                ref = ops.rms_silu_reference(x.float(), g, silu, bias)
                buf = torch.full((2, 5, 5, 7, 96), nan, dtype=dtype)
                out = ops.rms_silu(x[:1].contiguous(), g, silu, out=buf[:1, 2:], bias=bias)  # into a slice
                assert out.data_ptr() == buf[:1, 2:].data_ptr()
                err = ((out.float() - ref[:1]).norm() / ref[:1].norm()).item()
                assert err < tol, (dtype, silu, err)
                assert torch.isnan(buf[:1, :2]).all() and torch.isnan(buf[1:]).all()  # nothing outside written
        # rms_silu_stream: V = [history; rms_silu(frames)] written as the three time taps side by side
        # (taps=3), as the time-padded buffer (taps=1) or without the history (with_history=False),
        # the last two frames of V as the next history; chunks of 3 and of 1 frame, with and without
        # a history; kernel == PyTorch path
        ref = ops.rms_silu_reference(x.float(), g, True, b)  # (2, 3, 5, 7, 96)
        hist = (0.5 * torch.randn(2, 5, 7, 96)).to(dtype)
        for frames, want_y in ((x[0], ref[0]), (x[1, :1].contiguous(), ref[1, :1])):
            t = frames.shape[0]
            for history in (None, hist):
                v = torch.cat([torch.zeros(2, 5, 7, 96) if history is None else history.float(), want_y])
                results = {}
                use_kernel = ops._use_kernel
                for kernel in (True, False):
                    if not kernel:
                        ops._use_kernel = lambda t: False
                    got3 = torch.full((t, 5, 7, 288), nan, dtype=dtype)
                    new3 = torch.full((2, 5, 7, 96), nan, dtype=dtype)
                    ops.rms_silu_stream(frames, g, True, got3, history, new3, taps=3, frame_rows=35, bias=b)
                    got1 = torch.full((2 + t, 5, 7, 96), nan, dtype=dtype)
                    new1 = torch.full((2, 5, 7, 96), nan, dtype=dtype)
                    ops.rms_silu_stream(frames, g, True, got1, history, new1, taps=1, frame_rows=35, bias=b)
                    # with_history=False: the normalised frames alone, the next history as before
                    got0 = torch.full((t, 5, 7, 96), nan, dtype=dtype)
                    new0 = torch.full((2, 5, 7, 96), nan, dtype=dtype)
                    ops.rms_silu_stream(frames, g, True, got0, history, new0, taps=1, frame_rows=35, bias=b,
                                        with_history=False)
                    ops._use_kernel = use_kernel
                    def close(a, want):  # relative, or absolute against all-zero history frames
                        return (a.float() - want).norm().item() <= tol * max(want.norm().item(), 1.0)

                    for tap in range(3):  # out[r, tap] = V[r + tap]: frame r + tap - 2 of the stream
                        assert close(got3[..., tap * 96:(tap + 1) * 96], v[tap:tap + t]), (tap, t, kernel)
                    assert close(got1, v) and close(got0, v[2:])
                    assert close(new3, v[t:]) and close(new1, v[t:]) and close(new0, v[t:])
                    results[kernel] = (got3, got1, new3, got0, new0)
                for a, c in zip(results[True], results[False]):
                    assert torch.allclose(a.float(), c.float(), atol=tol * 10)
        for args, words in (((hist, hist), "alias"), ((None, torch.empty(1, 5, 7, 96, dtype=dtype)), "2 * frame_rows")):
            try:
                ops.rms_silu_stream(x[0], g, True, torch.empty(3, 5, 7, 288, dtype=dtype), *args, taps=3, frame_rows=35)
                raise AssertionError(f"no error for {words}")
            except ValueError as e:
                assert words in str(e), e
        import importlib; importlib.reload(ops); ops.allow_interpreter(True)
        # bias + residual add, in place
        y, r = torch.randn(3, 7, 96).to(dtype), torch.randn(3, 7, 96).to(dtype)
        want = (y.float() + r.float() + b).to(dtype)
        ops.add_bias_residual_(y, b, r)
        assert torch.allclose(y.float(), want.float(), atol=tol * 10), "add_bias_residual_"
    print("kernel ok")
    """
)


def test_rms_silu_kernel_in_interpreter():
    assert_runs_interpreted(KERNEL_CHECK)


RESIDUAL_CHECK = textwrap.dedent(
    """
    import torch
    from turbovid.ops import rms_silu as ops
    ops.allow_interpreter(True)
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.float16):
        y, r = torch.randn(3, 5, 7, 96).to(dtype), torch.randn(3, 5, 7, 96).to(dtype)
        g, b = 1 + 0.3 * torch.randn(96), (0.5 * torch.randn(96)).to(dtype)
        hist = (0.5 * torch.randn(2, 5, 7, 96)).to(dtype)
        for taps, rows in ((3, 3), (1, 5)):
            for history in (None, hist):
                # the unfused pair: the residual add's kernel, then the norm of what it stored
                x = ops.add_bias_residual_(y.clone(), b, r)
                want, want_h = torch.empty(rows, 5, 7, 96 * taps, dtype=dtype), torch.empty(2, 5, 7, 96, dtype=dtype)
                ops.rms_silu_stream(x, g, True, want, history, want_h, taps=taps, frame_rows=35)
                for keep in (True, False):
                    got, got_h = torch.empty_like(want), torch.empty_like(want_h)
                    x_out = torch.empty_like(y) if keep else None
                    before = y.clone()
                    ops.rms_silu_stream(y, g, True, got, history, got_h, taps=taps, frame_rows=35, bias=b,
                                        residual=r, x_out=x_out)
                    assert torch.equal(got, want) and torch.equal(got_h, want_h), (dtype, taps, keep)
                    assert torch.equal(y, before)  # the input is left as it is
                    assert x_out is None or torch.equal(x_out, x)
                # the sum stored in y's own place, as the decode does: same bytes
                got, got_h, y_in = torch.empty_like(want), torch.empty_like(want_h), y.clone()
                ops.rms_silu_stream(y_in, g, True, got, history, got_h, taps=taps, frame_rows=35, bias=b,
                                    residual=r, x_out=y_in)
                assert torch.equal(got, want) and torch.equal(got_h, want_h) and torch.equal(y_in, x), (dtype, taps)
    for kw, words in ((dict(residual=r), "needs a bias"), (dict(bias=b, x_out=y), "x_out takes the residual sum")):
        try:
            ops.rms_silu_stream(y, g, True, torch.empty(3, 5, 7, 288, dtype=dtype), None, torch.empty_like(hist),
                                taps=3, frame_rows=35, **kw)
            raise AssertionError(f"no error for {words}")
        except ValueError as e:
            assert words in str(e), e
    print("kernel ok")
    """
)


def test_rms_silu_residual_fused_in_interpreter():
    # the residual sum formed in the norm's pass: the same bytes as the add kernel then the norm
    assert_runs_interpreted(RESIDUAL_CHECK)


def test_fused_residual_decode_equals_unfused(vae, latents_and_reference, monkeypatch):
    zn, _ = latents_and_reference
    plan = replace(plan_decode(vae.cfg, 3, 3, 5, 4, "off"), chunk=1, mid_chunk=1)
    fused = fast_decode(vae, zn, plan=plan)
    monkeypatch.setattr(vae_fast, "FUSE_RESIDUAL", False)
    assert torch.equal(fused, fast_decode(vae, zn, plan=plan))


def test_fused_residual_parts_are_freed_before_the_conv(vae, latents_and_reference, monkeypatch):
    # a residual sum's parts must not stay alive through the conv that follows the norm that formed
    # the sum, and the sum takes y's place (as the unfused add does): the memory plan counts what
    # the unfused path holds
    import weakref

    zn, _ = latents_and_reference
    parts, fused, convs = [], [], []
    real_norm, real_f = vae_fast._norm_stream, vae_fast.F

    def norm_stream(x, *args):
        if isinstance(x, vae_fast.Pending):
            y, x_out = x.y, args[-1]
            if x_out is not None:  # a residual block's first norm keeps the sum: in y's storage
                assert x_out.data_ptr() == y.data_ptr()
                fused.append(1)
            else:  # the head's norm: the sum is not kept
                parts.append(weakref.ref(y))
            parts.append(weakref.ref(x.h))
            del y, x_out
        return real_norm(x, *args)

    class Spy:
        def __getattr__(self, name):
            fn = getattr(real_f, name)
            if name not in ("conv2d", "conv3d"):
                return fn

            def conv(*a, **kw):
                convs.append(all(r() is None for r in parts))
                return fn(*a, **kw)
            return conv

    monkeypatch.setattr(vae_fast, "_norm_stream", norm_stream)
    monkeypatch.setattr(vae_fast, "F", Spy())
    fast_decode(vae, zn, plan=replace(plan_decode(vae.cfg, 3, 3, 5, 4, "off"), chunk=1, mid_chunk=1))
    assert fused and parts and all(convs)  # residual sums were fused, and their parts gone at every conv


def test_rms_silu_reference_matches_module_norm():
    from turbovid.models.vae import RMSNorm
    from turbovid.ops.rms_silu import rms_silu

    norm = RMSNorm(12)
    with torch.no_grad():
        norm.gamma.normal_()
    x = torch.randn(1, 12, 3, 4, 5)
    ref = torch.nn.functional.silu(norm(x)).permute(0, 2, 3, 4, 1)
    out = rms_silu(x.permute(0, 2, 3, 4, 1).contiguous(), norm.gamma.flatten())
    assert rel(out, ref) < 1e-6
    with pytest.raises(ValueError, match="contiguous"):
        rms_silu(x.permute(0, 2, 3, 4, 1), norm.gamma.flatten())


def test_upsampler_takes_the_kernel_where_its_layout_allows():
    triton = vae_fast.ConvModes("triton", "triton")
    got = {(c, mode.wide): FastUpsample(Resample(c, "up2d"), torch.float32, mode).kernel
           for c in (32, 24, 16) for mode in (triton, vae_fast.ConvModes())}
    # the kernel in the "triton" wide mode only, and for input channels in multiples of 16
    assert got == {(32, "triton"): True, (32, "conv3d"): False, (24, "triton"): False, (24, "conv3d"): False,
                   (16, "triton"): True, (16, "conv3d"): False}
