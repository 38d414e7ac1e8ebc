"""Triton kernels loaded ahead of their first launch, on turbovid.prewarm's helper thread.

A process loads each compiled Triton kernel from the disk cache on its first launch: ~3.5 ms of
Python (cache key, metadata) and ~2 ms to load the module, for each of the 41 kernels of a 1.3B
video, ~0.24 s of its first forward (H100 host, cProfile). While a video runs, a Triton hook notes
the specialization of every turbovid kernel that gets loaded; the list is kept next to the autotune
picks (one file per GPU and Triton version), and the next process loads those kernels while its
weights load (Triton's JITFunction.preload). A missing or unreadable list only means loading them
on first launch, as before. TURBOVID_PRELOAD=0 turns both the recording and the loading off.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator

log = logging.getLogger("turbovid.preload")

MAX_ENTRIES = 400  # the latest kept: ~50 kernels per model, resolution and quantization, ~5 ms each to load
_lock = threading.Lock()


def list_file() -> Path:
    import triton

    from turbovid.ops.tuning import _device_tag, cache_folder

    digest = hashlib.sha256(f"{_device_tag()}\n{triton.__version__}".encode()).hexdigest()[:16]
    return cache_folder() / f"preload-{digest}.json"


def _read(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        log.info("kernel preload list %s unreadable (%s); starting a new one", path, e)
        return []
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and {"module", "name", "data"} <= e.keys()]


def _write(path: Path, entries: list[dict]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        with os.fdopen(fd, "w") as f:
            json.dump(entries[-MAX_ENTRIES:], f)
        os.replace(tmp, path)  # whole files only, also with several processes at once
    except (OSError, TypeError, ValueError) as e:
        log.info("kernel preload list not kept (%s)", e)


def enabled() -> bool:
    return os.environ.get("TURBOVID_PRELOAD", "1") != "0"


def _runtime_knobs():
    if not enabled():
        return None
    try:
        from triton import knobs
    except ImportError:  # Triton < 3.4: no hooks, nothing recorded
        return None
    return getattr(knobs, "runtime", None)


@contextlib.contextmanager
def recording() -> Iterator[list[dict]]:
    """Note each turbovid kernel Triton loads inside the block; add the new ones to the list file."""
    runtime = _runtime_knobs()
    if runtime is None or not hasattr(runtime, "jit_post_compile_hook"):
        yield []
        return
    seen: list[dict] = []
    previous = runtime.jit_post_compile_hook

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
        module = str(getattr(fn, "module", ""))
        data = compile.get("specialization_data") if isinstance(compile, dict) else None
        if module.startswith("turbovid.") and data:
            seen.append({"module": module, "name": getattr(fn, "name", ""), "data": data})
        if previous is not None:
            return previous(key=key, repr=repr, fn=fn, compile=compile, is_manual_warmup=is_manual_warmup,
                            already_compiled=already_compiled)
        return None

    runtime.jit_post_compile_hook = hook
    try:
        yield seen
    finally:
        runtime.jit_post_compile_hook = previous
        if seen:
            with _lock:
                path = list_file()
                entries = _read(path)
                before = len(entries)
                known = {e["data"] for e in entries}
                for e in seen:
                    if e["data"] not in known:
                        known.add(e["data"])
                        entries.append(e)
                if len(entries) > before:
                    _write(path, entries)


def _jit_function(module: str, name: str):
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    while not hasattr(obj, "preload") and hasattr(obj, "fn"):  # autotune / heuristics wrappers
        obj = obj.fn
    return obj


def load_all() -> int:
    """Load every listed kernel (from Triton's disk cache) into this process on the current device;
    returns how many. Entries that fail (a kernel renamed, an edited source) are skipped."""
    done = 0
    if not enabled():
        return done
    for entry in _read(list_file()):
        try:
            kernel = _jit_function(entry["module"], entry["name"]).preload(entry["data"])
            init = getattr(kernel, "_init_handles", None)
            if init is not None:
                init()  # the module load, which would otherwise happen on the first launch
            done += 1
        except Exception as e:  # noqa: BLE001 - loading ahead is an optimisation only
            log.debug("kernel %s.%s not preloaded: %s: %s", entry["module"], entry["name"], type(e).__name__, e)
    return done
