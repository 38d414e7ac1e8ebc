"""The block map's key pass (blockmap._key_pass_kernel, with pointer loads or tensor descriptors)
against float64 PyTorch formulas in the CPU interpreter (fp16 inputs: its dot on bf16 is not
exact), the block lists it leads to against the reference block map, and its launch rule."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported

import pytest  # noqa: E402
from attention_helpers import interpreted_kernels, outlier_qkv, random_qkv  # noqa: E402

from turbovid.ops.attention import sla_reference as ref  # noqa: E402

SHAPES = [  # (B, L, H, D, blkk, linear, v_absmax, chb): ragged L, batch 2, both blocks and head dims;
    # chb 2 cuts rows into several chunks, the last running past the last key block (None: the launch rule)
    (2, 300, 2, 64, 64, True, False, 2),
    (2, 333, 1, 128, 128, True, True, 2),
    (1, 200, 2, 128, 64, True, True, None),
    (1, 290, 2, 64, 128, False, True, 1),
]


@pytest.fixture(scope="module")
def blockmap():
    with interpreted_kernels():
        from turbovid.ops.attention import blockmap

        yield blockmap


def _expected(k: torch.Tensor, v: torch.Tensor, blkk: int) -> dict[str, torch.Tensor]:
    """float64 statistics of K and V per (b, h) row: pooled K, sum K, sum phi(K), phi(K)^T V, max|V|."""
    B, L, H, D = k.shape
    kf, vf = (x.double().transpose(1, 2).reshape(B * H, L, D) for x in (k, v))
    phi = torch.softmax(kf, -1)
    return dict(pk=ref.mean_pool(kf[None], blkk)[0], k_sum=kf.sum(1), phi_sum=phi.sum(1),
                kv=phi.transpose(-1, -2) @ vf, v_max=vf.abs().amax(1))


def _assert_matches_formulas(got: tuple, k: torch.Tensor, v: torch.Tensor, blkk: int, linear: bool, v_absmax: bool):
    """key_pass's outputs, chunk partials reduced, against the float64 statistics."""
    L = k.shape[1]
    got = dict(zip(("pk", "k_sum", "phi_sum", "kv", "v_max"), got))
    assert (got["phi_sum"] is None) == (not linear) and (got["v_max"] is None) == (not v_absmax)
    want = _expected(k, v, blkk)
    torch.testing.assert_close(got["pk"].double(), want["pk"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["k_sum"].sum(1).double(), want["k_sum"], rtol=1e-5, atol=1e-4)
    if v_absmax:
        torch.testing.assert_close(got["v_max"].amax(1).double(), want["v_max"], rtol=0, atol=0)
    if linear:
        torch.testing.assert_close(got["phi_sum"].sum(1).double(), want["phi_sum"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got["kv"].sum(1).double(), want["kv"], rtol=1e-2, atol=L * 2e-3)


@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("B, L, H, D, blkk, linear, v_absmax, chb", SHAPES)
def test_key_pass_matches_formulas(blockmap, tma, B, L, H, D, blkk, linear, v_absmax, chb):
    k, v = outlier_qkv(B, L, H, D, seed=L)[1:] if D == 128 else random_qkv(B, L, H, D, seed=L)[1:]
    got = blockmap.key_pass(k, v, blkk, linear, v_absmax, False, blockmap.StatsConfig(key_tma=tma), chb)
    _assert_matches_formulas(got, k, v, blkk, linear, v_absmax)


def test_key_pass_rows_of_a_whole_block(blockmap):
    # key_rows = blkk: one step per key block (no slices summed in the accumulator)
    k, v = outlier_qkv(2, 333, 1, 128, seed=3)[1:]
    got = blockmap.key_pass(k, v, 64, True, True, False, blockmap.StatsConfig(key_rows=64), 2)
    _assert_matches_formulas(got, k, v, 64, True, True)


@pytest.mark.parametrize("tma", [False, True])
def test_block_stats_keeps_the_block_lists(blockmap, tma):
    cfg = blockmap.StatsConfig(key_tma=tma)
    for B, L, H, D, blkq, blkk, inputs in [(2, 300, 2, 64, 128, 64, random_qkv), (1, 333, 2, 128, 64, 128, outlier_qkv)]:
        q, k, v = inputs(B, L, H, D, seed=L + 2)
        kf = k.double().transpose(1, 2).reshape(B * H, L, D)
        for topk in (0.3, 0.6):
            got = blockmap.block_stats(q, k, v, topk, blkq, blkk, v_absmax=True, cfg=cfg)
            assert torch.equal(got.lut.view(B, H, -1, got.kk), ref.block_map(q, k, topk, blkq, blkk))
            assert torch.equal(got.v_absmax.double(), v.double().abs().amax(1).reshape(B * H, D))
            torch.testing.assert_close(got.k_mean.double(), kf.mean(1), rtol=1e-6, atol=1e-6)
        # head-major copies of K and V, zero past L
        copies = blockmap.block_stats(q, k, v, 0.3, blkq, blkk, kv_copy=True, cfg=cfg)
        nk = -(-L // blkk)
        for copy, x in ((copies.k_copy, k), (copies.v_copy, v)):
            assert copy.shape == (B * H, nk * blkk, D)
            assert torch.equal(copy.view(B, H, -1, D)[:, :, :L], x.transpose(1, 2))
            assert not copy.view(B, H, -1, D)[:, :, L:].any()


@pytest.mark.parametrize("tma", [False, True])
def test_key_pass_reads_strided_v(blockmap, tma):
    # V as the model hands it over: a slice of the fused q/k/v projection (row stride 3C), batch 2
    B, L, H, D = 2, 150, 2, 64
    qkv = random_qkv(B, L, 3 * H, D, seed=11)[0].view(B, L, 3, H, D)
    k, v = qkv[:, :, 1], qkv[:, :, 2]
    assert blockmap._tma_view(v) and not v.is_contiguous()
    cfg = blockmap.StatsConfig(key_tma=tma)
    got = blockmap.key_pass(k, v, 64, True, True, False, cfg, 2)
    _assert_matches_formulas(got, k, v, 64, True, True)
    dense = blockmap.key_pass(k.contiguous(), v.contiguous(), 64, True, True, False, cfg, 2)
    for a, b in zip(got, dense):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))


def test_key_launch(blockmap):
    cfg = blockmap.StatsConfig
    assert blockmap.key_launch(cfg()) == (4, 2, None)  # two 4-warp programs an SM fit 255 registers a thread
    assert blockmap.key_launch(cfg(key_warps=8)) == (8, 2, 128)  # two 8-warp programs: under 128
    assert blockmap.key_launch(cfg(key_warps=8, programs_per_sm=1)) == (8, 1, None)  # ptxas's own count, up to 255
    assert blockmap.key_launch(cfg(key_warps=4, programs_per_sm=3)) == (4, 3, 168)
