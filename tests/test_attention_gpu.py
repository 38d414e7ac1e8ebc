"""SLA and SageSLA kernels on a GPU at video sizes, against the float32 PyTorch reference.

Run on the device: `pytest -m gpu tests/test_attention_gpu.py` (benchmarks/bench_attention.py does).
Kernel modules are imported inside the tests: importing Triton at collection time would stop the
CPU suite's interpreter tests from working.
"""
from __future__ import annotations

import pytest
import torch
from attention_helpers import cosine, max_err, outlier_qkv, proj_params, random_qkv, rel_l2

pytestmark = pytest.mark.gpu

L480 = 32760  # 480p, 81 frames: 21 x 30 x 52 latent tokens


def assert_same_blocks(lut: torch.Tensor, expected: torch.Tensor, scores: torch.Tensor, tol: float = 1e-5):
    """Same kept blocks, except where two float32 scores at the cut are within `tol` (summation order)."""
    lut = lut.view_as(expected).long()
    expected = expected.long()
    rows = (lut != expected).any(-1)
    if not rows.any():
        return
    cut = torch.gather(scores, -1, expected).min(-1).values[rows]
    got = torch.gather(scores, -1, lut).min(-1).values[rows]
    assert rows.float().mean() < 1e-3 and (cut - got).abs().max() < tol, f"{int(rows.sum())} rows differ"


@pytest.fixture(scope="module")
def qkv480():
    q, k, v = random_qkv(1, L480, 12, 128, torch.bfloat16, device="cuda")
    return q, k, v, *proj_params(128, "cuda")


def _sla_bound(out, q, k, v, topk, w, b, blkq, blkk, lut):
    from turbovid.ops.attention import sla_reference as ref

    expected = ref.sla_reference(q, k, v, topk, w, b, blkq, blkk, lut=lut)
    low = ref.sla_reference(q, k, v, topk, w, b, blkq, blkk, dtype=torch.bfloat16, lut=lut)
    err, bound = max_err(out, expected), 2 * max_err(low, expected) + 1e-3
    assert err <= bound, f"kernel error {err:.3e} > bound {bound:.3e}"
    return expected


def test_sla_480p_matches_reference(qkv480):
    from turbovid.ops.attention import blockmap, sla_kernel
    from turbovid.ops.attention import sla_reference as ref

    q, k, v, w, b = qkv480
    stats = blockmap.block_stats(q, k, v, 0.1, 128, 64)
    expected_lut = ref.block_map(q, k, 0.1, 128, 64)
    assert stats.kk == 51
    assert_same_blocks(stats.lut, expected_lut, ref.block_scores(q, k, 128, 64))
    out = sla_kernel.sla_forward(q, k, v, 0.1, w, b, stats=stats)
    expected = _sla_bound(out, q, k, v, 0.1, w, b, 128, 64, stats.lut.view_as(expected_lut))
    for cfg in (sla_kernel.Config(), sla_kernel.Config(group=2, tma=True, linear_in_pool=True, kv_copy=True)):
        other = sla_kernel.sla_forward(q, k, v, 0.1, w, b, config=cfg)  # its own block stats
        assert max_err(other, expected) <= 1.05 * max_err(out, expected) + 1e-3, cfg


def test_sla_batch2_ragged_head_dim_64():
    from turbovid.ops.attention import blockmap, sla_kernel
    from turbovid.ops.attention import sla_reference as ref

    q, k, v = random_qkv(2, 5000, 4, 64, torch.bfloat16, device="cuda", seed=2)
    w, b = proj_params(64, "cuda")
    stats = blockmap.block_stats(q, k, v, 0.15, 128, 64)
    expected_lut = ref.block_map(q, k, 0.15, 128, 64)
    assert_same_blocks(stats.lut, expected_lut, ref.block_scores(q, k, 128, 64))
    out = sla_kernel.sla_forward(q, k, v, 0.15, w, b, stats=stats)
    _sla_bound(out, q, k, v, 0.15, w, b, 128, 64, stats.lut.view_as(expected_lut))


GLUON_CASES = {  # B, L, H, dtype, topk, linear branch, q/k/v as slices of one qkv tensor
    "480p": (1, L480, 12, torch.bfloat16, 0.1, True, False),
    "batch2_ragged": (2, 5000, 4, torch.bfloat16, 0.15, True, False),
    "odd_steps_of_two_blocks": (2, 5000, 4, torch.bfloat16, 0.3, True, False),
    "one_kept_block": (1, 300, 2, torch.bfloat16, 0.1, True, False),
    "all_blocks": (1, 300, 2, torch.bfloat16, 1.0, True, False),
    "no_linear_branch": (1, 4000, 3, torch.bfloat16, 0.1, False, False),
    "fp16": (2, 1000, 3, torch.float16, 0.2, True, False),
    "qkv_slices": (2, 3000, 6, torch.bfloat16, 0.1, True, True),
}


@pytest.mark.parametrize("linear_in_pool", [False, True], ids=["linear_in_epilogue", "linear_in_pool"])
@pytest.mark.parametrize("case", list(GLUON_CASES))
def test_sla_gluon_launch_matches_reference(case, linear_in_pool):
    """The warp-specialized Gluon launch (sm_90): within the reference bound, at the Triton launch's
    accuracy, on ragged lengths, batch 2, a single kept block, a last step with one block, no linear
    branch, fp16, and q/k/v read in place from a fused qkv tensor."""
    from turbovid.ops.attention import blockmap, sla_gluon, sla_kernel

    B, L, H, dtype, topk, linear, sliced = GLUON_CASES[case]
    if sliced:
        qkv = torch.randn(B, L, 3, H, 128, device="cuda", generator=torch.Generator("cuda").manual_seed(7)).to(dtype)
        q, k, v = qkv.unbind(2)
    else:
        q, k, v = random_qkv(B, L, H, 128, dtype, device="cuda", seed=8)
    if not sla_gluon.available(q, k, v, 128, 64):
        pytest.skip("the Gluon launch needs Gluon and an sm_90 GPU")
    w, b = proj_params(128, "cuda") if linear else (None, None)
    gluon = sla_kernel.Config(group=1, num_warps=4, num_stages=2, linear_in_pool=linear_in_pool, gluon=True)
    triton_cfg = sla_kernel.Config(group=1, num_warps=4, num_stages=2, linear_in_pool=True)
    stats = blockmap.block_stats(q, k, v, topk, 128, 64)
    out = sla_kernel.sla_forward(q, k, v, topk, w, b, config=gluon)
    assert out.dtype == dtype and out.shape == q.shape
    lut = stats.lut.view(B, H, -1, stats.kk)
    expected = _sla_bound(out, q, k, v, topk, w, b, 128, 64, lut)
    other = sla_kernel.sla_forward(q, k, v, topk, w, b, config=triton_cfg)
    assert max_err(out, expected) <= 1.05 * max_err(other, expected) + 1e-3


@pytest.mark.parametrize("inputs", [random_qkv, outlier_qkv], ids=["random", "outliers"])
def test_sagesla_480p_accuracy(inputs):
    from turbovid.ops.attention import blockmap, sagesla_kernel
    from turbovid.ops.attention import sla_reference as ref

    q, k, v = inputs(1, L480, 12, 128, torch.bfloat16, device="cuda", seed=3)
    w, b = proj_params(128, "cuda")
    stats = blockmap.block_stats(q, k, v, 0.1, 64, 128, v_absmax=True)
    out = sagesla_kernel.sagesla_forward(q, k, v, 0.1, w, b, 64, 128, stats=stats)
    lut = stats.lut.view(1, 12, -1, stats.kk)
    expected = ref.sla_reference(q, k, v, 0.1, w, b, 64, 128, lut=lut)
    assert cosine(out, expected) >= 0.999 and rel_l2(out, expected) <= 3e-2
    sparse = ref.sparse_attention(q, k, v, lut, 64, 128)  # the quantized part alone meets the bar too
    alone = sagesla_kernel.sagesla_forward(q, k, v, 0.1, None, None, 64, 128, stats=stats)
    assert cosine(alone, sparse) >= 0.999 and rel_l2(alone, sparse) <= 3e-2


def test_sagesla_batch2_ragged_head_dim_64():
    from turbovid.ops.attention import sagesla_kernel
    from turbovid.ops.attention import sla_reference as ref

    q, k, v = outlier_qkv(2, 5000, 4, 64, torch.bfloat16, device="cuda", seed=4)
    w, b = proj_params(64, "cuda")
    expected = ref.sla_reference(q, k, v, 0.15, w, b, 64, 128)
    for cfg in (None, sagesla_kernel.Config(tma=False, linear_in_pool=True)):
        out = sagesla_kernel.sagesla_forward(q, k, v, 0.15, w, b, 64, 128, config=cfg)
        assert cosine(out, expected) >= 0.999 and rel_l2(out, expected) <= 3e-2, cfg


def test_backends_resolve_and_compile():
    from turbovid.ops import attention
    from turbovid.ops.attention import sla_gluon

    major, minor = torch.cuda.get_device_capability()
    expected = "sla" if sla_gluon.supported(torch.device("cuda")) or (major, minor) < (8, 9) else "sagesla"
    assert attention.resolve_backend("auto", "cuda") == expected
    q, k, v = random_qkv(1, 1000, 2, 128, torch.bfloat16, device="cuda", seed=5)
    w, b = proj_params(128, "cuda")

    def f(q, k, v):
        return attention.attention(q, k, v, "sla", topk=0.2, proj_weight=w, proj_bias=b) + 1

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(q, k, v), f(q, k, v))


@pytest.mark.parametrize("backend", ["sla", "sagesla"])
def test_fp8_output_is_the_o_projections_own_quantization_at_480p(qkv480, backend):
    """out_fp8: the epilogue's e4m3 values and per-(token, head) scales are the bytes the fp8
    o-projection's own quantization makes of the bf16 output (device e4m3 conversion).

    sla: identical. sagesla computes the linear branch in this epilogue, and the compiler sums its
    rows in another order when the epilogue also quantizes: on the H100, 41 of 50 M bf16 outputs
    rounded apart, each moving its e4m3 value one step (without the linear branch: none). So for
    sagesla at most 1 in 10^5 values may sit one e4m3 step away."""
    from turbovid.ops import attention
    from turbovid.ops.quant import int8_triton

    q, k, v, w, b = qkv480
    plain = attention.attention(q, k, v, backend, topk=0.1, proj_weight=w, proj_bias=b)
    q8, s = attention.attention(q, k, v, backend, topk=0.1, proj_weight=w, proj_bias=b, out_fp8=True)
    want_q, want_s = int8_triton.quantize_act(plain.reshape(L480, -1), "fp8")
    got, want = q8.reshape(L480, -1).view(torch.uint8), want_q.view(torch.uint8)
    if backend == "sla":
        assert torch.equal(s, want_s) and torch.equal(got, want)
        return
    differ = got != want
    assert differ.float().mean().item() <= 1e-5
    moved = s != want_s  # a flipped row maximum moves its scale by one bf16 ulp / 448
    assert moved.float().mean().item() <= 1e-5
    assert torch.allclose(s[moved], want_s[moved], rtol=2**-7, atol=0)
    # each differing value within one e4m3 step of the other: 2^-3 of it, or one subnormal step
    # (2^-9 of its scale) for values near zero, where the reordered sums can even change the sign
    rows_s = want_s.t().repeat_interleave(128, 1)
    deq_got = q8.reshape(L480, -1).float() * s.t().repeat_interleave(128, 1)
    deq_want = want_q.float() * rows_s
    err = (deq_got - deq_want).abs()
    assert bool((err <= 0.125 * deq_want.abs() + 2**-9 * rows_s * 1.001).all())
    assert torch.equal(sagesla_linear_free(q, k, v), sagesla_linear_free(q, k, v, fp8=True))


@pytest.mark.parametrize("backend", ["sla", "sagesla"])
def test_per_tensor_fp8_output_at_the_v_bound_at_480p(qkv480, backend):
    """out_fp8="tensor": one scale from max|V| and proj_l, which bounds every output value (nothing
    saturates); the bytes are the per-tensor rule applied to the plain output (sagesla: up to the
    epilogue's reordered linear-branch sums, as above)."""
    from turbovid.ops import attention
    from turbovid.ops.attention.blockmap import output_bound
    from turbovid.ops.quant import fp8_tensor

    q, k, v, w, b = qkv480
    plain = attention.attention(q, k, v, backend, topk=0.1, proj_weight=w, proj_bias=b)
    q8, s = attention.attention(q, k, v, backend, topk=0.1, proj_weight=w, proj_bias=b, out_fp8="tensor")
    bound = output_bound(v.abs().amax(1).reshape(-1, v.shape[-1]), w, b)
    assert plain.float().abs().max() <= bound
    want_q, want_s = fp8_tensor.quantize_with_bound(plain, bound)
    torch.testing.assert_close(s, want_s, rtol=1e-6, atol=0)  # the key pass's max|V|: the same value
    differ = (q8.view(torch.uint8) != want_q.view(torch.uint8)).float().mean().item()
    assert differ <= (0 if backend == "sla" else 1e-5)


def sagesla_linear_free(q, k, v, fp8=False):
    """Without the linear branch the fp8 epilogue's bytes are exact (sagesla): quantized output, or
    the plain output quantized by the linear's rule."""
    from turbovid.ops import attention
    from turbovid.ops.quant import int8_triton

    if fp8:
        q8, s = attention.attention(q, k, v, "sagesla", topk=0.1, out_fp8=True)
        return torch.cat([q8.reshape(L480, -1).view(torch.uint8).float(), s.t()], 1)
    q8, s = int8_triton.quantize_act(attention.attention(q, k, v, "sagesla", topk=0.1).reshape(L480, -1), "fp8")
    return torch.cat([q8.view(torch.uint8).float(), s.t()], 1)


@pytest.mark.parametrize("n", [[77], [0], [512], [20, 300]])
def test_tail_attention_kernel_at_480p(n):
    """Cross-attention over a zero-padded prompt (ops/attention/tail.py): the kernel, visiting the
    prompt's rows and one padding row, against float32 attention over all 512 rows; bound: twice
    bf16 SDPA's error over all rows, plus 1e-3."""
    from turbovid.ops.attention import dense_attention, tail

    B = len(n)
    g = torch.Generator(device="cuda").manual_seed(5)
    q = torch.randn(B, L480, 12, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, 512, 12, 128, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for b, nb in enumerate(n):
        if nb < 512:
            k[b, nb:], v[b, nb:] = k[b, nb].clone(), v[b, nb].clone()
    assert tail.kernel_unavailable(q) is None
    out = tail.tail_attention(q, k, v, torch.tensor(n, device="cuda", dtype=torch.int32))
    want = dense_attention(q.float(), k.float(), v.float())
    err, bound = max_err(out, want), 2 * max_err(dense_attention(q, k, v), want) + 1e-3
    assert torch.isfinite(out).all() and err <= bound, (err, bound)
