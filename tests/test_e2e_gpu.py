"""GPU smoke test of the fast path (run on the device: `pytest -m gpu tests/test_e2e_gpu.py`).

Random weights at the real 1.3B size: the fused kernels match their references within the
same-dtype bound, the fast DiT (fused kernels + GELU epilogue + CUDA graph) matches the plain
PyTorch path within the kernels' error bound, and the full pipeline makes a finite 480p video.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = pytest.mark.gpu

DEV = "cuda"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def within(out, same_dtype_ref, exact, slack: float = 0.0) -> None:
    err, ref_err = rel(out, exact), rel(same_dtype_ref, exact)
    assert torch.isfinite(out).all()
    assert err <= 2 * ref_err + slack, f"error {err:.3g} > 2 x same-dtype reference error {ref_err:.3g} + {slack}"


@pytest.fixture(autouse=True)
def _fused_on():
    from turbovid.ops import fused

    fused.set_enabled(True)
    yield


def test_fused_kernels_bf16_at_real_width():
    from turbovid.ops import fused
    from turbovid.ops import block_reference as ref

    b, c, f, h, w = 1, 1536, 3, 30, 52
    l = f * h * w
    x = torch.randn(b, l, c, device=DEV, dtype=torch.bfloat16) * 2
    y = torch.randn_like(x)
    shift, scale, gate = (torch.randn(b, c, device=DEV) * 0.3 for _ in range(3))
    wt, bias = torch.randn(c, device=DEV), torch.randn(c, device=DEV)
    assert fused.unavailable_reason(x) is None

    out = fused.norm_modulate(x, shift, scale)
    exact = torch.nn.functional.layer_norm(x.double(), (c,), eps=1e-6) * (1 + scale.double()[:, None]) + shift.double()[:, None]
    within(out, ref.norm_modulate_ref(x, shift, scale), exact)

    new_x, hh = fused.add_norm_modulate(x, y, gate, weight=wt, bias=bias)
    within(new_x, ref.gated_residual_ref(x, y, gate), x.double() + y.double() * gate.double()[:, None])
    exact = torch.nn.functional.layer_norm(new_x.double(), (c,), wt.double(), bias.double(), 1e-6)
    within(hh, ref.norm_modulate_ref(new_x, None, None, wt, bias), exact)

    cos, sin = fused.rope_tables(f, h, w, 128, device=DEV)
    weight = (1 + 0.2 * torch.randn(c, device=DEV)).to(torch.bfloat16)
    out = fused.rmsnorm_rope(x, weight, cos, sin)
    xd = x.double()
    n = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.double()
    e, o = n.view(b, l, 12, 64, 2).unbind(-1)
    cs, sn = cos.double()[None, :, None], sin.double()[None, :, None]
    exact = torch.stack((e * cs - o * sn, e * sn + o * cs), -1).view(b, l, c)
    within(out, ref.rmsnorm_rope_ref(x, weight, cos, sin), exact)
    assert not fused._rope._split_failed, "the split-pairs autotune fell back to strided loads (see the log)"


def test_custom_ops_trace_under_torch_compile():
    from turbovid.ops import fused

    x = torch.randn(1, 256, 1536, device=DEV, dtype=torch.bfloat16)
    s, sh = torch.randn(1, 1536, device=DEV), torch.randn(1, 1536, device=DEV)
    fn = torch.compile(lambda a: fused.norm_modulate(a, sh, s) * 2, fullgraph=True)
    torch.testing.assert_close(fn(x), fused.norm_modulate(x, sh, s) * 2)


def _inputs(cfg, frames=81, res=(60, 104)):
    g = torch.Generator(device=DEV).manual_seed(0)
    t_lat = (frames - 1) // 4 + 1
    lat = torch.randn(1, 16, t_lat, *res, generator=g, device=DEV)
    ctx = torch.randn(1, 77, cfg.text_dim, generator=g, device=DEV)  # a prompt's rows, unpadded (tail kernel)
    return lat, torch.tensor([700.0], device=DEV), ctx


@torch.inference_mode()
def test_fast_dit_matches_plain_within_the_kernels_bound():
    from turbovid.fast import GraphedDiT, make_fast, make_plain
    from turbovid.loading.dit import build_dit

    dit32 = build_dit("Wan2.1-1.3B", device=DEV, dtype=torch.float32, seed=0)
    lat, t, ctx = _inputs(dit32.cfg)
    exact = dit32(lat, t, ctx)  # float32 weights and activations, plain path
    del dit32
    dit = build_dit("Wan2.1-1.3B", device=DEV, dtype=torch.bfloat16, seed=0)
    bf = (lat.bfloat16(), t.bfloat16(), ctx.bfloat16())
    plain = make_plain(dit)(*bf)
    fast_dit = make_fast(dit)
    assert isinstance(fast_dit, GraphedDiT)
    runs = []
    hook = dit.register_forward_hook(lambda *a: runs.append(1))
    fast = fast_dit(*bf)  # eager: compiles, tunes, fills caches
    again = fast_dit(*bf)  # captured, then replayed: same inputs, same numbers
    third = fast_dit(*bf)  # replayed
    hook.remove()
    assert fast_dit._graphs and not fast_dit._eager_keys, "the forward was not captured as a CUDA graph"
    assert torch.equal(fast, again) and torch.equal(again, third)
    assert len(runs) == 2, runs  # the eager call and the capture: no throwaway warm-up forwards
    assert fast.shape == exact.shape == (1, 16, 21, 60, 104) and fast.dtype == torch.float32
    within(fast, plain, exact)
    make_plain(fast_dit)


@torch.inference_mode()
def test_graphed_dit_short_and_long_prompts_two_graphs_one_pool():
    """Prompts up to tail.MAX_ROWS rows replay one graph (tail cross-attention), longer ones a second
    (dense), captured into the first one's memory pool: each still gives its eager result after the
    other ran, and the second capture adds far less memory than the first."""
    from turbovid.fast import make_fast
    from turbovid.loading.dit import build_dit
    from turbovid.ops.attention import tail

    dit = build_dit("Wan2.1-1.3B", device=DEV, dtype=torch.bfloat16, seed=0)
    dit.set_attention("auto")
    runner = make_fast(dit)
    lat, t, _ = _inputs(dit.cfg, frames=21, res=(30, 52))
    lat = lat.bfloat16()
    g = torch.Generator(device=DEV).manual_seed(1)
    ctx = torch.randn(1, 300, dit.cfg.text_dim, generator=g, device=DEV).bfloat16()
    assert 100 < tail.MAX_ROWS < 300
    short, other, long = ctx[:, :77], ctx[:, :100], ctx

    def grown(fn):  # memory the call (a capture) keeps reserved: its pool, static inputs and output
        torch.cuda.empty_cache()  # as the capture itself does first: cached free blocks don't count
        before = torch.cuda.memory_reserved()
        out = fn()
        return out, torch.cuda.memory_reserved() - before

    eager_short = runner(lat, t, short)
    graph_short, first = grown(lambda: runner(lat, t, short))  # captured
    assert torch.equal(graph_short, eager_short) and len(runner._graphs) == 1
    eager_other = runner(lat, t, other)  # 100 rows: padded to MAX_ROWS too, the same graph replays
    assert len(runner._graphs) == 1 and not torch.equal(eager_other, eager_short)
    eager_long = runner(lat, t, long)  # eager (a new key), dense cross-attention
    graph_long, second = grown(lambda: runner(lat, t, long))
    assert len(runner._graphs) == 2 and torch.equal(graph_long, eager_long)
    (g1, *_), (g2, *_) = runner._graphs.values()
    assert g1.pool() == g2.pool()
    assert first > 0 and second < first / 2, (second, first)  # the second fits in the first one's pool
    assert torch.equal(runner(lat, t, short), eager_short)  # the first graph, after the second's capture
    assert torch.equal(runner(lat, t, long), eager_long)
    padded = torch.nn.functional.pad(short, (0, 0, 0, 512 - 77))  # the same prompt, padded by the caller:
    assert torch.isfinite(runner(lat, t, padded)).all() and len(runner._graphs) == 2  # the dense graph


def test_pipeline_480p_random_weights_fast_path():
    # built outside inference mode, as users build them (generate() runs under inference mode itself)
    from turbovid.configs import T5_PRESETS, VAE_PRESETS
    from turbovid.fast import make_fast, make_plain
    from turbovid.loading.dit import build_dit
    from turbovid.models.t5 import build_text_encoder
    from turbovid.models.vae import build_vae
    from turbovid.pipeline import GenerationRequest, Pipeline

    dit = build_dit("Wan2.1-1.3B", device=DEV, dtype=torch.bfloat16, seed=0)
    dit.set_attention("auto")
    t5 = dataclasses.replace(T5_PRESETS["umt5-xxl"], num_layers=2)  # real width, 2 layers: a smoke test
    enc = build_text_encoder(t5, None, device=DEV, dtype=torch.bfloat16)
    vae = build_vae(VAE_PRESETS["wan2.1"], device=DEV, dtype=torch.bfloat16)
    runner = make_fast(dit)
    pipe = Pipeline(runner, enc, vae, device=DEV, dtype=torch.bfloat16, sampler="rcm", model_name="Wan2.1-1.3B")
    result = pipe.generate(GenerationRequest(prompt="a lighthouse in a storm", resolution="480p", num_frames=81, seed=3))
    frames = result.frames
    assert frames.shape == (81, 480, 832, 3) and frames.dtype.name == "uint8"
    assert frames.std() > 0  # random weights still give a non-constant video
    t = result.timings  # stage times from CUDA events (turbovid/clock.py): positive, adding up to the total
    assert len(t["steps"]) == 4 and all(s > 0 for s in t["steps"]) and sum(t["steps"]) <= t["sampling"]
    assert min(t["text_encoding"], t["sampling"], t["vae_decode"]) > 0
    assert t["text_encoding"] + t["sampling"] + t["vae_decode"] == pytest.approx(t["total"], abs=1e-6)
    assert runner._graphs and not runner._eager_keys
    make_plain(runner)


@pytest.mark.parametrize("fmt", ["int8", "fp8", "fp8-tensor"])
@torch.inference_mode()
def test_quantized_ffn_with_the_gelu_fused_into_the_quantization(fmt):
    import torch.nn as nn

    from turbovid.fast import GeluFFN, _quant_kernel_for
    from turbovid.ops.quant import swap_linears, swap_linears_fp8

    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(1536, 8960), nn.GELU(approximate="tanh"), nn.Linear(8960, 1536)).to(DEV, torch.bfloat16)
    x = torch.randn(1, 4096, 1536, device=DEV, dtype=torch.bfloat16)
    exact = seq.float()(x.float())
    seq = seq.bfloat16()
    if fmt == "int8":
        swap_linears(seq)
    else:
        swap_linears_fp8(seq, per_tensor=fmt == "fp8-tensor")
    assert _quant_kernel_for(seq[2], x) is not None  # the fused path is the one that runs
    plain, fused = seq(x), GeluFFN(*seq)(x)
    within(fused, plain, exact)
    assert rel(fused, plain) < 0.1 * rel(plain, exact)  # GELU rounding flips only, far below the quantization error


@torch.inference_mode()
def test_per_tensor_fp8_ffn_with_gelu_and_quantization_in_the_first_gemm():
    """cuBLASLt's GELU-epilogue GEMM writes the hidden layer as e4m3 (fp8.Fp8TensorLinear.forward_gelu):
    the FFN's output is as accurate as the unfused per-tensor path's (GELU + quantization in their own
    pass), which it matches up to hidden values that round to the neighbouring e4m3 step."""
    import torch.nn as nn

    from turbovid.fast import GeluFFN
    from turbovid.ops.quant import swap_linears_fp8
    from turbovid.ops.quant.fp8 import Fp8Activation

    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(1536, 8960), nn.GELU(approximate="tanh"), nn.Linear(8960, 1536)).to(DEV, torch.bfloat16)
    x = torch.randn(1, 4096, 1536, device=DEV, dtype=torch.bfloat16)
    exact = seq.float()(x.float())
    seq = seq.bfloat16()
    swap_linears_fp8(seq, per_tensor=True)
    ffn = GeluFFN(*seq)
    act = Fp8Activation.quantize_per_tensor(x, row_norm=True)
    assert seq[0].forward_gelu(act) is not None  # the fused GEMM is the one that runs
    fused = ffn(act)
    ffn.gemm_epilogue = False
    unfused = ffn(act)
    within(fused, unfused, exact)
    # the unfused path rounds h and GELU(h) to bf16 before quantizing, which moves ~7% of the hidden
    # values to the neighbouring e4m3 step (measured 1.4% apart at the output, against 5.5% error)
    assert rel(fused, exact) <= 1.1 * rel(unfused, exact)
    assert rel(fused, unfused) < 0.5 * rel(unfused, exact)


@torch.inference_mode()
def test_norms_quantize_for_fp8_linears_bit_for_bit(monkeypatch):
    """The norm kernels' fp8 output is the bytes the linear's own quantization makes of h (the
    device's e4m3 conversion), and a fast fp8 DiT gives the same velocity with and without it.

    The two launches must sum each row in the same order for h to be the same, so the bf16-output
    launch is pinned to the quantizing launch's shape (rows per program, warps, row parts)."""
    from turbovid.fast import FastOptions, make_fast, make_plain
    from turbovid.loading.dit import build_dit
    from turbovid.ops import fused
    from turbovid.ops.fused import layernorm_kernel as ln
    from turbovid.ops.quant import int8_triton, swap_linears_fp8

    for c in (1536, 5120):  # the bf16-output launch at the quantizing launch's shape: same sums
        monkeypatch.setitem(ln.LAUNCH, ln.row_parts(c), ln.QUANT_LAUNCH[ln.row_parts(c, quant=True)])
    for c in (1536, 5120):
        b, l = 1, 3000
        x, y = (torch.randn(b, l, c, device=DEV, dtype=torch.bfloat16) * 2 for _ in range(2))
        shift, scale, gate = (torch.randn(b, c, device=DEV) * 0.3 for _ in range(3))
        wt, bias = torch.randn(c, device=DEV), torch.randn(c, device=DEV)
        _, h = fused.add_norm_modulate(x, y, gate, shift, scale, weight=wt, bias=bias)
        _, act = fused.add_norm_modulate(x, y, gate, shift, scale, weight=wt, bias=bias, quant="fp8")
        q, s = int8_triton.quantize_act(h.reshape(-1, c), "fp8")
        assert torch.equal(act.scale, s), c
        assert torch.equal(act.q.reshape(-1, c).view(torch.uint8), q.view(torch.uint8)), c

    dit = build_dit("Wan2.1-1.3B", device=DEV, dtype=torch.bfloat16, seed=0)
    dit.blocks = dit.blocks[:4]
    for blk in dit.blocks:
        swap_linears_fp8(blk, per_tensor=False)
    dit.set_attention("sagesla", 0.1)
    g = torch.Generator(device=DEV).manual_seed(0)
    lat = torch.randn(1, 16, 5, 30, 52, generator=g, device=DEV).bfloat16()
    ctx = torch.randn(1, 512, dit.cfg.text_dim, generator=g, device=DEV).bfloat16()
    t = torch.tensor([500.0], device=DEV)
    own = make_fast(dit, FastOptions(act_quant=False, graph=False))(lat, t, ctx)
    make_plain(dit)
    runner = make_fast(dit, FastOptions(graph=False))
    assert all(blk.act_quant == "fp8" for blk in dit.blocks)
    assert torch.equal(runner(lat, t, ctx), own)
    make_plain(runner)


@torch.inference_mode()
@pytest.mark.parametrize("backend", ["sla", "sagesla"])
def test_attention_quantizes_for_the_fp8_o_projection_bit_for_bit(backend):
    """A fast fp8 DiT whose attention epilogue writes the o-projection's input (attn_quant) gives
    the velocity of the one whose o-projection quantizes the bf16 output itself, bit for bit.
    (Random-weight blocks have a zero proj_l, so sagesla's linear branch adds exact zeros; its
    ulp-level reordering with a real proj_l is bounded in test_attention_gpu.py.)"""
    from turbovid.fast import FastOptions, make_fast, make_plain
    from turbovid.loading.dit import build_dit
    from turbovid.ops.quant import swap_linears_fp8

    dit = build_dit("Wan2.1-1.3B", device=DEV, dtype=torch.bfloat16, seed=0)
    dit.blocks = dit.blocks[:4]
    for blk in dit.blocks:
        swap_linears_fp8(blk, per_tensor=False)
    dit.set_attention(backend, 0.1)
    g = torch.Generator(device=DEV).manual_seed(1)
    lat = torch.randn(1, 16, 5, 30, 52, generator=g, device=DEV).bfloat16()
    ctx = torch.randn(1, 512, dit.cfg.text_dim, generator=g, device=DEV).bfloat16()
    t = torch.tensor([700.0], device=DEV)
    own = make_fast(dit, FastOptions(attn_quant=False, graph=False))(lat, t, ctx)
    assert not any(blk.self_attn.out_fp8 for blk in dit.blocks)
    make_plain(dit)
    runner = make_fast(dit)  # graphed, as the pipeline runs it
    assert all(blk.self_attn.out_fp8 for blk in dit.blocks)
    assert torch.equal(runner(lat, t, ctx), own)
    make_plain(runner)


@torch.inference_mode()
def test_norms_quantize_per_tensor_with_the_modulation_bound(monkeypatch):
    """quant="fp8-tensor" on the device: the bound holds (no value saturates), the bytes are the
    rule applied to the kernel's own h, at both model widths."""
    from turbovid.ops import fused
    from turbovid.ops.fused import layernorm_kernel as ln
    from turbovid.ops.quant import fp8_tensor

    for c in (1536, 5120):  # the bf16-output launch at the quantizing launch's shape: same sums
        monkeypatch.setitem(ln.LAUNCH, ln.row_parts(c), ln.QUANT_LAUNCH[ln.row_parts(c, quant=True)])
    for c in (1536, 5120):
        b, l = 1, 3000
        x, y = (torch.randn(b, l, c, device=DEV, dtype=torch.bfloat16) * 2 for _ in range(2))
        x[0, 5] = 0
        x[0, 5, 17] = 1e4  # a row at the bound's worst case
        shift, scale, gate = (torch.randn(b, c, device=DEV) * 0.3 for _ in range(3))
        wt, bias = torch.randn(c, device=DEV), torch.randn(c, device=DEV)
        _, act = fused.add_norm_modulate(x, y, gate, shift, scale, weight=wt, bias=bias, quant="fp8-tensor")
        # the bf16 h of the same launch shape (its row sums in the same order)
        h = ln.add_norm_modulate_triton(x, y, gate, wt, bias, shift, scale, 1e-6, torch.bfloat16, True, True)[1]
        bound, s = fp8_tensor.ln_bound_reference(c, wt, bias, shift, scale)
        assert torch.equal(act.scale, s), c
        assert h.abs().max() <= bound, c
        q0, _ = fp8_tensor.quantize_with_bound(h, bound)
        assert torch.equal(act.q.view(torch.uint8), q0.view(torch.uint8)), c


@torch.inference_mode()
def test_per_tensor_fp8_dit_is_as_accurate_as_the_block_scaled_one():
    """A fast (graphed) 4-block 1.3B DiT: per-tensor fp8 linears' velocity error against the bf16
    model is within 1.3x the block-scaled fp8 model's, and the fast path matches its own plain path."""
    from turbovid.fast import make_fast, make_plain
    from turbovid.loading.dit import build_dit
    from turbovid.ops.quant import swap_linears_fp8

    g = torch.Generator(device=DEV).manual_seed(2)
    lat = torch.randn(1, 16, 5, 30, 52, generator=g, device=DEV).bfloat16()
    ctx = torch.randn(1, 512, 4096, generator=g, device=DEV).bfloat16()
    t = torch.tensor([600.0], device=DEV)
    out = {}
    for name in ("bf16", "block", "tensor"):
        dit = build_dit("Wan2.1-1.3B", device=DEV, dtype=torch.bfloat16, seed=0)
        dit.blocks = dit.blocks[:4]
        dit.set_attention("sagesla", 0.1)
        if name != "bf16":
            for blk in dit.blocks:
                swap_linears_fp8(blk, per_tensor=name == "tensor")
        if name == "tensor":
            out["tensor_plain"] = dit(lat, t, ctx)
        runner = make_fast(dit)
        runner(lat, t, ctx)
        out[name] = runner(lat, t, ctx).float()
        if name == "tensor":
            assert all(blk.act_quant == "fp8-tensor" for blk in dit.blocks)
        make_plain(runner)
        del dit, runner
    e_block, e_tensor = rel(out["block"], out["bf16"]), rel(out["tensor"], out["bf16"])
    assert torch.isfinite(out["tensor"]).all()
    assert e_tensor < 1.3 * e_block, (e_tensor, e_block)
    assert rel(out["tensor"], out["tensor_plain"]) < e_tensor


def test_uint8_frames_from_a_cuda_video_equal_the_cpu_conversion():
    # the CUDA path copies into page-locked memory; bytes and layout are the CPU path's
    import numpy as np

    from turbovid.io import to_uint8_frames

    video = torch.rand(1, 3, 5, 48, 80, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2
    video[0, 0, 0, 0, :4] = torch.tensor([-1.0, 0.0, 1.0, 0.5])
    out = to_uint8_frames(video.to(DEV))
    assert out.shape == (1, 5, 48, 80, 3) and out.dtype == np.uint8
    assert np.array_equal(out, to_uint8_frames(video))


def test_uint8_frames_fall_back_to_a_pageable_copy(monkeypatch):
    # page-locked memory can be capped: the frames still arrive, through an ordinary copy
    import numpy as np

    from turbovid import io

    video = torch.rand(1, 3, 2, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    real_empty = torch.empty

    def no_pinned(*args, **kwargs):
        if kwargs.get("pin_memory"):
            raise RuntimeError("CUDA error: out of memory (page-locked)")
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(io.torch, "empty", no_pinned)
    assert np.array_equal(io.to_uint8_frames(video.to(DEV)), io.to_uint8_frames(video))


def test_host_frames_stream_chunks_from_the_gpu():
    # chunks copied asynchronously into page-locked memory: after each wait() the sink reads the
    # same bytes as the whole-video conversion, while later chunks are still being produced
    import numpy as np

    from turbovid import io

    video = (torch.rand(2, 3, 9, 64, 96, device=DEV) * 2.4 - 1.2)
    got = []
    frames = io.HostFrames(2, 9, 64, 96, torch.device(DEV), sink=lambda i, f, wait: (wait(), got.append((i, f.copy()))))
    assert frames.host.is_pinned()
    for b in range(2):
        for s, e in [(0, 1), (1, 5), (5, 9)]:
            frames.put(b, s, video[b, :, s:e] * 1.0)  # a temporary, as the decoder's chunks are
    whole = io.to_uint8_frames(video)
    assert [i for i, _ in got] == [0, 0, 0, 1, 1, 1]
    assert all(np.array_equal(np.concatenate([f for i, f in got if i == b]), whole[b]) for b in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(frames.videos(), whole))
    # the pipeline's buffer asked for ahead, on a helper thread: page-locked there too
    ahead = io.HostFrames(2, 9, 64, 96, torch.device(DEV), ahead=io.host_buffer_ahead((2, 9, 64, 96, 3), torch.device(DEV)))
    assert ahead.host.is_pinned()
