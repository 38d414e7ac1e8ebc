"""Key-name and layout conversions between the public Wan2.1 DiT checkpoint layouts and ours.

Our layout is the official Wan2.1 one (`wan/modules/model.py` names) plus
`blocks.N.self_attn.proj_l.{weight,bias}` (SLA's linear-branch projection).

  official      blocks.N.self_attn.q.weight, patch_embedding.weight [dim, 16, 1, 2, 2], ...
  turbodiff.    official names (optionally under `net.`), patch_embedding.weight as a Linear
                [dim, 16*1*2*2] over patches flattened in (c, kt, kh, kw) order, and
                blocks.N.self_attn.attn_op.local_attn.proj_l.*; in -quant files every block
                Linear except proj_l is {int8_weight int8, scale f32 [ceil(N/128), ceil(K/128)], bias}
                and the norm weights are float32 buffers under the same names.
  diffusers     WanTransformer3DModel: condition_embedder.*, blocks.N.attn1/attn2.to_q/..., ffn.net.*,
                scale_shift_table, proj_out; its norm2 is Wan's norm3 (affine cross-attention norm).
"""
from __future__ import annotations

import re

import torch

StateDict = dict[str, torch.Tensor]

# Top-level modules: ours <-> diffusers.
_TOP = [
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("patch_embedding.", "patch_embedding."),
]
_TOP_EXACT = [("head.modulation", "scale_shift_table")]

# Inside blocks.N: ours <-> diffusers.
_BLOCK = [
    ("self_attn.q.", "attn1.to_q."),
    ("self_attn.k.", "attn1.to_k."),
    ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."),
    ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."),
    ("cross_attn.k.", "attn2.to_k."),
    ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."),
    ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("norm3.", "norm2."),
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
]
_BLOCK_EXACT = [("modulation", "scale_shift_table")]

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _rename(key: str, to_diffusers: bool) -> str:
    src, dst = (0, 1) if to_diffusers else (1, 0)
    m = _BLOCK_KEY.match(key)
    if m:
        idx, rest = m.groups()
        for pair in _BLOCK_EXACT:
            if rest == pair[src]:
                return f"blocks.{idx}.{pair[dst]}"
        for pair in _BLOCK:
            if rest.startswith(pair[src]):
                return f"blocks.{idx}.{pair[dst]}{rest[len(pair[src]):]}"
        return key
    for pair in _TOP_EXACT:
        if key == pair[src]:
            return pair[dst]
    for pair in _TOP:
        if key.startswith(pair[src]):
            return pair[dst] + key[len(pair[src]):]
    return key


def diffusers_to_ours(sd: StateDict) -> StateDict:
    """Rename a diffusers WanTransformer3DModel state dict; unknown keys pass through unchanged."""
    return {_rename(k, to_diffusers=False): v for k, v in sd.items()}


def ours_to_diffusers(sd: StateDict) -> StateDict:
    """Inverse of diffusers_to_ours (proj_l has no diffusers counterpart and is dropped)."""
    return {_rename(k, to_diffusers=True): v for k, v in sd.items() if ".proj_l." not in k}


_TURBO_PROJ_L = ".self_attn.attn_op.local_attn.proj_l."


def turbodiffusion_to_ours(sd: StateDict, patch_size: tuple[int, int, int] = (1, 2, 2)) -> StateDict:
    """TurboDiffusion names -> ours: proj_l moves up two levels, the Linear patch embedding becomes a Conv3d.

    The Linear's input is a patch flattened as (c, kt, kh, kw), which is exactly Conv3d.weight.flatten(1).
    """
    out: StateDict = {}
    for k in list(sd):
        v = sd.pop(k)
        k = k.replace(_TURBO_PROJ_L, ".self_attn.proj_l.")
        if k == "patch_embedding.weight" and v.ndim == 2:
            v = v.reshape(v.shape[0], v.shape[1] // (patch_size[0] * patch_size[1] * patch_size[2]), *patch_size)
        out[k] = v
    return out


def ours_to_turbodiffusion(sd: StateDict) -> StateDict:
    """Our names -> TurboDiffusion's (Linear patch embedding, proj_l under attn_op.local_attn)."""
    out: StateDict = {}
    for k, v in sd.items():
        k = k.replace(".self_attn.proj_l.", _TURBO_PROJ_L)
        if k == "patch_embedding.weight" and v.ndim == 5:
            v = v.flatten(1)
        out[k] = v
    return out
