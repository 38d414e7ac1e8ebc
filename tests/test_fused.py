"""Fused DiT-block kernels (Triton, run in the CPU interpreter) against their PyTorch references.

Error bound (as flash-attention's tests do): the kernel's error against a float64 reference may be
at most twice the same-dtype PyTorch reference's error, plus one unit of the dtype's epsilon.
Inputs are float32 / float16 only: the interpreter's bf16 is not trustworthy.
"""
from __future__ import annotations

import importlib
import logging
import os

import torch

if not torch.cuda.is_available():
    # Triton reads this when it is first imported (its own helpers like tl.sum are decorated then).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import turbovid.ops.fused as fused  # noqa: E402
from turbovid.ops import block_reference as ref


@pytest.fixture(scope="module")
def interp():
    """Reload the kernel modules under TRITON_INTERPRET=1 (Triton decides at decoration time)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    importlib.reload(fused._ln)
    importlib.reload(fused._rope)
    import triton.language.standard as tls

    assert type(tls.sum).__name__ == "InterpretedFunction", "triton was imported before TRITON_INTERPRET=1 was set"
    assert fused._ln.INTERPRETED and fused._rope.INTERPRETED
    fused.allow_interpreter(True)
    yield
    fused.allow_interpreter(False)
    if old is None:
        os.environ.pop("TRITON_INTERPRET")
    else:
        os.environ["TRITON_INTERPRET"] = old
    importlib.reload(fused._ln)
    importlib.reload(fused._rope)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_within_bound(out, same_dtype_ref, exact):
    err, ref_err = rel(out, exact), rel(same_dtype_ref, exact)
    bound = 2 * ref_err + torch.finfo(out.dtype).eps
    assert torch.isfinite(out).all()
    assert err <= bound, f"kernel error {err:.3g} > bound {bound:.3g} (PyTorch same-dtype error {ref_err:.3g})"


def adaln(b, c, dtype=torch.float32):
    return [torch.randn(b, c, dtype=dtype) * 0.5 for _ in range(3)]


DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("modulate", [False, True])
def test_norm_modulate(interp, dtype, affine, modulate):
    b, l, c = 2, 37, 96  # L not a multiple of the row block, C not a power of two
    x = (torch.randn(b, l, c) * 3 + 1).to(dtype)
    shift, scale, _ = adaln(b, c) if modulate else (None, None, None)
    w, bias = (torch.randn(c), torch.randn(c)) if affine else (None, None)
    out = fused.norm_modulate(x, shift, scale, weight=w, bias=bias, eps=1e-6)
    assert fused.unavailable_reason(x) is None and out.dtype == dtype and out.shape == x.shape
    exact = torch.nn.functional.layer_norm(x.double(), (c,), None if w is None else w.double(),
                                           None if bias is None else bias.double(), 1e-6)
    if modulate:
        exact = exact * (1 + scale.double()[:, None]) + shift.double()[:, None]
    assert_within_bound(out, ref.norm_modulate_ref(x, shift, scale, w, bias, 1e-6), exact)


def test_norm_modulate_out_dtype_and_broadcast_shapes(interp):
    b, l, c = 2, 5, 64
    x = torch.randn(b, l, c)
    shift, scale, _ = adaln(b, c)
    out = fused.norm_modulate(x, shift[:, None], scale[:, None], out_dtype=torch.float16)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref.norm_modulate_ref(x, shift, scale).half().float(), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gated", [False, True])
def test_add_norm_modulate(interp, dtype, gated):
    b, l, c = 2, 19, 80
    x, y = torch.randn(b, l, c).to(dtype), torch.randn(b, l, c).to(dtype)
    # strided [B, C] slices, as the DiT's (modulation + e).unbind(1) hands them over
    shift, scale, gate = (torch.randn(b, 3, c) * 0.5).unbind(1)
    assert shift.stride(0) == 3 * c
    gate = gate if gated else None
    w, bias = torch.randn(c), torch.randn(c)
    new_x, h = fused.add_norm_modulate(x, y, gate, shift, scale, weight=w, bias=bias, out_dtype=torch.float32)
    assert new_x.dtype == dtype and h.dtype == torch.float32
    sx = x.double() + y.double() * (1 if gate is None else gate.double()[:, None])
    ref_x, ref_h = ref.add_norm_modulate_ref(x, y, gate, shift, scale, w, bias, 1e-6, torch.float32)
    assert_within_bound(new_x, ref_x, sx)
    # The norm is taken of the residual as stored (rounded to x's dtype), exactly as the unfused code does.
    exact_h = torch.nn.functional.layer_norm(ref_x.double(), (c,), w.double(), bias.double(), 1e-6)
    exact_h = exact_h * (1 + scale.double()[:, None]) + shift.double()[:, None]
    assert_within_bound(h, ref_h, exact_h)


def test_row_parts_hold_a_row_in_two_power_of_two_parts_where_that_masks_fewer_lanes(monkeypatch):
    ln = fused._ln
    assert ln.row_parts(1536) == (1024, 512) and ln.row_parts(5120) == (4096, 1024)
    assert ln.row_parts(5120, quant=True) == (4096, 1024)
    assert ln.row_parts(96) == (64, 32) and ln.row_parts(80) == (64, 16)
    assert ln.row_parts(2048) == (2048, 0)  # a power of two stays one part
    assert ln.row_parts(192, quant=True) == (256, 0)  # 128 + 128 would mask as many lanes
    assert ln.row_parts(100, quant=True) == (128, 0)  # quantizing parts hold whole 128-channel groups
    assert ln.row_parts(384, quant=True) == (256, 128)
    monkeypatch.setattr(ln, "SPLIT_ROWS", False)
    assert ln.row_parts(1536) == (2048, 0) and ln.row_parts(5120, quant=True) == (8192, 0)


@pytest.mark.parametrize("quant", [None, "fp8"])
def test_two_part_rows_match_one_part_rows(interp, monkeypatch, quant):
    """The same launch with the row in one masked part or in two: same residual, same h up to the
    order the row sums are added in."""
    b, l, c = 2, 9, 384
    x, y = torch.randn(b, l, c) * 3, torch.randn(b, l, c)
    shift, scale, gate = adaln(b, c)
    w, bias = torch.randn(c), torch.randn(c)
    assert fused._ln.row_parts(c, quant=quant is not None) == (256, 128)
    two_x, two_h = fused.add_norm_modulate(x, y, gate, shift, scale, weight=w, bias=bias, quant=quant)
    monkeypatch.setattr(fused._ln, "SPLIT_ROWS", False)
    one_x, one_h = fused.add_norm_modulate(x, y, gate, shift, scale, weight=w, bias=bias, quant=quant)
    assert torch.equal(two_x, one_x)
    if quant is None:
        torch.testing.assert_close(two_h, one_h, atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(two_h.scale, one_h.scale) or rel(two_h.scale, one_h.scale) < 1e-6
        deq = [a.q.float() * a.scale.t().repeat_interleave(128, 1).reshape(b, l, c) for a in (two_h, one_h)]
        assert rel(deq[0], deq[1]) < 1e-3  # an ulp flip of h can move an e4m3 value one step, rarely


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_residual(interp, dtype):
    b, l, c = 3, 11, 48
    x, y = torch.randn(b, l, c).to(dtype), torch.randn(b, l, c).to(dtype)
    gate = torch.randn(b, 1, c)
    out = fused.gated_residual(x, y, gate)
    exact = x.double() + y.double() * gate.double()
    assert_within_bound(out, ref.gated_residual_ref(x, y, gate[:, 0]), exact)
    # no gate: a plain residual add
    assert_within_bound(fused.gated_residual(x, y), ref.gated_residual_ref(x, y, None), x.double() + y.double())


def wan_rope_apply(x: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
    """Wan2.1's rope_apply, rewritten from its definition: complex float64 products per head."""
    l, n, d = x.shape
    c = d // 2

    def params(dim):
        inv = 1.0 / torch.pow(10000, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        ang = torch.outer(torch.arange(1024, dtype=torch.float64), inv)
        return torch.polar(torch.ones_like(ang), ang)

    freqs = torch.cat([params(d - 4 * (d // 6)), params(2 * (d // 6)), params(2 * (d // 6))], dim=1)
    ft, fh, fw = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    grid = torch.cat([
        ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
        fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
        fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(l, 1, c)
    xc = torch.view_as_complex(x.double().reshape(l, n, c, 2))
    return torch.view_as_real(xc * grid).flatten(2)


@pytest.mark.parametrize("head_dim", [128, 32, 24])
def test_rope_tables_match_wans_rope(head_dim):
    f, h, w, heads = 3, 4, 5, 2
    x = torch.randn(f * h * w, heads, head_dim, dtype=torch.float64)
    cos, sin = fused.rope_tables(f, h, w, head_dim)
    assert cos.shape == (f * h * w, head_dim // 2) and cos.dtype == torch.float32
    # the rotation exactly as rmsnorm_rope_ref / the kernel apply it, in float64
    xe, xo = x[..., 0::2], x[..., 1::2]
    cs, sn = cos.double()[:, None], sin.double()[:, None]
    ours = torch.stack((xe * cs - xo * sn, xe * sn + xo * cs), -1).flatten(2)
    assert rel(ours, wan_rope_apply(x, f, h, w)) < 1e-7  # float32 tables: ~1 ulp of the angles' cos/sin


@pytest.fixture(params=[1, 0], ids=["split", "strided"])
def load_pattern(request, interp):
    """Both load patterns of the RMSNorm kernel (on a GPU a two-config autotune picks one)."""
    old = fused._rope.SPLIT_FOR_INTERPRETER
    fused._rope.SPLIT_FOR_INTERPRETER = request.param
    yield request.param
    fused._rope.SPLIT_FOR_INTERPRETER = old


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim", [(2, 32), (3, 24)])
def test_rmsnorm_rope(load_pattern, dtype, heads, head_dim):
    f, h, w, b = 2, 3, 5, 2
    l, c = f * h * w, heads * head_dim
    x = (torch.randn(b, l, c) * 4).to(dtype)
    weight = (1 + 0.3 * torch.randn(c)).to(dtype)
    cos, sin = fused.rope_tables(f, h, w, head_dim)
    out = fused.rmsnorm_rope(x, weight, cos, sin, eps=1e-6)
    assert out.dtype == dtype and out.shape == x.shape
    xd = x.double()
    normed = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.double()
    exact = torch.stack([wan_rope_apply(normed[i].view(l, heads, head_dim), f, h, w) for i in range(b)])
    assert_within_bound(out, ref.rmsnorm_rope_ref(x, weight, cos, sin, 1e-6), exact.view(b, l, c))


def test_rmsnorm_rope_reads_a_column_slice_of_a_fused_qkv_output(load_pattern):
    """q / k as slices of one [B, L, 3C] GEMM output: the kernel takes the row stride, no copy,
    and gives exactly what it gives on the contiguous copy."""
    f, h, w, b, heads, head_dim = 1, 3, 4, 2, 2, 32
    l, c = f * h * w, heads * head_dim
    qkv = torch.randn(b, l, 3 * c) * 3
    weight = 1 + 0.3 * torch.randn(c)
    cos, sin = fused.rope_tables(f, h, w, head_dim)
    for part in range(2):
        x = qkv[..., part * c:(part + 1) * c]
        assert not x.is_contiguous()
        assert fused._check_rows("x", x).data_ptr() == x.data_ptr()  # no copy on the way in
        out = fused.rmsnorm_rope(x, weight, cos, sin, eps=1e-6)
        assert torch.equal(out, fused.rmsnorm_rope(x.contiguous(), weight, cos, sin, eps=1e-6))
        torch.testing.assert_close(out, ref.rmsnorm_rope_ref(x.contiguous(), weight, cos, sin, 1e-6), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.rmsnorm(qkv[..., :c], weight), ref.rmsnorm_ref(qkv[..., :c].contiguous(), weight, 1e-6),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm(load_pattern, dtype):
    b, l, c = 2, 13, 96
    x = (torch.randn(b, l, c) * 3).to(dtype)
    weight = (1 + 0.3 * torch.randn(c)).to(dtype)
    out = fused.rmsnorm(x, weight, eps=1e-6)
    assert out.dtype == dtype
    xd = x.double()
    exact = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.double()
    assert_within_bound(out, ref.rmsnorm_ref(x, weight, 1e-6), exact)


def test_custom_ops_pass_opcheck(interp):
    """The registered ops (what torch.compile traces) agree with their fake implementations."""
    b, l, c = 1, 6, 32
    x, y = torch.randn(b, l, c), torch.randn(b, l, c)
    s, sh, g = adaln(b, c)
    w, bias = torch.randn(c), torch.randn(c)
    cos, sin = fused.rope_tables(1, 2, 3, 16)
    cases = [
        (fused._norm_modulate_op, (x, w, bias, sh, s, 1e-6, torch.float16)),
        (fused._add_norm_modulate_op, (x, y, g, None, None, sh, s, 1e-6, torch.float32)),
        (fused._gated_residual_op, (x, y, g)),
        (fused._rmsnorm_rope_op, (x, w, cos, sin, 1e-6, torch.float32)),
        (fused._rmsnorm_op, (x, w, 1e-6, torch.float16)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_disabled_runs_reference_and_logs_once(caplog):
    x, y = torch.randn(1, 4, 16), torch.randn(1, 4, 16)
    fused._logged.clear()
    with caplog.at_level(logging.INFO, logger="turbovid.fused"), fused.disabled():
        for _ in range(3):
            out = fused.gated_residual(x, y)
    assert torch.equal(out, x + y)
    lines = [r for r in caplog.records if r.name == "turbovid.fused"]
    assert len(lines) == 1 and "disabled" in lines[0].getMessage()


def test_cpu_tensors_fall_back_unless_the_interpreter_is_allowed():
    x = torch.randn(2, 3, 8)
    old = fused._cpu_interpreter
    fused.allow_interpreter(False)
    try:
        assert "not CUDA" in fused.unavailable_reason(x)
        torch.testing.assert_close(fused.norm_modulate(x), ref.norm_modulate_ref(x))
    finally:
        fused.allow_interpreter(old)


def test_bad_shapes_raise_clear_errors():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"\[B, L, C\]"):
        fused.norm_modulate(x[0])
    with pytest.raises(ValueError, match="shift must be"):
        fused.norm_modulate(x, torch.randn(2, 7), torch.randn(2, 8))
    with pytest.raises(ValueError, match="weight and bias together"):
        fused.norm_modulate(x, weight=torch.ones(8))
    with pytest.raises(ValueError, match="y must match"):
        fused.gated_residual(x, torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="rope_tables"):
        fused.rmsnorm_rope(x, torch.ones(8), torch.ones(3, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="even head_dim"):
        fused.rope_tables(1, 1, 1, 7)


def test_tiny_dit_fast_path_matches_plain(interp):
    """The kernels wired into WanDiT through its block-op dispatch point (float32, interpreter)."""
    from turbovid.fast import make_fast, make_plain
    from turbovid.loading.dit import build_dit

    dit = build_dit("tiny-random", device="cpu", dtype=torch.float32, seed=0)
    for p in dit.parameters():  # non-trivial norms and biases, so every kernel input matters
        p.data.add_(0.05 * torch.randn_like(p))
    lat = torch.randn(1, 16, 2, 4, 6)
    t = torch.tensor([400.0])
    ctx = torch.randn(1, 7, dit.cfg.text_dim)
    with torch.no_grad():
        plain = make_plain(dit)(lat, t, ctx)
        fast = make_fast(dit)(lat, t, ctx)
        exact = make_plain(dit).double()(lat.double(), t.double(), ctx.double())
    dit.float()
    assert not torch.equal(fast, plain)  # the kernels did run (they round differently)
    assert_within_bound(fast, plain, exact)


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_activation_quant_with_the_ffn_gelu_fused_in(interp, fmt):
    """int8_triton.quantize_act(h, gelu=True) == quantize_act(tanh-GELU(h) in h's dtype) (the fast FFN)."""
    from turbovid.ops.quant import int8_triton

    h = (torch.randn(200, 256) * 2).to(torch.float16)
    q1, s1 = int8_triton.quantize_act(h, fmt, gelu=True)
    q0, s0 = int8_triton.quantize_act(torch.nn.functional.gelu(h.float(), approximate="tanh").half(), fmt)
    torch.testing.assert_close(s1, s0, rtol=1e-3, atol=0)
    differ = (q1.float() != q0.float()).float().mean().item()
    assert differ < 0.01  # only where the GELU's rounding to fp16 lands one ulp apart
    assert (q1.float() - q0.float()).abs().max() <= (1 if fmt == "int8" else 32)


@pytest.mark.parametrize("fmt", ["int8", "fp8", "fp8-tensor"])
def test_fast_ffn_fuses_the_gelu_into_the_quantized_layer(interp, fmt, monkeypatch):
    """GeluFFN with int8 / fp8 layers takes the fused path (interpreter) and matches the unfused FFN."""
    import torch.nn as nn

    from turbovid import fast
    from turbovid.ops.quant import fp8_tensor_triton
    from turbovid.ops.quant import int8 as q8
    from turbovid.ops.quant import swap_linears, swap_linears_fp8

    monkeypatch.setattr(q8, "_allow_interpreter", True)
    seq = nn.Sequential(nn.Linear(128, 256), nn.GELU(approximate="tanh"), nn.Linear(256, 128)).half()
    if fmt == "int8":
        swap_linears(seq)
    else:
        swap_linears_fp8(seq, per_tensor=fmt == "fp8-tensor")
    x = torch.randn(1, 40, 128).half()
    assert fast._quant_kernel_for(seq[2], x) is not None
    calls = []
    if fmt == "fp8-tensor":
        real = fp8_tensor_triton.quantize
        monkeypatch.setattr(fp8_tensor_triton, "quantize", lambda x, gelu=False, bound=None, from_norm=None: calls.append(
            {"gelu_input": gelu}) or real(x, gelu, bound, from_norm))
    else:
        real = q8.kernels().linear
        monkeypatch.setattr(q8.kernels(), "linear", lambda *a, **k: calls.append(k) or real(*a, **k))
    fused_out = fast.GeluFFN(*seq)(x)
    assert any(k.get("gelu_input") for k in calls)  # the second layer quantized GELU(h) itself
    plain = seq(x)
    assert torch.isfinite(fused_out).all()
    assert rel(fused_out, plain) < 2e-2  # the same quantized math up to GELU rounding flips


def _fp8_bytes(act):
    return act.q.view(torch.uint8), act.scale


@pytest.mark.parametrize("dtype", DTYPES)
# whole groups, a ragged last group, one partial group, a row held as two parts (256 + 128)
@pytest.mark.parametrize("c", [256, 192, 64, 384])
@pytest.mark.parametrize("with_residual", [False, True])
def test_norm_with_fp8_output_writes_the_bytes_of_norm_then_quantize(interp, dtype, c, with_residual):
    """quant="fp8": the norm kernel's e4m3 values and scales are exactly quantize(h) of its own h."""
    from turbovid.ops.quant.fp8 import Fp8Activation

    b, l = 2, 11
    x, y = (torch.randn(b, l, c) * 3).to(dtype), torch.randn(b, l, c).to(dtype)
    x[0, 3, :5] = 40.0  # an outlier row group, so the scales differ between groups
    shift, scale, gate = adaln(b, c)
    w, bias = torch.randn(c), torch.randn(c)
    if with_residual:
        new_x, act = fused.add_norm_modulate(x, y, gate, shift, scale, weight=w, bias=bias, quant="fp8")
        ref_x, h = fused.add_norm_modulate(x, y, gate, shift, scale, weight=w, bias=bias)
        assert torch.equal(new_x, ref_x)
    else:
        act = fused.norm_modulate(x, shift, scale, weight=w, bias=bias, quant="fp8")
        h = fused.norm_modulate(x, shift, scale, weight=w, bias=bias)
    assert isinstance(act, Fp8Activation) and act.dtype == dtype and act.shape == x.shape
    assert act.scale.shape == (-(-c // 128), b * l)
    want = Fp8Activation.quantize(h)
    q, s = _fp8_bytes(act)
    q0, s0 = _fp8_bytes(want)
    assert torch.equal(s, s0)
    assert torch.equal(q, q0.reshape(q.shape))
    assert len(set(s.flatten().tolist())) > 1


def test_norm_fp8_ops_pass_opcheck_and_unknown_formats_raise(interp):
    b, l, c = 1, 6, 160
    x, y = torch.randn(b, l, c), torch.randn(b, l, c)
    s, sh, g = adaln(b, c)
    w, bias = torch.randn(c), torch.randn(c)
    for per_tensor in (False, True):
        torch.library.opcheck(fused._norm_modulate_fp8_op, (x, w, bias, sh, s, 1e-6, torch.float32, per_tensor),
                              test_utils=("test_schema", "test_faketensor"))
        torch.library.opcheck(fused._add_norm_modulate_fp8_op,
                              (x, y, g, None, None, sh, s, 1e-6, torch.float16, per_tensor),
                              test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(ValueError, match="'fp8' or 'fp8-tensor'"):
        fused.norm_modulate(x, sh, s, quant="int8")
    with pytest.raises(ValueError, match="'fp8' or 'fp8-tensor'"):
        ref.norm_modulate_ref(x, sh, s, quant="nf4")


def test_tiny_fp8_dit_with_quantizing_norms_matches_its_linears_quantizing(interp, monkeypatch):
    """make_fast on a block-scaled fp8 DiT: the norms hand q/k/v, cross-attention q and the FFN their
    inputs already quantized, and the velocity is bit-identical to the linears quantizing themselves."""
    from turbovid import fast
    from turbovid.loading.dit import build_dit
    from turbovid.ops.quant import fp8 as fp8_module
    from turbovid.ops.quant import swap_linears_fp8

    dit = build_dit("tiny-random", device="cpu", dtype=torch.float32, seed=0)
    for p in dit.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    for blk in dit.blocks:
        swap_linears_fp8(blk, per_tensor=False)
    lat, t, ctx = torch.randn(1, 16, 2, 4, 6), torch.tensor([400.0]), torch.randn(1, 7, dit.cfg.text_dim)
    prequantized = []
    real = fp8_module.fp8_linear_quantized
    monkeypatch.setattr(fp8_module, "fp8_linear_quantized", lambda *a: prequantized.append(a[0]) or real(*a))
    with torch.no_grad():
        own = fast.make_fast(dit, fast.FastOptions(act_quant=False))(lat, t, ctx)
        assert not prequantized and all(blk.act_quant is None for blk in dit.blocks)
        fused_quant = fast.make_fast(dit)(lat, t, ctx)
        assert all(blk.act_quant == "fp8" for blk in dit.blocks)
        # per block: q/k/v (one fused GEMM, or three), cross-attention q, FFN in
        assert len(prequantized) >= 3 * len(dit.blocks)
        fast.make_plain(dit)
        assert all(blk.act_quant is None for blk in dit.blocks)
    assert torch.equal(fused_quant, own)


def test_tuned_rmsnorm_launch_passes_no_config_owned_argument(interp, monkeypatch):
    """The autotuned launch must leave num_warps (and SPLIT) to the configs: Triton rejects duplicates."""
    seen = {}

    class FakeTuned:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                for cfg in fused._rope.TUNE_CONFIGS:
                    dup = set(kwargs) & set(cfg.all_kwargs())
                    assert not dup, f"passed both by the call and the config: {dup}"
                seen["kwargs"] = kwargs
                fused._rope._rmsnorm_rope_kernel[grid](*args, **kwargs, **fused._rope.TUNE_CONFIGS[0].all_kwargs())
            return launch

    monkeypatch.setattr(fused._rope, "INTERPRETED", False)
    monkeypatch.setattr(fused._rope, "_rmsnorm_rope_tuned", FakeTuned())
    x, w = torch.randn(1, 6, 32), torch.randn(32)
    cos, sin = fused.rope_tables(1, 2, 3, 16)
    out = fused._rope.rmsnorm_rope_triton(x, w, cos, sin, 1e-6, torch.float32)
    assert "kwargs" in seen and not fused._rope._split_failed
    torch.testing.assert_close(out, ref.rmsnorm_rope_ref(x, w, cos, sin, 1e-6), rtol=1e-5, atol=1e-5)
