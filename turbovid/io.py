"""Video and sidecar files: written to a temp file beside the target, then renamed into place.

A crash or Ctrl-C mid-write leaves nothing behind: the temp file is removed and the target is
either the old file or absent, never half-written.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

log = logging.getLogger("turbovid.io")

FPS = 16  # Wan2.1's frame rate

# extension -> (container format, codec, pixel format, codec options). Encoding is on the user's
# clock: x264 "veryfast" took 1.1 s for 81 noisy 832x480 frames on 2 cores against 4.9 s for
# "medium", at 0.1 dB less PSNR (0.4 dB on smooth frames) and a similar size at the same CRF; VP9
# encodes rows in parallel.
_FORMATS = {
    ".mp4": ("mp4", "libx264", "yuv420p", {"crf": "18", "preset": "veryfast"}),
    ".webm": ("webm", "libvpx-vp9", "yuv420p", {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}),
    ".gif": ("gif", "gif", "pal8", {}),
}
VIDEO_EXTENSIONS = tuple(_FORMATS)


def _uint8(video: torch.Tensor) -> torch.Tensor:
    """[..., 3, F, H, W] in [-1, 1] -> uint8 [..., F, H, W, 3] on video's device, rounding as the
    reference saves videos."""
    x = (video.detach().float().clamp(-1, 1) + 1) / 2
    x = (x * 255 + 0.5).to(torch.uint8)  # truncation after +0.5 == round half up
    return x.movedim(-4, -1)


def _host_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """uint8 host memory, page-locked when possible: a pageable .cpu() of a 480p video (97 MB) took
    64 ms on an H100 host, a page-locked copy 2 ms. PyTorch's host allocator caches the block."""
    try:
        return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
    except RuntimeError as e:  # page-locked memory can be capped (containers, ulimit -l)
        log.info("video frames: pageable copy to the host (page-locked allocation failed: %s)", e)
        return torch.empty(shape, dtype=torch.uint8)


def _frames_buffer(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """uint8 host memory for videos decoded on `device`: page-locked for a GPU's copies."""
    if torch.device(device).type != "cuda":
        return torch.empty(shape, dtype=torch.uint8)
    with torch.cuda.device(device):  # on a helper thread, the current device is the pipeline's
        return _host_buffer(shape)


_pinner: Optional[ThreadPoolExecutor] = None


def host_buffer_ahead(shape: tuple[int, ...], device: torch.device) -> Future:
    """_frames_buffer(shape, device) on a helper thread, for a video still being generated. A fresh page-locked
    block took 82 ms for a 480p video and 158 ms at 720p on an H100 host (a cached one 0.01 ms): on
    the pipeline's critical path in every one-shot CLI run, off it while the GPU samples."""
    global _pinner
    if _pinner is None:
        _pinner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turbovid-pin")
    return _pinner.submit(_frames_buffer, shape, device)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3], rounding as the reference saves videos."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a video batch [B, 3, F, H, W], got shape {tuple(video.shape)}")
    x = _uint8(video)
    if x.device.type != "cuda":
        return x.contiguous().numpy()
    host = _host_buffer(tuple(x.shape))
    host.copy_(x)
    return host.numpy()


# (sample index, uint8 frames [t, H, W, 3] in host memory, wait): the frames may be read once
# wait() has returned (their copy from the GPU is asynchronous).
FrameSink = Callable[[int, np.ndarray, Callable[[], None]], None]


def _no_wait() -> None:
    pass


class HostFrames:
    """A batch of videos [B, F, H, W, 3] uint8 in host memory, filled chunk by chunk as a decoder
    finishes frames on the device. Each chunk is converted on the device, copied asynchronously
    and handed to `sink` at once, so a video encoder can start while the GPU decodes the rest."""

    def __init__(self, batch: int, frames: int, height: int, width: int, device: torch.device,
                 sink: Optional[FrameSink] = None, ahead: Optional[Future] = None):
        """ahead: host_buffer_ahead()'s future of the uint8 buffer, if one was asked for in advance."""
        self.device = torch.device(device)
        shape = (batch, frames, height, width, 3)
        if ahead is not None:
            self.host = ahead.result()
            if tuple(self.host.shape) != shape:
                raise ValueError(f"host buffer of shape {tuple(self.host.shape)} for videos of shape {shape}")
        else:
            self.host = _frames_buffer(shape, self.device)
        self.sink = sink

    def put(self, sample: int, first: int, chunk: torch.Tensor) -> None:
        """Frames [first, first + t) of `sample`: chunk [3, t, H, W] (or [1, 3, t, H, W]) in [-1, 1]."""
        if chunk.ndim == 5:
            chunk = chunk[0]
        x = _uint8(chunk)
        dst = self.host[sample, first:first + x.shape[0]]
        if dst.shape != x.shape:
            raise ValueError(f"frames {first}..{first + x.shape[0]} of shape {tuple(x.shape)} do not fit "
                             f"a video of shape {tuple(self.host.shape[1:])}")
        wait = _no_wait
        if x.device.type == "cuda" and dst.is_pinned():
            dst.copy_(x, non_blocking=True)  # the allocator keeps x's memory for this stream's copy
            event = torch.cuda.Event()
            event.record()
            wait = event.synchronize  # releases the GIL while it waits
        else:
            dst.copy_(x)
        if self.sink is not None:
            self.sink(sample, dst.numpy(), wait)

    def videos(self) -> list[np.ndarray]:
        """The finished videos (waits for the last copies)."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return list(self.host.numpy())


def check_output_path(path: str | Path) -> Path:
    """Fail early (before any work) if a video cannot be written at `path`. Creates nothing."""
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(
            f"output {str(path)!r} has an unsupported extension; use one of {', '.join(VIDEO_EXTENSIONS)}"
        )
    if path.is_dir():
        raise ValueError(f"output {str(path)!r} is a folder; give a file name such as {path / 'video.mp4'}")
    # Missing folders are created when writing: check the nearest one that exists.
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"cannot create a folder under {str(folder)!r}, it is a file; choose another --output")
    # os.access is unreliable (root, ACLs, read-only mounts): try to create a file instead.
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".turbovid-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"output folder {str(folder)!r} is not writable ({e.strerror}); choose a writable --output") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"output {str(path)!r} exists and is read-only; remove it or choose another --output")
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto `path` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp_path, path)
    except BaseException:  # includes KeyboardInterrupt: never leave the temp file behind
        tmp_path.unlink(missing_ok=True)
        raise


def _check_frame_size(ext: str, width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"video frames must be at least 1x1, got {width}x{height}")
    if _FORMATS[ext][2] == "yuv420p" and (height % 2 or width % 2):
        raise ValueError(f"{ext} (yuv420p) needs an even width and height, got {width}x{height}")


class VideoWriter:
    """Encode frames as they arrive, on a background thread, into .mp4 (H.264, yuv420p), .webm
    (VP9) or .gif, by extension. The file appears at close(), atomically; abort() (or an exception
    inside a `with` block) leaves nothing behind.

    write() only queues the frames, so a GPU decode can go on while the CPU encodes what is
    already decoded. A failure of the encoder (disk full, codec error) is raised by close().
    GIFs need all frames for their palette, so they are encoded at close().
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: int = FPS, threads: int = 0):
        """threads: the encoder's threads (0: its own choice, about one per core; fewer did not help
        the GPU decode beside it, benchmarks/explore_stream_threads.py)."""
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in _FORMATS:
            raise ValueError(f"unsupported video extension {ext!r}; use one of {', '.join(VIDEO_EXTENSIONS)}")
        _check_frame_size(ext, width, height)
        if importlib.util.find_spec("av") is None:  # fail here, before any work
            raise ImportError("writing videos needs PyAV: pip install av")

        self.ext, self.width, self.height, self.fps, self.threads = ext, width, height, fps, threads
        self.frames_written = 0
        self._items: queue.Queue = queue.Queue()
        self._error: Optional[BaseException] = None
        self._closed = False
        self._drained = False  # the encoder thread has taken the end marker
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._thread = threading.Thread(target=self._run, name=f"video-writer:{self.path.name}", daemon=True)
        self._thread.start()

    def write(self, frames: np.ndarray, wait: Callable[[], None] = _no_wait) -> None:
        """Queue uint8 frames [t, H, W, 3]; the encoder reads them after wait() returns."""
        if self._closed:
            raise ValueError(f"{self.path}: write() after close()")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames [t, {self.height}, {self.width}, 3], got {frames.dtype} {frames.shape}")
        self._items.put((frames, wait))

    def close(self) -> Path:
        """Wait for the encoder, then move the file into place; raises what the encoder raised."""
        if self._closed:
            raise ValueError(f"{self.path}: close() called twice")
        self._closed = True
        self._items.put(None)
        try:
            self._thread.join()
        except BaseException as e:  # Ctrl-C while the encode finishes: leave nothing behind
            self._error = self._error or _Aborted()
            self._thread.join()
            self._atomic.__exit__(type(e), e, None)
            raise
        error = self._error
        if error is None and self.frames_written == 0:
            error = ValueError(f"{self.path}: no frames were written")
        if error is not None:
            self._atomic.__exit__(type(error), error, None)  # removes the temp file
            raise error
        self._atomic.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Stop encoding and remove the partial file."""
        if self._closed:
            return
        self._closed = True
        self._error = self._error or _Aborted()
        self._items.put(None)
        self._thread.join()
        err = self._error
        self._atomic.__exit__(type(err), err, None)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _frames(self) -> Iterator[np.ndarray]:
        """Queued frames, one at a time, until close(); stops early once aborted."""
        while True:
            item = self._items.get()
            if item is None:
                self._drained = True
                return
            if self._error is not None:
                return
            frames, wait = item
            wait()
            yield from frames

    def _run(self) -> None:
        import av

        fmt, codec, pix_fmt, options = _FORMATS[self.ext]
        try:
            container_options = {"movflags": "+faststart"} if fmt == "mp4" else {}
            with av.open(str(self._tmp), mode="w", format=fmt, options=container_options) as container:
                stream = container.add_stream(codec, rate=Fraction(self.fps))
                stream.width, stream.height, stream.pix_fmt = self.width, self.height, pix_fmt
                stream.options = options
                stream.thread_type = "AUTO"  # frame and slice threads
                stream.thread_count = self.threads
                if pix_fmt == "pal8":
                    frames = list(self._frames())
                    source = _paletted(np.stack(frames), self.fps) if frames else []
                else:
                    source = (av.VideoFrame.from_ndarray(f, format="rgb24") for f in self._frames())
                for frame in source:
                    container.mux(stream.encode(frame))
                    self.frames_written += 1
                if self._error is None:  # not aborted: flush the encoder's delayed frames
                    container.mux(stream.encode())
        except BaseException as e:  # kept for close() to raise
            self._error = self._error or e
        while not self._drained:  # up to close()'s or abort()'s end marker, so neither can block
            self._drained = self._items.get() is None


class _Aborted(Exception):
    pass


def write_video(frames: np.ndarray, path: str | Path, fps: int = FPS) -> Path:
    """Write uint8 frames [T, H, W, 3] as .mp4 (H.264, yuv420p), .webm (VP9) or .gif, by extension."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _FORMATS:
        raise ValueError(f"unsupported video extension {ext!r}; use one of {', '.join(VIDEO_EXTENSIONS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError(f"expected uint8 frames [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    with VideoWriter(path, frames.shape[2], frames.shape[1], fps) as writer:
        writer.write(frames)
    return path


def _paletted(frames: np.ndarray, fps: int) -> list:
    """GIF frames with one 256-colour palette fitted to the whole clip (a fixed palette bands badly)."""
    import av
    import av.filter

    _, height, width, _ = frames.shape
    graph = av.filter.Graph()
    src = graph.add_buffer(width=width, height=height, format="rgb24", time_base=Fraction(1, fps))
    split, sink = graph.add("split"), graph.add("buffersink")
    palette, apply = graph.add("palettegen", "stats_mode=full"), graph.add("paletteuse")
    src.link_to(split)
    split.link_to(palette, 0, 0)
    split.link_to(apply, 1, 0)
    palette.link_to(apply, 0, 1)
    apply.link_to(sink)
    graph.configure()
    for i, f in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(f, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        graph.push(frame)
    graph.push(None)
    out = []
    while True:
        try:
            out.append(graph.pull())
        except (av.error.EOFError, av.error.BlockingIOError):
            return out


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode a video file to uint8 frames [T, H, W, 3] and its frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: holds no video frames")
    return np.stack(frames), fps


def write_json(obj: dict, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
