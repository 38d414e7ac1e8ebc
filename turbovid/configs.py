"""Typed configs and the named presets of the Wan2.1 text-to-video DiT."""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DiTConfig:
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def with_(self, **kw) -> "DiTConfig":
        return replace(self, **kw)


DIT_PRESETS: dict[str, DiTConfig] = {
    "Wan2.1-1.3B": DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "Wan2.1-14B": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Random-weight smoke-test model: runs the whole pipeline on a CPU in seconds; its videos are noise.
    "tiny-random": DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=64),
}


def dit_preset(name: str) -> DiTConfig:
    try:
        return DIT_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(DIT_PRESETS)}") from None


@dataclass(frozen=True)
class T5Config:
    """Encoder-only umT5 as Wan uses it (relative position bias in every layer)."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    shared_pos: bool = False
    text_len: int = 512
    eps: float = 1e-6


T5_PRESETS: dict[str, T5Config] = {
    "umt5-xxl": T5Config(),
    "tiny-random": T5Config(vocab_size=512, dim=64, dim_attn=64, dim_ffn=128, num_heads=4, num_layers=2),
}


WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


@dataclass(frozen=True)
class VAEConfig:
    """Wan2.1 causal 3D VAE: 4x temporal, 8x spatial compression, 16 latent channels."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    # Per-channel statistics of the raw latents: the DiT works in (mu - mean) / std.
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(),
    "tiny-random": VAEConfig(dim=8),
}


def vae_preset(name: str) -> VAEConfig:
    try:
        return VAE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown VAE {name!r}; choose one of {', '.join(VAE_PRESETS)}") from None
