"""Wan2.1 text-to-video DiT (1.3B / 14B), written to match Wan-Video/Wan2.1 `wan/modules/model.py`
and TurboDiffusion `rcm/networks/wan2pt1.py`.

Parameter names are the official Wan2.1 ones, so official checkpoints assign directly; each
self-attention adds `proj_l` (SLA's linear-branch projection, float32, zeros when absent).

Precision (what runs in float32 whatever the weights' dtype, as in both references):
  time embedding (sinusoid in float64, MLPs in float32), adaLN modulation vectors, the
  LayerNorm / RMSNorm statistics, the modulation and gated-residual arithmetic, RoPE, and the
  output head. Linears, attention and the GELU FFN run in the weights' dtype; the residual
  stream is kept in the weights' dtype (TurboDiffusion does this; Wan lets it drift to float32
  under autocast). Each memory-bound step rounds once, at its output: TurboDiffusion's bf16
  path rounds LayerNorm/RMSNorm outputs and `y * gate` separately, a sub-ulp difference.
  The velocity is returned in float32 (both references compute the head under float32 autocast).

Where the two references differ:
  - patch embedding: Wan uses Conv3d(16, dim, (1,2,2)); TurboDiffusion a Linear over patches
    flattened in (c, kt, kh, kw) order, i.e. the Conv3d weight `.flatten(1)`. Same numbers; we
    keep the Conv3d parameter and compute it as that linear.
  - RoPE: TurboDiffusion's VideoRopePosition3DEmb splits head_dim 128 as t/h/w = 44/42/42 real
    dims (d - 2*(d//6*2), d//6*2, d//6*2) with ladders 1/10000^(2i/d_part); Wan splits the
    64 complex pairs as c - 2*(c//3), c//3, c//3 = 22/21/21 with the same ladders. Identical
    for every head_dim (d//6 == (d//2)//3). TurboDiffusion forms the angles in float32 and caps
    H, W at 128 positions; Wan uses float64 angles and 1024 positions. We use float64 angles
    rounded once to float32 cos/sin (diffusers does the same) and apply the rotation in float32.
  - context: Wan zero-pads the text embeddings to 512 tokens inside the model; TurboDiffusion
    receives them already padded. Both attend over all 512 tokens without a mask. (Given up to
    tail.MAX_ROWS rows, we compute the same attention over the prompt's rows and one padding row
    weighted by the padding's length; given more, over all 512.)
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from turbovid.configs import DiTConfig
from turbovid.ops.attention import attention, resolve_backend, tail
from turbovid.ops.attention.tail import repeat_start, tail_attention
from turbovid.ops.block_reference import (
    gated_residual_ref,
    norm_modulate_ref,
    rmsnorm_ref,
    rmsnorm_rope_ref,
    rope_tables,
)
from turbovid.ops.quant.fp8 import Fp8Activation

log = logging.getLogger("turbovid.dit")


# ---- memory-bound steps (PyTorch references; fused kernels replace them through `OPS`) ----------
# Shapes: x, y [B, L, C]; shift, scale, gate [B, C]; q/k [B, L, C]; cos, sin [L, head_dim / 2].


def add_norm_modulate(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    quant: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + y * gate, norm_modulate of that sum): a residual update followed by the next norm."""
    x = OPS.gated_residual(x, y, gate)
    return x, OPS.norm_modulate(x, shift, scale, weight=weight, bias=bias, eps=eps, out_dtype=out_dtype, quant=quant)


@dataclass
class BlockOps:
    """The one dispatch point for the memory-bound steps; same signatures as turbovid.ops.fused."""

    norm_modulate: Callable = norm_modulate_ref
    add_norm_modulate: Callable = add_norm_modulate
    gated_residual: Callable = gated_residual_ref
    rmsnorm_rope: Callable = rmsnorm_rope_ref
    rmsnorm: Callable = rmsnorm_ref
    rope_tables: Callable = rope_tables


OPS = BlockOps()
_REFERENCE_OPS = BlockOps()


def set_block_ops(**fns: Callable) -> None:
    """Swap implementations (e.g. Triton kernels); `set_block_ops()` with no argument restores the references."""
    names = {f.name for f in fields(BlockOps)}
    for name in fns:
        if name not in names:
            raise ValueError(f"unknown block op {name!r}; choose from {', '.join(sorted(names))}")
    if not fns:
        fns = {name: getattr(_REFERENCE_OPS, name) for name in names}
    for name, fn in fns.items():
        setattr(OPS, name, fn)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[B] timesteps -> [B, dim] float64 [cos | sin] features, frequencies 10000^(-i / (dim/2))."""
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    arg = torch.outer(t, freqs)
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


def _linear_f32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # The references run these under float32 autocast: weights are upcast, math is float32.
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


# ---- modules ----------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))


class AffineLayerNorm(nn.Module):
    """The cross-attention input norm (`norm3`): LayerNorm with weight and bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


class _Projections(nn.Module):
    """q, k, v, o linears and the q/k RMSNorms: the parameters (and checkpoint names) both
    attentions of a block share."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, self.num_heads, self.head_dim = cfg.dim, cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, cfg.eps)
        self.norm_k = RMSNorm(dim, cfg.eps)


class SelfAttention(_Projections):
    # True / "tensor": the attention kernel hands the o-projection its input already quantized (an
    # Fp8Activation, block / per-tensor scales); turbovid.fast sets it when `o` is an fp8 linear.
    out_fp8: bool | str = False

    def __init__(self, cfg: DiTConfig):
        super().__init__(cfg)
        # SLA's linear-branch projection; float32 as in the reference, zeros = no linear branch.
        self.proj_l = nn.Linear(self.head_dim, self.head_dim, dtype=torch.float32)
        self.backend = "dense"
        self.topk = 0.1

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k, v linears (turbovid.fast runs them as one GEMM)."""
        return self.q(x), self.k(x), self.v(x)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, l, c = x.shape
        q, k, v = self.project_qkv(x)
        q = OPS.rmsnorm_rope(q, self.norm_q.weight, cos, sin, eps=self.norm_q.eps)
        k = OPS.rmsnorm_rope(k, self.norm_k.weight, cos, sin, eps=self.norm_k.eps)
        shape = (b, l, self.num_heads, self.head_dim)  # (B, L, H, D)
        out = attention(
            q.view(shape), k.view(shape), v.view(shape), self.backend,
            topk=self.topk, proj_weight=self.proj_l.weight, proj_bias=self.proj_l.bias, out_fp8=self.out_fp8,
        )
        if isinstance(out, tuple):  # (e4m3, scales) from a backend that quantized for `o`
            return self.o(Fp8Activation(out[0].view(b, l, c), out[1], q.dtype, per_tensor=self.out_fp8 == "tensor"))
        return self.o(out.reshape(b, l, c))


class CrossAttention(_Projections):
    # True: `o` takes a bound of its input (a per-tensor fp8 linear then skips finding the amax);
    # turbovid.fast sets it. Softmax attention's output is a convex combination of v's rows, so
    # max|v| bounds it (up to the output's own rounding).
    o_takes_bound: bool = False

    def forward(self, x: torch.Tensor, context: torch.Tensor, text_rows: torch.Tensor | None = None) -> torch.Tensor:
        """text_rows (int [B], optional): context's rows from text_rows[b] on are all the same (the
        embedded zero padding); the attention then visits one of them, weighted by their count."""
        b, l, c = x.shape
        n, d = self.num_heads, self.head_dim
        q = OPS.rmsnorm(self.q(x), self.norm_q.weight, self.norm_q.eps).view(b, l, n, d)
        k = OPS.rmsnorm(self.k(context), self.norm_k.weight, self.norm_k.eps).view(b, -1, n, d)
        v = self.v(context).view(b, -1, n, d)
        if text_rows is None:
            out = attention(q, k, v, "dense").reshape(b, l, c)
        else:
            out = tail_attention(q, k, v, text_rows).reshape(b, l, c)
        if self.o_takes_bound:
            return self.o(out, bound=v.abs().amax().float().reshape(1))
        return self.o(out)


def _modulation(n: int, dim: int) -> nn.Parameter:
    """N(0, 1/dim) as in Wan; on the meta device (every checkpoint load) nothing is drawn: a random
    draw there goes through PyTorch's Python reference ops, whose first use imports sympy (0.4 s)."""
    shape = (1, n, dim)
    t = torch.empty(shape)
    return nn.Parameter(t if t.is_meta else torch.randn(shape) / dim**0.5)


class Block(nn.Module):
    # "fp8": the three norms hand their linears (q/k/v, cross-attention q, FFN in) quantized inputs;
    # turbovid.fast sets it when those linears are Fp8Linear. None: the norms return h.
    act_quant: str | None = None

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = SelfAttention(cfg)
        self.norm3 = AffineLayerNorm(cfg.dim, cfg.eps)
        self.cross_attn = CrossAttention(cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = _modulation(6, cfg.dim)

    def forward(self, x, e, cos, sin, context, residual=None, text_rows=None):
        """One block. `residual` is the previous block's pending (y, gate), added to x in the same
        pass as this block's first norm. Returns (x, (y, gate)): the FFN's gated update is left
        pending for the next block (or the head) to add, saving one pass over x per block.
        text_rows: CrossAttention.forward's."""
        # e: [B, 6, C] float32 -> shift/scale/gate for attention, then for the FFN
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (self.modulation.float() + e).unbind(1)
        quant = self.act_quant
        if residual is None:
            h = OPS.norm_modulate(x, shift_a, scale_a, eps=self.eps, quant=quant)
        else:
            x, h = OPS.add_norm_modulate(x, *residual, shift_a, scale_a, eps=self.eps, quant=quant)
        x, h = OPS.add_norm_modulate(
            x, self.self_attn(h, cos, sin), gate_a, weight=self.norm3.weight, bias=self.norm3.bias, eps=self.eps,
            quant=quant,
        )
        x, h = OPS.add_norm_modulate(x, self.cross_attn(h, context, text_rows), None, shift_f, scale_f, eps=self.eps, quant=quant)
        return x, (self.ffn(h), gate_f)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = _modulation(2, cfg.dim)

    def forward(self, x: torch.Tensor, e: torch.Tensor, residual=None) -> torch.Tensor:
        # e: [B, C] float32 time embedding; everything here is float32. residual: the last block's
        # pending (y, gate), added in the norm's pass.
        shift, scale = (self.modulation.float() + e[:, None, :]).unbind(1)
        if residual is None:
            h = OPS.norm_modulate(x, shift, scale, eps=self.eps, out_dtype=torch.float32)
        else:
            _, h = OPS.add_norm_modulate(x, *residual, shift, scale, eps=self.eps, out_dtype=torch.float32)
        return _linear_f32(self.head, h)


class WanDiT(nn.Module):
    """forward(latents [B,16,T,H,W], timesteps [B] in 0..1000, context [B,L<=512,text_dim]) -> velocity (float32).

    Pass the context trimmed to the prompts' rows (TextEncoder.encode(..., pad=False)): the model pads
    it to 512 itself, and a short one takes the faster cross-attention (ops/attention/tail.py)."""

    def __init__(self, cfg: DiTConfig, attention: str = "dense", sla_topk: float = 0.1):
        super().__init__()
        if cfg.dim % cfg.num_heads or cfg.head_dim % 2:
            raise ValueError(f"dim {cfg.dim} must split into {cfg.num_heads} heads of even size")
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._attention_request = "dense"
        self._resolved: dict[torch.device, str] = {}
        self.set_attention(attention, sla_topk)

    # -- attention backend --
    def set_attention(self, backend: str, topk: float | None = None) -> None:
        """Pick the self-attention backend ("dense", "sla", "sagesla", "auto"); cross-attention stays dense."""
        self._attention_request = backend
        self._resolved = {}
        if topk is not None:
            if not 0.0 < topk <= 1.0:
                raise ValueError(f"sla_topk must be in (0, 1], got {topk}")
            for blk in self.blocks:
                blk.self_attn.topk = topk
        device = self.patch_embedding.weight.device
        if device.type != "meta":
            self._backend_for(device)

    @property
    def attention_backend(self) -> str:
        return self.blocks[0].self_attn.backend if len(self.blocks) else "dense"

    def _backend_for(self, device: torch.device) -> str:
        name = self._resolved.get(device)
        if name is None:
            name = resolve_backend(self._attention_request, device)
            if self._attention_request == "auto":
                log.info("attention auto -> %s on %s", name, device)
            self._resolved[device] = name
        for blk in self.blocks:
            blk.self_attn.backend = name
        return name

    # -- forward --
    def _rope(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (*grid, device)
        if key not in self._rope_cache:
            self._rope_cache[key] = OPS.rope_tables(*grid, self.cfg.head_dim, device=device)
        return self._rope_cache[key]

    def _check_inputs(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if latents.ndim != 5 or latents.shape[1] != cfg.in_dim:
            raise ValueError(f"latents must be [B, {cfg.in_dim}, T, H, W], got shape {tuple(latents.shape)}")
        b = latents.shape[0]
        for size, p, name in zip(latents.shape[2:], cfg.patch_size, "THW"):
            if size % p:
                raise ValueError(f"latent {name}={size} is not a multiple of the patch size {p}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.text_dim:
            raise ValueError(f"context must be [B={b}, L, {cfg.text_dim}], got shape {tuple(context.shape)}")
        if context.shape[1] > cfg.text_len:
            raise ValueError(f"context has {context.shape[1]} tokens; at most {cfg.text_len} are supported")
        timesteps = torch.as_tensor(timesteps, device=latents.device).reshape(-1)
        if timesteps.numel() == 1:
            timesteps = timesteps.expand(b)
        if timesteps.numel() != b:
            raise ValueError(f"timesteps must be [B={b}] (or one value), got {timesteps.numel()} values")
        return timesteps

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        timesteps = self._check_inputs(latents, timesteps, context)
        dtype = self.patch_embedding.weight.dtype
        b, c, t, hh, ww = latents.shape
        kt, kh, kw = cfg.patch_size
        grid = (t // kt, hh // kh, ww // kw)
        self._backend_for(latents.device)

        # 1. patchify: (B, C, T, H, W) -> (B, L, C*kt*kh*kw), the Conv3d as a linear over flattened patches
        x = latents.to(dtype).reshape(b, c, grid[0], kt, grid[1], kh, grid[2], kw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, math.prod(grid), -1)
        x = F.linear(x, self.patch_embedding.weight.flatten(1), self.patch_embedding.bias)

        # 2. time embedding and the 6 modulation vectors, float32
        e = _linear_f32(self.time_embedding[0], sinusoidal_embedding(cfg.freq_dim, timesteps).float())
        e = _linear_f32(self.time_embedding[2], F.silu(e))
        e0 = _linear_f32(self.time_projection[1], F.silu(e)).unflatten(1, (6, cfg.dim))

        # 3. text: zero-pad to text_len tokens, then embed (padding rows become the embedding of 0, all
        # the same: cross-attention visits one of them, weighted by their count; ops/attention/tail.py).
        # A context of more than tail.MAX_ROWS rows (a long prompt, or one padded by the caller)
        # attends densely over all rows, which is faster there.
        short = context.shape[1] <= tail.MAX_ROWS
        context = F.pad(context.to(dtype), (0, 0, 0, cfg.text_len - context.shape[1]))
        text_rows = repeat_start(context) if short else None
        context = self.text_embedding(context)

        # 4. blocks
        cos, sin = self._rope(grid, latents.device)
        pending = None  # each block's last residual update, added by the next norm (see Block.forward)
        for block in self.blocks:
            x, pending = block(x, e0, cos, sin, context, pending, text_rows)

        # 5. head (float32) and unpatchify: (B, L, kt*kh*kw*C_out) -> (B, C_out, T, H, W)
        out = self.head(x, e, pending)
        out = out.view(b, *grid, kt, kh, kw, cfg.out_dim)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, cfg.out_dim, t, hh, ww)
