"""Autotuning whose results outlive the process.

Triton's autotuner times every config on a kernel's first call for each tuning key, in every new
process: each `./predict.sh` run paid it again before its first video. Triton >= 3.3 can keep the
winner next to the compiled kernels (TRITON_CACHE_DIR, default ~/.triton/cache), keyed by the
kernel's source, the configs, the tuning key and the GPU; later processes read it instead of timing.
"""
from __future__ import annotations

import inspect
import os

import triton


def autotune(configs: list, key: list[str], **kwargs):
    """triton.autotune, with its results cached on disk where this Triton supports it (not in the
    CPU interpreter, which has no GPU target to key them by)."""
    if "cache_results" in inspect.signature(triton.autotune).parameters and os.environ.get("TRITON_INTERPRET") != "1":
        kwargs["cache_results"] = True
    return triton.autotune(configs=configs, key=key, **kwargs)
