"""Whether the Gluon kernels (Hopper, Triton's lower-level language) may run in this process.

They need Triton with Gluon (>= 3.5) and a GPU, never the interpreter; TURBOVID_GLUON=0 turns them
all off (the Triton kernels run), which each kernel family logs once.
"""
from __future__ import annotations

import logging
import os

_logged: set[str] = set()


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
