"""Getting checkpoint bytes from disk to the GPU quickly.

Loading reads checkpoints memory-mapped, so a tensor's bytes come off the disk when the copy to the GPU
first touches them. Two things make that faster, both optional (`TURBOVID_FAST_LOAD=0` turns them off):

- `prefetch` asks the kernel to read the files ahead, in the order they will be loaded, on a helper
  thread, so the disk works while Python builds modules, CUDA starts and the earlier files are copied
  (less what stays memory-mapped and is read piecemeal: umT5's 2.1 GB token-embedding table, see
  `turbovid.loading.prefetch_checkpoints`);
- `to_device` copies a module's CPU tensors to the GPU through a ring of pinned buffers: PyTorch's
  threads fill one buffer from the page cache while the DMA of the previous one runs. A plain
  `module.to("cuda")` stages pageable memory through the driver, one tensor at a time.

Warm page cache, umT5-XXL (11.4 GB) memory-mapped, H100 host: 0.39 s staged against 1.55 s for `.to()`
per tensor (benchmarks/explore_load.py). From a cold cache the disk sets the pace either way.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

log = logging.getLogger("turbovid.loading")

STAGE_BYTES = 64 << 20  # one pinned buffer; three of them are in flight
SMALL_BYTES = 16 << 20  # modules below this go through .to(): nothing to gain
PREFETCH_SHARE = 0.5  # prefetch only while the files fit in this share of the available memory


def enabled() -> bool:
    return os.environ.get("TURBOVID_FAST_LOAD", "1") != "0"


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


READAHEAD_STEP = 8 << 20

Ranges = Callable[[Path], Sequence[tuple[int, int]]]


def _windows(size: int, skip: Sequence[tuple[int, int]], step: int) -> list[tuple[int, int]]:
    """(offset, length) pieces of at most `step` bytes covering [0, size) minus the `skip` ranges."""
    out, pos = [], 0
    for start, end in sorted(skip) + [(size, size)]:
        start, end = min(max(start, pos), size), min(end, size)
        out += [(off, min(step, start - off)) for off in range(pos, start, step)]
        pos = max(pos, end)
    return out


def _readahead(files: list[Path], skip: Ranges | None) -> None:
    # One WILLNEED over a whole file reads only the device's read-ahead window (Linux caps
    # force_page_cache_ra at it), so the advice goes out one window at a time; each call queues
    # the reads and returns, and skips pages already cached. (Reading the files on this thread
    # instead was slower from a cold cache: 16.6-18.6 vs 14.4-14.6 s a CLI run, H100 host.)
    for f in files:
        try:
            ranges = skip(f) if skip is not None else ()
            fd = os.open(f, os.O_RDONLY)
            try:
                for off, n in _windows(os.fstat(fd).st_size, ranges, READAHEAD_STEP):
                    os.posix_fadvise(fd, off, n, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        except OSError as e:  # an optimisation only
            log.debug("prefetch of %s skipped: %s", f, e)


def prefetch(files: Iterable[str | Path], skip: Ranges | None = None) -> threading.Thread | None:
    """Start reading `files` (in load order) into the page cache on a daemon thread, less the byte
    ranges `skip(file)` names (worked out on that thread, just before the file is read).

    Skipped when turned off, where the OS has no posix_fadvise, or when the files would take more than
    half of the available memory (they would evict each other before being used)."""
    if not enabled() or not hasattr(os, "posix_fadvise"):
        return None
    files = [Path(f) for f in files if Path(f).is_file()]
    total = sum(f.stat().st_size for f in files)
    if not files or total > PREFETCH_SHARE * _available_bytes():
        log.debug("no prefetch: %.1f GB of checkpoints, %.1f GB available", total / 1e9, _available_bytes() / 1e9)
        return None
    thread = threading.Thread(target=_readahead, args=(files, skip), name="turbovid-prefetch", daemon=True)
    thread.start()
    return thread


class _Stager:
    """Callable for `nn.Module._apply`: returns the GPU copy of a CPU tensor, the DMA still in flight.

    The caller must `finish()` before the copies are used."""

    def __init__(self, device: torch.device, buffers: int = 3, size: int = STAGE_BYTES):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.bufs = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for _ in range(buffers)]
        self.done = [torch.cuda.Event() for _ in range(buffers)]
        self.used = [False] * buffers
        self.next = 0
        self.size = size

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
            return t.to(self.device)
        out = torch.empty(t.shape, dtype=t.dtype, device=self.device)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # out's memory may be a just-freed block
        src, dst = t.reshape(-1).view(torch.uint8), out.reshape(-1).view(torch.uint8)
        for start in range(0, src.numel(), self.size):
            n = min(self.size, src.numel() - start)
            i = self.next
            self.next = (i + 1) % len(self.bufs)
            if self.used[i]:
                self.done[i].synchronize()  # its last DMA has read it
            buf = self.bufs[i][:n]
            buf.copy_(src[start:start + n])  # page cache -> pinned, on PyTorch's CPU threads
            with torch.cuda.stream(self.stream):
                dst[start:start + n].copy_(buf, non_blocking=True)
                self.done[i].record(self.stream)
            self.used[i] = True
        return out

    def finish(self) -> None:
        self.stream.synchronize()


def _cpu_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()) if t.device.type == "cpu")


def to_device(module: nn.Module, device: str | torch.device) -> nn.Module:
    """`module.to(device)`, through pinned staging buffers when moving a large module to a CUDA device."""
    device = torch.device(device)
    if device.type != "cuda" or not enabled() or _cpu_bytes(module) < SMALL_BYTES:
        return module.to(device)
    try:
        stager = _Stager(device)
    except RuntimeError as e:  # no pinned memory to be had: the plain copy still works
        log.debug("staged copy unavailable (%s); plain .to()", e)
        return module.to(device)
    module._apply(stager)
    stager.finish()
    return module


__all__ = ["prefetch", "to_device", "enabled"]
