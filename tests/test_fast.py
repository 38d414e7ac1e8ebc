"""turbovid.fast plumbing on the CPU (the CUDA-graph path itself is covered by tests/test_e2e_gpu.py)."""
from __future__ import annotations

import torch
import torch.nn as nn

from turbovid import fast
from turbovid.loading.dit import build_dit
from turbovid.models import dit as dit_module


def tiny():
    return build_dit("tiny-random", device="cpu", dtype=torch.float32, seed=0)


def test_make_fast_wires_the_fused_ops_and_make_plain_restores_the_references():
    dit = tiny()
    keys = set(dit.state_dict())
    runner = fast.make_fast(dit, fast.FastOptions(graph=False))
    from turbovid.ops import fused

    assert dit_module.OPS.norm_modulate is fused.norm_modulate
    assert dit_module.OPS.rmsnorm_rope is fused.rmsnorm_rope
    assert dit_module.OPS.rmsnorm is fused.rmsnorm
    assert all(isinstance(b.ffn, fast.GeluFFN) for b in dit.blocks)
    assert set(dit.state_dict()) == keys  # checkpoints still load into the fast model
    assert runner is dit  # no graph requested: the model itself
    fast.make_plain(runner)
    assert dit_module.OPS.norm_modulate is dit_module.norm_modulate_ref
    assert not any(isinstance(b.ffn, fast.GeluFFN) for b in dit.blocks)


def test_fast_on_cpu_gives_the_plain_result():
    # On the CPU the fused ops fall back to their references and the FFN stays unfused: same numbers.
    dit = tiny()
    lat, t, ctx = torch.randn(1, 16, 1, 4, 4), torch.tensor([900.0]), torch.randn(1, 5, dit.cfg.text_dim)
    with torch.no_grad():
        plain = dit(lat, t, ctx)
        got = fast.make_fast(dit)(lat, t, ctx)
    fast.make_plain(dit)
    torch.testing.assert_close(got, plain, rtol=1e-6, atol=1e-6)


def test_turbovid_fast_0_leaves_the_model_alone(monkeypatch):
    monkeypatch.setenv("TURBOVID_FAST", "0")
    dit = tiny()
    assert fast.make_fast(dit) is dit
    assert dit_module.OPS.norm_modulate is dit_module.norm_modulate_ref
    assert not any(isinstance(b.ffn, fast.GeluFFN) for b in dit.blocks)


def test_gelu_ffn_matches_the_sequential_it_replaces():
    seq = nn.Sequential(nn.Linear(8, 16), nn.GELU(approximate="tanh"), nn.Linear(16, 8))
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(fast.GeluFFN(*seq)(x), seq(x))


def test_graphed_dit_forwards_attributes_and_runs_eagerly_without_cuda():
    dit = tiny()
    g = fast.GraphedDiT(dit, graph=False)
    assert g.cfg is dit.cfg and g.set_attention.__self__ is dit
    assert list(g.state_dict()) == ["dit." + k for k in dit.state_dict()]  # weights registered once
    lat, t, ctx = torch.randn(1, 16, 1, 4, 4), torch.tensor([10.0]), torch.randn(1, 3, dit.cfg.text_dim)
    with torch.no_grad():
        torch.testing.assert_close(g(lat, t, ctx), dit(lat, t, ctx))
    assert not g._graphs


def test_graph_context_pads_to_one_of_two_lengths(monkeypatch):
    """Prompts of any length map to two context shapes (two graphs): MAX_ROWS rows, where the DiT's
    cross-attention takes the tail kernel, or text_len; zero rows only are added."""
    from turbovid.ops.attention import tail

    monkeypatch.setattr(tail, "MAX_ROWS", 8)
    for rows, want in ((3, 8), (8, 8), (9, 20), (20, 20)):
        ctx = torch.randn(2, rows, 4)
        out = fast.graph_context(ctx, 20)
        assert out.shape == (2, want, 4) and torch.equal(out[:, :rows], ctx) and not out[:, rows:].any()
    assert fast.graph_context(torch.randn(1, 3, 4), 6).shape[1] == 6  # text_len below MAX_ROWS
    too_long = torch.randn(1, 25, 4)
    assert fast.graph_context(too_long, 20) is too_long  # left for the DiT's check to reject


def test_fused_qkv_is_one_gemm_over_views_and_matches_separate_linears():
    dit = tiny()
    keys = set(dit.state_dict())
    attn = dit.blocks[0].self_attn
    x = torch.randn(2, 5, dit.cfg.dim)
    with torch.no_grad():
        want = attn.project_qkv(x)
        assert fast.fuse_qkv(dit) == len(dit.blocks)
        assert isinstance(attn, fast.FusedQKVSelfAttention) and attn._fused_ok()
        w = attn._qkv.weight
        assert w.shape == (3 * dit.cfg.dim, dit.cfg.dim)
        assert attn.k.weight.data_ptr() == w[dit.cfg.dim].data_ptr()  # views: no second copy of the weights
        calls = []
        attn.q.register_forward_hook(lambda *a: calls.append("q"))
        got = attn.project_qkv(x)
    assert not calls  # q/k/v did not run separately
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)
    assert set(dit.state_dict()) == keys


def test_fused_qkv_sees_checkpoints_loaded_later_and_falls_back_when_weights_move():
    dit, other = tiny(), build_dit("tiny-random", device="cpu", dtype=torch.float32, seed=1)
    fast.fuse_qkv(dit)
    dit.load_state_dict(other.state_dict())  # copies into the views, so the fused weight follows
    lat, t, ctx = torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, dit.cfg.text_dim)
    with torch.no_grad():
        torch.testing.assert_close(dit(lat, t, ctx), other(lat, t, ctx), rtol=1e-6, atol=1e-6)
        attn = dit.blocks[0].self_attn
        attn.v.weight.data = attn.v.weight.data.clone() * 2  # no longer a view: the fused GEMM would be stale
        assert not attn._fused_ok()
        x = torch.randn(1, 3, dit.cfg.dim)
        torch.testing.assert_close(attn.project_qkv(x)[2], attn.v(x))
    fast.unfuse_qkv(dit)
    assert type(attn) is dit_module.SelfAttention


def test_make_fast_fuses_qkv_only_for_weights_on_the_gpu():
    # CPU weights are what --offload keeps at home: moved per call, they would leave the fused tensor stale
    dit = tiny()
    fast.make_fast(dit, fast.FastOptions(graph=False))
    assert all(type(b.self_attn) is dit_module.SelfAttention for b in dit.blocks)
    fast.make_plain(dit)


def test_fp8_o_projection_takes_the_attention_output_quantized(monkeypatch):
    """make_fast on an fp8 DiT with sparse attention: the attention backend hands each `o` its
    input as an Fp8Activation (attn_quant), and the velocity is bit-identical to `o` quantizing
    the plain output itself (same rule, same bytes); make_plain turns it off again."""
    from turbovid.ops import attention
    from turbovid.ops.quant import fp8 as fp8_module
    from turbovid.ops.quant import swap_linears_fp8

    monkeypatch.setattr(attention, "_cpu_interpreter", False)  # the reference path
    dit = tiny()
    for blk in dit.blocks:
        swap_linears_fp8(blk, per_tensor=False)
    dit.set_attention("sla", 0.5)
    lat, t, ctx = torch.randn(1, 16, 2, 4, 6), torch.tensor([400.0]), torch.randn(1, 7, dit.cfg.text_dim)
    seen = []
    real = fp8_module.fp8_linear_quantized
    monkeypatch.setattr(fp8_module, "fp8_linear_quantized", lambda *a: seen.append(a[0]) or real(*a))
    with torch.no_grad():
        own = fast.make_fast(dit, fast.FastOptions(act_quant=False, attn_quant=False))(lat, t, ctx)
        assert not seen and not any(blk.self_attn.out_fp8 for blk in dit.blocks)
        fast.make_plain(dit)
        fused = fast.make_fast(dit, fast.FastOptions(act_quant=False))(lat, t, ctx)
        assert all(blk.self_attn.out_fp8 for blk in dit.blocks)
        assert len(seen) == len(dit.blocks)  # one pre-quantized input per block: its o-projection
        fast.make_plain(dit)
        assert not any(blk.self_attn.out_fp8 for blk in dit.blocks)
    assert torch.equal(fused, own)


def test_per_tensor_fp8_dit_fast_path_sets_the_tensor_formats():
    """make_fast on a per-tensor fp8 DiT: the norms quantize per tensor ("fp8-tensor"), the attention
    backend is asked for a per-tensor output (the dense reference here returns bf16, which the o
    layer quantizes by its own amax), q/k/v share one weight scale, and the velocity stays within the
    fp8 error of the same model's plain path."""
    from turbovid.ops.quant import Fp8TensorLinear, swap_linears_fp8

    dit = tiny()
    for blk in dit.blocks:
        swap_linears_fp8(blk, per_tensor=True)
    assert all(isinstance(blk.self_attn.o, Fp8TensorLinear) for blk in dit.blocks)
    lat, t, ctx = torch.randn(1, 16, 2, 4, 6), torch.tensor([400.0]), torch.randn(1, 7, dit.cfg.text_dim)
    with torch.no_grad():
        plain = dit(lat, t, ctx)
        fast_out = fast.make_fast(dit)(lat, t, ctx)
        assert all(blk.act_quant == "fp8-tensor" for blk in dit.blocks)
        assert all(blk.self_attn.out_fp8 == "tensor" for blk in dit.blocks)
        fast.make_plain(dit)
        assert all(blk.act_quant is None for blk in dit.blocks)
    assert torch.isfinite(fast_out).all()
    assert (fast_out - plain).norm() / plain.norm() < 3e-2
