"""Checkpoint loading: one entry point per network; formats are detected from keys and metadata."""
from __future__ import annotations

from turbovid.loading.common import CheckpointError


def load_dit(path, model=None, attention="dense", device="cpu", dtype=None, **kw):
    """Wan2.1 T2V DiT from an official / TurboDiffusion (+ -quant) / diffusers checkpoint. See loading/dit.py."""
    from turbovid.loading.dit import load_dit as _load

    return _load(path, model=model, attention=attention, device=device, dtype=dtype, **kw)


def load_text_encoder(path, tokenizer=None, device="cpu", dtype=None, **kw):
    """umT5-XXL encoder + tokenizer; `encode(prompts)` -> [B, 512, 4096]. See loading/t5.py."""
    from turbovid.loading.t5 import load_text_encoder as _load

    return _load(path, tokenizer=tokenizer, device=device, dtype=dtype, **kw)


def load_vae(path, device="cpu", dtype=None, **kw):
    """Wan2.1 VAE; `decode(latents)` / `encode(video)` on normalised latents. See loading/vae.py."""
    from turbovid.loading.vae import load_vae as _load

    return _load(path, device=device, dtype=dtype, **kw)


__all__ = ["CheckpointError", "load_dit", "load_text_encoder", "load_vae"]
