"""ops/conv_gluon_coop.py's routing, tiles and layouts on the CPU: when causal_conv hands it a conv
to 384 channels, what it is given, the tile it picks and the weights it reads. The kernel itself
compiles offline for sm_90 (test_offline_compile.py) and is compared with the Triton kernel and the
PyTorch reference on the GPU (test_vae_gpu.py)."""
from __future__ import annotations

import pytest
import torch

from test_conv_gluon import hopper_frames
from turbovid.ops import causal_conv, conv_gluon, conv_gluon_coop, conv_gluon_wide

pytestmark = pytest.mark.skipif(conv_gluon_coop.gluon is None, reason="Triton without Gluon")


def test_available_takes_the_convs_to_384_channels_on_an_h100(monkeypatch):
    frames = hopper_frames(monkeypatch)
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    out = torch.empty(2, 4, 384)
    for cin in (384, 192):
        assert conv_gluon_coop.available(frames, cin, 384, (3, 3), (-1, -1), out)
    # a residual epilogue only at 384 -> 384: at 192 -> 384 the Triton kernel's was faster
    assert conv_gluon_coop.available(frames, 384, 384, (3, 3), (-1, -1), out, residual=True)
    assert not conv_gluon_coop.available(frames, 192, 384, (3, 3), (-1, -1), out, residual=True)
    # other widths, the upsamplers' phase convs, strided outputs are not this kernel's
    for cin, cout, taps, offset in ((96, 384, (3, 3), (-1, -1)), (384, 192, (3, 3), (-1, -1)),
                                    (192, 192, (3, 3), (-1, -1)), (384, 384, (1, 2), (-1, 0))):
        assert not conv_gluon_coop.available(frames, cin, cout, taps, offset, out)
    assert not conv_gluon_coop.available(frames, 384, 384, (3, 3), (-1, -1), torch.empty(384, 4).t())
    monkeypatch.setenv("TURBOVID_GLUON", "0")
    assert not conv_gluon_coop.available(frames, 384, 384, (3, 3), (-1, -1), out)


@pytest.mark.parametrize("capability, dtype", [((8, 0), torch.bfloat16), ((10, 0), torch.bfloat16),
                                               ((9, 0), torch.float32)])
def test_available_needs_sm90_and_bf16(monkeypatch, capability, dtype):
    frames = hopper_frames(monkeypatch, capability, dtype)
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    assert not conv_gluon_coop.available(frames, 384, 384, (3, 3), (-1, -1), torch.empty(2, 4, 384))


def test_smem_fits_an_h100_on_3_stages():
    """3 stages of 64 KiB and both consumers' staging buffers fit the 227 KiB a block may take, with
    the 1 KiB runs_here keeps for the kernel's own; a fourth stage would not."""
    assert conv_gluon_coop.STAGES == 3 and conv_gluon_coop.smem_bytes() + 1024 <= 227 << 10
    stage = conv_gluon_coop.BLOCK_K * (conv_gluon_coop.PIXELS + 384) * 2
    assert stage == 64 << 10 and conv_gluon_coop.smem_bytes() + stage > 227 << 10


@pytest.mark.parametrize("h, w, tile", [
    (120, 208, (8, 16)),  # 480p's 384-channel chunks: 15 x 13 tiles, none cut
    (60, 104, (16, 8)),  # 480p's latents: 104 columns are 13 x 8; 16 columns would cut 8 off every row
    (180, 320, (4, 32)),  # 720p's
    (90, 160, (4, 32)),  # 720p's latents: 2 rows past the image against 6 with 8-row tiles
    (4, 32, (4, 32)),
])
def test_tile_shape_covers_the_frame_with_the_fewest_pixels_outside(h, w, tile):
    rows, cols = conv_gluon_coop.tile_shape(h, w)
    assert (rows, cols) == tile and rows * cols == conv_gluon_coop.PIXELS and rows % 2 == 0


def test_pack_keeps_the_k_major_weights_of_convs_to_384_channels():
    for cin in (384, 192):
        w = torch.randn(384, cin, 3, 3, 3)
        packed = causal_conv.pack(w, None, torch.float32)
        assert packed.weight_k.shape == (384, 27 * cin) and packed.weight_k.is_contiguous()
        # column (dt, dh, dw, c) of output o's row is the conv's weight[o, c, dt, dh, dw]
        assert packed.weight_k[300, (1 * 9 + 2 * 3 + 2) * cin + 170] == w[300, 170, 1, 2, 2]
    assert causal_conv.pack(torch.randn(384, 96, 3, 3, 3), None, torch.float32).weight_k is None


@pytest.mark.parametrize("cin", [384, 192])
def test_launch_hands_convs_to_384_channels_to_the_cooperative_kernel(monkeypatch, cin):
    calls = []
    monkeypatch.setattr(conv_gluon_coop, "available", lambda *a: calls.append(("available", a[1], a[-1])) or True)
    # (available() itself keeps a 192 -> 384 residual on the Triton kernel; here it is mocked to take it)
    monkeypatch.setattr(conv_gluon_coop, "launch", lambda *a: calls.append(a) or a[4])
    for other in (conv_gluon, conv_gluon_wide):
        monkeypatch.setattr(other, "launch", lambda *a: pytest.fail("another Gluon kernel took a conv to 384"))
    conv = causal_conv.pack(torch.randn(384, cin, 3, 3, 3), torch.randn(384), torch.bfloat16)
    frames = torch.randn(3, 2, 4, cin).bfloat16()
    out, res, gamma, hist = (torch.empty(3, 2, 4, 384).bfloat16(), torch.zeros(3, 2, 4, 384).bfloat16(),
                             torch.ones(384), torch.empty(2, 2, 4, 384).bfloat16())
    cfg = causal_conv.Config(tma=False)
    assert causal_conv.launch(frames, None, conv, cfg, out, gamma=gamma, residual=res, x_out=res,
                              history_out=hist) is out
    (_, seen_cin, residual), args = calls
    assert seen_cin == cin and residual is True
    assert args[2] is conv.weight_k and args[3] is conv.bias and args[4] is out and args[6] is gamma
    assert args[8] is res and args[9] is res and args[10] is hist


def test_the_384_channel_residual_stays_in_the_conv_epilogue(monkeypatch):
    frames = hopper_frames(monkeypatch)
    frames.stride = lambda dim=None: 1
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    assert causal_conv.residual_in_epilogue(frames, causal_conv.pack(torch.randn(384, 384, 3, 3, 3), None,
                                                                     torch.bfloat16))


class _FakeLaunch:
    """Stands in for the compiled kernel: records the grid and the arguments of kernel[grid](...)."""

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.grid, self.args, self.kwargs = grid, args, kwargs
        return run


@pytest.mark.parametrize("cin", [384, 192])
def test_launch_builds_128_byte_swizzled_boxes_and_one_program_an_sm(monkeypatch, cin):
    """The input box's rows are 64 channels (128 bytes): its layout must swizzle 128 bytes. With the
    96-channel kernel's default (64 bytes) the TMA loads never completed and the kernel hung on the
    GPU (session 34)."""
    fake = _FakeLaunch()
    monkeypatch.setattr(conv_gluon_coop, "_conv384_kernel", fake)
    monkeypatch.setattr(conv_gluon_coop, "_sm_count", lambda device: 132)
    conv = causal_conv.pack(torch.randn(384, cin, 3, 3, 3), torch.randn(384), torch.bfloat16)
    frames, hist = torch.randn(4, 120, 208, cin).bfloat16(), torch.randn(2, 120, 208, cin).bfloat16()
    out = torch.empty(4, 120, 208, 384).bfloat16()
    assert conv_gluon_coop.launch(frames, hist, conv.weight_k, conv.bias, out, causal_conv._stream_descriptor) is out
    xd, wd, hslot, cslot, yd, rd, xod, hd = fake.args[:8]
    assert list(xd.block_shape) == [1, 1, 8, 16, 64] and xd.layout.swizzle_byte_width == 128
    assert list(wd.block_shape) == [128, 64] and wd.layout.swizzle_byte_width == 128
    assert list(wd.shape) == [384, 27 * cin]
    assert list(yd.block_shape) == [1, 4, 16, 128]  # a consumer's 4 rows x 16 columns, one 128-channel block
    assert {hslot, cslot} == {0, 1}
    assert fake.grid == (132,) and fake.args[12] == 4 * 15 * 13  # 780 tiles over 132 SMs
    assert fake.kwargs["C"] == cin and fake.kwargs["HAS_BIAS"] and not fake.kwargs["NORM"]
