"""SageSLA: the quantization rules (PyTorch), their accuracy against the float32 SLA reference, the
Triton kernels in the CPU interpreter against an exact emulation, and the backend's fallbacks.

The interpreter runs int8 and fp8 dots exactly; its float32 -> fp8 cast mis-rounds, so under the
interpreter the kernels round to the e4m3 grid themselves first (sagesla_kernel._to_fp8).
"""
from __future__ import annotations

import logging
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported

import pytest  # noqa: E402
from attention_helpers import (  # noqa: E402
    assert_fp8_output_of, cosine, interpreted_kernels, outlier_qkv, proj_params, random_qkv, rel_l2,
)

from turbovid.ops import attention  # noqa: E402
from turbovid.ops.attention import sagesla, sla  # noqa: E402
from turbovid.ops.attention import sagesla_reference as sref  # noqa: E402
from turbovid.ops.attention import sla_reference as ref  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    with interpreted_kernels():
        from turbovid.ops.attention import blockmap, sagesla_kernel

        yield blockmap, sagesla_kernel


# ---- quantization rules ---------------------------------------------------------------------

def test_int8_blocks_round_half_away_and_pad():
    x = torch.tensor([[0.5, -0.5, 1.5, -2.5, 127.0, 0.0]]).view(1, 1, 3, 2)  # L=3 tokens, D=2
    q, scale = sref.quantize_blocks_int8(x, 2)
    assert q.shape == (1, 1, 2, 2, 2) and scale.shape == (1, 1, 2)
    torch.testing.assert_close(scale, torch.tensor([[[2.5 / 127 + 1e-7, 127 / 127 + 1e-7]]]))
    assert q[0, 0, 1].tolist() == [[127, 0], [0, 0]]  # second block: one real token, one padded
    s = scale[0, 0, 0].item()
    assert q[0, 0, 0].flatten().tolist() == [round(0.5 / s), -round(0.5 / s), round(1.5 / s), -127]
    y = torch.randn(1, 2, 100, 64)
    yq, ys = sref.quantize_blocks_int8(y, 32)
    back = (yq.float() * ys[..., None, None]).flatten(2, 3)[:, :, :100]
    assert (back - y).abs().max() <= ys.max() / 2 + 1e-6  # at most half a step


def test_v_fp8_terms():
    v = torch.randn(4, 1000, 64) * torch.rand(64) * 5
    to_fp8, from_fp8 = sref.v_scales(v.abs().amax(1))
    assert torch.allclose(to_fp8 * from_fp8, torch.ones_like(to_fp8))
    one = sref.quantize_v_fp8(v, to_fp8[:, None], 1) * from_fp8[:, None]
    two = sref.quantize_v_fp8(v, to_fp8[:, None], 2) * from_fp8[:, None]
    assert (one.abs() <= v.abs().amax(1, keepdim=True) * (1 + 1e-6)).all()  # max maps to 448, no overflow
    assert 0.01 < rel_l2(one, v) < 0.05  # three mantissa bits
    assert rel_l2(two, v) < 3e-3


@pytest.mark.parametrize("inputs", [random_qkv, outlier_qkv], ids=["random", "outliers"])
def test_quantization_accuracy_against_float32(inputs):
    # the bar, on the exact emulation (each query block keeps 4 of 8 key blocks)
    q, k, v = inputs(1, 1024, 1, 128, torch.bfloat16, seed=3)
    lut = ref.block_map(q, k, 0.5, 64, 128)
    expected = ref.sparse_attention(q, k, v, lut, 64, 128)
    out = sref.sagesla_sparse_emulated(q, k, v, lut, 64, 128)
    assert cosine(out, expected) >= 0.999 and rel_l2(out, expected) <= 3e-2
    # one fp8 term for V (SpargeAttn's choice) misses the L2 bar on zero-mean random V
    one = sref.sagesla_sparse_emulated(q, k, v, lut, 64, 128, v_terms=1)
    assert rel_l2(one, expected) > rel_l2(out, expected)


# ---- the Triton kernels in the interpreter ----------------------------------------------------

def test_quant_kernel_matches_the_rules(kernels):
    blockmap, sk = kernels
    B, L, H, D = 2, 200, 1, 64
    q, k, v = outlier_qkv(B, L, H, D, seed=4)
    stats = blockmap.block_stats(q, k, v, 0.5, 64, 128, linear=False, v_absmax=True)
    kq, k_scale, vt, vt2, v_from = sk.quantize_kv(k, v, stats, 128)
    kf, vf = k.float().transpose(1, 2), v.float().transpose(1, 2)
    k_i8, k_sc = sref.quantize_blocks_int8(kf - stats.k_mean.view(B, H, 1, D), 128)
    assert torch.equal(kq.view(B, H, 256, D), k_i8.flatten(2, 3))
    torch.testing.assert_close(k_scale.view(B, H, 2), k_sc)
    to_fp8, from_fp8 = sref.v_scales(vf.abs().amax(2))
    torch.testing.assert_close(v_from.view(B, H, D), from_fp8)
    scaled = vf * to_fp8[:, :, None]
    hi = scaled.to(torch.float8_e4m3fn)
    lo = (scaled - hi.float()).to(torch.float8_e4m3fn)
    assert torch.equal(vt.view(B, H, D, 256)[..., :L].float(), hi.float().transpose(-1, -2))
    assert torch.equal(vt2.view(B, H, D, 256)[..., :L].float(), lo.float().transpose(-1, -2))


@pytest.mark.parametrize(
    "B, L, H, D, inputs",
    [(2, 300, 1, 64, random_qkv), (1, 200, 1, 128, outlier_qkv)],
    ids=["batch2-d64-random", "d128-outliers"],
)
def test_kernel_matches_emulation_and_accuracy_bar(kernels, B, L, H, D, inputs):
    blockmap, sk = kernels
    q, k, v = inputs(B, L, H, D, seed=L)
    w, b = proj_params(D)
    stats = blockmap.block_stats(q, k, v, 0.6, 64, 128, v_absmax=True)
    lut = stats.lut.view(B, H, -1, stats.kk)
    assert torch.equal(lut, ref.block_map(q, k, 0.6, 64, 128))
    out = sk.sagesla_forward(q, k, v, 0.6, w, b, 64, 128, stats=stats)
    emulated = sref.sagesla_sparse_emulated(q, k, v, lut, 64, 128) + ref.linear_attention(q, k, v, w, b)
    assert rel_l2(out, emulated) < 2e-3  # fp16 output rounding and exp2 ulps
    expected = ref.sla_reference(q, k, v, 0.6, w, b, 64, 128, lut=lut)
    assert cosine(out, expected) >= 0.999 and rel_l2(out, expected) <= 3e-2


@pytest.mark.parametrize("v_terms, two_level, tma", [(1, False, False), (2, True, True), (1, True, True)])
def test_kernel_configs(kernels, v_terms, two_level, tma):
    blockmap, sk = kernels
    q, k, v = random_qkv(2, 150, 1, 64, seed=11)
    cfg = sk.Config(num_warps=4, num_stages=2, v_terms=v_terms, two_level=two_level, tma=tma)
    out = sk.sagesla_forward(q, k, v, 0.5, None, None, 64, 128, config=cfg)
    lut = ref.block_map(q, k, 0.5, 64, 128)
    emulated = sref.sagesla_sparse_emulated(q, k, v, lut, 64, 128, v_terms=v_terms)
    assert rel_l2(out, emulated) < 2e-3


def test_kernel_linear_branch_in_the_query_pass(kernels):
    blockmap, sk = kernels
    q, k, v = random_qkv(2, 150, 1, 64, seed=13)
    w, b = proj_params(64)
    cfg = sk.Config(num_warps=4, num_stages=2, linear_in_pool=True)
    out = sk.sagesla_forward(q, k, v, 0.5, w, b, 64, 128, config=cfg)
    fused = sk.sagesla_forward(q, k, v, 0.5, w, b, 64, 128)
    assert rel_l2(out, fused) < 2e-3


def test_backend_runs_the_kernel_in_the_interpreter(kernels):
    q, k, v = random_qkv(1, 130, 2, 64, seed=12)
    out = attention.attention(q, k, v, "sagesla", topk=0.5, proj_weight=None, proj_bias=None)
    lut = ref.block_map(q, k, 0.5, 64, 128)
    assert rel_l2(out, sref.sagesla_sparse_emulated(q, k, v, lut, 64, 128)) < 2e-3


def test_kernel_fp8_output_is_the_linears_quantization_of_its_output(kernels):
    blockmap, sk = kernels
    q, k, v = outlier_qkv(2, 150, 2, 128, seed=31)
    w, b = proj_params(128)
    plain = sk.sagesla_forward(q, k, v, 0.5, w, b, 64, 128)
    assert_fp8_output_of(sk.sagesla_forward(q, k, v, 0.5, w, b, 64, 128, out_fp8=True), plain)
    assert_fp8_output_of(attention.attention(q, k, v, "sagesla", topk=0.5, proj_weight=w, proj_bias=b,
                                              out_fp8=True), plain)


# ---- dispatch and fallbacks -------------------------------------------------------------------

def test_unavailable_on_cpu_and_auto_picks_sla():
    reason = attention.get_backend("sagesla").unavailable(torch.device("cpu"))
    assert reason is not None and "fp8" in reason
    assert attention.resolve_backend("auto", "cpu") == "sla"
    with pytest.raises(RuntimeError, match="sagesla"):
        attention.resolve_backend("sagesla", "cpu")


def test_direct_call_on_cpu_runs_sla_with_one_log_line(caplog):
    q, k, v = random_qkv(1, 50, 2, 16, torch.float32)
    attention._logged.clear()
    with caplog.at_level(logging.INFO, logger="turbovid.attention"):
        out = attention.attention(q, k, v, "sagesla", topk=0.5)
        attention.attention(q, k, v, "sagesla", topk=0.5)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sagesla")]
    assert len(lines) == 1 and "running sla instead" in lines[0]
    # sla's own block map (128 / 64) as the reference uses off Hopper
    assert torch.equal(out, ref.sla_reference(q, k, v, 0.5, blkq=sla.BLKQ, blkk=sla.BLKK))


def test_pre_ada_gpu_is_reported(monkeypatch):
    monkeypatch.setattr(sagesla, "kernel_unavailable", lambda device, head_dim=128: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "sm80" in sagesla.fp8_unavailable(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert sagesla.fp8_unavailable(torch.device("cuda")) is None


def test_custom_op_passes_opcheck():
    q, k, v = random_qkv(1, 40, 2, 16, torch.float32)
    w, b = proj_params(16)
    torch.library.opcheck(torch.ops.turbovid.sagesla.default, (q, k, v, 0.5, w, b, 16, 32))
    q, k, v = random_qkv(1, 40, 2, 64, torch.float32)
    w, b = proj_params(64)
    torch.library.opcheck(torch.ops.turbovid.sagesla_fp8.default, (q, k, v, 0.5, w, b, 16, 32),
                          test_utils=("test_schema", "test_faketensor"))
