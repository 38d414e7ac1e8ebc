"""2x nearest upsample + 3x3 conv as four 2x2 phase convs (ops/upsample_conv.py): the PyTorch path
against the conv over the upsampled image, and the conv kernel's phase launches (with the norm in
their epilogue) in Triton's interpreter (a subprocess: TRITON_INTERPRET must be set before triton
is imported)."""
from __future__ import annotations

import inspect
import os
import textwrap

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # as test_causal_conv.py: for the suite's interpreter tests

from turbovid.ops import rms_silu, upsample_conv  # noqa: E402
from interpreter_helpers import assert_runs_interpreted, expect_value_error  # noqa: E402


def upsampled_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The definition: x [T, H, W, C] repeated 2x2, then the 3x3 conv (padding 1), in float64."""
    xu = x.permute(0, 3, 1, 2).double().repeat_interleave(2, 2).repeat_interleave(2, 3)
    return torch.nn.functional.conv2d(xu, weight.double(), bias.double(), padding=1).permute(0, 2, 3, 1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("silu", [True, False])
def test_pytorch_path(silu):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 8)
    weight, bias = torch.randn(6, 8, 3, 3), torch.randn(6)
    packed = upsample_conv.pack(weight, bias, torch.float32)
    want = upsampled_conv(x, weight, bias)
    out = upsample_conv.upsample_conv(x, packed)
    assert out.shape == (3, 8, 10, 6) and rel(out, want) < 1e-6
    gamma = torch.rand(6) + 0.5
    normed, hist = torch.empty_like(out), torch.empty(2, 8, 10, 6)
    out2 = upsample_conv.upsample_conv(x, packed, gamma=gamma, silu=silu, normed=normed, history_out=hist)
    assert torch.equal(out2, out)
    assert torch.equal(normed, rms_silu.rms_silu_reference(out, gamma, silu)) and torch.equal(hist, normed[-2:])


def test_phase_weights_sum_the_taps_that_land_together():
    w = torch.arange(9.0).view(1, 1, 3, 3)
    sub = upsample_conv.phase_weights(w)[:, :, 0, 0]  # [py, px, r, s]
    assert sub[0, 0].tolist() == [[0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]]
    assert sub[1, 1].tolist() == [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8]]
    assert sub.sum().item() == 4 * w.sum().item()  # each 3x3 tap lands once in every phase


def test_bad_inputs():
    packed = upsample_conv.pack(torch.randn(6, 8, 3, 3), torch.randn(6), torch.float32)
    x = torch.randn(3, 4, 5, 8)
    with pytest.raises(ValueError, match="3x3"):
        upsample_conv.pack(torch.randn(6, 8, 2, 2), torch.randn(6), torch.float32)
    with pytest.raises(ValueError, match=r"\[T, H, W, 8\]"):
        upsample_conv.upsample_conv(torch.randn(3, 4, 5, 7), packed)
    with pytest.raises(ValueError, match="packed weights"):
        upsample_conv.upsample_conv(x.half(), packed)
    with pytest.raises(ValueError, match="out must be"):
        upsample_conv.upsample_conv(x, packed, out=torch.empty(3, 8, 9, 6))
    with pytest.raises(ValueError, match="needs normed"):
        upsample_conv.upsample_conv(x, packed, gamma=torch.ones(6))
    with pytest.raises(ValueError, match="gamma must have 6"):
        upsample_conv.upsample_conv(x, packed, gamma=torch.ones(5), normed=torch.empty(3, 8, 10, 6))
    with pytest.raises(ValueError, match="history_out needs gamma"):
        upsample_conv.upsample_conv(x, packed, history_out=torch.empty(2, 8, 10, 6))
    with pytest.raises(ValueError, match="history_out needs gamma"):  # a one-frame chunk has no two frames
        upsample_conv.upsample_conv(x[:1], packed, gamma=torch.ones(6), normed=torch.empty(1, 8, 10, 6),
                                    history_out=torch.empty(2, 8, 10, 6))


KERNEL_CHECK = "import torch\n" + "".join(inspect.getsource(f) for f in (upsampled_conv, expect_value_error)) \
    + textwrap.dedent(
    """
    from turbovid.ops import causal_conv, rms_silu, upsample_conv
    rms_silu.allow_interpreter(True)
    torch.manual_seed(0)
    # (C, Cout, T, H, W, block_m, block_k, rows): two dots (32 + 16) on 2-row tiles, ragged columns;
    # two dots (64 + 32), C in one slice, single-row tiles
    cases = [(32, 48, 2, 3, 7, 16, 16, 2), (16, 96, 3, 2, 5, 16, 16, 1)]
    # tma: the Hopper path (input and epilogue through descriptors, the phases' strided views included)
    for dtype, tol, tma in ((torch.float32, 1e-5, False), (torch.float16, 2e-3, False), (torch.float16, 2e-3, True)):
        for c, cout, t, h, w, bm, bk, rows in cases:
            x = torch.randn(t, h, w, c).to(dtype)
            weight, bias = torch.randn(cout, c, 3, 3) / (9 * c) ** 0.5, torch.randn(cout)
            packed = upsample_conv.pack(weight, bias, dtype)
            cfg = causal_conv.Config(block_m=bm, block_k=bk, rows=rows, tma=tma, num_stages=1)
            want = upsampled_conv(x, weight.to(dtype), bias.to(dtype))
            nan = lambda *s: torch.full(s, float("nan"), dtype=dtype)
            out = upsample_conv.upsample_conv(x, packed, nan(t, 2 * h, 2 * w, cout), config=cfg)
            err = ((out.double() - want).norm() / want.norm()).item()
            assert err < tol, ("plain", dtype, tma, c, cout, err)
            for silu in (True, False):
                gamma = torch.rand(cout) + 0.5
                out, normed, hist = nan(t, 2 * h, 2 * w, cout), nan(t, 2 * h, 2 * w, cout), nan(2, 2 * h, 2 * w, cout)
                upsample_conv.upsample_conv(x, packed, out, gamma=gamma, silu=silu, normed=normed, history_out=hist,
                                            config=cfg)
                err = ((out.double() - want).norm() / want.norm()).item()
                n_want = rms_silu.rms_silu_reference(out, gamma, silu).double()  # from the stored output
                n_err = ((normed.double() - n_want).norm() / n_want.norm()).item()
                assert err < tol and n_err < tol, ("fused", dtype, tma, c, cout, silu, err, n_err)
                assert torch.equal(hist, normed[-2:]), ("history_out", dtype, tma, c, cout)
    # the kernel's config must divide the channels (16 here) into whole K slices
    expect_value_error(lambda: upsample_conv.upsample_conv(x, packed, config=causal_conv.Config(block_k=32)),
                       "do not divide")
    print("kernel ok")
    """
)


def test_kernel_in_interpreter():
    assert_runs_interpreted(KERNEL_CHECK)


@pytest.mark.parametrize("c, cout, h, w", [(384, 192, 120, 208), (192, 96, 240, 416), (384, 192, 180, 320),
                                           (192, 96, 360, 640), (64, 32, 8, 12)])
def test_default_configs_fit_shared_memory(c, cout, h, w):
    from turbovid.ops import causal_conv
    for elem in (2, 4):
        cfg = upsample_conv.default_config(torch.device("cpu"), c, cout, h, w, elem)
        assert causal_conv.smem_bytes(cfg, cout, elem) <= causal_conv.SMEM_BUDGET
        assert c % cfg.block_k == 0 and cfg.block_m % cfg.rows == 0
