"""Wan2.1 causal 3D VAE: 4x temporal and 8x spatial compression, 16 latent channels.

Every temporal convolution is causal (zero padding on the past side only), so a video can be
processed in temporal chunks: each causal conv carries the last frames of its input from one
chunk to the next (the "stream state"), which gives exactly the result of one pass over the
whole sequence. The reference paths follow Wan2.1: encode the first frame, then 4-frame chunks;
decode the latents one frame at a time. `decode(..., fast=True)` runs the same network through
turbovid/models/vae_fast.py (larger chunks, bf16 channels-last, fused kernels, spatial tiling).

Latents at the public API are the normalised ones the DiT works in: (mu - mean) / std with
Wan2.1's 16 per-channel constants.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from turbovid.configs import VAEConfig

# The stream state: per module, the tail of its input kept for the next chunk (or a "started" flag).
State = dict


class CausalConv3d(nn.Conv3d):
    """Conv3d padded by 2*p_t zero frames on the past side only (and p_h, p_w on both spatial sides).

    With a stream state it prepends the input frames it kept from the previous chunk instead of zeros.
    """

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__(cin, cout, kernel, stride=stride, padding=0)
        pt, ph, pw = padding if isinstance(padding, tuple) else (padding,) * 3
        self.time_pad = 2 * pt
        self.space_pad = (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> torch.Tensor:
        pad_t = self.time_pad
        if state is not None and pad_t > 0:
            prev = state.get(self)
            if prev is not None:
                x = torch.cat([prev, x], dim=2)
                pad_t -= prev.shape[2]
            state[self] = x[:, :, -self.time_pad:].clone()
        return super().forward(F.pad(x, (*self.space_pad, pad_t, 0)))


class RMSNorm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma (F.normalize semantics, eps 1e-12), math in float32."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.normalize(x.float(), dim=1).to(x.dtype)
        return y * self.scale * self.gamma


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = RMSNorm(cin)
        self.conv1 = CausalConv3d(cin, cout, 3, padding=1)
        self.norm2 = RMSNorm(cout)
        self.conv2 = CausalConv3d(cout, cout, 3, padding=1)
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> torch.Tensor:
        h = x if self.shortcut is None else self.shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), state)
        x = self.conv2(F.silu(self.norm2(x)), state)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no temporal mixing)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(y)).reshape(b * t, 1, 3 * c, h * w).transpose(2, 3)  # (bt, 1, hw, 3c)
        q, k, v = qkv.contiguous().chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)  # (bt, 1, hw, c)
        y = self.proj(y.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return x + y.reshape(b, t, c, h, w).transpose(1, 2)


class Resample(nn.Module):
    """2x spatial up/down sampling per frame, plus 2x temporal for the '3d' modes.

    up3d: a (3,1,1) causal conv makes two frames from each input frame, except the very first
    frame of the stream, which passes through once (so T latent frames become 1 + 4(T-1)).
    down3d: keeps the first frame, then a stride-2 (3,1,1) conv over windows starting at frame 0.
    """

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode in ("up2d", "up3d"):
            self.conv = nn.Conv2d(dim, dim // 2, 3, padding=1)
            if mode == "up3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode in ("down2d", "down3d"):
            self.conv = nn.Conv2d(dim, dim, 3, stride=2)
            if mode == "down3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> torch.Tensor:
        state = {} if state is None else state
        if self.mode == "up3d":
            x = self._double_frames(x, state)
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        if self.mode.startswith("up"):
            # nearest-exact on float: bf16 nearest interpolation is not supported everywhere
            y = F.interpolate(y.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)
        else:
            y = F.pad(y, (0, 1, 0, 1))
        y = self.conv(y)
        x = y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
        if self.mode == "down3d":
            x = self._halve_frames(x, state)
        return x

    def _double_frames(self, x: torch.Tensor, state: State) -> torch.Tensor:
        first = None
        if self not in state:  # first chunk of the stream
            state[self] = True
            first, x = x[:, :, :1], x[:, :, 1:]
        if x.shape[2] > 0:
            b, c, t, h, w = x.shape
            y = self.time_conv(x, state)  # (b, 2c, t, h, w): channel half j is output frame 2t+j
            x = y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        return x if first is None else torch.cat([first, x], dim=2)

    def _halve_frames(self, x: torch.Tensor, state: State) -> torch.Tensor:
        prev = state.get(self)
        state[self] = x[:, :, -1:].clone()
        if prev is None:  # first chunk: frame 0 passes, then windows (0,1,2), (2,3,4), ...
            return x[:, :, :1] if x.shape[2] < 3 else torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
        return self.time_conv(torch.cat([prev, x], dim=2))


def _stage_dims(cfg: VAEConfig) -> list[int]:
    return [cfg.dim * m for m in (1, *cfg.dim_mult)]


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = _stage_dims(cfg)
        self.conv_in = CausalConv3d(3, dims[0], 3, padding=1)
        down: list[nn.Module] = []
        last = len(cfg.dim_mult) - 1
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                down.append(ResBlock(cin, cout))
                cin = cout
            if i < last:
                down.append(Resample(cout, "down3d" if cfg.temporal_downsample[i] else "down2d"))
        self.down = nn.ModuleList(down)
        self.mid = nn.ModuleList([ResBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]), ResBlock(dims[-1], dims[-1])])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> torch.Tensor:
        x = self.conv_in(x, state)
        for layer in (*self.down, *self.mid):
            x = layer(x, state)
        return self.conv_out(F.silu(self.norm_out(x)), state)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dim * m for m in (mult[-1], *mult[::-1])]
        temporal_upsample = tuple(cfg.temporal_downsample[::-1])
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.mid = nn.ModuleList([ResBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResBlock(dims[0], dims[0])])
        up: list[nn.Module] = []
        last = len(mult) - 1
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin //= 2  # the previous stage's upsampler halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                up.append(ResBlock(cin, cout))
                cin = cout
            if i < last:
                up.append(Resample(cout, "up3d" if temporal_upsample[i] else "up2d"))
        self.up = nn.ModuleList(up)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 3, 3, padding=1)

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> torch.Tensor:
        x = self.conv_in(x, state)
        for layer in (*self.mid, *self.up):
            x = layer(x, state)
        return self.conv_out(F.silu(self.norm_out(x)), state)


class WanVAE(nn.Module):
    """The Wan2.1 VAE. `decode(latents) -> video`, `encode(video) -> latents` (normalised latents)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
            raise ValueError(f"latents_mean/std need {cfg.z_dim} values each (one per latent channel)")
        if len(cfg.temporal_downsample) != len(cfg.dim_mult) - 1:
            raise ValueError("temporal_downsample needs one flag per downsampling stage (len(dim_mult) - 1)")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder(cfg)
        self._fast_cache: dict = {}  # prepared weights of the fast decoder, per (device, dtype)

    @property
    def time_factor(self) -> int:
        return 2 ** sum(self.cfg.temporal_downsample)

    @property
    def space_factor(self) -> int:
        return 2 ** (len(self.cfg.dim_mult) - 1)

    def _stats(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(self.cfg.latents_mean, dtype=ref.dtype, device=ref.device).view(shape)
        inv_std = 1.0 / torch.tensor(self.cfg.latents_std, dtype=ref.dtype, device=ref.device).view(shape)
        return mean, inv_std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> the raw latents the decoder takes (as Wan: z / (1/std) + mean)."""
        mean, inv_std = self._stats(latents)
        return latents / inv_std + mean

    def check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or latents.shape[1] != self.cfg.z_dim:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be [B, {self.cfg.z_dim}, T, H, W], got {got}")
        if min(latents.shape) == 0:
            raise ValueError(f"latents have an empty dimension: {tuple(latents.shape)}")
        if not latents.is_floating_point():
            raise ValueError(f"latents must be a floating tensor, got {latents.dtype}")

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1+4k, 8h, 8w] in [-1, 1] -> normalised posterior mean [B, z_dim, 1+k, h, w] (float32)."""
        tf, sf = self.time_factor, self.space_factor
        if not isinstance(video, torch.Tensor) or video.dim() != 5 or video.shape[1] != 3:
            got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"video must be [B, 3, T, H, W], got {got}")
        b, _, t, h, w = video.shape
        if t % tf != 1 or h % sf or w % sf or h == 0 or w == 0:
            raise ValueError(
                f"video of {t} frames at {h}x{w}: needs 1+{tf}k frames and a size divisible by {sf}; "
                f"crop or pad it (e.g. {1 + tf * ((t - 1) // tf)} frames, {h // sf * sf}x{w // sf * sf})"
            )
        p = next(self.parameters())
        x = video.to(p.device, p.dtype)
        state: State = {}
        chunks = [self.encoder(x[:, :, :1], state)]
        for i in range(1, t, tf):
            chunks.append(self.encoder(x[:, :, i:i + tf], state))
        mu = self.quant_conv(torch.cat(chunks, dim=2))[:, : self.cfg.z_dim]
        mean, inv_std = self._stats(mu)
        return ((mu - mean) * inv_std).float()

    @torch.no_grad()
    def decode(
        self,
        latents: torch.Tensor,
        tiling: str = "auto",
        fast: bool = True,
        memory_budget: Optional[int] = None,
        dtype: Optional[torch.dtype] = None,
        on_frames: Optional[Callable[[int, int, torch.Tensor], None]] = None,
        return_video: bool = True,
    ) -> Optional[torch.Tensor]:
        """Normalised latents [B, z_dim, T, h, w] -> video [B, 3, 1+4(T-1), 8h, 8w] in [-1, 1] (float32).

        fast=False runs the reference: one latent frame at a time through these modules.
        fast=True runs vae_fast: several latent frames per pass, channels-last, fused kernels, in
        `dtype` (default: the weights' dtype); tiling "auto" splits the frame into overlapping
        spatial tiles only when the decode would not fit `memory_budget` bytes (default: the free
        GPU memory), "on" always tiles, "off" never does.
        on_frames(sample, first, frames [3, t, H, W]) receives frames as soon as they are final
        (chunk by chunk on the fast path, each whole video on the reference path); with
        return_video=False they go only there (None is returned, and the fast path never holds the
        whole float32 video unless it tiles).
        """
        self.check_latents(latents)
        if tiling not in ("auto", "on", "off"):
            raise ValueError(f"tiling must be 'auto', 'on' or 'off', got {tiling!r}")
        if fast:
            from turbovid.models.vae_fast import fast_decode

            return fast_decode(self, latents, tiling=tiling, memory_budget=memory_budget, dtype=dtype,
                               on_frames=on_frames, return_video=return_video)
        if tiling == "on":
            raise ValueError("tiling='on' needs the fast decoder: call decode(latents, tiling='on', fast=True)")
        if not return_video and on_frames is None:
            raise ValueError("return_video=False needs on_frames: the frames would go nowhere")
        video = self.decode_reference(latents)
        for b in range(video.shape[0] if on_frames is not None else 0):
            on_frames(b, 0, video[b])
        return video if return_video else None

    @torch.no_grad()
    def decode_reference(self, latents: torch.Tensor) -> torch.Tensor:
        """The chunked reference decode: latent frame by latent frame, carrying the stream state."""
        self.check_latents(latents)
        p = next(self.parameters())
        z = self.post_quant_conv(self.denormalize(latents.to(p.device, p.dtype)))
        state: State = {}
        frames = [self.decoder(z[:, :, i:i + 1], state) for i in range(z.shape[2])]
        return torch.cat(frames, dim=2).float().clamp_(-1, 1)


def build_vae(
    cfg: VAEConfig | str = "wan2.1", device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32, seed: int = 0,
) -> WanVAE:
    """A WanVAE with random weights (PyTorch's default init, drawn on the CPU from `seed`)."""
    if isinstance(cfg, str):
        from turbovid.configs import vae_preset

        cfg = vae_preset(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = WanVAE(cfg)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
