"""ops/conv_gluon_wide.py's routing and layouts on the CPU: when causal_conv hands it the 192 -> 192
conv, what it is given, and the weights it reads. The kernel itself compiles offline for sm_90
(test_offline_compile.py) and is compared with the Triton kernel and the PyTorch reference on the
GPU (test_vae_gpu.py)."""
from __future__ import annotations

import pytest
import torch

from test_conv_gluon import hopper_frames
from turbovid.ops import causal_conv, conv_gluon, conv_gluon_wide

pytestmark = pytest.mark.skipif(conv_gluon_wide.gluon is None, reason="Triton without Gluon")


def test_available_takes_the_192_channel_conv_with_any_epilogue_on_an_h100(monkeypatch):
    frames = hopper_frames(monkeypatch)
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    out = torch.empty(2, 4, 192)
    assert conv_gluon_wide.available(frames, 192, 192, (3, 3), (-1, -1), out)
    assert conv_gluon_wide.available(frames, 192, 192, (3, 3), (-1, -1), out, residual=True)
    # other widths, the upsamplers' phase convs, strided outputs are not this kernel's
    for cin, cout, taps, offset in ((96, 96, (3, 3), (-1, -1)), (384, 384, (3, 3), (-1, -1)),
                                    (192, 384, (3, 3), (-1, -1)), (192, 192, (1, 2), (-1, 0))):
        assert not conv_gluon_wide.available(frames, cin, cout, taps, offset, out)
    assert not conv_gluon_wide.available(frames, 192, 192, (3, 3), (-1, -1), torch.empty(192, 4).t())
    monkeypatch.setenv("TURBOVID_GLUON", "0")
    assert not conv_gluon_wide.available(frames, 192, 192, (3, 3), (-1, -1), out)


@pytest.mark.parametrize("capability, dtype", [((8, 0), torch.bfloat16), ((10, 0), torch.bfloat16),
                                               ((9, 0), torch.float32)])
def test_available_needs_sm90_and_bf16(monkeypatch, capability, dtype):
    frames = hopper_frames(monkeypatch, capability, dtype)
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    assert not conv_gluon_wide.available(frames, 192, 192, (3, 3), (-1, -1), torch.empty(2, 4, 192))


def test_smem_fits_an_h100_on_4_stages():
    """4 stages (the products wait on the ring's depth) and both consumers' staging rows fit 227 KiB;
    a fifth stage would not."""
    assert conv_gluon_wide.STAGES == 4 and conv_gluon_wide.smem_bytes() + 1024 <= 227 << 10
    stage = conv_gluon_wide.BLOCK_K * (conv_gluon_wide.TILE_ROWS * conv_gluon_wide.TILE_COLS + 192) * 2
    assert conv_gluon_wide.smem_bytes() + stage + 1024 > 227 << 10


def test_pack_keeps_the_k_major_weights_of_192_channel_convs():
    w = torch.randn(192, 192, 3, 3, 3)
    packed = causal_conv.pack(w, None, torch.float32)
    assert packed.weight_k.shape == (192, 27 * 192) and packed.weight_k.is_contiguous()
    # column (dt, dh, dw, c) of output o's row is the conv's weight[o, c, dt, dh, dw]
    assert packed.weight_k[150, (2 * 9 + 0 * 3 + 1) * 192 + 130] == w[150, 130, 2, 0, 1]
    for shape in ((192, 96, 3, 3, 3), (96, 192, 3, 3, 3)):  # no Gluon kernel for these
        assert causal_conv.pack(torch.randn(*shape), None, torch.float32).weight_k is None


def test_launch_hands_the_192_channel_conv_to_the_wide_kernel_with_its_residual(monkeypatch):
    calls = []
    monkeypatch.setattr(conv_gluon_wide, "available", lambda *a: calls.append(("available", a[-1])) or True)
    monkeypatch.setattr(conv_gluon_wide, "launch", lambda *a: calls.append(a) or a[4])
    monkeypatch.setattr(conv_gluon, "launch", lambda *a: pytest.fail("the 96-channel kernel took a 192-channel conv"))
    conv = causal_conv.pack(torch.randn(192, 192, 3, 3, 3), torch.randn(192), torch.bfloat16)
    frames = torch.randn(3, 2, 4, 192).bfloat16()
    out, res, gamma, hist = (torch.empty_like(frames), torch.zeros_like(frames), torch.ones(192),
                             torch.empty(2, 2, 4, 192).bfloat16())
    cfg = causal_conv.Config(tma=False)
    assert causal_conv.launch(frames, None, conv, cfg, out, gamma=gamma, residual=res, x_out=res,
                              history_out=hist) is out
    (_, residual), args = calls
    assert residual is True
    assert args[2] is conv.weight_k and args[3] is conv.bias and args[4] is out and args[6] is gamma
    assert args[8] is res and args[9] is res and args[10] is hist


def test_the_192_channel_residual_stays_in_the_conv_epilogue(monkeypatch):
    """Unlike the 96-channel conv's, the wide kernel takes the residual sum itself."""
    frames = hopper_frames(monkeypatch)
    frames.stride = lambda dim=None: 1
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    assert causal_conv.residual_in_epilogue(frames, causal_conv.pack(torch.randn(192, 192, 3, 3, 3), None,
                                                                     torch.bfloat16))
