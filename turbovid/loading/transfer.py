"""Getting checkpoint bytes from disk to the GPU quickly.

Loading reads checkpoints memory-mapped, so a tensor's bytes come off the disk when the copy to the GPU
first touches them. Two things make that faster, both optional (`TURBOVID_FAST_LOAD=0` turns them off):

- `prefetch` asks the kernel to read the files ahead, in the order they will be loaded, on a helper
  thread, so the disk works while Python builds modules, CUDA starts and the earlier files are copied
  (less what stays memory-mapped and is read piecemeal: umT5's 2.1 GB token-embedding table, see
  `turbovid.loading.prefetch_checkpoints`);
- `to_device` copies a module's CPU tensors to the GPU through a ring of pinned buffers: PyTorch's
  threads (or, for tensors a loader has just memory-mapped, pread on reader threads: `FileSource`)
  fill the next buffers while the DMA of the earlier ones runs. A plain `module.to("cuda")` stages
  pageable memory through the driver, one tensor at a time.

Warm page cache, umT5-XXL (11.4 GB) memory-mapped, H100 host: 0.39 s staged against 1.55 s for `.to()`
per tensor (benchmarks/explore_load.py); read with pread, its later release costs 0.07 s instead of
0.6 s (benchmarks/explore_release.py). From a cold cache the disk sets the pace.
"""
from __future__ import annotations

import bisect
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

log = logging.getLogger("turbovid.loading")

STAGE_BYTES = 64 << 20  # one pinned buffer of the ring of four (up to three being filled)
SMALL_BYTES = 16 << 20  # modules below this go through .to(): nothing to gain
SMALL_TENSOR = 1 << 20  # tensors below this skip the staging ring: one plain copy each, at the end
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


READ_PIECE = 8 << 20  # one pread; a staging buffer's pieces are read by several threads at once


class FileSource:
    """Where a memory-mapped CPU tensor's bytes lie in its file, so they can be read with pread.

    Reading a checkpoint through its memory map fills the process's page tables: every 4 KiB page
    touched gets an entry, and unmapping the file later tears them all down again (0.6 s for umT5's
    11.4 GB on an H100 host, inside the text-encoding stage that releases it). pread copies the same
    page-cache bytes without mapping them, and several threads read in parallel (warm cache, 11.4 GB:
    0.28 s with 16 threads against 0.39 s for the staged copy through the map; benchmarks/explore_load.py).
    Only for tensors that still hold the file's bytes: the loaders use it straight after reading."""

    def __init__(self) -> None:
        self.maps = _file_mappings()
        self.starts = [m[0] for m in self.maps]
        self.fds: dict[str, int | None] = {}
        self.pool: ThreadPoolExecutor | None = None

    def locate(self, t: torch.Tensor) -> tuple[int, int] | None:
        """(open file descriptor, offset) of a contiguous CPU tensor inside a file mapping, else None."""
        if t.device.type != "cpu" or not t.is_contiguous() or not self.maps:
            return None
        p, n = t.data_ptr(), t.numel() * t.element_size()
        i = bisect.bisect_right(self.starts, p) - 1
        if i < 0:
            return None
        lo, hi, offset, path, inode = self.maps[i]
        if p + n > hi:
            return None
        fd = self._open(path, inode)
        return None if fd is None else (fd, offset + p - lo)

    def _open(self, path: str, inode: int) -> int | None:
        if path not in self.fds:
            fd = None
            try:
                fd = os.open(path, os.O_RDONLY)
                if os.fstat(fd).st_ino != inode:  # replaced on disk since it was mapped
                    os.close(fd)
                    fd = None
            except OSError:
                fd = None
            self.fds[path] = fd
        return self.fds[path]

    def submit(self, view: memoryview, fd: int, offset: int) -> list[Future]:
        """Start filling `view` from the file at `offset`, READ_PIECE bytes per reader thread."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(min(16, os.cpu_count() or 1), thread_name_prefix="turbovid-read")
        return [self.pool.submit(_pread_all, fd, view[a:a + READ_PIECE], offset + a)
                for a in range(0, len(view), READ_PIECE)]

    def read(self, view: memoryview, fd: int, offset: int) -> None:
        for f in self.submit(view, fd, offset):
            f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        for fd in self.fds.values():
            if fd is not None:
                os.close(fd)
        self.fds.clear()


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            raise OSError(f"unexpected end of file at offset {offset + got}")
        got += n


def _file_mappings() -> list[tuple[int, int, int, str, int]]:
    """(start, end, file offset, path, inode) of this process's file-backed memory mappings, by start;
    [] where /proc/self/maps is not there (not Linux)."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.rstrip("\n").split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/") and parts[4] != "0":
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    out.append((lo, hi, int(parts[2], 16), parts[5], int(parts[4])))
    except OSError:
        return []
    return sorted(out)


class _Stager:
    """Callable for `nn.Module._apply`: returns the GPU copy of a CPU tensor, the DMA still to come.

    The caller must `finish()` before the copies are used. Chunks of STAGE_BYTES go through a ring of
    pinned buffers; up to `buffers - 1` are being filled while the DMA of the ones before runs. With
    `files`, tensors that are views of a file mapping are read from the file with pread (on FileSource's
    threads) instead of copied through the map."""

    def __init__(self, device: torch.device, buffers: int = 4, size: int | None = None, files: FileSource | None = None):
        self.device = device
        size = size or STAGE_BYTES  # read at call time, so tests can shrink it
        self.stream = torch.cuda.Stream(device)
        self.bufs = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for _ in range(buffers)]
        self.views = [memoryview(b.numpy()) for b in self.bufs]
        self.done = [torch.cuda.Event() for _ in range(buffers)]
        self.used = [False] * buffers
        self.next = 0
        self.size = size
        self.files = files
        self.pending: deque = deque()  # (buffer, bytes, destination, reads) filled or being filled, not sent
        self.small: list[tuple[torch.Tensor, torch.Tensor]] = []  # (GPU tensor, CPU source) copied in finish()
        self.file_bytes = 0  # how many bytes came by pread (for tests and benchmarks)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
            return t.to(self.device)
        out = torch.empty(t.shape, dtype=t.dtype, device=self.device)
        if t.numel() * t.element_size() < SMALL_TENSOR:
            # A DiT has hundreds of biases, norm weights and modulation vectors: staged, each cost a
            # dozen short torch calls, and each call can wait for the GIL on the prewarm thread. They
            # are copied with one call each at the end, on the current stream (after any earlier use
            # of the memory `out` was given).
            self.small.append((out, t.detach()))  # not t: _apply points a Parameter t at `out` next
            return out
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # out's memory may be a just-freed block
        src, dst = t.reshape(-1).view(torch.uint8), out.reshape(-1).view(torch.uint8)
        where = self.files.locate(t) if self.files is not None else None
        for start in range(0, src.numel(), self.size):
            n = min(self.size, src.numel() - start)
            if len(self.pending) >= len(self.bufs) - 1:
                self._send_oldest()
            i = self.next
            self.next = (i + 1) % len(self.bufs)
            if self.used[i]:
                self.done[i].synchronize()  # its last DMA has read it
            if where is not None:  # file -> pinned by pread, on the reader threads
                reads = self.files.submit(self.views[i][:n], where[0], where[1] + start)
                self.file_bytes += n
            else:
                self.bufs[i][:n].copy_(src[start:start + n])  # page cache -> pinned, on PyTorch's CPU threads
                reads = []
            self.pending.append((i, n, dst[start:start + n], reads))
        return out

    def _send_oldest(self) -> None:
        i, n, dst, reads = self.pending.popleft()
        for f in reads:
            f.result()
        with torch.cuda.stream(self.stream):
            dst.copy_(self.bufs[i][:n], non_blocking=True)
            self.done[i].record(self.stream)
        self.used[i] = True

    def finish(self) -> None:
        try:
            while self.pending:
                self._send_oldest()
            for out, src in self.small:  # one call each, on the current stream
                out.copy_(src)
            self.small.clear()
            self.stream.synchronize()
        finally:
            if self.files is not None:
                self.files.close()


def _cpu_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()) if t.device.type == "cpu")


# False: copy through the memory map even where a loader allows file reads (A/B timing)
FILE_READS = True


def to_device(module: nn.Module, device: str | torch.device, from_files: bool = False) -> nn.Module:
    """`module.to(device)`, through pinned staging buffers when moving a large module to a CUDA device.

    from_files: the module's CPU tensors that are views of a memory-mapped file still hold that file's
    bytes (a loader that has just read the checkpoint), so they may be read with pread (FileSource)."""
    device = torch.device(device)
    if device.type != "cuda" or not enabled() or _cpu_bytes(module) < SMALL_BYTES:
        return module.to(device)
    try:
        stager = _Stager(device, files=FileSource() if from_files and FILE_READS else None)
    except RuntimeError as e:  # no pinned memory to be had: the plain copy still works
        log.debug("staged copy unavailable (%s); plain .to()", e)
        return module.to(device)
    try:
        module._apply(stager)
    finally:
        stager.finish()
    return module


__all__ = ["FileSource", "prefetch", "to_device", "enabled"]
