"""Where the weights come from: the Hugging Face files of each model, and fetching the missing ones.

Layout of a checkpoint folder (default ./checkpoints, the reference scripts' layout):

    TurboWan2.1-T2V-1.3B-480P.pth            rCM-distilled DiT (or ...-quant.pth, int8)
    Wan2.1_VAE.pth                           VAE
    models_t5_umt5-xxl-enc-bf16.pth          umT5-XXL text encoder
    google/umt5-xxl/spiece.model, ...        its tokenizer (where Wan's layout keeps it)
    Wan2.1-T2V-1.3B/diffusion_pytorch_model*.safetensors   base (non-distilled) DiT, --sampler euler only
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from turbovid.loading.common import CheckpointError

log = logging.getLogger("turbovid.hub")

WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B"  # VAE and umT5 live here (shared by 1.3B and 14B)
TOKENIZER_REPO = "google/umt5-xxl"
TOKENIZER_FILES = ("spiece.model", "tokenizer_config.json")  # enough for the slow and the fast tokenizer
TOKENIZER_EXTRAS = ("tokenizer.json", "special_tokens_map.json")  # fetched when the repo has them
BASE_REPOS = {"Wan2.1-1.3B": "Wan-AI/Wan2.1-T2V-1.3B", "Wan2.1-14B": "Wan-AI/Wan2.1-T2V-14B"}
SHARD_INDEX = "diffusion_pytorch_model.safetensors.index.json"


class MissingWeightsError(CheckpointError):
    """Weights that are neither on disk nor downloadable. The message says what to put where."""


@dataclass(frozen=True)
class WeightFile:
    repo_id: str
    filename: str  # path inside the repo
    folder: str = ""  # sub-folder of the checkpoint dir it goes to
    optional: bool = False  # skipped when the repo does not have it

    def local(self, checkpoint_dir: Path) -> Path:
        return checkpoint_dir / self.folder / Path(self.filename).name

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"


def turbo_dit_file(model: str, resolution: str, int8: bool) -> WeightFile:
    """The rCM-distilled DiT of TurboDiffusion for a model size and resolution (1.3B exists at 480p only)."""
    size = {"Wan2.1-1.3B": "1.3B", "Wan2.1-14B": "14B"}.get(model)
    if size is None:
        raise ValueError(f"no downloadable weights for model {model!r}; pass --dit_path")
    res = "720P" if (resolution == "720p" and size == "14B") else "480P"
    name = f"TurboWan2.1-T2V-{size}-{res}"
    return WeightFile(f"TurboDiffusion/{name}", f"{name}{'-quant' if int8 else ''}.pth")


def base_dit_index(model: str) -> WeightFile:
    """The shard index of the base Wan2.1 DiT (used by the flow-matching Euler baseline)."""
    if model not in BASE_REPOS:
        raise ValueError(f"no downloadable weights for model {model!r}; pass --dit_path")
    repo = BASE_REPOS[model]
    return WeightFile(repo, SHARD_INDEX, folder=repo.split("/")[1])


def base_dit_files(model: str, checkpoint_dir: Path) -> list[WeightFile]:
    """Shards of the base DiT: listed by the index if there is one, else the single-file checkpoint."""
    index = base_dit_index(model)
    config = WeightFile(index.repo_id, "config.json", index.folder)
    single = WeightFile(index.repo_id, "diffusion_pytorch_model.safetensors", index.folder)
    path = index.local(checkpoint_dir)
    if single.local(checkpoint_dir).is_file() or not path.is_file():
        return [config, single]
    shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    return [config, index] + [WeightFile(index.repo_id, s, index.folder) for s in shards]


def vae_file() -> WeightFile:
    return WeightFile(WAN_REPO, "Wan2.1_VAE.pth")


def text_encoder_file() -> WeightFile:
    return WeightFile(WAN_REPO, "models_t5_umt5-xxl-enc-bf16.pth")


def tokenizer_files() -> list[WeightFile]:
    return [WeightFile(TOKENIZER_REPO, f, folder=TOKENIZER_REPO) for f in TOKENIZER_FILES] + [
        WeightFile(TOKENIZER_REPO, f, folder=TOKENIZER_REPO, optional=True) for f in TOKENIZER_EXTRAS
    ]


def is_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TURBOVID_OFFLINE"))


def _missing_message(missing: list[WeightFile], checkpoint_dir: Path, why: str) -> str:
    where: dict[str, list[str]] = {}
    for f in [f for f in missing if not f.optional] or missing:
        where.setdefault(str(f.local(checkpoint_dir).parent), []).append(f"{Path(f.filename).name} ({f.url})")
    places = "; ".join(f"put {', '.join(names)} in {folder}/" for folder, names in where.items())
    return f"missing weights ({why}): {places} -- or point --checkpoint-dir / the --*_path options at them"


def ensure_files(files: list[WeightFile], checkpoint_dir: str | Path, download: bool = True) -> list[Path]:
    """Local paths of `files` under `checkpoint_dir`, downloading the missing ones (with a progress bar)."""
    checkpoint_dir = Path(checkpoint_dir).absolute()
    missing = [f for f in files if not f.local(checkpoint_dir).is_file()]
    if all(f.optional for f in missing):  # extras are fetched only along with a required file
        missing = []
    if missing:
        if not download:
            raise MissingWeightsError(_missing_message(missing, checkpoint_dir, "downloads disabled"))
        if is_offline():
            raise MissingWeightsError(_missing_message(missing, checkpoint_dir, "offline"))
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            raise MissingWeightsError(_missing_message(missing, checkpoint_dir, "huggingface_hub is not installed")) from None
        for i, f in enumerate(missing):
            log.info("downloading %s from %s into %s", f.filename, f.repo_id, f.local(checkpoint_dir).parent)
            try:
                # The hub client writes to a temp name and renames: an interrupted download leaves no partial file.
                hf_hub_download(f.repo_id, f.filename, local_dir=checkpoint_dir / f.folder)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # offline, DNS, gated repo, 404, full disk, ...
                if f.optional and type(e).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
                    continue
                reason = f"download of {f.filename} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                raise MissingWeightsError(_missing_message(missing[i:], checkpoint_dir, reason.strip())) from None
            got = checkpoint_dir / f.folder / f.filename
            if got != f.local(checkpoint_dir) and got.is_file():  # repo sub-folders: flatten into `folder`
                got.replace(f.local(checkpoint_dir))
    return [f.local(checkpoint_dir) for f in files]
