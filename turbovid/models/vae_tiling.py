"""Memory plan of the fast VAE decode: temporal chunk size, spatial tiles, blending weights.

The estimate walks the decoder's layers symbolically and adds up what the fast path keeps alive
at its worst moment: the output video (float32; not when an untiled decode hands its frames over
as it goes), the latent stage's output (the middle blocks' and, with `low`, the first upsampling
stage's, kept for all frames), the stream state (the last 2 input frames of every causal conv, per
tile) and the largest layer's working set for one chunk (input, time-padded buffer, output,
shortcut). Tiles split only the chunked upsampling stages: each tile is its core plus `halo`
latent pixels on interior sides; neighbours are blended with linear ramps over the middle half of
their 2*halo overlap (weights sum to 1), so the outer halo/2 of a tile, where its missing context
shows, is never used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from turbovid.configs import VAEConfig
from turbovid.ops.conv_head import MAX_COUT as HEAD_COUT

GiB = 1 << 30
# Without an explicit budget the decode keeps its allocations (weights excluded) under this,
# trading a little speed from larger chunks for headroom; only the free memory decides tiling.
DEFAULT_SOFT_CAP = int(5.5 * GiB)
MAX_ELEMENTS = (1 << 31) - 1  # cuDNN convolutions index single tensors with 32-bit integers
DEFAULT_HALO = 8
SMALL_CHANNELS = 128  # 3x3x3 convs with at most this many input channels take the small-conv path


@dataclass(frozen=True)
class DecodePlan:
    chunk: int  # latent frames per pass of the upsampling stage
    mid_chunk: int  # latent frames per pass of the latent-resolution stage
    grid: tuple[int, int]
    halo: int  # latent pixels each tile reaches past its core on interior sides
    tiles: tuple[tuple[int, int, int, int], ...]  # (row0, row1, col0, col1) in latent pixels, halo included
    est_bytes: int


def _decoder_dims(cfg: VAEConfig) -> list[int]:
    return [cfg.dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]


def _conv_input(t: int, hw: int, cin: int, cout: int, small_conv: str) -> tuple[int, int]:
    """(elements of a 3x3x3 conv's input buffer + temporaries, largest single tensor) for T frames."""
    if cin <= SMALL_CHANNELS and small_conv == "triton" and cout <= HEAD_COUT:
        # a head by taps (ops/conv_head.py): its output and the next chunk's float32 partial sums
        return t * hw * cout + 2 * 2 * hw * cout, t * hw * cout
    if cin <= SMALL_CHANNELS and small_conv == "stacked":
        return 3 * t * hw * cin, 3 * t * hw * cin
    if cin <= SMALL_CHANNELS and small_conv == "taps":
        return (t + 2) * hw * cin + t * hw * cout, (t + 2) * hw * cin
    return (t + 2) * hw * cin, (t + 2) * hw * cin


def up_stage_elements(cfg: VAEConfig, k: int, th: int, tw: int, small_conv: str = "stacked", first: int = 0,
                      stop: Optional[int] = None) -> tuple[int, int]:
    """(peak live elements incl. stream state, largest single tensor) of the upsampling stages
    [first, stop) for k latent frames of th x tw (stop=None: through the head)."""
    dims = _decoder_dims(cfg)
    temporal = cfg.temporal_downsample[::-1]
    last = len(cfg.dim_mult) - 1
    t, h, w = k, th, tw  # worst case: a chunk after the first, every frame doubled
    peak = state = biggest = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        if stop is not None and i >= stop:
            return peak + state, biggest
        if i < first:  # run elsewhere: only its output's size matters
            if i < last:
                t, h, w = t * (2 if temporal[i] else 1), 2 * h, 2 * w
            continue
        cin = cin // 2 if i else cin
        for _ in range(cfg.num_res_blocks + 1):
            pos = t * h * w
            sc = pos * cout if cin != cout else 0
            buf1, big1 = _conv_input(t, h * w, cin, cout, small_conv)
            buf2, big2 = _conv_input(t, h * w, cout, cout, small_conv)
            # conv1's output; in the "triton" mode (vae_fast.FUSE_NORM) conv2's time-padded input instead
            conv1 = pos * cin + sc + buf1 + (t + 2 if small_conv == "triton" else t) * h * w * cout
            conv2 = pos * cin + sc + pos * cout + buf2 + pos * cout
            peak = max(peak, conv1, conv2)
            biggest = max(biggest, big1, big2)
            state += 2 * h * w * (cin + cout)
            cin = cout
        if i < last:
            if temporal[i]:
                pos = t * h * w
                peak = max(peak, pos * cout + (t + 2) * h * w * cout + 2 * pos * cout * 2)
                state += 2 * h * w * cout
                t *= 2
            pos, half = t * h * w, cout // 2
            sub = t * (h + 1) * (w + 1) * 4 * half
            peak = max(peak, pos * cout + sub + 4 * pos * half)
            biggest = max(biggest, sub, 4 * pos * half)
            h, w = 2 * h, 2 * w
    c = dims[-1]
    buf, big = _conv_input(t, h * w, c, 3, small_conv)
    peak = max(peak, t * h * w * c + buf + t * h * w * 3)
    # the head by taps keeps float32 partial sums of two frames (two bf16 elements a value)
    state += 2 * 2 * h * w * 3 if small_conv == "triton" and c <= SMALL_CHANNELS else 2 * h * w * c
    return peak + state, max(biggest, big)


def _low(cfg: VAEConfig, low: bool) -> int:
    """The upsampling stages the latent stage runs: the first (through its upsampler), if any and `low`
    (vae_fast.LOW_STAGES)."""
    return 1 if low and len(cfg.dim_mult) > 1 else 0


def latent_stage_elements(cfg: VAEConfig, k: int, h: int, w: int, low: bool = True,
                          small_conv: str = "stacked") -> tuple[int, int]:
    """(peak live elements incl. stream state, largest single tensor) of the latent stage for k
    frames: conv_in, the middle blocks and, with `low`, the first upsampling stage."""
    c = _decoder_dims(cfg)[0]
    pos, padded = k * h * w, (k + 2) * h * w
    work = max(padded * cfg.z_dim + pos * c, pos * c + padded * c + 2 * pos * c, 7 * pos * c)  # conv_in, res, attn
    work, biggest = work + 8 * h * w * c, padded * c  # + stream state of the four 3x3x3 convs of the middle
    if _low(cfg, low):
        up, big = up_stage_elements(cfg, k, h, w, small_conv, stop=1)
        work, biggest = max(work, up + 8 * h * w * c), max(biggest, big)
    return work, biggest


def latent_output_elements(cfg: VAEConfig, t: int, h: int, w: int, low: bool = True) -> int:
    """Elements of the latent stage's output for all t frames, kept while the upsampling stage runs."""
    dims = _decoder_dims(cfg)
    if not _low(cfg, low):
        return t * h * w * dims[0]
    frames = 1 + 2 * (t - 1) if cfg.temporal_downsample[::-1][0] else t
    return frames * 4 * h * w * (dims[1] // 2)


def estimate_bytes(cfg: VAEConfig, t: int, h: int, w: int, elem: int, chunk: int, mid_chunk: int,
                   tile: Optional[tuple[int, int]] = None, small_conv: str = "stacked", keep_video: bool = True,
                   low: bool = True) -> int:
    """keep_video=False: the frames leave chunk by chunk (fast_decode's streaming), no float32 video.
    low: the latent stage runs the first upsampling stage (vae_fast.LOW_STAGES)."""
    sf, tf = 2 ** (len(cfg.dim_mult) - 1), 2 ** sum(cfg.temporal_downsample)
    th, tw = tile or (h, w)
    video = 3 * (1 + tf * (t - 1)) * sf * h * sf * w * 4 if keep_video else 0
    mid = latent_output_elements(cfg, t, h, w, low) * elem
    up, _ = up_stage_elements(cfg, chunk, th, tw, small_conv, first=_low(cfg, low))
    work = max(up, latent_stage_elements(cfg, mid_chunk, h, w, low, small_conv)[0]) * elem
    return int(video + mid + 1.1 * work) + 128 * (1 << 20)  # + cuDNN workspace and allocator slack


def _edges(n: int, parts: int) -> list[int]:
    return [round(i * n / parts) for i in range(parts + 1)]


def _tiles(h: int, w: int, grid: tuple[int, int], halo: int) -> tuple[tuple[int, int, int, int], ...]:
    rows, cols = _edges(h, grid[0]), _edges(w, grid[1])
    return tuple(
        (max(0, rows[i] - halo), min(h, rows[i + 1] + halo), max(0, cols[j] - halo), min(w, cols[j + 1] + halo))
        for i in range(grid[0]) for j in range(grid[1])
    )


def _halo_for(h: int, w: int, grid: tuple[int, int], halo: int) -> int:
    cores = []
    if grid[0] > 1:
        cores.append(h // grid[0])
    if grid[1] > 1:
        cores.append(w // grid[1])
    return min([halo] + [c // 2 for c in cores])  # ramps of a tile's two sides must not overlap


def plan_decode(
    cfg: VAEConfig, t: int, h: int, w: int, elem: int, tiling: str = "auto",
    budget: Optional[int] = None, soft_cap: Optional[int] = DEFAULT_SOFT_CAP, halo: int = DEFAULT_HALO,
    small_conv: str = "stacked", keep_video: bool = True, low: bool = True,
) -> DecodePlan:
    """Pick chunk sizes and tiles. `budget`: bytes that may be allocated (None: unlimited);
    `soft_cap`: a tighter target for the chunk sizes (None: use the whole budget); keep_video=False:
    the decode hands its frames over instead of keeping the whole video (tiled plans always keep it);
    low: the latent stage runs the first upsampling stage (vae_fast.LOW_STAGES)."""
    if tiling not in ("auto", "on", "off"):
        raise ValueError(f"tiling must be 'auto', 'on' or 'off', got {tiling!r}")
    hard = math.inf if budget is None else budget
    cap = min(hard, soft_cap) if soft_cap is not None else hard

    def largest_chunk(fits) -> int:
        return max([k for k in range(1, t + 1) if fits(k)], default=1)

    def mid_fits(k: int) -> bool:
        work, biggest = latent_stage_elements(cfg, k, h, w, low, small_conv)
        return work * elem <= cap / 4 and biggest <= MAX_ELEMENTS

    mid_chunk = largest_chunk(mid_fits)

    def plan_for(grid: tuple[int, int]) -> DecodePlan:
        hl = _halo_for(h, w, grid, halo) if grid != (1, 1) else 0
        tiles = _tiles(h, w, grid, hl)
        th, tw = max(r1 - r0 for r0, r1, _, _ in tiles), max(c1 - c0 for _, _, c0, c1 in tiles)

        keep = keep_video or grid != (1, 1)  # tiles add into one video buffer

        def fits(k: int) -> bool:
            return (estimate_bytes(cfg, t, h, w, elem, k, mid_chunk, (th, tw), small_conv, keep, low) <= cap
                    and up_stage_elements(cfg, k, th, tw, small_conv, first=_low(cfg, low))[1] <= MAX_ELEMENTS)

        k = largest_chunk(fits)
        est = estimate_bytes(cfg, t, h, w, elem, k, mid_chunk, (th, tw), small_conv, keep, low)
        return DecodePlan(chunk=k, mid_chunk=mid_chunk, grid=grid, halo=hl, tiles=tiles, est_bytes=est)

    whole = plan_for((1, 1))
    if tiling == "off" or (tiling == "auto" and whole.est_bytes <= hard
                           and up_stage_elements(cfg, 1, h, w, small_conv, first=_low(cfg, low))[1] <= MAX_ELEMENTS):
        return whole
    # Smallest number of tiles that fits, near-square tiles first; cores of at least 2 latent pixels.
    grids = sorted(
        ((r, c) for r in range(1, max(1, h // 2) + 1) for c in range(1, max(1, w // 2) + 1) if r * c >= 2),
        key=lambda g: (g[0] * g[1], abs(math.log((h / g[0]) / (w / g[1])))),
    )
    if not grids:
        raise ValueError(f"latents of {h}x{w} are too small to tile; use tiling='off'")
    best = None
    for grid in grids[:256]:  # the fewest tiles whose one-frame chunks fit the budget
        best = plan_for(grid)
        if best.chunk > 1 or best.est_bytes <= hard:
            break
    return best


def tile_weights(plan: DecodePlan, tile: tuple[int, int, int, int], h: int, w: int, sf: int,
                 device: torch.device) -> torch.Tensor:
    """Blend weights (H_tile, W_tile) float32 of one tile: linear ramps on interior sides."""
    r0, r1, c0, c1 = tile
    ramp = plan.halo * sf  # centred on the core boundary: the outer halo/2 of each tile gets no weight
    margin = ramp / 2

    def axis(a0: int, a1: int, n: int) -> torch.Tensor:
        length = sf * (a1 - a0)
        y = torch.arange(length, dtype=torch.float32, device=device) + 0.5
        wt = torch.ones(length, dtype=torch.float32, device=device)
        if ramp and a0 > 0:
            wt = torch.minimum(wt, ((y - margin) / ramp).clamp(min=0))
        if ramp and a1 < n:
            wt = torch.minimum(wt, ((length - margin - y) / ramp).clamp(min=0))
        return wt

    return axis(r0, r1, h)[:, None] * axis(c0, c1, w)[None, :]
