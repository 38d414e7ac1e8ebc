"""Fast Wan2.1 VAE decode: the reference network and numerics, restructured for speed and memory.

- Several latent frames per pass (one pass when memory allows): the causal stream state makes
  any temporal chunking exact, including the first-frame rule of the temporal upsampler.
- Activations stay channels-last, [1, T, H, W, C]: cuDNN runs NDHWC convolutions with no layout
  transposes, 1x1 convolutions become matmuls, and the RMS norm + SiLU before each conv is one
  Triton pass that writes straight into the conv's input (no torch.cat) and the next chunk's
  history out. Our conv kernel reads the previous chunk's last two frames (the stream history)
  where they lie, and with the norm in its epilogue writes the next history itself: no copies of
  the history in and out of the buffers (they took ~100 ms of a 480p decode on an H100 before the
  norm kernel wrote them, and 14 / 61 ms at 480p / 720p after it: docs/benchmarks.md, "Session 26").
- Conv biases are not added by PyTorch's separate broadcast pass: the next norm kernel or the
  residual-add kernel takes them.
- The normed 3x3x3 convs run as our Triton implicit-GEMM kernel (ops/causal_conv.py) on Hopper:
  1.3x cuDNN's conv3d rate at 192 and 384 channels, its input written once at 96 (cuDNN's conv3d
  picks an sm80 kernel there, ~70 TFLOP/s; elsewhere the 96-channel convs run as one 2D conv over
  the three time taps laid side by side as 288 channels, written by the norm kernel); see
  SMALL_CONV / WIDE_CONV.
- Nearest 2x upsampling followed by a 3x3 conv is computed as four 2x2 convs over the
  low-resolution input, one an output phase (2.25x fewer FLOPs, no upsampled copy;
  ops/upsample_conv.py). On Hopper they run as our conv kernel, storing each phase in place and the
  next residual block's normalised input from the epilogue; elsewhere one cuDNN conv2d computes the
  four phases and a Triton pass interleaves them with the bias (ops/interleave.py, which also
  interleaves the time upsampler's frame halves).
- The decoder's latent-resolution part (conv_in, middle blocks with their frame-wide attention)
  and its first upsampling stage run untiled, over all frames (or the plan's mid_chunk) a pass; the
  rest is chunked in time and, when the memory plan says so (vae_tiling.py), split into overlapping
  spatial tiles, so tiling never truncates the attention.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from turbovid.models.vae import AttentionBlock, CausalConv3d, Resample, ResBlock, WanVAE
from turbovid.models.vae_tiling import DEFAULT_SOFT_CAP, SMALL_CHANNELS, DecodePlan, plan_decode, tile_weights
from turbovid.ops import causal_conv, conv_head, interleave, upsample_conv, wide_attention
from turbovid.ops.rms_silu import add_bias_residual_, rms_silu, rms_silu_stream

log = logging.getLogger("turbovid.vae")

# A residual block's sum y + bias + h formed by the next norm kernel (next block's first norm, the
# head's norm) instead of a separate add pass: one pass over the sum fewer; False for A/B timing.
FUSE_RESIDUAL = True

# In the "triton" modes, a residual block's conv1 and conv2 end with the next norm (+ SiLU) in their
# epilogue, writing the next conv's time-padded input directly: no pass of the norm kernel over the
# conv's output (conv2's also adds its bias and the residual, the next block's first norm); False
# for A/B timing.
FUSE_NORM = True

# How the normed causal 3x3x3 convs run. SMALL_CONV: those over at most SMALL_CHANNELS input
# channels (the full-resolution 96 -> 96, the 96 -> 3 head), where cuDNN's conv3d picks slow
# kernels. "stacked": the norm kernel writes the three time taps side by side as 3C channels and one
# 2D conv does the rest; "taps": three 2D convs summed; "triton": our implicit-GEMM kernel
# (ops/causal_conv.py) over the time-padded input, written once; "conv3d": plain cuDNN.
# WIDE_CONV: the others (192 and 384 channels), "triton" or "conv3d". "auto": "triton" where the
# kernel has its Hopper path (H100, 480p decode: 0.64 vs 0.70 s for the small convs alone, 0.60 s
# with the wide ones too, at 1.3x cuDNN's conv3d rate; docs/benchmarks.md), else "stacked" / "conv3d".
SMALL_CONV = "auto"
WIDE_CONV = "auto"
# With the "triton" small mode, a conv to at most conv_head.MAX_COUT channels (the RGB head) runs
# by taps (ops/conv_head.py) instead of as our conv kernel; False for A/B timing.
HEAD_BY_TAPS = True
# The middle attention (one head of 384 channels, within each latent frame): "triton", our kernel
# (ops/wide_attention.py); "sdpa", PyTorch's scaled_dot_product_attention (its memory-efficient
# kernel: no flash kernel takes 384); "auto": "triton" where the conv kernel has its Hopper path
# (where it was measured: docs/benchmarks.md), else "sdpa".
ATTENTION = "auto"
# The up layers through the first upsampler run with the middle blocks over all frames (or the
# plan's mid_chunk), their output kept for the chunked rest: chunks of 1-2 latent frames launched
# ~100 programs a conv there. H100: 480p 0.559 -> 0.556 s, 720p 1.344 -> 1.338 s, and the tiled
# decode's seams 70 -> 84 dB (docs/benchmarks.md, "Session 25"). False for A/B timing.
LOW_STAGES = True
_SMALL_MODES = ("stacked", "taps", "triton", "conv3d")
_WIDE_MODES = ("triton", "conv3d")


@dataclass(frozen=True)
class ConvModes:
    """How the fast decode runs its normed convs and its middle attention (conv_modes resolves "auto")."""

    small: str = "stacked"
    wide: str = "conv3d"
    attention: str = "sdpa"


def conv_modes(device: torch.device) -> ConvModes:
    """SMALL_CONV / WIDE_CONV / ATTENTION for `device`, "auto" resolved."""
    if SMALL_CONV not in ("auto", *_SMALL_MODES) or WIDE_CONV not in ("auto", *_WIDE_MODES):
        raise ValueError(f"SMALL_CONV must be auto or one of {_SMALL_MODES}, WIDE_CONV auto or one of {_WIDE_MODES}")
    if ATTENTION not in ("auto", "triton", "sdpa"):
        raise ValueError("ATTENTION must be auto, triton or sdpa")
    fast = causal_conv.hopper_path(device)
    return ConvModes(SMALL_CONV if SMALL_CONV != "auto" else "triton" if fast else "stacked",
                     WIDE_CONV if WIDE_CONV != "auto" else "triton" if fast else "conv3d",
                     ATTENTION if ATTENTION != "auto" else "triton" if fast else "sdpa")


class FastConv:
    """A causal conv over channels-last activations, optionally preceded by RMS norm (+ SiLU).

    With `fused_bias` it returns the conv output without its bias; the caller adds `self.bias`
    inside the next kernel (norm or residual add) instead of in a separate pass.
    """

    def __init__(self, conv: CausalConv3d, dtype: torch.dtype, fused_bias: bool = False, normed: bool = False,
                 modes: ConvModes = ConvModes()):
        w = conv.weight.detach()
        cout, cin, kt, kh, kw = w.shape
        normed3 = normed and (kt, kh, kw) == (3, 3, 3) and conv.stride == (1, 1, 1)
        self.mode = (modes.small if cin <= SMALL_CHANNELS else modes.wide) if normed3 else "conv3d"
        if self.mode == "triton" and ((conv.time_pad, conv.space_pad[0], conv.space_pad[2]) != (2, 1, 1)
                                      or cin % causal_conv.MIN_BLOCK_K):
            self.mode = "conv3d"  # the kernel's padding is the decoder's (causal 2 in time, 1 in space)
        self.head = None
        if self.mode == "triton" and cout <= conv_head.MAX_COUT and HEAD_BY_TAPS:  # the RGB head: by taps
            self.head = conv_head.pack(w, None if fused_bias else conv.bias, dtype)
            self.weight = None
        elif self.mode == "triton":
            self.packed = causal_conv.pack(w, conv.bias, dtype)
            self.weight = None
        elif self.mode == "stacked":  # W2[o, tau*C + c] = W[o, c, tau]
            self.weight = w.permute(0, 2, 1, 3, 4).reshape(cout, kt * cin, kh, kw)
            self.weight = self.weight.to(dtype).contiguous(memory_format=torch.channels_last)
        elif self.mode == "taps":
            self.weight = [w[:, :, k].to(dtype).contiguous(memory_format=torch.channels_last) for k in range(kt)]
        else:
            self.weight = w.to(dtype).contiguous(memory_format=torch.channels_last_3d)
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        self.fused_bias = fused_bias
        self.time_pad = conv.time_pad
        self.space_pad = conv.space_pad[2], conv.space_pad[0]  # (h, w)
        self.stride = conv.stride

    def __call__(self, x, state: dict, key: str, gamma: Optional[torch.Tensor] = None,
                 silu: bool = True, in_bias: Optional[torch.Tensor] = None,
                 x_out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: activations, or a Pending residual sum that the norm kernel forms (stored into x_out
        if given); the Pending lets go of its tensors once the kernel has read them, so they are
        not alive during the conv. Only where a norm precedes the conv."""
        pending = isinstance(x, Pending)
        if pending and (gamma is None or in_bias is not None or not (self.mode == "stacked" or self.time_pad)):
            raise ValueError("FastConv: a pending residual sum needs the streaming norm (and no other bias) before the conv")
        if self.head is not None:
            return self._head(x, state, key, gamma, silu, in_bias, x_out)
        _, t, h, w, c = x.y.shape if pending else x.shape  # (1, T, H, W, C)
        dtype, device = (x.y if pending else x).dtype, (x.y if pending else x).device
        if self.mode == "stacked":
            stacked = torch.empty(t, h, w, 3 * c, dtype=dtype, device=device)  # [t', ..., tau*C + c] = frame t' + tau - 2
            history = torch.empty(2, h, w, c, dtype=dtype, device=device)  # the last two normalised frames
            _norm_stream(x, gamma, silu, stacked, state.get(key), history, 3, h * w, in_bias, x_out)
            state[key] = history
            del x  # a Pending's parts are gone already
            bias = None if self.fused_bias else self.bias
            y = F.conv2d(stacked.permute(0, 3, 1, 2), self.weight, bias, padding=self.space_pad)
            return y.permute(0, 2, 3, 1).reshape(1, t, h, w, -1)
        p = self.time_pad
        if p and gamma is not None and self.mode == "triton":  # our kernel reads the history where it is
            inp = self.prepare(x, state, key, gamma, silu, in_bias, x_out)
            return causal_conv.causal_conv_stream(*inp, self.packed, bias=not self.fused_bias).unsqueeze(0)
        if p and gamma is not None:  # one kernel: history + normalised frames, and the next history
            buf = torch.empty(1, p + t, h, w, c, dtype=dtype, device=device)
            history = torch.empty(p, h, w, c, dtype=dtype, device=device)
            _norm_stream(x, gamma, silu, buf, state.get(key), history, 1, h * w, in_bias, x_out)
            state[key] = history
        elif p:  # no norm before it (the upsampler's time conv): copies
            buf = x.new_empty(1, p + t, h, w, c)
            prev = state.get(key)
            if prev is None:
                buf[:, :p].zero_()
            else:
                buf[:, :p].copy_(prev)
            buf[:, p:].copy_(x)
            state[key] = buf[:, t:].clone()  # the last p input frames, for the next chunk
        elif gamma is not None:
            buf = rms_silu(x, gamma, silu, bias=in_bias)
        else:
            buf = x
        bias = None if self.fused_bias else self.bias
        if self.mode == "triton":
            return causal_conv.causal_conv(buf[0], self.packed, bias=not self.fused_bias).unsqueeze(0)
        if self.mode == "taps":
            frames = buf[0].permute(0, 3, 1, 2)  # (p+T, C, H, W), channels-last
            y = F.conv2d(frames[:t], self.weight[0], bias, padding=self.space_pad)
            for k in range(1, p + 1):
                y += F.conv2d(frames[k:k + t], self.weight[k], None, padding=self.space_pad)
            return y.permute(0, 2, 3, 1).reshape(1, t, h, w, -1)
        y = F.conv3d(buf.permute(0, 4, 1, 2, 3), self.weight, bias, self.stride, (0, *self.space_pad))
        return y.permute(0, 2, 3, 4, 1).contiguous()  # a no-op when cuDNN returned channels-last

    def prepare(self, x, state: dict, key: str, gamma: torch.Tensor, silu: bool = True,
                in_bias: Optional[torch.Tensor] = None, x_out: Optional[torch.Tensor] = None) -> ConvInput:
        """This conv's input (our kernel's): the RMS norm (+ SiLU) of x (or of a Pending's sum, stored
        into x_out if given) after the stream history state[key], which moves on to its last frames."""
        src = x.y if isinstance(x, Pending) else x
        _, t, h, w, c = src.shape
        frames = src.new_empty(t, h, w, c)
        history = state.get(key)
        state[key] = src.new_empty(self.time_pad, h, w, c)
        _norm_stream(x, gamma, silu, frames, history, state[key], 1, h * w, in_bias, x_out, with_history=False)
        return ConvInput(frames, history)

    def fusable(self) -> bool:
        """Whether conv_into can run this conv (our kernel, no head)."""
        return self.mode == "triton" and self.head is None

    def conv_into(self, inp: ConvInput, state: dict, key: str, gamma: torch.Tensor,
                  residual: Optional[torch.Tensor] = None, x_out: Optional[torch.Tensor] = None) -> ConvInput:
        """This conv over `inp` with its bias (+ residual, the sum stored into x_out) and the next
        conv's RMS norm + SiLU (gamma) in the kernel's epilogue. Returns the next conv's input, whose
        stream history is state[key] (which moves on to its last frames)."""
        t, h, w, _ = inp.frames.shape
        nxt = inp.frames.new_empty(t, h, w, self.packed.cout)
        # the kernel writes the next history too, unless a chunk of one frame needs the previous one's
        hist = nxt.new_empty(2, h, w, self.packed.cout) if t >= 2 else None
        causal_conv.causal_conv_stream(*inp, self.packed, out=nxt, gamma=gamma,
                                       residual=None if residual is None else residual[0],
                                       x_out=None if x_out is None else x_out[0], history_out=hist)
        return _next_input(state, key, nxt, hist)

    def _head(self, x, state: dict, key: str, gamma: torch.Tensor, silu: bool, in_bias: Optional[torch.Tensor],
              x_out: Optional[torch.Tensor]):
        """Norm + conv by taps in one kernel; state[key]: what the last two frames add to the next
        chunk's first two outputs."""
        if isinstance(x, Pending):
            y, bias, res = x.take()
            out, state[key] = conv_head.stream(y[0], gamma, self.head, silu, bias=bias, residual=res[0],
                                               x_out=None if x_out is None else x_out[0], partial=state.get(key))
            del y, res
        else:
            out, state[key] = conv_head.stream(x[0], gamma, self.head, silu, bias=in_bias, partial=state.get(key))
        return out.unsqueeze(0)


@dataclass
class Pending:
    """A residual block's output not yet added up: y + bias + h. The next residual block's first
    norm forms it in its own pass (one read of the sum fewer); anything else materialises it."""

    y: Optional[torch.Tensor]
    bias: torch.Tensor
    h: Optional[torch.Tensor]

    def take(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(y, bias, h), and this object lets go of y and h (the caller frees them when done)."""
        if self.y is None:
            raise RuntimeError("a Pending residual sum is consumed once")
        parts = self.y, self.bias, self.h
        self.y = self.h = None
        return parts


def _next_input(state: dict, key: str, frames: torch.Tensor, history_out: Optional[torch.Tensor]) -> "ConvInput":
    """A conv's input: frames (just written, normalised) after the stream history state[key], which
    moves on to history_out, the frames' last two (None for a one-frame chunk: formed here)."""
    prev = state.get(key)
    if history_out is None:  # one frame: the previous chunk's last one, then it
        history_out = torch.cat([frames.new_zeros(1, *frames.shape[1:]) if prev is None else prev[1:], frames])
    state[key] = history_out
    return ConvInput(frames, prev)


class ConvInput(NamedTuple):
    """Our conv kernel's input in the stream: the chunk's normalised frames [T, H, W, C] and the
    history, the previous chunk's last two [2, H, W, C] (None at the stream's start: zeros), read
    where they are (causal_conv.causal_conv_stream): no time-padded copy of the two."""

    frames: torch.Tensor
    history: Optional[torch.Tensor]


@dataclass
class Prepared:
    """A residual block's output x (the next block's residual) with the next block's conv1 input,
    already normalised (FastConv.conv_into)."""

    x: Optional[torch.Tensor]
    buf: Optional[ConvInput]

    def take(self) -> tuple[torch.Tensor, ConvInput]:
        """(x, buf), and this object lets go of them (buf is freed once conv1 has read it)."""
        if self.x is None:
            raise RuntimeError("a Prepared input is consumed once")
        parts = self.x, self.buf
        self.x = self.buf = None
        return parts


def materialize(x):
    if isinstance(x, Prepared):
        raise TypeError("a Prepared input goes only to the residual block it was prepared for")
    if not isinstance(x, Pending):
        return x
    y, bias, h = x.take()
    return add_bias_residual_(y, bias, h)


def _norm_stream(x, gamma, silu, out, history, history_out, taps, frame_rows, in_bias, x_out,
                 with_history: bool = True) -> None:
    """rms_silu_stream of activations x, or of a Pending's sum (its parts freed when this returns)."""
    if isinstance(x, Pending):
        y, bias, h = x.take()
        rms_silu_stream(y, gamma, silu, out, history, history_out, taps, frame_rows, bias=bias, residual=h,
                        x_out=x_out, with_history=with_history)
    else:
        rms_silu_stream(x, gamma, silu, out, history, history_out, taps, frame_rows, bias=in_bias,
                        with_history=with_history)


class FastRes:
    def __init__(self, block: ResBlock, dtype: torch.dtype, modes: ConvModes = ConvModes()):
        self.gamma1 = block.norm1.gamma.detach().flatten().float()
        self.gamma2 = block.norm2.gamma.detach().flatten().float()
        self.conv1 = FastConv(block.conv1, dtype, fused_bias=True, normed=True, modes=modes)
        self.conv2 = FastConv(block.conv2, dtype, fused_bias=True, normed=True, modes=modes)
        self.shortcut = None
        if block.shortcut is not None:
            w = block.shortcut.weight.detach()
            self.shortcut = (w.reshape(w.shape[0], w.shape[1]).to(dtype), block.shortcut.bias.detach().to(dtype))

    def fusable(self) -> bool:
        """Whether both convs run with the next norm in their epilogue (FUSE_NORM)."""
        return FUSE_NORM and self.conv1.fusable() and self.conv2.fusable()

    def __call__(self, x, state: dict, key: str, nxt: Optional[tuple["FastRes", str]] = None,
                 owned: bool = True):
        """x: activations, a Pending or a Prepared (from the block before). nxt: (the next layer, its
        key) when that is a residual block: conv2 then writes its conv1's input and this returns a
        Prepared. owned: x may be overwritten (it is no view of a tensor the caller keeps)."""
        if self.fusable():
            return self._fused(x, state, key, nxt, owned)
        if isinstance(x, Pending) and FUSE_RESIDUAL:  # conv1's norm forms the input, and keeps it for h
            # in y's place, as the unfused add does: a new tensor for the sum was one activation
            # more at the norm (H100, 480p decode: peak 4.11 vs 3.96 GiB unfused)
            pending, x = x, x.y
            y = self.conv1(pending, state, key + ".1", self.gamma1, x_out=x)
        else:
            x = materialize(x)
            y = self.conv1(x, state, key + ".1", self.gamma1)  # without conv1's bias: the next norm adds it
        h = x if self.shortcut is None else F.linear(x, *self.shortcut)
        y = self.conv2(y, state, key + ".2", self.gamma2, in_bias=self.conv1.bias)
        return Pending(y, self.conv2.bias, h)

    def _fused(self, x, state: dict, key: str, nxt: Optional[tuple["FastRes", str]], owned: bool):
        owned = owned or isinstance(x, (Prepared, Pending))  # their tensors are ours
        if isinstance(x, Prepared):
            x, buf1 = x.take()
        elif isinstance(x, Pending) and FUSE_RESIDUAL:  # conv1's norm forms the sum, kept in y's place
            pending, x = x, x.y
            buf1 = self.conv1.prepare(pending, state, key + ".1", self.gamma1, x_out=x)
            del pending
        else:
            x = materialize(x)
            buf1 = self.conv1.prepare(x, state, key + ".1", self.gamma1)
        buf2 = self.conv1.conv_into(buf1, state, key + ".2", self.gamma2)
        del buf1
        h = x if self.shortcut is None else F.linear(x, *self.shortcut)
        if nxt is not None and nxt[0].fusable() and causal_conv.residual_in_epilogue(buf2.frames, self.conv2.packed):
            block, nkey = nxt
            # the sum x + conv2 goes into h's place unless h is the caller's tensor
            out = h if owned or h is not x else torch.empty_like(h)
            del x
            buf = self.conv2.conv_into(buf2, state, nkey + ".1", block.gamma1, residual=h, x_out=out)
            return Prepared(out, buf)
        # the sum is the next norm's (a residual block's conv1, or the head): it forms it in its pass
        y = causal_conv.causal_conv_stream(*buf2, self.conv2.packed, bias=False).unsqueeze(0)
        return Pending(y, self.conv2.bias, h)


class FastAttention:
    def __init__(self, block: AttentionBlock, dtype: torch.dtype, mode: str = "sdpa"):
        c = block.proj.weight.shape[0]
        self.mode = mode if wide_attention.supported(c) else "sdpa"
        self.gamma = block.norm.gamma.detach().flatten().float()
        self.qkv = (block.to_qkv.weight.detach().reshape(3 * c, c).to(dtype), block.to_qkv.bias.detach().to(dtype))
        self.proj = (block.proj.weight.detach().reshape(c, c).to(dtype), block.proj.bias.detach().to(dtype))

    def __call__(self, x, state: dict, key: str) -> torch.Tensor:
        x = materialize(x)
        b, t, h, w, c = x.shape
        qkv = F.linear(rms_silu(x, self.gamma, silu=False), *self.qkv).view(b * t, 1, h * w, 3 * c)
        q, k, v = qkv.split(c, dim=-1)
        out = torch.empty(b * t, 1, h * w, c, dtype=x.dtype, device=x.device)
        if self.mode == "triton":  # every frame in one launch, q / k / v read in place from qkv
            wide_attention.attention(q[:, 0], k[:, 0], v[:, 0], out=out[:, 0])
            return F.linear(out.view(b, t, h, w, c), *self.proj).add_(x)
        group = max(1, (1 << 28) // (h * w) ** 2)  # frames per call: bounds a materialised score matrix
        for s in range(0, b * t, group):
            out[s:s + group] = F.scaled_dot_product_attention(q[s:s + group], k[s:s + group], v[s:s + group])
        return F.linear(out.view(b, t, h, w, c), *self.proj).add_(x)


class FastUpsample:
    """2x spatial upsample + 3x3 conv as four 2x2 convs, one an output phase (ops/upsample_conv.py);
    optional 2x in time first. In the "triton" wide mode the 2x2 convs run as our conv kernel, which
    also writes the next residual block's normalised input (FastRes.fusable, FUSE_NORM)."""

    def __init__(self, block: Resample, dtype: torch.dtype, modes: ConvModes = ConvModes()):
        if not block.mode.startswith("up"):
            raise ValueError("the fast path decodes only")
        self.packed = upsample_conv.pack(block.conv.weight, block.conv.bias, dtype)
        # our kernel: its K slices need cin in multiples of 16 (then cout = cin / 2 is a multiple of
        # 8, so the phases' strided views start 16-byte aligned, as Hopper's descriptors need)
        self.kernel = modes.wide == "triton" and self.packed.cin % causal_conv.MIN_BLOCK_K == 0
        self.time = FastConv(block.time_conv, dtype, fused_bias=True) if block.mode == "up3d" else None

    def __call__(self, x, state: dict, key: str, nxt: Optional[tuple["FastRes", str]] = None):
        """x -> the upsampled activations; with nxt (the next layer, its key), a fusable residual block
        and the kernel, a Prepared: them and that block's conv1 input."""
        x = materialize(x)
        if self.time is not None:
            x = self._double_frames(x, state, key)
        _, t, h, w, _ = x.shape
        y = x.new_empty(t, 2 * h, 2 * w, self.packed.cout)
        if not self.kernel:
            return upsample_conv.upsample_conv_reference(x[0], self.packed, y).unsqueeze(0)
        if nxt is None or not (FUSE_NORM and nxt[0].fusable()):
            return upsample_conv.upsample_conv(x[0], self.packed, y).unsqueeze(0)
        block, nkey = nxt
        normed = torch.empty_like(y)
        hist = y.new_empty(2, *y.shape[1:]) if t >= 2 else None
        upsample_conv.upsample_conv(x[0], self.packed, y, gamma=block.gamma1, normed=normed, history_out=hist)
        return Prepared(y.unsqueeze(0), _next_input(state, nkey + ".1", normed, hist))

    def _double_frames(self, x: torch.Tensor, state: dict, key: str) -> torch.Tensor:
        first = None
        if key not in state:  # first chunk of the stream: frame 0 passes through once
            state[key] = True
            first, x = x[:, :1], x[:, 1:].contiguous()
        if x.shape[1]:
            y = self.time(x, state, key + ".t")  # (1, T, H, W, 2C): channel half j is output frame 2t+j
            b, t, h, w, c2 = y.shape
            x = interleave.frames_(y, self.time.bias, y.new_empty(b, t, 2, h, w, c2 // 2))  # + bias, interleaved
            x = x.view(b, 2 * t, h, w, c2 // 2)
        return x if first is None else torch.cat([first, x], dim=1)


class FastDecoder:
    """Weights of a WanVAE decoder prepared for the fast path (dtype, channels-last, sub-pixel)."""

    def __init__(self, vae: WanVAE, dtype: torch.dtype, modes: ConvModes = ConvModes()):
        dec = vae.decoder
        self.modes = modes
        w = vae.post_quant_conv.weight.detach()
        self.post_quant = (w.reshape(w.shape[0], w.shape[1]).float(), vae.post_quant_conv.bias.detach().float())
        self.conv_in = FastConv(dec.conv_in, dtype)
        self.mid = [self._layer(m, dtype, modes) for m in dec.mid]
        self.up = [self._layer(m, dtype, modes) for m in dec.up]
        self.gamma_out = dec.norm_out.gamma.detach().flatten().float()
        self.conv_out = FastConv(dec.conv_out, dtype, normed=True, modes=modes)
        self.dtype = dtype
        # the up layers through the first upsampler run in the latent stage (LOW_STAGES)
        ups = [i for i, m in enumerate(self.up) if isinstance(m, FastUpsample)]
        self.low = ups[0] + 1 if ups and LOW_STAGES else 0
        first = self.up[ups[0]] if self.low else None
        self.low_time = 2 if first is not None and first.time is not None else 1  # frames a latent frame becomes
        self.low_space = 2 if first is not None else 1

    @staticmethod
    def _layer(m, dtype, modes):
        if isinstance(m, ResBlock):
            return FastRes(m, dtype, modes)
        if isinstance(m, AttentionBlock):
            return FastAttention(m, dtype, modes.attention)
        return FastUpsample(m, dtype, modes)

    def low_frames(self, t: int) -> int:
        """Frames the latent stage makes of the first t latent frames (the first one passes once)."""
        return 0 if t == 0 else 1 + self.low_time * (t - 1)

    def latent_stage(self, z: torch.Tensor, state: dict) -> torch.Tensor:
        """Raw latents (1, T, h, w, z) float32 -> the output of the middle blocks and the first `low`
        up layers: (1, low_frames(T) on a stream's first chunk, else low_time * T, low_space * h,
        low_space * w, C)."""
        x = F.linear(z, *self.post_quant).to(self.dtype)
        x = self.conv_in(x, state, "in")
        for i in range(len(self.mid)):
            x = _call(self.mid, i, x, state, "mid", owned=True)
        x = materialize(x)
        for i in range(self.low):  # the last one hands no conv input on: the chunks that read its output do
            x = _call(self.up, i, x, state, "up", owned=True, end=self.low)
        return materialize(x)

    def up_stage(self, x: torch.Tensor, state: dict) -> torch.Tensor:
        """The latent stage's output (a chunk of its frames) -> RGB (1, F, H, W, 3), unclamped."""
        for i in range(self.low, len(self.up)):  # the input may be a view of the caller's latent-stage output
            x = _call(self.up, i, x, state, "up", owned=i > self.low)
        if not FUSE_RESIDUAL:
            x = materialize(x)
        return self.conv_out(x, state, "out", self.gamma_out)  # a Pending: the head's norm forms the sum


def _call(layers: list, i: int, x, state: dict, prefix: str, owned: bool, end: Optional[int] = None):
    """layers[i] on x (keyed prefix + i); a residual block or upsampler followed by a residual block
    (before `end`) is told so (their nxt). The caller rebinds its x to the result, so x's parts are
    not kept alive meanwhile."""
    end = len(layers) if end is None else end
    layer, after = layers[i], layers[i + 1] if i + 1 < end else None
    nxt = (after, f"{prefix}{i + 1}") if isinstance(after, FastRes) else None
    if isinstance(layer, FastUpsample):
        return layer(x, state, f"{prefix}{i}", nxt)
    if not isinstance(layer, FastRes):
        return layer(x, state, f"{prefix}{i}")
    return layer(x, state, f"{prefix}{i}", nxt, owned)


def prepared(vae: WanVAE, device: torch.device, dtype: torch.dtype) -> FastDecoder:
    """The FastDecoder for (device, dtype), rebuilt when the module's weights were replaced or changed."""
    params = [p for name, p in vae.named_parameters() if not name.startswith("encoder.")]
    version = tuple((id(p), p._version) for p in params)
    modes = conv_modes(device)
    key = (str(device), dtype, modes, HEAD_BY_TAPS, LOW_STAGES)
    hit = vae._fast_cache.get(key)
    if hit is None or hit[0] != version:
        vae._fast_cache.pop(key, None)
        hit = vae._fast_cache[key] = (version, FastDecoder(vae, dtype, modes))
    return hit[1]


def _chunks(total: int, size: int):
    for s in range(0, total, size):
        yield s, min(total, s + size)


def default_budget(device: torch.device) -> Optional[int]:
    """Bytes the decode may allocate on `device`: the free memory (plus the allocator's cached blocks)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(0.9 * (free + cached))


@torch.no_grad()
def fast_decode(
    vae: WanVAE, latents: torch.Tensor, tiling: str = "auto", memory_budget: Optional[int] = None,
    dtype: Optional[torch.dtype] = None, plan: Optional[DecodePlan] = None,
    on_frames: Optional[Callable[[int, int, torch.Tensor], None]] = None, return_video: bool = True,
) -> Optional[torch.Tensor]:
    """Normalised latents [B, z, T, h, w] -> video [B, 3, 1+4(T-1), 8h, 8w] float32 in [-1, 1].

    on_frames(sample, first, frames [3, t, H, W], in [-1, 1]) is called as soon as frames are final
    (each chunk of the untiled decode, each chunk of the last tile when tiled), in frame order. With
    return_video=False the decode returns None and, untiled, never holds the whole float32 video
    (0.36 GiB at 480p, 0.84 GiB at 720p): the frames only pass through on_frames."""
    if not return_video and on_frames is None:
        raise ValueError("return_video=False needs on_frames: the frames would go nowhere")
    vae.check_latents(latents)
    p = next(vae.parameters())
    device, dtype = p.device, dtype or p.dtype
    dec = prepared(vae, device, dtype)
    bsz, _, t, h, w = latents.shape
    tf, sf = vae.time_factor, vae.space_factor
    if plan is None:
        elem = torch.finfo(dtype).bits // 8
        budget, cap = (memory_budget, None) if memory_budget is not None else (default_budget(device), DEFAULT_SOFT_CAP)
        plan = plan_decode(vae.cfg, t, h, w, elem, tiling, budget, soft_cap=cap, small_conv=dec.modes.small,
                           keep_video=return_video, low=dec.low > 0)  # an explicit budget: chunks may use all of it
    log.debug("VAE decode plan: %s", plan)
    tiled = len(plan.tiles) > 1
    video = None
    if return_video or tiled:  # tiles add into it
        video = torch.empty(bsz, 3, 1 + tf * (t - 1), sf * h, sf * w, dtype=torch.float32, device=device)
    if tiled:
        video.zero_()
    for b in range(bsz):
        z = vae.denormalize(latents[b:b + 1].to(device, torch.float32)).permute(0, 2, 3, 4, 1)
        state: dict = {}
        mid = None
        lf, ls = dec.low_frames, dec.low_space
        for s, e in _chunks(t, plan.mid_chunk):
            out = dec.latent_stage(z[:, s:e].contiguous(), state)
            if mid is None:
                mid = out.new_empty(1, lf(t), ls * h, ls * w, out.shape[-1])
            mid[:, lf(s):lf(e)] = out
            del out
        del state, z
        for n, tile in enumerate(plan.tiles):
            r0, r1, c0, c1 = tile
            weight = tile_weights(plan, tile, h, w, sf, device) if tiled else None
            state = {}
            for s, e in _chunks(t, plan.chunk):
                x = mid[:, lf(s):lf(e), ls * r0:ls * r1, ls * c0:ls * c1].contiguous()
                rgb = dec.up_stage(x, state)  # (1, F, H, W, 3)
                del x
                f0 = 0 if s == 0 else 1 + tf * (s - 1)
                f1 = f0 + rgb.shape[1]
                rgb = rgb[0].permute(3, 0, 1, 2)  # (3, F, H, W)
                if video is None:  # untiled, streaming: the chunk is final as it is
                    on_frames(b, f0, rgb.clamp_(-1, 1))
                    continue
                dst = video[b, :, f0:f1, sf * r0:sf * r1, sf * c0:sf * c1]
                if weight is None:
                    dst.copy_(rgb)
                else:
                    dst.add_(rgb.float() * weight)
                del rgb
                if on_frames is not None and n == len(plan.tiles) - 1:  # these frames are final
                    on_frames(b, f0, video[b, :, f0:f1].clamp_(-1, 1))
            del state
    return video.clamp_(-1, 1) if return_video else None
