"""The block map's key pass: the tensor-core variants (blockmap._key_pass_tc_kernel: "tc", "tc_lean",
with pointer loads or tensor descriptors) against the shipped kernel and PyTorch formulas, in the
CPU interpreter (fp16 inputs: its dot on bf16 is not exact), and the block lists they lead to."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported

import pytest  # noqa: E402
from attention_helpers import interpreted_kernels, outlier_qkv, random_qkv  # noqa: E402

from turbovid.ops.attention import sla_reference as ref  # noqa: E402

VARIANTS = [("tc", False), ("tc", True), ("tc_lean", False), ("tc_lean", True)]  # (key_variant, key_tma)
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


@pytest.mark.parametrize("variant, tma", VARIANTS)
@pytest.mark.parametrize("B, L, H, D, blkk, linear, v_absmax, chb", SHAPES)
def test_key_pass_variant_matches_shipped_and_reference(blockmap, variant, tma, B, L, H, D, blkk, linear, v_absmax, chb):
    k, v = outlier_qkv(B, L, H, D, seed=L)[1:] if D == 128 else random_qkv(B, L, H, D, seed=L)[1:]
    cfg = blockmap.StatsConfig(key_variant=variant, key_tma=tma)
    ship = blockmap.key_pass(k, v, blkk, linear, v_absmax, False, blockmap.StatsConfig(), chb)
    got = blockmap.key_pass(k, v, blkk, linear, v_absmax, False, cfg, chb)
    names = ("pk", "k_sum", "phi_sum", "kv", "v_max")
    ship, got = dict(zip(names, ship)), dict(zip(names, got))
    assert (got["phi_sum"] is None) == (not linear) and (got["v_max"] is None) == (not v_absmax)
    # the same sums in another order: float32 rounding apart; max|V| exactly
    torch.testing.assert_close(got["pk"], ship["pk"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["k_sum"].sum(1), ship["k_sum"].sum(1), rtol=1e-6, atol=1e-5)
    if v_absmax:
        assert torch.equal(got["v_max"].amax(1), ship["v_max"].amax(1))
    if linear:  # phi by a reciprocal per row, not a division per element: fp16 phi may round apart
        torch.testing.assert_close(got["phi_sum"].sum(1), ship["phi_sum"].sum(1), rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(got["kv"].sum(1), ship["kv"].sum(1), rtol=1e-3, atol=1e-3)
    want = _expected(k, v, blkk)
    torch.testing.assert_close(got["pk"].double(), want["pk"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["k_sum"].sum(1).double(), want["k_sum"], rtol=1e-5, atol=1e-4)
    if v_absmax:
        torch.testing.assert_close(got["v_max"].amax(1).double(), want["v_max"], rtol=0, atol=0)
    if linear:
        torch.testing.assert_close(got["phi_sum"].sum(1).double(), want["phi_sum"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got["kv"].sum(1).double(), want["kv"], rtol=1e-2, atol=L * 2e-3)


@pytest.mark.parametrize("variant, tma", VARIANTS)
def test_block_stats_with_variant_keeps_the_block_lists(blockmap, variant, tma):
    cfg = blockmap.StatsConfig(key_variant=variant, key_tma=tma)
    for B, L, H, D, blkq, blkk, inputs in [(2, 300, 2, 64, 128, 64, random_qkv), (1, 333, 2, 128, 64, 128, outlier_qkv)]:
        q, k, v = inputs(B, L, H, D, seed=L + 2)
        for topk in (0.3, 0.6):
            got = blockmap.block_stats(q, k, v, topk, blkq, blkk, v_absmax=True, cfg=cfg)
            ship = blockmap.block_stats(q, k, v, topk, blkq, blkk, v_absmax=True)
            assert torch.equal(got.lut, ship.lut)
            assert torch.equal(got.lut.view(B, H, -1, got.kk), ref.block_map(q, k, topk, blkq, blkk))
            assert torch.equal(got.v_absmax, ship.v_absmax)
            torch.testing.assert_close(got.k_mean, ship.k_mean, rtol=1e-6, atol=1e-6)
        # head-major copies of K and V, zero past L
        copies = blockmap.block_stats(q, k, v, 0.3, blkq, blkk, kv_copy=True, cfg=cfg)
        nk = -(-L // blkk)
        for copy, x in ((copies.k_copy, k), (copies.v_copy, v)):
            assert copy.shape == (B * H, nk * blkk, D)
            assert torch.equal(copy.view(B, H, -1, D)[:, :, :L], x.transpose(1, 2))
            assert not copy.view(B, H, -1, D)[:, :, L:].any()


@pytest.mark.parametrize("variant", ["tc", "tc_lean"])
def test_key_pass_reads_strided_v(blockmap, variant):
    # V as the model hands it over: a slice of the fused q/k/v projection (row stride 3C), batch 2
    B, L, H, D = 2, 150, 2, 64
    qkv = random_qkv(B, L, 3 * H, D, seed=11)[0].view(B, L, 3, H, D)
    k, v = qkv[:, :, 1], qkv[:, :, 2]
    assert blockmap._tma_view(v) and not v.is_contiguous()
    dense = blockmap.key_pass(k.contiguous(), v.contiguous(), 64, True, True, False, blockmap.StatsConfig(), 2)
    for tma in (False, True):
        got = blockmap.key_pass(k, v, 64, True, True, False, blockmap.StatsConfig(key_variant=variant, key_tma=tma), 2)
        for a, b in zip(got[:5], dense):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_key_launch_per_variant(blockmap):
    cfg = blockmap.StatsConfig
    assert blockmap.key_launch(128, cfg()) == blockmap.key_launch(128, cfg(key_variant="tc")) == (8, 1)
    assert blockmap.key_launch(64, cfg()) == blockmap.key_launch(64, cfg(key_variant="tc")) == (4, 2)
    assert blockmap.key_launch(128, cfg(key_variant="tc_lean")) == blockmap.key_launch(64, cfg(key_variant="tc_lean")) == (8, 2)
    assert blockmap.key_launch(128, cfg(key_variant="tc_lean", key_warps=4, programs_per_sm=3)) == (4, 3)
    with pytest.raises(ValueError, match="key_variant"):
        blockmap.key_launch(128, cfg(key_variant="fast"))
