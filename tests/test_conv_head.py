"""The VAE's head by taps (ops/conv_head.py): the PyTorch path against the normalised input run
through the causal conv, chunked streams against one pass, and the Triton kernel against the
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
    out, partial = conv_head.stream(x, gamma, head, bias=in_bias, residual=res, x_out=x_out)
    assert out.shape == (3, 4, 5, 3) and partial.shape == (2, 4, 5, 3) and partial.dtype == torch.float32
    want = conv_of_normalised(x, gamma, weight, bias, in_bias, res)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    if residual:
        torch.testing.assert_close(x_out, x + in_bias + res)


def test_chunked_stream_equals_one_pass():
    """Chunks of 1, 2 and 1 frames carry the causal state (the partial sums) as one pass does,
    including a one-frame chunk passing on the sums of the frame before it."""
    torch.manual_seed(1)
    x, gamma = torch.randn(4, 3, 5, 16), torch.ones(16)
    head = conv_head.pack(torch.randn(3, 16, 3, 3, 3), torch.randn(3), torch.float32)
    whole, _ = conv_head.stream(x, gamma, head)
    parts, partial = [], None
    for s, e in ((0, 1), (1, 3), (3, 4)):
        out, partial = conv_head.stream(x[s:e].contiguous(), gamma, head, partial=partial)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-5)
    # the last partial sums: the conv's first two frames past the end, inputs there being zero
    pad = torch.cat([x, torch.zeros(2, 3, 5, 16)])
    longer, _ = conv_head.stream(pad, gamma, head)
    torch.testing.assert_close(partial + head.bias, longer[4:], rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    head = conv_head.pack(torch.randn(3, 16, 3, 3, 3), None, torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        conv_head.stream(torch.randn(2, 3, 4, 8), torch.ones(8), head)
    with pytest.raises(ValueError, match="residual needs a bias"):
        conv_head.stream(torch.randn(2, 3, 4, 16), torch.ones(16), head, residual=torch.randn(2, 3, 4, 16))
    with pytest.raises(ValueError, match="x_out"):
        conv_head.stream(torch.randn(2, 3, 4, 16), torch.ones(16), head, x_out=torch.empty(2, 3, 4, 16))
    with pytest.raises(ValueError, match="packed weights"):
        conv_head.stream(torch.randn(2, 3, 4, 16, dtype=torch.float64), torch.ones(16), head)
    with pytest.raises(ValueError, match="partial"):
        conv_head.stream(torch.randn(2, 3, 4, 16), torch.ones(16), head, partial=torch.zeros(1, 3, 4, 3))
    with pytest.raises(ValueError, match="partial"):
        conv_head.stream(torch.randn(2, 3, 4, 16), torch.ones(16), head, partial=torch.zeros(2, 3, 4, 3).double())


KERNEL_CHECK = textwrap.dedent(
    """
    import torch
    from turbovid.ops import conv_head, rms_silu
    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
        # (T, H, W, C, Cout, residual, tile): tiles cut by the frame's edges, one frame, 5 outputs
        # padded to 8, 80 channels (a block of 64 and one of 16), the shipped 8 x 8 tile
        for t, h, w, c, cout, residual, (rows, cols) in (
                (2, 5, 7, 32, 3, False, (4, 8)), (1, 9, 13, 16, 3, True, (4, 8)), (3, 7, 20, 32, 5, True, (8, 16)),
                (2, 6, 9, 80, 3, True, (4, 8)), (2, 7, 11, 16, 3, True, (8, 8))):
            x, gamma = torch.randn(t, h, w, c).to(dtype), 1 + 0.3 * torch.randn(c)
            in_bias = torch.randn(c).to(dtype)
            res = torch.randn(t, h, w, c).to(dtype) if residual else None
            head = conv_head.pack(torch.randn(cout, c, 3, 3, 3) / (27 * c) ** 0.5, torch.randn(cout), dtype)
            partial = torch.randn(2, h, w, cout)
            got = {}
            for kernel in (True, False):
                rms_silu.allow_interpreter(kernel)
                x_out = torch.full_like(x, float("nan")) if residual else None
                got[kernel] = (*conv_head.stream(x, gamma, head, bias=in_bias, residual=res, x_out=x_out,
                                                 partial=partial, dtype=torch.float32, rows=rows, cols=cols),
                               *conv_head.stream(x, gamma, head, bias=in_bias, residual=res, dtype=torch.float32,
                                                 rows=rows, cols=cols), x_out)
            for a, b in zip(got[True], got[False]):
                if b is not None:
                    err = ((a.double() - b.double()).norm() / b.double().norm()).item()
                    assert err < tol, (dtype, t, cout, err)
        # the sum stored in place, over x or over the residual (the decoder's residual blocks): the
        # same conv and sum as into a tensor of its own
        rms_silu.allow_interpreter(True)
        x, res = torch.randn(2, 7, 11, 16).to(dtype), torch.randn(2, 7, 11, 16).to(dtype)
        head = conv_head.pack(torch.randn(3, 16, 3, 3, 3) / (27 * 16) ** 0.5, torch.randn(3), dtype)
        in_bias = torch.randn(16).to(dtype)
        x_out = torch.empty_like(x)
        want = conv_head.stream(x, gamma[:16], head, bias=in_bias, residual=res, x_out=x_out, dtype=torch.float32)[0]
        for over_x in (True, False):
            a, b = x.clone(), res.clone()
            got = conv_head.stream(a, gamma[:16], head, bias=in_bias, residual=b, x_out=a if over_x else b,
                                   dtype=torch.float32)[0]
            assert ((got - want).norm() / want.norm()).item() < tol, (dtype, over_x)
            assert ((a if over_x else b).double() - x_out.double()).abs().max().item() <= tol, (dtype, over_x)
    print("kernel ok")
    """
)


def test_kernel_in_interpreter():
    assert_runs_interpreted(KERNEL_CHECK)
