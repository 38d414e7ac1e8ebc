import json
from pathlib import Path

import pytest

from turbovid import hub
from turbovid.options import PipelineOptions
from turbovid.pipeline import Pipeline


def test_catalogue_names():
    assert hub.turbo_dit_file("Wan2.1-1.3B", "720p", False).url == (
        "https://huggingface.co/TurboDiffusion/TurboWan2.1-T2V-1.3B-480P/resolve/main/TurboWan2.1-T2V-1.3B-480P.pth")
    assert hub.turbo_dit_file("Wan2.1-14B", "720p", True).filename == "TurboWan2.1-T2V-14B-720P-quant.pth"
    assert hub.turbo_dit_file("Wan2.1-14B", "480p", False).repo_id == "TurboDiffusion/TurboWan2.1-T2V-14B-480P"
    assert (hub.vae_file().repo_id, hub.vae_file().filename) == ("Wan-AI/Wan2.1-T2V-1.3B", "Wan2.1_VAE.pth")
    assert hub.text_encoder_file().filename == "models_t5_umt5-xxl-enc-bf16.pth"
    assert {f.repo_id for f in hub.tokenizer_files()} == {"google/umt5-xxl"}
    with pytest.raises(ValueError, match="--dit_path"):
        hub.turbo_dit_file("tiny-random", "480p", False)


def test_base_dit_shards_follow_the_index(tmp_path):
    assert [f.filename for f in hub.base_dit_files("Wan2.1-1.3B", tmp_path)] == [
        "config.json", "diffusion_pytorch_model.safetensors"]
    folder = tmp_path / "Wan2.1-T2V-14B"
    folder.mkdir()
    (folder / hub.SHARD_INDEX).write_text(json.dumps({"weight_map": {"a": "s-2.safetensors", "b": "s-1.safetensors",
                                                                     "c": "s-1.safetensors"}}))
    names = [f.filename for f in hub.base_dit_files("Wan2.1-14B", tmp_path)]
    assert names == ["config.json", hub.SHARD_INDEX, "s-1.safetensors", "s-2.safetensors"]


def _fake_download(calls, missing=()):
    def download(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        if filename in missing:
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        p = Path(local_dir) / filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{repo_id}/{filename}")
        return str(p)

    return download


def test_downloads_only_missing_files(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_download(calls, missing={"tokenizer.json"}))
    (tmp_path / "Wan2.1_VAE.pth").write_text("here")
    files = [hub.vae_file(), hub.text_encoder_file(), *hub.tokenizer_files()]
    paths = hub.ensure_files(files, tmp_path)
    assert ("Wan-AI/Wan2.1-T2V-1.3B", "Wan2.1_VAE.pth") not in calls
    assert ("Wan-AI/Wan2.1-T2V-1.3B", "models_t5_umt5-xxl-enc-bf16.pth") in calls
    assert paths[2] == tmp_path / "google" / "umt5-xxl" / "spiece.model" and paths[2].is_file()
    assert not (tmp_path / "google" / "umt5-xxl" / "tokenizer.json").exists()  # optional, not in the repo: skipped
    calls.clear()
    hub.ensure_files(files, tmp_path)
    assert calls == []  # nothing required is missing: no network at all


def test_failed_download_names_what_to_place(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*a, **kw):
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(hub.MissingWeightsError) as info:
        hub.ensure_files([hub.vae_file(), hub.text_encoder_file()], tmp_path)
    msg = str(info.value)
    assert "ConnectionError" in msg and "Wan2.1_VAE.pth" in msg and "models_t5_umt5-xxl-enc-bf16.pth" in msg
    assert str(tmp_path) in msg and "\n" not in msg


def test_offline_flag_never_downloads(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_download(calls))
    opts = PipelineOptions(checkpoint_dir=str(tmp_path), offline=True, device="cpu", attention="dense")
    with pytest.raises(hub.MissingWeightsError, match="downloads disabled.*TurboWan2.1-T2V-1.3B-480P.pth"):
        Pipeline.from_options(opts)
    assert calls == []


def test_euler_wants_the_base_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    opts = PipelineOptions(checkpoint_dir=str(tmp_path), sampler="euler", device="cpu")
    where = r"diffusion_pytorch_model.safetensors \(https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B/.*\) in \S*/Wan2.1-T2V-1.3B/"
    with pytest.raises(hub.MissingWeightsError, match=where):
        Pipeline.from_options(opts)
