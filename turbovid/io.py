"""Video and sidecar files: written to a temp file beside the target, then renamed into place.

A crash or Ctrl-C mid-write leaves nothing behind: the temp file is removed and the target is
either the old file or absent, never half-written.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Iterator

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


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3], rounding as the reference saves videos."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a video batch [B, 3, F, H, W], got shape {tuple(video.shape)}")
    x = (video.detach().float().clamp(-1, 1) + 1) / 2
    x = (x * 255 + 0.5).to(torch.uint8)  # truncation after +0.5 == round half up
    x = x.permute(0, 2, 3, 4, 1)
    if x.device.type != "cuda":
        return x.contiguous().numpy()
    # Page-locked destination: a pageable .cpu() of a 480p video (97 MB) took 64 ms on an H100
    # host, this copy 2 ms. PyTorch's host allocator caches the block for the next video.
    try:
        host = torch.empty(x.shape, dtype=torch.uint8, pin_memory=True)
    except RuntimeError as e:  # page-locked memory can be capped (containers, ulimit -l)
        log.info("video frames: pageable copy to the host (page-locked allocation failed: %s)", e)
        return x.contiguous().cpu().numpy()
    host.copy_(x)
    return host.numpy()


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


def write_video(frames: np.ndarray, path: str | Path, fps: int = FPS) -> Path:
    """Write uint8 frames [T, H, W, 3] as .mp4 (H.264, yuv420p), .webm (VP9) or .gif, by extension."""
    import av

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _FORMATS:
        raise ValueError(f"unsupported video extension {ext!r}; use one of {', '.join(VIDEO_EXTENSIONS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError(f"expected uint8 frames [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    fmt, codec, pix_fmt, options = _FORMATS[ext]
    _, height, width, _ = frames.shape
    if pix_fmt == "yuv420p" and (height % 2 or width % 2):
        raise ValueError(f"{ext} (yuv420p) needs an even width and height, got {width}x{height}")
    with atomic_path(path) as tmp:
        container_options = {"movflags": "+faststart"} if fmt == "mp4" else {}
        with av.open(str(tmp), mode="w", format=fmt, options=container_options) as container:
            stream = container.add_stream(codec, rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            stream.options = options
            stream.thread_type = "AUTO"  # frame and slice threads, as many as the encoder wants
            source = _paletted(frames, fps) if pix_fmt == "pal8" else (
                av.VideoFrame.from_ndarray(f, format="rgb24") for f in frames
            )
            for frame in source:
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
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
