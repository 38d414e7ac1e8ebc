"""Dense single-head attention for wide heads (ops/wide_attention.py): the PyTorch path, the
argument checks, and the Triton kernel against float64 attention in Triton's interpreter (a
subprocess: TRITON_INTERPRET must be set before triton is imported)."""
from __future__ import annotations

import inspect
import textwrap

import pytest
import torch

from turbovid.ops import wide_attention
from interpreter_helpers import assert_runs_interpreted


def attention64(q, k, v):
    """Attention in float64, written out."""
    q, k, v = q.double(), k.double(), v.double()
    p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return p @ v


@pytest.mark.parametrize("d, ok", [(384, True), (48, True), (64, True), (96, True), (100, False), (8, False)])
def test_supported_head_dims(d, ok):
    assert wide_attention.supported(d) is ok


def test_pytorch_path_and_strided_views():
    """CPU tensors take scaled_dot_product_attention; q, k, v may be slices of one qkv tensor."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 37, 3 * 48)
    q, k, v = qkv.split(48, dim=-1)
    out = wide_attention.attention(q, k, v)
    torch.testing.assert_close(out.double(), attention64(q, k, v), rtol=1e-5, atol=1e-6)


def test_bad_inputs():
    x = torch.randn(2, 5, 48)
    with pytest.raises(ValueError, match="one shape"):
        wide_attention.attention(x, x[:, :4], x)
    with pytest.raises(ValueError, match="sum of two powers"):
        wide_attention.attention(*(torch.randn(1, 5, 100),) * 3)
    with pytest.raises(ValueError, match="out must be"):
        wide_attention.attention(x, x, x, out=torch.empty(2, 5, 32))
    with pytest.raises(ValueError, match="contiguous"):
        y = torch.randn(2, 48, 5).transpose(1, 2)
        wide_attention.attention(y, y, y)


KERNEL_CHECK = "import torch\n" + inspect.getsource(attention64) + textwrap.dedent(
    """
    from turbovid.ops import rms_silu, wide_attention
    rms_silu.allow_interpreter(True)
    torch.manual_seed(0)
    # (B, L, D, block_m, block_n): two parts (32 + 16), ragged query and key blocks; one part (64);
    # a key block wider than L
    cases = [(2, 37, 48, 16, 16), (1, 50, 64, 32, 16), (1, 9, 48, 16, 32)]
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 3e-3)):
        for bsz, n, d, bm, bn in cases:
            qkv = (torch.randn(bsz, n, 3 * d) * 2).to(dtype)  # scores of a few units: a peaked softmax
            q, k, v = qkv.split(d, dim=-1)  # strided views, as the VAE's projection gives them
            cfg = wide_attention.Config(block_m=bm, block_n=bn, num_warps=4, num_stages=1)
            out = torch.full((bsz, n, d), float("nan"), dtype=dtype)
            wide_attention.attention(q, k, v, out=out, config=cfg)
            want = attention64(q, k, v)
            err = ((out.double() - want).norm() / want.norm()).item()
            assert err < tol, (dtype, bsz, n, d, err)
    print("kernel ok")
    """
)


def test_kernel_in_interpreter():
    assert_runs_interpreted(KERNEL_CHECK)
