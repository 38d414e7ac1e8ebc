"""One-time work of a process's first video, started on a helper thread while the weights load.

A fresh process's first video waited ~0.35 s for Triton to hash its own sources and libtriton
(`triton_key()`, the prefix of every kernel's cache key, computed once per process) and ~0.1 s for
modules the first kernel launch imports. None of it needs the weights, so it runs beside the
checkpoint reads. Nothing here is required: on any error the first call does the work as before.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import threading

import torch

log = logging.getLogger("turbovid.prewarm")

# Imported by the first launch of a Triton kernel, even one loaded from the cache. (Modules the loading
# thread imports itself stay off this list: two threads importing one module would just wait.)
MODULES = ("triton.compiler.code_generator",)


def _triton_key() -> None:
    try:
        from triton.runtime.cache import triton_key
    except ImportError:  # older Triton kept it in the compiler
        from triton.compiler.compiler import triton_key
    triton_key()  # lru_cached: later cache-key computations reuse it


def _work(device: torch.device) -> None:
    if device.type != "cuda" or importlib.util.find_spec("triton") is None:
        return  # the PyTorch paths run: nothing to warm
    _triton_key()
    for name in MODULES:
        importlib.import_module(name)
    # The CUDA context and a cuBLAS handle: a helper thread's handle goes back to PyTorch's pool when
    # the thread ends, where the main thread finds it.
    a = torch.ones(16, 16, device=device, dtype=torch.bfloat16)
    (a @ a).sum().item()


class Prewarm:
    """start() at the beginning of loading; join() before the first video (waits only if still busy)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            _work(self.device)
        except Exception as e:  # an optimisation only: the first video does this work itself
            log.debug("prewarm skipped: %s", e)

    def start(self) -> "Prewarm":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="turbovid-prewarm", daemon=True)
            self._thread.start()
        return self

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
