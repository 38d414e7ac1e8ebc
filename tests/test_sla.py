"""SLA: the PyTorch reference against independent formulas, the Triton kernels (CPU interpreter,
fp16 inputs) against the reference, and the backend's dispatch, fallback and custom op.

Kernel error bound (flash-attention's convention): max |kernel - fp32 reference| at most twice
max |fp16 reference - fp32 reference| plus 1e-3.
"""
from __future__ import annotations

import logging
import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported

import pytest  # noqa: E402
from attention_helpers import (  # noqa: E402
    assert_fp8_output_of, assert_fp8_tensor_output_of, interpreted_kernels, max_err, proj_params, random_qkv,
)

from turbovid.ops import attention  # noqa: E402
from turbovid.ops.attention import sla  # noqa: E402
from turbovid.ops.attention import sla_reference as ref  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    with interpreted_kernels():
        from turbovid.ops.attention import blockmap, sla_kernel

        yield blockmap, sla_kernel


# ---- the reference against independent formulas -------------------------------------------

@pytest.mark.parametrize(
    "topk, n, expected",
    [(0.10, 512, 51), (0.15, 512, 76), (0.10, 1182, 118), (0.10, 591, 59), (1.0, 7, 7), (0.1, 5, 1), (0.5, 3, 1)],
)
def test_keep_count_rounds_like_the_reference(topk, n, expected):
    assert ref.keep_count(topk, n) == expected


def test_mean_pool_ragged_last_block():
    x = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1)
    assert ref.mean_pool(x, 4).flatten().tolist() == [1.5, 5.5, 8.5]


def _dense_masked(q, k, v, lut, blkq, blkk):
    """Block-sparse attention through one dense masked softmax (float64)."""
    B, L, H, D = q.shape
    qh, kh, vh = (x.transpose(1, 2).double() for x in (q, k, v))
    blocks = torch.zeros(B, H, lut.shape[2], -(-L // blkk), dtype=torch.bool)
    blocks.scatter_(-1, lut.long(), True)
    mask = blocks.repeat_interleave(blkq, 2).repeat_interleave(blkk, 3)[:, :, :L, :L]
    s = (qh @ kh.transpose(-1, -2)) / math.sqrt(D)
    return (torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ vh).transpose(1, 2)


@pytest.mark.parametrize("B, L, H, D, blkq, blkk", [(2, 100, 2, 16, 32, 16), (1, 77, 3, 8, 16, 32)])
def test_reference_sparse_matches_dense_masked_softmax(B, L, H, D, blkq, blkk):
    q, k, v = random_qkv(B, L, H, D, torch.float32)
    lut = ref.block_map(q, k, 0.4, blkq, blkk)
    out = ref.sparse_attention(q, k, v, lut, blkq, blkk, chunk=2)
    assert max_err(out, _dense_masked(q, k, v, lut, blkq, blkk)) < 1e-5


def test_reference_block_map_picks_the_best_scores():
    q, k, _ = random_qkv(1, 96, 2, 16, torch.float32)
    lut = ref.block_map(q, k, 0.5, 16, 16)
    scores = ref.block_scores(q, k, 16, 16)
    assert lut.shape == (1, 2, 6, 3) and lut.dtype == torch.int32
    assert torch.all(lut[..., 1:] > lut[..., :-1])  # ascending, distinct
    kept = torch.gather(scores, -1, lut.long()).min(-1).values
    dropped = scores.masked_fill(torch.zeros_like(scores, dtype=torch.bool).scatter(-1, lut.long(), True), -1e9)
    assert torch.all(kept >= dropped.max(-1).values)
    # smoothing K shifts each row by a constant: same blocks as unsmoothed scores
    raw = ref.mean_pool(q.transpose(1, 2), 16) @ ref.mean_pool(k.transpose(1, 2), 16).transpose(-1, -2)
    assert torch.equal(lut, raw.topk(3, -1).indices.sort(-1).values.int())


def test_reference_topk_one_without_linear_is_dense_attention():
    q, k, v = random_qkv(2, 70, 2, 16, torch.float32)
    out = ref.sla_reference(q, k, v, 1.0, blkq=32, blkk=16)
    dense = attention.dense_attention(q, k, v)
    assert max_err(out, dense) < 1e-5


def test_reference_linear_branch_formula():
    q, k, v = random_qkv(1, 40, 2, 8, torch.float32)
    w, b = proj_params(8)
    out = ref.linear_attention(q, k, v, w, b)
    phi_q, phi_k = torch.softmax(q.double(), -1), torch.softmax(k.double(), -1)
    for h in range(2):
        num = phi_q[0, :, h] @ (phi_k[0, :, h].T @ v[0, :, h].double())
        den = phi_q[0, :, h] @ phi_k[0, :, h].sum(0) + 1e-5
        expected = (num / den[:, None]) @ w.double().T + b.double()
        assert max_err(out[0, :, h], expected) < 1e-5
    # zero-initialised proj_l (as fine-tuning starts) adds nothing: same as skipping the branch
    zero = ref.sla_reference(q, k, v, 0.5, torch.zeros(8, 8), torch.zeros(8), 16, 16)
    assert torch.equal(zero, ref.sla_reference(q, k, v, 0.5, None, None, 16, 16))


# ---- the Triton kernels in the interpreter ----------------------------------------------------

SHAPES = [  # (B, L, H, D, blkq, blkk): ragged lengths, batch 2, both head dims, both block maps
    (2, 300, 2, 64, 128, 64),
    (1, 200, 1, 128, 128, 64),
    (1, 333, 2, 64, 64, 128),
]


@pytest.mark.parametrize("B, L, H, D, blkq, blkk", SHAPES)
def test_kernel_block_map_equals_reference(kernels, B, L, H, D, blkq, blkk):
    blockmap, _ = kernels
    q, k, v = random_qkv(B, L, H, D, seed=L)
    for topk in (0.3, 0.6):
        stats = blockmap.block_stats(q, k, v, topk, blkq, blkk)
        expected = ref.block_map(q, k, topk, blkq, blkk)
        assert torch.equal(stats.lut.view_as(expected), expected)
    # head-major copies of K and V, zero past L
    copies = blockmap.block_stats(q, k, v, 0.3, blkq, blkk, kv_copy=True)
    nk = -(-L // blkk)
    for copy, x in ((copies.k_copy, k), (copies.v_copy, v)):
        assert copy.shape == (B * H, nk * blkk, D)
        assert torch.equal(copy.view(B, H, -1, D)[:, :, :L], x.transpose(1, 2))
        assert not copy.view(B, H, -1, D)[:, :, L:].any()
    # the linear-branch sums and the key mean
    kf, vf = k.float().transpose(1, 2), v.float().transpose(1, 2)
    phi = torch.softmax(kf, -1)
    torch.testing.assert_close(stats.k_mean.view(B, H, D), kf.mean(2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats.phi_sum.view(B, H, D), phi.mean(2), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats.kv.float().view(B, H, D, D), phi.transpose(-1, -2) @ vf / L, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("select_rows, key_stages, early, cols", [(4, 2, False, 128), (2, 1, True, 16), (16, 1, True, 128)])
def test_kernel_block_map_launch_variants(kernels, select_rows, key_stages, early, cols):
    # fewer query blocks per select program (below the dot's 16 rows), the radix select with or
    # without its early stop, rows in chunks, and the key pass with or without software
    # pipelining all pick the reference's block sets and the same statistics
    blockmap, _ = kernels
    cfg = blockmap.StatsConfig(select_rows=select_rows, key_stages=key_stages, select_early=early, select_cols=cols)
    for B, L, H, D, blkq, blkk in SHAPES[:2]:
        q, k, v = random_qkv(B, L, H, D, seed=L + 1)
        q[..., 0] *= -3  # scores of both signs, for the sign-folded int32 keys
        stats = blockmap.block_stats(q, k, v, 0.3, blkq, blkk, cfg=cfg)
        expected = ref.block_map(q, k, 0.3, blkq, blkk)
        assert torch.equal(stats.lut.view_as(expected), expected)
        base = blockmap.block_stats(q, k, v, 0.3, blkq, blkk)
        assert torch.equal(stats.kv, base.kv) and torch.equal(stats.k_mean, base.k_mean)


def test_select_rows_rule(kernels):
    # 32 query blocks a select program past 1024 key blocks (sla at 720p), 16 below; a set value wins
    blockmap, _ = kernels
    assert blockmap.select_rows(blockmap.StatsConfig(), 1182) == 32
    assert blockmap.select_rows(blockmap.StatsConfig(), 1024) == 16
    assert blockmap.select_rows(blockmap.StatsConfig(), 512) == 16
    assert blockmap.select_rows(blockmap.StatsConfig(select_rows=4), 1182) == 4


def test_kernel_block_map_32_rows_a_program(kernels):
    # the rule's 32 query blocks a select program (two dots of 16 rows, the second program ragged):
    # the reference's block sets
    blockmap, _ = kernels
    cfg = blockmap.StatsConfig(select_rows=32)
    q, k, v = random_qkv(1, 2100, 1, 64, seed=9)
    q[..., 0] *= -3
    stats = blockmap.block_stats(q, k, v, 0.3, 64, 64, cfg=cfg)
    expected = ref.block_map(q, k, 0.3, 64, 64)
    assert torch.equal(stats.lut.view_as(expected), expected)


@pytest.mark.parametrize("early", [False, True])
def test_kernel_select_rows_in_chunks(kernels, early):
    # 69 key blocks held as 8 chunks of 16 columns (the last one ragged), both signs of score,
    # ragged query blocks, and rows of one program past the last query block
    blockmap, _ = kernels
    q, k, v = random_qkv(1, 1100, 2, 64, seed=5)
    q[..., 1] *= -4
    cfg = blockmap.StatsConfig(select_rows=4, select_cols=16, select_early=early)
    for topk in (0.1, 0.5):
        stats = blockmap.block_stats(q, k, v, topk, 64, 16, cfg=cfg)
        expected = ref.block_map(q, k, topk, 64, 16)
        assert torch.equal(stats.lut.view_as(expected), expected)


@pytest.mark.parametrize("early", [False, True])
def test_kernel_block_map_ties_keep_the_lower_block(kernels, early):
    blockmap, _ = kernels
    cfg = blockmap.StatsConfig(select_early=early)
    q = torch.ones(1, 256, 1, 64, dtype=torch.float16)
    k = torch.zeros(1, 256, 1, 64, dtype=torch.float16)  # every score is 0: all tied
    stats = blockmap.block_stats(q, k, k, 0.5, 64, 32, cfg=cfg)
    assert stats.lut.flatten(0, 1).tolist() == [[0, 1, 2, 3]] * 4
    assert torch.equal(stats.lut.view(1, 1, 4, 4), ref.block_map(q, k, 0.5, 64, 32))
    # ties at the threshold only: key blocks 1, 2, 3 score above the rest, equally; keep 2 of 8
    k2 = torch.zeros(1, 256, 1, 64, dtype=torch.float16)
    k2[:, 32:128] = 1.0
    stats = blockmap.block_stats(q, k2, k2, 0.25, 64, 32, cfg=cfg)
    assert stats.lut.flatten(0, 1).tolist() == [[1, 2]] * 4
    assert torch.equal(stats.lut.view(1, 1, 4, 2), ref.block_map(q, k2, 0.25, 64, 32))
    # every block kept (topk 1)
    stats = blockmap.block_stats(q, k2, k2, 1.0, 64, 32, cfg=cfg)
    assert stats.lut.flatten(0, 1).tolist() == [list(range(8))] * 4


def _check_kernel(out, q, k, v, topk, w, b, blkq, blkk):
    expected = ref.sla_reference(q, k, v, topk, w, b, blkq, blkk)
    low = ref.sla_reference(q, k, v, topk, w, b, blkq, blkk, dtype=torch.float16)
    err, bound = max_err(out, expected), 2 * max_err(low, expected) + 1e-3
    assert err <= bound, f"kernel error {err:.2e} > bound {bound:.2e}"


@pytest.mark.parametrize("B, L, H, D, blkq, blkk", SHAPES)
def test_kernel_matches_reference(kernels, B, L, H, D, blkq, blkk):
    _, sla_kernel = kernels
    q, k, v = random_qkv(B, L, H, D, seed=L + 1)
    w, b = proj_params(D)
    out = sla_kernel.sla_forward(q, k, v, 0.5, w, b, blkq, blkk)
    assert out.dtype == torch.float16 and out.shape == q.shape
    _check_kernel(out, q, k, v, 0.5, w, b, blkq, blkk)


@pytest.mark.parametrize(
    "group, linear, tma, kv_copy, in_pool",
    [
        (2, False, False, False, False), (1, True, False, False, False), (1, True, True, False, True),
        (2, True, True, True, False), (2, True, False, True, True),
    ],
)
def test_kernel_configs_and_no_linear_branch(kernels, group, linear, tma, kv_copy, in_pool):
    _, sla_kernel = kernels
    q, k, v = random_qkv(2, 300, 1, 64, seed=5)  # batch 2: the descriptors read across the batch seam
    w, b = proj_params(64) if linear else (None, None)
    b = None  # proj without bias
    cfg = sla_kernel.Config(group=group, num_warps=4, num_stages=2, tma=tma, kv_copy=kv_copy, linear_in_pool=in_pool)
    out = sla_kernel.sla_forward(q, k, v, 0.7, w, b, 64, 64, config=cfg)
    _check_kernel(out, q, k, v, 0.7, w, b, 64, 64)


def test_kernel_keeps_one_block_when_topk_rounds_to_zero(kernels):
    _, sla_kernel = kernels
    q, k, v = random_qkv(1, 130, 1, 64, seed=7)  # 3 key blocks, int(0.1 * 3) = 0 -> 1
    out = sla_kernel.sla_forward(q, k, v, 0.1, None, None, 128, 64)
    assert torch.isfinite(out).all()
    _check_kernel(out, q, k, v, 0.1, None, None, 128, 64)


def test_backend_runs_the_kernel_in_the_interpreter(kernels):
    q, k, v = random_qkv(2, 150, 1, 64, seed=9)
    w, b = proj_params(64)
    out = attention.attention(q, k, v, "sla", topk=0.5, proj_weight=w, proj_bias=b)
    # 128/64 is the backend's block map
    _check_kernel(out, q, k, v, 0.5, w, b, 128, 64)


@pytest.mark.parametrize("in_pool", [False, True])
def test_kernel_fp8_output_is_the_linears_quantization_of_its_output(kernels, in_pool):
    """out_fp8 (head_dim 128): the epilogue writes what quantize_act_fp8 makes of the output it
    would have stored, one scale per (token, head), for the o-projection to read."""
    _, sla_kernel = kernels
    q, k, v = random_qkv(2, 150, 2, 128, seed=21)
    v[1, :, 1] *= 20.0  # one head of one sample much larger: its scales differ
    w, b = proj_params(128)
    cfg = sla_kernel.Config(group=1, num_warps=4, num_stages=2, linear_in_pool=in_pool)
    plain = sla_kernel.sla_forward(q, k, v, 0.5, w, b, 128, 64, config=cfg)
    assert_fp8_output_of(sla_kernel.sla_forward(q, k, v, 0.5, w, b, 128, 64, config=cfg, out_fp8=True), plain)
    with pytest.raises(ValueError, match="head_dim 128"):
        sla_kernel.sla_forward(*random_qkv(1, 64, 1, 64), 0.5, None, None, 64, 64, out_fp8=True)


@pytest.mark.parametrize("in_pool", [False, True])
def test_kernel_per_tensor_fp8_output_at_the_v_bound(kernels, in_pool):
    """out_fp8="tensor": the epilogue quantizes at one scale from max|V| (and proj_l), for a per-tensor
    fp8 o-projection; the same bytes as quantizing the stored output at that bound."""
    _, sla_kernel = kernels
    q, k, v = random_qkv(2, 150, 2, 128, seed=22)
    v[1, :, 1] *= 20.0
    w, b = proj_params(128)
    cfg = sla_kernel.Config(group=1, num_warps=4, num_stages=2, linear_in_pool=in_pool)
    plain = sla_kernel.sla_forward(q, k, v, 0.5, w, b, 128, 64, config=cfg)
    got = sla_kernel.sla_forward(q, k, v, 0.5, w, b, 128, 64, config=cfg, out_fp8="tensor")
    assert_fp8_tensor_output_of(got, plain, v, w, b)
    got = attention.attention(q, k, v, "sla", topk=0.5, proj_weight=w, proj_bias=b, out_fp8="tensor")
    assert_fp8_tensor_output_of(got, attention.attention(q, k, v, "sla", topk=0.5, proj_weight=w, proj_bias=b), v, w, b)
    with pytest.raises(ValueError, match="out_fp8"):
        sla_kernel.sla_forward(q, k, v, 0.5, w, b, 128, 64, config=cfg, out_fp8="row")


def test_backend_fp8_output_in_the_interpreter_and_for_other_head_dims(kernels):
    q, k, v = random_qkv(1, 130, 2, 128, seed=23)
    w, b = proj_params(128)
    plain = attention.attention(q, k, v, "sla", topk=0.5, proj_weight=w, proj_bias=b)
    assert_fp8_output_of(attention.attention(q, k, v, "sla", topk=0.5, proj_weight=w, proj_bias=b, out_fp8=True), plain)
    q, k, v = random_qkv(1, 130, 2, 64, seed=24)  # two heads per scale group: quantized after the kernel
    plain = attention.attention(q, k, v, "sla", topk=0.5)
    assert_fp8_output_of(attention.attention(q, k, v, "sla", topk=0.5, out_fp8=True), plain)


# ---- dispatch, fallback, custom op -------------------------------------------------------------

def test_cpu_runs_the_reference_with_one_log_line(caplog):
    q, k, v = random_qkv(1, 50, 2, 16, torch.float32)
    attention._logged.clear()
    with caplog.at_level(logging.INFO, logger="turbovid.attention"):
        out1 = attention.attention(q, k, v, "sla", topk=0.5)
        out2 = attention.attention(q, k, v, "sla", topk=0.5)
    lines = [r.getMessage() for r in caplog.records if "sla" in r.getMessage()]
    assert len(lines) == 1 and "PyTorch reference" in lines[0]
    assert torch.equal(out1, out2)
    assert max_err(out1, ref.sla_reference(q, k, v, 0.5)) < 1e-6


def test_auto_picks_sla_on_cpu():
    assert attention.resolve_backend("auto", "cpu") == "sla"
    assert attention.resolve_backend("sla", "cpu") == "sla"


def test_auto_order_puts_sla_first_where_its_gluon_kernel_runs(monkeypatch):
    # on sm_90 the Gluon sla kernel is faster than sagesla's Triton one (docs/benchmarks.md)
    from turbovid.ops.attention import sla_gluon

    monkeypatch.setattr(sla_gluon, "supported", lambda device: True)
    assert attention.auto_order(torch.device("cuda")) == ("sla", "sagesla")
    monkeypatch.setattr(sla_gluon, "supported", lambda device: False)
    assert attention.auto_order(torch.device("cuda")) == ("sagesla", "sla")


def test_auto_takes_the_first_backend_that_runs(monkeypatch):
    tried = []

    def fake(name, reason):
        return attention.Backend(name, attention.dense_attention, lambda device: tried.append(name) or reason)

    monkeypatch.setattr(attention, "auto_order", lambda device: ("sla", "sagesla"))
    monkeypatch.setitem(attention.BACKENDS, "sla", fake("sla", "no kernel here"))
    monkeypatch.setitem(attention.BACKENDS, "sagesla", fake("sagesla", None))
    assert attention.resolve_backend("auto", "cpu") == "sagesla" and tried == ["sla", "sagesla"]
    monkeypatch.setitem(attention.BACKENDS, "sagesla", fake("sagesla", "no fp8"))
    assert attention.resolve_backend("auto", "cpu") == "dense"


@pytest.mark.parametrize(
    "shapes, topk, wshape, match",
    [
        (((1, 8, 2, 16), (1, 9, 2, 16)), 0.5, None, "one shape"),
        (((1, 8, 2, 16), (1, 8, 2, 16)), 0.0, None, "sla_topk"),
        (((1, 8, 2, 16), (1, 8, 2, 16)), 1.5, None, "sla_topk"),
        (((1, 8, 2, 16), (1, 8, 2, 16)), 0.5, (8, 16), "proj_weight"),
    ],
)
def test_bad_inputs_raise_one_line_errors(shapes, topk, wshape, match):
    q = torch.randn(*shapes[0])
    k = torch.randn(*shapes[1])
    w = None if wshape is None else torch.randn(*wshape)
    with pytest.raises(ValueError, match=match):
        attention.attention(q, k, k, "sla", topk=topk, proj_weight=w)


def test_fp8_output_on_cpu_and_backends_without_it(monkeypatch):
    monkeypatch.setattr(attention, "_cpu_interpreter", False)  # the reference path, whatever the fixtures left on
    q, k, v = random_qkv(1, 50, 2, 64, torch.float32)
    plain = attention.attention(q, k, v, "sla", topk=0.5)  # the reference on the CPU
    assert_fp8_output_of(attention.attention(q, k, v, "sla", topk=0.5, out_fp8=True), plain)
    dense = attention.attention(q, k, v, "dense", out_fp8=True)  # dense cannot: the plain tensor
    assert isinstance(dense, torch.Tensor) and torch.equal(dense, attention.attention(q, k, v, "dense"))


def test_custom_op_passes_opcheck_and_compiles():
    q, k, v = random_qkv(1, 40, 2, 16, torch.float32)
    w, b = proj_params(16)
    torch.library.opcheck(torch.ops.turbovid.sla.default, (q, k, v, 0.5, w, b, 16, 16))
    q, k, v = random_qkv(1, 40, 2, 64, torch.float32)
    w, b = proj_params(64)
    torch.library.opcheck(torch.ops.turbovid.sla_fp8.default, (q, k, v, 0.5, w, b, 16, 16),
                          test_utils=("test_schema", "test_faketensor"))

    def f(q, k, v):
        return attention.attention(q, k, v, "sla", topk=0.5, proj_weight=w, proj_bias=b) * 2

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(q, k, v), f(q, k, v))


def test_key_pass_chunks_fill_whole_waves():
    """The key pass's chunking (blockmap.key_chunk_blocks): on 132 SMs with one program each (the
    earlier kernel's launch), the 1.3B shape runs as one full wave and the 14B shape as one wave of
    120, not 280 programs in three (measured 0.85 ms vs the model's ~0.65 ms,
    benchmarks/explore_keypass.py); with two each (the current launch) the chunks run 3 timed."""
    from turbovid.ops.attention.blockmap import key_chunk_blocks

    assert key_chunk_blocks(256, 12, 132, 2) == 24  # 11 chunks x 12 heads = 132 programs
    assert key_chunk_blocks(256, 40, 132, 2) == 86  # 3 chunks x 40 heads = 120 programs
    assert key_chunk_blocks(256, 12, 264, 2) == 12  # 1.3B sagesla: 22 chunks x 12 heads = 264 programs
    assert key_chunk_blocks(512, 12, 264, 4) == 24  # 1.3B sla (key blocks of 64): 264 programs
    assert key_chunk_blocks(256, 40, 264, 2) == 20  # 14B sagesla: 13 chunks x 40 heads = 520 programs
    for nk, bh, slots in [(1, 1, 2), (7, 3, 2), (1182, 12, 264), (591, 40, 132)]:
        chb = key_chunk_blocks(nk, bh, slots, 2)
        assert 1 <= chb <= nk
        waves = -(-bh * -(-nk // chb) // slots)
        # no chunking is cheaper under the model it minimises
        assert all(waves * (chb + 2) <= -(-bh * -(-nk // c) // slots) * (c + 2) for c in range(1, nk + 1))


def test_gluon_launch_is_chosen_only_where_it_can_run(monkeypatch):
    """sla_gluon (Hopper, Gluon) never runs on the CPU, in the interpreter or with TURBOVID_GLUON=0;
    there the shipped config is the Triton launch with the linear branch in the query pass."""
    from turbovid.ops.attention import sla_gluon, sla_kernel

    cpu = torch.device("cpu")
    assert not sla_gluon.supported(cpu)
    cfg = sla_kernel.default_config(128, cpu)
    assert not cfg.gluon and cfg.linear_in_pool
    monkeypatch.setenv("TURBOVID_GLUON", "0")
    assert not sla_gluon.supported(torch.device("cuda", 0))
    q = torch.zeros(1, 256, 2, 128, dtype=torch.bfloat16)
    assert not sla_gluon.available(q, q, q, 128, 64)


def test_gluon_launch_shapes_and_shared_memory():
    """What the Gluon launch reads through descriptors: [B, L, H, D] rows flattened to (B*L, H*D),
    also q/k/v sliced out of one fused qkv tensor; a batch whose rows don't follow each other is
    refused. Its shared memory (Q, the K and V rings, the proj-folded phi(K)^T V) fits an sm_90
    block at the shipped 2 stages of two key blocks, not at 3."""
    from turbovid.ops.attention import sla_gluon

    x = torch.zeros(2, 300, 4, 128, dtype=torch.bfloat16)
    assert sla_gluon._flat(x) == ([600, 512], [512, 1])
    qkv = torch.zeros(2, 300, 3, 4, 128, dtype=torch.bfloat16)
    assert sla_gluon._flat(qkv[:, :, 1]) == ([600, 512], [1536, 1])
    assert sla_gluon._flat(x.transpose(0, 1).contiguous().transpose(0, 1)) is None
    assert sla_gluon._flat(x[..., :64]) is None
    limit = 227 * 1024 - 1024  # every sm_90 part: 227 KiB a block, less the barriers' slack
    assert sla_gluon.smem_bytes(sla_gluon.Config()) == 196608 <= limit
    assert sla_gluon.smem_bytes(sla_gluon.Config(stages=3)) > limit
    assert sla_gluon.smem_bytes(sla_gluon.Config(stages=3), linear=False) <= limit


def test_gluon_launch_needs_the_folded_linear_branch():
    from turbovid.ops.attention import sla_gluon

    q = torch.zeros(1, 256, 2, 128, dtype=torch.bfloat16)
    lut = torch.zeros(2, 2, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="lin_mode 1 needs kvw"):
        sla_gluon.attention(q, q, q, torch.empty_like(q), lut, 1, 1, 128, 64)


def test_gluon_launch_failure_falls_back_to_the_triton_launch(kernels, monkeypatch, caplog):
    """Where the Gluon launch fails (a Triton without its API, a compile error), the Triton launch
    computes the same op, with one warning for the device, and the Gluon launch is not tried again."""
    from turbovid.ops.attention import sla_gluon
    from turbovid.ops import gluon_switch

    _, sla_kernel = kernels
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no Gluon here\nsecond line")

    monkeypatch.setattr(sla_gluon, "available", lambda *a: True)
    monkeypatch.setattr(sla_gluon, "attention", broken)
    monkeypatch.setattr(gluon_switch, "_broken", set())
    q, k, v = random_qkv(1, 200, 2, 64, seed=11)
    w, b = proj_params(64)
    cfg = sla_kernel.Config(group=1, num_warps=4, num_stages=2, gluon=True)
    with caplog.at_level(logging.WARNING, logger="turbovid.attention"):
        out = sla_kernel.sla_forward(q, k, v, 0.5, w, b, 64, 64, config=cfg)
        again = sla_kernel.sla_forward(q, k, v, 0.5, w, b, 64, 64, config=cfg)
    _check_kernel(out, q, k, v, 0.5, w, b, 64, 64)
    assert torch.equal(out, again) and len(calls) == 1
    warnings = [r.getMessage() for r in caplog.records if "Gluon attention kernel failed" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError: no Gluon here" in warnings[0] and "second line" not in warnings[0]
