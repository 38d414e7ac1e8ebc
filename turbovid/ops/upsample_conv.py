"""A 2x nearest upsample followed by a 3x3 conv (zero padding 1), as four 2x2 convs over the input.

Output pixel (2i + py, 2j + px) of the 3x3 conv over the upsampled image reads low-resolution rows
i + py - 1 + r and columns j + px - 1 + s (r, s in {0, 1}), each with the sum of the 3x3 taps that
land on it: 2.25x fewer products than the conv over the upsampled image, and no upsampled copy.

    x: [T, H, W, C] channels-last  ->  out: [T, 2H, 2W, Cout], + bias

On a GPU with ops/causal_conv.py's kernel, each phase (py, px) is one launch of that kernel (taps
(1, 2), offsets (py - 1, px - 1)) storing into the strided view of `out` that holds the phase; with
`gamma` the epilogue also writes the RMS norm (+ SiLU) of the output, the next conv's input, and its
last two frames (that conv's next stream history): the pass of the norm kernel over `out` is gone.
Elsewhere (the reference): one cuDNN conv2d of the four phases as 4 Cout output channels, then
ops/interleave.py's pass puts them in place with the bias.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from turbovid.ops import causal_conv, interleave, rms_silu

# For phase 0 or 1 of a 2x nearest upsample: which of the 3x3 kernel's rows (or columns) land on each
# of the two low-resolution rows a 2x2 kernel sees (output row 2i + 0 sees rows i - 1, i; 2i + 1
# sees i, i + 1).
SUBPIXEL_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


@dataclass(frozen=True)
class PackedUpsample:
    phases: tuple[causal_conv.PackedConv, ...]  # phase 2 py + px: [4 C, N1 + N2], rows (2 r + s) C + c
    stacked: torch.Tensor  # [4 Cout, C, 2, 2] channels-last: the phases as one conv2d's outputs (reference)
    bias: torch.Tensor  # [Cout]
    cin: int
    cout: int


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, C, 3, 3] -> [2, 2, Cout, C, 2, 2] float32: phase (py, px)'s 2x2 kernel."""
    w = weight.detach().float()
    sub = w.new_zeros(2, 2, w.shape[0], w.shape[1], 2, 2)
    for py in range(2):
        for px in range(2):
            for r, rows in enumerate(SUBPIXEL_TAPS[py]):
                for s, cols in enumerate(SUBPIXEL_TAPS[px]):
                    sub[py, px, :, :, r, s] = w[:, :, list(rows)][:, :, :, list(cols)].sum(dim=(2, 3))
    return sub


def pack(weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> PackedUpsample:
    """The 3x3 conv's weight [Cout, C, 3, 3] and bias in both paths' layouts and dtype."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"upsample_conv packs 3x3 kernels, got {tuple(weight.shape)}")
    cout, cin = weight.shape[:2]
    sub = phase_weights(weight)
    n1, n2 = causal_conv.split_channels(cout)
    b = bias.detach().to(dtype).contiguous()
    phases = []
    for py in range(2):
        for px in range(2):
            w = sub[py, px].permute(2, 3, 1, 0).reshape(4 * cin, cout)  # [(r, s, c), o]
            packed = w.new_zeros(4 * cin, n1 + n2)
            packed[:, :cout] = w
            phases.append(causal_conv.PackedConv(packed.to(dtype).contiguous(), b, cin, cout, n1, n2,
                                                 sub[py, px].to(dtype)))
    stacked = sub.reshape(4 * cout, cin, 2, 2).to(dtype).contiguous(memory_format=torch.channels_last)
    return PackedUpsample(tuple(phases), stacked, b, cin, cout)


def upsample_conv_reference(x: torch.Tensor, conv: PackedUpsample, out: torch.Tensor) -> torch.Tensor:
    """cuDNN's conv2d of the four phases, then the interleave (+ bias) into out."""
    t, h, w, _ = x.shape
    o = F.conv2d(x.permute(0, 3, 1, 2), conv.stacked, None, padding=1)
    o = o.permute(0, 2, 3, 1).contiguous()  # (T, H + 1, W + 1, 4 Cout): channel group 2 py + px is phase (py, px)
    interleave.subpixel_(o, conv.bias, out.view(t, h, 2, w, 2, conv.cout))
    return out


def default_config(device: torch.device, cin: int, cout: int, h: int, w: int, elem: int = 2) -> causal_conv.Config:
    """128-pixel programs, descriptors where the conv kernel has them, 4 stages up to 128 outputs and
    3 past them (H100, benchmarks/explore_upsample_conv.py, with the norm in the epilogue: 192 -> 96 at
    a 480p chunk 1.55 ms, vs 1.73 with 3 stages and 4.08 with the 3x3x3 conv's 256-pixel programs;
    384 -> 192 0.98 ms, vs 1.21 with 4 stages and 1.25 with 8 warps)."""
    block_k = 64 if cin % 64 == 0 else 32 if cin % 32 == 0 else causal_conv.MIN_BLOCK_K
    cfg = causal_conv.Config(block_m=128, block_k=block_k, num_warps=4, num_stages=4 if cout <= 128 else 3,
                             rows=causal_conv.tile_rows(h, w, 128), tma=causal_conv.hopper_path(device))
    return causal_conv.fit_shared_memory(cfg, cout, elem)


def _phase(y: torch.Tensor, py: int, px: int) -> torch.Tensor:
    """The [T, H, W, C] strided view of y [T, 2H, 2W, C] at pixels (2i + py, 2j + px)."""
    t, h2, w2, c = y.shape
    return y.view(t, h2 // 2, 2, w2 // 2, 2, c)[:, :, py, :, px]


def upsample_conv(x: torch.Tensor, conv: PackedUpsample, out: Optional[torch.Tensor] = None,
                  gamma: Optional[torch.Tensor] = None, silu: bool = True, normed: Optional[torch.Tensor] = None,
                  history_out: Optional[torch.Tensor] = None,
                  config: Optional[causal_conv.Config] = None) -> torch.Tensor:
    """The module docstring's conv of x [T, H, W, C] into out [T, 2H, 2W, Cout] (+ bias), in x's
    dtype. With gamma ([Cout]) also normed = rms_silu(out) (its float math from the rounded out, as
    a pass over the stored tensor would) and, for T >= 2, history_out [2, 2H, 2W, Cout] = the last two
    frames of normed. Returns out."""
    if x.dim() != 4 or x.shape[-1] != conv.cin or not x.is_contiguous():
        raise ValueError(f"upsample_conv: x must be a contiguous [T, H, W, {conv.cin}] tensor, got {tuple(x.shape)}")
    if x.dtype != conv.stacked.dtype:
        raise ValueError(f"upsample_conv: the input is {x.dtype}, the packed weights {conv.stacked.dtype}")
    t, h, w, c = x.shape
    shape = (t, 2 * h, 2 * w, conv.cout)
    out = x.new_empty(shape) if out is None else out
    if gamma is not None and normed is None:
        raise ValueError("upsample_conv: gamma needs normed, the tensor the norm's output goes to")
    if gamma is not None and gamma.numel() != conv.cout:
        raise ValueError(f"upsample_conv: gamma must have {conv.cout} values (one per output channel)")
    named = (("out", out, shape), ("normed", normed, shape), ("history_out", history_out, (2, *shape[1:])))
    for name, y, want in named:
        if y is not None and (tuple(y.shape) != want or not y.is_contiguous() or y.dtype != x.dtype):
            raise ValueError(f"upsample_conv: {name} must be a contiguous {want} {x.dtype} tensor")
    if history_out is not None and (gamma is None or t < 2):
        raise ValueError("upsample_conv: history_out needs gamma and at least 2 frames")
    if not rms_silu._use_kernel(x):
        upsample_conv_reference(x, conv, out)
        if gamma is not None:
            normed.copy_(rms_silu.rms_silu_reference(out, gamma, silu))
            if history_out is not None:
                history_out.copy_(normed[-2:])
        return out
    cfg = config or default_config(x.device, c, conv.cout, h, w, x.element_size())
    causal_conv.check_config(cfg, c, "upsample_conv")
    for py in range(2):
        for px in range(2):
            view = [None if y is None else _phase(y, py, px) for y in (out, normed, history_out)]
            phase, offset = conv.phases[2 * py + px], (py - 1, px - 1)
            if gamma is None:
                causal_conv.launch(x, None, phase, cfg, view[0], taps=(1, 2), offset=offset)
            else:
                causal_conv.launch(x, None, phase, cfg, view[1], gamma=gamma, silu=silu, x_out=view[0],
                                   history_out=view[2], taps=(1, 2), offset=offset)
    return out
