"""WanDiT on tiny configs (CPU, float32): parity with diffusers, RoPE vs TurboDiffusion, dispatch, inputs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import turbovid.models.dit as dit
from helpers_ckpt import TINY, diffusers_model, random_official_sd, random_proj_l
from turbovid.loading.dit import build_dit
from turbovid.ops.attention import BACKENDS, Backend, dense_attention, register_backend


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def weights():
    return random_official_sd(TINY, torch.float32, seed=0)


@pytest.fixture(scope="module")
def model(weights):
    m = dit.WanDiT(TINY).eval()
    missing, unexpected = m.load_state_dict(weights, strict=False)
    # official names assign directly; only SLA's proj_l is ours alone
    assert not unexpected and all(".proj_l." in k for k in missing) and len(missing) == 2 * TINY.num_layers
    return m


def inputs(b=2, t=3, h=6, w=8, ctx_len=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 16, t, h, w, generator=g), torch.tensor([999.7, 250.3][:b]),
            torch.randn(b, ctx_len, TINY.text_dim, generator=g))


def test_parameter_names_are_the_official_ones(model):
    from helpers_ckpt import official_shapes

    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if ".proj_l." not in k}
    assert ours == official_shapes(TINY)
    p = model.blocks[0].self_attn.proj_l
    assert p.weight.dtype == torch.float32 and p.weight.shape == (TINY.head_dim, TINY.head_dim)


@torch.no_grad()
def test_matches_diffusers(weights, model):
    # Same random weights in diffusers' WanTransformer3DModel (renamed by diffusers' own converter).
    # Most of the 4e-6 gap is the timestep sinusoid: Wan (and we) form it in float64, diffusers in
    # float32 (angles up to 1000 rad lose ~6e-5); with a float32 sinusoid the gap is ~4e-7.
    ref = diffusers_model(TINY, weights)
    x, t, ctx = inputs()
    ctx_padded = F.pad(ctx, (0, 0, 0, TINY.text_len - ctx.shape[1]))  # diffusers' pipeline pads; we pad inside
    want = ref(x, t, ctx_padded, return_dict=False)[0]
    got = model(x, t, ctx)
    assert got.shape == x.shape and got.dtype == torch.float32
    assert rel_l2(got, want) < 1e-5


@torch.no_grad()
def test_batch_items_are_independent_and_context_padding_is_internal(model):
    x, t, ctx = inputs()
    both = model(x, t, ctx)
    one = model(x[1:], t[1:], ctx[1:])
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-6)
    padded = model(x, t, F.pad(ctx, (0, 0, 0, TINY.text_len - ctx.shape[1])))
    torch.testing.assert_close(both, padded, rtol=1e-5, atol=1e-6)
    # one timestep value broadcasts over the batch
    torch.testing.assert_close(model(x, t[:1], ctx), model(x, t[:1].expand(2), ctx))


def turbodiffusion_rope_angles(head_dim: int, t: int, h: int, w: int) -> torch.Tensor:
    """Angles as TurboDiffusion's VideoRopePosition3DEmb forms them (float32, theta 10000, no NTK).

    Split: dim_h = dim_w = head_dim // 6 * 2 real dims, dim_t = head_dim - 2 * dim_h; each part's
    frequencies are 1 / 10000 ** (arange(0, dim_x, 2) / dim_x); positions are 0..n-1 along its axis.
    """
    dim_h = head_dim // 6 * 2
    dim_t = head_dim - 2 * dim_h
    ladder = lambda d: 1.0 / 10000.0 ** (torch.arange(0, d, 2)[: d // 2].float() / d)  # noqa: E731
    ft = torch.outer(torch.arange(t).float(), ladder(dim_t))
    fh = torch.outer(torch.arange(h).float(), ladder(dim_h))
    fw = torch.outer(torch.arange(w).float(), ladder(dim_h))
    grid = torch.cat([
        ft[:, None, None].expand(t, h, w, -1), fh[None, :, None].expand(t, h, w, -1),
        fw[None, None, :].expand(t, h, w, -1),
    ], dim=-1)
    return grid.reshape(t * h * w, head_dim // 2)


@pytest.mark.parametrize("grid", [(21, 30, 52), (21, 45, 80)])  # 480p and 720p latents after 1x2x2 patches
def test_rope_matches_turbodiffusion_at_used_sizes(grid):
    cos, sin = dit.rope_tables(*grid, head_dim=128)
    ang = turbodiffusion_rope_angles(128, *grid)
    # float32 angles (TurboDiffusion) vs float64 (Wan, us): largest angle 79 rad -> < 1e-5 apart
    torch.testing.assert_close(cos, torch.cos(ang), rtol=0, atol=2e-5)
    torch.testing.assert_close(sin, torch.sin(ang), rtol=0, atol=2e-5)


def test_rope_split_follows_wan():
    # Wan: c = head_dim/2 complex pairs split as c - 2*(c//3), c//3, c//3 for time, height, width.
    cos, sin = dit.rope_tables(2, 3, 4, head_dim=128)
    ang = torch.atan2(sin, cos).view(2, 3, 4, 64).double()
    # position 0 along an axis gives zero angles in exactly that axis's pairs
    assert torch.all(ang[0, :, :, :22] == 0) and torch.any(ang[1, :, :, :22] != 0)
    assert torch.all(ang[:, 0, :, 22:43] == 0) and torch.any(ang[:, 1, :, 22:43] != 0)
    assert torch.all(ang[:, :, 0, 43:] == 0) and torch.any(ang[:, :, 1, 43:] != 0)
    # time ladder of 44 real dims: 1/10000^(2i/44)
    torch.testing.assert_close(ang[1, 0, 0, :22], 1.0 / 10000 ** (torch.arange(0, 44, 2).double() / 44))


def test_rmsnorm_rope_rotates_interleaved_pairs():
    x = torch.randn(1, 3, 8)  # 2 heads of 4 -> 2 pairs each
    w = torch.ones(8)
    cos, sin = torch.cos(torch.ones(3, 2)), torch.sin(torch.ones(3, 2))
    out = dit.OPS.rmsnorm_rope(x, w, cos, sin)
    n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    z = torch.view_as_complex(n.view(1, 3, 2, 2, 2)) * torch.polar(torch.ones(()), torch.ones(()))
    torch.testing.assert_close(out, torch.view_as_real(z).reshape(1, 3, 8))


@torch.no_grad()
def test_self_attention_goes_through_dispatch_with_proj_l(model, monkeypatch):
    seen = []

    def spy(q, k, v, *, topk, proj_weight, proj_bias):
        seen.append((q.shape, k.shape, topk, proj_weight, proj_bias))
        return dense_attention(q, k, v)

    monkeypatch.setitem(BACKENDS, "spy", Backend("spy", spy))
    x, t, ctx = inputs()
    want = model(x, t, ctx)
    try:
        model.set_attention("spy", topk=0.25)
        assert model.attention_backend == "spy"
        got = model(x, t, ctx)
    finally:
        model.set_attention("dense", topk=0.1)
    torch.testing.assert_close(got, want)
    assert len(seen) == TINY.num_layers  # self-attention only; cross-attention stays dense
    l = 3 * 3 * 4
    for i, (qs, ks, topk, pw, pb) in enumerate(seen):
        assert qs == ks == (2, l, TINY.num_heads, TINY.head_dim) and topk == 0.25
        assert pw is model.blocks[i].self_attn.proj_l.weight and pb is model.blocks[i].self_attn.proj_l.bias


def test_set_attention_errors_and_auto():
    m = build_dit(TINY)
    with pytest.raises(ValueError, match="unknown attention backend"):
        m.set_attention("flash9")
    with pytest.raises(ValueError, match="sla_topk"):
        m.set_attention("dense", topk=0.0)
    register_backend(Backend("never", dense_attention, lambda device: "needs a unicorn"))
    with pytest.raises(RuntimeError, match="unicorn"):
        m.set_attention("never")
    m.set_attention("auto")
    assert m.attention_backend in ("dense", "sla", "sagesla")


@torch.no_grad()
def test_block_ops_are_one_replaceable_table(model):
    calls = []

    def counting(x, y, gate=None):
        calls.append(x.shape)
        return dit.gated_residual_ref(x, y, gate)

    x, t, ctx = inputs()
    want = model(x, t, ctx)
    dit.set_block_ops(gated_residual=counting)
    try:
        got = model(x, t, ctx)
    finally:
        dit.set_block_ops()
    # per block: the gated FFN residual, plus the two inside add_norm_modulate's reference
    assert len(calls) == 3 * TINY.num_layers
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert dit.OPS.gated_residual is dit.gated_residual_ref
    with pytest.raises(ValueError, match="unknown block op"):
        dit.set_block_ops(fused_everything=counting)


@torch.no_grad()
def test_bf16_weights_keep_float32_where_the_reference_does(weights):
    m32 = dit.WanDiT(TINY).eval()
    m32.load_state_dict({**weights, **random_proj_l(TINY)})
    m16 = dit.WanDiT(TINY).eval()
    m16.load_state_dict({**weights, **random_proj_l(TINY)})
    m16.to(torch.bfloat16)
    x, t, ctx = inputs()
    seen = {}
    # (hooks return None so they only observe)
    # a block returns (x, (y, gate)): the stream and its pending FFN update
    m16.blocks[0].register_forward_hook(lambda mod, a, out: seen.update(x=out[0].dtype, y=out[1][0].dtype) and None)
    m16.time_projection[1].register_forward_hook(lambda mod, a, out: seen.update(never=out.dtype) and None)
    out = m16(x, t, ctx)
    assert out.dtype == torch.float32 and seen["x"] == seen["y"] == torch.bfloat16  # residual stream in the weights' dtype
    assert "never" not in seen  # time projection runs as a float32 F.linear, not the bf16 module
    assert rel_l2(out, m32(x, t, ctx)) < 0.05


@torch.no_grad()
def test_bad_inputs_raise_one_line_errors(model):
    x, t, ctx = inputs()
    cases = [
        ((x[:, :8], t, ctx), "latents must be"),
        ((x[:, :, :, :5], t, ctx), "multiple of the patch size"),
        ((x, t, torch.randn(2, 513, TINY.text_dim)), "at most 512"),
        ((x, t, torch.randn(2, 4, 7)), "context must be"),
        ((x, torch.tensor([1.0, 2.0, 3.0]), ctx), "timesteps must be"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            model(*args)
    with pytest.raises(ValueError, match="heads"):
        dit.WanDiT(TINY.with_(num_heads=3))


def test_build_dit_is_seeded_cheap_and_finite():
    a = build_dit(TINY, seed=3)
    b = build_dit(TINY, seed=3)
    c = build_dit("tiny-random", dtype=torch.bfloat16, seed=4)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert c.patch_embedding.weight.dtype == torch.bfloat16
    assert c.blocks[0].self_attn.proj_l.weight.dtype == torch.float32
    assert torch.all(c.blocks[0].self_attn.proj_l.weight == 0)
    x, t, ctx = inputs()
    with torch.no_grad():
        out = c(x, t, torch.randn(2, 5, c.cfg.text_dim))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.std() > 0
    w = a.blocks[0].ffn[0].weight
    assert abs(w.std().item() - 0.02) < 0.003 and math.isclose(a.blocks[0].norm3.weight.mean().item(), 1.0)


@torch.no_grad()
def test_a_pending_residual_is_the_same_as_adding_it_first(model):
    """Block / Head with residual=(y, gate) == adding y * gate to x first (one pass fewer per
    block; the reference ops make it bit for bit)."""
    g = torch.Generator().manual_seed(3)
    b, l, c = 2, 12, TINY.dim
    x, y = torch.randn(b, l, c, generator=g), torch.randn(b, l, c, generator=g)
    gate = torch.randn(b, c, generator=g)
    e0 = torch.randn(b, 6, c, generator=g)
    cos, sin = dit.rope_tables(1, 3, 4, TINY.head_dim)
    ctx = torch.randn(b, TINY.text_len, c, generator=g)
    blk = model.blocks[0]
    x1, (y1, g1) = blk(x, e0, cos, sin, ctx, (y, gate))
    x2, (y2, g2) = blk(dit.gated_residual_ref(x, y, gate), e0, cos, sin, ctx)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(g1, g2)
    e = torch.randn(b, c, generator=g)
    assert torch.equal(model.head(x, e, (y, gate)), model.head(dit.gated_residual_ref(x, y, gate), e))
    assert not torch.equal(model.head(x, e, (y, gate)), model.head(x, e))
