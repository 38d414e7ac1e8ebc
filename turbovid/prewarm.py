"""One-time work of a process's first video, started on a helper thread while the weights load.

A fresh process's first video waited ~0.35 s for Triton to hash its own sources and libtriton
(`triton_key()`, the prefix of every kernel's cache key, computed once per process), ~0.1 s for
modules the first kernel launch imports, ~0.24 s to load its Triton kernels from the disk cache
(turbovid.ops.preload) and ~0.3 s for the text encoder's first kernel loads. None of it needs the
weights, so it runs beside the checkpoint reads. Nothing here is required: on any error the first
call does the work as before.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
from typing import Callable, Sequence

import torch

log = logging.getLogger("turbovid.prewarm")

# Imported by the first launch of a Triton kernel (even one loaded from the cache) and, lazily, by the
# first video (measured: cold_start.py's "modules_imported"). A module the loading thread imports too
# just makes one of the two wait.
MODULES = (
    "triton.compiler.code_generator",
    "turbovid.models.vae_fast",
    "turbovid.models.vae_tiling",
    "turbovid.ops.interleave",
    "turbovid.ops.quant.fp8_cublas",
    "turbovid.ops.rms_silu",
)


def _triton_key() -> None:
    try:
        from triton.runtime.cache import triton_key
    except ImportError:  # older Triton kept it in the compiler
        from triton.compiler.compiler import triton_key
    triton_key()  # lru_cached: later cache-key computations reuse it


def _load_driver() -> None:
    from triton.runtime import driver

    driver.active.get_current_device()  # loads Triton's compiled CUDA helpers (cuda_utils)


def _import_modules() -> None:
    for name in MODULES:
        importlib.import_module(name)


def _preload() -> None:
    from turbovid.ops import preload

    log.debug("%d Triton kernels loaded ahead", preload.load_all())


def _context(device: torch.device) -> None:
    # The CUDA context first (~0.25 s on an H100 host): the loading thread's first CUDA call, the
    # DiT's staged copy, otherwise creates it on the critical path (py-spy: Stream() in _Stager).
    torch.empty(1, device=device)


def _cublas(device: torch.device) -> None:
    # The CUDA context and a cuBLAS handle: a helper thread's handle goes back to PyTorch's pool when
    # the thread ends, where the main thread finds it.
    a = torch.ones(16, 16, device=device, dtype=torch.bfloat16)
    (a @ a).sum().item()


def _steps(device: torch.device) -> list[Callable[[], object]]:
    """The work every CUDA pipeline's first video would otherwise wait for; none off CUDA or without Triton."""
    if device.type != "cuda" or importlib.util.find_spec("triton") is None:
        return []  # the PyTorch paths run: nothing to warm
    steps: list[Callable[[], object]] = []
    if device.index is not None:  # this thread's current device: where the kernels are loaded
        steps.append(lambda: torch.cuda.set_device(device))
    return steps + [lambda: _context(device), _triton_key, _load_driver, _import_modules, _preload,
                    lambda: _cublas(device)]


SWITCH_INTERVAL = 0.0005  # seconds, while the steps run (see Prewarm._run)


class Prewarm:
    """start() at the beginning of loading; join() before the first video (waits only if still busy).

    tasks: more of the same for the models being loaded (e.g. the text encoder's op kernels), run after
    the common work, on CUDA devices only."""

    def __init__(self, device: torch.device, tasks: Sequence[Callable[[], object]] = ()):
        self.device = device
        self.tasks = list(tasks)
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        # each step on its own: one that fails (another Triton version) skips only itself, and the first
        # video then does that work itself
        steps = _steps(self.device) + (self.tasks if self.device.type == "cuda" else [])
        if not steps:
            return
        # Meanwhile the loading thread makes thousands of short torch calls (a few per weight tensor),
        # and each one lets this thread take the GIL for up to the switch interval (5 ms by default):
        # a py-spy profile of the CLI found the 1.3B DiT's staged copy waiting ~1 s that way. A short
        # interval hands the GIL back sooner; the default returns with the last step.
        previous = sys.getswitchinterval()
        if SWITCH_INTERVAL < previous:  # a shorter one the application set stays as it is
            sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            for step in steps:
                try:
                    step()
                except Exception as e:  # noqa: BLE001 - an optimisation only
                    log.debug("prewarm step skipped: %s: %s", type(e).__name__, e)
        finally:
            if SWITCH_INTERVAL < previous:
                sys.setswitchinterval(previous)

    def start(self) -> "Prewarm":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="turbovid-prewarm", daemon=True)
            self._thread.start()
        return self

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
