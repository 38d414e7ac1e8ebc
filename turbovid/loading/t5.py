"""umT5 text-encoder checkpoints -> TextEncoder.

Two layouts, told apart by their keys:
  wan           Wan2.1's `models_t5_umt5-xxl-enc-bf16.pth`: token_embedding.weight, blocks.N.norm1/norm2.weight,
                blocks.N.attn.{q,k,v,o}.weight, blocks.N.ffn.{gate.0,fc1,fc2}.weight,
                blocks.N.pos_embedding.embedding.weight, norm.weight.
  transformers  a `UMT5EncoderModel` folder (diffusers' `text_encoder/`): shared.weight (or
                encoder.embed_tokens.weight), encoder.block.N.layer.0.{layer_norm,SelfAttention.*},
                encoder.block.N.layer.1.{layer_norm,DenseReluDense.wi_0/wi_1/wo}, encoder.final_layer_norm.weight;
                safetensors shards (+ index) and config.json.
The architecture is read from the tensor shapes (config.json, when present, must agree), so test-sized
models load through the same call.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path

import torch

from turbovid.configs import T5Config
from turbovid.loading.common import CheckpointError, StateDict, assign_state_dict, read_sharded, strip_prefix
from turbovid.loading.transfer import to_device
from turbovid.models.t5 import TextEncoder, UMT5Encoder
from turbovid.models.tokenizer import TOKENIZER_FILES, UMT5_HUB_ID, load_tokenizer

log = logging.getLogger("turbovid.loading")

_WAN_BLOCK = re.compile(r"blocks\.(\d+)\.")
_HF_BLOCK = re.compile(r"encoder\.block\.(\d+)\.layer\.([01])\.(.+)")
_HF_LAYER = {
    "0.layer_norm.weight": "norm1.weight",
    "0.SelfAttention.q.weight": "attn.q.weight",
    "0.SelfAttention.k.weight": "attn.k.weight",
    "0.SelfAttention.v.weight": "attn.v.weight",
    "0.SelfAttention.o.weight": "attn.o.weight",
    "0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "1.layer_norm.weight": "norm2.weight",
    "1.DenseReluDense.wi_0.weight": "ffn.gate.weight",  # wi_0 goes through the GELU
    "1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


def detect_format(sd: StateDict) -> str | None:
    if "token_embedding.weight" in sd and any(re.fullmatch(r"blocks\.\d+\.attn\.q\.weight", k) for k in sd):
        return "wan"
    if any(re.fullmatch(r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.q\.weight", k) for k in sd):
        return "transformers"
    return None


def wan_to_native(sd: StateDict) -> StateDict:
    # Our feed-forward gate is a plain Linear; Wan wraps it in Sequential(Linear, GELU).
    return {re.sub(r"\.ffn\.gate\.0\.", ".ffn.gate.", k): v for k, v in sd.items()}


def transformers_to_native(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        m = _HF_BLOCK.fullmatch(k)
        if m and f"{m[2]}.{m[3]}" in _HF_LAYER:
            out[f"blocks.{m[1]}.{_HF_LAYER[f'{m[2]}.{m[3]}']}"] = v
        elif k in ("shared.weight", "encoder.embed_tokens.weight"):
            out["token_embedding.weight"] = v  # tied: either copy (or both) may be stored
        elif k == "encoder.final_layer_norm.weight":
            out["norm.weight"] = v
        else:
            out[k] = v  # reported as unexpected by assign_state_dict
    return out


def infer_config(sd: StateDict, path: Path, hf_config: dict | None = None) -> T5Config:
    """Sizes from the tensor shapes; max_distance / eps from config.json when there is one."""

    def shape(key: str, ndim: int = 2) -> tuple[int, ...]:
        t = sd.get(key)
        if t is None:
            raise CheckpointError(f"{path}: umT5 encoder checkpoint lacks {key}")
        if t.ndim != ndim:
            raise CheckpointError(f"{path}: tensor {key} has shape {tuple(t.shape)}, expected {ndim} dimensions")
        return tuple(t.shape)

    vocab, dim = shape("token_embedding.weight")
    dim_attn, _ = shape("blocks.0.attn.q.weight")
    dim_ffn, _ = shape("blocks.0.ffn.fc1.weight")
    num_buckets, num_heads = shape("blocks.0.pos_embedding.embedding.weight")
    num_layers = 1 + max(int(m[1]) for k in sd if (m := _WAN_BLOCK.match(k)))
    if dim_attn % num_heads:
        raise CheckpointError(
            f"{path}: attention width {dim_attn} (blocks.0.attn.q.weight) is not a multiple of the {num_heads} heads"
            " of blocks.0.pos_embedding"
        )
    cfg = T5Config(
        vocab_size=vocab, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn, num_heads=num_heads,
        num_layers=num_layers, num_buckets=num_buckets,
    )
    if hf_config:
        cfg = _check_hf_config(cfg, hf_config, path)
    return cfg


def _check_hf_config(cfg: T5Config, c: dict, path: Path) -> T5Config:
    act = c.get("feed_forward_proj", "gated-gelu")
    if act not in ("gated-gelu", "gated-gelu_new"):
        raise CheckpointError(f"{path}: config.json feed_forward_proj={act!r}; umT5 as Wan uses it is 'gated-gelu'")
    claims = {
        "d_model": cfg.dim, "d_ff": cfg.dim_ffn, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
        "vocab_size": cfg.vocab_size, "relative_attention_num_buckets": cfg.num_buckets,
        "d_kv": cfg.dim_attn // cfg.num_heads,
    }
    for key, have in claims.items():
        if key in c and c[key] != have:
            raise CheckpointError(f"{path}: config.json says {key}={c[key]} but the tensors give {have}")
    return T5Config(
        vocab_size=cfg.vocab_size, dim=cfg.dim, dim_attn=cfg.dim_attn, dim_ffn=cfg.dim_ffn,
        num_heads=cfg.num_heads, num_layers=cfg.num_layers, num_buckets=cfg.num_buckets,
        max_distance=c.get("relative_attention_max_distance", cfg.max_distance),
        eps=c.get("layer_norm_epsilon", cfg.eps),
    )


# The token-embedding table as each layout stores it. It stays memory-mapped in CPU memory (2.1 GB for
# umT5-XXL), and encoding reads only the prompt's rows, so the load's read-ahead leaves it out.
EMBEDDING_KEYS = ("token_embedding.weight", "shared.weight", "encoder.embed_tokens.weight")


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: unreadable shard index ({type(e).__name__}: {e})") from None
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors (or pytorch_model*.bin) weights in this folder")
    return files


def locate(path: str | Path) -> tuple[list[Path], Path]:
    """The weight files of a text-encoder checkpoint (file, folder or diffusers root) and the file or folder."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "text_encoder").is_dir():  # a diffusers pipeline root
        path = path / "text_encoder"
    if path.is_dir():
        return _weight_files(path), path
    if path.is_file():
        return [path], path
    raise CheckpointError(f"{path}: text encoder checkpoint not found (a .pth/.safetensors file or a text_encoder/ folder)")


def read_text_encoder_checkpoint(path: str | Path) -> tuple[StateDict, T5Config, Path]:
    """Native-layout state dict, its config, and the file or folder it came from."""
    files, path = locate(path)
    hf_config = None
    if path.is_dir() and (path / "config.json").is_file():
        try:
            hf_config = json.loads((path / "config.json").read_text())
        except ValueError as e:
            raise CheckpointError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    sd, _ = read_sharded(files)
    sd = strip_prefix(sd, ("module.", "model."))
    fmt = detect_format(sd)
    if fmt is None:
        raise CheckpointError(
            f"{path}: no umT5 encoder weights recognised (expected Wan keys such as blocks.0.attn.q.weight or"
            f" transformers keys such as encoder.block.0.layer.0.SelfAttention.q.weight; found e.g. {next(iter(sd))})"
        )
    sd = wan_to_native(sd) if fmt == "wan" else transformers_to_native(sd)
    log.info("text encoder %s: %s layout", path, fmt)
    return sd, infer_config(sd, path, hf_config), path


def default_tokenizer(path: Path) -> str:
    """The tokenizer shipped next to the weights, else the hub id.

    Beside a folder: diffusers' sibling `tokenizer/`, or the folder itself. Beside a file: Wan's
    `google/umt5-xxl/` or the `umt5-xxl/` of turbovid's checkpoint folder (turbovid/hub.py).
    """
    if path.is_dir():
        candidates = [path.parent / "tokenizer", path]
    else:
        candidates = [path.parent / "google" / "umt5-xxl", path.parent / "umt5-xxl"]
    for c in candidates:
        if c.is_dir() and any((c / f).is_file() for f in TOKENIZER_FILES[:2]):
            return str(c)
    return UMT5_HUB_ID


def load_text_encoder(path, tokenizer=None, device="cpu", dtype: torch.dtype | None = None) -> TextEncoder:
    """umT5 encoder + tokenizer from a Wan `.pth` (or safetensors) file or a transformers/diffusers folder.

    `tokenizer`: a folder, a hub id, "byte" (tiny test models only) or a tokenizer object; by default the
    tokenizer folder shipped beside the weights (see `default_tokenizer`), else the hub's google/umt5-xxl.
    `dtype` None keeps the stored dtype (bf16 for the released weights).
    """
    sd, cfg, src = read_text_encoder_checkpoint(path)
    with torch.device("meta"):
        model = UMT5Encoder(cfg)
    dtype = dtype or sd["token_embedding.weight"].dtype
    assign_state_dict(model, sd, src, dtype=dtype)
    del sd
    tok = load_tokenizer(default_tokenizer(src) if tokenizer is None else tokenizer, text_len=cfg.text_len)
    # the embedding table stays in CPU memory; the rest is read from the file (to_device: from_files)
    return TextEncoder(model, tok).to(device, move=functools.partial(to_device, from_files=True))
