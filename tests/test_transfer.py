"""turbovid.loading.transfer: checkpoint read-ahead and the staged copy to the GPU."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from spm_fixture import make_tokenizer_dir
from turbovid.loading import transfer

ROOT = Path(__file__).resolve().parents[1]


def _weights(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "b.safetensors", folder / "a.pth", folder / "sub" / "c.bin"]
    for f in files:
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"x" * 1000)
    (folder / "config.json").write_text("{}")
    return files


def test_checkpoint_files_are_what_each_loader_reads_in_load_order(tmp_path):
    from turbovid.loading import checkpoint_files

    dit = tmp_path / "TurboWan.pth"
    dit.write_bytes(b"x")
    wan = tmp_path / "wan"  # an official Wan2.1 folder: the VAE loader picks the VAE-named file
    wan.mkdir()
    for name in ("diffusion_pytorch_model.safetensors", "Wan2.1_VAE.pth", "models_t5.pth"):
        (wan / name).write_bytes(b"x")
    root = tmp_path / "diffusers"  # a diffusers root: only text_encoder/ is the text encoder's
    for sub, names in (("text_encoder", ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")),
                       ("transformer", ("diffusion_pytorch_model.safetensors",))):
        (root / sub).mkdir(parents=True)
        for n in names:
            (root / sub / n).write_bytes(b"x")
    got = checkpoint_files(dit, wan, root)
    assert got == [dit, wan / "Wan2.1_VAE.pth", root / "text_encoder" / "model-00001-of-00002.safetensors",
                   root / "text_encoder" / "model-00002-of-00002.safetensors"]
    assert checkpoint_files(tmp_path / "missing.pth", None, dit) == [dit]  # its loader reports the missing one


def test_prefetch_reads_ahead_on_a_daemon_thread(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(transfer.os, "posix_fadvise", lambda fd, off, n, advice: calls.append(advice))
    thread = transfer.prefetch(_weights(tmp_path / "ckpt"))
    assert isinstance(thread, threading.Thread) and thread.daemon
    thread.join(5)
    assert calls == [transfer.os.POSIX_FADV_WILLNEED] * 3  # one window each: the files are small


def test_prefetch_skips_what_is_not_a_file(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(transfer.os, "posix_fadvise", lambda fd, off, n, advice: calls.append(advice))
    files = _weights(tmp_path / "ckpt")
    transfer.prefetch([tmp_path / "ckpt", tmp_path / "missing.pth", *files]).join(5)
    assert len(calls) == 3


def test_prefetch_advises_one_window_at_a_time(tmp_path, monkeypatch):
    big = tmp_path / "big.pth"
    big.write_bytes(b"z" * 2500)
    calls = []
    monkeypatch.setattr(transfer, "READAHEAD_STEP", 1000)
    monkeypatch.setattr(transfer.os, "posix_fadvise", lambda fd, off, n, advice: calls.append((off, n)))
    transfer.prefetch([big]).join(5)
    assert calls == [(0, 1000), (1000, 1000), (2000, 500)]


def test_prefetch_leaves_out_the_ranges_it_is_told_to_skip(tmp_path, monkeypatch):
    big, other = tmp_path / "big.pth", tmp_path / "other.pth"
    big.write_bytes(b"z" * 2500)
    other.write_bytes(b"z" * 300)
    calls, asked = [], []
    monkeypatch.setattr(transfer, "READAHEAD_STEP", 1000)
    monkeypatch.setattr(transfer.os, "posix_fadvise", lambda fd, off, n, advice: calls.append((off, n)))

    def skip(f):
        asked.append((f.name, threading.current_thread().name))
        return [(2000, 9000), (100, 200)] if f == big else []

    transfer.prefetch([big, other], skip=skip).join(5)
    assert calls == [(0, 100), (200, 1000), (1200, 800), (0, 300)]
    assert asked == [("big.pth", "turbovid-prefetch"), ("other.pth", "turbovid-prefetch")]  # off the main thread


def test_tensor_file_ranges_locate_the_data_without_reading_it(tmp_path):
    from safetensors.torch import save_file

    from turbovid.loading.common import tensor_file_ranges

    emb = torch.arange(300 * 8, dtype=torch.float32).view(300, 8).to(torch.bfloat16)
    other = torch.randn(5, 3)
    pth = tmp_path / "t5.pth"
    torch.save({"module.token_embedding.weight": emb, "blocks.0.w": other}, pth)
    st = tmp_path / "model.safetensors"
    save_file({"shared.weight": emb, "encoder.final_layer_norm.weight": other[0]}, str(st))
    for path, key in ((pth, "token_embedding.weight"), (st, "shared.weight")):
        ranges = tensor_file_ranges(path, [key])
        assert len(ranges) == 1, path
        start, end = ranges[0]
        assert path.read_bytes()[start:end] == emb.view(torch.uint8).numpy().tobytes()
        assert tensor_file_ranges(path, ["missing.weight"]) == []
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    assert tensor_file_ranges(junk, ["token_embedding.weight"]) == []  # the loader reports it, not this


def test_prefetch_checkpoints_skips_only_the_text_encoders_embedding_table(tmp_path, monkeypatch):
    from turbovid.loading import prefetch_checkpoints
    from turbovid.loading.common import tensor_file_ranges

    emb = torch.zeros(4096, 64, dtype=torch.bfloat16)  # 512 KiB
    t5 = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({"token_embedding.weight": emb, "blocks.0.attn.q.weight": torch.zeros(64, 64)}, t5)
    dit = tmp_path / "dit.pth"
    torch.save({"token_embedding.weight": emb}, dit)  # the same name in another model's file: read whole
    seen = {}
    monkeypatch.setattr(transfer, "READAHEAD_STEP", 64 << 10)
    monkeypatch.setattr(transfer.os, "posix_fadvise",
                        lambda fd, off, n, advice: seen.setdefault(os.readlink(f"/proc/self/fd/{fd}"), []).append((off, n)))
    prefetch_checkpoints(dit, None, t5).join(5)
    (start, end), = tensor_file_ranges(t5, ["token_embedding.weight"])
    t5_read = seen[str(t5)]
    assert all(off + n <= start or off >= end for off, n in t5_read)
    assert sum(n for _, n in t5_read) == t5.stat().st_size - (end - start)
    assert sum(n for _, n in seen[str(dit)]) == dit.stat().st_size


def test_prefetch_off_or_too_large_does_nothing(tmp_path, monkeypatch):
    files = _weights(tmp_path / "ckpt")
    monkeypatch.setattr(transfer, "_available_bytes", lambda: 4000)  # 3000 bytes of files > half of it
    assert transfer.prefetch(files) is None
    monkeypatch.setattr(transfer, "_available_bytes", lambda: 10**12)
    monkeypatch.setenv("TURBOVID_FAST_LOAD", "0")
    assert transfer.prefetch(files) is None


def test_prefetch_survives_a_file_that_vanished(tmp_path, monkeypatch):
    files = _weights(tmp_path / "ckpt")

    def fadvise(fd, off, n, advice):
        raise OSError("not supported here")

    monkeypatch.setattr(transfer.os, "posix_fadvise", fadvise)
    thread = transfer.prefetch(files)
    thread.join(5)
    assert not thread.is_alive()


def _mapped_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    big = torch.arange(3 * 1000 * 700, dtype=torch.int32).view(3000, 700).to(torch.bfloat16)
    torch.save({"big": big, "view": big[1000:1010], "small": torch.randn(7), "i8": torch.ones(33, dtype=torch.int8)}, path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def test_file_source_reads_a_mapped_tensors_bytes_from_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "READ_PIECE", 100_000)  # a tensor in several pieces, on several threads
    sd = _mapped_checkpoint(tmp_path / "ck.pth")
    files = transfer.FileSource()
    try:
        for name, t in sd.items():
            where = files.locate(t)
            assert where is not None, name
            got = bytearray(t.numel() * t.element_size())
            files.read(memoryview(got), *where)
            assert bytes(got) == t.contiguous().view(torch.uint8).numpy().tobytes(), name
        assert files.locate(torch.randn(100)) is None  # not a file mapping
        assert files.locate(sd["big"].t()) is None  # not contiguous
    finally:
        files.close()
    assert files.fds == {}


def test_file_source_ignores_a_file_replaced_since_it_was_mapped(tmp_path):
    path = tmp_path / "ck.pth"
    sd = _mapped_checkpoint(path)
    torch.save({"other": torch.zeros(5)}, tmp_path / "new.pth")
    os.replace(tmp_path / "new.pth", path)  # the mapping still shows the old file's bytes
    files = transfer.FileSource()
    assert files.locate(sd["big"]) is None
    files.close()


def test_to_device_on_cpu_is_plain_to():
    m = nn.Linear(4, 4)
    assert transfer.to_device(m, "cpu") is m and m.weight.device.type == "cpu"


def test_bench_load_plumbing_on_cpu(tmp_path):
    """The loading benchmark end to end with test-sized checkpoints: well-formed JSON, every run recorded."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_load.py"), "--model", "tiny-random", "--trials", "1",
           "--tokenizer", os.path.relpath(make_tokenizer_dir(tmp_path)), "--dir", str(tmp_path / "ckpt"), "--out", str(out),
           "--name", "load.json", "--commit", "abc1234", "--variants", "new,base", "--base-tree", str(ROOT),
           "--cli-args", "--resolution 128p --aspect_ratio 1:1 --num_frames 1 --num_steps 1 --device cpu"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((out / "load.json").read_text())
    assert report["commit"] == "abc1234"
    assert report["card"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")  # the host's
    assert set(report["checkpoint_GB"]) == {"TurboWan2.1-T2V-1.3B-480P.pth", "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"}
    assert report["floors"]["cold_read_GBps"] > 0 and report["floors"]["warm_read_GBps"] > 0
    tags = [r["tag"] for r in report["runs"]]
    assert tags == ["warmup-new", "warmup-base", "t0-cold-new", "t0-warm-new", "t0-cold-base", "t0-warm-base"]
    for r in report["runs"]:
        assert set(r["load_parts_s"]) == {"dit", "vae", "text_encoder", "prewarm_wait"}
        assert r["process_s"] > r["load_s"] > 0 and r["total_s"] > 0
        assert r["gpu_peak_gib"] == 0.0  # --device cpu
        assert r["parts_s"]["main"] > r["load_s"] and abs(sum(r["parts_s"].values()) - r["process_s"]) < 0.05


@pytest.mark.gpu
@pytest.mark.parametrize("fast", ["1", "0"])
def test_to_device_staged_copy_equals_plain_to(monkeypatch, fast):
    monkeypatch.setenv("TURBOVID_FAST_LOAD", fast)
    monkeypatch.setattr(transfer, "STAGE_BYTES", 1 << 20)  # many chunks and buffer reuse at a small size

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.big = nn.Parameter(torch.randn(2048, 3000).bfloat16(), requires_grad=False)  # ~12 MB: 12 chunks
            self.a = nn.Linear(300, 500)
            self.b = nn.Linear(300, 500)
            self.b.weight = self.a.weight  # tied: one tensor on the GPU
            self.register_buffer("q", torch.randint(-128, 127, (1000, 1000), dtype=torch.int8))
            self.register_buffer("t", torch.randn(600, 700).t())  # not contiguous
            self.register_buffer("empty", torch.empty(0, 5))

    monkeypatch.setattr(transfer, "SMALL_BYTES", 1 << 20)
    m = M().requires_grad_(False)
    want = {k: v.clone() for k, v in m.state_dict().items()}
    got = transfer.to_device(m, "cuda")
    assert got is m
    torch.cuda.synchronize()
    for k, v in m.state_dict().items():
        assert v.device.type == "cuda" and v.dtype == want[k].dtype and v.shape == want[k].shape, k
        assert torch.equal(v.cpu(), want[k]), k
    assert m.a.weight is m.b.weight and isinstance(m.big, nn.Parameter)


@pytest.fixture
def stagers(monkeypatch) -> list:
    """Each _Stager that to_device makes, in order."""
    made = []
    real = transfer._Stager

    def spy(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr(transfer, "_Stager", spy)
    return made


@pytest.mark.gpu
def test_to_device_copies_small_tensors_after_the_staged_ones(monkeypatch, stagers):
    monkeypatch.setattr(transfer, "SMALL_BYTES", 1)
    m = nn.Sequential(*[nn.Linear(64, 64) for _ in range(50)], nn.Linear(1024, 1024))  # 100 small + 1 of 4 MiB
    want = {k: v.clone() for k, v in m.state_dict().items()}
    transfer.to_device(m, "cuda")
    for k, v in m.state_dict().items():
        assert v.device.type == "cuda" and torch.equal(v.cpu(), want[k]), k
    assert stagers[0].small == [] and stagers[0].used[0] and not stagers[0].used[1]  # one 4 MiB chunk staged


@pytest.mark.gpu
def test_to_device_from_files_reads_mapped_tensors_with_pread(tmp_path, monkeypatch, stagers):
    monkeypatch.setattr(transfer, "STAGE_BYTES", 1 << 20)
    monkeypatch.setattr(transfer, "SMALL_BYTES", 1 << 20)
    monkeypatch.setattr(transfer, "READ_PIECE", 300_000)
    sd = _mapped_checkpoint(tmp_path / "ck.pth")
    m = nn.Module()
    for k, v in sd.items():
        m.register_buffer(k, v)
    want = {k: v.clone() for k, v in sd.items()}
    transfer.to_device(m, "cuda", from_files=True)
    for k, v in m.state_dict().items():
        assert v.device.type == "cuda" and torch.equal(v.cpu(), want[k]), k
    assert stagers[0].file_bytes == sum(v.numel() * v.element_size() for v in sd.values()
                                        if v.numel() * v.element_size() >= transfer.SMALL_TENSOR)
    assert stagers[0].file_bytes > 0
    transfer.to_device(m.cpu(), "cuda")  # not from files: the copy through memory
    assert stagers[1].file_bytes == 0
