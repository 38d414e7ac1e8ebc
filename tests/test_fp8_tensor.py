"""Per-tensor fp8 (quant.fp8_tensor): the rule, its Triton kernels in the CPU interpreter (fp16 / fp32
inputs: the interpreter's bf16 is not trustworthy), the LayerNorm bound, the norm kernel's per-tensor
output, Fp8TensorLinear and the fused q/k/v on one weight scale."""
from __future__ import annotations

import importlib
import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn as nn  # noqa: E402

import turbovid.ops.fused as fused  # noqa: E402
from turbovid.ops import block_reference as ref  # noqa: E402
from turbovid.ops.quant import fp8_tensor  # noqa: E402
from turbovid.ops.quant import int8 as q8  # noqa: E402
from turbovid.ops.quant.fp8 import (  # noqa: E402
    Fp8Activation, Fp8Linear, Fp8TensorLinear, per_tensor_default, share_weight_scale, swap_linears_fp8,
)


@pytest.fixture
def interp(monkeypatch):
    """The kernels in Triton's interpreter, serving CPU tensors."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from turbovid.ops.quant import fp8_tensor_triton

    if type(fp8_tensor_triton._quant_kernel).__name__ != "InterpretedFunction":
        importlib.reload(fp8_tensor_triton)
    if not fused._ln.INTERPRETED:
        importlib.reload(fused._ln)
    monkeypatch.setattr(q8, "_allow_interpreter", True)
    fused.allow_interpreter(True)
    yield fp8_tensor_triton
    fused.allow_interpreter(False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def bytes_of(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)


# ---- the rule ---------------------------------------------------------------------------------------

def test_rule_on_hand_values():
    x = torch.tensor([[0.0, 1.0, -2.0, 4.0]])
    q, s = fp8_tensor.quantize_reference(x)
    assert s.shape == (1,) and torch.equal(s, torch.tensor([4.0]) / 448.0)
    assert q.float().tolist() == [[0.0, 112.0, -224.0, 448.0]]
    # a looser bound: same values, scaled down, still exact here (e4m3 is a float format)
    q2, s2 = fp8_tensor.quantize_with_bound(x, torch.tensor([8.0]))
    assert torch.equal(s2, torch.tensor([8.0]) / 448.0) and q2.float().tolist() == [[0.0, 56.0, -112.0, 224.0]]
    # values above a (violated) bound saturate instead of overflowing to NaN
    q3, _ = fp8_tensor.quantize_with_bound(x, torch.tensor([1.0]))
    assert q3.float().tolist() == [[0.0, 448.0, -448.0, 448.0]]
    zero_q, zero_s = fp8_tensor.quantize_reference(torch.zeros(2, 3))
    assert torch.isfinite(zero_s).all() and (zero_q.float() == 0).all()


def test_weight_scale_is_a_power_of_two_above_amax_over_448():
    for amax in (0.3, 1.0, 448.0, 1000.0, 1e-3):
        w = torch.randn(64, 96)
        w = w / w.abs().max() * amax
        q, s = fp8_tensor.quantize_weight(w)
        e = math.log2(s.item())
        assert e == round(e)
        assert amax / 448.0 <= s.item() * (1 + 1e-6) and s.item() < 2 * amax / 448.0 * (1 + 1e-6)
        assert rel(q.float() * s, w) < 4e-2


def test_ln_bound_holds_for_the_worst_row_and_is_tight_there():
    """|n| reaches sqrt(C - 1) on a row with one outlier: with the outlier on the channel (and sign) the
    bound is set by, h meets the bound up to its margin; random rows stay below it."""
    c, b = 256, 2
    w, bias = torch.randn(c), torch.randn(c)
    shift, scale = torch.randn(b, c), torch.randn(b, c)
    for args in [(None, None, None, None), (w, bias, None, None), (None, None, shift, scale), (w, bias, shift, scale)]:
        aw, ab, sh, sc = args
        w1 = (aw if aw is not None else torch.ones(c)).expand(b, c)
        b1 = (ab if ab is not None else torch.zeros(c)).expand(b, c)
        if sc is not None:
            w1, b1 = w1 * (1 + sc), b1 * (1 + sc)
        if sh is not None:
            b1 = b1 + sh
        per_channel = math.sqrt(c - 1) * w1.abs() + b1.abs()
        i = int(per_channel.flatten().argmax())
        row, col = divmod(i, c)
        x = torch.randn(b, 3, c) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1)
        x[row, 0] = 0.0
        x[row, 0, col] = 1000.0 * (1.0 if float(w1[row, col] * b1[row, col]) >= 0 else -1.0)
        h = ref.norm_modulate_ref(x, sh, sc, aw, ab, out_dtype=torch.float32)
        bound, s = fp8_tensor.ln_bound_reference(c, *args)
        assert h.abs().max() <= bound.item()
        assert bound.item() <= fp8_tensor.LN_BOUND_MARGIN * 1.001 * h.abs().max()
        assert torch.equal(s, bound / 448.0)


# ---- Triton kernels (interpreter) against the rule ---------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(200, 256), (77, 130), (1, 300)])
def test_quantize_kernel_writes_the_rule_bytes(interp, dtype, shape):
    x = (torch.randn(*shape) * 3).to(dtype)
    x[0, 0] = -50.0
    q, s = interp.quantize(x)
    q0, s0 = fp8_tensor.quantize_reference(x)
    assert torch.equal(s, s0) and torch.equal(bytes_of(q), bytes_of(q0))
    bound = torch.tensor([123.0])
    q, s = interp.quantize(x, bound=bound)
    q0, s0 = fp8_tensor.quantize_with_bound(x, bound)
    assert torch.equal(s, s0) and torch.equal(bytes_of(q), bytes_of(q0))


def test_quantize_kernel_with_the_gelu_fused_in(interp):
    h = (torch.randn(200, 256) * 2).to(torch.float16)
    q1, s1 = interp.quantize(h, gelu=True)
    q0, s0 = fp8_tensor.quantize_reference(h, gelu=True)
    torch.testing.assert_close(s1, s0, rtol=1e-3, atol=0)
    differ = (bytes_of(q1) != bytes_of(q0)).float().mean().item()
    assert differ < 0.01  # only where the GELU's rounding to fp16 lands one ulp apart
    assert rel(q1.float() * s1, q0.float() * s0) < 1e-2


def test_ln_bound_kernel_equals_the_reference(interp):
    c, b = 1536, 2
    w, bias = torch.randn(c), torch.randn(c)
    shift, scale = torch.randn(b, c), torch.randn(b, c) * 3
    for args in [(None, None, shift, scale), (w, bias, None, None), (w, bias, shift[:1], None)]:
        got = interp.ln_bound(c, *args)
        want = fp8_tensor.ln_bound_reference(c, *args)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("c", [256, 384, 192])
def test_norm_kernel_per_tensor_output_is_the_rule_on_its_own_h(interp, with_residual, c):
    b, l = 2, 9
    x, y = torch.randn(b, l, c) * 3, torch.randn(b, l, c)
    x[0, 3, :5] = 40.0
    shift, scale, gate = torch.randn(b, c), torch.randn(b, c), torch.randn(b, c)
    w, bias = torch.randn(c), torch.randn(c)
    if with_residual:
        new_x, act = fused.add_norm_modulate(x, y, gate, shift, scale, weight=w, bias=bias, quant="fp8-tensor")
        ref_x, h = fused.add_norm_modulate(x, y, gate, shift, scale, weight=w, bias=bias)
        assert torch.equal(new_x, ref_x)
    else:
        act = fused.norm_modulate(x, shift, scale, weight=w, bias=bias, quant="fp8-tensor")
        h = fused.norm_modulate(x, shift, scale, weight=w, bias=bias)
    assert isinstance(act, Fp8Activation) and act.per_tensor and act.scale.shape == (1,)
    bound, s = fp8_tensor.ln_bound_reference(c, w, bias, shift, scale)
    assert torch.equal(act.scale, s)
    q0, _ = fp8_tensor.quantize_with_bound(h, bound)
    assert torch.equal(bytes_of(act.q), bytes_of(q0))


def test_reference_norm_per_tensor_matches_the_kernel_path(interp):
    b, l, c = 1, 5, 256
    x = torch.randn(b, l, c)
    shift, scale = torch.randn(b, c), torch.randn(b, c)
    got = fused.norm_modulate(x, shift, scale, quant="fp8-tensor")
    want = ref.norm_modulate_ref(x, shift, scale, quant="fp8-tensor")
    assert want.per_tensor and torch.equal(got.scale, want.scale)
    # the kernel and F.layer_norm may round h one ulp apart in places: compare the dequantized values
    assert rel(got.q.float() * got.scale, want.q.float() * want.scale) < 1e-2


# ---- the layer --------------------------------------------------------------------------------------

def test_tensor_layer_matches_the_float_linear_and_takes_per_tensor_activations_only():
    torch.manual_seed(0)
    lin = nn.Linear(256, 128)
    layer = Fp8TensorLinear.from_linear(lin)
    assert layer.scale.shape == (1,) and layer.fp8_weight.dtype == torch.float8_e4m3fn
    x = torch.randn(3, 10, 256)
    x[..., :4] *= 10
    with torch.no_grad():
        y = layer(x)
        exact = lin(x)
        assert y.shape == (3, 10, 128) and rel(y, exact) < 5e-2
        act = Fp8Activation.quantize_per_tensor(x)
        assert torch.equal(layer(act), y)  # the same rule, quantized outside or inside
        with pytest.raises(ValueError, match="block-scaled"):
            layer(Fp8Activation.quantize(x))
        with pytest.raises(ValueError, match="per-tensor"):
            Fp8Linear.from_linear(lin)(act)
        with pytest.raises(ValueError, match="features"):
            layer(torch.randn(2, 100))


def test_tensor_layer_kernel_path_equals_the_reference_path(interp):
    torch.manual_seed(1)
    lin = nn.Linear(256, 128)
    layer = Fp8TensorLinear.from_linear(lin)
    x = torch.randn(20, 256).half()
    with torch.no_grad():
        got = layer(x)  # Triton quantization (interpreter), reference GEMM (no CUDA)
        q, s = fp8_tensor.quantize_reference(x)
        want = fp8_tensor.linear_reference(q, s, layer.fp8_weight, layer.scale, layer.bias, x.dtype)
    assert torch.equal(got, want)


def test_tensor_ops_pass_opcheck():
    from turbovid.ops.quant import fp8 as fp8_module

    w_q, w_s = fp8_tensor.quantize_weight(torch.randn(32, 64))
    x = torch.randn(4, 64)
    a_q, a_s = fp8_tensor.quantize_reference(x)
    b = torch.randn(32)
    # (opcheck's schema test multiplies the inputs, which torch does not implement for e4m3)
    torch.library.opcheck(fp8_module._fp8_tensor_linear_op, (x, w_q, w_s, b, False, None, None, None, []),
                          test_utils="test_faketensor")
    torch.library.opcheck(fp8_module._fp8_tensor_linear_quantized_op, (a_q, a_s, w_q, w_s, None, torch.float32),
                          test_utils="test_faketensor")


def test_share_weight_scale_rescales_exactly():
    layers = [Fp8TensorLinear.from_linear(nn.Linear(64, 32)) for _ in range(3)]
    with torch.no_grad():
        layers[1].scale.div_(4)  # a smaller scale than the others
        layers[2].scale.mul_(2)  # the largest: the common one
    before = [m.fp8_weight.float() * m.scale for m in layers]
    scales = {m.scale.item() for m in layers}
    share_weight_scale(layers)
    assert len({m.scale.item() for m in layers}) == 1 and layers[0].scale is layers[2].scale
    assert layers[0].scale.item() == max(scales)
    for m, b in zip(layers, before):
        tiny = b.abs() < 2.0**-6 * m.scale.item()  # below e4m3's normal range after the shift
        assert torch.equal((m.fp8_weight.float() * m.scale)[~tiny], b[~tiny])


def test_fused_qkv_on_per_tensor_layers_matches_separate_layers():
    from turbovid import fast
    from turbovid.configs import DiTConfig
    from turbovid.loading.dit import build_dit

    cfg = DiTConfig(dim=256, ffn_dim=256, num_heads=2, num_layers=1, text_dim=64, freq_dim=64)
    model = build_dit(cfg, dtype=torch.float32, seed=0).eval()
    swap_linears_fp8(model.blocks, per_tensor=True)
    attn = model.blocks[0].self_attn
    with torch.no_grad():  # different q / k / v scales before fusing
        attn.k.fp8_weight.copy_((attn.k.fp8_weight.float() / 2).to(torch.float8_e4m3fn))
        attn.k.scale.mul_(2)
    x = torch.randn(2, 20, cfg.dim)
    with torch.no_grad():
        assert fast.fuse_qkv(model) == 1
        layer = attn._qkv
        assert type(layer) is Fp8TensorLinear and layer.scale.shape == (1,)
        assert attn.q.scale is attn.k.scale is attn.v.scale is layer.scale
        separate = [m(x) for m in (attn.q, attn.k, attn.v)]
        got = attn.project_qkv(x)
    for a, b in zip(got, separate):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    fast.unfuse_qkv(model)


def test_per_tensor_default_reads_the_environment(monkeypatch):
    monkeypatch.delenv("TURBOVID_FP8_SCALES", raising=False)
    assert per_tensor_default() is True
    monkeypatch.setenv("TURBOVID_FP8_SCALES", "block")
    assert per_tensor_default() is False
    seq = swap_linears_fp8(nn.Sequential(nn.Linear(128, 128)))
    assert type(seq[0]) is Fp8Linear
    monkeypatch.setenv("TURBOVID_FP8_SCALES", "row")
    with pytest.raises(ValueError, match="TURBOVID_FP8_SCALES"):
        per_tensor_default()


def test_cublas_path_is_off_the_cpu():
    assert not fp8_tensor.cublas_available(torch.device("cpu"))
    w_q, w_s = fp8_tensor.quantize_weight(torch.randn(32, 64))
    a_q, a_s = fp8_tensor.quantize_reference(torch.randn(4, 64))
    y = fp8_tensor.linear_quantized(a_q, a_s, w_q, w_s, None, torch.float32)
    torch.testing.assert_close(y, fp8_tensor.linear_reference(a_q, a_s, w_q, w_s, None, torch.float32))


# ---- bounds that spare the amax pass: the FFN's hidden layer, the cross-attention output ----------

@pytest.mark.parametrize("with_residual", [False, True])
def test_norm_kernel_keeps_the_largest_row_norm(interp, with_residual):
    b, l, c = 2, 9, 384
    x, y = torch.randn(b, l, c), torch.randn(b, l, c)
    shift, scale, gate = torch.randn(b, c), torch.randn(b, c), torch.randn(b, c)
    if with_residual:
        _, act = fused.add_norm_modulate(x, y, gate, shift, scale, quant="fp8-tensor")
        _, h = fused.add_norm_modulate(x, y, gate, shift, scale)
    else:
        act = fused.norm_modulate(x, shift, scale, quant="fp8-tensor")
        h = fused.norm_modulate(x, shift, scale)
    want = h.reshape(-1, c).norm(dim=1).amax()
    assert act.row_norm.shape == (1,)
    torch.testing.assert_close(act.row_norm[0], want, rtol=1e-5, atol=0)
    ref_act = ref.norm_modulate_ref(x, shift, scale, quant="fp8-tensor")
    assert ref_act.row_norm is not None and ref_act.row_norm.shape == (1,)


def _ffn(k=256, n=512, seed=0):
    torch.manual_seed(seed)
    fc1, fc2 = nn.Linear(k, n), nn.Linear(n, k)
    with torch.no_grad():
        fc1.weight[:, :3] *= 20  # outlier input channels
    return Fp8TensorLinear.from_linear(fc1), Fp8TensorLinear.from_linear(fc2), fc1, fc2


def test_hidden_layer_bound_from_the_row_norm_holds_and_is_not_loose():
    """Cauchy-Schwarz: |fc1(x)_j| <= ||W_j|| ||x_row|| (+ quantization, bias): the GELU's input bound
    holds for every token, and is within sqrt(K) of the real amax on random tokens."""
    q1, q2, fc1, _ = _ffn()
    x = torch.randn(1, 300, 256)
    x[0, 7] *= 30  # one loud token
    act = Fp8Activation.quantize_per_tensor(x, row_norm=True)
    with torch.no_grad():
        h = q1(act)
        coefs = q1.output_bound_coefs()
        bound = fp8_tensor.from_norm_bound(act.row_norm, act.scale, *coefs, gelu=True)
        g = fp8_tensor.gelu_tanh(h)
    assert g.abs().max() <= bound
    assert bound < math.sqrt(256) * g.abs().max()
    # the layer on GELU(h): same bytes as quantizing at that bound
    with torch.no_grad():
        y = q2.forward_after(h, q1, act, gelu_input=True)
        a_q, a_s = fp8_tensor.quantize_with_bound(g.reshape(-1, 512), bound)
        want = fp8_tensor.linear_reference(a_q, a_s, q2.fp8_weight, q2.scale, q2.bias, h.dtype)
    assert torch.equal(y.reshape(-1, 256), want)


def test_hidden_layer_bound_kernel_path_matches_the_reference(interp):
    q1, q2, _, _ = _ffn(seed=1)
    x = torch.randn(1, 200, 256).half()
    act = Fp8Activation.quantize_per_tensor(x, row_norm=True)
    with torch.no_grad():
        h = q1(act)
        got = q2.forward_after(h, q1, act, gelu_input=True)  # Triton quantization (interpreter)
        coefs = q1.output_bound_coefs()
        bound = fp8_tensor.from_norm_bound(act.row_norm, act.scale, *coefs, gelu=True)
        a_q, a_s = fp8_tensor.quantize_with_bound(fp8_tensor.gelu_tanh(h).reshape(-1, 512), bound)
        want = fp8_tensor.linear_reference(a_q, a_s, q2.fp8_weight, q2.scale, q2.bias, h.dtype)
    # the kernel's GELU and bound arithmetic may round one ulp apart from PyTorch's
    assert rel(got.reshape(-1, 256), want) < 1e-2


def test_output_bound_coefs_follow_the_weight():
    q1, _, _, _ = _ffn()
    first = q1.output_bound_coefs()
    assert q1.output_bound_coefs() is first  # cached
    with torch.no_grad():
        q1.bias.mul_(3)  # an in-place change: a new version
    second = q1.output_bound_coefs()
    assert second is not first and second[2] == pytest.approx(3 * first[2], rel=1e-2)
    with torch.inference_mode():  # inference tensors keep no version counter: keyed by storage
        q3, _, _, _ = _ffn(seed=2)
        assert q3.output_bound_coefs() is q3.output_bound_coefs()


def test_per_tensor_dit_fast_path_bounds_the_cross_attention_output(monkeypatch):
    """make_fast sets cross-attention's o_takes_bound for per-tensor o layers; the bound max|v| holds."""
    from turbovid import fast
    from turbovid.loading.dit import build_dit
    from turbovid.ops.quant import fp8 as fp8_module

    dit = build_dit("tiny-random", device="cpu", dtype=torch.float32, seed=0)
    for blk in dit.blocks:
        swap_linears_fp8(blk, per_tensor=True)
    bounds = []
    real = fp8_module.fp8_tensor_linear

    def spy(x, *a, bound=None, **k):
        if bound is not None:
            bounds.append((x.abs().max().item(), bound.item()))
        return real(x, *a, bound=bound, **k)

    monkeypatch.setattr(fp8_module, "fp8_tensor_linear", spy)
    lat, t, ctx = torch.randn(1, 16, 2, 4, 6), torch.tensor([400.0]), torch.randn(1, 7, dit.cfg.text_dim)
    with torch.no_grad():
        runner = fast.make_fast(dit)
        assert all(blk.cross_attn.o_takes_bound for blk in dit.blocks)
        out = runner(lat, t, ctx)
        fast.make_plain(runner)
        assert not any(blk.cross_attn.o_takes_bound for blk in dit.blocks)
    assert torch.isfinite(out).all()
    assert len(bounds) == len(dit.blocks) and all(m <= b for m, b in bounds)


def test_per_tensor_swap_keeps_block_scales_for_the_context_projections():
    """cross-attention's k / v (the 512 text tokens every query reads) stay block-scaled."""
    from turbovid.loading.dit import build_dit

    dit = build_dit("tiny-random", device="cpu", dtype=torch.float32, seed=0)
    swap_linears_fp8(dit.blocks, per_tensor=True)  # names under the list: "0.cross_attn.k", ...
    for blk in dit.blocks:
        assert type(blk.cross_attn.k) is Fp8Linear and type(blk.cross_attn.v) is Fp8Linear
        others = (blk.cross_attn.q, blk.cross_attn.o, blk.self_attn.k, blk.self_attn.v, blk.ffn[0], blk.ffn[2])
        assert all(type(m) is Fp8TensorLinear for m in others)
        assert type(blk.self_attn.proj_l) is nn.Linear
    single = build_dit("tiny-random", device="cpu", dtype=torch.float32, seed=0).blocks[0]
    swap_linears_fp8(single, per_tensor=True)  # on one block: "cross_attn.k"
    assert type(single.cross_attn.k) is Fp8Linear and type(single.self_attn.q) is Fp8TensorLinear


# ---- the FFN's first GEMM with GELU + quantization in its epilogue (quant.cublaslt) ---------------

def test_gelu_gemm_reference_is_the_unfused_path_on_the_same_bound():
    """The fused op's reference (dequantize, matmul, bias, tanh-GELU, quantize at the row-norm bound)
    gives the bytes of the unfused path (fc1 in bf16-like rounding, GELU, quantization) except where
    that path's intermediate rounding moves a value across an e4m3 rounding boundary."""
    from turbovid.ops.quant import fp8 as fp8_module

    q1, q2, _, _ = _ffn(seed=3)
    x = torch.randn(1, 200, 256)
    act = Fp8Activation.quantize_per_tensor(x, row_norm=True)
    with torch.no_grad():
        coefs = q1.output_bound_coefs()
        a_q = act.q.reshape(-1, 256)
        h_q, h_s = fp8_module._fp8_tensor_linear_gelu(a_q, act.scale, q1.fp8_weight, q1.scale, q1.bias,
                                                       act.row_norm, list(coefs))
        h = q1(act)
        bound = fp8_tensor.from_norm_bound(act.row_norm, act.scale, *coefs, gelu=True)
        want_q, want_s = fp8_tensor.quantize_with_bound(fp8_tensor.gelu_tanh(h).reshape(-1, 512), bound)
    assert torch.equal(h_s, want_s)
    same = (bytes_of(h_q) == bytes_of(want_q)).float().mean().item()
    assert same > 0.999, same
    assert rel(h_q.float(), want_q.float()) < 1e-3


def test_forward_gelu_needs_a_per_tensor_activation_with_a_row_norm_and_stays_off_the_cpu():
    q1, _, _, _ = _ffn(seed=4)
    x = torch.randn(1, 10, 256)
    with torch.no_grad():
        assert q1.forward_gelu(Fp8Activation.quantize_per_tensor(x)) is None  # no row norm: no bound
        # CPU: cuBLASLt does not serve, the caller runs the unfused layers
        assert q1.forward_gelu(Fp8Activation.quantize_per_tensor(x, row_norm=True)) is None
    assert not fp8_tensor.gelu_gemm_serves(torch.zeros(4, 256, dtype=torch.float8_e4m3fn), q1.fp8_weight, q1.bias)


def test_cublaslt_reports_why_it_cannot_run(monkeypatch):
    from turbovid.ops.quant import cublaslt

    assert "CUDA" in cublaslt.unavailable(torch.device("cpu"))
    with pytest.raises(ValueError, match="bf16 bias"):
        cublaslt.fp8_gemm_gelu_fp8(torch.zeros(4, 32, dtype=torch.float8_e4m3fn), torch.ones(1),
                                   torch.zeros(16, 32, dtype=torch.float8_e4m3fn), torch.ones(1),
                                   torch.zeros(16), torch.ones(1))
    with pytest.raises(ValueError, match="multiples of 16"):
        cublaslt.fp8_gemm_gelu_fp8(torch.zeros(4, 24, dtype=torch.float8_e4m3fn), torch.ones(1),
                                   torch.zeros(16, 24, dtype=torch.float8_e4m3fn), torch.ones(1),
                                   torch.zeros(16, dtype=torch.bfloat16), torch.ones(1))


def test_norm_bound_scales_kernel_is_the_reference_bound(interp):
    rn, sa = torch.tensor([37.5]), torch.tensor([0.0123])
    for gelu, coefs in ((True, (0.8, 3.0, 0.25)), (True, (1e-4, 0.0, 0.0)), (False, (2.0, 1.0, 0.5))):
        s, mult = interp.norm_bound_scales(rn, sa, *coefs, gelu=gelu)
        bound = fp8_tensor.from_norm_bound(rn, sa, *coefs, gelu=gelu)
        assert torch.equal(s, fp8_tensor.scale_of(bound))
        assert torch.equal(mult, torch.full_like(bound, 448.0) / bound.clamp_min(fp8_tensor.MIN_BOUND))


def test_gelu_op_passes_opcheck():
    from turbovid.ops.quant import fp8 as fp8_module

    q1, _, _, _ = _ffn(seed=5)
    act = Fp8Activation.quantize_per_tensor(torch.randn(6, 256), row_norm=True)
    torch.library.opcheck(fp8_module._fp8_tensor_linear_gelu_op,
                          (act.q, act.scale, q1.fp8_weight, q1.scale, q1.bias, act.row_norm,
                           list(q1.output_bound_coefs())), test_utils="test_faketensor")
