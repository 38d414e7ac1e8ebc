"""Shared by the attention tests: interpreter switching, input builders, error measures."""
from __future__ import annotations

import importlib
import math
import os
from contextlib import contextmanager

import torch


@contextmanager
def interpreted_kernels():
    """Reload the attention kernel modules under TRITON_INTERPRET=1 (Triton decides at decoration
    time) and let CPU tensors use them; restore JIT kernels afterwards."""
    import triton.language.standard as tls

    from turbovid.ops.attention import blockmap, sagesla_kernel, sla, sla_kernel

    if type(tls.sum).__name__ != "InterpretedFunction":
        raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set; run these tests on their own")
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    for mod in (blockmap, sla_kernel, sagesla_kernel):
        importlib.reload(mod)
    sla.allow_interpreter(True)
    try:
        yield
    finally:
        sla.allow_interpreter(False)
        if old is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = old
        for mod in (blockmap, sla_kernel, sagesla_kernel):
            importlib.reload(mod)


def random_qkv(B, L, H, D, dtype=torch.float16, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(B, L, H, D, generator=g, device=device).to(dtype) for _ in range(3)]


def outlier_qkv(B, L, H, D, dtype=torch.float16, device="cpu", seed=0):
    """DiT-like activations: a few channels of Q and K an order of magnitude larger than the rest
    (per token, so smoothing cannot remove them), K and V with channel-wise offsets."""
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, L, H, D, generator=g, device=device) for _ in range(3))
    big = torch.randperm(D, generator=torch.Generator().manual_seed(seed))[:4].to(device)
    q[..., big] *= 12.0
    k[..., big] *= 8.0
    k += 4.0 * torch.randn(H, D, generator=g, device=device)
    v += 2.0 * torch.randn(H, D, generator=g, device=device)
    return [x.to(dtype) for x in (q, k, v)]


def repeated_tail_qkv(B, Lq, Lk, H, D, n, seed=0):
    """float32 q [B, Lq, H, D], k, v [B, Lk, H, D] with rows n[b].. of k[b], v[b] all equal to row n[b]
    (a zero-padded prompt's keys and values)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, L, H, D, generator=g) for L in (Lq, Lk, Lk))
    for b, nb in enumerate(n):
        if nb < Lk:
            k[b, nb:] = k[b, nb].clone()
            v[b, nb:] = v[b, nb].clone()
    return q, k, v


def attention64(q, k, v, bias=None):
    """Attention of [B, L, H, D] tensors in float64, written out; bias [B, Lk] added to the logits."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias[:, None, None, :]
    return (torch.softmax(s, -1) @ v).transpose(1, 2)


def proj_params(D, device="cpu", seed=1):
    g = torch.Generator(device=device).manual_seed(seed)
    return 0.2 * torch.randn(D, D, generator=g, device=device), 0.1 * torch.randn(D, generator=g, device=device)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def assert_fp8_output_of(got, plain):
    """got == (e4m3, scales): the bytes an fp8 linear's own quantization makes of `plain`."""
    from turbovid.ops.quant.fp8 import quantize_act_fp8

    B, L, H, D = plain.shape
    want_q, want_s = quantize_act_fp8(plain.reshape(B * L, H * D))
    q8, s = got
    assert q8.dtype == torch.float8_e4m3fn and q8.shape == plain.shape and s.shape == want_s.shape
    assert torch.equal(s, want_s)
    assert torch.equal(q8.reshape(B * L, H * D).view(torch.uint8), want_q.view(torch.uint8))
    assert len(set(s.flatten().tolist())) > 1


def assert_fp8_tensor_output_of(got, plain, v, proj_weight=None, proj_bias=None):
    """got == (e4m3, scale [1]): `plain` quantized per tensor at the bound max|V| gives (the attention
    output's), and that bound holds."""
    from turbovid.ops.attention.blockmap import output_bound
    from turbovid.ops.quant import fp8_tensor

    B, L, H, D = plain.shape
    bound = output_bound(v.float().abs().amax(1).reshape(B * H, D), proj_weight, proj_bias)
    assert plain.abs().max() <= bound
    want_q, want_s = fp8_tensor.quantize_with_bound(plain, bound)
    q8, s = got
    assert q8.dtype == torch.float8_e4m3fn and q8.shape == plain.shape and s.shape == (1,)
    assert torch.equal(s, want_s)
    assert torch.equal(q8.view(torch.uint8), want_q.view(torch.uint8))
