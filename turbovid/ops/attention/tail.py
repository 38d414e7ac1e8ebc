"""Softmax attention over keys whose rows repeat from a row on: cross-attention to a zero-padded prompt.

`tail_attention(q, k, v, n)` equals dense attention of q over all rows of k, v when rows n[b].. of
item b all equal row n[b]. The Triton kernel (tail_kernel.py) visits rows 0..n only, with row n's
weight multiplied by the number of rows it stands for; elsewhere (CPU, no Triton, float64, head
dims other than 16-256, TURBOVID_TAIL_ATTENTION=0) the dense path runs over all rows, logged once.
Registered as the custom op `turbovid::tail_attention` with a fake implementation, so
torch.compile traces the DiT through it.
"""
from __future__ import annotations

import os

import torch

from turbovid.ops.dispatch import call

from . import allow_interpreter, cpu_interpreter_allowed, dense_attention, log_once  # noqa: F401

# Contexts of up to this many rows (the prompt's, before Wan's padding to 512) attend through the
# kernel; longer ones densely over all rows, where cuDNN's SDPA is the faster. H100, 1.3B 480p,
# benchmarks/ab_tail_attention.py (2026-11-27): kernel vs SDPA 0.177 vs 0.188 ms at 200 prompt rows,
# 0.324 vs 0.198 at 512; the break-even lies at 225-260 rows across 1.3B / 14B, 480p / 720p.
MAX_ROWS = 256


def kernel_unavailable(q: torch.Tensor) -> str | None:
    """None when the kernel can run on q, else a one-line reason."""
    if os.environ.get("TURBOVID_TAIL_ATTENTION", "1") == "0":
        return "TURBOVID_TAIL_ATTENTION=0"
    d = q.shape[-1]
    if d < 16 or d > 256 or d & (d - 1):
        return f"the kernel takes power-of-two head dims 16-256, got {d}"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the kernel takes float16 / bfloat16 / float32, got {q.dtype}"
    try:
        from . import tail_kernel
    except ImportError as e:
        return f"triton is not importable ({e})"
    if q.device.type == "cuda":
        return "the kernel was loaded under TRITON_INTERPRET=1" if tail_kernel.INTERPRETED else None
    if q.device.type == "cpu" and tail_kernel.INTERPRETED and cpu_interpreter_allowed():
        return None
    return f"the kernel needs a CUDA device, got {q.device.type}"


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    reason = kernel_unavailable(q)
    if reason is not None:
        log_once(f"cross-attention: dense over all text rows ({reason})")
        return dense_attention(q, k, v).contiguous()
    from . import tail_kernel

    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return tail_kernel.tail_attention(q, k, v, n.to(device=q.device, dtype=torch.int32))


_op = torch.library.custom_op("turbovid::tail_attention", _run, mutates_args=())
_op.register_fake(lambda q, k, v, n: q.new_empty(q.shape))


def tail_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Attention of q [B, Lq, H, D] over k, v [B, Lk, H, D], where for each item b the rows n[b]..Lk-1
    of k and v all equal row n[b] (n: int [B]; n[b] >= Lk when nothing repeats). Equal to dense
    attention over all Lk rows; returns [B, Lq, H, D] in q's dtype."""
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"tail_attention expects q [B, Lq, H, D] and k, v [B, Lk, H, D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"tail_attention expects one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if n.shape != (q.shape[0],) or n.dtype.is_floating_point:
        raise ValueError(f"tail_attention expects n as integers [B={q.shape[0]}], got {n.dtype} {tuple(n.shape)}")
    return call(_op, _run, q, k, v, n)


def repeat_start(rows: torch.Tensor) -> torch.Tensor:
    """For rows [B, L, C]: int32 [B], the number of rows up to the last one that is not all zero; the
    rows from there on are all zero (so anything computed row by row from them repeats). On the rows'
    device, without a sync."""
    nonzero = rows.ne(0).any(-1)  # [B, L]
    index = torch.arange(1, rows.shape[1] + 1, device=rows.device)
    return (nonzero * index).amax(-1).to(torch.int32)
