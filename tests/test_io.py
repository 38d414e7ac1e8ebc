import json

import av
import numpy as np
import pytest
import torch

from turbovid import io


def _frames(t=5, h=32, w=48):
    # smooth gradients that move: survive lossy codecs closely
    y, x = np.mgrid[0:h, 0:w]
    out = np.stack([np.stack([(x * 5 + 10 * i) % 256, (y * 7) % 256, np.full_like(x, 40 * i % 256)], -1)
                    for i in range(t)])
    return out.astype(np.uint8)


def test_to_uint8_frames_rounding_and_layout():
    v = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0, 0.5]).reshape(1, 1, 1, 1, 6).expand(2, 3, 1, 1, 6)
    out = io.to_uint8_frames(v)
    assert out.shape == (2, 1, 1, 6, 3) and out.dtype == np.uint8
    # (x+1)/2*255+0.5 truncated: -1 -> 0, 0 -> 128, 1 -> 255, 0.5 -> 191 (191.75)
    assert out[0, 0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 191]
    with pytest.raises(ValueError, match="video batch"):
        io.to_uint8_frames(torch.zeros(3, 2, 4, 4))


def test_mp4_is_h264_yuv420p_16fps(tmp_path):
    frames = _frames()
    path = io.write_video(frames, tmp_path / "v.mp4")
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        assert s.codec_context.pix_fmt == "yuv420p"
        assert s.average_rate == 16
    back, fps = io.read_video(path)
    assert back.shape == frames.shape and fps == 16
    assert np.abs(back.astype(int) - frames).mean() < 3
    # x264 records its settings in the stream: CRF 18 with the "veryfast" preset's one reference
    # frame and subme 2 (medium: ref=3, subme=7)
    data = path.read_bytes()
    assert b"crf=18.0" in data and b" ref=1 " in data and b" subme=2 " in data


def test_webm_by_extension(tmp_path):
    frames = _frames()
    path = io.write_video(frames, tmp_path / "v.webm")
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
    back, fps = io.read_video(path)
    assert back.shape == frames.shape and fps == 16
    assert np.abs(back.astype(int) - frames).mean() < 4


def test_gif_fits_its_palette_to_the_clip(tmp_path):
    # 200 distinct colours, none on a fixed 3-3-2 palette: a fitted 256-colour palette keeps them all
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (200, 3), dtype=np.uint8)
    frames = palette[rng.integers(0, 200, (5, 32, 48))]
    path = io.write_video(frames, tmp_path / "v.gif")
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "gif"
    back, _ = io.read_video(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 1.0


def test_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unsupported video extension"):
        io.write_video(_frames(), tmp_path / "v.avi")
    with pytest.raises(ValueError, match="even width and height"):
        io.write_video(_frames(h=31), tmp_path / "v.mp4")
    with pytest.raises(ValueError, match="uint8 frames"):
        io.write_video(_frames().astype(np.float32), tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    real = av.VideoFrame.from_ndarray
    calls = {"n": 0}

    def explode(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", explode)
    with pytest.raises(KeyboardInterrupt):
        io.write_video(_frames(), tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "v.mp4"
    io.write_video(_frames(), target)
    before = target.read_bytes()

    def explode(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", explode)
    with pytest.raises(KeyboardInterrupt):
        io.write_video(_frames(t=9), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_write_creates_missing_folders_and_json(tmp_path):
    path = io.write_video(_frames(t=1), tmp_path / "a" / "b" / "v.mp4")
    assert io.read_video(path)[0].shape[0] == 1
    j = io.write_json({"prompt": "猫", "n": 1}, tmp_path / "a" / "v.json")
    assert json.loads(j.read_text(encoding="utf-8")) == {"prompt": "猫", "n": 1}
    assert oct(j.stat().st_mode & 0o777) == "0o644"


def test_check_output_path(tmp_path):
    assert io.check_output_path(tmp_path / "new" / "dir" / "v.mp4") == tmp_path / "new" / "dir" / "v.mp4"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="it is a file"):
        io.check_output_path(tmp_path / "file" / "v.mp4")
    with pytest.raises(ValueError, match="unsupported extension"):
        io.check_output_path(tmp_path / "v.mov")
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        io.check_output_path(tmp_path / "d.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.mp4", "file"]


def test_video_writer_streams_chunks_into_the_same_file(tmp_path):
    frames = _frames(t=9)
    whole = io.write_video(frames, tmp_path / "whole.mp4")
    waited = []
    with io.VideoWriter(tmp_path / "chunks.mp4", 48, 32) as writer:
        for s, e in [(0, 1), (1, 5), (5, 9)]:  # the VAE's chunks: the first frame, then four at a time
            writer.write(frames[s:e], wait=lambda s=s: waited.append(s))
        assert not (tmp_path / "chunks.mp4").exists()  # appears only when closed
    assert waited == [0, 1, 5]  # each chunk's wait() ran before the encoder read it
    assert writer.frames_written == 9
    assert np.array_equal(io.read_video(tmp_path / "chunks.mp4")[0], io.read_video(whole)[0])


def test_video_writer_gif_collects_frames_for_its_palette(tmp_path):
    frames = _frames(t=5)
    with io.VideoWriter(tmp_path / "v.gif", 48, 32) as writer:
        writer.write(frames[:2])
        writer.write(frames[2:])
    back, _ = io.read_video(tmp_path / "v.gif")
    assert np.array_equal(back, io.read_video(io.write_video(frames, tmp_path / "whole.gif"))[0])


def test_video_writer_abort_and_errors_leave_nothing(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="decode failed"):
        with io.VideoWriter(tmp_path / "a.mp4", 48, 32) as writer:
            writer.write(_frames(t=2))
            raise RuntimeError("decode failed")
    with pytest.raises(ValueError, match=r"uint8 frames \[t, 32, 48, 3\]"):
        with io.VideoWriter(tmp_path / "b.mp4", 48, 32) as writer:
            writer.write(_frames(t=2, h=16))
    with pytest.raises(ValueError, match="no frames were written"):
        io.VideoWriter(tmp_path / "c.mp4", 48, 32).close()
    with pytest.raises(ValueError, match="even width and height"):
        io.VideoWriter(tmp_path / "d.mp4", 47, 32)
    # an encoder failure (here on the third frame) is raised by close(), which removes the temp file
    real, calls = av.VideoFrame.from_ndarray, {"n": 0}

    def explode(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", explode)
    writer = io.VideoWriter(tmp_path / "e.mp4", 48, 32)
    writer.write(_frames(t=5))
    writer.write(_frames(t=5))  # after the failure: dropped, no hang
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_host_frames_hand_over_chunks_in_order():
    video = torch.rand(2, 3, 9, 4, 6, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2
    got = []
    frames = io.HostFrames(2, 9, 4, 6, torch.device("cpu"), sink=lambda i, f, wait: (wait(), got.append((i, f.copy()))))
    for b in range(2):
        for s, e in [(0, 1), (1, 5), (5, 9)]:
            frames.put(b, s, video[b, :, s:e])
    whole = io.to_uint8_frames(video)
    assert [i for i, _ in got] == [0, 0, 0, 1, 1, 1] and [len(f) for _, f in got] == [1, 4, 4] * 2
    assert np.array_equal(np.concatenate([f for i, f in got if i == 1]), whole[1])
    assert all(np.array_equal(a, b) for a, b in zip(frames.videos(), whole))
    with pytest.raises(ValueError, match="do not fit"):
        frames.put(0, 7, video[0, :, :4])


def test_host_frames_take_a_buffer_allocated_ahead():
    # the pipeline asks for the video's host memory on a helper thread before the decode
    ahead = io.host_buffer_ahead((2, 9, 4, 6, 3), torch.device("cpu"))
    buf = ahead.result()
    assert buf.shape == (2, 9, 4, 6, 3) and buf.dtype == torch.uint8
    frames = io.HostFrames(2, 9, 4, 6, torch.device("cpu"), ahead=ahead)
    assert frames.host is buf  # used as it is, not allocated again
    frames.put(1, 0, torch.zeros(3, 9, 4, 6))
    assert (frames.videos()[1] == 128).all()
    with pytest.raises(ValueError, match="host buffer of shape"):
        io.HostFrames(2, 9, 4, 8, torch.device("cpu"), ahead=io.host_buffer_ahead((2, 9, 4, 6, 3), torch.device("cpu")))


def test_video_writer_thread_count_reaches_the_encoder(tmp_path):
    # an explicit count is what x264 records in its settings (0 leaves it to x264: 1.5 a core)
    frames = _frames(t=3, h=256, w=256)
    with io.VideoWriter(tmp_path / "two.mp4", 256, 256, threads=2) as writer:
        writer.write(frames)
    assert b" threads=2 " in (tmp_path / "two.mp4").read_bytes()


def test_video_writer_interrupted_close_leaves_nothing(tmp_path):
    writer = io.VideoWriter(tmp_path / "v.mp4", 48, 32)
    writer.write(_frames(t=5))
    real_join, calls = writer._thread.join, []

    def interrupted_join(*a, **kw):  # Ctrl-C arrives while close() waits for the encoder
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real_join(*a, **kw)

    writer._thread.join = interrupted_join
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    assert len(calls) == 2 and not writer._thread.is_alive()
    assert list(tmp_path.iterdir()) == []
