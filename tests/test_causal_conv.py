"""The VAE's causal 3x3x3 conv (ops/causal_conv.py): the packed layout and the PyTorch path against
the conv written out tap by tap, and the Triton kernel against it in Triton's interpreter (a
subprocess: TRITON_INTERPRET must be set before triton is imported)."""
from __future__ import annotations

import inspect
import os
import textwrap
from dataclasses import replace

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads this when it is first imported, which this module's imports do; the suite's
    # interpreter tests (test_fused.py, the attention tests) need it set by the first importer.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from turbovid.ops import causal_conv  # noqa: E402
from interpreter_helpers import assert_runs_interpreted, expect_value_error  # noqa: E402


def by_taps(buf: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """out[t, h, w] = bias + sum over taps of buf[t + dt, h + dh - 1, w + dw - 1] @ weight[:, :, dt, dh, dw]^T."""
    p_t, h, w, c = buf.shape
    x = torch.nn.functional.pad(buf.double(), (0, 0, 1, 1, 1, 1))  # zeros around H and W
    out = torch.zeros(p_t - 2, h, w, weight.shape[0], dtype=torch.float64)
    for dt in range(3):
        for dh in range(3):
            for dw in range(3):
                out += x[dt:dt + p_t - 2, dh:dh + h, dw:dw + w] @ weight[:, :, dt, dh, dw].double().T
    return out if bias is None else out + bias.double()


@pytest.mark.parametrize("cout, split", [(3, (16, 0)), (16, (16, 0)), (48, (32, 16)), (96, (64, 32)),
                                         (100, (64, 64)), (128, (128, 0)), (192, (128, 64))])
def test_split_channels(cout, split):
    assert causal_conv.split_channels(cout) == split


def test_pytorch_path_by_taps():
    torch.manual_seed(0)
    buf, weight, bias = torch.randn(5, 4, 6, 16), torch.randn(40, 16, 3, 3, 3), torch.randn(40)
    packed = causal_conv.pack(weight, bias, torch.float32)
    assert packed.weight.shape == (27 * 16, 32 + 16) and not packed.weight[:, 40:].any()
    out = causal_conv.causal_conv(buf, packed)
    assert out.shape == (3, 4, 6, 40)
    torch.testing.assert_close(out.double(), by_taps(buf, weight, bias), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(causal_conv.causal_conv(buf, packed, bias=False).double(),
                               by_taps(buf, weight, None), rtol=1e-5, atol=1e-4)


def fused_want(buf, packed, gamma, silu, residual):
    """What the fused epilogue must give, in float64: (normed output, residual sum)."""
    y = by_taps(buf, packed.ref_weight, packed.bias)
    if residual is not None:
        y = (y + residual.double()).to(buf.dtype).double()
    s = y
    if gamma is not None:
        y = y / y.norm(dim=-1, keepdim=True).clamp(min=1e-12) * y.shape[-1] ** 0.5 * gamma.double()
        y = y * torch.sigmoid(y) if silu else y
    return y, s


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("with_res", [True, False])
def test_fused_epilogue_pytorch_path(silu, with_res):
    """gamma / residual / x_out on the PyTorch path, into a view of a larger buffer, as the fast decode
    calls it; x_out may be the residual itself."""
    torch.manual_seed(1)
    buf, weight, bias = torch.randn(5, 4, 6, 16), torch.randn(24, 16, 3, 3, 3) / 20, torch.randn(24)
    packed, gamma = causal_conv.pack(weight, bias, torch.float32), torch.rand(24) + 0.5
    res = torch.randn(3, 4, 6, 24) if with_res else None
    nxt = torch.full((5, 4, 6, 24), float("nan"))
    want, s = fused_want(buf, packed, gamma, silu, res)
    hn = torch.empty(2, 4, 6, 24)
    causal_conv.causal_conv_stream(buf[2:], buf[:2], packed, out=nxt[2:], gamma=gamma, silu=silu, residual=res,
                                   x_out=res, history_out=hn)
    torch.testing.assert_close(nxt[2:].double(), want, rtol=1e-5, atol=1e-5)
    assert nxt[:2].isnan().all()  # the history frames are the caller's
    assert torch.equal(hn, nxt[-2:])  # the next history: the last two output frames
    if with_res:
        torch.testing.assert_close(res.double(), s, rtol=1e-5, atol=1e-5)


def test_tile_rows():
    assert causal_conv.tile_rows(480, 832, 256) == 4  # 13 tiles of 4 x 64, no padding
    assert causal_conv.tile_rows(720, 1280, 256) == 1  # 5 tiles of 256
    assert causal_conv.tile_rows(7, 20, 256) == 8  # the least padding: one 8 x 32 tile


@pytest.mark.parametrize("c, cout, h, w", [(96, 96, 480, 832), (96, 3, 480, 832), (192, 192, 240, 416),
                                           (192, 384, 120, 208), (384, 384, 60, 104)])
def test_default_configs_fit_shared_memory(c, cout, h, w):
    """The decoder's shapes: bf16 keeps the measured configs; float32 (twice the bytes) is cut down
    to fit, where the same config would ask for up to 288 KiB."""
    cpu = torch.device("cpu")
    bf16, fp32 = (causal_conv.default_config(cpu, c, cout, h, w, elem) for elem in (2, 4))
    assert causal_conv.smem_bytes(bf16, cout, 2) <= causal_conv.SMEM_BUDGET
    assert causal_conv.smem_bytes(fp32, cout, 4) <= causal_conv.SMEM_BUDGET
    assert bf16.block_m == (256 if cout <= 128 else 128) and bf16.num_warps == (8 if cout > 256 else 4)
    assert fp32.block_m % fp32.rows == 0 and c % fp32.block_k == 0


@pytest.mark.parametrize("capability, smem_kib, fast", [((9, 0), 228, True), ((10, 0), 228, True),
                                                      ((12, 0), 100, False), ((8, 0), 164, False)])
def test_hopper_path_needs_sm90_and_its_shared_memory(monkeypatch, capability, smem_kib, fast):
    """H100 / B200 take the kernels; an RTX 5090 (sm_120, 100 KiB a SM) would fail their launches
    and keeps cuDNN; Ampere has no descriptor path."""
    if causal_conv.triton is None or causal_conv.TensorDescriptor is None:
        pytest.skip("no Triton tensor descriptors in this install")

    class Props:
        shared_memory_per_multiprocessor = smem_kib << 10

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    assert causal_conv.hopper_path(torch.device("cuda")) is fast
    assert not causal_conv.hopper_path(torch.device("cpu"))



def test_fence_a_where_the_a_tile_passes_through_registers():
    """Multi-row descriptor tiles reach wgmma from registers (Triton 3.6) and wait for each K step's
    products on an sm_90 GPU; single-row tiles (A in shared memory), pointer loads, other GPUs and
    the interpreter do not; Config(fence=False) turns it off to time it."""
    multi = causal_conv.Config(block_m=128, block_k=64, num_warps=8, num_stages=3, tma=True, rows=8)
    assert causal_conv.fence_a(multi, wgmma=True)
    assert not causal_conv.fence_a(multi, wgmma=False)
    assert not causal_conv.fence_a(replace(multi, rows=1), wgmma=True)
    assert not causal_conv.fence_a(replace(multi, tma=False), wgmma=True)
    assert not causal_conv.fence_a(replace(multi, fence=False), wgmma=True)


def test_bad_inputs():
    packed = causal_conv.pack(torch.randn(8, 16, 3, 3, 3), None, torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        causal_conv.causal_conv(torch.randn(4, 3, 5, 32), packed)  # wrong channel count
    with pytest.raises(ValueError, match="contiguous"):
        causal_conv.causal_conv(torch.randn(4, 3, 16, 5).transpose(2, 3), packed)
    with pytest.raises(ValueError, match="contiguous"):
        causal_conv.causal_conv(torch.randn(2, 3, 5, 16), packed)  # no frame after the 2 of history
    with pytest.raises(ValueError, match="packed weights"):
        causal_conv.causal_conv(torch.randn(4, 3, 5, 16, dtype=torch.float64), packed)
    with pytest.raises(ValueError, match="out must be"):
        causal_conv.causal_conv(torch.randn(4, 3, 5, 16), packed, out=torch.empty(2, 3, 5, 9))
    with pytest.raises(ValueError, match="do not divide"):
        causal_conv.causal_conv(torch.randn(4, 3, 5, 16), packed, config=causal_conv.Config(block_m=64, rows=3))
    buf = torch.randn(4, 3, 5, 16)
    with pytest.raises(ValueError, match="residual must be"):
        causal_conv.causal_conv(buf, packed, residual=torch.randn(2, 3, 5, 16))
    with pytest.raises(ValueError, match="x_out takes the residual"):
        causal_conv.causal_conv(buf, packed, x_out=torch.randn(2, 3, 5, 8))
    with pytest.raises(ValueError, match="gamma must have 8"):
        causal_conv.causal_conv(buf, packed, gamma=torch.ones(16))
    with pytest.raises(ValueError, match="history must be"):
        causal_conv.causal_conv_stream(buf[2:], buf[:1], packed)
    with pytest.raises(ValueError, match="history_out must be"):  # only with the fused epilogue
        causal_conv.causal_conv_stream(buf[2:], buf[:2], packed, history_out=torch.empty(2, 3, 5, 8))
    with pytest.raises(ValueError, match="history_out must be"):  # a chunk of one frame has no two of its own
        causal_conv.causal_conv_stream(buf[3:], buf[:2], packed, gamma=torch.ones(8),
                                       history_out=torch.empty(2, 3, 5, 8))
    with pytest.raises(ValueError, match="3x3x3"):
        causal_conv.pack(torch.randn(8, 16, 3, 1, 1), None, torch.float32)


KERNEL_CHECK = "import torch\n" + "".join(inspect.getsource(f) for f in (by_taps, fused_want, expect_value_error)) \
    + textwrap.dedent(
    """
    from turbovid.ops import causal_conv, rms_silu
    rms_silu.allow_interpreter(True)
    torch.manual_seed(0)
    # (C, Cout, T, H, W, block_m, block_k, rows): two dots (64 + 32), a 3-channel head, a ragged
    # last tile of a row, C in two slices, tiles of 2 x 16 pixels ragged in both directions
    cases = [(32, 96, 2, 3, 12, 16, 16, 1), (16, 3, 1, 4, 9, 16, 16, 1), (32, 48, 1, 3, 7, 16, 32, 2),
             (16, 32, 3, 5, 21, 32, 16, 2)]
    # tma: the Hopper path, the input through a 5-D descriptor, the fused epilogue's tensors through
    # 4-D ones (the interpreter emulates them, out-of-bounds zeros included)
    for dtype, tol, tma in ((torch.float32, 1e-5, False), (torch.float16, 2e-3, False), (torch.float16, 2e-3, True)):
        for c, cout, t, h, w, bm, bk, rows in cases:
            buf = torch.randn(t + 2, h, w, c).to(dtype)
            weight, bias = torch.randn(cout, c, 3, 3, 3) / (27 * c) ** 0.5, torch.randn(cout)
            packed = causal_conv.pack(weight, bias, dtype)
            cfg = causal_conv.Config(block_m=bm, block_k=bk, rows=rows, tma=tma, num_stages=1)
            if tma and cout < 16:
                continue  # descriptor boxes are at least 16 channels wide; heads take the pointer path
            for with_bias in (True, False):
                out = torch.full((t, h, w, cout), float("nan"), dtype=dtype)
                causal_conv.causal_conv(buf, packed, bias=with_bias, out=out, config=cfg)
                want = by_taps(buf, packed.ref_weight, packed.bias if with_bias else None)
                err = ((out.double() - want).norm() / want.norm()).item()
                assert err < tol, (dtype, c, cout, with_bias, err)
            # the fused epilogue: + residual (the sum to x_out, here in place), RMS norm (+ SiLU)
            for silu, with_res in ((True, True), (False, False), (True, False)):
                res = torch.randn(t, h, w, cout).to(dtype) if with_res else None
                gamma = torch.rand(cout) + 0.5
                want, s = fused_want(buf, packed, gamma, silu, res)
                nxt = torch.full((t + 2, h, w, cout), float("nan"), dtype=dtype)
                hn = torch.full((2, h, w, cout), float("nan"), dtype=dtype) if t >= 2 else None
                causal_conv.causal_conv_stream(buf[2:], buf[:2], packed, out=nxt[2:], config=cfg, gamma=gamma,
                                               silu=silu, residual=res, x_out=res, history_out=hn)
                err = ((nxt[2:].double() - want).norm() / want.norm()).item()
                assert err < tol and nxt[:2].isnan().all(), (dtype, c, cout, silu, with_res, err)
                assert hn is None or torch.equal(hn, nxt[-2:]), ("history_out", tma, dtype, c, cout)
                if with_res:
                    err = ((res.double() - s).norm() / s.norm()).item()
                    assert err < tol, ("x_out", dtype, c, cout, err)
            # causal_conv_stream: the history apart from the frames, below or above them in memory,
            # or none (zeros); one frame after it
            pool = torch.randn(2 * t + 8, h, w, c).to(dtype)
            for history, frames in ((pool[:2], pool[5:5 + t]), (pool[t + 4:t + 6], pool[:t]), (None, buf[2:])):
                if history is not None:
                    history.copy_(buf[:2])
                    frames.copy_(buf[2:])
                    want = by_taps(buf, packed.ref_weight, packed.bias)
                else:
                    want = by_taps(torch.cat([torch.zeros_like(buf[:2]), buf[2:]]), packed.ref_weight, packed.bias)
                for first in (t, 1):
                    out = causal_conv.causal_conv_stream(frames[:first], history, packed, config=cfg)
                    err = ((out.double() - want[:first]).norm() / want[:first].norm()).item()
                    assert err < tol, ("stream", tma, history is None, first, dtype, c, cout, err)
            if tma:  # the descriptor's slot stride: a whole number of 16 bytes between the two tensors
                odd = torch.empty(buf[2:].numel() + 1, dtype=dtype)[1:].view(buf[2:].shape)
                expect_value_error(lambda: causal_conv.causal_conv_stream(odd, buf[:2].clone(), packed, config=cfg),
                                   "multiple of 16 bytes")
    print("kernel ok")
    """
)


def test_kernel_in_interpreter():
    assert_runs_interpreted(KERNEL_CHECK)
