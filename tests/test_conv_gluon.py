"""ops/conv_gluon.py's routing and layouts on the CPU: when causal_conv hands it the conv, what it is
given, and the weights and descriptors it reads. The kernel itself compiles offline for sm_90
(test_offline_compile.py) and is compared with the PyTorch reference on the GPU (test_vae_gpu.py)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from turbovid.ops import causal_conv, conv_gluon, gluon_switch

pytestmark = pytest.mark.skipif(conv_gluon.gluon is None, reason="Triton without Gluon")


def hopper_frames(monkeypatch, capability=(9, 0), dtype=torch.bfloat16):
    """A stand-in for CUDA frames on a GPU of `capability` with an H100's shared memory."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(gluon_switch, "smem_optin", lambda device: 227 << 10)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=dtype)


def test_available_takes_the_96_channel_conv_on_an_h100(monkeypatch):
    frames = hopper_frames(monkeypatch)
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    out = torch.empty(2, 4, 96)
    assert conv_gluon.available(frames, 96, 96, (3, 3), (-1, -1), out)
    # a residual's epilogue is faster in the Triton kernel; other widths, taps and strides are not this kernel's
    assert not conv_gluon.available(frames, 96, 96, (3, 3), (-1, -1), out, residual=True)
    assert not conv_gluon.available(frames, 192, 192, (3, 3), (-1, -1), out)
    assert not conv_gluon.available(frames, 96, 96, (1, 2), (-1, 0), out)
    assert not conv_gluon.available(frames, 96, 96, (3, 3), (-1, -1), torch.empty(96, 4).t())
    monkeypatch.setenv("TURBOVID_GLUON", "0")
    assert not conv_gluon.available(frames, 96, 96, (3, 3), (-1, -1), out)


@pytest.mark.parametrize("capability, dtype", [((8, 0), torch.bfloat16), ((10, 0), torch.bfloat16),
                                               ((9, 0), torch.float32)])
def test_available_needs_sm90_and_bf16(monkeypatch, capability, dtype):
    frames = hopper_frames(monkeypatch, capability, dtype)
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    assert not conv_gluon.available(frames, 96, 96, (3, 3), (-1, -1), torch.empty(2, 4, 96))


def test_not_on_cpu_tensors():
    assert not conv_gluon.available(torch.empty(1, 2, 2, 96).bfloat16(), 96, 96, (3, 3), (-1, -1),
                                    torch.empty(1, 2, 2, 96))


def test_pack_keeps_the_k_major_weights_of_96_channel_convs():
    w = torch.randn(96, 96, 3, 3, 3)
    packed = causal_conv.pack(w, None, torch.float32)
    assert packed.weight_k.shape == (96, 27 * 96) and packed.weight_k.is_contiguous()
    assert torch.equal(packed.weight_k, packed.weight[:, :96].t())
    # column (dt, dh, dw, c) of output o's row is the conv's weight[o, c, dt, dh, dw]
    assert packed.weight_k[5, (1 * 9 + 2 * 3 + 0) * 96 + 7] == w[5, 7, 1, 2, 0]
    assert causal_conv.pack(torch.randn(192, 96, 3, 3, 3), None, torch.float32).weight_k is None


def test_stream_descriptor_slots_for_any_descriptor_type():
    """The 5-D view over history and frames (built by `make`: Triton's or Gluon's descriptor): slot 0 at
    the lower address, its stride the gap; no history: one slot, the history's out of range."""
    def make(base, shape, strides, box):
        return SimpleNamespace(base=base, shape=shape, strides=strides, box=box)
    pool = torch.zeros(8, 3, 4, 16)
    box = [1, 1, 8, 64, 32]
    d, hslot, cslot = causal_conv._stream_descriptor(pool[4:8], pool[:2], box, make)
    assert (hslot, cslot) == (0, 1) and d.base.data_ptr() == pool.data_ptr() and d.box == box
    assert d.shape == [2, 4, 3, 4, 16] and d.strides == [4 * 3 * 4 * 16, 3 * 4 * 16, 4 * 16, 16, 1]
    d, hslot, cslot = causal_conv._stream_descriptor(pool[:4], pool[6:8], box, make)
    assert (hslot, cslot) == (1, 0) and d.base.data_ptr() == pool.data_ptr()
    d, hslot, cslot = causal_conv._stream_descriptor(pool[:4], None, box, make)
    assert (hslot, cslot) == (1, 0) and d.shape == [1, 4, 3, 4, 16]


def _launch_args():
    conv = causal_conv.pack(torch.randn(96, 96, 3, 3, 3), torch.randn(96), torch.bfloat16)
    frames = torch.randn(3, 2, 4, 96).bfloat16()
    cfg = causal_conv.Config(tma=False)
    return frames, conv, cfg, torch.empty_like(frames)


def test_launch_hands_the_conv_to_gluon_with_its_epilogue(monkeypatch):
    calls = []
    monkeypatch.setattr(conv_gluon, "available", lambda *a: calls.append(("available", a[-1])) or True)
    monkeypatch.setattr(conv_gluon, "launch", lambda *a: calls.append(a) or a[4])
    frames, conv, cfg, out = _launch_args()
    gamma = torch.ones(96)
    assert causal_conv.launch(frames, None, conv, cfg, out, bias=False, gamma=gamma) is out
    (_, residual), args = calls
    assert residual is False
    assert args[2] is conv.weight_k and args[3] is None and args[4] is out and args[6] is gamma
    assert args[5] is causal_conv._stream_descriptor
    calls.clear()
    causal_conv.launch(frames, None, conv, cfg, out, residual=torch.zeros_like(out), gamma=gamma)
    assert calls[0] == ("available", True) and calls[1][3] is conv.bias


def test_a_failing_gluon_launch_falls_back_with_one_log_line(monkeypatch, caplog):
    """The Gluon kernel raising (a Triton without its API, a compile error) leaves the Triton kernel to
    run: logged once, not tried again on that device. The Triton kernel's launch stands in here."""
    def broken(*a):
        raise RuntimeError("no such Gluon op\nmore")
    monkeypatch.setattr(conv_gluon, "available", lambda *a: True)
    monkeypatch.setattr(conv_gluon, "launch", broken)
    ran = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *a, **kw: ran.append(grid)
    monkeypatch.setattr(causal_conv, "_causal_conv_kernel", Kernel())
    monkeypatch.setattr(gluon_switch, "_broken", set())
    frames, conv, cfg, out = _launch_args()
    with caplog.at_level(logging.WARNING):
        causal_conv.launch(frames, None, conv, cfg, out)
        causal_conv.launch(frames, None, conv, cfg, out)
    assert len(ran) == 2
    lines = [r.getMessage() for r in caplog.records if "96-channel Gluon conv" in r.getMessage()]
    assert len(lines) == 1 and "no such Gluon op" in lines[0] and "using the Triton kernel" in lines[0]


def test_smem_fits_an_h100():
    """Both forms fit an H100's 227 KiB: 4 stages with the output staged, 3 with a residual's rows."""
    assert conv_gluon.smem_bytes(False) + 1024 <= 227 << 10 and conv_gluon.stages(False) == 4
    assert conv_gluon.smem_bytes(True) + 1024 <= 227 << 10 and conv_gluon.stages(True) == 3
    # 4 stages with a residual's two more rows a consumer (bf16 rows of 64 x 96) would not
    assert conv_gluon.smem_bytes(False) + 2 * 2 * conv_gluon.TILE_COLS * conv_gluon.CHANNELS * 2 > 227 << 10


def test_a_residual_is_left_to_the_next_norm_where_gluon_takes_the_plain_conv(monkeypatch):
    """causal_conv.residual_in_epilogue: on an H100 the 96-channel conv runs plain in Gluon and the
    next norm's pass forms the residual sum; elsewhere (other widths, Gluon off) the sum stays in
    the Triton kernel's epilogue."""
    frames = hopper_frames(monkeypatch)
    frames.stride = lambda dim=None: 1  # contiguous channels, as causal_conv_stream requires
    monkeypatch.setenv("TURBOVID_GLUON", "1")
    c96 = causal_conv.pack(torch.randn(96, 96, 3, 3, 3), None, torch.bfloat16)
    c192 = causal_conv.pack(torch.randn(192, 192, 3, 3, 3), None, torch.bfloat16)
    assert not causal_conv.residual_in_epilogue(frames, c96)
    assert causal_conv.residual_in_epilogue(frames, c192)
    monkeypatch.setenv("TURBOVID_GLUON", "0")
    assert causal_conv.residual_in_epilogue(frames, c96)
    # CPU tensors run the PyTorch reference, whose epilogue takes the residual
    assert causal_conv.residual_in_epilogue(torch.empty(1, 2, 2, 96, dtype=torch.bfloat16), c96)
