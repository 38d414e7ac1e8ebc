"""Load the Wan2.1 T2V DiT from any public checkpoint layout, or build one with random weights.

Layouts are told apart by their keys (never by file names):
  official        Wan-AI/Wan2.1-T2V-*: safetensors (one file or shards + index) and config.json
  turbodiffusion  TurboWan2.1-T2V-*.pth: official names, Linear patch embedding, SLA proj_l
  turbodiffusion-int8   the -quant.pth variant: block Linears as int8 + 128x128 block scales
  diffusers       Wan-AI/Wan2.1-T2V-*-Diffusers: transformer/ (config.json + safetensors)
  turbovid        our own layout (official + self_attn.proj_l)
The model is built on the meta device and the checkpoint's tensors are assigned into it, so
the weights exist once in memory (int8 weights stay int8).
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch
import torch.nn as nn

from turbovid.configs import DIT_PRESETS, DiTConfig
from turbovid.loading.common import CheckpointError, StateDict, assign_state_dict, read_sharded, strip_prefix
from turbovid.loading.keymaps import diffusers_to_ours, turbodiffusion_to_ours
from turbovid.loading.transfer import to_device
from turbovid.models.dit import WanDiT
from turbovid.ops.quant.int8 import Int8Linear, dequantize_blockwise, swap_linears

log = logging.getLogger("turbovid.loading")

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_PREFIXES = ("model.diffusion_model.", "_orig_mod.", "module.", "model.", "net.")
_BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                  "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
QUANT_CHOICES = (None, "int8", "none")


# ---- locating files ------------------------------------------------------------------------


def _locate(path: Path) -> tuple[list[Path], Path | None]:
    """Weight files and the config.json (if any) of a file or folder checkpoint."""
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if path.is_file():
        # A lone file may sit next to its config.json (official folder) or among unrelated files.
        cfg = path.parent / "config.json"
        return [path], cfg if cfg.is_file() and _is_dit_config(cfg) else None
    if (path / "transformer").is_dir():  # a whole diffusers pipeline folder
        path = path / "transformer"
    index = sorted(path.glob("*.safetensors.index.json"))
    if index:
        try:
            weight_map = json.loads(index[0].read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{index[0]}: not a safetensors index ({e})") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard listed in {index[0].name} not found")
    else:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise CheckpointError(f"{path}: no weight files (*.safetensors, *.pth) in this folder")
    cfg = path / "config.json"
    return files, cfg if cfg.is_file() else None


def _is_dit_config(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and ("num_attention_heads" in raw or ("dim" in raw and "num_heads" in raw))


# ---- format detection and conversion -----------------------------------------------------


def detect_format(sd: StateDict, where: str | Path) -> str:
    """Name of the checkpoint layout, from the key set alone."""
    keys = sd.keys()
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys):
        return "diffusers"
    if not any(k.startswith("blocks.0.self_attn.") for k in keys) or "patch_embedding.weight" not in sd:
        example = next(iter(keys), "<none>")
        raise CheckpointError(
            f"{where}: keys match no Wan2.1 DiT layout (expected e.g. blocks.0.self_attn.q.weight and "
            f"patch_embedding.weight; found e.g. {example})"
        )
    if any(k.endswith(".int8_weight") for k in keys):
        return "turbodiffusion-int8"
    if any(".attn_op.local_attn." in k for k in keys) or sd["patch_embedding.weight"].ndim == 2:
        return "turbodiffusion"
    if any(".self_attn.proj_l." in k for k in keys):
        return "turbovid"
    return "official"


def to_our_layout(sd: StateDict, fmt: str, patch_size: tuple[int, int, int] = (1, 2, 2)) -> StateDict:
    if fmt == "diffusers":
        return diffusers_to_ours(sd)
    if fmt.startswith("turbodiffusion"):
        return turbodiffusion_to_ours(sd, patch_size)
    return sd


# ---- architecture --------------------------------------------------------------------------


def config_from_json(cfg: dict, where: Path) -> DiTConfig:
    """DiTConfig from an official (WanModel) or diffusers (WanTransformer3DModel) config.json."""
    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{where}: {msg}")

    if cfg.get("model_type", "t2v") != "t2v" or cfg.get("image_dim") or cfg.get("added_kv_proj_dim"):
        raise bad("describes an image-to-video Wan model; only text-to-video (model_type 't2v') is supported")
    if "num_attention_heads" in cfg:  # diffusers
        heads, head_dim = cfg["num_attention_heads"], cfg.get("attention_head_dim", 128)
        out = DiTConfig(
            dim=heads * head_dim, ffn_dim=cfg.get("ffn_dim", 13824), num_heads=heads,
            num_layers=cfg.get("num_layers", 40), in_dim=cfg.get("in_channels", 16),
            out_dim=cfg.get("out_channels") or cfg.get("in_channels", 16), text_dim=cfg.get("text_dim", 4096),
            freq_dim=cfg.get("freq_dim", 256), patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
            eps=cfg.get("eps", 1e-6),
        )
        if cfg.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads" or not cfg.get("cross_attn_norm", True):
            raise bad("needs qk_norm 'rms_norm_across_heads' and cross_attn_norm true (the Wan2.1 T2V architecture)")
        return out
    if "dim" in cfg and "num_heads" in cfg:  # official Wan2.1
        return DiTConfig(
            dim=cfg["dim"], ffn_dim=cfg.get("ffn_dim", 8192), num_heads=cfg["num_heads"],
            num_layers=cfg.get("num_layers", 32), in_dim=cfg.get("in_dim", 16), out_dim=cfg.get("out_dim", 16),
            text_dim=cfg.get("text_dim", 4096), text_len=cfg.get("text_len", 512), freq_dim=cfg.get("freq_dim", 256),
            patch_size=tuple(cfg.get("patch_size", (1, 2, 2))), eps=cfg.get("eps", 1e-6),
        )
    raise bad("is not a Wan2.1 DiT config (expected 'dim'/'num_heads' or 'num_attention_heads')")


def _num_layers(sd: StateDict) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _weight(sd: StateDict, name: str) -> torch.Tensor | None:
    return sd.get(f"{name}.weight", sd.get(f"{name}.int8_weight"))


def shape_facts(sd: StateDict) -> dict[str, int]:
    """Architecture numbers readable from tensor shapes (our layout)."""
    facts: dict[str, int] = {"num_layers": _num_layers(sd)}
    pe = sd.get("patch_embedding.weight")
    if pe is not None and pe.ndim == 5:
        facts["dim"], facts["in_dim"] = pe.shape[0], pe.shape[1]
    for name, key, axis in (("text_dim", "text_embedding.0", 1), ("freq_dim", "time_embedding.0", 1),
                            ("ffn_dim", "blocks.0.ffn.0", 0)):
        w = _weight(sd, key)
        if w is not None:
            facts[name] = w.shape[axis]
    head = sd.get("head.head.weight")
    if head is not None and pe is not None and pe.ndim == 5:
        facts["out_dim"] = head.shape[0] // math.prod(pe.shape[2:])
    proj_l = sd.get("blocks.0.self_attn.proj_l.weight")
    if proj_l is not None and "dim" in facts:
        facts["num_heads"] = facts["dim"] // proj_l.shape[0]
    return facts


def config_from_shapes(sd: StateDict, where: str | Path) -> DiTConfig:
    facts = shape_facts(sd)
    if "dim" not in facts:
        raise CheckpointError(f"{where}: cannot read the architecture (no Conv3d patch_embedding.weight)")
    if "num_heads" not in facts:
        preset = next((p for p in DIT_PRESETS.values() if p.dim == facts["dim"]), None)
        if preset is not None:
            facts["num_heads"] = preset.num_heads
        elif facts["dim"] % 128 == 0:  # Wan2.1 uses 128-wide heads at every size
            facts["num_heads"] = facts["dim"] // 128
        else:
            raise CheckpointError(
                f"{where}: cannot tell the head count of a dim={facts['dim']} model from its shapes; "
                "pass model=<preset name or DiTConfig> or put its config.json next to the weights"
            )
        log.info("%s: no config.json; assuming %d heads of %d", where, facts["num_heads"], facts["dim"] // facts["num_heads"])
    patch = tuple(sd["patch_embedding.weight"].shape[2:])
    return DiTConfig(patch_size=patch, **facts)


def check_config(cfg: DiTConfig, sd: StateDict, where: str | Path, label: str) -> None:
    """One-line CheckpointError when the tensor shapes contradict the chosen architecture."""
    facts = shape_facts(sd)
    wrong = [f"{k}={v} (expected {getattr(cfg, k)})" for k, v in facts.items() if v != getattr(cfg, k)]
    if wrong:
        raise CheckpointError(f"{where}: checkpoint does not fit {label}: " + ", ".join(wrong))


def _pick_config(model, config_json: Path | None, sd: StateDict, where: Path) -> tuple[DiTConfig, str]:
    if config_json is not None:
        try:
            raw = json.loads(config_json.read_text())
        except ValueError as e:
            raise CheckpointError(f"{config_json}: invalid JSON ({e})") from None
        cfg, label = config_from_json(raw, config_json), f"{config_json.name}"
        if model is not None:
            wanted = _preset(model)
            diff = [f"{f}={getattr(cfg, f)} vs {getattr(wanted, f)}" for f in ("dim", "num_heads", "num_layers", "ffn_dim")
                    if getattr(cfg, f) != getattr(wanted, f)]
            if diff:
                raise CheckpointError(f"{config_json}: contradicts model={_label(model)}: " + ", ".join(diff))
        return cfg, label
    if model is not None:
        return _preset(model), f"model={_label(model)}"
    return config_from_shapes(sd, where), "the shapes"


def _preset(model) -> DiTConfig:
    if isinstance(model, DiTConfig):
        return model
    if model not in DIT_PRESETS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(DIT_PRESETS)} or pass a DiTConfig")
    return DIT_PRESETS[model]


def _label(model) -> str:
    return repr(model) if isinstance(model, str) else "DiTConfig"


# ---- dtypes and int8 -------------------------------------------------------------------------


def _dominant_dtype(sd: StateDict) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for k, v in sd.items():
        if v.is_floating_point() and ".proj_l." not in k and not k.endswith(".scale"):
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def _cast(sd: StateDict, dtype: torch.dtype) -> StateDict:
    """Cast floats to dtype one tensor at a time (the source is dropped as we go); proj_l and int8 scales stay float32."""
    scales = {k[: -len("int8_weight")] + "scale" for k in sd if k.endswith(".int8_weight")}
    out: StateDict = {}
    for k in list(sd):
        v = sd.pop(k)
        if v.is_floating_point():
            v = v.to(torch.float32 if ".proj_l." in k or k in scales else dtype)
        out[k] = v
    return out


def _dequantize(sd: StateDict) -> StateDict:
    """int8_weight + scale -> a float32 `weight` (for quant='none')."""
    for k in [k for k in sd if k.endswith(".int8_weight")]:
        base = k[: -len("int8_weight")]
        sd[base + "weight"] = dequantize_blockwise(sd.pop(k), sd.pop(base + "scale"))
    return sd


def _int8_skeleton(model: WanDiT, sd: StateDict, dtype: torch.dtype) -> None:
    """Replace (on meta) every block Linear stored as int8 by an Int8Linear of the same size."""
    for i, blk in enumerate(model.blocks):
        for name in _BLOCK_LINEARS:
            if f"blocks.{i}.{name}.int8_weight" not in sd:
                continue
            parent_name, _, attr = name.rpartition(".")
            parent = blk.get_submodule(parent_name)
            lin = getattr(parent, attr)
            setattr(parent, attr, Int8Linear(lin.in_features, lin.out_features, lin.bias is not None,
                                             device="meta", dtype=dtype))


# ---- public entry points -------------------------------------------------------------------


def load_dit(
    path: str | Path,
    model: str | DiTConfig | None = None,
    attention: str = "dense",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    quant: str | None = None,
    sla_topk: float = 0.1,
) -> WanDiT:
    """WanDiT from a checkpoint file or folder, in eval mode without gradients.

    dtype: floating dtype of the weights (None: the checkpoint's own); proj_l and int8 scales stay float32.
    quant: None keeps what the file holds; "int8" quantizes a float checkpoint's block Linears on load;
    "none" dequantizes an int8 checkpoint into plain Linears.
    """
    if quant not in QUANT_CHOICES:
        raise ValueError(f"quant must be one of None, 'int8', 'none'; got {quant!r}")
    path = Path(path)
    files, config_json = _locate(path)
    sd, _meta = read_sharded(files)
    sd = strip_prefix(sd, _PREFIXES)
    fmt = detect_format(sd, path)
    patch = (1, 2, 2)
    if config_json is not None:
        try:
            patch = tuple(json.loads(config_json.read_text()).get("patch_size", patch))
        except ValueError:
            pass  # reported with a clear message by _pick_config
    sd = to_our_layout(sd, fmt, patch)
    cfg, label = _pick_config(model, config_json, sd, path)
    check_config(cfg, sd, path, label)
    log.info("%s: %s layout, dim %d x %d layers", path, fmt, cfg.dim, cfg.num_layers)

    int8 = any(k.endswith(".int8_weight") for k in sd)
    if int8 and quant == "none":
        sd, int8 = _dequantize(sd), False
    dtype = dtype or _dominant_dtype(sd)
    with torch.device("meta"):
        net = WanDiT(cfg, "dense", sla_topk)
    if int8:
        _int8_skeleton(net, sd, dtype)
    sd = _cast(sd, dtype)
    proj_l = [f"blocks.{i}.self_attn.proj_l.{p}" for i in range(cfg.num_layers) for p in ("weight", "bias")]
    assign_state_dict(net, sd, path, dtype=None, allow_missing=proj_l)
    del sd
    net = to_device(net, device, from_files=True)  # tensors still as read: pread may fetch them
    if quant == "int8" and not int8:
        for blk in net.blocks:
            swap_linears(blk, skip=("proj_l",))
    net.set_attention(attention, sla_topk)
    return net.eval().requires_grad_(False)


def build_dit(
    cfg: str | DiTConfig,
    attention: str = "dense",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    sla_topk: float = 0.1,
) -> WanDiT:
    """Random-weight WanDiT (benchmarks, the tiny-random pipeline): weights drawn on `device` directly.

    Linears ~ N(0, 0.02), norms 1, biases 0, modulation ~ N(0, 1/dim) as in Wan, proj_l 0.
    """
    cfg = _preset(cfg)
    with torch.device("meta"):
        net = WanDiT(cfg, "dense", sla_topk)
    gen = torch.Generator(device=device).manual_seed(seed)
    sd: StateDict = {}
    for name, p in net.state_dict(keep_vars=True).items():
        if ".proj_l." in name:
            sd[name] = torch.zeros(p.shape, dtype=torch.float32, device=device)
            continue
        t = torch.empty(p.shape, dtype=dtype, device=device)
        if name.endswith("modulation"):
            t.normal_(0.0, cfg.dim**-0.5, generator=gen)
        elif re.search(r"norm\w*\.weight$", name):
            t.fill_(1.0)
        elif name.endswith(".bias"):
            t.zero_()
        else:
            t.normal_(0.0, 0.02, generator=gen)
        sd[name] = t
    net.load_state_dict(sd, strict=True, assign=True)
    net.set_attention(attention, sla_topk)
    return net.eval().requires_grad_(False)


def state_dict_dtype_summary(model: nn.Module) -> dict[str, int]:
    """{dtype name: number of elements} over parameters and buffers (for logs and tests)."""
    out: dict[str, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        out[str(t.dtype)] = out.get(str(t.dtype), 0) + t.numel()
    return out
