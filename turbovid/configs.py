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


@dataclass(frozen=True)
class VAEConfig:
    """Wan2.1 causal 3D VAE: 4x temporal, 8x spatial compression, 16 latent channels."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(),
    "tiny-random": VAEConfig(dim=8),
}
