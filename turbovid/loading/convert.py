"""Offline converter: a bf16 (or fp32) Wan DiT checkpoint -> a W8A8 quantized safetensors file.

Every 2-D `.weight` of a linear layer inside `blocks.<i>.` (except SLA's `proj_l`, as TurboDiffusion)
becomes `<layer>.int8_weight` (int8, the -quant layout) or `<layer>.fp8_weight` (e4m3) plus
`<layer>.scale` (float32, one per 128x128 block); biases and every other tensor are copied
unchanged. The tensors are byte-identical to `quantize_blockwise` (TurboDiffusion's rule for int8).
The file's metadata records the format: {"quant": "int8"|"fp8", "quant_block": "128"}.

Tensors are read and written one at a time, so a 14B checkpoint converts in little memory.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from turbovid.configs import DIT_PRESETS, DiTConfig
from turbovid.loading.common import CheckpointError, read_state_dict
from turbovid.ops.quant.fp8 import quantize_weight_fp8
from turbovid.ops.quant.int8 import BLOCK, _cdiv, quantize_blockwise

QUANT_KEY = "quant"  # metadata key holding the format
FORMATS: dict[str, tuple[str, torch.dtype, Callable]] = {
    "int8": ("int8_weight", torch.int8, quantize_blockwise),
    "fp8": ("fp8_weight", torch.float8_e4m3fn, quantize_weight_fp8),
}
_ST_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_FROM_ST = {v: k for k, v in _ST_DTYPES.items()}
_BLOCK_LINEAR = re.compile(r"(?:^|\.)blocks\.(\d+)\.(.+)\.weight$")
_SKIP = ("proj_l",)


def is_block_linear(key: str, shape: tuple[int, ...]) -> bool:
    """A linear weight inside a DiT block that TurboDiffusion quantizes."""
    return len(shape) == 2 and _BLOCK_LINEAR.search(key) is not None and not any(s in key for s in _SKIP)


def detect_quant(keys, metadata: dict[str, str] | None = None) -> str | None:
    """'int8', 'fp8' or None (a float checkpoint), from the metadata or else the key names."""
    fmt = (metadata or {}).get(QUANT_KEY)
    if fmt in FORMATS:
        return fmt
    for fmt, (suffix, _, _) in FORMATS.items():
        if any(k.endswith("." + suffix) for k in keys):
            return fmt
    return None


@dataclass
class _Source:
    keys: list[str]
    shape: Callable[[str], tuple[int, ...]]
    dtype: Callable[[str], torch.dtype]
    get: Callable[[str], torch.Tensor]
    metadata: dict[str, str]


def _open(src: Path) -> _Source:
    files = sorted(src.glob("*.safetensors")) if src.is_dir() else [src]
    if not files or not all(f.is_file() for f in files):
        raise CheckpointError(f"{src}: no checkpoint file found (give a .safetensors / .pth file or a folder of shards)")
    from turbovid.loading.common import _is_safetensors

    if all(_is_safetensors(f) for f in files):
        from safetensors import safe_open

        handles = {}
        meta: dict[str, str] = {}
        for f in files:
            h = safe_open(str(f), framework="pt", device="cpu")
            meta.update(h.metadata() or {})
            for k in h.keys():
                handles[k] = h
        keys = list(handles)

        def slice_of(k):
            return handles[k].get_slice(k)

        def st_dtype(k):
            name = slice_of(k).get_dtype()
            if name not in _FROM_ST:
                raise CheckpointError(f"{src}: tensor {k} has unsupported dtype {name}")
            return _FROM_ST[name]

        return _Source(keys, lambda k: tuple(slice_of(k).get_shape()), st_dtype, lambda k: handles[k].get_tensor(k), meta)
    if len(files) > 1:
        raise CheckpointError(f"{src}: a folder of shards must hold .safetensors files")
    sd, meta = read_state_dict(files[0])  # torch zip: memory-mapped
    return _Source(list(sd), lambda k: tuple(sd[k].shape), lambda k: sd[k].dtype, lambda k: sd[k], meta)


def _check_model(src: Path, plan_shapes: dict[str, tuple[int, int]], model: str | DiTConfig) -> None:
    cfg, name = (DIT_PRESETS[model], model) if isinstance(model, str) else (model, "the given DiTConfig")
    blocks: dict[int, int] = {}
    for key in plan_shapes:
        i = int(_BLOCK_LINEAR.search(key).group(1))
        blocks[i] = blocks.get(i, 0) + 1
    if sorted(blocks) != list(range(cfg.num_layers)) or any(n != 10 for n in blocks.values()):
        raise CheckpointError(
            f"{src}: expected {cfg.num_layers} blocks of 10 linears for {name}, found {len(blocks)} blocks "
            f"with {sorted(set(blocks.values()))} linears each"
        )
    allowed = {(cfg.dim, cfg.dim), (cfg.ffn_dim, cfg.dim), (cfg.dim, cfg.ffn_dim)}
    for key, shape in plan_shapes.items():
        if shape not in allowed:
            raise CheckpointError(f"{src}: {key} has shape {shape}, not a linear of {name} (dim {cfg.dim}, ffn {cfg.ffn_dim})")


def convert_checkpoint(
    src: str | Path, dst: str | Path, fmt: str = "int8", model: str | DiTConfig | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """Quantize the block linears of a float DiT checkpoint into `dst` (.safetensors). Returns dst.

    `model` (a DIT_PRESETS name or DiTConfig) checks the layer count and shapes first; `device`
    runs the quantization there (same bytes on CPU and CUDA; default CUDA when available)."""
    src, dst = Path(src), Path(dst)
    if fmt not in FORMATS:
        raise ValueError(f"unknown quant format {fmt!r}: use one of {sorted(FORMATS)}")
    if isinstance(model, str) and model not in DIT_PRESETS:
        raise ValueError(f"unknown model {model!r}: use one of {sorted(DIT_PRESETS)}")
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the output must not overwrite the input checkpoint")
    source = _open(src)
    if detect_quant(source.keys, source.metadata) or any(source.dtype(k) in (torch.int8, torch.float8_e4m3fn) for k in source.keys):
        raise CheckpointError(f"{src}: is already quantized; convert the bf16 checkpoint instead")
    suffix, qdtype, quantize = FORMATS[fmt]
    targets = {k: source.shape(k) for k in source.keys if is_block_linear(k, source.shape(k))}
    if not targets:
        raise CheckpointError(f"{src}: no linear weights under 'blocks.<i>.' found: is this a Wan DiT checkpoint?")
    if model is not None:
        _check_model(src, targets, model)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # plan: for each source key, the tensors it becomes (name, dtype, shape)
    plan: list[tuple[str, list[tuple[str, torch.dtype, tuple[int, ...]]]]] = []
    for k in source.keys:
        if k in targets:
            n, kk = targets[k]
            base = k[: -len("weight")]
            plan.append((k, [(base + suffix, qdtype, (n, kk)), (base + "scale", torch.float32, (_cdiv(n, BLOCK), _cdiv(kk, BLOCK)))]))
        else:
            plan.append((k, [(k, source.dtype(k), source.shape(k))]))

    def produce() -> Iterator[torch.Tensor]:
        for k, _outs in plan:
            t = source.get(k)
            if k in targets:
                q, s = quantize(t.to(dev))
                yield q.cpu()
                yield s.cpu()
            else:
                yield t

    meta = {
        "format": "pt", QUANT_KEY: fmt, "quant_block": str(BLOCK), "quantized_layers": str(len(targets)),
        "source": src.name,
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    write_safetensors(tmp, [o for _, outs in plan for o in outs], produce(), meta)
    tmp.replace(dst)
    return dst


def write_safetensors(
    path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]], tensors: Iterator[torch.Tensor],
    metadata: dict[str, str],
) -> None:
    """Write a safetensors file whose tensors arrive one at a time, in `entries` order."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in entries:
        if dtype not in _ST_DTYPES:
            raise ValueError(f"{name}: dtype {dtype} cannot be stored in safetensors")
        nbytes = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for (name, dtype, shape), t in zip(entries, tensors, strict=True):
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise RuntimeError(f"{name}: produced {t.dtype} {tuple(t.shape)}, planned {dtype} {tuple(shape)}")
            f.write(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
