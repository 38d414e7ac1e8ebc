"""load_dit on synthesized checkpoints in every public layout, plus every bad-input case."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers_ckpt import (
    TINY, official_config, random_official_sd, random_proj_l, save_pth, turbodiffusion_quant_sd,
    turbodiffusion_sd, write_diffusers, write_official,
)
from interpreter_helpers import run_fresh
from turbovid import load_dit
from turbovid.loading.common import CheckpointError
from turbovid.loading.dit import detect_format
from turbovid.models.dit import WanDiT
from turbovid.ops.quant.int8 import Int8Linear, dequantize_blockwise, quantize_blockwise


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def sd():
    return random_official_sd(TINY, torch.float32, seed=0)


@pytest.fixture(scope="module")
def sd_bf16():
    return random_official_sd(TINY, torch.bfloat16, seed=5)


@pytest.fixture(scope="module")
def proj_l():
    return random_proj_l(TINY)


def reference(weights, proj=None) -> WanDiT:
    """Our model with the weights assigned by name (no loader involved), float32."""
    m = WanDiT(TINY).eval()
    full = {k: v.float() for k, v in weights.items()}
    full.update(proj or {k: torch.zeros_like(v) for k, v in random_proj_l(TINY).items()})
    m.load_state_dict(full, strict=True)
    return m


def run(m, b=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 16, 2, 4, 6, generator=g)
    ctx = torch.randn(b, 7, TINY.text_dim, generator=g)
    with torch.no_grad():
        return m(x, torch.tensor([900.0, 30.5][:b]), ctx)


# ---- formats ---------------------------------------------------------------------------------


def test_official_single_file_with_config(tmp_path, sd):
    folder = write_official(tmp_path / "Wan2.1-T2V-tiny", sd)
    for path in (folder, folder / "diffusion_pytorch_model.safetensors"):  # folder or the file inside it
        m = load_dit(path)
        assert m.cfg == TINY and m.patch_embedding.weight.dtype == torch.float32
        assert torch.equal(run(m), run(reference(sd)))


def test_official_shards_bf16_and_dtype_override(tmp_path, sd_bf16):
    folder = write_official(tmp_path / "sharded", sd_bf16, shards=3)
    m = load_dit(folder)
    assert m.patch_embedding.weight.dtype == torch.bfloat16  # dtype=None keeps the checkpoint's
    assert m.blocks[0].self_attn.proj_l.weight.dtype == torch.float32
    m32 = load_dit(folder, dtype=torch.float32)
    assert torch.equal(run(m32), run(reference(sd_bf16)))


def test_turbodiffusion_pth(tmp_path, sd_bf16, proj_l):
    # TurboWan2.1-T2V-*.pth: bf16, Linear patch embedding, proj_l under attn_op.local_attn
    raw = turbodiffusion_sd(sd_bf16, proj_l)
    assert raw["patch_embedding.weight"].shape == (TINY.dim, 16 * 1 * 2 * 2)
    path = save_pth(tmp_path / "TurboWan.pth", raw)
    assert detect_format(dict(raw), path) == "turbodiffusion"
    m = load_dit(path, model=TINY, dtype=torch.float32)
    for i in range(TINY.num_layers):
        assert torch.equal(m.blocks[i].self_attn.proj_l.weight, proj_l[f"blocks.{i}.self_attn.proj_l.weight"])
    assert torch.equal(run(m), run(reference(sd_bf16, proj_l)))
    # the same weights from the official Conv3d layout give the same numbers
    official = load_dit(write_official(tmp_path / "off", sd_bf16), dtype=torch.float32)
    assert torch.equal(run(m), run(official))


def test_turbodiffusion_prefixed_nested_without_proj_l(tmp_path, sd_bf16):
    # a training-style file: {"state_dict": {"net.<name>": ...}}; no SLA weights -> proj_l zeros
    path = save_pth(tmp_path / "ckpt.pt", turbodiffusion_sd(sd_bf16, None, prefix="net."), wrap="state_dict")
    m = load_dit(path, model=TINY)
    assert torch.all(m.blocks[1].self_attn.proj_l.weight == 0) and torch.all(m.blocks[1].self_attn.proj_l.bias == 0)
    assert m.patch_embedding.weight.shape == (TINY.dim, 16, 1, 2, 2)


def test_own_layout_round_trip(tmp_path, sd, proj_l):
    from safetensors.torch import save_file

    m = reference(sd, proj_l)
    save_file(m.state_dict(), str(tmp_path / "turbovid.safetensors"))
    again = load_dit(tmp_path / "turbovid.safetensors", model=TINY)
    assert torch.equal(again.blocks[1].self_attn.proj_l.bias, proj_l["blocks.1.self_attn.proj_l.bias"])
    assert torch.equal(run(again), run(m))


class _QDQLinear(torch.nn.Module):
    """Dequantize-then-matmul reference of a W8A8 linear, written independently of Int8Linear."""

    def __init__(self, q, s, bias):
        super().__init__()
        self.w, self.bias = dequantize_blockwise(q, s), bias.float()

    def forward(self, x):
        x2 = x.reshape(-1, x.shape[-1]).float()
        xq, xs = quantize_blockwise(x2)  # activations: per 128x128 block absmax/128, as TurboDiffusion
        y = dequantize_blockwise(xq, xs) @ self.w.t() + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)


def test_turbodiffusion_quant(tmp_path, sd_bf16, proj_l):
    raw = turbodiffusion_quant_sd(sd_bf16, proj_l)
    assert raw["blocks.0.ffn.0.int8_weight"].dtype == torch.int8 and raw["blocks.0.ffn.0.scale"].dtype == torch.float32
    assert raw["blocks.0.ffn.0.scale"].shape == (1, 1) and raw["blocks.0.self_attn.norm_q.weight"].dtype == torch.float32
    path = save_pth(tmp_path / "TurboWan-quant.pth", raw)
    m = load_dit(path, model=TINY, dtype=torch.float32)

    lin = m.blocks[1].cross_attn.v
    assert isinstance(lin, Int8Linear) and lin.int8_weight.dtype == torch.int8  # int8 in memory
    assert torch.equal(lin.int8_weight, raw["blocks.1.cross_attn.v.int8_weight"])
    assert torch.equal(lin.scale, raw["blocks.1.cross_attn.v.scale"]) and lin.scale.dtype == torch.float32
    assert isinstance(m.blocks[0].self_attn.proj_l, torch.nn.Linear)  # proj_l never quantized
    assert not isinstance(m.time_projection[1], Int8Linear)  # only linears inside blocks

    # reference: dense model whose block linears are dequantize-then-matmul layers
    ref = reference(sd_bf16, proj_l)
    for i, blk in enumerate(ref.blocks):
        for name in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                     "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"):
            parent, _, attr = name.rpartition(".")
            k = f"blocks.{i}.{name}."
            setattr(blk.get_submodule(parent), attr,
                    _QDQLinear(raw[k + "int8_weight"], raw[k + "scale"], raw[k + "bias"]))
    assert torch.equal(run(m), run(ref))

    # quant="none": plain Linears holding the dequantized weights
    dq = load_dit(path, model=TINY, dtype=torch.float32, quant="none")
    w = dq.blocks[1].cross_attn.v.weight
    assert isinstance(dq.blocks[1].cross_attn.v, torch.nn.Linear)
    assert torch.equal(w, dequantize_blockwise(raw["blocks.1.cross_attn.v.int8_weight"], raw["blocks.1.cross_attn.v.scale"]))
    assert rel_l2(run(m), run(dq)) < 0.05  # activation quantization is the only difference


def test_quantize_on_load(tmp_path, sd):
    m = load_dit(write_official(tmp_path / "o", sd), quant="int8")
    assert isinstance(m.blocks[0].ffn[0], Int8Linear) and isinstance(m.blocks[0].self_attn.proj_l, torch.nn.Linear)
    assert rel_l2(run(m), run(reference(sd))) < 0.05


def test_diffusers_folder_matches_diffusers_and_official(tmp_path, sd):
    ref = write_diffusers(tmp_path / "Wan2.1-T2V-tiny-Diffusers", TINY, sd)
    assert json.loads((tmp_path / "Wan2.1-T2V-tiny-Diffusers/transformer/config.json").read_text())["_class_name"] \
        == "WanTransformer3DModel"
    for path in (tmp_path / "Wan2.1-T2V-tiny-Diffusers", tmp_path / "Wan2.1-T2V-tiny-Diffusers/transformer"):
        m = load_dit(path)
        assert m.cfg.dim == TINY.dim and m.cfg.num_heads == TINY.num_heads
        got = run(m)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 2, 4, 6, generator=g)
    ctx = torch.randn(2, 7, TINY.text_dim, generator=g)
    with torch.no_grad():
        want = ref(x, torch.tensor([900.0, 30.5]), F.pad(ctx, (0, 0, 0, 505)), return_dict=False)[0]
    assert rel_l2(got, want) < 1e-5
    assert torch.equal(got, run(reference(sd)))


def test_architecture_from_shapes_without_config(tmp_path):
    cfg = TINY.with_(dim=256, num_heads=2, ffn_dim=64, num_layers=1)  # 128-wide heads as in Wan2.1
    sd = random_official_sd(cfg)
    path = write_official(tmp_path / "noconf", sd, cfg=None) / "diffusion_pytorch_model.safetensors"
    m = load_dit(path)
    assert m.cfg == cfg


# ---- errors ----------------------------------------------------------------------------------


def test_missing_and_truncated_files(tmp_path, sd, sd_bf16):
    with pytest.raises(CheckpointError, match="nope.safetensors: file not found"):
        load_dit(tmp_path / "nope.safetensors")
    good = write_official(tmp_path / "t", sd) / "diffusion_pytorch_model.safetensors"
    data = good.read_bytes()
    cut = tmp_path / "cut" / "model.safetensors"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: .*(truncated|corrupt)"):
        load_dit(cut, model=TINY)
    pth = save_pth(tmp_path / "p" / "x.pth", turbodiffusion_sd(sd_bf16))
    raw = pth.read_bytes()
    pth.write_bytes(raw[: len(raw) - 3000])
    with pytest.raises(CheckpointError, match=r"x.pth: .*(truncated|corrupt)"):
        load_dit(pth, model=TINY)


def test_folder_errors(tmp_path, sd):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: no weight files"):
        load_dit(tmp_path / "empty")
    folder = write_official(tmp_path / "sh", sd, shards=2)
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="00002-of-00002.safetensors: shard listed"):
        load_dit(folder)


def test_keys_matching_no_format(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "t5.safetensors"
    save_file({"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(CheckpointError, match=r"t5.safetensors: keys match no Wan2.1 DiT layout .*blocks.0.self_attn.q.weight"):
        load_dit(path)


def test_shape_contradicting_the_preset(tmp_path, sd):
    path = write_official(tmp_path / "o", sd, cfg=None) / "diffusion_pytorch_model.safetensors"
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model.safetensors: .*model='Wan2.1-1.3B'.*dim=64 \(expected 1536\)"):
        load_dit(path, model="Wan2.1-1.3B")
    odd = TINY.with_(dim=96, num_heads=2, num_layers=1)  # dim 96: no preset and not a multiple of 128
    path96 = write_official(tmp_path / "odd", random_official_sd(odd), cfg=None)
    with pytest.raises(CheckpointError, match="odd: cannot tell the head count of a dim=96 model"):
        load_dit(path96)
    folder = write_official(tmp_path / "c", sd)
    with pytest.raises(CheckpointError, match="config.json: contradicts model='Wan2.1-14B'"):
        load_dit(folder, model="Wan2.1-14B")
    bad = official_config(TINY) | {"num_layers": 3}
    (folder / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"num_layers=2 \(expected 3\)"):
        load_dit(folder)
    (folder / "config.json").write_text(json.dumps(bad | {"model_type": "i2v"}))
    with pytest.raises(CheckpointError, match="image-to-video"):
        load_dit(folder)


def test_missing_tensor_and_bad_arguments(tmp_path, sd):
    partial = {k: v for k, v in sd.items() if k != "blocks.1.norm3.bias"}
    with pytest.raises(CheckpointError, match="1 missing keys"):
        load_dit(write_official(tmp_path / "p", partial))
    with pytest.raises(ValueError, match="quant must be"):
        load_dit(tmp_path / "p", quant="fp4")
    with pytest.raises(ValueError, match="unknown model"):
        load_dit(tmp_path / "p" / "diffusion_pytorch_model.safetensors", model="Wan9")


# ---- memory ----------------------------------------------------------------------------------

_RSS_SCRIPT = textwrap.dedent(
    """
    import gc, sys, torch
    from turbovid.configs import DiTConfig
    from turbovid.loading.common import read_state_dict
    from turbovid.loading.dit import load_dit
    from turbovid.models.dit import WanDiT

    def rss_now():  # resident set size in bytes
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    def peak():  # VmHWM: high-water mark of the resident set
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    def reset_peak():  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    def touch(m):  # make every weight page resident
        return sum(float(t.sum()) for t in m.state_dict().values())

    path = sys.argv[1]
    cfg = DiTConfig(dim=384, ffn_dim=1536, num_heads=3, num_layers=4, text_dim=384)
    # warm-up: torch's first random op maps ~180 MB of libraries once, whatever the model size
    with torch.device("meta"):
        WanDiT(DiTConfig(dim=64, ffn_dim=64, num_heads=2, num_layers=1))

    reset_peak(); before = rss_now()
    m = load_dit(path)
    touch(m)
    print(peak() - before)
    del m; gc.collect()

    # the naive way: allocate a real model, then copy the checkpoint into it
    reset_peak(); before = rss_now()
    m = WanDiT(cfg)
    sd, _ = read_state_dict(path)
    m.load_state_dict({**sd, **{k: v for k, v in m.state_dict().items() if "proj_l" in k}})
    del sd
    touch(m)
    print(peak() - before)
    """
)


def test_meta_build_and_assign_do_not_double_peak_ram(tmp_path):
    # How: in a fresh process we reset the kernel's resident-set high-water mark (VmHWM, via
    # /proc/self/clear_refs) just before loading, load a ~40 MB float32 checkpoint, touch every weight
    # so it is resident, and read VmHWM - RSS_before. load_dit builds on the meta device and assigns
    # the tensors read from the file, so the peak grows by ~1x the weights; the naive path
    # (allocate a real model, then copy the state dict in) is measured the same way and must show ~2x,
    # which proves the probe can see a doubling.
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset the peak RSS")
    from turbovid.configs import DiTConfig

    cfg = DiTConfig(dim=384, ffn_dim=1536, num_heads=3, num_layers=4, text_dim=384)
    sd = random_official_sd(cfg, torch.float32)
    size = sum(v.numel() * v.element_size() for v in sd.values())
    path = write_official(tmp_path / "big", sd, cfg=cfg) / "diffusion_pytorch_model.safetensors"
    del sd
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path)], capture_output=True, text=True,
                         cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    ours, naive = (int(v) / size for v in out.stdout.split()[-2:])
    assert ours < 1.3, (ours, naive)
    assert naive > 1.7, (ours, naive)


def test_building_on_meta_draws_nothing():
    # every checkpoint load builds the model on the meta device: a random draw there imports sympy
    # (PyTorch's Python reference ops), ~0.4 s of each CLI run; off meta the modulation is still random
    code = (
        "import sys, torch\n"
        "from turbovid.models.dit import WanDiT\n"
        "from turbovid.configs import DIT_PRESETS\n"
        "with torch.device('meta'):\n"
        "    WanDiT(DIT_PRESETS['Wan2.1-1.3B'])\n"
        "assert 'sympy' not in sys.modules, 'a meta build imported sympy'\n"
        "m = WanDiT(DIT_PRESETS['tiny-random'])\n"
        "s = m.blocks[0].modulation.std().item() * m.cfg.dim ** 0.5\n"
        "assert 0.7 < s < 1.3 and m.head.modulation.abs().sum() > 0, s\n"
        "print('ok')\n"
    )
    assert "ok" in run_fresh(code, timeout=120)
