"""Eager calls bypass the custom ops that torch.compile traces.

Every kernel wrapper is registered as a `torch.library.custom_op` with a fake implementation, so
`torch.compile` can trace the DiT through it. In eager code the op would only add its dispatcher
(~10 us a call, a few hundred calls a forward) and, on its first call, an import of torch._dynamo
(PyTorch wraps custom-op implementations in `torch._dynamo.disable`): 0.8 s of the tiny CLI's first
step on a 2-core CPU. So eager code calls the implementation itself.
"""
from __future__ import annotations

from typing import Callable

import torch


def call(op: Callable, direct: Callable, *args):
    """op(*args) while torch.compile / torch.export trace; direct(*args), the op's implementation,
    otherwise."""
    if torch.compiler.is_compiling():
        return op(*args)
    return direct(*args)
