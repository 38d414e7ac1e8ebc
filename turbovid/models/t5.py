"""Wan's encoder-only umT5 (umT5-XXL: 24 layers, dim 4096, 64 heads) and the prompt -> embeddings wrapper.

T5 details kept from the reference: attention logits are not scaled by 1/sqrt(d); every layer learns its
own relative position bias (umT5; plain T5 shares one); RMSNorm without mean subtraction whose statistics
are float32; gated GELU(tanh) feed-forward; no biases anywhere. Dropout is left out (inference only).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from turbovid.configs import T5_PRESETS, T5Config
from turbovid.models.tokenizer import PromptTokenizer, load_tokenizer


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Float32 statistics; for half weights the normalised value is rounded before the scale, like the reference.
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """Bidirectional T5 buckets of (key - query) offsets, [L, L] int64.

    Half the buckets for keys after the query, half for keys before; within each half, offsets below
    num_buckets/4 get their own bucket, larger ones share log-spaced buckets up to max_distance.
    """
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]  # (Lq, Lk)
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    # Same float32 op order as the reference so offsets on a bucket boundary floor the same way;
    # clamp(min=1) only avoids log(0) for entries the `where` below discards anyway.
    far = exact + (
        torch.log(rel.clamp(min=1).float() / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    far = far.clamp(max=half - 1)
    return buckets + torch.where(rel < exact, rel, far)


GRAPH_BUCKET = 32  # tokens: with graphs on, a prompt is encoded at its length rounded up to this
MAX_GRAPHS = 4  # captured (batch, bucket) shapes kept; older ones are dropped with their memory


def _embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding, left uninitialised on the meta device (every checkpoint load): its N(0, 1) init
    there runs PyTorch's Python reference ops, whose first use imports torch._dynamo and sympy."""
    if torch.empty(0).is_meta:  # the default device of the enclosing `with torch.device(...)`
        return nn.Embedding(num, dim, _weight=torch.empty(num, dim))
    return nn.Embedding(num, dim)


class RelativePositionBias(nn.Module):
    def __init__(self, num_buckets: int, num_heads: int):
        super().__init__()
        self.embedding = _embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, H, Lq, Lk)


class Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))  # (B, H, L, d)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # T5: unscaled logits
        return self.o(x.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Linear(dim, dim_ffn, bias=False)
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * F.gelu(self.gate(x), approximate="tanh"))


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    # The reference clamps fp16 activations only once an inf appears; clamping always gives the same
    # result without a host sync (finite values above max - 1000 do not occur in practice).
    if x.dtype == torch.float16:
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x


class Block(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.eps)
        self.attn = Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = RMSNorm(cfg.dim, cfg.eps)
        self.ffn = FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = RelativePositionBias(cfg.num_buckets, cfg.num_heads)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        bias = self.pos_embedding(buckets)  # (1, H, L, L)
        if keep is not None:  # padded keys get the most negative logit (replacing, not adding to, the bias)
            bias = torch.where(keep, bias, torch.finfo(bias.dtype).min)  # (B, H, L, L)
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias.to(x.dtype)))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """Token ids [B, L] (+ attention mask [B, L], 1 = token) -> last hidden state [B, L, dim].

    Padded positions are not zeroed here (their values are whatever the network computes);
    `TextEncoder` zeroes them as the reference pipeline does.
    """

    def __init__(self, cfg: T5Config):
        super().__init__()
        if cfg.shared_pos:
            raise ValueError("shared_pos=True (one bias for all layers, plain T5) is not supported; umT5 has one per layer")
        if cfg.dim_attn % cfg.num_heads:
            raise ValueError(f"dim_attn {cfg.dim_attn} is not divisible by num_heads {cfg.num_heads}")
        self.cfg = cfg
        self.token_embedding = _embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, dim)
        buckets = relative_position_buckets(x.shape[1], self.cfg.num_buckets, self.cfg.max_distance, x.device)
        keep = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, Lk)
        for block in self.blocks:
            x = block(x, buckets, keep)
        return self.norm(x)


@torch.no_grad()
def init_weights(model: UMT5Encoder, seed: int = 0) -> UMT5Encoder:
    """Random weights with the reference's scales (so activations stay O(1) through the layers)."""
    cfg = model.cfg
    g = torch.Generator(device=model.token_embedding.weight.device).manual_seed(seed)
    model.token_embedding.weight.normal_(0, 1.0, generator=g)
    for blk in model.blocks:
        blk.attn.q.weight.normal_(0, (cfg.dim * cfg.dim_attn) ** -0.5, generator=g)
        blk.attn.k.weight.normal_(0, cfg.dim ** -0.5, generator=g)
        blk.attn.v.weight.normal_(0, cfg.dim ** -0.5, generator=g)
        blk.attn.o.weight.normal_(0, (cfg.num_heads * cfg.dim_attn) ** -0.5, generator=g)
        blk.ffn.gate.weight.normal_(0, cfg.dim ** -0.5, generator=g)
        blk.ffn.fc1.weight.normal_(0, cfg.dim ** -0.5, generator=g)
        blk.ffn.fc2.weight.normal_(0, cfg.dim_ffn ** -0.5, generator=g)
        blk.pos_embedding.embedding.weight.normal_(0, (2 * cfg.num_buckets * cfg.num_heads) ** -0.5, generator=g)
        blk.norm1.weight.fill_(1.0)
        blk.norm2.weight.fill_(1.0)
    model.norm.weight.fill_(1.0)
    return model


class TextEncoder:
    """Prompts -> umT5 embeddings with every position past a prompt's tokens set to zero.

    `to(cuda)` leaves the token-embedding table (umT5-XXL: 256384 x 4096, 2.1 GB in bf16, a fifth of the
    encoder) in CPU memory, memory-mapped from the checkpoint when loaded from one: a prompt needs a few
    hundred of its rows, looked up on the CPU and copied up with the ids. The GPU is spared its bytes and
    their copy; the values are the same rows.
    """

    def __init__(self, model: UMT5Encoder, tokenizer: PromptTokenizer):
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer!r} emits ids up to {tokenizer.vocab_size - 1} but the text encoder has only"
                f" {model.cfg.vocab_size} token embeddings; use the tokenizer the checkpoint was trained with"
            )
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        # CUDA graphs of the encoder, one per (batch, token bucket): a prompt's ~600 small launches
        # (24 layers of norms, GEMVs and attention) cost ~30 ms of launch overhead against ~4 ms of
        # weight reads on an H100. Off by default; the Pipeline turns them on for resident models.
        self.graphs = False
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()  # the MAX_GRAPHS latest, least recent first

    @property
    def device(self) -> torch.device:
        """Where the encoder runs (the embedding table may stay on the CPU)."""
        return self.model.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    @property
    def dim(self) -> int:
        return self.model.cfg.dim

    @property
    def text_len(self) -> int:
        return self.tokenizer.text_len

    def to(self, device=None, dtype: torch.dtype | None = None,
           move: Callable[[nn.Module, torch.device], nn.Module] = lambda m, d: m.to(d)) -> "TextEncoder":
        """`move(module, device)` places each part (the loader passes its staged copy)."""
        self._graphs.clear()  # they hold the weights' addresses
        for name, child in self.model.named_children():
            if dtype is not None:
                child.to(dtype=dtype)
            if device is not None:
                # the embedding table goes to the CPU from anywhere, and nowhere else (see the class doc)
                move(child, torch.device("cpu" if name == "token_embedding" else device))
        return self

    @torch.no_grad()
    def encode(self, prompts: str | list[str], pad: bool = True) -> torch.Tensor:
        """[B, text_len (512), dim] in the model dtype; positions past each prompt's tokens are zero.
        pad=False: only the rows up to the batch's last token (rounded up to GRAPH_BUCKET where the
        encoder runs from CUDA graphs), what the DiT takes (it pads them itself)."""
        ids, mask = self.tokenizer(prompts)
        return self.encode_ids(ids, mask, pad)

    @torch.no_grad()
    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad: bool = True) -> torch.Tensor:
        """[B, L, dim] for pre-tokenized input; positions where `attention_mask` is 0 are zero
        (pad=False: the first rows only, as encode's)."""
        if input_ids.ndim != 2 or tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"input_ids and attention_mask must both be [B, L]; got {tuple(input_ids.shape)} and"
                f" {tuple(attention_mask.shape)}"
            )
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        lo, hi = int(input_ids.min()), int(input_ids.max())  # one sync per call, spares a device-side assert
        if lo < 0 or hi >= self.model.cfg.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.model.cfg.vocab_size}); got [{lo}, {hi}]")
        # Only the positions up to the batch's last token are encoded: every token's attention masks
        # the padded keys out, and padded rows are zero in the result anyway, so the values are the
        # same (to rounding) as encoding all text_len (512) positions, for a fraction of the work (a
        # prompt is typically 20-100 tokens).
        used = attention_mask.bool().any(0).nonzero()
        n = int(used.max()) + 1 if len(used) else 1
        graphed = self.graphs and self.device.type == "cuda"
        if graphed:  # up to the bucket's length: the extra positions are padding, masked like the rest
            n = min(input_ids.shape[1], -(-n // GRAPH_BUCKET) * GRAPH_BUCKET)
        table = self.model.token_embedding
        x = table(input_ids[:, :n].to(table.weight.device, torch.long)).to(self.device)  # (B, n, dim)
        mask = attention_mask[:, :n].to(self.device)
        out = self._graphed(x, mask) if graphed else self.model(None, mask, inputs_embeds=x)
        out = torch.where(mask.bool()[..., None], out, out.new_zeros(()))
        return torch.nn.functional.pad(out, (0, 0, 0, input_ids.shape[1] - n)) if pad else out

    def _graphed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's output for (x, mask) by replaying the graph of their shape (captured on first use).
        The result lives in the graph's memory: the caller copies it out before the next call."""
        key = (tuple(x.shape), mask.dtype, x.device)
        hit = self._graphs.get(key)
        if hit is None:
            while len(self._graphs) >= MAX_GRAPHS:  # each holds its own memory pool
                self._graphs.popitem(last=False)
            hit = self._graphs[key] = self._capture(x.clone(), mask.clone())
        self._graphs.move_to_end(key)
        graph, static_x, static_mask, static_out = hit
        static_x.copy_(x)
        static_mask.copy_(mask)
        graph.replay()
        return static_out

    def _capture(self, static_x: torch.Tensor, static_mask: torch.Tensor) -> tuple:
        """(graph, its input buffers, its output) of the encoder for these shapes."""
        side = torch.cuda.Stream(static_x.device)
        side.wait_stream(torch.cuda.current_stream(static_x.device))
        with torch.cuda.stream(side):  # warm-up off the capture: library handles, workspaces
            self.model(None, static_mask, inputs_embeds=static_x)
        torch.cuda.current_stream(static_x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.model(None, static_mask, inputs_embeds=static_x)
        return graph, static_x, static_mask, static_out


def warm_up_kernels(device, dtype: torch.dtype) -> None:
    """Encode one prompt with a one-layer, 128-wide encoder of random weights (head_dim 64, as umT5-XXL's).
    A fresh process loads the GPU kernels of each op the first time it runs it (the real encoder's first
    prompt took ~0.3 s instead of 0.03 s on an H100); this does that while the real weights load."""
    cfg = T5Config(vocab_size=384, dim=128, dim_attn=128, dim_ffn=256, num_heads=2, num_layers=1)
    build_text_encoder(cfg, None, device=device, dtype=dtype).encode("warm-up")


def build_text_encoder(
    cfg: T5Config | str, tokenizer=None, device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> TextEncoder:
    """A TextEncoder with random weights (tests, smoke runs). `tokenizer`: anything `load_tokenizer`
    accepts; None gives the ByteTokenizer, which only suits small-vocab test configs such as 'tiny-random'."""
    if isinstance(cfg, str):
        if cfg not in T5_PRESETS:
            raise ValueError(f"unknown text encoder {cfg!r}; choose one of {', '.join(T5_PRESETS)}")
        cfg = T5_PRESETS[cfg]
    tok = load_tokenizer("byte" if tokenizer is None else tokenizer, text_len=cfg.text_len)
    return TextEncoder(init_weights(UMT5Encoder(cfg), seed), tok).to(device, dtype)
