"""The VAE upsamplers' interleaves (ops/interleave.py): the PyTorch path against explicit indexing,
and the Triton kernels against it in Triton's interpreter (a subprocess: TRITON_INTERPRET must be
set before triton is imported)."""
from __future__ import annotations

import textwrap

import pytest
import torch

from turbovid.ops import interleave
from interpreter_helpers import assert_runs_interpreted


def _subpixel_by_index(o, bias):
    n, h1, w1, c4 = o.shape
    h, w, c = h1 - 1, w1 - 1, c4 // 4
    y = torch.empty(n, h, 2, w, 2, c, dtype=o.dtype)
    for py in range(2):
        for px in range(2):
            g = 2 * py + px
            y[:, :, py, :, px] = o[:, py:py + h, px:px + w, g * c:(g + 1) * c] + bias
    return y


def _frames_by_index(src, bias):
    b, t, h, w, c2 = src.shape
    c = c2 // 2
    out = torch.empty(b, t, 2, h, w, c, dtype=src.dtype)
    for k in range(2):
        out[:, :, k] = src[..., k * c:(k + 1) * c] + bias[k * c:(k + 1) * c]
    return out


def test_pytorch_path_by_index():
    o, bias = torch.randn(2, 4, 6, 4 * 5), torch.randn(5)
    y = interleave.subpixel_(o, bias, torch.empty(2, 3, 2, 5, 2, 5))
    assert torch.equal(y, _subpixel_by_index(o, bias))
    src, b2 = torch.randn(1, 3, 4, 5, 2 * 6), torch.randn(2 * 6)
    out = interleave.frames_(src, b2, torch.empty(1, 3, 2, 4, 5, 6))
    assert torch.equal(out, _frames_by_index(src, b2))
    with pytest.raises(ValueError, match="subpixel_"):
        interleave.subpixel_(o[:, :3], bias, torch.empty(2, 3, 2, 5, 2, 5))
    with pytest.raises(ValueError, match="frames_"):
        interleave.frames_(src, bias, torch.empty(1, 3, 2, 4, 5, 6))


KERNEL_CHECK = textwrap.dedent(
    """
    import torch
    from turbovid.ops import interleave, rms_silu
    rms_silu.allow_interpreter(True)
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        for c in (6, 32):  # channels below and at a power of two
            o, bias = torch.randn(2, 4, 6, 4 * c).to(dtype), torch.randn(c).to(dtype)
            assert rms_silu._use_kernel(o)
            got = interleave.subpixel_(o, bias, torch.full((2, 3, 2, 5, 2, c), float("nan"), dtype=dtype))
            rms_silu.allow_interpreter(False)
            want = interleave.subpixel_(o, bias, torch.empty(2, 3, 2, 5, 2, c, dtype=dtype))
            rms_silu.allow_interpreter(True)
            assert torch.equal(got, want), ("subpixel", dtype, c)
            src, b2 = torch.randn(1, 3, 4, 5, 2 * c).to(dtype), torch.randn(2 * c).to(dtype)
            got = interleave.frames_(src, b2, torch.full((1, 3, 2, 4, 5, c), float("nan"), dtype=dtype))
            rms_silu.allow_interpreter(False)
            want = interleave.frames_(src, b2, torch.empty(1, 3, 2, 4, 5, c, dtype=dtype))
            rms_silu.allow_interpreter(True)
            assert torch.equal(got, want), ("frames", dtype, c)
    print("kernel ok")
    """
)


def test_kernels_in_interpreter():
    assert_runs_interpreted(KERNEL_CHECK)
