"""Quantized linears on the GPU: compiled Triton kernels against the PyTorch rule (run on the device:
`pytest -m gpu tests/test_quant_gpu.py`). Fixed kernel configs keep compile time down; the
autotuned path is exercised by benchmarks/bench_linear.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from turbovid.ops.quant import Fp8Linear, Int8Linear, fp8_available, int8_gluon, swap_linears
from turbovid.ops.quant.fp8 import fp8_linear_reference, quantize_act_fp8
from turbovid.ops.quant.int8 import int8_linear_reference, kernels, quantize_blockwise

pytestmark = pytest.mark.gpu

CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=256, SPLIT_N=2, MAGIC=True, num_warps=4, num_stages=3),
]
FMTS = ["int8"] + (["fp8"] if torch.cuda.is_available() and fp8_available() else [])


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def activations(m, k, dtype=torch.bfloat16):
    x = torch.randn(m, k, device="cuda")
    x[:, torch.randperm(k, device="cuda")[:4]] *= 8
    return x.to(dtype)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_act_quant_bytes_match_rule(fmt, dtype):
    for m, k in [(4096, 1536), (77, 200), (1, 8960)]:
        x = activations(m, k, dtype)
        x[0, :3] = -0.0
        q, s = kernels().quantize_act(x, fmt)
        rq, rs = quantize_blockwise(x) if fmt == "int8" else quantize_act_fp8(x)
        assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs), (m, k)


@pytest.mark.parametrize("config", CONFIGS, ids=["128x128", "64x256split-magic"])
@pytest.mark.parametrize("tma", [False, True], ids=["ptr", "tma"])
def test_gemm_int32_exact(config, tma):
    if tma and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs Hopper")
    for m, n, k in [(1000, 640, 1536), (333, 200, 272)]:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
        b = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
        a[0], b[0] = -128, -128
        ones_a = torch.ones(math.ceil(m / 128), math.ceil(k / 128), device="cuda")
        ones_b = torch.ones(math.ceil(n / 128), math.ceil(k / 128), device="cuda")
        c = kernels().scaled_mm(a, ones_a, b, ones_b, out_dtype=torch.float32, config=config, use_tma=tma)
        assert torch.equal(c.double(), a.double() @ b.double().t())


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


needs_gluon = pytest.mark.skipif(not _hopper() or int8_gluon.gluon is None,
                                 reason="the Gluon int8 kernel runs on sm_90 with Triton's Gluon")
GLUON_CONFIGS = [  # the shipped launches (persistent, warp-specialized), and the plain one-tile-a-program kernel
    int8_gluon.Config(unroll=4), int8_gluon.Config(), int8_gluon.Config(block_n=64, unroll=3),
    int8_gluon.Config(ws=False, maxnreg=None, stages=3, unroll=2),
    int8_gluon.Config(ws=False, maxnreg=None, block_m=64, num_warps=4, stages=4, unroll=3),
]
GLUON_IDS = ["ws-unroll4", "ws-unroll6", "ws-128x64-unroll3", "plain-unroll2", "plain-64x128-unroll3"]


@needs_gluon
@pytest.mark.parametrize("cfg", GLUON_CONFIGS, ids=GLUON_IDS)
def test_gluon_gemm_int32_exact(cfg):
    # unit scales and a float32 output: every value is an exact integer sum of block products
    # K blocks: 12 (whole runs), 3 and 1 (a run short), 7 (runs and a remainder); 330 tiles (660 of 64
    # rows): the persistent launches' programs take several each, also with more blocks than stages
    for m, n, k in [(1000, 640, 1536), (333, 200, 272), (64, 128, 128), (130, 256, 896), (4101, 1280, 384),
                    (4101, 1280, 1536)]:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
        b = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
        a[0], b[0] = -128, -128
        ones_a = torch.ones(math.ceil(m / 128), math.ceil(k / 128), device="cuda")
        ones_b = torch.ones(math.ceil(n / 128), math.ceil(k / 128), device="cuda")
        c = torch.full((m, n), float("nan"), device="cuda")
        int8_gluon.scaled_mm(a, ones_a, b, ones_b, None, c, cfg)
        assert torch.equal(c.double(), a.double() @ b.double().t()), (m, n, k)


@needs_gluon
def test_gluon_gemm_scales_and_bias_match_the_rule():
    # block scales that differ per (row block, K block) and (column block, K block), a bias, bf16 out
    m, n, k = 1000, 640, 1536
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
    sa = torch.rand(math.ceil(m / 128), k // 128, device="cuda") * 1e-2 + 1e-3
    sb = torch.rand(math.ceil(n / 128), k // 128, device="cuda") * 1e-2 + 1e-3
    bias = torch.randn(n, device="cuda").bfloat16()
    want = (a.double().view(m, k // 128, 128) * sa.double().repeat_interleave(128, 0)[:m, :, None]).view(m, k) @ \
        (b.double().view(n, k // 128, 128) * sb.double().repeat_interleave(128, 0)[:n, :, None]).view(n, k).t()
    want = want + bias.double()
    c = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    int8_gluon.scaled_mm(a, sa, b, sb, bias, c)
    assert rel(c, want) < 4e-3  # bf16 output rounding
    triton_c = kernels().scaled_mm(a, sa, b, sb, bias, config=CONFIGS[0], use_tma=True)
    assert torch.allclose(c.float(), triton_c.float(), rtol=2**-7, atol=0)  # same sums, order of fp32 adds aside


@needs_gluon
def test_scaled_mm_dispatches_int8_to_gluon_on_hopper(monkeypatch):
    calls = []
    real = int8_gluon.scaled_mm
    monkeypatch.setattr(int8_gluon, "scaled_mm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    lin = nn.Linear(1536, 1024, device="cuda", dtype=torch.bfloat16)
    layer = Int8Linear.from_linear(lin)
    x = activations(700, 1536)
    y = layer(x)
    assert calls and rel(y.float(), int8_linear_reference(x.float(), getattr(layer, layer.weight_name), layer.scale, layer.bias)) < 4e-3
    monkeypatch.setenv("TURBOVID_GLUON", "0")
    calls.clear()
    y2 = layer(x)
    assert not calls and torch.allclose(y.float(), y2.float(), rtol=2**-7, atol=0)


@pytest.mark.parametrize("fmt", FMTS)
def test_layer_matches_dequantized_reference(fmt):
    cls, ref_fn = (Int8Linear, int8_linear_reference) if fmt == "int8" else (Fp8Linear, fp8_linear_reference)
    lin = nn.Linear(1536, 1000, device="cuda", dtype=torch.bfloat16)
    layer = cls.from_linear(lin)
    x = activations(2 * 1500, 1536).reshape(2, 1500, 1536)
    y = layer(x)
    ref = ref_fn(x.float(), getattr(layer, layer.weight_name), layer.scale, layer.bias)
    assert y.shape == (2, 1500, 1000) and y.dtype == torch.bfloat16
    assert rel(y.float(), ref) < 4e-3  # bf16 output rounding only


def test_compiled_model_matches_eager():
    model = nn.Sequential(nn.Linear(1536, 4096), nn.GELU(approximate="tanh"), nn.Linear(4096, 1536))
    model = swap_linears(model.to("cuda", torch.bfloat16))
    x = activations(640, 1536)
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, fullgraph=True)(x)
    assert rel(got.float(), want.float()) < 1e-2  # inductor may fuse the GELU differently (bf16)
    assert isinstance(model[0], Int8Linear)


def test_fp8_cublas_blockwise_matches_reference():
    """cuBLASLt blockwise fp8 (F.scaled_mm, 1x128 x 128x128) against the PyTorch rule; the layer
    takes this path where the probe passes."""
    from turbovid.ops.quant import fp8_cublas
    from turbovid.ops.quant.fp8 import fp8_kernel_linear

    if not fp8_cublas.available(torch.device("cuda")):
        pytest.skip("cuBLAS blockwise fp8 unavailable here (torch / CUDA / card); the Triton GEMM serves")
    lin = nn.Linear(8960, 1536, device="cuda", dtype=torch.bfloat16)  # K/128 = 70: padded scale rows
    layer = Fp8Linear.from_linear(lin)
    x = activations(2 * 700, 8960).reshape(2, 700, 8960)
    assert fp8_kernel_linear(x, layer.fp8_weight) is fp8_cublas.linear
    ref = fp8_linear_reference(x.float(), layer.fp8_weight, layer.scale, layer.bias)
    y = layer(x)
    assert y.shape == (2, 700, 1536) and y.dtype == torch.bfloat16
    assert rel(y.float(), ref) < 4e-3  # bf16 output rounding only
    g = fp8_cublas.linear(x, layer.fp8_weight, layer.scale, layer.bias, gelu_input=True)
    ref_g = fp8_linear_reference(torch.nn.functional.gelu(x, approximate="tanh").float(), layer.fp8_weight,
                                 layer.scale, layer.bias)
    assert rel(g.float(), ref_g) < 1e-2  # + GELU rounding flips


@pytest.mark.parametrize("tokens", [1950, 1952, 32760])
def test_fp8_layer_at_token_counts_cublas_may_refuse(tokens):
    """cuBLAS blockwise fp8 has no kernel for some M (1950 on an H100): those take the Triton GEMM,
    for a bf16 input and for one the norm kernel already quantized."""
    from turbovid.ops.quant import fp8_cublas
    from turbovid.ops.quant.fp8 import Fp8Activation

    layer = Fp8Linear.from_linear(nn.Linear(1536, 1536, device="cuda", dtype=torch.bfloat16))
    x = activations(tokens, 1536).reshape(1, tokens, 1536)
    assert fp8_cublas.serves(x, layer.fp8_weight) == (tokens % 8 == 0 and fp8_cublas.available(x.device))
    ref = fp8_linear_reference(x.float(), layer.fp8_weight, layer.scale, layer.bias)
    for inp in (x, Fp8Activation.quantize(x)):
        y = layer(inp)
        assert y.shape == (1, tokens, 1536)
        assert rel(y.float(), ref) < 4e-3


@pytest.mark.parametrize("fmt", ["bf16"] + FMTS)
def test_fused_qkv_matches_separate_linears(fmt):
    from turbovid import fast
    from turbovid.configs import DiTConfig
    from turbovid.loading.dit import build_dit
    from turbovid.ops.quant import swap_linears_fp8

    cfg = DiTConfig(dim=1536, ffn_dim=256, num_heads=12, num_layers=1, text_dim=64, freq_dim=64)
    model = build_dit(cfg, device="cuda", dtype=torch.bfloat16, seed=0)
    if fmt != "bf16":
        (swap_linears if fmt == "int8" else swap_linears_fp8)(model.blocks)
    attn = model.blocks[0].self_attn
    x = activations(3000, 1536).reshape(2, 1500, 1536)
    with torch.no_grad():
        want = attn.project_qkv(x)
        assert fast.fuse_qkv(model) == 1
        got = attn.project_qkv(x)
    for a, b in zip(got, want):
        assert rel(a.float(), b.float()) < 4e-3  # bf16: cuBLAS may tile differently; quantized: same math


# ---- per-tensor fp8 (quant.fp8_tensor) --------------------------------------------------------------

def _tensor_ok():
    from turbovid.ops.quant import fp8_tensor

    if not (fp8_available() and fp8_tensor.cublas_available(torch.device("cuda"))):
        pytest.skip("cuBLAS per-tensor fp8 unavailable on this card / torch")


@pytest.mark.parametrize("gelu", [False, True])
def test_per_tensor_quantize_kernel_bytes_match_rule(gelu):
    from turbovid.ops.quant import fp8_tensor, fp8_tensor_triton

    _tensor_ok()
    for m, k in [(4096, 1536), (77, 200), (1, 8960)]:
        x = activations(m, k) * 3
        q, s = fp8_tensor_triton.quantize(x, gelu=gelu)
        q0, s0 = fp8_tensor.quantize_reference(x, gelu=gelu)
        if not gelu:
            assert torch.equal(s, s0) and torch.equal(q.view(torch.uint8), q0.view(torch.uint8))
        else:  # the kernel's and PyTorch's tanh-GELU may round one bf16 ulp apart
            torch.testing.assert_close(s, s0, rtol=1e-2, atol=0)
            assert (q.view(torch.uint8) != q0.view(torch.uint8)).float().mean() < 0.02
            assert rel(q.float() * s, q0.float() * s0) < 1e-2


@pytest.mark.parametrize("tokens", [1950, 4096, 32760])
def test_per_tensor_layer_matches_its_dequantized_reference(tokens):
    """cuBLAS's per-tensor fp8 GEMM with fast accumulation against the float32 GEMM of the same
    quantized operands (bf16 input and a pre-quantized one), at token counts blockwise cuBLAS refuses."""
    from turbovid.ops.quant import Fp8TensorLinear, fp8_tensor
    from turbovid.ops.quant.fp8 import Fp8Activation

    _tensor_ok()
    layer = Fp8TensorLinear.from_linear(nn.Linear(1536, 4608, device="cuda", dtype=torch.bfloat16))
    x = activations(tokens, 1536).reshape(1, tokens, 1536)
    q, s = fp8_tensor.quantize_reference(x.reshape(-1, 1536))
    ref = fp8_tensor.linear_reference(q, s, layer.fp8_weight, layer.scale, layer.bias, torch.float32)
    for inp in (x, Fp8Activation.quantize_per_tensor(x)):
        y = layer(inp)
        assert y.shape == (1, tokens, 4608) and y.dtype == torch.bfloat16
        assert rel(y.float().reshape(-1, 4608), ref) < 5e-3  # bf16 output + fast accumulation
    assert (tokens, 1536, 4608) not in fp8_tensor._refused


def test_per_tensor_layer_error_against_the_float_linear_is_fp8s():
    """At a DiT shape with outlier channels, per-tensor fp8 is within 1.3x of the block-scaled
    layer's error against the bf16 operands' float32 product."""
    from turbovid.ops.quant import Fp8TensorLinear

    _tensor_ok()
    torch.manual_seed(0)
    lin = nn.Linear(5120, 5120, device="cuda", dtype=torch.bfloat16)
    x = activations(8192, 5120).reshape(1, 8192, 5120)
    exact = torch.nn.functional.linear(x.float(), lin.weight.float(), lin.bias.float())
    e_tensor = rel(Fp8TensorLinear.from_linear(lin)(x).float(), exact)
    e_block = rel(Fp8Linear.from_linear(lin)(x).float(), exact)
    assert e_tensor < 5e-2 and e_tensor < 1.3 * e_block, (e_tensor, e_block)


@pytest.mark.parametrize("tokens", [1950, 32760])
def test_cublaslt_gelu_gemm_matches_its_reference(tokens):
    """quant.cublaslt: bias + tanh-GELU + e4m3 output at a given scale in cuBLASLt's epilogue, against
    dequantize, float32 matmul, GELU and the per-tensor rule at the same bound."""
    from turbovid.ops.quant import cublaslt, fp8_tensor

    _tensor_ok()
    reason = cublaslt.unavailable(torch.device("cuda"))
    assert reason is None, reason
    torch.manual_seed(0)
    lin = nn.Linear(1536, 8960, device="cuda", dtype=torch.bfloat16)
    w_q, w_s = fp8_tensor.quantize_weight(lin.weight)
    a_q, a_s = fp8_tensor.quantize_reference(activations(tokens, 1536))
    y = fp8_tensor.linear_reference(a_q, a_s, w_q, w_s, lin.bias, torch.float32)
    bound = (torch.nn.functional.gelu(y, approximate="tanh").abs().amax() * 1.5).reshape(1)  # loose, like the row-norm one
    want_q, want_s = fp8_tensor.linear_gelu_reference(a_q, a_s, w_q, w_s, lin.bias, bound)
    for fast_accum in (True, False):
        got = cublaslt.fp8_gemm_gelu_fp8(a_q, a_s, w_q, w_s, lin.bias, 448.0 / bound, fast_accum)
        assert got.shape == (tokens, 8960) and got.dtype == torch.float8_e4m3fn
        differ = (got.view(torch.uint8) != want_q.view(torch.uint8)).float().mean().item()
        assert differ < 0.02, differ  # accumulation order and the bf16 bias: a neighbouring e4m3 step
        assert rel(got.float(), want_q.float()) < 1e-2
