"""Stand-ins for the three networks, with the real interfaces, so pipeline and server tests run in milliseconds."""
from __future__ import annotations

import torch
import torch.nn as nn

from turbovid.pipeline import Pipeline


class FakeTextEncoder:
    """encode(prompts) -> [B, 8, 4]: a value per prompt, so tests can tell prompts apart."""

    def __init__(self):
        self.prompts: list[list[str]] = []
        self.devices: list[str] = []

    def to(self, device=None, dtype=None):
        self.devices.append(str(device))
        return self

    def encode(self, prompts, pad=True):
        self.prompts.append(list(prompts))
        self.pad = pad
        vals = torch.tensor([float(len(p) % 7) for p in prompts])
        return vals[:, None, None].expand(len(prompts), 8, 4).clone()


class FakeDiT(nn.Module):
    """velocity = 0.9 x + mean(context) / 100 + t / 1e5: depends on all three inputs, keeps x0 in range."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.9))
        self.calls = []
        self.attention = None

    def set_attention(self, backend, topk=0.1):
        self.attention = (backend, topk)

    def forward(self, x, t, context):
        self.calls.append((tuple(x.shape), x.dtype, t.clone(), context.mean().item()))
        return self.scale * x + context.mean() / 100 + (t.float() / 1e5)[:, None, None, None, None].to(x.dtype)


class FakeVAE(nn.Module):
    """decode: latents [B, 16, T, h, w] -> [B, 3, 1 + 4 (T - 1), 8h, 8w] in [-1, 1], by repetition."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.tiling = []

    def decode(self, latents, tiling="auto"):
        self.tiling.append(tiling)
        x = torch.tanh(latents[:, :3].float())
        first, rest = x[:, :, :1], x[:, :, 1:].repeat_interleave(4, dim=2)
        x = torch.cat([first, rest], dim=2)
        return x.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)


def fake_pipeline(**kw) -> Pipeline:
    kw.setdefault("model_name", "tiny-random")
    return Pipeline(FakeDiT(), FakeTextEncoder(), FakeVAE(), **kw)
