"""Synthesizers of tiny Wan2.1 DiT checkpoints in the public layouts (random weights, exact key names).

Key names and shapes are written out here from the reference sources (Wan2.1 wan/modules/model.py,
TurboDiffusion inference/modify_model.py + ops/core.py, diffusers transformer_wan.py), not derived
from turbovid's own model, so loading them tests our names against theirs.

Released dtypes: official Wan2.1 and diffusers DiT safetensors are float32; TurboWan .pth files are
bfloat16 (SLA proj_l float32); -quant.pth files hold int8 block weights, float32 block scales,
float32 norm weights (FastRMSNorm/FastLayerNorm buffers) and bfloat16 for everything else.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from turbovid.configs import DiTConfig
from turbovid.ops.quant.int8 import quantize_blockwise

# head_dim 32, so RoPE's t/h/w split (6/5/5 pairs) is exercised with unequal parts.
TINY = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32)

BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def official_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of an official Wan2.1 T2V DiT state dict (WanModel, model_type 't2v')."""
    d, f = cfg.dim, cfg.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, cfg.in_dim, *cfg.patch_size),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.text_dim), "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d), "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim), "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
        "head.modulation": (1, 2, d),
        "head.head.weight": (math.prod(cfg.patch_size) * cfg.out_dim, d),
        "head.head.bias": (math.prod(cfg.patch_size) * cfg.out_dim,),
    }
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        shapes[p + "modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                shapes[f"{p}{attn}.{lin}.weight"] = (d, d)
                shapes[f"{p}{attn}.{lin}.bias"] = (d,)
            shapes[f"{p}{attn}.norm_q.weight"] = (d,)
            shapes[f"{p}{attn}.norm_k.weight"] = (d,)
        shapes[p + "norm3.weight"] = (d,)
        shapes[p + "norm3.bias"] = (d,)
        shapes[p + "ffn.0.weight"] = (f, d)
        shapes[p + "ffn.0.bias"] = (f,)
        shapes[p + "ffn.2.weight"] = (d, f)
        shapes[p + "ffn.2.bias"] = (d,)
    return shapes


def random_official_sd(cfg: DiTConfig = TINY, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights large enough that every part of the network moves the output."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_shapes(cfg).items():
        if "norm" in k and k.endswith("weight"):
            t = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif k.endswith("modulation"):
            t = torch.randn(shape, generator=g) / cfg.dim**0.5
        elif k.endswith("bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g) / fan_in**0.5
        sd[k] = t.to(dtype)
    return sd


def random_proj_l(cfg: DiTConfig = TINY, seed: int = 1) -> dict[str, torch.Tensor]:
    """Non-zero SLA proj_l weights in our key layout (float32, as SLA creates them)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(cfg.num_layers):
        out[f"blocks.{i}.self_attn.proj_l.weight"] = 0.1 * torch.randn(cfg.head_dim, cfg.head_dim, generator=g)
        out[f"blocks.{i}.self_attn.proj_l.bias"] = 0.1 * torch.randn(cfg.head_dim, generator=g)
    return out


def official_config(cfg: DiTConfig) -> dict:
    """config.json as shipped with Wan-AI/Wan2.1-T2V-1.3B (text_dim added only when not 4096)."""
    out = {
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": cfg.dim, "eps": cfg.eps,
        "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim, "model_type": "t2v",
        "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "out_dim": cfg.out_dim, "text_len": cfg.text_len,
    }
    if cfg.text_dim != 4096:
        out["text_dim"] = cfg.text_dim
    return out


def write_official(folder: Path, sd: dict[str, torch.Tensor], cfg: DiTConfig | None = TINY, shards: int = 1) -> Path:
    """Official folder: config.json + diffusion_pytorch_model.safetensors (or N shards + index)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        (folder / "config.json").write_text(json.dumps(official_config(cfg)))
    keys = list(sd)
    if shards == 1:
        save_file({k: sd[k].contiguous() for k in keys}, str(folder / "diffusion_pytorch_model.safetensors"),
                  metadata={"format": "pt"})
        return folder
    weight_map = {}
    per = -(-len(keys) // shards)
    for s in range(shards):
        name = f"diffusion_pytorch_model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s * per:(s + 1) * per]
        save_file({k: sd[k].contiguous() for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    return folder


def turbodiffusion_sd(sd: dict[str, torch.Tensor], proj_l: dict[str, torch.Tensor] | None = None,
                      prefix: str = "") -> dict[str, torch.Tensor]:
    """TurboWan layout: Linear patch embedding [dim, c*kt*kh*kw], proj_l under attn_op.local_attn."""
    out = {}
    for k, v in sd.items():
        if k == "patch_embedding.weight":
            v = v.reshape(v.shape[0], -1)  # rearrange "(c kt kh kw)" == Conv3d weight flattened
        out[prefix + k] = v
    for k, v in (proj_l or {}).items():
        out[prefix + k.replace(".self_attn.proj_l.", ".self_attn.attn_op.local_attn.proj_l.")] = v
    return out


def turbodiffusion_quant_sd(sd: dict[str, torch.Tensor], proj_l: dict[str, torch.Tensor] | None = None,
                            ) -> dict[str, torch.Tensor]:
    """-quant layout: block Linears (not proj_l) -> int8_weight/scale/bias; norm weights float32."""
    out = turbodiffusion_sd(sd, proj_l)
    for k in list(out):
        base = k.rsplit(".", 1)[0]
        if k.startswith("blocks.") and k.endswith(".weight") and base.split(".", 2)[2] in BLOCK_LINEARS:
            w = out.pop(k)
            q, s = quantize_blockwise(w.float())
            out[base + ".int8_weight"], out[base + ".scale"] = q, s
        elif ".norm" in k:
            out[k] = out[k].float()
    return out


def save_pth(path: Path, sd: dict[str, torch.Tensor], wrap: str | None = None) -> Path:
    """torch.save of a plain state dict (optionally nested one level, as training checkpoints are)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({wrap: sd} if wrap else sd, path)
    return path


def diffusers_config(cfg: DiTConfig) -> dict:
    return dict(
        patch_size=tuple(cfg.patch_size), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
    )


def diffusers_model(cfg: DiTConfig, sd_official: dict[str, torch.Tensor]):
    """A real diffusers WanTransformer3DModel holding the given official weights (float32).

    The renaming goes through diffusers' own single-file converter, so it checks nothing of ours.
    """
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    model = WanTransformer3DModel(**diffusers_config(cfg))
    converted = convert_wan_transformer_to_diffusers({k: v.float().clone() for k, v in sd_official.items()})
    model.load_state_dict(converted, strict=True)
    return model.eval()


def write_diffusers(folder: Path, cfg: DiTConfig, sd_official: dict[str, torch.Tensor]):
    """Diffusers pipeline folder with transformer/ (config.json + diffusion_pytorch_model.safetensors)."""
    model = diffusers_model(cfg, sd_official)
    model.save_pretrained(Path(folder) / "transformer", safe_serialization=True)
    return model
