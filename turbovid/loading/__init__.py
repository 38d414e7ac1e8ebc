"""Checkpoint loading: one entry point per network; formats are detected from keys and metadata."""
from __future__ import annotations

from pathlib import Path

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


def checkpoint_files(dit=None, vae=None, text_encoder=None) -> list[Path]:
    """The weight files the loaders will read, in load order (DiT, VAE, text encoder). A checkpoint that
    does not resolve is left out: its loader reports it."""
    from turbovid.loading import dit as _dit, t5 as _t5, vae as _vae

    out: list[Path] = []
    for path, locate in ((dit, _dit._locate), (vae, _vae._find_files), (text_encoder, _t5.locate)):
        if path is not None:
            try:
                out += locate(Path(path))[0]
            except CheckpointError:
                pass
    return out


def prefetch_checkpoints(dit=None, vae=None, text_encoder=None):
    """Start reading the checkpoints ahead of their loaders (transfer.prefetch), leaving out the text
    encoder's token-embedding table, which stays memory-mapped and is read a prompt's rows at a time.
    Returns the helper thread, or None."""
    from turbovid.loading import t5 as _t5
    from turbovid.loading.common import tensor_file_ranges
    from turbovid.loading.transfer import prefetch

    t5_files = checkpoint_files(text_encoder=text_encoder)
    return prefetch(checkpoint_files(dit, vae) + t5_files,
                    skip=lambda f: tensor_file_ranges(f, _t5.EMBEDDING_KEYS) if f in t5_files else [])


__all__ = ["CheckpointError", "checkpoint_files", "load_dit", "load_text_encoder", "load_vae", "prefetch_checkpoints"]
