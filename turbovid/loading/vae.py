"""Loading the Wan2.1 VAE from the official `Wan2.1_VAE.pth` or a diffusers `vae/` folder.

The layout is recognised from the key names, the architecture from the tensor shapes (so smaller
test models load through the same call); a diffusers config.json only contributes the latent
mean/std (and rejects the Wan2.2 residual VAE, which this module does not implement).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
import torch

from turbovid.configs import VAEConfig
from turbovid.loading.common import (
    CheckpointError,
    StateDict,
    assign_state_dict,
    read_sharded,
    read_state_dict,
    strip_prefix,
)
from turbovid.loading.transfer import to_device
from turbovid.models.vae import WanVAE

log = logging.getLogger("turbovid.loading")

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

# Official Wan2.1 names -> ours. The official ResBlock is a Sequential: residual.0 norm, .1 SiLU,
# .2 conv, .3 norm, .4 SiLU, .5 dropout, .6 conv; Resample's conv sits after a pad/upsample at index 1.
_OFFICIAL_RULES: list[tuple[str, str]] = [
    (r"^conv1\.", "quant_conv."),
    (r"^conv2\.", "post_quant_conv."),
    (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
    (r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out."),
    (r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out."),
    (r"^encoder\.downsamples\.", "encoder.down."),
    (r"^decoder\.upsamples\.", "decoder.up."),
    (r"^(encoder|decoder)\.middle\.", r"\1.mid."),
    (r"\.residual\.0\.", ".norm1."),
    (r"\.residual\.2\.", ".conv1."),
    (r"\.residual\.3\.", ".norm2."),
    (r"\.residual\.6\.", ".conv2."),
    (r"\.resample\.1\.", ".conv."),
]


def official_to_ours(key: str) -> str:
    for pattern, repl in _OFFICIAL_RULES:
        key = re.sub(pattern, repl, key)
    return key


def diffusers_to_ours(key: str, num_res_blocks: int) -> str:
    """diffusers AutoencoderKLWan names -> ours (the decoder's up_blocks are flattened)."""
    key = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.0.", key)
    key = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.1.", key)
    key = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.2.", key)
    key = re.sub(r"^encoder\.down_blocks\.", "encoder.down.", key)
    per_stage = num_res_blocks + 2  # resnets + one upsampler per decoder stage
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", key)
    if m:
        key = f"decoder.up.{int(m[1]) * per_stage + int(m[2])}.{m[3]}"
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", key)
    if m:
        key = f"decoder.up.{int(m[1]) * per_stage + num_res_blocks + 1}.{m[2]}"
    key = key.replace(".conv_shortcut.", ".shortcut.").replace(".resample.1.", ".conv.")
    return key


def _detect_layout(sd: StateDict, path: Path) -> str:
    if "encoder.conv1.weight" in sd and any(".residual." in k for k in sd):
        return "official"
    if "encoder.conv_in.weight" in sd and any(k.startswith("decoder.up_blocks.") for k in sd):
        return "diffusers"
    if "encoder.conv_in.weight" in sd and any(k.startswith("decoder.up.") for k in sd):
        return "turbovid"
    example = next(iter(sd))
    raise CheckpointError(
        f"{path}: keys match no Wan2.1 VAE layout (official Wan2.1_VAE.pth, diffusers vae/ or turbovid); "
        f"first key {example!r}"
    )


def to_ours(sd: StateDict, layout: str) -> StateDict:
    if layout == "official":
        return {official_to_ours(k): v for k, v in sd.items()}
    if layout == "diffusers":
        resnets = [int(m[1]) for k in sd if (m := re.match(r"^decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))]
        n = max(resnets) if resnets else 0  # a decoder stage has num_res_blocks + 1 resnets
        return {diffusers_to_ours(k, n): v for k, v in sd.items()}
    return dict(sd)


def config_from_state_dict(sd: StateDict, path: Path, base: VAEConfig | None = None) -> VAEConfig:
    """Read dim, z_dim, dim_mult, num_res_blocks and the temporal flags off our-named tensors."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise CheckpointError(f"{path}: tensor {key} is missing (not a complete Wan2.1 VAE)")
        return tuple(sd[key].shape)

    dim = shape("encoder.conv_in.weight")[0]
    z_dim = shape("post_quant_conv.weight")[0]
    blocks = sorted({int(m[1]) for k in sd if (m := re.match(r"^encoder\.down\.(\d+)\.", k))})
    stage_out: list[int] = []
    res_per_stage: list[int] = []
    temporal: list[bool] = []
    count = 0
    for i in blocks:
        p = f"encoder.down.{i}."
        if p + "conv2.weight" in sd:  # a residual block
            count += 1
            out = sd[p + "conv2.weight"].shape[0]
        elif p + "conv.weight" in sd and count:  # a downsampler closes a stage
            temporal.append(p + "time_conv.weight" in sd)
            stage_out.append(out)
            res_per_stage.append(count)
            count = 0
        else:
            raise CheckpointError(f"{path}: encoder block {i} is not a residual block or a downsampler after one")
    if count == 0 or not stage_out:
        raise CheckpointError(f"{path}: the encoder has no residual stages (not a Wan2.1 VAE)")
    stage_out.append(out)
    res_per_stage.append(count)
    if len(set(res_per_stage)) != 1 or any(c % dim for c in stage_out):
        raise CheckpointError(f"{path}: irregular encoder stages {res_per_stage} / channels {stage_out}")
    cfg = replace(
        base or VAEConfig(), dim=dim, z_dim=z_dim, dim_mult=tuple(c // dim for c in stage_out),
        num_res_blocks=res_per_stage[0], temporal_downsample=tuple(temporal),
    )
    if len(cfg.latents_mean) != z_dim:
        raise CheckpointError(
            f"{path}: z_dim {z_dim} has no built-in latent mean/std (Wan2.1 has 16); "
            "put latents_mean/latents_std in a config.json beside it"
        )
    return cfg


def _find_files(path: Path) -> tuple[list[Path], Path | None]:
    """Weight files and the optional config.json for a file, a `vae/` folder or a model root."""
    if path.is_file():
        return [path], None
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or folder")
    if (path / "vae").is_dir():
        path = path / "vae"
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if len(files) > 1:
        # An official Wan2.1 folder holds the DiT, T5 and VAE side by side.
        vae_named = [p for p in files if "vae" in p.name.lower()]
        files = vae_named or files
    if not files:
        raise CheckpointError(f"{path}: holds no weight file (.safetensors/.pth); pass the VAE file itself")
    cfg = path / "config.json"
    return files, cfg if cfg.is_file() else None


def _read_config_json(path: Path, base: VAEConfig) -> VAEConfig:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable config.json ({e})") from None
    if raw.get("is_residual"):
        raise CheckpointError(f"{path}: a residual (Wan2.2-style) VAE; only the Wan2.1 VAE is supported")
    mean, std = raw.get("latents_mean"), raw.get("latents_std")
    if mean is not None and std is not None:
        base = replace(base, latents_mean=tuple(float(x) for x in mean), latents_std=tuple(float(x) for x in std))
    return base


def load_vae(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
) -> WanVAE:
    """A WanVAE from an official / diffusers / turbovid checkpoint file or folder."""
    path = Path(path)
    files, config_json = _find_files(path)
    if len(files) == 1:
        sd, _ = read_state_dict(files[0])
    else:
        sd, _ = read_sharded(files)
    where = files[0] if len(files) == 1 else path
    sd = strip_prefix(sd, ("vae.", "first_stage_model.", "model."))
    layout = _detect_layout(sd, where)
    sd = to_ours(sd, layout)
    base = _read_config_json(config_json, VAEConfig()) if config_json else VAEConfig()
    cfg = config_from_state_dict(sd, where, base)
    with torch.device("meta"):
        vae = WanVAE(cfg)
    assign_state_dict(vae, sd, where, dtype=dtype)
    log.info("loaded %s VAE from %s (dim %d, z_dim %d)", layout, where, cfg.dim, cfg.z_dim)
    return to_device(vae, device, from_files=True).eval().requires_grad_(False)


__all__ = ["load_vae", "official_to_ours", "diffusers_to_ours", "config_from_state_dict"]
