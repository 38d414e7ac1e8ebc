"""Autotuning whose picks outlive the process.

Triton's autotuner times every config on a kernel's first call for each tuning key, in every new
process: each `./predict.sh` run paid it again before its first video (H100, 1.3B 480p: ~1.6 s
with fp8 linears, ~7.6 s with the int8 GEMM's configs). Triton's own `cache_results` cannot keep
configs that carry a pre_hook (the int8 GEMM's sets its tensor descriptors' block shapes), so the
pick is kept here instead: the index of the winning config for each tuning key, in a JSON file in
Triton's cache folder (TRITON_CACHE_DIR, default ~/.triton/cache), named by the kernel's source, the
config list, the GPU and the Triton version. A missing or unreadable file only means timing again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import types
from pathlib import Path

import triton

log = logging.getLogger("turbovid.tuning")


def cache_folder() -> Path:
    return Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache") / "turbovid-autotune"


def _device_tag() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    i = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(i)
    return f"{torch.cuda.get_device_name(i)} sm{major}{minor}"


def _file(tuner) -> Path:
    fn = tuner.fn
    while hasattr(fn, "fn") and not hasattr(fn, "src"):  # stacked decorators: down to the JITFunction
        fn = fn.fn
    parts = [getattr(fn, "src", fn.__name__), *map(str, tuner.configs), *tuner._turbovid_keys, _device_tag(),
             triton.__version__]  # str(Config): its fields (repr would be an address)
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
    return cache_folder() / f"{getattr(fn, '__name__', 'kernel')}-{digest}.json"


def _load(tuner) -> None:
    path = _file(tuner)
    tuner._turbovid_path = path
    try:
        entries = json.loads(path.read_text())
        picks = {tuple(key): tuner.configs[index] for key, index in entries}
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError, IndexError) as e:  # corrupt or foreign: tune again, overwrite
        log.info("autotune cache %s unreadable (%s); tuning again", path, e)
        return
    for key, config in picks.items():
        tuner.cache.setdefault(key, config)


def _save(tuner) -> None:
    path = tuner._turbovid_path
    try:
        entries = [[list(key), tuner.configs.index(config)] for key, config in tuner.cache.items()]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f)
        os.replace(tmp, path)  # whole files only, also with several processes tuning at once
    except (OSError, ValueError, TypeError) as e:  # read-only cache folder, a key JSON cannot hold
        log.info("autotune picks not kept (%s)", e)


def _persistent_run(self, *args, **kwargs):
    if not hasattr(self, "_turbovid_path"):
        _load(self)
    known = len(self.cache)
    out = self._turbovid_run(*args, **kwargs)
    if len(self.cache) != known:  # a key was tuned in this process
        _save(self)
    return out


def autotune(configs: list, key: list[str], **kwargs):
    """triton.autotune whose picks are kept on disk between processes (not in the CPU interpreter,
    which times nothing)."""
    def decorate(fn):
        tuner = triton.autotune(configs=configs, key=key, **kwargs)(fn)
        if os.environ.get("TRITON_INTERPRET") != "1" and hasattr(tuner, "cache") and hasattr(tuner, "run"):
            tuner._turbovid_run, tuner._turbovid_keys = tuner.run, list(key)
            tuner.run = types.MethodType(_persistent_run, tuner)
        return tuner
    return decorate
