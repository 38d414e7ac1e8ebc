"""The VAE's head by taps (ops/conv_head.py): the PyTorch path against the normalised input run
through the causal conv, chunked streams against one pass, and the Triton kernels against the
PyTorch path in Triton's interpreter (a subprocess: TRITON_INTERPRET must be set before triton is
imported)."""
from __future__ import annotations

import os
import textwrap

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads this when it is first imported, which this module's imports do; the suite's
    # interpreter tests (test_fused.py, the attention tests) need it set by the first importer.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from turbovid.ops import causal_conv, conv_head  # noqa: E402
from turbovid.ops.rms_silu import add_bias_residual_, rms_silu_reference  # noqa: E402
from interpreter_helpers import assert_runs_interpreted  # noqa: E402


def conv_of_normalised(x, gamma, weight, bias, in_bias=None, residual=None):
    """rms_silu of the (residual) input, zero history, then the plain causal conv."""
    if residual is not None:
        x, in_bias = add_bias_residual_(x.clone(), in_bias, residual), None
    y = rms_silu_reference(x, gamma, True, in_bias).float()
    buf = torch.cat([y.new_zeros(2, *y.shape[1:]), y])
    return causal_conv.causal_conv_reference(buf, causal_conv.pack(weight, bias, torch.float32))


def test_pack_layout():
    weight = torch.randn(3, 16, 3, 3, 3)
    head = conv_head.pack(weight, None, torch.float32)
    assert head.cp == 4 and head.wz.shape == (16, 128)
    tap = 2 * 9 + 1 * 3 + 0  # dt = 2, dh = 1, dw = 0
    assert torch.equal(head.wz[:, tap * 4:tap * 4 + 3], weight[:, :, 2, 1, 0].T)
    assert not head.wz[:, tap * 4 + 3].any() and not head.wz[:, 27 * 4:].any()
    with pytest.raises(ValueError, match="at most 16"):
        conv_head.pack(torch.randn(17, 16, 3, 3, 3), None, torch.float32)


@pytest.mark.parametrize("residual", [False, True])
def test_pytorch_path_is_the_conv_of_the_normalised_input(residual):
    torch.manual_seed(0)
    x, gamma, in_bias = torch.randn(3, 4, 5, 16), 1 + 0.2 * torch.randn(16), torch.randn(16)
    res = torch.randn(3, 4, 5, 16) if residual else None
    weight, bias = torch.randn(3, 16, 3, 3, 3) / 12, torch.randn(3)
    head = conv_head.pack(weight, bias, torch.float32)
    x_out = torch.empty_like(x) if residual else None
    z = conv_head.project(x, gamma, head, bias=in_bias, residual=res, x_out=x_out)
    assert z.shape == (27, 3, 4, 5, 3) and z.dtype == torch.float32
    out = conv_head.gather(z, None, head, torch.float32)
    want = conv_of_normalised(x, gamma, weight, bias, in_bias, res)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    if residual:
        torch.testing.assert_close(x_out, x + in_bias + res)


def test_chunked_stream_equals_one_pass():
    """Chunks of 1, 2 and 1 frames with next_history carry the causal state as one pass does."""
    torch.manual_seed(1)
    x, gamma = torch.randn(4, 3, 5, 16), torch.ones(16)
    head = conv_head.pack(torch.randn(3, 16, 3, 3, 3), torch.randn(3), torch.float32)
    whole = conv_head.gather(conv_head.project(x, gamma, head), None, head, torch.float32)
    parts, history = [], None
    for s, e in ((0, 1), (1, 3), (3, 4)):
        z = conv_head.project(x[s:e].contiguous(), gamma, head)
        parts.append(conv_head.gather(z, history, head, torch.float32))
        history = conv_head.next_history(z, history)
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    head = conv_head.pack(torch.randn(3, 16, 3, 3, 3), None, torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        conv_head.project(torch.randn(2, 3, 4, 8), torch.ones(8), head)
    with pytest.raises(ValueError, match="residual needs a bias"):
        conv_head.project(torch.randn(2, 3, 4, 16), torch.ones(16), head, residual=torch.randn(2, 3, 4, 16))
    with pytest.raises(ValueError, match="x_out"):
        conv_head.project(torch.randn(2, 3, 4, 16), torch.ones(16), head, x_out=torch.empty(2, 3, 4, 16))
    with pytest.raises(ValueError, match="packed weights"):
        conv_head.project(torch.randn(2, 3, 4, 16, dtype=torch.float64), torch.ones(16), head)
    with pytest.raises(ValueError, match="history"):
        conv_head.gather(torch.randn(27, 2, 3, 4, 3), torch.randn(27, 1, 3, 4, 3), head, torch.float32)


KERNEL_CHECK = textwrap.dedent(
    """
    import torch
    from turbovid.ops import conv_head, rms_silu
    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
        # (T, H, W, C, Cout, residual): ragged 256-pixel tiles, one frame, 5 outputs padded to 8
        for t, h, w, c, cout, residual in ((2, 5, 7, 32, 3, False), (1, 3, 9, 16, 3, True), (3, 4, 6, 32, 5, True)):
            x, gamma = torch.randn(t, h, w, c).to(dtype), 1 + 0.3 * torch.randn(c)
            in_bias = torch.randn(c).to(dtype)
            res = torch.randn(t, h, w, c).to(dtype) if residual else None
            head = conv_head.pack(torch.randn(cout, c, 3, 3, 3) / (27 * c) ** 0.5, torch.randn(cout), dtype)
            history = torch.randn(27, 2, h, w, cout)
            got = {}
            for kernel in (True, False):
                rms_silu.allow_interpreter(kernel)
                x_out = torch.full_like(x, float("nan")) if residual else None
                z = conv_head.project(x, gamma, head, bias=in_bias, residual=res, x_out=x_out)
                got[kernel] = (z, conv_head.gather(z, history, head, torch.float32),
                               conv_head.gather(z, None, head, torch.float32), x_out)
            for a, b in zip(got[True], got[False]):
                if b is not None:
                    err = ((a.double() - b.double()).norm() / b.double().norm()).item()
                    assert err < tol, (dtype, t, cout, err)
        # Z rounded to float16 (what benchmarks/explore_head.py times): the same conv within its rounding
        x, gamma = torch.randn(2, 5, 7, 32).to(dtype), 1 + 0.3 * torch.randn(32)
        head = conv_head.pack(torch.randn(3, 32, 3, 3, 3) / (27 * 32) ** 0.5, torch.randn(3), dtype)
        rms_silu.allow_interpreter(True)
        z16 = conv_head.project(x, gamma, head, z_dtype=torch.float16, block_n=32, num_warps=2)
        out16 = conv_head.gather(z16, z16[:, :2].contiguous(), head, torch.float32)
        rms_silu.allow_interpreter(False)
        z = conv_head.project(x, gamma, head)
        want = conv_head.gather(z, z[:, :2].contiguous(), head, torch.float32)
        assert z16.dtype == torch.float16 and ((out16 - want).norm() / want.norm()).item() < 3e-3
    print("kernel ok")
    """
)


def test_kernels_in_interpreter():
    assert_runs_interpreted(KERNEL_CHECK)
