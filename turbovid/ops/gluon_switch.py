"""What the Gluon kernels (Hopper, Triton's lower-level language) share: whether they may run in
this process, the shared memory a block may take, and the fallback when one fails.

They need Triton with Gluon (>= 3.5) and a GPU, never the interpreter; TURBOVID_GLUON=0 turns them
all off (the Triton kernels run), which each kernel family logs once. A kernel that fails on a
device (a Triton without its API, a compile error) is logged once and not tried there again.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

_logged: set[str] = set()
_broken: set[tuple[str, str]] = set()  # (label, device) where a kernel failed once


def enabled(what: str, log: logging.Logger) -> bool:
    """False under TRITON_INTERPRET=1 or TURBOVID_GLUON=0 (the latter logged once per `what`)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    if os.environ.get("TURBOVID_GLUON", "1") == "0":
        if what not in _logged:
            _logged.add(what)
            log.info("%s: the Gluon kernel is off (TURBOVID_GLUON=0); the Triton kernel runs", what)
        return False
    return True


@functools.lru_cache(maxsize=None)
def smem_optin(device: torch.device) -> int:
    """Shared memory one block may opt in to on `device` (227 KiB on every sm_90 part)."""
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def attempt(label: str, device: torch.device, log: logging.Logger, fn: Callable[..., T], *args, **kwargs) -> T | None:
    """fn(*args, **kwargs), or None where it failed on `device`: the first failure is logged as
    "<label> failed on <device> (<error's first line>); using the Triton kernel", later calls
    there return None without trying."""
    key = (label, str(device))
    if key in _broken:
        return None
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # a Triton without this Gluon API, a compile failure: keep going without it
        _broken.add(key)
        log.warning("%s failed on %s (%s: %s); using the Triton kernel", label, device, type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "")
        return None
