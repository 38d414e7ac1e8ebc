"""W8A8 int8 / fp8 linears: the quantization rule, the Triton kernels (CPU interpreter), the layers,
the swap function and the offline converter."""
from __future__ import annotations

import functools
import importlib
import math
import os

import torch

if not torch.cuda.is_available():
    # Triton reads this when it is first imported (its own helpers like tl.max are decorated then).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn as nn  # noqa: E402

from turbovid.configs import DiTConfig  # noqa: E402
from turbovid.loading.common import CheckpointError  # noqa: E402
from turbovid.loading.convert import convert_checkpoint, detect_quant  # noqa: E402
from turbovid.ops.quant import Fp8Linear, Int8Linear, int8, int8_triton, swap_linears, swap_linears_fp8  # noqa: E402
from turbovid.ops.quant.fp8 import fp8_linear_reference, quantize_act_fp8, quantize_weight_fp8  # noqa: E402
from turbovid.ops.quant.int8 import dequantize_blockwise, int8_linear_reference, quantize_blockwise  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _interpret():
    """Kernels run in Triton's CPU interpreter; layers may use it for CPU tensors."""
    if torch.cuda.is_available():
        pytest.skip("CPU interpreter tests: run without a GPU (tests/test_quant_gpu.py covers the device)")
    os.environ["TRITON_INTERPRET"] = "1"
    importlib.reload(int8_triton)  # Triton picks interpreter vs compiler when a kernel is defined
    import triton.language.standard as tls

    assert type(tls.max).__name__ == "InterpretedFunction", "triton was imported before TRITON_INTERPRET=1 was set"
    int8.allow_interpreter(True)
    yield
    int8.allow_interpreter(False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def activations(m: int, k: int, outliers: int = 4, gain: float = 8.0, dtype=torch.bfloat16) -> torch.Tensor:
    """Gaussian tokens with a few large channels, as after a norm + modulation."""
    x = torch.randn(m, k)
    x[:, torch.randperm(k)[:outliers]] *= gain
    return x.to(dtype)


# ----------------------------------------------------------------------------- the rule


def test_rule_on_hand_values():
    x = torch.zeros(130, 260)
    x[0, 0] = 2.0  # amax of tile (0, 0): multiplier 128 / 2 = 64
    x[0, 1] = 2.5 / 64  # 2.5 -> 2 (half to even)
    x[0, 2] = 3.5 / 64  # 3.5 -> 4
    x[0, 3] = -2.0  # -128: the divisor is 128, so -amax hits -128 exactly
    x[129, 129] = -0.5  # tile (1, 1) alone: -128
    x[129, 130] = 0.25  # tile (1, 1) -> 0.25 * 256 = 64
    q, s = quantize_blockwise(x)
    assert q.dtype == torch.int8 and q.shape == (130, 260) and s.shape == (2, 3) and s.dtype == torch.float32
    assert q[0, :4].tolist() == [127, 2, 4, -128]  # +amax saturates to 127
    assert q[129, 129].item() == -128 and q[129, 130].item() == 64  # tile (1, 1): amax 0.5
    assert s[0, 0].item() == 2.0 / 128 and s[1, 1].item() == 0.5 / 128
    floor = torch.tensor(1e-8).item() / 128  # empty tiles: amax floored at 1e-8
    assert s[0, 1].item() == floor and s[1, 0].item() == floor and s[1, 2].item() == floor
    assert q[:, 256:].abs().sum() == 0


def test_dequantize_error_is_at_most_one_step():
    x = torch.randn(300, 200) * torch.rand(300, 1) * 5
    q, s = quantize_blockwise(x)
    step = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:300, :200]
    err = (dequantize_blockwise(q, s) - x).abs()
    assert (err <= step * 0.5 * (1 + 1e-6)).float().mean() > 0.999  # rounding: half a step
    assert (err <= step * (1 + 1e-6)).all()  # the saturated +amax is off by one step


def test_reference_linear_is_dequantize_then_matmul():
    x, w, b = torch.randn(2, 70, 300), torch.randn(200, 300), torch.randn(200)
    wq, ws = quantize_blockwise(w)
    xq, xs = quantize_blockwise(x.reshape(-1, 300))
    want = dequantize_blockwise(xq, xs) @ dequantize_blockwise(wq, ws).t() + b
    assert torch.equal(int8_linear_reference(x, wq, ws, b), want.reshape(2, 70, 200))


# ----------------------------------------------------------------------------- kernels (interpreter)


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_act_quant_kernel_matches_rule_bytes(fmt, dtype):
    for m, k in [(200, 300), (1, 7), (129, 256)]:
        x = activations(m, k, dtype=dtype) * 3
        x[0, :3] = -0.0  # the sign of zero survives in e4m3
        q, s = int8_triton.quantize_act(x, fmt)
        rq, rs = quantize_blockwise(x) if fmt == "int8" else quantize_act_fp8(x)
        assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)), (m, k)
        assert torch.equal(s, rs), (m, k)


def test_measured_reciprocal_table_is_within_one_ulp_of_ieee():
    table = torch.tensor(list(int8.RCP128_TABLE), dtype=torch.int64).to(torch.int32)
    ieee = (128.0 / (1 + torch.arange(128, dtype=torch.float64) / 128)).float().view(torch.int32)
    off = (table - ieee).abs()
    assert off.max() == 1 and off.sum() == 20 and table[0] == ieee[0]  # 2**k reciprocals are exact
    floor = torch.tensor(128.0).div(torch.tensor(1e-8)).view(torch.int32).item()
    assert abs(int8.RCP128_FLOOR - floor) <= 1


def test_reciprocal_table_is_applied_alike_by_rule_and_kernel(monkeypatch):
    """With a table, the multiplier of a bf16 amax = table[mantissa] * 2**-exponent; exact ties then
    follow the table's rounding. A table one ulp above IEEE for mantissa 0 (IEEE: exactly 128) moves
    the ties of an amax 2**e up; half to even without the table."""
    ieee = [torch.tensor(128.0 / (1 + m / 128), dtype=torch.float32).view(torch.int32).item() for m in range(128)]
    table = list(ieee)
    table[0] += 1  # 128 * (1 + 2**-23)
    floor = torch.tensor(128.0, dtype=torch.float32).div(torch.tensor(1e-8, dtype=torch.float32)).view(torch.int32).item()
    monkeypatch.setattr(int8, "RCP128_TABLE", tuple(table))
    monkeypatch.setattr(int8, "RCP128_FLOOR", floor)
    x = torch.zeros(128, 384)
    x[0, 0], x[0, 128], x[0, 256] = 4.0, 1.5, 3e-9  # tile amax: 2**2 (table entry 0), 1.5, the 1e-8 floor
    ties = torch.arange(0, 127, 2) + 0.5  # k + 0.5 for even k: IEEE rounds down, the table up
    x[1, :64] = ties * 4.0 / 128
    x[1, 128:192] = ties * 1.5 / 128
    x[1, 256:320] = torch.linspace(-3e-9, 3e-9, 64)
    x = x.to(torch.bfloat16)
    assert torch.equal(x[1, :64].float(), ties * 4.0 / 128)  # the ties are exact in bf16
    q, s = quantize_blockwise(x)
    kq, ks = int8_triton.quantize_act(x, "int8")
    assert torch.equal(q, kq) and torch.equal(s, ks)
    assert torch.equal(q[1, :64].long(), (ties + 0.5).long())  # rounded up: the table's quotient
    monkeypatch.setattr(int8, "RCP128_TABLE", None)
    q_ieee, _ = quantize_blockwise(x)
    assert torch.equal(q_ieee[1, :64].long(), (ties - 0.5).long())


GEMM_CONFIGS = [
    dict(BLOCK_M=32, BLOCK_N=64),
    dict(BLOCK_M=64, BLOCK_N=256, SPLIT_N=2, MAGIC=True),  # two weight-scale blocks per tile
    dict(BLOCK_M=128, BLOCK_N=32, MAGIC=True),
    dict(BLOCK_M=256, BLOCK_N=32),  # two activation-scale blocks per tile (per-row scales)
]


@pytest.mark.parametrize("config", GEMM_CONFIGS, ids=["32x64", "64x256split-magic", "128x32-magic", "256x32"])
@pytest.mark.parametrize("tma", [False, True], ids=["ptr", "tma"])
def test_gemm_int32_block_sums_exact(config, tma):
    for m, n, k in [(130, 200, 272), (33, 40, 128)] + ([] if tma else [(70, 130, 300)]):  # TMA: K % 16 == 0
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
        b = torch.randint(-128, 128, (n, k), dtype=torch.int8)
        a[0, :] = -128
        b[0, :] = -128  # the largest block sum, 128 * 128 * 128 = 2**21
        ones_a = torch.ones(math.ceil(m / 128), math.ceil(k / 128))
        ones_b = torch.ones(math.ceil(n / 128), math.ceil(k / 128))
        c = int8_triton.scaled_mm(a, ones_a, b, ones_b, out_dtype=torch.float32, config=config, use_tma=tma)
        assert torch.equal(c.double(), a.double() @ b.double().t())  # every sum < 2**24: fp32 holds it exactly


def _block_reference(a_q, a_s, b_q, b_s, rows_per_scale):
    """float64 sum over K blocks of (exact int block product) x act scale x weight scale."""
    m, k = a_q.shape
    out = torch.zeros(m, b_q.shape[0], dtype=torch.float64)
    for kb in range(math.ceil(k / 128)):
        blk = a_q[:, kb * 128:(kb + 1) * 128].double() @ b_q[:, kb * 128:(kb + 1) * 128].double().t()
        sa = a_s[:, kb].repeat_interleave(128)[:m] if rows_per_scale == 128 else a_s[kb]
        sb = b_s[:, kb].repeat_interleave(128)[: b_q.shape[0]]
        out += blk * sa.double()[:, None] * sb.double()[None, :]
    return out


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_gemm_scaled_within_float_rounding(fmt):
    m, n, k = 150, 260, 400
    x, w = activations(m, k, dtype=torch.float32), torch.randn(n, k)
    bias = torch.randn(n)
    if fmt == "int8":
        (aq, as_), (bq, bs) = quantize_blockwise(x), quantize_blockwise(w)
    else:
        (aq, as_), (bq, bs) = quantize_act_fp8(x), quantize_weight_fp8(w)
    want = _block_reference(aq, as_, bq, bs, 128 if fmt == "int8" else 1) + bias.double()
    for cfg in (GEMM_CONFIGS[1], GEMM_CONFIGS[3]):
        got = int8_triton.scaled_mm(aq, as_, bq, bs, bias, out_dtype=torch.float32, config=cfg)
        assert rel(got, want) < 1e-6
    got16 = int8_triton.scaled_mm(aq, as_, bq, bs, bias.half(), out_dtype=torch.float16, config=GEMM_CONFIGS[0],
                                  use_tma=False)
    assert (got16.double() - want).abs().max() <= want.abs().max() * 2**-10  # one fp16 rounding


def test_gluon_failure_falls_back_to_the_triton_kernel_once(monkeypatch, caplog):
    # where the Gluon kernel is picked but fails (a Triton without its API, a compile error), the
    # Triton kernel computes the product, the failure is logged once, and the device is not retried
    from turbovid.ops.quant import int8_gluon
    from turbovid.ops import gluon_switch

    m, n, k = 130, 140, 256
    x, w = activations(m, k, dtype=torch.float32), torch.randn(n, k)
    (aq, as_), (bq, bs) = quantize_blockwise(x), quantize_blockwise(w)
    want = _block_reference(aq, as_, bq, bs, 128)
    tries = []

    def broken(*args, **kwargs):
        tries.append(1)
        raise RuntimeError("no such Gluon op\nmore detail")

    monkeypatch.setattr(int8_gluon, "available", lambda *a: True)
    monkeypatch.setattr(int8_gluon, "scaled_mm", broken)
    monkeypatch.setattr(gluon_switch, "_broken", set())
    with caplog.at_level("WARNING"):
        for _ in range(2):
            got = int8_triton.scaled_mm(aq, as_, bq, bs, out_dtype=torch.float32)
            assert rel(got, want) < 1e-6
    assert len(tries) == 1
    assert [r.getMessage() for r in caplog.records if "Gluon" in r.getMessage()] == [
        "int8 GEMM: the Gluon kernel failed on cpu (RuntimeError: no such Gluon op); using the Triton kernel"]


def test_gluon_kernel_is_not_picked_off_hopper(monkeypatch):
    from turbovid.ops.quant import int8_gluon

    a, b = torch.zeros(256, 256, dtype=torch.int8), torch.zeros(128, 256, dtype=torch.int8)
    assert not int8_gluon.available(a, b, torch.bfloat16)  # CPU tensors (and the interpreter)
    monkeypatch.setenv("TURBOVID_GLUON", "0")
    assert not int8_gluon.available(a, b, torch.bfloat16)
    with pytest.raises(ValueError, match="must divide 128"):
        int8_gluon.scaled_mm(a, None, b, None, None, None, int8_gluon.Config(block_m=96))


def test_gluon_launch_per_weight_shape():
    # runs of 6 K blocks at every DiT shape (measured fastest at all of them, interleaved timing)
    from turbovid.ops.quant import int8_gluon

    shapes = [(4608, 1536), (1536, 8960), (5120, 5120), (5120, 13824)]  # (N, K) of qkv, ffn2, 14B o, 14B ffn2
    assert [int8_gluon.config_for(n, k).unroll for n, k in shapes] == [6, 6, 6, 6]


def test_bad_kernel_inputs_raise():
    a, b = torch.zeros(4, 256, dtype=torch.int8), torch.zeros(8, 256, dtype=torch.int8)
    with pytest.raises(ValueError, match="shape mismatch"):
        int8_triton.scaled_mm(a, torch.ones(1, 1), b, torch.ones(1, 2))
    with pytest.raises(ValueError, match="int8 or float8"):
        int8_triton.scaled_mm(a.float(), torch.ones(1, 2), b, torch.ones(1, 2))
    with pytest.raises(ValueError, match="unknown quant format"):
        int8_triton.quantize_act(torch.zeros(4, 4), "int4")


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize("cls", [Int8Linear, Fp8Linear])
def test_layer_kernel_matches_dequantized_reference(cls):
    lin = nn.Linear(384, 320).to(torch.bfloat16)
    layer = cls.from_linear(lin)
    x = activations(2 * 90, 384, outliers=6, gain=10.0).reshape(2, 90, 384)
    y = layer(x)  # Triton kernel (interpreter)
    ref = (int8_linear_reference if cls is Int8Linear else fp8_linear_reference)(
        x.float(), getattr(layer, layer.weight_name), layer.scale, layer.bias)
    assert y.shape == (2, 90, 320) and y.dtype == torch.bfloat16
    assert rel(y.float(), ref) <= 1e-2  # bf16 output rounding only (~2e-3)
    assert rel(y.float(), ref) < 4e-3


def test_fp8_layer_takes_an_already_quantized_activation():
    """Fp8Linear(Fp8Activation) == Fp8Linear(x): kernel (interpreter) and reference path alike;
    the wrong width is refused with the layer's one-line error."""
    from turbovid.ops.quant.fp8 import Fp8Activation, _fp8_linear_quantized_op

    layer = Fp8Linear.from_linear(nn.Linear(384, 256).to(torch.float16))
    x = activations(2 * 40, 384, outliers=4, gain=10.0, dtype=torch.float16).reshape(2, 40, 384)
    act = Fp8Activation.quantize(x)
    y = layer(act)
    assert y.shape == (2, 40, 256) and y.dtype == torch.float16
    assert torch.equal(y, layer(x))  # same quantized operand, same kernel
    int8.allow_interpreter(False)
    try:  # the PyTorch reference path
        assert torch.equal(layer(act), layer(x))
    finally:
        int8.allow_interpreter(True)
    with pytest.raises(ValueError, match="expects 384"):
        layer(Fp8Activation.quantize(x[..., :256]))
    # (opcheck's schema test multiplies the inputs, which torch does not implement for e4m3)
    torch.library.opcheck(_fp8_linear_quantized_op, (act.q.reshape(-1, 384), act.scale, layer.fp8_weight,
                                                     layer.scale, layer.bias, torch.float16),
                          test_utils=("test_faketensor",))


def test_int8_and_fp8_accuracy_side_by_side():
    """Quantization error against the unquantized layer: int8 (128x128 blocks) wins on Gaussian
    activations, fp8 (per-token groups) on strong outlier channels. Measured, docs/benchmarks.md."""
    torch.manual_seed(0)
    w = torch.randn(256, 512) / math.sqrt(512)
    lin = nn.Linear(512, 256, bias=False)
    lin.weight.data = w
    errs = {}
    for name, x in [("gauss", torch.randn(256, 512)), ("outliers", activations(256, 512, outliers=4, gain=32.0).float())]:
        exact = x @ w.t()
        errs[name] = {c.__name__: rel(c.from_linear(lin)(x), exact) for c in (Int8Linear, Fp8Linear)}
    assert errs["gauss"]["Int8Linear"] < 2e-2 and errs["gauss"]["Fp8Linear"] < 5e-2
    assert errs["gauss"]["Int8Linear"] < errs["gauss"]["Fp8Linear"]
    assert errs["outliers"]["Fp8Linear"] < errs["outliers"]["Int8Linear"]


class TinyMLPStack(nn.Module):
    """Pre-norm residual MLP blocks, like a DiT's FFN path; `proj_l` must stay float."""

    def __init__(self, dim=256, hidden=384, depth=3):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
            for _ in range(depth)
        )
        self.proj_l = nn.Linear(dim, dim)

    def forward(self, x):
        for blk in self.blocks:
            x = x + blk(x)
        return self.proj_l(x)


@pytest.mark.parametrize("swap", [swap_linears, swap_linears_fp8])
def test_swapped_mlp_stack_matches_float_twin(swap):
    torch.manual_seed(0)
    model = TinyMLPStack().eval()
    x = torch.randn(2, 64, 256)
    with torch.no_grad():
        want = model(x)
        qmodel = TinyMLPStack().eval()
        qmodel.load_state_dict(model.state_dict())
        swap(qmodel)
        got = qmodel(x)
    kinds = [type(m).__name__ for m in qmodel.modules() if isinstance(m, (nn.Linear, Int8Linear, Fp8Linear))]
    assert kinds.count("Linear") == 1 and isinstance(qmodel.proj_l, nn.Linear)  # skipped by name
    assert len(kinds) == 7
    assert rel(got, want) <= 3e-2


@pytest.mark.parametrize("swap", [swap_linears, swap_linears_fp8])
def test_swapped_tiny_dit_velocity_matches_float_twin(swap):
    from turbovid.loading.dit import build_dit

    cfg = DiTConfig(dim=256, ffn_dim=384, num_heads=2, num_layers=2, text_dim=64, freq_dim=64)
    model = build_dit(cfg, dtype=torch.float32, seed=0).eval()
    qmodel = build_dit(cfg, dtype=torch.float32, seed=0).eval()
    swap(qmodel.blocks)  # TurboDiffusion quantizes the blocks' linears only, not proj_l
    quantized = [m for m in qmodel.modules() if isinstance(m, (Int8Linear, Fp8Linear))]
    assert len(quantized) == 10 * cfg.num_layers
    assert all(isinstance(b.self_attn.proj_l, nn.Linear) for b in qmodel.blocks)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 16, 2, 8, 8, generator=g), torch.tensor([700.0])
    ctx = torch.randn(1, 12, cfg.text_dim, generator=g)
    with torch.no_grad():
        want, got = model(x, t, ctx), qmodel(x, t, ctx)
    assert rel(got, want) <= 3e-2


@pytest.mark.parametrize("swap", [swap_linears, functools.partial(swap_linears_fp8, per_tensor=False)],
                         ids=["int8", "fp8-block"])
def test_fused_qkv_quantizes_once_and_matches_separate_layers(swap):
    """turbovid.fast.fuse_qkv on int8 / fp8 layers (interpreter kernels): one quantization + GEMM at
    N = 3 * dim, the same per-column math as three separate layers; a whole tiny DiT agrees too."""
    from turbovid import fast
    from turbovid.loading.dit import build_dit

    cfg = DiTConfig(dim=256, ffn_dim=256, num_heads=2, num_layers=1, text_dim=64, freq_dim=64)
    model = build_dit(cfg, dtype=torch.float32, seed=0).eval()
    swap(model.blocks)
    attn = model.blocks[0].self_attn
    g = torch.Generator().manual_seed(1)
    x = activations(40, cfg.dim, dtype=torch.float32).reshape(2, 20, cfg.dim)
    lat, t, ctx = torch.randn(1, 16, 1, 4, 6, generator=g), torch.tensor([300.0]), torch.randn(1, 5, 64, generator=g)
    with torch.no_grad():
        want = attn.project_qkv(x)
        want_v = model(lat, t, ctx)
        assert fast.fuse_qkv(model) == 1
        layer = attn._qkv
        assert type(layer) is type(attn.q) and layer.scale.shape == (3 * cfg.dim // 128, cfg.dim // 128)
        calls = []
        real = int8_triton.quantize_act
        int8_triton.quantize_act = lambda *a, **k: calls.append(a[0].shape) or real(*a, **k)
        try:
            got = attn.project_qkv(x)
        finally:
            int8_triton.quantize_act = real
        got_v = model(lat, t, ctx)
    assert calls == [(40, cfg.dim)]  # the input was quantized once for q, k and v
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-5)
    fast.unfuse_qkv(model)


def test_fp8_cublas_arguments_reproduce_the_reference():
    """fp8_cublas prepares F.scaled_mm's blockwise arguments (transposed activation scales, padded and
    transposed weight scales, column-major weight); read back the way cuBLAS reads them, they give
    fp8_linear_reference's numbers. K = 640 (5 scale blocks) exercises the L4 padding."""
    from turbovid.ops.quant import fp8_cublas

    m, n, k = 50, 256, 640
    x = activations(m, k, dtype=torch.float32)
    lin = nn.Linear(k, n)
    w_q, w_s = quantize_weight_fp8(lin.weight.detach())
    a_q, a_s = quantize_act_fp8(x)  # scales [K/128, M], as the Triton kernel writes them
    sa, sb = a_s.t(), fp8_cublas.weight_scales(w_s)
    assert sa.shape == (m, 5) and sa.stride() == (1, m)
    assert sb.shape == (8, 2) and sb.stride() == (1, 8) and torch.equal(sb[5:], torch.zeros(3, 2))
    b_mat = w_q.t()
    assert b_mat.stride() == (1, k)  # column-major [K, N]
    got = fp8_cublas.scaled_mm_emulated(a_q, sa, b_mat, sb, lin.bias.detach(), out_dtype=torch.float32)
    want = fp8_linear_reference(x, w_q, w_s, lin.bias.detach())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not fp8_cublas.available(torch.device("cpu")) and not fp8_cublas.serves(x, w_q)


def test_fp8_cublas_probe_key_names_one_device_one_way(monkeypatch):
    # "cuda" and "cuda:0" must share the probe entry (a bench probing "cuda" then calling on "cuda:0")
    from turbovid.ops.quant import fp8_cublas

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert fp8_cublas._key(torch.device("cuda")) == fp8_cublas._key(torch.device("cuda:0")) == "cuda:0"
    assert fp8_cublas._key(torch.device("cuda:1")) == "cuda:1"


def test_to_dtype_keeps_quantized_buffers():
    q8 = Int8Linear.from_linear(nn.Linear(256, 128))
    f8 = Fp8Linear.from_linear(nn.Linear(256, 128))
    scale = q8.scale.clone()
    for layer in (q8, f8):
        layer.to(torch.bfloat16)
    assert q8.int8_weight.dtype == torch.int8 and torch.equal(q8.scale, scale)  # float32 scales, not rounded
    assert f8.fp8_weight.dtype == torch.float8_e4m3fn and f8.scale.dtype == torch.float32
    assert q8.bias.dtype == torch.bfloat16 and list(q8.state_dict()) == ["int8_weight", "scale", "bias"]
    with torch.device("meta"):
        m = Int8Linear(256, 128)
    m.to_empty(device="cpu")
    assert m.scale.device.type == "cpu" and m.scale.dtype == torch.float32


def test_layer_rejects_wrong_width():
    with pytest.raises(ValueError, match="expects 256"):
        Int8Linear.from_linear(nn.Linear(256, 128))(torch.randn(3, 255))


def test_custom_op_traces_under_compile():
    layer = Int8Linear.from_linear(nn.Linear(256, 192))
    x = torch.randn(40, 256)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)  # fake impl gives the shapes
    assert torch.equal(compiled(x), layer(x))


# ----------------------------------------------------------------------------- converter


CFG = DiTConfig(dim=192, ffn_dim=320, num_heads=2, num_layers=2, text_dim=64, freq_dim=32)


def fake_dit_state_dict(cfg: DiTConfig, prefix: str = "") -> dict[str, torch.Tensor]:
    """Keys and shapes of a Wan2.1 DiT checkpoint (TurboDiffusion naming), random bf16 values."""
    d, f, hd = cfg.dim, cfg.ffn_dim, cfg.dim // cfg.num_heads
    r = lambda *s: torch.randn(*s).to(torch.bfloat16)  # noqa: E731
    sd = {"patch_embedding.weight": r(d, cfg.in_dim, 1, 2, 2), "patch_embedding.bias": r(d),
          "text_embedding.0.weight": r(d, cfg.text_dim), "text_embedding.0.bias": r(d),
          "time_embedding.0.weight": r(d, cfg.freq_dim), "time_projection.1.weight": r(6 * d, d),
          "head.head.weight": r(64, d), "head.modulation": torch.randn(1, 2, d)}
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        for att in ("self_attn", "cross_attn"):
            for p in "qkvo":
                sd[f"{b}{att}.{p}.weight"], sd[f"{b}{att}.{p}.bias"] = r(d, d), r(d)
            sd[f"{b}{att}.norm_q.weight"], sd[f"{b}{att}.norm_k.weight"] = r(d), r(d)
        sd[b + "self_attn.proj_l.weight"], sd[b + "self_attn.proj_l.bias"] = torch.randn(hd, hd), torch.randn(hd)
        sd[b + "ffn.0.weight"], sd[b + "ffn.0.bias"] = r(f, d), r(f)
        sd[b + "ffn.2.weight"], sd[b + "ffn.2.bias"] = r(d, f), r(d)
        sd[b + "norm3.weight"], sd[b + "modulation"] = r(d), torch.randn(1, 6, d)
    return {prefix + k: v for k, v in sd.items()}


def test_convert_int8_bytes_match_rule(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    sd = fake_dit_state_dict(CFG)
    save_file(sd, tmp_path / "dit.safetensors")
    out = convert_checkpoint(tmp_path / "dit.safetensors", tmp_path / "dit-int8.safetensors", "int8", model=CFG)
    with safe_open(str(out), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
        got = {k: f.get_tensor(k) for k in keys}
    assert meta["quant"] == "int8" and meta["quant_block"] == "128" and detect_quant(keys, meta) == "int8"
    linears = [k for k in sd if k.startswith("blocks.") and k.endswith(".weight") and sd[k].ndim == 2 and "proj_l" not in k]
    assert len(linears) == 20 and meta["quantized_layers"] == "20"
    for k in linears:
        base = k[: -len("weight")]
        q, s = quantize_blockwise(sd[k])
        assert got[base + "int8_weight"].dtype == torch.int8 and torch.equal(got[base + "int8_weight"], q)
        assert torch.equal(got[base + "scale"], s) and got[base + "scale"].dtype == torch.float32
        assert base + "weight" not in keys
    for k, v in sd.items():  # everything else byte-identical, proj_l stays float
        if k not in linears:
            assert got[k].dtype == v.dtype and torch.equal(got[k].view(torch.uint8), v.view(torch.uint8)), k
    assert "blocks.0.self_attn.proj_l.weight" in keys


def test_converted_checkpoint_loads_into_layers_and_matches_reference(tmp_path):
    from safetensors.torch import load_file

    sd = fake_dit_state_dict(CFG, prefix="net.")  # a prefix is kept as is; the loader strips it
    torch.save(sd, tmp_path / "dit.pth")  # torch zip source
    for fmt, cls, ref_fn in [("int8", Int8Linear, int8_linear_reference), ("fp8", Fp8Linear, fp8_linear_reference)]:
        out = convert_checkpoint(tmp_path / "dit.pth", tmp_path / f"dit-{fmt}.safetensors", fmt)
        q = load_file(str(out))
        with torch.device("meta"):
            layer = cls(CFG.dim, CFG.ffn_dim)  # blocks.1.ffn.0: in 192, out 320
        base = "net.blocks.1.ffn.0."
        layer.load_state_dict({k[len(base):]: v for k, v in q.items() if k.startswith(base)}, assign=True)
        x = activations(100, CFG.dim)
        y = layer(x)
        wq = getattr(layer, layer.weight_name)
        assert rel(y.float(), ref_fn(x.float(), wq, layer.scale, layer.bias)) < 4e-3
        twin = nn.Linear(CFG.dim, CFG.ffn_dim).to(torch.bfloat16)
        twin.weight.data, twin.bias.data = sd[base + "weight"], sd[base + "bias"]
        assert torch.equal(cls.from_linear(twin)(x), y)  # converter == on-the-fly swap


def test_convert_rejects_bad_inputs(tmp_path):
    from safetensors.torch import save_file

    sd = fake_dit_state_dict(CFG)
    save_file(sd, tmp_path / "dit.safetensors")
    with pytest.raises(CheckpointError, match="expected 30 blocks"):
        convert_checkpoint(tmp_path / "dit.safetensors", tmp_path / "a.safetensors", model="Wan2.1-1.3B")
    with pytest.raises(CheckpointError, match="not a linear of"):
        convert_checkpoint(tmp_path / "dit.safetensors", tmp_path / "a.safetensors", model=CFG.with_(ffn_dim=256))
    with pytest.raises(ValueError, match="unknown quant format"):
        convert_checkpoint(tmp_path / "dit.safetensors", tmp_path / "a.safetensors", fmt="int4")
    out = convert_checkpoint(tmp_path / "dit.safetensors", tmp_path / "q.safetensors")
    with pytest.raises(CheckpointError, match="already quantized"):
        convert_checkpoint(out, tmp_path / "qq.safetensors")
    save_file({"encoder.weight": torch.randn(4, 4)}, tmp_path / "t5.safetensors")
    with pytest.raises(CheckpointError, match="no linear weights"):
        convert_checkpoint(tmp_path / "t5.safetensors", tmp_path / "b.safetensors")
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()
