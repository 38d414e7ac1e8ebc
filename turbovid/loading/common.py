"""Reading checkpoint files safely and assigning them into meta-device modules.

Only safetensors and `torch.load(weights_only=True)` are used: no arbitrary unpickling.
The container is recognised by its bytes (zip / safetensors header), never by its name.
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn as nn

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not match the expected model. One line, names the file."""


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n < 100_000_000 and head[8:9] == b"{"


def _safetensors_header(path: str | Path) -> tuple[dict, int]:
    """A .safetensors file's JSON header and the offset where its tensor data starts."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    header, _ = _safetensors_header(path)
    return dict(header.get("__metadata__") or {})


def read_state_dict(path: str | Path) -> tuple[StateDict, dict[str, str]]:
    """Tensors and metadata of one checkpoint file (.safetensors or a torch zip archive).

    Tensors are memory-mapped where the format allows, so reading costs no RAM up front.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu"), read_safetensors_metadata(path)
        if zipfile.is_zipfile(path):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:
            raise CheckpointError(
                f"{path}: not a safetensors file or a torch zip checkpoint (truncated, corrupt or another format)"
            )
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip, bad header, forbidden pickle global, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot be read as a checkpoint (truncated or corrupt?): {msg}") from None
    return _unwrap(obj, path), {}


def _unwrap(obj, path: Path) -> StateDict:
    # Training checkpoints nest the weights one level down.
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model", "module", "net", "ema"):
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: holds no tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    return tensors


def read_sharded(paths: Iterable[str | Path]) -> tuple[StateDict, dict[str, str]]:
    """Merge several shard files (e.g. diffusion_pytorch_model-0000x-of-0000n.safetensors)."""
    out: StateDict = {}
    meta: dict[str, str] = {}
    for p in paths:
        sd, m = read_state_dict(p)
        out.update(sd)
        meta.update(m)
    return out, meta


def tensor_file_ranges(path: str | Path, names: Iterable[str], prefixes: Iterable[str] = ("module.", "model.")) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of the named tensors' data inside a .safetensors file or a torch zip
    checkpoint (a name matches with or without one of `prefixes`), found without reading the data.
    [] for another format, a file that cannot be parsed, or a torch too old to report storage offsets."""
    path = Path(path)
    wanted = set(names)

    def match(key: str) -> bool:
        return key in wanted or any(key.startswith(p) and key[len(p):] in wanted for p in prefixes)

    try:
        if _is_safetensors(path):
            header, data = _safetensors_header(path)
            return sorted((data + e["data_offsets"][0], data + e["data_offsets"][1])
                          for k, e in header.items() if k != "__metadata__" and match(k))
        if not zipfile.is_zipfile(path):
            return []
        # map_location="meta" parses the pickle only; torch >= 2.6 notes each storage's offset in the file
        sd = _unwrap(torch.load(path, map_location="meta", weights_only=True), path)
    except Exception:  # an optimisation's input only: the loader reports a bad file
        return []
    out = []
    for k, t in sd.items():
        offset = getattr(t.untyped_storage(), "_checkpoint_offset", None)
        if match(k) and isinstance(offset, int) and t.is_contiguous():
            start = offset + t.storage_offset() * t.element_size()
            out.append((start, start + t.numel() * t.element_size()))
    return sorted(out)


def strip_prefix(sd: StateDict, prefixes: Iterable[str]) -> StateDict:
    """Drop a common key prefix such as 'net.' or 'model.' if every key has it."""
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def assign_state_dict(
    module: nn.Module, sd: StateDict, path: str | Path, dtype: torch.dtype | None = None,
    keep_dtype: tuple[torch.dtype, ...] = (torch.int8,), allow_missing: Iterable[str] = (),
) -> nn.Module:
    """Assign tensors into a module built on the meta device, without a second copy.

    Checks the key set and every shape first and raises a one-line CheckpointError on a mismatch.
    Floating tensors are cast to `dtype` (if given) one at a time; int8 stays int8.
    Keys listed in `allow_missing` may be absent: they are materialised as zeros.
    """
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in sd and k not in set(allow_missing)]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{path}: does not match the model: " + ", ".join(parts))
    for k, t in sd.items():
        want = tuple(expected[k].shape)
        if tuple(t.shape) != want:
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(t.shape)}, the model expects {want}")
    out: StateDict = {}
    for k, ref in expected.items():
        t = sd.get(k)
        if t is None:
            t = torch.zeros(ref.shape, dtype=ref.dtype if ref.dtype.is_floating_point else ref.dtype)
        if t.is_floating_point() and dtype is not None and t.dtype not in keep_dtype:
            t = t.to(dtype)
        elif t.is_floating_point() and dtype is None and ref.dtype != t.dtype and ref.device.type != "meta":
            t = t.to(ref.dtype)
        out[k] = t
    module.load_state_dict(out, strict=True, assign=True)
    return module
